import json

import pytest

from lavit.cli import main
from lavit.models.families import FAMILIES
from lavit.training.bench import NO_CPU_BF16, cpu_bf16_kernels
from lavit.toyworld.shapes import write_sft_set


@pytest.mark.slow
def test_bench_train_prints_one_json_object_with_the_ratios_per_family(capsys):
    assert main(["bench", "train", "--json", "--repeats", "1", "--batch-size", "1"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert sorted(result["per_family"]) == sorted(FAMILIES)
    for family, measured in result["per_family"].items():
        for key in ("step_time_ratio_lavit_over_sft", "gen_time_ratio_latent_over_plain",
                    "step_time_ratio_continuous_over_sft", "step_time_ratio_continuous_over_lavit",
                    "gen_time_ratio_continuous_over_plain"):
            assert measured[key] > 0
        if cpu_bf16_kernels():
            assert measured["step_time_ratio_lavit_over_sft_bf16_autocast"] > 0
        else:  # said, not measured for hours on PyTorch's reference bf16 GEMM
            assert measured["bf16_autocast"] == NO_CPU_BF16
            assert "step_time_ratio_lavit_over_sft_bf16_autocast" not in measured
        assert measured["settings"]["num_latent_tokens"] == 4 and measured["settings"]["family"] == family
        assert measured["settings"]["image_tokens"] == 256  # the same image load whatever the patch size


def test_bench_train_rejects_an_unknown_family(capsys):
    assert main(["bench", "train", "--family", "llava"]) == 2
    assert "'llava' is not supported by lavit; supported: qwen2_vl, qwen2_5_vl, qwen3_vl" in capsys.readouterr().err


@pytest.mark.slow
def test_train_from_the_command_line(tmp_path, capsys):
    data = write_sft_set(tmp_path / "data", 8)
    code = main(["train", f"data=[{data}]", f"image_root={data.parent}", f"output_dir={tmp_path / 'run'}",
                 "max_steps=2", "gate_warmup_steps=1", "global_batch_size=2", "min_pixels=3136", "max_pixels=50176", "gradient_checkpointing=false"])
    assert code == 0
    out = capsys.readouterr().out
    summary = json.loads(out[out.rindex('{\n  "train_loss"'):])
    assert summary["global_step"] == 2
    assert (tmp_path / "run" / "student" / "config.json").is_file()


@pytest.mark.parametrize("override, message", [
    ("max_steps=0", "max_steps must be > 0"),
    ("max_steps=ten", "max_steps must be an integer"),
    ("learning_rate=fast", "learning_rate must be a number"),
    ("learnig_rate=1e-4", "unknown LavitTrainConfig keys: ['learnig_rate']"),
    ("gate=soft", "gate must be one of"),
    ("gradient_checkpointing=maybe", "gradient_checkpointing must be true or false"),
    ("max_steps", "recipe max_steps does not exist"),
])
def test_bad_config_is_a_one_line_error_naming_the_key(capsys, override, message):
    assert main(["train", override]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_help_config_lists_every_setting(capsys):
    assert main(["train", "--help-config"]) == 0
    out = capsys.readouterr().out
    assert "gate_warmup_steps = 400" in out and "T_w" in out


def test_bench_extract_reports_the_ratios_and_agrees_with_eager(capsys):
    assert main(["bench", "extract", "--json", "--repeats", "1", "--config", "tiny"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("time_ratio_extract_over_forward", "peak_mem_ratio_extract_over_forward",
                "time_ratio_eager_over_extract", "peak_mem_ratio_eager_over_extract", "bytes_per_sample"):
        assert result[key] > 0
    assert result["a_traj_matches_eager"] and result["image_tokens"] == 702
    assert result["model"]["config"] == "tiny" and result["bytes_per_sample"] < 16384


def test_a_full_disk_is_one_line_not_a_traceback(capsys, monkeypatch):
    import errno

    import lavit.cli

    def full(args):
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/data/part.parquet")

    parser = lavit.cli.build_parser()
    monkeypatch.setattr(lavit.cli, "build_parser", lambda: parser)
    parser.parse_args(["train"])  # the subparser exists; swap its handler for one whose disk is full
    parser._subparsers._group_actions[0].choices["train"].set_defaults(run=full)
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "disk full" in err and "No space left" in err and err.count("\n") == 1
