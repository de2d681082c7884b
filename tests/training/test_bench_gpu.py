"""`lavit bench gpu` at tiny sizes on this CPU, so that the GPU run cannot rot: every part runs and is written, the
table comes last, a failed numerics bound is exit code 1; with the FlexAttention steps (slow here), their numerics
hold the CPU tests' bound."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch
import torch.nn.attention.flex_attention as torch_flex

import lavit.teacher.bench as teacher_bench
from lavit.cli import main
from lavit.training import bench_gpu
from lavit.training.bench_gpu import BF16_BOUND, REAL, exact_processor, gpu_table, numerics_ok, student_model

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")


def run_tiny(tmp_path, monkeypatch, capsys) -> dict:
    """`lavit bench gpu --tiny`, the extract bench's 702-token image made 12 tokens (minutes → seconds here)."""
    monkeypatch.setattr(teacher_bench, "IMAGE_SIZE", (4 * 28, 3 * 28))
    out = tmp_path / "bench_gpu.json"
    assert main(["bench", "gpu", "--tiny", "--repeats", "1", "--out", str(out)]) == 0
    result = json.loads(out.read_text())
    assert capsys.readouterr().out.rstrip().endswith(gpu_table(result))  # the table is printed last
    student = result["student"]
    assert set(student["median_seconds"]) == set(student["peak_memory"])
    assert min(student["median_seconds"].values()) > 0
    assert student["image_tokens"] == 16 and student["batch_size"] == 2
    assert student["sequence_length_lavit"] == student["sequence_length_sft"] + 4  # the same texts, K = 4 latents
    assert result["generation"]["ratio_latent_over_plain"] > 0
    assert 0 < max(result["numerics"]["student"]["cases"]["dense_bf16"]["relative_error"].values()) < BF16_BOUND
    assert result["numerics"]["teacher"]["within_bounds"] and numerics_ok(result)
    assert result["teacher"]["a_traj_matches_eager"] and result["teacher"]["model"]["layers"] == 3  # all of it
    return result


def test_bench_gpu_runs_every_part_at_tiny_sizes(tmp_path, monkeypatch, capsys):
    """This CPU's default: the dense gate stepped, the flex steps recorded as not measured (no CPU backward)."""
    result = run_tiny(tmp_path, monkeypatch, capsys)
    assert set(result["student"]["median_seconds"]) == {"lavit_dense", "naive_sft"}
    assert "no backward on a CPU" in result["student"]["not_measured"]["lavit_flex"]
    assert set(result["numerics"]["student"]["cases"]) == {"dense_bf16"}

    # a bound missed: FAIL in the table, exit code 1
    result["numerics"]["student"]["cases"]["dense_bf16"]["within_bound"] = False
    result["numerics"]["student"]["within_bounds"] = False
    assert not numerics_ok(result) and "FAIL" in gpu_table(result)
    monkeypatch.setattr(bench_gpu, "bench_gpu", lambda sizes, out: result)
    args = argparse.Namespace(tiny=True, repeats=1, batch_size=0, student_layers=0, teacher_layers=0,
                              out=str(tmp_path / "again.json"), json=False)
    assert bench_gpu.run(args) == 1


@pytest.mark.slow
def test_bench_gpu_steps_the_flex_gate_where_torch_lets_it(tmp_path, monkeypatch, capsys):
    """The CUDA parts of the bench, here: torch's 'no FlexAttention backward on CPU' check lifted, its reference
    backward runs (slow: the eager FlexAttention is traced call by call)."""
    monkeypatch.setattr(torch_flex, "_validate_device", lambda query, key, value: None)
    monkeypatch.setattr(bench_gpu, "default_gate_attentions", lambda device: ("dense", "flex"))
    result = run_tiny(tmp_path, monkeypatch, capsys)
    student = result["student"]
    seconds = student["median_seconds"]
    assert set(seconds) == {"lavit_dense", "lavit_flex", "naive_sft"} and student["not_measured"] == {}
    assert student["ratios"]["flex_over_dense"] == pytest.approx(seconds["lavit_flex"] / seconds["lavit_dense"])
    cases = result["numerics"]["student"]["cases"]
    assert set(cases) == {"dense_bf16", "flex_bf16", "flex_fp32"}
    assert max(cases["flex_fp32"]["relative_error"].values()) < 1e-5  # the CPU tests' fp32 bound


@pytest.mark.parametrize(("argv", "cuda", "expected"), [
    (["--tiny"], False, {"repeats": 1}),  # TINY's own
    ([], True, {"repeats": 5}),  # REAL's own
    (["--tiny", "--repeats", "3", "--batch-size", "4"], False, {"repeats": 3, "batch_size": 4}),
])
def test_bench_gpu_takes_the_sizes_own_repeats_unless_asked(argv, cuda, expected, tmp_path, monkeypatch):
    """Without --repeats the sizes keep their own (TINY 1, REAL 5); what is asked replaces it."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(bench_gpu, "bench_gpu", lambda sizes, out: chosen.append(sizes) or {"numerics": {}})
    monkeypatch.setattr(bench_gpu, "gpu_table", lambda result: "table")
    assert main(["bench", "gpu", *argv, "--out", str(tmp_path / "bench.json")]) == 0
    base = bench_gpu.TINY if "--tiny" in argv else REAL
    assert chosen == [dataclasses.replace(base, **expected)]


def test_flex_steps_are_measured_where_torch_can_train_them():
    assert bench_gpu.default_gate_attentions(torch.device("cpu")) == ("dense",)
    assert bench_gpu.default_gate_attentions(torch.device("cuda")) == ("dense", "flex")


def test_the_real_widths_without_a_gpu_are_refused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "gpu", "--out", str(tmp_path / "bench.json")]) == 2
    assert "--tiny runs the same path" in capsys.readouterr().err
    assert not (tmp_path / "bench.json").exists()


def test_the_gpu_student_is_the_3b_at_its_widths_speaking_the_tiny_tokenizers_ids():
    """Built on the meta device: the real config (cut in depth only), the word-level tokenizer's special ids."""
    processor = exact_processor(16)
    model = student_model(REAL, processor, torch.device("meta"), torch.bfloat16, text_layers=2, vision_layers=1,
                          seed=0)
    ids = processor.tokenizer.convert_tokens_to_ids
    assert model.get_input_embeddings().weight.shape == (151_936, 2048)
    assert model.dtype == torch.bfloat16 and model.device.type == "meta"
    assert model.config.image_token_id == ids("<|image_pad|>")
    assert model.config.vision_start_token_id == ids("<|vision_start|>")
    assert (model.config.text_config.num_hidden_layers, model.config.vision_config.depth) == (2, 1)
    assert model.config.vision_config.hidden_size == 1280 and model.config.text_config.intermediate_size == 11008
