"""The teacher's stored top-k as method=kd reads it: mapped to the student's vocabulary through token strings, every
unmapped entry counted, each item's targets paired with its answer labels, unusable rows named before training."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from lavit.data.collator import LavitCollator
from lavit.data.examples import IGNORE_INDEX
from lavit.data.sft_dataset import LavitSftDataset, read_sft_table
from lavit.data.signal_store import SIGNAL_SCHEMA
from lavit.data.vocab_alignment import UNMAPPED, StudentVocab, first_duplicates
from lavit.models.latent_tokens import add_latent_tokens, latent_token_names
from lavit.models.tiny import STUDENT_SPEC, build_tiny_model, build_tiny_processor, build_tiny_tokenizer

K = 3
EOS = "<|im_end|>"


def kd_row(i: int, answer: str, tokens: list[str], topk: list[list[str | None]], p: list[list[float]],
           temperature: float = 1.0) -> dict:
    """A filtered-set row with the teacher's top-k: `tokens` the teacher's answer tokens (its end-of-turn last),
    `topk` the strings of each position's top entries, `p` their probabilities."""
    return {"id": f"r{i}", "image": "a.png", "question": "what color is the circle ?", "answer": answer,
            "teacher_answer": answer, "kd_token_ids": list(range(len(tokens))), "kd_tokens": tokens,
            "kd_topk_ids": list(range(len(tokens) * len(topk[0]))), "kd_topk_tokens": [s for row in topk for s in row],
            "kd_topk_logprobs": [math.log(x) for row in p for x in row], "kd_temperature": temperature}


def table(rows: list[dict]) -> pa.Table:
    schema = pa.schema([SIGNAL_SCHEMA.field(n) for n in ("id", "image", "question", "answer", "teacher_answer",
                                                          "kd_token_ids", "kd_tokens", "kd_topk_ids",
                                                          "kd_topk_tokens", "kd_topk_logprobs", "kd_temperature")])
    return pa.Table.from_pylist(rows, schema=schema)


@pytest.fixture
def root(tmp_path):
    (tmp_path / "images").mkdir()
    Image.new("RGB", (56, 56), "red").save(tmp_path / "images" / "a.png")
    return tmp_path


def student(latents: int = 0):
    processor = build_tiny_processor(build_tiny_tokenizer())
    names = latent_token_names(latents) if latents else []
    if names:
        add_latent_tokens(processor.tokenizer, build_tiny_model(processor.tokenizer, STUDENT_SPEC), names)
    return processor, names


def open_kd(root, rows, latents: int = 0, **kw) -> LavitSftDataset:
    processor, names = student(latents)
    return LavitSftDataset(table(rows), str(root / "images"), processor, names, system_prompt=None, with_signals=False,
                           kd=True, **kw)


GOOD = [kd_row(0, "red", ["red", EOS], [["red", "green", "blue"], [EOS, "red", "."]],
               [[0.7, 0.2, 0.05], [0.9, 0.05, 0.01]]),
        kd_row(1, "a big circle", ["a", "big", "circle", EOS],
               [["a", "the", "big"], ["big", "small", "red"], ["circle", "square", "?"], [EOS, ".", "!"]],
               [[0.5, 0.3, 0.1], [0.6, 0.2, 0.1], [0.8, 0.1, 0.05], [0.95, 0.02, 0.01]])]


def test_each_item_carries_its_answer_positions_top_k_in_the_students_ids(root):
    dataset = open_kd(root, GOOD, latents=2)
    vocab = dataset.processor.tokenizer.get_vocab()
    for index, row in enumerate(GOOD):
        item = dataset[index]
        answer_labels = item["labels"][item["labels"] != IGNORE_INDEX][2:]  # after the two latents
        assert answer_labels.tolist() == [vocab[t] for t in row["kd_tokens"]]
        assert item["kd_ids"].tolist() == [[vocab[s] for s in row["kd_topk_tokens"][t * K:(t + 1) * K]]
                                           for t in range(len(row["kd_tokens"]))]
        assert torch.allclose(item["kd_logprobs"], torch.tensor(row["kd_topk_logprobs"]).reshape(-1, K))
    assert dataset.kd_stats["positions"] == 6 and dataset.kd_stats["unmapped_entries"] == 0
    outside = [1 - 0.95, 1 - 0.96, 1 - 0.9, 1 - 0.9, 1 - 0.95, 1 - 0.98]  # 1 − Σ top-k per position
    assert dataset.kd_stats["teacher_mass_outside_top_k_mean"] == pytest.approx(np.mean(outside), rel=1e-5)


def test_entries_without_a_student_id_are_unmapped_and_counted_with_their_mass(root):
    # 'zebra' is no token of the student's; None: an id past the teacher's tokenizer (its head is larger)
    row = kd_row(0, "red", ["red", EOS], [["red", "zebra", None], [EOS, "zebra", "red"]],
                 [[0.6, 0.25, 0.1], [0.9, 0.04, 0.03]])
    dataset = open_kd(root, [row])
    item = dataset[0]
    assert (item["kd_ids"] == UNMAPPED).tolist() == [[False, True, True], [False, True, False]]
    stats = dataset.kd_stats
    assert (stats["entries"], stats["unmapped_entries"], stats["unmapped_outside_teacher_tokenizer"],
            stats["unmapped_not_in_student_vocab"], stats["unmapped_duplicate_id"]) == (6, 3, 1, 2, 0)
    assert stats["unmapped_mass_mean"] == pytest.approx((0.35 + 0.04) / 2, rel=1e-5)
    assert stats["unmapped_mass_max"] == pytest.approx(0.35, rel=1e-5)


def test_a_teacher_end_of_turn_spelled_otherwise_maps_to_the_students(root):
    # a teacher whose answers end in '</s>': that is the student's end-of-turn; the teacher's own '<|im_end|>' (some
    # other token of its vocabulary) must not land on the same student id
    row = kd_row(0, "red", ["red", "</s>"], [["red", EOS, "blue"], ["</s>", EOS, "red"]],
                 [[0.6, 0.2, 0.1], [0.8, 0.1, 0.05]])
    dataset = open_kd(root, [row])
    vocab = dataset.processor.tokenizer.get_vocab()
    assert dataset[0]["kd_ids"].tolist() == [[vocab["red"], UNMAPPED, vocab["blue"]],
                                             [vocab[EOS], UNMAPPED, vocab["red"]]]


def test_rows_whose_answer_the_student_tokenises_otherwise_are_bad_rows(root):
    p = [[0.5, 0.1, 0.1], [0.5, 0.1, 0.1]]
    wrong = kd_row(2, "red circle", ["red", EOS], [["red", "a", "b"], [EOS, "a", "b"]], p)
    unknown = kd_row(3, "red", ["rouge", EOS], [["red", "a", "b"], [EOS, "a", "b"]], p)
    with pytest.raises(ValueError, match=r"does not tokenise into the teacher's stored answer tokens .* \(2 rows\): "
                                         r"r2, r3"):
        open_kd(root, [*GOOD, wrong, unknown])
    dataset = open_kd(root, [*GOOD, wrong, unknown], bad_rows="drop")
    assert len(dataset) == 2 and [d["reason"] for d in dataset.dropped] == ["kd_misaligned"] * 2
    assert "first difference at token 1" in dataset.dropped[0]["detail"] and "-1" in dataset.dropped[1]["detail"]


def test_missing_or_malformed_top_k_rows_are_bad_rows(root):
    missing = {**kd_row(4, "red", ["red", EOS], [["red"] * K] * 2, [[0.5] * K] * 2), "kd_topk_logprobs": None}
    short = {**kd_row(5, "red", ["red", EOS], [["red"] * K] * 2, [[0.5] * K] * 2), "kd_topk_tokens": ["red"] * 5}
    dataset = open_kd(root, [*GOOD, missing, short], bad_rows="drop")
    assert {d["id"]: d["reason"] for d in dataset.dropped} == {"r4": "signal_missing", "r5": "kd_malformed"}
    assert len(dataset) == 2 and dataset.kd_stats["positions"] == 6


def test_data_of_two_top_k_sizes_or_temperatures_is_refused(root):
    other_k = kd_row(6, "red", ["red", EOS], [["red", "blue"]] * 2, [[0.5, 0.2]] * 2)
    with pytest.raises(ValueError, match=r"mixes teacher top-k sizes \[2, 3\]"):
        open_kd(root, [*GOOD, other_k])
    hot = kd_row(7, "red", ["red", EOS], [["red", "blue", "green"]] * 2, [[0.5, 0.2, 0.1]] * 2, temperature=2.0)
    with pytest.raises(ValueError, match=r"mixes teacher temperatures \[1.0, 2.0\]"):
        open_kd(root, [*GOOD, hot])


def test_data_extracted_without_the_top_k_says_to_re_extract(root):
    plain = table(GOOD).drop_columns(["kd_token_ids", "kd_tokens", "kd_topk_ids", "kd_topk_tokens",
                                      "kd_topk_logprobs", "kd_temperature"])
    pq.write_table(plain, root / "old.parquet")
    assert read_sft_table([str(root / "old.parquet")], "answer", need_signals=False).num_rows == 2
    with pytest.raises(ValueError, match=r"extracted without kd_top_k .* re-extract with `lavit extract \.\.\. "
                                         r"kd_top_k=8`"):
        read_sft_table([str(root / "old.parquet")], "answer", need_signals=False, need_kd=True)


def test_the_collator_pads_the_top_k_and_marks_the_real_positions(root):
    dataset = open_kd(root, GOOD)
    processor = dataset.processor
    batch = LavitCollator(processor.tokenizer.pad_token_id)([dataset[0], dataset[1]])
    assert batch["kd_ids"].shape == (2, 4, K) and batch["kd_logprobs"].shape == (2, 4, K)
    assert batch["kd_mask"].tolist() == [[True, True, False, False], [True] * 4]
    assert (batch["kd_ids"][0, 2:] == -1).all()
    # flattened in row order, the targets line up with the labelled answer positions of the batch
    labels = batch["labels"][:, 1:][batch["labels"][:, 1:] != IGNORE_INDEX]
    assert batch["kd_ids"][batch["kd_mask"]].shape[0] == labels.numel()


def test_duplicate_ids_in_one_position_keep_the_first():
    ids = np.array([[5, 3, 5, -1, -1], [1, 2, 3, 2, 1]])
    assert first_duplicates(ids).tolist() == [[False, False, True, False, False], [False, False, False, True, True]]


def test_a_student_tokenizer_with_two_strings_for_one_id_is_refused():
    class Tokenizer:
        eos_token, eos_token_id = EOS, 1

        def get_vocab(self):
            return {"a": 0, "b": 0, EOS: 1}

    with pytest.raises(ValueError, match="two token strings one id"):
        StudentVocab.of(Tokenizer())
