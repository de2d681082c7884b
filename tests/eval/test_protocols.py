"""`--protocol lmms-eval` against lmms-eval's own task code, item by item; the protocols' model side.

For each of the four benchmarks (MMVP, the four BLINK sub-tasks of Table 1, V* direct attributes and all of V*,
MMStar) on tiny copies of the published files: `lavit eval --protocol lmms-eval` must write, for every item, the
prompt lmms-eval's `doc_to_text` builds and the correctness its `process_results` gives, for a corpus of model
outputs (letters, sentences, hedges, refusals, other scripts), and the headline number its aggregation reports.
The letter extraction is also compared on 3 000 seeded random outputs. lmms-eval's task modules are loaded from
the installed package (`lmms_tasks.py`); the image resize of its qwen2_5_vl model is compared with qwen_vl_utils'.
"""

from __future__ import annotations

import csv
import json
import random
import re

import numpy as np
import pyarrow.parquet as pq
import pytest
from fixtures import (
    DEPTH_ROWS,
    IQ_ROWS,
    REFLECTANCE_ROWS,
    SPATIAL_ROWS,
    image_bytes,
    write_blink,
    write_mmstar,
    write_mmvp,
    write_vstar,
)
from lmms_tasks import class_defaults, default_kwargs, lmms_root, lmms_task_code, task_yaml
from PIL import Image

from lavit.eval.protocols import get_protocol
from lavit.eval.protocols import lmms_eval as lm
from lavit.eval.runner import load_benchmark, run_eval

LMMS = get_protocol("lmms-eval")

# Model outputs of every kind a 3B model writes: letters, option texts, sentences, hedges, refusals, other scripts.
OUTPUTS = [
    "A", "B", "C", "D", "(A)", "(b)", "a", "b", "d", "E", "A.", "B) Closed", "b. closed", "Answer: C",
    "The answer is B.", "The correct answer is (D).", "I think the answer is C because the bag is yellow.",
    "B\nThe wings are closed.", "A or B", "Either A or B, hard to say.", "I cannot determine this from the image.",
    "None of the options.", "", "   ", "Open", "Closed", "The dog is facing left.",
    "A dog is sitting on the bench, so B.", "答案是C", "Option D", "(C) yellow", "My choice is A", "C: yellow",
    "It's B!", "Based on the image, the suitcase is beneath the bed. C", "BLUE", "A is closer", "B is darker",
]


class CannedProtocolModel:
    """Answers `output` to every item under `protocol`."""

    def __init__(self, output: str, protocol=LMMS):
        self.output, self.protocol = output, protocol

    def describe(self) -> dict:
        return {"model": f"canned:{self.output!r}", "protocol": {**self.protocol.describe(), "deviations": {}}}

    def answer(self, items, max_new_tokens=None):
        return [self.output] * len(items)


@pytest.fixture(scope="module")
def lmms():
    with lmms_task_code() as modules:
        yield modules


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("benchmarks")
    write_mmvp(root / "MMVP")
    write_blink(root / "BLINK", {"Relative_Depth": DEPTH_ROWS, "IQ_Test": IQ_ROWS,
                                 "Relative_Reflectance": REFLECTANCE_ROWS, "Spatial_Relation": SPATIAL_ROWS},
                with_test=False)
    write_vstar(root / "vstar_bench")
    write_mmstar(root / "MMStar")
    return root


# -- lmms-eval's documents: the same files, read as lmms-eval's datasets hold them ---------------------------------
def _pil(data: bytes) -> Image.Image:
    import io

    return Image.open(io.BytesIO(data))


def mmvp_docs(root):
    with open(root / "Questions.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    index = "Index" if "Index" in rows[0] else "lndex"
    return {r[index]: {"Index": int(r[index]), "Question": r["Question"], "Options": r["Options"],
                       "Correct Answer": r["Correct Answer"],
                       "image": Image.open(root / "MMVP Images" / f"{r[index]}.jpg")} for r in rows}


def blink_docs(root, task):
    docs = {}
    for row in pq.read_table(root / task / "val-00000-of-00001.parquet").to_pylist():
        for k in range(1, 5):
            cell = row[f"image_{k}"]
            row[f"image_{k}"] = _pil(cell["bytes"]) if cell else None
        docs[row["idx"]] = row
    return docs


def vstar_docs(root):
    docs = {}
    for line in (root / "test_questions.jsonl").read_text().splitlines():
        row = json.loads(line)
        docs[str(row["question_id"])] = {**row, "image": Image.open(root / row["image"])}
    return docs


def mmstar_docs(root):
    return {str(r["index"]): {**r, "image": _pil(r["image"]["bytes"])}
            for r in pq.read_table(root / "mmstar.parquet").to_pylist()}


def lmms_case(lmms, benchmark, root):
    """(docs by id, doc → prompt, (doc, output) → correct, [results] → headline) as lmms-eval computes them."""
    base, _, sub = benchmark.partition(":")
    if base == "mmvp":
        u, kwargs = lmms["mmvp"], default_kwargs("mmvp")
        return (mmvp_docs(root / "MMVP"), lambda d: u.mmvp_doc_to_text(d, kwargs),
                lambda d, o: u.mmvp_process_results(d, [o])["mmvp_accuracy"],
                lambda rs: (u.mmvp_aggregate_results(rs), u.mmvp_aggregate_pair_results(rs)))
    if base == "blink":
        u, kwargs = lmms["blink"], default_kwargs("blink")
        return (blink_docs(root / "BLINK", sub), lambda d: u.blink_doc_to_messages(d, kwargs)[0]["content"][-1]["text"],
                lambda d, o: u.blink_process_results(d, [o])["blink_acc"], u.blink_aggregate_results)
    if base == "vstar":
        u, kwargs = lmms["vstar_bench"], default_kwargs("vstar_bench")
        docs = vstar_docs(root / "vstar_bench")
        if sub != "all":  # vstar_bench_direct_attributes: the Table 1 column
            docs = {k: d for k, d in docs.items() if d["category"] == "direct_attributes"}
        return (docs, lambda d: u.vstar_doc_to_text(d, kwargs),
                lambda d, o: u.vstar_process_results(d, [o])["vstar_overall_acc"],
                lambda rs: u.vstar_aggregate_results(rs) / 100)
    u, kwargs = lmms["mmstar"], default_kwargs("mmstar")
    return (mmstar_docs(root / "MMStar"), lambda d: u.mmstar_doc_to_text(d, kwargs),
            lambda d, o: u.mmstar_process_results(d, [o])["average"], u.mmstar_aggregate_results)


def correct_of(result: dict) -> bool:
    return bool(result["is_correct"]) if "is_correct" in result else result["score"] == 1.0


BENCHMARKS = [("mmvp", "MMVP"), ("blink:Relative_Depth", "BLINK"), ("blink:IQ_Test", "BLINK"),
              ("blink:Relative_Reflectance", "BLINK"), ("blink:Spatial_Relation", "BLINK"),
              ("vstar", "vstar_bench"), ("vstar:all", "vstar_bench"), ("mmstar", "MMStar")]


@pytest.mark.parametrize("benchmark,folder", BENCHMARKS)
def test_lmms_eval_protocol_equals_lmms_evals_task_code_item_by_item(lmms, data, tmp_path, benchmark, folder):
    docs, prompt_of, result_of, aggregate = lmms_case(lmms, benchmark, data)
    items = load_benchmark(benchmark, data / folder, protocol=LMMS)[1]
    assert sorted(it.id for it in items) == sorted(docs)  # the same item set (V*: 5 direct attributes, or all 7)
    for item in items:
        assert item.prompt == prompt_of(docs[item.id]), item.id
    for k, output in enumerate(OUTPUTS):
        summary = run_eval(CannedProtocolModel(output), benchmark, data / folder, tmp_path / str(k))
        records = [json.loads(line) for line in
                   (tmp_path / str(k) / benchmark.replace(":", "_") / "predictions.jsonl").read_text().splitlines()]
        theirs = {r["id"]: result_of(docs[r["id"]], output) for r in records}
        for record in records:
            assert record["prompt"] == prompt_of(docs[record["id"]])
            assert record["correct"] == correct_of(theirs[record["id"]]), (output, record["id"])
        headline = aggregate(list(theirs.values()))
        if benchmark == "mmvp":
            assert (summary["score"], summary["pair_accuracy"]) == pytest.approx(headline), output
        else:
            assert summary["score"] == pytest.approx(headline), output
        assert summary["settings"]["max_new_tokens"] == LMMS.rules(benchmark).max_new_tokens


def _random_outputs(n: int, seed: int = 0) -> list[str]:
    """Strings built from the pieces answers are made of: letters alone, bracketed or followed by punctuation,
    answer phrases, option words, other scripts, spaces and newlines."""
    rng = random.Random(seed)
    pieces = ["A", "B", "C", "D", "E", "a", "b", "c", "d", "(A)", "(B)", "(c)", "A.", "B)", "C:", "D]", " ", " ", "\n",
              "answer", "Answer is", "the answer is", "The correct answer is", "option", "choice", "I choose", "is",
              "Therefore", ".", ",", "!", "?", "'", '"', "the", "a dog", "Bob", "closed", "open", "yes", "no",
              "答案是", "选", "정답은", "It is", "between", "cannot tell", "AB", "BA", "ABCD", "-", ":"]
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 9))) for _ in range(n)]


def test_letter_extraction_equals_lmms_evals_on_random_outputs(lmms):
    mcq = importlib_mcq()
    corpus = OUTPUTS + _random_outputs(3000)
    for text in corpus:
        assert lm.mmvp_letter(text) == (lmms["mmvp"]._extract_answer_letter(text) or None), text
        assert lm.vstar_letter(text) == lmms["vstar_bench"].extract_answer_letter(text), text
        assert lm.mcq_letter(text) == (mcq(text, choices=["A", "B", "C", "D"]) or None), text
        for valid in ("AB", "ABC", "ABCD"):
            assert lm.blink_letter(text, valid) == (lmms["blink"]._extract_answer_letter(text, valid) or None), text


def importlib_mcq():
    import importlib

    return importlib.import_module("lmms_eval.tasks._task_utils.mcq_extract").extract_mcq_answer


def test_protocol_model_side_equals_lmms_evals_qwen2_5_vl_class():
    simple = class_defaults("models/simple/qwen2_5_vl.py", "Qwen2_5_VL")
    assert lm.PROCESSOR_PIXELS == (simple["min_pixels"], simple["max_pixels"])
    assert simple["system_prompt"] == "You are a helpful assistant."  # the chat template's own default
    chat = (lmms_root() / "models" / "chat" / "qwen2_5_vl.py").read_text()
    assert "Qwen2_5_VLSimple" in chat and "eos_token_id=self.tokenizer.eos_token_id" in chat
    assert re.search(r'"max_new_tokens":\s*(\d+)', chat).group(1) == str(lm.DEFAULT_MAX_NEW_TOKENS)
    for task, benchmark in (("mmvp", "mmvp"), ("blink", "blink:IQ_Test"), ("vstar_bench", "vstar")):
        assert task_yaml(task)["generation_kwargs"]["max_new_tokens"] == LMMS.rules(benchmark).max_new_tokens
    assert "generation_kwargs" not in task_yaml("mmstar")  # the chat class's default then applies
    assert LMMS.label_fixes and "99" in (lmms_root() / "tasks" / "mmvp" / "README.md").read_text()


@pytest.mark.parametrize("size", [(40, 30), (27, 29), (3000, 2000), (4100, 4000), (5000, 28), (641, 479)])
def test_image_resize_equals_qwen_vl_utils(size):
    vision = pytest.importorskip("qwen_vl_utils.vision_process")
    assert lm.FETCH_MIN_PIXELS == vision.IMAGE_MIN_TOKEN_NUM * 28 ** 2
    assert lm.FETCH_MAX_PIXELS == vision.IMAGE_MAX_TOKEN_NUM * 28 ** 2
    image = Image.open(__import__("io").BytesIO(image_bytes(size, sum(size), "PNG"))).convert("RGB")
    ours, theirs = lm.fetch_image(image), vision.fetch_image({"image": image})
    assert ours.size == theirs.size and np.array_equal(np.asarray(ours), np.asarray(theirs))


def test_lmms_eval_protocol_replicates_qwen2_5_vl_only():
    from lavit.eval.models import GenerativeModel

    with pytest.raises(ValueError, match="protocol 'lmms-eval' replicates qwen2_5_vl models only; tiny:qwen3_vl is "
                                         "qwen3_vl"):
        GenerativeModel("tiny:qwen3_vl", protocol="lmms-eval")


def test_a_model_under_the_lmms_eval_protocol(tmp_path, data):
    """The model side lmms-eval's qwen2_5_vl class applies, recorded: its resolution, the tokenizer's eos, the
    checkpoint's generation config, no deviation — and each image resized by qwen_vl_utils' rule first."""
    from lavit.eval.models import GenerativeModel

    model = GenerativeModel("tiny", protocol="lmms-eval")
    described = model.describe()
    assert (described["min_pixels"], described["max_pixels"]) == lm.PROCESSOR_PIXELS
    assert described["pixels_by"] == "protocol lmms-eval" and described["protocol"]["deviations"] == {}
    assert described["decoding"]["decoding"] == "generation_config"
    assert described["decoding"]["eos_token_id"] == [model.processor.tokenizer.eos_token_id]
    assert described["latent_mode"] == "none" and described["system_prompt"] is None
    seen = []
    original = model.engine.generate
    model.engine.generate = lambda images, *a, **k: (seen.extend(im.size for ims in images for im in ims),
                                                      original(images, *a, **k))[1]
    summary = run_eval(model, "mmvp", data / "MMVP", tmp_path / "out", max_samples=2)
    assert summary["n"] == 2 and summary["settings"]["max_new_tokens"] == 16
    assert seen == [lm.fetch_size(41, 31), lm.fetch_size(42, 32)]  # MMVP images 1, 2 (41×31, 42×32) resized first
