"""`lavit eval` end to end on a tiny exported student, in every latent mode."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from PIL import Image

from lavit.cli import main


def write_mmvp(root, n=4):
    (root / "MMVP Images").mkdir(parents=True)
    lines = ["Index,Question,Options,Correct Answer"]
    for i in range(1, n + 1):
        Image.new("RGB", (112, 84), (40 * i, 100, 200)).save(root / "MMVP Images" / f"{i}.jpg")
        lines.append(f"{i},Is the circle red or blue?,(a) red (b) blue,({'ab'[i % 2]})")
    (root / "Questions.csv").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory, export_tiny_student):
    root = tmp_path_factory.mktemp("eval")
    write_mmvp(root / "MMVP")
    export_tiny_student(root / "student")
    return root


@pytest.mark.parametrize("mode", ["forced", "natural", "masked", "none"])
def test_every_latent_mode_runs_end_to_end(setup, tmp_path, mode):
    out = tmp_path / "out"
    assert main(["eval", "--model", str(setup / "student"), "--benchmark", "mmvp", "--data-root",
                 str(setup / "MMVP"), "--out", str(out), "--latent-mode", mode, "--max-new-tokens", "3"]) == 0
    summary = json.loads((out / "mmvp" / "summary.json").read_text())
    assert summary["n"] == 4 and summary["settings"]["latent_mode"] == mode
    assert summary["interval"] == "wilson" and 0 <= summary["accuracy_ci95"][0] <= summary["accuracy"]
    records = [json.loads(line) for line in (out / "mmvp" / "predictions.jsonl").read_text().splitlines()]
    assert len(records) == 4 and all("lvr" not in r["raw_output"] for r in records)


def test_masked_mode_hides_latents_in_the_mask_reaching_the_model(setup, tmp_path, sdpa_masks):
    seen = sdpa_masks
    main(["eval", "--model", str(setup / "student"), "--benchmark", "mmvp", "--data-root", str(setup / "MMVP"),
          "--out", str(tmp_path / "o"), "--latent-mode", "masked", "--max-new-tokens", "2", "--max-samples", "1",
          "--batch-size", "1"])
    prefill = seen[0][0, 0]  # [S, S] of the only sample, first decoder layer at prefill
    allowed = prefill if prefill.dtype == torch.bool else prefill > torch.finfo(prefill.dtype).min
    size = allowed.shape[0]
    latent_cols = list(range(size - 4, size))  # forced/masked latents sit at the end of the prompt
    others = list(range(size - 4))
    assert not allowed[others][:, latent_cols].any()
    for col in latent_cols:
        assert allowed[col, col] and not allowed[col, [c for c in latent_cols if c != col]].any()
    decode = seen[-1][0, 0, -1]
    decode_allowed = decode if decode.dtype == torch.bool else decode > torch.finfo(decode.dtype).min
    assert not decode_allowed[latent_cols].any()


def test_checkpoint_with_other_token_names_needs_the_token_list(tmp_path, export_tiny_student):
    write_mmvp(tmp_path / "MMVP", n=2)
    names = export_tiny_student(tmp_path / "authors", template="<lvr{i}>", with_meta=False)
    args = ["eval", "--model", str(tmp_path / "authors"), "--benchmark", "mmvp", "--data-root",
            str(tmp_path / "MMVP"), "--max-new-tokens", "2"]
    assert main([*args, "--out", str(tmp_path / "a"), "--latent-mode", "forced"]) == 2  # no lavit.json, no list
    assert main([*args, "--out", str(tmp_path / "b"), "--latent-tokens", ",".join(names)]) == 0
    summary = json.loads((tmp_path / "b" / "mmvp" / "summary.json").read_text())
    assert summary["settings"]["latent_tokens"] == names and summary["settings"]["latent_mode"] == "forced"
    assert main([*args, "--out", str(tmp_path / "c"), "--latent-tokens", "<lvr_1>,<lvr_2>"]) == 2  # not in vocab
    assert main([*args, "--out", str(tmp_path / "d")]) == 0  # a plain model: mode none
    assert json.loads((tmp_path / "d" / "mmvp" / "summary.json").read_text())["settings"]["latent_mode"] == "none"


def test_resolution_is_the_training_limit_unless_given_and_is_recorded(setup, tmp_path):
    student = tmp_path / "student"
    shutil.copytree(setup / "student", student)
    meta = json.loads((student / "lavit.json").read_text())
    (student / "lavit.json").write_text(json.dumps({**meta, "min_pixels": 3136, "max_pixels": 12544}))
    base = ["eval", "--model", str(student), "--benchmark", "mmvp", "--data-root", str(setup / "MMVP"),
            "--max-new-tokens", "2", "--max-samples", "1"]

    def settings(out, *extra):
        assert main([*base, "--out", str(tmp_path / out), *extra]) == 0
        return json.loads((tmp_path / out / "mmvp" / "summary.json").read_text())["settings"]

    assert (settings("trained")["min_pixels"], settings("trained")["max_pixels"]) == (3136, 12544)
    given = settings("given", "--min-pixels", "6272", "--max-pixels", "25088")
    assert (given["min_pixels"], given["max_pixels"]) == (6272, 25088)
    # a rerun at another resolution is another run: refused rather than mixed into the same predictions
    assert main([*base, "--out", str(tmp_path / "given"), "--max-pixels", "50176"]) == 2


def test_the_paper_suite_compares_every_model_at_one_resolution():
    from lavit.cli import build_parser, eval_pixel_limits

    parser = build_parser()
    for model in ("runs/a/student", "Qwen/Qwen2.5-VL-3B-Instruct"):
        args = parser.parse_args(["eval", "--model", model, "--suite", "paper", "--data-root", "d", "--out", "o"])
        assert eval_pixel_limits(args) == {"min_pixels": 200704, "max_pixels": 1003520,
                                           "pixels_by": "--suite paper under protocol lavit (Table A1's limits)"}
    args = parser.parse_args(["eval", "--model", "m", "--suite", "paper", "--data-root", "d", "--out", "o",
                              "--max-pixels", "401408"])
    assert eval_pixel_limits(args) == {"min_pixels": 200704, "max_pixels": 401408}  # given: a deviation
    for protocol in ("authors", "lmms-eval"):  # each protocol's own resolution rule, not Table A1's
        args = parser.parse_args(["eval", "--model", "m", "--suite", "paper", "--data-root", "d", "--out", "o",
                                  "--protocol", protocol])
        assert eval_pixel_limits(args) == {"min_pixels": 0, "max_pixels": 0}
    single = parser.parse_args(["eval", "--model", "m", "--benchmark", "mmvp", "--data-root", "d", "--out", "o"])
    assert eval_pixel_limits(single) == {"min_pixels": 0, "max_pixels": 0}  # the model's own limits
