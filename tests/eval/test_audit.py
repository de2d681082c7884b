"""`lavit audit` end to end on tiny students: the MMVP fixture (pairs as swap donors), a sample file with
pairs, the table's numbers against the per-item answers, collapse statistics, refusals and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from lavit.cli import main
from lavit.eval.audit import (
    INTERVENTIONS,
    LoadedModel,
    _row,
    audit_items,
    audit_markdown,
    benchmark_items,
    collapse_stats,
    derangement,
    run_audit,
    sample_items,
)
from lavit.eval.matching import normalize_answer
from lavit.eval.runner import load_benchmark
from tests.conftest import Tiny
from tests.eval.fixtures import write_mmvp
from tests.inference.test_interventions import redrawn


@pytest.fixture(scope="module")
def student() -> LoadedModel:
    tiny = redrawn()
    return LoadedModel(tiny.model, tiny.processor, tiny.names, max_new_tokens=2, name="tiny-redrawn")


def rows(result: dict) -> dict[str, dict]:
    return {r["intervention"]: r for r in result["table"]}


def check_against_items(result: dict) -> None:
    """Every applicable row's numbers recomputed from the per-item answers in the result."""
    items = result["items"]
    for name, row in rows(result).items():
        if not row["applicable"]:
            continue
        asked = [it for it in items if name in it["answers"]]
        assert row["n"] == len(asked) and row["correct"] == sum(it["answers"][name]["correct"] for it in asked)
        low, high = row["ci95"]
        assert low <= row["accuracy"] <= high
        if name == "forced":
            continue
        diff = row["vs_forced"]
        assert diff["difference"] == pytest.approx(row["accuracy"] - sum(it["answers"]["forced"]["correct"]
                                                                         for it in asked) / len(asked))
        assert diff["ci95"][0] <= diff["difference"] <= diff["ci95"][1] and 0 <= diff["mcnemar_p"] <= 1
        flips = [it["answers"][name]["extracted"] != it["answers"]["forced"]["extracted"] for it in asked]
        assert row["flip_rate"] == pytest.approx(sum(flips) / len(asked))
        if name == "swap":
            forced = {it["id"]: it["answers"]["forced"]["extracted"] for it in items}
            contrast = [it for it in asked if forced[it["id"]] not in (None, "")
                        and forced[it["donors"]["swap"]] not in (None, "", forced[it["id"]])]
            followed = sum(it["answers"]["swap"]["extracted"] == forced[it["donors"]["swap"]] for it in contrast)
            assert row["follows_donor"] == {"n": len(contrast), "followed": followed,
                                            "rate": followed / len(contrast) if contrast else None}


def check_collapse(result: dict, n: int) -> None:
    c = result["collapse"]
    k = result["k"]
    assert c["items"] == n and c["latents"]["vectors"] == n * (k - 1)
    for key in ("latents", "readout", "last_prompt_token"):
        cos, rank = c[key]["mean_pairwise_cosine"], c[key]["effective_rank"]
        assert math.isfinite(cos) and -1 <= cos <= 1 and math.isfinite(rank) and 1 <= rank <= c[key]["vectors"]


def test_audit_on_the_mmvp_fixture(student, tmp_path):
    root = write_mmvp(tmp_path / "MMVP")
    result = run_audit(student, tmp_path / "out", benchmark="mmvp", data_root=root, batch_size=8, seed=3)
    assert [r["intervention"] for r in result["table"]] == ["forced", *INTERVENTIONS]
    assert all(r["applicable"] and r["n"] == 8 for r in result["table"])
    check_against_items(result)
    check_collapse(result, 8)
    swap = result["donors"]["swap"]["by_item"]
    assert {i: d["donor"] for i, d in swap.items()} == {"1": "2", "2": "1", "3": "4", "4": "3", "5": "6", "6": "5",
                                                        "7": "8", "8": "7"}
    assert {d["rule"] for d in swap.values()} == {"pair"} and rows(result)["swap"]["no_donor"] == 0
    random = {i: d["donor"] for i, d in result["donors"]["random"]["by_item"].items()}
    assert sorted(random.values()) == sorted(random) and all(i != d for i, d in random.items())
    assert result["donors"]["random"]["seed"] == 3
    # the interventions did something to this model, while `none` and the readout's own logits are its own
    assert any(rows(result)[n]["flip_rate"] > 0 for n in ("zero", "first_repeat", "random", "swap"))
    assert json.loads((tmp_path / "out" / "audit.json").read_text()) == json.loads(json.dumps(result))
    table = (tmp_path / "out" / "audit.md").read_text()
    assert "| intervention | accuracy [CI] | Δ vs forced [CI] | McNemar p | flip rate | follows donor |" in table
    assert all(f"| {name} |" in table for name in INTERVENTIONS) and "effective rank" in table
    assert result["settings"]["benchmark"] == "mmvp" and result["settings"]["seed"] == 3
    with pytest.raises(ValueError, match="different settings"):  # another seed never lands in this folder
        run_audit(student, tmp_path / "out", benchmark="mmvp", data_root=root, seed=4)


def write_samples(tmp_path) -> tuple:
    images = tmp_path / "images"
    images.mkdir()
    for i in range(9):
        Image.new("RGB", (84 + 14 * (i % 3), 84), (25 * i, 200 - 20 * i, 90)).save(images / f"{i}.png")
    q1, q2, q3 = "what color is the circle ?", "how many objects are there ?", "what shape is it ?"
    lines = [{"id": "p1a", "image": "0.png", "question": q1, "answer": "red", "pair": "p1"},
             {"id": "p1b", "image": "1.png", "question": q1, "answer": "green", "pair": "p1"},
             {"id": "p2a", "image": "2.png", "question": q2, "answer": "two", "pair": 2},
             {"id": "p2b", "image": "3.png", "question": q2, "answer": "3", "pair": 2},
             {"id": "s1", "image": "4.png", "question": q3, "answer": "circle"},
             {"id": "s2", "image": "5.png", "question": q3, "answer": "square"},
             {"id": "alone", "image": "6.png", "question": "where is the cat ?", "answer": "left"},
             {"id": "half", "image": "7.png", "question": q1, "answer": "blue", "pair": "p3"},
             {"id": "badpair", "image": "8.png", "question": q1, "answer": "red", "pair": [1, 2]},
             {"id": "noimage", "image": "missing.png", "question": q1, "answer": "red"}]
    path = tmp_path / "samples.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path, images


def test_audit_on_a_sample_file_with_pairs(student, tmp_path):
    path, images = write_samples(tmp_path)
    result = run_audit(student, tmp_path / "out", samples=path, image_root=images, interventions=["swap", "zero"],
                       batch_size=8)
    assert result["skipped_by_reason"] == {"cell_invalid": 1, "image_missing": 1} and result["n_asked"] == 8
    swap = result["donors"]["swap"]["by_item"]
    assert {i: d["donor"] for i, d in swap.items()} == {"p1a": "p1b", "p1b": "p1a", "p2a": "p2b", "p2b": "p2a",
                                                        "s1": "s2", "s2": "s1", "alone": None, "half": None}
    assert swap["s1"]["rule"] == "same_prompt" and swap["p1a"]["rule"] == "pair" and "1 askable" in swap["half"]["rule"]
    table = rows(result)
    assert list(table) == ["forced", "zero", "swap"]
    assert table["swap"]["n"] == 6 and table["swap"]["no_donor"] == 2 and table["zero"]["n"] == 8
    assert table["swap"]["follows_donor"]["n"] > 0  # free-text answers differ between donor and recipient
    check_against_items(result)
    check_collapse(result, 8)
    by_id = {it["id"]: it for it in result["items"]}
    forced = by_id["p2b"]["answers"]["forced"]
    assert forced["extracted"] == normalize_answer(forced["raw"])  # free text: compared normalised
    assert "swap" not in by_id["alone"]["answers"]


def test_sample_rows_that_cannot_be_asked_are_recorded_skips(tmp_path):
    path, images = write_samples(tmp_path)
    items = {it.id: it for it in sample_items(path, images)}
    assert items["badpair"].skip.startswith("cell_invalid: 'pair' is a list")
    assert items["noimage"].skip.startswith("image_missing")
    assert items["p2a"].pair == 2 and items["alone"].pair is None and items["p1a"].skip is None
    assert len(sample_items(path, images, max_samples=3)) == 3


def test_refusals_and_not_applicable_interventions(tmp_path):
    path, images = write_samples(tmp_path)
    items = sample_items(path, images)[:2]
    hybrid = Tiny(family="qwen3_5")
    model = LoadedModel(hybrid.model, hybrid.processor, hybrid.names, max_new_tokens=1)
    with pytest.raises(ValueError, match="recurrent state"):
        audit_items(model, items)
    assert [r["intervention"] for r in audit_items(model, items, interventions=["none"])["table"]] == ["forced", "none"]
    one = Tiny(k=1)
    result = audit_items(LoadedModel(one.model, one.processor, one.names, max_new_tokens=1), items)
    table = rows(result)
    assert table["none"]["applicable"] and table["masked"]["applicable"]
    for name in ("zero", "first_repeat", "random", "swap"):
        assert not table[name]["applicable"] and "K = 1" in table[name]["reason"]
    assert result["collapse"]["latents"] is None and result["collapse"]["readout"]["vectors"] == 2
    assert "| zero | not applicable: K = 1" in audit_markdown(result)
    assert "1..0" not in audit_markdown(result)  # no block to name: not "latents 1..0"
    assert "| latent block (none: K = 1) | — | no latent block (K = 1) | |" in audit_markdown(result)
    tiny = Tiny(k=2)
    table = rows(audit_items(LoadedModel(tiny.model, tiny.processor, tiny.names, max_new_tokens=1), items,
                             interventions=["first_repeat", "zero"]))
    assert "K = 2" in table["first_repeat"]["reason"] and table["zero"]["applicable"]
    with pytest.raises(ValueError, match="no latent tokens"):
        audit_items(LoadedModel(tiny.model, tiny.processor, []), items)
    with pytest.raises(ValueError, match="unknown interventions"):
        audit_items(LoadedModel(tiny.model, tiny.processor, tiny.names), items, interventions=["forced"])


def test_collapse_statistics_on_known_states():
    basis = torch.eye(4)
    assert collapse_stats(basis) == {"vectors": 4, "mean_pairwise_cosine": pytest.approx(0.0),
                                     "effective_rank": pytest.approx(3.0)}  # centred: 3 equal singular values
    line = torch.tensor([[1.0, 1.0], [2.0, 2.0], [4.0, 4.0]])
    assert collapse_stats(line)["mean_pairwise_cosine"] == pytest.approx(1.0)
    assert collapse_stats(line)["effective_rank"] == pytest.approx(1.0)
    assert collapse_stats(torch.ones(5, 3))["effective_rank"] == 0.0
    assert collapse_stats(torch.ones(1, 3))["effective_rank"] is None
    with pytest.raises(ValueError, match="zero vector"):
        collapse_stats(torch.zeros(2, 3))
    perm = derangement(6, np.random.default_rng(0))
    assert sorted(perm) == list(range(6)) and all(i != j for i, j in enumerate(perm))


def test_cli_audit(tmp_path, export_tiny_student):
    write_mmvp(tmp_path / "MMVP")
    export_tiny_student(tmp_path / "student")
    args = ["audit", "--model", str(tmp_path / "student"), "--benchmark", "mmvp", "--data-root", str(tmp_path / "MMVP"),
            "--out", str(tmp_path / "out"), "--interventions", "zero,swap", "--max-new-tokens", "2",
            "--max-samples", "4", "--batch-size", "4"]
    assert main(args) == 0
    result = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert result["settings"]["model"] == str((tmp_path / "student").resolve())
    assert result["settings"]["protocol"]["name"] == "lavit" and result["settings"]["max_new_tokens"] == 2
    assert result["settings"]["interventions"] == ["zero", "swap"] and result["n_asked"] == 4
    assert [r["intervention"] for r in result["table"]] == ["forced", "zero", "swap"]
    assert (tmp_path / "out" / "audit.md").is_file()
    assert main([*args, "--seed", "1"]) == 2  # other settings: refused
    assert main([*args[:-6], "--interventions", "zero,shuffle"]) == 2
    assert main([*args, "--samples", str(tmp_path / "s.jsonl")]) == 2
    # another protocol asks and scores the items its way, and says so
    authors = [*args[:8], str(tmp_path / "authors"), *args[9:], "--protocol", "authors"]
    assert main(authors) == 0
    result = json.loads((tmp_path / "authors" / "audit.json").read_text())
    assert result["settings"]["protocol"]["name"] == "authors" and result["settings"]["latent_mode"] == "forced"


def test_follows_donor_counts_only_items_and_donors_that_answered():
    # a, b: each other's donor with different letters; c's donor d gave no letter; e's donor a agrees with e
    forced = {"a": "A", "b": "B", "c": "A", "d": None, "e": "A"}
    swapped = {"a": "B", "b": "B", "c": None, "d": "A", "e": "B"}

    def scored(answers: dict) -> dict:
        return {i: {"raw": str(x), "extracted": x, "correct": x == "A"} for i, x in answers.items()}

    donors = {"a": {"donor": "b"}, "b": {"donor": "a"}, "c": {"donor": "d"}, "d": {"donor": "c"}, "e": {"donor": "a"}}
    row = _row("swap", {"forced": scored(forced), "swap": scored(swapped)}, donors, n_ready=5)
    # contrast: a (donor B), b (donor A); d has no answer of its own, c's donor d none, e's donor agrees with it
    assert row["follows_donor"] == {"n": 2, "followed": 1, "rate": 0.5}
    assert row["flip_rate"] == pytest.approx(4 / 5) and row["no_donor"] == 0


def test_audit_applies_label_fixes_only_when_asked(tmp_path):
    from tests.eval.test_runner import mmvp_rows

    root = write_mmvp(tmp_path / "MMVP", rows=mmvp_rows())
    plain, fixed = benchmark_items("mmvp", root), benchmark_items("mmvp", root, label_fixes=True)
    *_, no_settings, none = load_benchmark("mmvp", root)
    *_, settings, record = load_benchmark("mmvp", root, label_fixes=True)
    truths = lambda items: {it.id: it.truth for it in items if it.id in ("98", "99", "100", "279", "280")}  # noqa: E731
    assert none == no_settings == {} and settings == {"label_fixes": ["99:A→B", "100:B→A", "279:A→B", "280:B→A"]}
    assert truths(plain) == {"98": "B", "99": "A", "100": "B", "279": "A", "280": "B"}
    assert truths(fixed) == {"98": "B", "99": "B", "100": "A", "279": "B", "280": "A"}
    assert [f["id"] for f in record["label_fixes"]] == ["99", "100", "279", "280"]
    assert record["label_fixes_not_applied"] == []
    with pytest.raises(ValueError, match="no documented label errors"):
        benchmark_items("mmstar", root, label_fixes=True)
    samples, images = write_samples(tmp_path)
    with pytest.raises(ValueError, match="apply to a benchmark"):
        run_audit(None, tmp_path / "out", samples=samples, image_root=images, label_fixes=True)
