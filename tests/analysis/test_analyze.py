"""`lavit analyze`: bad samples among good ones are listed in analysis.json and left out, never read from outside
the image root nor fed to a model; every model runs at stated pixel limits (recorded with where they came from),
cross-model maps are compared on one common grid, and an --out of other settings or samples is refused."""

from __future__ import annotations

import json

import pytest
from PIL import Image
from test_collect import sample, with_extra

import lavit.analysis.analyze as analyze_module
from lavit.analysis.analyze import analyze
from lavit.analysis.pixel_limits import parse_pixel_limits
from lavit.cli import main
from lavit.models.checkpoint import LAVIT_META, load_model_and_processor
from lavit.toyworld.artifacts import ARTIFACTS_DIR

TOY = {"min_pixels": 28224, "max_pixels": 28224}  # the committed toy models' 6 × 6 grid of a 168 × 168 image
FINE = {"min_pixels": 3136, "max_pixels": 50176}  # 168 × 168 → 6 × 6 merged tokens (the tiny processor's default)
COARSE = {"min_pixels": 3136, "max_pixels": 7056}  # 168 × 168 → 3 × 3


def save_tiny(directory, limits: dict, meta: dict | None = None) -> str:
    """The built-in tiny student (always the same weights) saved with a processor of these limits, and a lavit.json
    when `meta` is given."""
    model, processor = load_model_and_processor("tiny", **limits)
    model.save_pretrained(directory)
    processor.save_pretrained(directory)
    if meta is not None:
        (directory / LAVIT_META).write_text(json.dumps(meta))
    return str(directory)


def test_bad_samples_are_recorded_rejections_and_the_rest_is_analysed(tmp_path):
    secret = tmp_path / "x.png"
    Image.new("RGB", (84, 84), (200, 0, 0)).save(secret)
    samples, root = with_extra(tmp_path, [sample("up", "../../x.png"), sample("abs", str(secret))])
    result = analyze(samples, root, {"teacher": str(ARTIFACTS_DIR / "teacher")}, tmp_path / "an", heatmaps=0,
                     pixels={"teacher": TOY})
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
    pixels = {"teacher": TOY}
    analyze(samples, root, teacher, tmp_path / "an", heatmaps=0, pixels=pixels)
    analyze(samples, root, teacher, tmp_path / "an", heatmaps=0, pixels=pixels)  # the same settings again: fine
    with pytest.raises(ValueError, match=r"holds results of different settings \(run.json: heatmaps: 0 → 1; "
                                         r"max_samples: 100 → 2\); use another --out"):
        analyze(samples, root, teacher, tmp_path / "an", heatmaps=1, max_samples=2, pixels=pixels)
    for out in (root, tmp_path):
        with pytest.raises(ValueError, match=f"out {out} (is|contains) the input"):
            analyze(samples, root, teacher, out, pixels=pixels)
    assert not (root / "analysis.json").exists() and not (tmp_path / "analysis.json").exists()


def test_same_weights_saved_at_two_processor_limits_need_stated_limits_and_then_agree(tmp_path):
    """(a) The confound of the issue: one set of weights saved with two processor limits. With nothing stated
    (no --pixels, no limits in lavit.json) the analysis refuses before any model loads; at one stated resolution
    the two copies give the same numbers."""
    samples, root = with_extra(tmp_path, [])
    models = {"teacher": save_tiny(tmp_path / "fine", FINE),
              "copy": save_tiny(tmp_path / "coarse", COARSE, meta={"method": "naive_sft", "latent_tokens": []})}
    with pytest.raises(ValueError, match=r"pixel limits of 'teacher' \(.*fine\), 'copy' \(.*coarse\) are unknown; "
                                         r"state them with --pixels NAME=MIN:MAX .*lavit\.json.*--teacher-store"):
        analyze(samples, root, models, tmp_path / "an", heatmaps=0)
    assert not (tmp_path / "an").exists()

    result = analyze(samples, root, models, tmp_path / "an", heatmaps=0, pixels={"teacher": COARSE, "copy": COARSE})
    teacher, copy = result["per_model"]["teacher"], result["per_model"]["copy"]
    assert teacher["pixel_limits"] == copy["pixel_limits"] == {**COARSE, "source": "--pixels"}
    assert teacher["image_tokens"]["mean"] == copy["image_tokens"]["mean"] == 9
    for sample_id, numbers in teacher["per_sample"].items():
        assert copy["per_sample"][sample_id] == pytest.approx(numbers, abs=1e-6)
    assert all(kl is None or kl == pytest.approx(0.0, abs=1e-6)
               for kl in result["perception_gap"]["copy"]["kl_by_category"].values())


def test_models_at_different_limits_are_recorded_and_compared_on_the_common_grid(tmp_path, monkeypatch):
    """(b) A teacher at limits from its signal store (3 × 3), a student at its lavit.json limits (6 × 6) and a
    built-in tiny model (its processor's, 6 × 6): each limit is recorded with its source, every KL is computed on
    the coarser 3 × 3 grid (the teacher map is never interpolated onto the student's finer one)."""
    samples, root = with_extra(tmp_path, [])
    store = tmp_path / "signals"
    store.mkdir()
    (store / "manifest.json").write_text(json.dumps({"teacher": "tiny-teacher", "pixel_limits": COARSE}))
    student = save_tiny(tmp_path / "student", {"min_pixels": 3136, "max_pixels": 3136},
                        meta={"method": "naive_sft", "latent_tokens": [], **FINE})
    compared, kl_divergence = [], analyze_module.kl_divergence

    def recording_kl(p, q):
        compared.append((p.size, q.size))  # the sizes of the two maps each KL is computed on
        return kl_divergence(p, q)

    monkeypatch.setattr(analyze_module, "kl_divergence", recording_kl)
    result = analyze(samples, root, {"teacher": "tiny-teacher", "student": student, "tiny": "tiny"},
                     tmp_path / "an", heatmaps=2, teacher_store=store)
    saved = json.loads((tmp_path / "an" / "analysis.json").read_text())
    run = json.loads((tmp_path / "an" / "run.json").read_text())
    assert run["pixel_limits"] == saved["settings"]["pixel_limits"] == {
        "teacher": {**COARSE, "source": "store manifest"}, "student": {**FINE, "source": "lavit.json"},
        "tiny": {**FINE, "source": "processor (tiny)"}}
    assert run["teacher_store"] == str(store.resolve())
    per_model = saved["per_model"]
    assert {n: m["pixel_limits"]["max_pixels"] for n, m in per_model.items()} == {
        "teacher": 7056, "student": 50176, "tiny": 50176}  # as the processors report them
    assert {n: m["image_tokens"]["mean"] for n, m in per_model.items()} == {"teacher": 9, "student": 36, "tiny": 36}
    ids = ["test-00000", "test-00001", "test-00002"]
    assert saved["grids"]["common"] == {i: [1, 3, 3] for i in ids}
    assert saved["grids"]["per_model"]["student"] == {i: [1, 6, 6] for i in ids}
    assert "maps compared on the coarser grid by area-weighted resampling" in saved["grids"]["comparison"]
    tokens = sum(sum(g["tokens_by_category"].values()) for g in result["perception_gap"].values())
    assert len(compared) == tokens > 0 and set(compared) == {(9, 9)}
    assert (tmp_path / "an" / saved["figures"]["fig5"]).is_file()  # heatmaps of maps on three grids


def test_batch_size_and_device_map_are_recorded(tmp_path, capsys):
    """(c) --batch-size and --device-map reach the run and are recorded in run.json and analysis.json."""
    samples, root = with_extra(tmp_path, [])
    teacher = save_tiny(tmp_path / "teacher", FINE, meta={"method": "naive_sft", "latent_tokens": [], **FINE})
    args = ["analyze", "--samples", str(samples), "--image-root", str(root), "--model", f"teacher={teacher}",
            "--out", str(tmp_path / "an"), "--heatmaps", "0"]
    assert main([*args, "--batch-size", "2", "--device-map", "cpu"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["per_model"]["teacher"]["pixel_limits"] == {**FINE, "source": "lavit.json"}
    run = json.loads((tmp_path / "an" / "run.json").read_text())
    saved = json.loads((tmp_path / "an" / "analysis.json").read_text())
    for settings in (run, saved["settings"]):
        assert (settings["batch_size"], settings["device_map"]) == (2, "cpu")
    assert main([*args, "--batch-size", "3", "--device-map", "cpu"]) == 2  # another batch size: another analysis
    assert "batch_size: 2 → 3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*args, "--batch-size", "0"])


def test_a_rerun_after_the_samples_file_changed_is_refused(tmp_path):
    """(d) The samples file's content is part of the settings: edited under the same name, it is another
    analysis."""
    samples, root = with_extra(tmp_path, [])
    models, pixels = {"teacher": str(ARTIFACTS_DIR / "teacher")}, {"teacher": TOY}
    analyze(samples, root, models, tmp_path / "an", heatmaps=0, pixels=pixels)
    recorded = json.loads((tmp_path / "an" / "run.json").read_text())["samples_fingerprint"]
    assert recorded["bytes"] == samples.stat().st_size and len(recorded["sha256"]) == 64
    samples.write_text(samples.read_text().replace("?", "? ", 1))
    with pytest.raises(ValueError, match=r"holds results of different settings \(run.json: samples_fingerprint: "
                                         r"\{'bytes': \d+, 'sha256': '[0-9a-f]{64}'\} → .*\); use another --out"):
        analyze(samples, root, models, tmp_path / "an", heatmaps=0, pixels=pixels)


def test_the_cli_parses_pixel_limits_and_rejects_malformed_ones(tmp_path, capsys):
    """(e) --pixels NAME=MIN:MAX; a malformed item, an unknown model or MIN > MAX is a one-line error, exit 2,
    before any model loads."""
    assert parse_pixel_limits(["teacher=1:2", "lavit=200704:1003520"]) == {
        "teacher": {"min_pixels": 1, "max_pixels": 2}, "lavit": {"min_pixels": 200704, "max_pixels": 1003520}}
    samples, root = with_extra(tmp_path, [])
    args = ["analyze", "--samples", str(samples), "--image-root", str(root), "--model",
            f"teacher={ARTIFACTS_DIR / 'teacher'}", "--out", str(tmp_path / "an")]
    for bad, said in (("teacher=abc", "--pixels 'teacher=abc': expected NAME=MIN:MAX in whole pixels"),
                      ("teacher=12", "--pixels 'teacher=12': expected NAME=MIN:MAX"),
                      ("unknown_model=1:2", "--pixels for unknown_model: no --model of that name (models: teacher)"),
                      ("teacher=9:3", "need whole pixel limits 0 < min_pixels <= max_pixels, got min_pixels=9"),
                      ("teacher=0:3", "need whole pixel limits 0 < min_pixels <= max_pixels")):
        assert main([*args, "--pixels", bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("lavit analyze: error: ") and said in err and err.count("\n") == 1, (bad, err)
    assert main([*args, "--pixels", "teacher=1:2", "--pixels", "teacher=3:4"]) == 2
    assert "'teacher' is given twice" in capsys.readouterr().err
    assert not (tmp_path / "an").exists()


def test_a_novel_long_question_or_a_special_token_is_rejected_before_any_model_runs(tmp_path, monkeypatch):
    """Once, a 100 000-character question made `lavit analyze` try to allocate 29 GB and die with a traceback; an
    `<|image_pad|>` in a question stopped it. Both are now rejections listed in analysis.json, never traced."""
    traced, trace_model = [], analyze_module.trace_model

    def recording_trace(path, records, *args, **kwargs):
        traced.extend(r.id for r in records)
        return trace_model(path, records, *args, **kwargs)

    monkeypatch.setattr(analyze_module, "trace_model", recording_trace)
    novel = "what color is the circle ? " * 3846  # 100 000 characters
    samples, root = with_extra(tmp_path, [sample("novel", "ok.png", question=novel),
                                          sample("pad", "ok.png", question="what <|image_pad|> ?")])
    Image.new("RGB", (168, 168), (9, 9, 9)).save(root / "ok.png")
    out = tmp_path / "an"
    assert main(["analyze", "--samples", str(samples), "--image-root", str(root), "--model", "teacher=tiny-teacher",
                 "--out", str(out), "--heatmaps", "0", "--max-text-tokens", "2000"]) == 0
    saved = json.loads((out / "analysis.json").read_text())
    assert [(r["id"], r["reason"]) for r in saved["rejected"]] == [("novel", "text_too_long"),
                                                                    ("pad", "special_token_in_text")]
    assert saved["rejected_by_reason"] == {"text_too_long": 1, "special_token_in_text": 1}
    assert "question has 23076 tokens, over max_text_tokens=2000" in saved["rejected"][0]["detail"]
    assert saved["samples"] == 3 and set(traced) == {"test-00000", "test-00001", "test-00002"}
    assert json.loads((out / "run.json").read_text())["max_text_tokens"] == 2000 == saved["settings"]["max_text_tokens"]
