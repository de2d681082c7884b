"""Text that cannot be asked is a recorded skip in `lavit eval` and `lavit audit`, never the end of the run.

Once, one `<|image_pad|>` in an MMStar question stopped the whole run with the processor's "The total number of
<|image_pad|> tokens … and 2 images", naming no item and writing no summary; a rerun hit it again. Now an item
whose text holds a special token of the model's tokenizer (`special_token_in_text`) or is longer than
`--max-text-tokens` (`text_too_long`) is skipped with the item and the field named, and the rest is scored.
"""

from __future__ import annotations

import json

import pytest
from fixtures import (
    MMSTAR_ROWS,
    MMVP_ROWS,
    blink_prompt,
    vstar_text,
    write_blink_task,
    write_mmstar,
    write_mmvp,
    write_vstar,
)
from PIL import Image

from lavit.cli import main
from lavit.data.samples import QWEN_VL_SPECIAL_TOKENS
from lavit.eval.audit import LoadedModel, run_audit
from lavit.eval.models import ConstantModel, GenerativeModel
from lavit.eval.runner import PREDICTIONS, SUMMARY, output_dir, run_eval
from tests.conftest import Tiny

PAD = "<|image_pad|>"
DEPTH_CHOICES = ["A is closer", "B is closer"]


def poisoned_mmstar(root, token: str = PAD):
    """MMStar with item 1's question holding `token` (6 items)."""
    rows = list(MMSTAR_ROWS)
    category, l2, question, answer = rows[1]
    rows[1] = (category, l2, question.replace("beneath the cat", f"beneath the {token} cat"), answer)
    return write_mmstar(root, rows=rows)


def poisoned_vstar(root):
    """V* with line 1's text holding the pad token (5 direct_attributes items asked)."""
    text = vstar_text(f"What is the color of the {PAD} umbrella?", ["red", "blue", "green", "white"])
    return write_vstar(root, cells={1: {"text": text}})


def poisoned_blink(root):
    """BLINK Relative_Depth whose row 2's prompt holds the pad token (4 items)."""
    rows = [{"choices": DEPTH_CHOICES, "answer": a} for a in ("(A)", "(B)", "(A)", "(B)")]
    rows[1]["prompt"] = blink_prompt(f"Which point is closer {PAD} to the camera?", DEPTH_CHOICES)
    write_blink_task(root, "Relative_Depth", rows)
    return root


def poisoned_mmvp(root):
    """MMVP whose item 3's question holds the pad token (8 items)."""
    rows = list(MMVP_ROWS)
    rows[2] = (f"Is the dog {PAD} facing left or right?", *rows[2][1:])
    return write_mmvp(root, rows=rows)


# benchmark, writer, the poisoned item, the field named, items in all
POISONED = [("mmstar", poisoned_mmstar, "1", "question", 6), ("vstar", poisoned_vstar, "1", "text", 5),
            ("blink:Relative_Depth", poisoned_blink, "val_Relative_Depth_2", "prompt", 4),
            ("mmvp", poisoned_mmvp, "3", "Question", 8)]


@pytest.fixture(scope="module")
def tiny_model() -> GenerativeModel:
    """The built-in tiny Qwen2.5-VL: a real processor, whose `<|image_pad|>` count check is what once failed."""
    return GenerativeModel("tiny", max_new_tokens=2)


def records(out, benchmark: str) -> dict[str, dict]:
    lines = (output_dir(out, benchmark) / PREDICTIONS).read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


@pytest.mark.parametrize("benchmark,write,poisoned,field,total", POISONED, ids=[p[0] for p in POISONED])
def test_an_item_holding_a_special_token_is_skipped_and_the_rest_scored(tiny_model, tmp_path, benchmark, write,
                                                                        poisoned, field, total):
    root = write(tmp_path / "data")
    summary = run_eval(tiny_model, benchmark, root, tmp_path / "out")
    assert summary["n"] == total - 1 and summary["skipped"] == 1
    assert summary["skipped_by_reason"] == {"special_token_in_text": 1}
    saved = json.loads((output_dir(tmp_path / "out", benchmark) / SUMMARY).read_text())
    assert saved["skipped_by_reason"] == {"special_token_in_text": 1}
    skip = records(tmp_path / "out", benchmark)[poisoned]["skipped"]
    assert skip.startswith(f"special_token_in_text: {field} holds the special token '{PAD}' at character ")
    assert saved["settings"]["max_text_tokens"] == 1024 and PAD in saved["settings"]["special_tokens"]
    # a rerun decides the skip again and goes on
    assert run_eval(tiny_model, benchmark, root, tmp_path / "out")["skipped_by_reason"] == {"special_token_in_text": 1}


def test_an_item_over_max_text_tokens_is_skipped_and_the_limit_recorded(tmp_path, capsys):
    long_text = vstar_text("What is the color of the bag " + "really " * 200 + "?",
                           ["black", "brown", "yellow", "pink"])
    root = write_vstar(tmp_path / "vstar", cells={3: {"text": long_text}})
    args = ["eval", "--model", "tiny", "--benchmark", "vstar", "--data-root", str(root), "--max-new-tokens", "2"]
    assert main([*args, "--out", str(tmp_path / "out"), "--max-text-tokens", "100"]) == 0
    summary = json.loads((output_dir(tmp_path / "out", "vstar") / SUMMARY).read_text())
    assert summary["n"] == 4 and summary["skipped_by_reason"] == {"text_too_long": 1}
    assert summary["settings"]["max_text_tokens"] == 100
    assert records(tmp_path / "out", "vstar")["3"]["skipped"].startswith("text_too_long: text has ")
    assert "over max_text_tokens=100" in records(tmp_path / "out", "vstar")["3"]["skipped"]
    # another limit is another run: refused in this folder; 0 lifts the limit
    assert main([*args, "--out", str(tmp_path / "out"), "--max-text-tokens", "200"]) == 2
    assert "max_text_tokens: 100 → 200" in capsys.readouterr().err
    assert main([*args, "--out", str(tmp_path / "nolimit"), "--max-text-tokens", "0"]) == 0
    summary = json.loads((output_dir(tmp_path / "nolimit", "vstar") / SUMMARY).read_text())
    assert summary["n"] == 5 and summary["skipped"] == 0 and summary["settings"]["max_text_tokens"] is None


def test_a_constant_model_checks_qwen_vl_special_tokens_and_no_length(tmp_path):
    """A model without a tokenizer skips what a Qwen-VL model would skip for its special tokens (a fixed list, here
    one the tiny tokenizer lacks) and has no length limit: it counts no tokens and fills no memory."""
    summary = run_eval(ConstantModel("A"), "mmstar", poisoned_mmstar(tmp_path / "MMStar", "<|box_start|>"),
                       tmp_path / "out")
    assert summary["n"] == 5 and summary["skipped_by_reason"] == {"special_token_in_text": 1}
    assert records(tmp_path / "out", "mmstar")["1"]["skipped"].startswith(
        "special_token_in_text: question holds the special token '<|box_start|>'")
    assert summary["settings"]["special_tokens"] == list(QWEN_VL_SPECIAL_TOKENS)
    assert summary["settings"]["max_text_tokens"] is None
    novel = vstar_text("What is the color of the umbrella? " * 2900, ["red", "blue"])  # 100 000 characters
    root = write_vstar(tmp_path / "vstar", cells={1: {"text": novel}})
    summary = run_eval(ConstantModel("A"), "vstar", root, tmp_path / "out", max_text_tokens=10)
    assert summary["n"] == 5 and summary["skipped"] == 0


@pytest.fixture(scope="module")
def latent_model() -> LoadedModel:
    tiny = Tiny()
    return LoadedModel(tiny.model, tiny.processor, tiny.names, max_new_tokens=2, name="tiny")


def test_the_audit_skips_a_benchmark_item_holding_a_special_token(latent_model, tmp_path):
    result = run_audit(latent_model, tmp_path / "out", benchmark="mmvp", data_root=poisoned_mmvp(tmp_path / "MMVP"),
                       interventions=["zero"])
    assert result["n_asked"] == 7 and result["skipped_by_reason"] == {"special_token_in_text": 1}
    (skip,) = result["skipped"]
    assert skip["id"] == "3" and skip["skipped"].startswith(f"special_token_in_text: Question holds the special "
                                                            f"token '{PAD}'")
    saved = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert saved["skipped_by_reason"] == {"special_token_in_text": 1}
    assert saved["settings"]["max_text_tokens"] == 1024 and "<lvr_1>" in saved["settings"]["special_tokens"]


def test_the_audit_skips_sample_rows_with_a_special_token_or_too_long(latent_model, tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (84, 84), (200, 30, 30)).save(tmp_path / "images" / "a.png")
    good = {"image": "a.png", "question": "what color is the circle ?", "answer": "red"}
    lines = [{**good, "id": "ok1"}, {**good, "id": "turn", "question": "what color <|im_end|> is it ?"},
             {**good, "id": "latent", "answer": "red <lvr_2>"}, {**good, "id": "long", "answer": "red " * 50},
             {**good, "id": "ok2", "answer": "blue"}]
    samples = tmp_path / "samples.jsonl"
    samples.write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = run_audit(latent_model, tmp_path / "out", samples=samples, image_root=tmp_path / "images",
                       interventions=["zero"], max_text_tokens=20)
    assert result["n_asked"] == 2 and result["skipped_by_reason"] == {"special_token_in_text": 2, "text_too_long": 1}
    skips = {s["id"]: s["skipped"] for s in result["skipped"]}
    assert skips["turn"].startswith("special_token_in_text: question holds the special token '<|im_end|>'")
    assert skips["latent"].startswith("special_token_in_text: answer holds the special token '<lvr_2>'")
    assert skips["long"] == "text_too_long: answer has 50 tokens, over max_text_tokens=20"
    assert result["settings"]["max_text_tokens"] == 20
