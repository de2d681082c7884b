"""`lavit analyze` with bad samples among good ones: the bad ones are listed in analysis.json and left out,
never read from outside the image root nor fed to a model."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from test_collect import sample, with_extra

from lavit.analysis.analyze import analyze
from lavit.toyworld.artifacts import ARTIFACTS_DIR


def test_bad_samples_are_recorded_rejections_and_the_rest_is_analysed(tmp_path):
    secret = tmp_path / "x.png"
    Image.new("RGB", (84, 84), (200, 0, 0)).save(secret)
    samples, root = with_extra(tmp_path, [sample("up", "../../x.png"), sample("abs", str(secret))])
    result = analyze(samples, root, {"teacher": str(ARTIFACTS_DIR / "teacher")}, tmp_path / "an", heatmaps=0)
    saved = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert saved["samples"] == result["samples"] == 3
    assert [r["id"] for r in saved["rejected"]] == ["up", "abs"]
    assert saved["rejected_by_reason"] == {"path_outside_root": 2}
    assert sorted(saved["per_model"]["teacher"]["per_sample"]) == ["test-00000", "test-00001", "test-00002"]


def test_no_usable_sample_is_an_error_before_any_model_loads(tmp_path):
    samples = tmp_path / "s.jsonl"
    samples.write_text(json.dumps(sample("up", "../x.png")) + "\n")
    (tmp_path / "images").mkdir()
    with pytest.raises(ValueError, match=r"no sample the analysis can use; 1 rejected, e\.g\. up: path_outside_root"):
        analyze(samples, tmp_path / "images", {"teacher": str(tmp_path / "no-such-model")}, tmp_path / "an")
    assert not (tmp_path / "an" / "analysis.json").exists()


def test_an_out_holding_another_analysis_or_an_input_is_refused(tmp_path):
    samples, root = with_extra(tmp_path, [])
    teacher = {"teacher": str(ARTIFACTS_DIR / "teacher")}
    analyze(samples, root, teacher, tmp_path / "an", heatmaps=0)
    analyze(samples, root, teacher, tmp_path / "an", heatmaps=0)  # the same settings again: replaced, fine
    with pytest.raises(ValueError, match=r"holds results of different settings \(run.json: heatmaps: 0 → 1; "
                                         r"max_samples: 100 → 2\); use another --out"):
        analyze(samples, root, teacher, tmp_path / "an", heatmaps=1, max_samples=2)
    for out in (root, tmp_path):
        with pytest.raises(ValueError, match=f"out {out} (is|contains) the input"):
            analyze(samples, root, teacher, out)
    assert not (root / "analysis.json").exists() and not (tmp_path / "analysis.json").exists()
