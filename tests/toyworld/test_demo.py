"""`lavit demo`, `lavit ablate` and the artifact builder at reduced budgets (the committed toy models)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from lavit.analysis.stats import VERDICTS
from lavit.cli import main
from lavit.demo import DemoConfig
from lavit.ablate import run_ablation
from lavit.toyworld.artifacts import ArtifactBudget, build_artifacts

SMALL = ["--pool-samples", "256", "--val-samples", "24", "--test-samples", "24", "--steps", "6",
         "--analysis-samples", "12", "--diagnostic-samples", "12", "--dynamics-every", "3", "--audit-samples", "16"]


def _number(x) -> bool:
    return isinstance(x, float) or (isinstance(x, int) and not isinstance(x, bool))


@pytest.mark.slow
def test_demo_at_a_reduced_budget_keeps_its_json_contract(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--seeds", "2", *SMALL]) == 0
    results = json.loads((tmp_path / "results.json").read_text())

    validity = results["validity"]
    assert len(validity) == 7
    for c in validity.values():
        assert (c["value"] is None or _number(c["value"])) and _number(c["threshold"])
        assert isinstance(c["pass"], bool) and c["comparison"] in (">=", "<=")

    paired = results["paired_difference"]
    assert len(paired["per_seed"]) == 2 and all(_number(d) for d in paired["per_seed"])
    assert paired["mean"] == pytest.approx(np.mean(paired["per_seed"]))
    low, high = paired["ci95"]
    assert low <= paired["mean"] <= high and paired["verdict"] in VERDICTS
    by_seed = results["accuracy"]["by_seed"]
    assert paired["per_seed"] == pytest.approx([b - a for a, b in zip(by_seed["naive_sft"], by_seed["lavit"])])
    assert set(paired["per_split"]) == {"prior_consistent", "prior_violating"}

    for who in ("lavit", "base"):
        assert _number(results["latent_map"][who]["kl_target_vs_latent"])
        assert 0.0 <= results["latent_map"][who]["s_focus"] <= 1.0
    masked = results["masked_drop"]
    assert masked["per_seed"] == pytest.approx([a - m for a, m in zip(by_seed["lavit"], by_seed["lavit_masked"])])

    audit = results["audit"]
    assert audit["seeds"] == 2 and audit["items"] == 16 and len(audit["per_seed"]) == 2
    rows = {r["intervention"]: r for r in audit["table"]}
    assert list(rows) == ["forced", "none", "masked", "zero", "first_repeat", "random", "swap"]
    assert all(r["applicable"] for r in rows.values())
    for name in ("zero", "random", "swap"):
        per_seed = [next(t for t in a["table"] if t["intervention"] == name)["vs_forced"]["difference"]
                    for a in audit["per_seed"]]
        assert rows[name]["difference_per_seed"] == per_seed and rows[name]["difference"] == pytest.approx(
            np.mean(per_seed))
    assert 0.0 <= rows["swap"]["flip_rate"] <= 1.0 and _number(audit["collapse"]["readout"]["effective_rank"])

    for method in ("naive_sft", "lavit"):
        for records in results["dynamics"][method].values():
            assert [r["step"] for r in records] == [0, 3, 6]
            assert {"gamma", "answer_image_mass", "latent_s_focus", "answer_accuracy"} <= set(records[0])
    lavit_steps = results["dynamics"]["lavit"]["0"]
    assert lavit_steps[0]["gamma"] < 1e-3 and lavit_steps[-1]["gamma"] == 1.0  # the gate opens over T_w
    assert lavit_steps[0]["answer_image_mass"] < 1e-3 < lavit_steps[-1]["answer_image_mass"]
    assert all(r["latent_s_focus"] is None and r["gamma"] == 1.0 for r in results["dynamics"]["naive_sft"]["0"])

    for key in ("teacher", "base", "naive_sft", "lavit"):
        assert _number(results["accuracy"]["test"][key]["overall"])
    for rel in results["figures"].values():
        with Image.open(tmp_path / rel) as img:
            assert img.format == "PNG" and img.size[0] > 200
    assert {"dynamics_lavit", "dynamics_naive_sft"} <= set(results["figures"])
    report = (tmp_path / "report.md").read_text()
    assert report.index("## Is this a valid test?") < report.index("## Verdict") < report.index("## Accuracy")
    assert "## Latent-usage audit (16 paired test scenes, LaViT students, 2 seeds)" in report
    assert (tmp_path / "seed0" / "lavit" / "train_log.jsonl").is_file()
    out = capsys.readouterr().out
    assert "demo finished" in out and "LaViT − Naive-SFT" in out
    assert "'loss'" not in out  # the Trainer's log dicts go to train_log.jsonl, not the console


@pytest.mark.slow
def test_data_efficiency_at_a_reduced_budget(tmp_path):
    assert main(["ablate", "--out", str(tmp_path), "--seeds", "2", "--pool-sizes", "128,256", *SMALL]) == 0
    result = json.loads((tmp_path / "data_efficiency.json").read_text())
    assert [s["pool_samples"] for s in result["pool_sizes"]] == [128, 256]
    for s in result["pool_sizes"]:
        assert len(s["lavit"]["per_seed"]) == 2 and s["paired_difference"]["verdict"] in VERDICTS
    with Image.open(tmp_path / result["figure"]) as img:
        assert img.format == "PNG"


@pytest.mark.slow
def test_ablate_rows_at_a_reduced_budget(tmp_path):
    cfg = DemoConfig(out=str(tmp_path), seeds=1, pool_samples=256, test_samples=16, steps=4, audit_samples=8)
    rows = [("LaViT (full)", "lavit", {}), ("w/o trajectory alignment", "lavit", {"trajectory_loss": False}),
            ("T_w = half the steps", "lavit", {"gate_warmup_fraction": 0.5}),
            ("latent-only vision", "lavit", {"gate_readout": True, "gate": "none", "gate_final": 0.0})]
    result = run_ablation(cfg, rows, audit=True)
    assert [r["row"] for r in result["rows"]] == ["LaViT (full)", "w/o latent tokens (masked at inference)",
                                                  "w/o trajectory alignment", "T_w = half the steps",
                                                  "latent-only vision"]
    markdown = (tmp_path / "ablation.md").read_text()
    assert "| w/o trajectory alignment |" in markdown
    # every latent row is audited; the one whose gate stays closed at inference is not stock-servable
    audited = {r["row"]: r for r in result["rows"] if "audit" in r}
    assert set(audited) == {"LaViT (full)", "w/o trajectory alignment", "T_w = half the steps", "latent-only vision"}
    assert audited["latent-only vision"]["serving"].startswith("needs lavit's generation")
    assert audited["LaViT (full)"]["serving"].startswith("stock clients")
    assert "### Audit: latent-only vision (needs lavit's generation" in markdown
    meta = json.loads((tmp_path / "seed0" / "row3" / "student" / "lavit.json").read_text())
    assert meta["inference_gate"] == {"gamma": 0.0, "question_tokens": True, "readout": True}
    # A training setting reaches the trainer; a demo setting is turned into the training setting it controls.
    settings = [json.loads((tmp_path / "seed0" / f"row{i}" / "train_results.json").read_text())["settings"]
                for i in range(3)]
    assert [s["trajectory_loss"] for s in settings] == [True, False, True]  # (row 3: the latent-only student)
    assert [s["gate_warmup_steps"] for s in settings] == [round(4 * 0.4), round(4 * 0.4), 2]


def test_every_ablation_row_names_a_real_setting():
    from dataclasses import fields

    from lavit.ablate import ROW_SETS
    from lavit.training.lavit_config import LavitTrainConfig

    known = {f.name for f in fields(DemoConfig)} | {f.name for f in fields(LavitTrainConfig)}
    for name, rows in ROW_SETS.items():
        assert len({label for label, _, _ in rows}) == len(rows), name
        for label, method, overrides in rows:
            assert method in ("lavit", "naive_sft")
            assert set(overrides) <= known, (name, label, set(overrides) - known)


@pytest.mark.slow
def test_artifact_builder_at_a_tiny_budget(tmp_path):
    budget = ArtifactBudget(teacher_vision_steps=2, teacher_steps=2, student_vision_steps=2, base_steps=1,
                            capacity_steps=2, text_only_steps=2, batch_size=4, val_samples=8)
    report = build_artifacts(tmp_path, budget)
    assert set(report["models"]) == {"teacher", "base", "capacity", "text_only"}
    for role in ("teacher", "base", "text_only"):
        assert (tmp_path / role / "model.safetensors").is_file() and not (tmp_path / role / "lavit.json").exists()
    assert not (tmp_path / "capacity").exists()  # measured, not kept
    for entry in report["models"].values():
        assert 0.0 <= entry["val_accuracy"] <= 1.0 and set(entry["val_per_prior"]) == {"prior_consistent",
                                                                                      "prior_violating"}
    assert report["models"]["teacher"]["training"]["language"]["vision_trained"] is True
    assert report["models"]["text_only"]["training"]["language"]["vision_trained"] is False
    recorded = json.loads((tmp_path / "artifacts.json").read_text())
    assert recorded["models"]["teacher"]["budget"]["teacher_steps"] == 2
    build_artifacts(tmp_path, budget, roles=("base",))  # retraining one role keeps the others' records
    assert set(json.loads((tmp_path / "artifacts.json").read_text())["models"]) == set(report["models"])


def test_artifact_builder_refuses_mixing_worlds(tmp_path):
    from lavit.toyworld.world import WorldConfig

    (tmp_path / "artifacts.json").write_text(json.dumps({"world": {"prior_strength": 0.9}, "models": {"teacher": {}}}))
    with pytest.raises(ValueError, match="another world"):
        build_artifacts(tmp_path, ArtifactBudget(), WorldConfig(), roles=("base",))
    with pytest.raises(ValueError, match="unknown roles"):
        build_artifacts(tmp_path, ArtifactBudget(), roles=("student",))


def test_demo_refuses_missing_artifacts_and_bad_settings(tmp_path):
    with pytest.raises(FileNotFoundError, match="python -m lavit.toyworld.artifacts"):
        DemoConfig(out=str(tmp_path), artifacts=str(tmp_path / "none"))
    for bad in (dict(seeds=0), dict(world_seed=-1), dict(replay=-0.5), dict(gate_warmup_fraction=1.5)):
        with pytest.raises(ValueError):
            DemoConfig(out=str(tmp_path), **bad)
    assert main(["demo", "--out", str(tmp_path), "--seeds", "0"]) == 2


def test_analyze_cli_on_the_committed_toy_models(tmp_path, capsys):
    from lavit.toyworld.artifacts import ARTIFACTS_DIR
    from lavit.toyworld.world import write_split

    samples = write_split(tmp_path / "data", "test", 6, world_seed=3)
    correct = {"teacher": {f"test-{i:05d}": i % 2 == 0 for i in range(6)}}
    (tmp_path / "correct.json").write_text(json.dumps(correct))
    assert main(["analyze", "--samples", str(samples), "--image-root", str(tmp_path / "data" / "images"),
                 "--model", f"teacher={ARTIFACTS_DIR / 'teacher'}", "--model", f"base={ARTIFACTS_DIR / 'base'}",
                 "--pixels", "teacher=28224:28224", "--pixels", "base=28224:28224",  # the toy models' 6 × 6 grid
                 "--correct", str(tmp_path / "correct.json"), "--out", str(tmp_path / "an"), "--heatmaps", "2"]) == 0
    analysis = json.loads((tmp_path / "an" / "analysis.json").read_text())
    assert analysis["samples"] == 6 and set(analysis["perception_gap"]) == {"base"}
    teacher = analysis["per_model"]["teacher"]
    assert teacher["accuracy_by_s_focus"][0] == {"threshold": 0.0, "n": 6, "accuracy": 0.5}
    assert 0.0 < teacher["s_focus"]["mean"] < 1.0 and teacher["attention_entropy"]["mean"] <= np.log(36) + 1e-9
    for name in ("fig2", "fig3", "fig4", "fig5"):
        assert (tmp_path / "an" / analysis["figures"][name]).is_file()
    assert main(["analyze", "--samples", str(samples), "--image-root", str(tmp_path / "data" / "images"),
                 "--model", f"base={ARTIFACTS_DIR / 'base'}", "--out", str(tmp_path / "x")]) == 2  # no teacher


@pytest.mark.slow
def test_demo_with_students_of_another_family(tmp_path, monkeypatch):
    """`--student-family qwen3_vl`: a Qwen3-VL base (pretrained at a tiny budget, where the demo would use the
    family's full one) distilled from the Qwen2.5-VL toy teacher, end to end."""
    import lavit.demo

    budget = ArtifactBudget(student_vision_steps=10, base_steps=5, capacity_steps=5, val_samples=16)
    built = build_artifacts(tmp_path / "artifacts-qwen3_vl", budget, DemoConfig().world, roles=("capacity",),
                            student_family="qwen3_vl")
    monkeypatch.setattr(lavit.demo, "budget_for", lambda family, world_name: {("qwen3_vl", "default"): budget}[
        family, world_name])  # the demo asks for its own world's budget
    assert main(["demo", "--out", str(tmp_path), "--seeds", "2", "--student-family", "qwen3_vl", *SMALL]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert (results["settings"]["student_family"], results["settings"]["teacher_family"]) == ("qwen3_vl", "qwen2_5_vl")
    for method in ("naive_sft", "lavit"):
        config = json.loads((tmp_path / "seed0" / method / "student" / "config.json").read_text())
        assert config["model_type"] == "qwen3_vl"
    assert results["student_settings"]["model"] == str(tmp_path / "artifacts-qwen3_vl" / "base")
    # the demo pretrained the missing base and kept the capacity record; the check is the Qwen3-VL student's
    record = json.loads((tmp_path / "artifacts-qwen3_vl" / "artifacts.json").read_text())
    assert record["student_family"] == "qwen3_vl" and record["models"]["base"]["budget"]["base_steps"] == 5
    capacity = results["validity"]["student_capacity_val_accuracy"]["value"]
    assert capacity == built["models"]["capacity"]["val_accuracy"] == record["models"]["capacity"]["val_accuracy"]
    assert _number(results["latent_map"]["lavit"]["kl_target_vs_latent"])
    assert _number(results["accuracy"]["test"]["base"]["overall"])


def test_family_budgets():
    from lavit.toyworld.artifacts import BASE_STEPS, budget_for

    assert budget_for("qwen2_5_vl") == ArtifactBudget()  # the committed models' budget
    assert budget_for("qwen3_vl").base_steps == BASE_STEPS["qwen3_vl"] < ArtifactBudget().base_steps


def test_demo_refuses_unknown_and_hybrid_student_families():
    with pytest.raises(ValueError, match="not supported by lavit"):
        DemoConfig(student_family="llava")
    with pytest.raises(ValueError, match="linear-attention"):
        DemoConfig(student_family="qwen3_5")
