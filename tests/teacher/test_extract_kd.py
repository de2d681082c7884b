"""`lavit extract kd_top_k=k`: the teacher's own next-token distribution at its answer tokens, its top k stored beside
A_traj and V_sem, with the token strings training maps through; stores from before resume, and say what they hold."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_extract import config, write_samples

from lavit.data.examples import IGNORE_INDEX
from lavit.data.signal_store import KD_COLUMNS, read_store, write_manifest
from lavit.models.checkpoint import load_model_and_processor
from lavit.teacher.extractor import SignalExtractor, run_extract
from lavit.toyworld.shapes import make_scene


def scenes(n: int) -> list:
    rng = np.random.default_rng(3)
    return [make_scene(rng) for _ in range(n)]


def test_the_stored_top_k_is_the_teachers_next_token_distribution_at_its_answer_tokens():
    model, processor = load_model_and_processor("tiny-teacher")
    extractor = SignalExtractor(model.eval(), processor, kd_top_k=5, kd_temperature=2.0)
    shown = scenes(2)
    answers = ["red", "a big green circle"]  # answers of different lengths in one padded batch
    batch = extractor.prepare_batch(["a", "b"], [s.image for s in shown], [f"what is the {s.shape} ?" for s in shown],
                                    answers)
    signals = extractor.forward_signals(batch)
    vocab = processor.tokenizer
    for b, (sig, answer) in enumerate(zip(signals, answers)):
        kd = sig.kd
        want_tokens = vocab(answer, add_special_tokens=False)["input_ids"] + [vocab.eos_token_id]
        assert kd.token_ids.tolist() == want_tokens and kd.tokens == vocab.convert_ids_to_tokens(want_tokens)
        # reference: the teacher's plain forward over this sample alone, LM head included
        real = batch["attention_mask"][b].bool()
        with torch.no_grad():
            logits = model(input_ids=batch["input_ids"][b:b + 1, real], pixel_values=batch["pixel_values"][
                sum(int(g.prod()) for g in batch["image_grid_thw"][:b]):][:int(batch["image_grid_thw"][b].prod())],
                image_grid_thw=batch["image_grid_thw"][b:b + 1],
                mm_token_type_ids=batch["mm_token_type_ids"][b:b + 1, real]).logits[0]  # [S, V]
        labels = batch["labels"][b, real]
        produces = (labels[1:] != IGNORE_INDEX).nonzero().flatten()  # the positions before each labelled token
        want = torch.log_softmax(logits[produces] / 2.0, dim=-1).topk(5, dim=-1)
        assert kd.topk_ids.tolist() == want.indices.tolist()
        assert np.allclose(kd.topk_logprobs, want.values.numpy(), atol=1e-5)
        assert kd.topk_tokens == vocab.convert_ids_to_tokens(want.indices.flatten().tolist())
        assert (np.diff(kd.topk_logprobs, axis=1) <= 0).all() and np.exp(kd.topk_logprobs).sum(axis=1).max() <= 1 + 1e-6


def test_ids_of_a_head_past_the_tokenizer_are_stored_without_a_string():
    model, processor = load_model_and_processor("tiny-teacher")
    size = len(processor.tokenizer)
    model.resize_token_embeddings(size + 8, mean_resizing=False)  # as Qwen2.5-VL-32B's 152064 rows over 151665 tokens
    with torch.no_grad():
        model.get_output_embeddings().weight[size:] = 50 * model.get_output_embeddings().weight[:8]  # into the top-k
    extractor = SignalExtractor(model.eval(), processor, kd_top_k=4)
    shown = scenes(1)[0]
    kd = extractor.signals(["a"], [shown.image], ["what color ?"], ["red"])[0].kd
    past = kd.topk_ids.ravel() >= size
    assert past.any() and all((s is None) == p for s, p in zip(kd.topk_tokens, past))


def test_a_top_k_wider_than_the_head_is_refused():
    model, processor = load_model_and_processor("tiny-teacher")
    with pytest.raises(ValueError, match="kd_top_k=500 is more than the teacher's 109 output rows"):
        SignalExtractor(model, processor, kd_top_k=500)


def test_rows_store_the_top_k_and_the_card_names_the_columns(tmp_path):
    write_samples(tmp_path, 2, bad=False)
    run_extract(config(tmp_path, kd_top_k=3, kd_temperature=1.5))
    rows = read_store(tmp_path / "out").to_pylist()
    for row in rows:
        t = len(row["kd_tokens"])
        assert row["status"] == "ok" and len(row["kd_token_ids"]) == t >= 1 and row["kd_tokens"][-1] == "<|im_end|>"
        assert len(row["kd_topk_ids"]) == len(row["kd_topk_tokens"]) == len(row["kd_topk_logprobs"]) == 3 * t
        assert row["kd_temperature"] == 1.5
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["settings"]["kd_top_k"] == 3 and manifest["settings"]["kd_temperature"] == 1.5
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Teacher top-k (kd_top_k=3, kd_temperature=1.5)" in card
    assert all(f"`{c}`" in card for c in KD_COLUMNS)
    # a filtered set records the extraction's settings as extract_settings: its card names the columns too
    (tmp_path / "f").mkdir()
    write_manifest({"kind": "lavit_sft", "schema_version": 2, "extract_settings": manifest["settings"]}, tmp_path / "f")
    assert "`kd_topk_logprobs` [T·3]" in (tmp_path / "f" / "README.md").read_text()


def test_a_store_from_before_the_top_k_resumes_and_refuses_another_k(tmp_path):
    write_samples(tmp_path, 4, bad=False)
    run_extract(config(tmp_path, max_samples=3))  # kd_top_k=0: the columns are null, the card says nothing of them
    assert all(row[c] is None for row in read_store(tmp_path / "out").to_pylist() for c in KD_COLUMNS)
    assert "Teacher top-k" not in (tmp_path / "out" / "README.md").read_text()
    manifest_path = tmp_path / "out" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for key in ("kd_top_k", "kd_temperature"):  # as written by a lavit before these settings
        del manifest["settings"][key]
    manifest_path.write_text(json.dumps(manifest))
    assert run_extract(config(tmp_path))["store_counts"]["ok"] == 4
    with pytest.raises(ValueError, match=r"different settings \(kd_top_k: 0 there, 4 here\)"):
        run_extract(config(tmp_path, kd_top_k=4))
