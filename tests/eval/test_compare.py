"""`lavit compare`: two eval folders written by hand, paired item by item — the numbers, every item left out with its
reason, MMVP on its pairs, the Table 1 layout of two suites, the warnings and the refusals — and two real suite runs
compared through the CLI."""

from __future__ import annotations

import json

import pytest
from fixtures import write_paper_root

from lavit.cli import main
from lavit.eval.compare import RunMismatch, compare_runs, render_markdown
from lavit.eval.stats import paired_difference, proportion_interval

PIXELS = {"min_pixels": 200704, "max_pixels": 1003520}


LAVIT_PROTOCOL = {"name": "lavit", "version": "lavit-2", "deviations": {}}


def scored(item: str, correct: bool, truth: str = "A", **meta) -> dict:
    return {"id": item, "prompt": f"question {item}", "raw_output": "A" if correct == (truth == "A") else "B",
            "extracted": "A" if correct == (truth == "A") else "B", "truth": truth, "correct": correct,
            "item_sha256": f"item {item} truth {truth}", **meta}


def skipped(item: str, reason: str, truth: str = "A", **meta) -> dict:
    return {"id": item, "skipped": f"{reason}: details", "truth": truth, "item_sha256": f"item {item} truth {truth}",
            **meta}


def write_bench(run, benchmark: str, records: list[dict], data: str = "data", protocol=LAVIT_PROTOCOL, **settings):
    """OUT/<benchmark>/predictions.jsonl and a summary.json counting them, as `lavit eval` leaves a folder: run on
    the benchmark data fingerprinted `data` under `protocol` (None: a run from before protocols were recorded)."""
    folder = run / benchmark.replace(":", "_")
    folder.mkdir(parents=True)
    (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    n = sum("skipped" not in r for r in records)
    summary = {"benchmark": benchmark, "n": n, "skipped": len(records) - n, "data_fingerprint": {"sha256": data},
               "settings": {"benchmark": benchmark, "model": str(run.name), **settings,
                            **({"protocol": protocol} if protocol else {})}}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def iq_runs(tmp_path):
    # A right on items 1–7, B on 1–4 and 8 (of 10): both 4, A only 3, B only 1, neither 2
    a = [scored(str(i), i <= 7) for i in range(1, 11)]
    b = [scored(str(i), i <= 4 or i == 8) for i in range(1, 11)]
    write_bench(tmp_path / "a", "blink:IQ_Test", a, **PIXELS)
    write_bench(tmp_path / "b", "blink:IQ_Test", b, **PIXELS)
    return tmp_path / "a", tmp_path / "b"


def test_the_paired_numbers(tmp_path):
    a, b = iq_runs(tmp_path)
    result = compare_runs(a, b)
    r = result["benchmarks"]["blink:IQ_Test"]
    assert r["n"] == 10 and r["excluded"] == [] and r["excluded_by_reason"] == {}
    assert r["a"]["accuracy"] == 0.7 and r["b"]["accuracy"] == 0.5
    assert r["a"]["ci95"] == pytest.approx(list(proportion_interval(7, 10)))
    d = r["difference"]
    assert d["difference"] == pytest.approx(0.2) and (d["both"], d["a_only"], d["b_only"], d["neither"]) == (4, 3, 1, 2)
    assert d["mcnemar_p"] == pytest.approx(2 * (1 + 4) / 16)  # 2·P(X ≤ 1), X ~ Bin(4, ½)
    by_hand = paired_difference([i <= 7 for i in range(1, 11)], [i <= 4 or i == 8 for i in range(1, 11)])
    assert d["ci95"] == by_hand["ci95"]
    assert r["settings_a"]["model"] == "a" and r["settings_b"]["model"] == "b" and result["warnings"] == []
    assert result["suite"] is None and result["only_in_a"] == [] and result["only_in_b"] == []
    low, high = d["ci95"]
    table = render_markdown(result).splitlines()
    assert "| benchmark | n | A | B | A − B [95 % CI] | McNemar p |" in table
    assert (f"| blink:IQ_Test | 10 | 70.0 [{100 * r['a']['ci95'][0]:.1f}, {100 * r['a']['ci95'][1]:.1f}] | "
            f"50.0 [{100 * r['b']['ci95'][0]:.1f}, {100 * r['b']['ci95'][1]:.1f}] | "
            f"+20.0 [{100 * low:+.1f}, {100 * high:+.1f}] | 0.625 |") in table


def test_every_item_left_out_is_counted_and_listed_by_reason(tmp_path):
    common = [scored("1", True), scored("2", False), scored("3", True)]
    a = [*common, scored("only_a", True), skipped("skip_a", "image_missing"), scored("skip_b", True),
         skipped("skip_both", "image_corrupt"), scored("fixed", True, truth="B")]
    b = [*common, scored("only_b", False), scored("skip_a", False), skipped("skip_b", "image_corrupt"),
         skipped("skip_both", "image_corrupt"), scored("fixed", False, truth="A")]
    write_bench(tmp_path / "a", "vstar", a)
    write_bench(tmp_path / "b", "vstar", b)
    with pytest.raises(RunMismatch) as refused:  # other items, another truth: not the same questions
        compare_runs(tmp_path / "a", tmp_path / "b")
    assert refused.value.differences == [
        "vstar: 1 items only in A (only_a)", "vstar: 1 items only in B (only_b)",
        "vstar: the truth differs on 1 items (fixed; label fixes A: none, B: none)"]
    result = compare_runs(tmp_path / "a", tmp_path / "b", pair_anyway=True)
    r = result["benchmarks"]["vstar"]
    assert result["pair_anyway"] and r["paired_anyway"] == refused.value.differences
    assert r["n"] == 3 and r["a"]["correct"] == 2 and r["b"]["correct"] == 2
    assert r["excluded_by_reason"] == {"only_in_a": 1, "only_in_b": 1, "skipped_in_a:image_missing": 1,
                                       "skipped_in_b:image_corrupt": 1, "skipped_in_both": 1, "truth_differs": 1}
    assert {e["id"]: e["reason"] for e in r["excluded"]} == {
        "only_a": "only_in_a", "only_b": "only_in_b", "skip_a": "skipped_in_a:image_missing",
        "skip_b": "skipped_in_b:image_corrupt", "skip_both": "skipped_in_both", "fixed": "truth_differs"}
    notes = render_markdown(result)
    assert ("- vstar: 6 items not paired (only_in_a 1, only_in_b 1, skipped_in_a:image_missing 1, "
            "skipped_in_b:image_corrupt 1, skipped_in_both 1, truth_differs 1)") in notes


def test_mmvp_is_also_compared_on_complete_pairs(tmp_path):
    # pairs 0–3; A gets pairs 0 and 1 whole, B pair 0 only; item 8 (pair 3) was skipped by B
    right_a = {"1": True, "2": True, "3": True, "4": True, "5": True, "6": False, "7": False, "8": True}
    right_b = {"1": True, "2": True, "3": True, "4": False, "5": False, "6": False, "7": True}
    a = [scored(i, c, pair=(int(i) - 1) // 2) for i, c in right_a.items()]
    b = [scored(i, c, pair=(int(i) - 1) // 2) for i, c in right_b.items()] + [skipped("8", "image_missing", pair=3)]
    write_bench(tmp_path / "a", "mmvp", a)
    write_bench(tmp_path / "b", "mmvp", b)
    result = compare_runs(tmp_path / "a", tmp_path / "b")
    r = result["benchmarks"]["mmvp"]
    assert r["n"] == 7 and r["excluded_by_reason"] == {"skipped_in_b:image_missing": 1}
    pairs = r["pairs"]
    assert pairs["n"] == 3 and pairs["incomplete"] == 1  # pair 3 lost its item 8
    assert pairs["a"]["correct"] == 2 and pairs["b"]["correct"] == 1
    assert (pairs["difference"]["a_only"], pairs["difference"]["b_only"]) == (1, 0)
    assert pairs["difference"]["difference"] == pytest.approx(1 / 3)
    assert any(line.startswith("| mmvp (pairs) | 3 | 66.7 [") for line in render_markdown(result).splitlines())


def test_two_suites_print_the_table_1_layout(tmp_path):
    a, b = iq_runs(tmp_path)
    write_bench(a, "mmvp", [scored(str(i), i != 2, pair=(i - 1) // 2) for i in range(1, 5)])
    write_bench(b, "mmvp", [scored(str(i), i % 2 == 1, pair=(i - 1) // 2) for i in range(1, 5)])
    for run, label in ((a, "LaViT-3B"), (b, "Naive-SFT")):
        (run / "suite_paper.json").write_text(json.dumps({"model": label, "accuracy": {}}))
    result = compare_runs(a, b)
    assert result["suite"]["columns"]["MMVP"] == "mmvp" and result["suite"]["columns"]["IQ-Test"] == "blink:IQ_Test"
    assert result["suite"]["columns"]["MMStar"] is None  # in neither run: a dash, not a number
    lines = render_markdown(result).splitlines()
    start = lines.index("| Model | MMVP | V* Attr. | Rel. Depth | IQ-Test | Rel. Ref. | Spatial | MMStar |")
    mmvp = result["benchmarks"]["mmvp"]["difference"]  # A 3/4, B 2/4: A only item 4, B none
    iq = result["benchmarks"]["blink:IQ_Test"]["difference"]
    assert lines[start + 1] == "|---|---|---|---|---|---|---|---|"
    assert lines[start + 2].startswith("| A: LaViT-3B | 75.0 [")
    assert lines[start + 3].startswith("| B: Naive-SFT | 50.0 [")
    assert lines[start + 4] == (f"| A − B | +25.0 [{100 * mmvp['ci95'][0]:+.1f}, {100 * mmvp['ci95'][1]:+.1f}] | — | "
                                f"— | +20.0 [{100 * iq['ci95'][0]:+.1f}, {100 * iq['ci95'][1]:+.1f}] | — | — | — |")
    assert lines[start + 5] == "| McNemar p | 1.000 | — | — | 0.625 | — | — | — |"


def test_settings_are_recorded_and_other_resolutions_or_fixes_warned(tmp_path, capsys):
    write_bench(tmp_path / "a", "mmvp", [scored("1", True, pair=0)], min_pixels=200704, max_pixels=1003520,
                label_fixes=["99:A→B"])
    write_bench(tmp_path / "b", "mmvp", [scored("1", False, pair=0)], min_pixels=3136, max_pixels=1003520)
    out = tmp_path / "cmp.json"
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "| mmvp | 1 | 100.0 [" in captured.out
    assert "lavit compare: warning: mmvp: A was evaluated at min_pixels/max_pixels 200704/1003520, B at " \
           "3136/1003520" in captured.err
    assert "label fix tables differ (A: ['99:A→B'], B: none)" in captured.err
    saved = json.loads(out.read_text())
    assert saved["benchmarks"]["mmvp"]["settings_b"]["min_pixels"] == 3136 and len(saved["warnings"]) == 2


def test_benchmark_choice_and_runs_that_cannot_be_compared(tmp_path, capsys):
    a, b = iq_runs(tmp_path)
    write_bench(a, "mmvp", [scored("1", True, pair=0)])
    write_bench(b, "vstar", [scored("1", True)])
    result = compare_runs(a / "blink_IQ_Test", b)  # one benchmark's folder against a run folder
    assert list(result["benchmarks"]) == ["blink:IQ_Test"]
    both = compare_runs(a, b)
    assert list(both["benchmarks"]) == ["blink:IQ_Test"] and both["only_in_a"] == ["mmvp"]
    assert both["only_in_b"] == ["vstar"] and "- only in A: mmvp" in render_markdown(both)
    assert list(compare_runs(a, b, ["blink_IQ_Test"])["benchmarks"]) == ["blink:IQ_Test"]  # the folder's spelling
    with pytest.raises(ValueError, match=r"benchmarks \['mmvp'\] are not in both runs"):
        compare_runs(a, b, ["mmvp"])
    with pytest.raises(ValueError, match="no benchmark is in both runs"):
        compare_runs(a / "mmvp", b / "vstar")
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        compare_runs(tmp_path / "nowhere", b)

    unfinished = tmp_path / "c" / "mmvp"
    unfinished.mkdir(parents=True)
    (unfinished / "predictions.jsonl").write_text(json.dumps(scored("1", True, pair=0)) + "\n")
    with pytest.raises(ValueError, match="has predictions.jsonl but no summary.json"):
        compare_runs(tmp_path / "c", a)
    torn = write_bench(tmp_path / "d", "mmvp", [scored("1", True, pair=0)])
    with open(torn / "predictions.jsonl", "a") as f:
        f.write('{"id": "2", "pro')
    with pytest.raises(ValueError, match="ends in a torn line"):
        compare_runs(tmp_path / "d", a)
    stale = write_bench(tmp_path / "e", "mmvp", [scored("1", True, pair=0), scored("2", True, pair=0)])
    summary = json.loads((stale / "summary.json").read_text())
    (stale / "summary.json").write_text(json.dumps({**summary, "n": 1}))  # a later --max-samples 1 run
    with pytest.raises(ValueError, match="holds 2 records, summary.json counts 1"):
        compare_runs(tmp_path / "e", a)

    assert main(["compare", str(tmp_path / "c"), str(a)]) == 2
    assert "lavit compare: error:" in capsys.readouterr().err
    assert main(["compare", str(a), str(b), "--out", str(a / "blink_IQ_Test" / "summary.json")]) == 2
    assert "would overwrite a lavit eval file" in capsys.readouterr().err


def test_two_suite_runs_compare_through_the_cli(tmp_path, capsys):
    root = write_paper_root(tmp_path / "data")
    for letter, extra in (("A", ["--label-fixes"]), ("B", ["--interval", "clopper_pearson"])):
        assert main(["eval", "--model", f"constant:{letter}", "--suite", "paper", "--data-root", str(root),
                     "--out", str(tmp_path / letter), *extra]) == 0
    capsys.readouterr()
    suite_b = json.loads((tmp_path / "B" / "suite_paper.json").read_text())
    assert suite_b["interval"] == "clopper_pearson"
    assert suite_b["score_ci95"]["MMVP"] == pytest.approx(list(proportion_interval(3, 8, method="clopper_pearson")))
    # the fixture's 8 MMVP rows hold none of the fixed items; only MMVP's run carries the table
    mmvp_a = json.loads((tmp_path / "A" / "mmvp" / "summary.json").read_text())
    assert mmvp_a["label_fixes"] == []
    assert [f["reason"] for f in mmvp_a["label_fixes_not_applied"]] == ["not_in_run"] * 4
    assert "label_fixes" not in json.loads((tmp_path / "A" / "vstar" / "summary.json").read_text())["settings"]
    out = tmp_path / "a_vs_b.json"
    assert main(["compare", str(tmp_path / "A"), str(tmp_path / "B"), "--out", str(out)]) == 0
    printed = capsys.readouterr()
    # one resolution for the suite: the only warning is MMVP's fix table, in A alone
    assert printed.err.count("warning") == 1 and "mmvp: label fix tables differ" in printed.err
    result = json.loads(out.read_text())
    assert len(result["benchmarks"]) == 7 and all(c is not None for c in result["suite"]["columns"].values())
    mmvp = result["benchmarks"]["mmvp"]
    # constant A vs constant B on MMVP's 8 items: A right on 5, B on the other 3
    assert (mmvp["n"], mmvp["difference"]["a_only"], mmvp["difference"]["b_only"]) == (8, 5, 3)
    assert mmvp["pairs"]["n"] == 4 and mmvp["pairs"]["a"]["correct"] == 1 and mmvp["pairs"]["b"]["correct"] == 0
    lines = printed.out.splitlines()
    assert "| A: constant:A | 62.5 [30.6, 86.3] | 40.0 [11.8, 76.9] | 60.0 [23.1, 88.2] | 50.0 [15.0, 85.0] | " \
           "33.3 [6.1, 79.2] | 75.0 [30.1, 95.4] | 50.0 [18.8, 81.2] |" in lines
    assert any(line.startswith("| A − B | +25.0 [") for line in lines)


def test_runs_on_different_benchmark_folders_are_refused(tmp_path, capsys):
    """Two MMVP copies whose 8 items share ids and, for 7 of them, truths, but not their images and questions: the
    pairing would print a McNemar p for questions that were never the same; it is refused, listing why."""
    from fixtures import MMVP_ROWS, write_mmvp

    first = write_mmvp(tmp_path / "MMVP")
    other_rows = [(f"Another question {n}?", options, answer) for n, (_, options, answer) in enumerate(MMVP_ROWS, 1)]
    other_rows[0] = (other_rows[0][0], other_rows[0][1], "(b)")  # one truth differs too
    second = write_mmvp(tmp_path / "MMVP_other", rows=other_rows)
    (second / "MMVP Images" / "3.jpg").write_bytes((first / "MMVP Images" / "5.jpg").read_bytes())
    for letter, root in (("A", first), ("B", second)):
        assert main(["eval", "--model", f"constant:{letter}", "--benchmark", "mmvp", "--data-root", str(root),
                     "--out", str(tmp_path / letter)]) == 0
    capsys.readouterr()
    with pytest.raises(RunMismatch) as refused:
        compare_runs(tmp_path / "A", tmp_path / "B")
    reasons = refused.value.differences
    assert reasons[0].startswith("mmvp: data files differ (A sha256 ")
    assert reasons[1] == "mmvp: the truth differs on 1 items (1; label fixes A: none, B: none)"
    assert reasons[2] == "mmvp: 7 items were asked differently (prompt, options or image bytes; 2, 3, 4, 5, 6, … (7 in all))"
    assert main(["compare", str(tmp_path / "A"), str(tmp_path / "B")]) == 2
    err = capsys.readouterr().err
    assert "lavit compare: error: the runs are not comparable: mmvp: data files differ" in err and "--pair-anyway" in err
    out = tmp_path / "anyway.json"
    assert main(["compare", str(tmp_path / "A"), str(tmp_path / "B"), "--pair-anyway", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["pair_anyway"] and saved["benchmarks"]["mmvp"]["paired_anyway"] == reasons
    assert saved["benchmarks"]["mmvp"]["n"] == 7  # the item whose truth differs is still not paired


def test_runs_of_other_protocols_or_from_before_protocols_are_refused(tmp_path):
    records = [scored(str(i), i % 2 == 0) for i in range(1, 5)]
    write_bench(tmp_path / "lavit", "vstar", records)
    write_bench(tmp_path / "lmms", "vstar", records,
                protocol={"name": "lmms-eval", "version": "lmms-eval 0.7.3 (qwen2_5_vl)", "deviations": {}})
    write_bench(tmp_path / "longer", "vstar", records, protocol={**LAVIT_PROTOCOL, "deviations": {"max_new_tokens": 64}})
    write_bench(tmp_path / "old", "vstar", records, protocol=None)
    with pytest.raises(RunMismatch, match="vstar: protocol A .*'lavit'.* B .*'lmms-eval'"):
        compare_runs(tmp_path / "lavit", tmp_path / "lmms")
    with pytest.raises(RunMismatch, match="'deviations': {'max_new_tokens': 64}"):
        compare_runs(tmp_path / "lavit", tmp_path / "longer")
    with pytest.raises(RunMismatch, match="vstar: B predates recorded protocols and fingerprints"):
        compare_runs(tmp_path / "lavit", tmp_path / "old")
    assert compare_runs(tmp_path / "lavit", tmp_path / "lavit")["benchmarks"]["vstar"]["paired_anyway"] == []
