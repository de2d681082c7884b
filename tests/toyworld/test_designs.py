"""`lavit ablate --rows designs`: the choice on val, the table, and the whole run at a reduced budget."""

from __future__ import annotations

import json
import typing
from dataclasses import fields, replace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lavit.ablate import DESIGNS, LATENT_METHODS, choose_on_val, design_table_lines, finished_training, run_designs
from lavit.config import config_to_dict
from lavit.data.sft_dataset import data_fingerprint
from lavit.demo import DemoConfig
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.train import DATA_FINGERPRINT, RESULTS


def test_every_design_names_a_real_method_and_setting():
    methods = set(typing.get_args(typing.get_type_hints(LavitTrainConfig)["method"]))
    known = {f.name for f in fields(LavitTrainConfig)}
    assert DESIGNS[0][0] == "Naive-SFT"
    assert len({name for name, _ in DESIGNS}) == len(DESIGNS)
    for name, candidates in DESIGNS:
        assert candidates, name
        for method, overrides in candidates:
            assert method in methods, (name, method)
            assert set(overrides) <= known, (name, set(overrides) - known)
            teacher = {"teacher": "tiny"} if method == "gkd" else {}  # run_designs passes the toy teacher
            LavitTrainConfig(method=method, max_steps=10, gate_warmup_steps=4, **teacher, **overrides)  # valid


def test_choose_on_val_takes_the_best_mean_and_the_first_on_a_tie():
    assert choose_on_val([[0.5, 0.6], [0.7, 0.5], [0.6, 0.6]]) == 1  # means 0.55, 0.60, 0.60
    assert choose_on_val([[0.9, 0.1], [0.4, 0.4]]) == 0
    assert choose_on_val([[0.2]]) == 0
    with pytest.raises(ValueError, match="val accuracies"):
        choose_on_val([[0.5], []])
    with pytest.raises(ValueError, match="val accuracies"):
        choose_on_val([])


def test_a_finished_run_of_the_same_settings_and_data_is_reused_and_no_other(tmp_path):
    data = tmp_path / "sft.parquet"
    pq.write_table(pa.table({"id": ["a", "b"]}), data)
    cfg = LavitTrainConfig(data=[str(data)], output_dir=str(tmp_path / "run"), max_steps=10, gate_warmup_steps=4)
    assert finished_training(cfg) is None  # nothing trained yet
    student = tmp_path / "run" / "student"
    student.mkdir(parents=True)
    (student / "lavit.json").write_text("{}")
    # what `run_training` writes when it finishes (json.dumps of these keys, among others)
    done = {"settings": config_to_dict(cfg), DATA_FINGERPRINT: data_fingerprint(cfg.data), "student_dir": str(student),
            "train_loss": 1.5, "wall_seconds": 12.0}
    (tmp_path / "run" / RESULTS).write_text(json.dumps(done, indent=2))
    assert finished_training(cfg) == json.loads(json.dumps(done))
    assert finished_training(replace(cfg, lam=0.5)) is None  # another setting
    pq.write_table(pa.table({"id": ["a", "c"]}), data)  # other data, same rows
    assert finished_training(cfg) is None
    pq.write_table(pa.table({"id": ["a", "b"]}), data)
    assert finished_training(cfg) is not None
    (student / "lavit.json").unlink()  # the export is gone
    assert finished_training(cfg) is None


def _entry(values):
    return {"mean": float(np.mean(values)), "ci95": [min(values), max(values)], "per_seed": values}


def test_design_table_shows_the_choice_the_difference_and_the_audit():
    audit = {"seeds": 2, "table": [
        {"intervention": "forced", "applicable": True, "accuracy": 0.8, "difference": None, "difference_ci95": None},
        {"intervention": "zero", "applicable": True, "accuracy": 0.5, "difference": -0.3,
         "difference_ci95": [-0.35, -0.25]},
        {"intervention": "swap", "applicable": False, "reason": "no donors"}],
        "diagnostics": {"table": [{"arm": "oracle_donor", "applicable": True, "accuracy": 0.2, "difference": -0.6,
                                   "difference_ci95": [-0.7, -0.5], "follows_oracle": 0.875}],
                        "emission": {"own": {"any_latent": 1.0, "all_latents_first": 0.25}},
                        "norm_ratio": {"input": 0.9, "final": 33.71}}}
    result = {"settings": {"world_name": "default", "steps": 200, "seeds": 2}, "rows": [
        {"design": "Naive-SFT", "chosen": {}, "candidates": [{"overrides": {}, "val": _entry([0.8, 0.9])}],
         "val": _entry([0.8, 0.9]), "test": _entry([0.7, 0.8]), "train_seconds": 12.0},
        {"design": "KD", "chosen": {"kd_loss": "jsd"},
         "candidates": [{"overrides": {"kd_loss": "forward_kl"}, "val": _entry([0.6, 0.6])},
                        {"overrides": {"kd_loss": "jsd"}, "val": _entry([0.7, 0.8])}],
         "val": _entry([0.7, 0.8]), "test": _entry([0.75, 0.85]), "train_seconds": 20.0,
         "vs_naive_sft": {"mean": 0.05, "ci95": [-0.01, 0.11], "verdict": "no_detectable_difference"},
         "audit": audit}]}
    lines = design_table_lines(result)
    text = "\n".join(lines)
    assert "| Naive-SFT | — | 85.0 [80.0, 90.0] | 75.0 [70.0, 80.0] | — | — | 12 |" in lines
    assert "| KD | kd_loss=jsd (of kd_loss=forward_kl: val 60.0; kd_loss=jsd: val 75.0) |" in text
    assert "| +5.0 [-1.0, +11.0] | no_detectable_difference | 20 |" in text
    kd_audit = next(line for line in lines if line.startswith("| KD |") and "+5.0" not in line)
    cells = [c.strip() for c in kd_audit.strip("|").split("|")]
    # none, zero, random, swap, oracle_donor, format_only, emission, follows donor (swap / oracle), norm ratio
    assert cells == ["KD", "n/a", "-30.0 [-35.0, -25.0]", "n/a", "n/a", "-60.0 [-70.0, -50.0]", "n/a", "100 / 25",
                     "n/a / 88", "33.7× / 0.9×"]


@pytest.mark.slow
def test_designs_at_a_reduced_budget(tmp_path):
    cfg = DemoConfig(out=str(tmp_path), seeds=2, pool_samples=256, val_samples=16, test_samples=16, steps=4,
                     audit_samples=8)
    result = run_designs(cfg)
    rows = {r["design"]: r for r in result["rows"]}
    assert list(rows) == [name for name, _ in DESIGNS]
    assert "vs_naive_sft" not in rows["Naive-SFT"]
    for name, row in rows.items():
        val_means = [c["val"]["mean"] for c in row["candidates"]]
        assert row["val"]["mean"] == max(val_means), name  # the reported candidate is the best on val
        assert row["chosen"] == row["candidates"][val_means.index(max(val_means))]["overrides"]
        assert len(row["test"]["per_seed"]) == 2
        if name != "Naive-SFT":
            expected = np.mean(np.array(row["test"]["per_seed"]) - np.array(rows["Naive-SFT"]["test"]["per_seed"]))
            assert row["vs_naive_sft"]["mean"] == pytest.approx(expected)
        assert ("audit" in row) == (row["method"] in LATENT_METHODS), name
    # each candidate trained its own student with its own method and settings
    for d, (name, candidates) in enumerate(DESIGNS):
        for c, (method, overrides) in enumerate(candidates):
            settings = json.loads((tmp_path / "seed1" / f"design{d}_{c}" / "train_results.json").read_text())["settings"]
            assert settings["method"] == method and settings["seed"] == 1
            assert all(settings[k] == v for k, v in overrides.items()), (name, overrides)
    markdown = (tmp_path / "designs.md").read_text()
    assert markdown.startswith("# Latent designs and distillation baselines in the toy world (default world)")
    assert json.loads((tmp_path / "designs.json").read_text())["rows"][0]["design"] == "Naive-SFT"
