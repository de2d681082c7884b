"""A_traj from the in-attention probe equals an eager output_attentions reference (eq. 2)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lavit.data.examples import IGNORE_INDEX, TrainingSample, build_example
from lavit.models.checkpoint import load_model_and_processor
from lavit.models.families import FAMILIES, family_of
from lavit.teacher.extractor import SignalExtractor
from lavit.teacher.probe import TrajectoryProbe, parse_layers, query_mask

QUESTIONS = ["what color is the circle ?", "which shape is on the left ?", "how many objects ?"]
ANSWERS = ["red", "the blue square is on the left", "two"]
SIZES = [(112, 84), (140, 140), (84, 112)]


@pytest.fixture(scope="module", params=list(FAMILIES))
def teacher(request):
    model, processor = load_model_and_processor(f"tiny-teacher:{request.param}", seed=3)
    return model, processor


def images() -> list[Image.Image]:
    rng = np.random.default_rng(7)
    return [Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)) for w, h in SIZES]


@torch.no_grad()
def eager_reference(model, processor, image, question, answer, layers, queries):
    """Plain eager attention with output_attentions=True, aggregated by hand for one sample."""
    example = build_example(processor, TrainingSample("x", image, question, answer), [], system_prompt=None)
    model.set_attn_implementation({"text_config": "eager", "vision_config": "sdpa"})
    try:
        out = model.model(input_ids=example["input_ids"][None], attention_mask=torch.ones_like(example["input_ids"])[None],
                          pixel_values=example["pixel_values"], image_grid_thw=example["image_grid_thw"],
                          mm_token_type_ids=example["mm_token_type_ids"][None], output_attentions=True, use_cache=False)
    finally:
        model.set_attn_implementation({"text_config": "lavit_sdpa", "vision_config": "sdpa"})
    seq = example["input_ids"].shape[0]
    image_mask = torch.zeros(1, seq, dtype=torch.bool)
    image_mask[0, example["image_positions"]] = True
    answer = (example["labels"] != IGNORE_INDEX) & (example["input_ids"] != processor.tokenizer.eos_token_id)
    q = query_mask(queries, image_mask, answer[None], torch.ones(1, seq))[0]  # [S]
    # eager returns one map per softmax-attention layer (a hybrid decoder's linear layers have none)
    by_layer = dict(zip(family_of(model).attention_layers(model.config.text_config), out.attentions, strict=True))
    stacked = torch.stack([by_layer[i][0] for i in layers])  # [L, H, S, S]
    rows = stacked[:, :, q]  # [L, H, Q, S]
    full = rows.mean(dim=(0, 1, 2))  # [S]
    hidden = out.last_hidden_state[0, example["image_positions"]].mean(0)  # [D]
    return full[example["image_positions"]], hidden


@pytest.mark.parametrize("layers", ["all", "last:1", "0,2"])
@pytest.mark.parametrize("queries", ["after_image", "question", "answer"])
def test_probe_matches_eager_batched_and_unbatched(teacher, layers, queries):
    model, processor = teacher
    family = family_of(model)
    attention_layers = family.attention_layers(model.config.text_config)
    if layers == "0,2" and attention_layers != [0, 1, 2]:  # a hybrid decoder: 0 and 2 are linear attention
        with pytest.raises(ValueError, match="linear-attention layer"):
            SignalExtractor(model, processor, layers=layers, queries=queries)
        return
    extractor = SignalExtractor(model, processor, layers=layers, queries=queries)
    imgs = images()
    batched = extractor.signals(["a", "b", "c"], imgs, QUESTIONS, ANSWERS)
    for i in range(3):
        single = extractor.signals(["x"], [imgs[i]], [QUESTIONS[i]], [ANSWERS[i]])[0]
        ref_map, ref_hidden = eager_reference(model, processor, imgs[i], QUESTIONS[i], ANSWERS[i],
                                              parse_layers(layers, 3, attention_layers), queries)
        for got in (batched[i], single):
            np.testing.assert_allclose(got.a_traj, ref_map.numpy(), atol=1e-5, rtol=0)
            np.testing.assert_allclose(got.v_sem.astype(np.float32), ref_hidden.numpy(), atol=2e-3, rtol=2e-3)
        assert batched[i].a_traj.shape == (int(np.prod(batched[i].grid)),)
    # the three samples have different grids, so the batch really mixed sizes
    assert len({s.grid for s in batched}) == 3


def test_query_choices_split_the_tokens_after_the_image():
    # positions: 0 text, 1-2 image, 3-4 question, 5-6 answer, 7 end-of-turn, 8 padding
    image_mask = torch.tensor([[0, 1, 1, 0, 0, 0, 0, 0, 0]], dtype=torch.bool)
    answer = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    attn = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1, 0]])
    after = query_mask("after_image", image_mask, answer, attn)
    question = query_mask("question", image_mask, answer, attn)
    ans = query_mask("answer", image_mask, answer, attn)
    assert after.tolist() == [[False, False, False, True, True, True, True, True, False]]
    assert ans.tolist() == [[False, False, False, False, True, True, False, False, False]]  # 4 makes 5, 5 makes 6
    assert question.tolist() == [[False, False, False, True, False, False, False, False, False]]
    with pytest.raises(ValueError, match="queries"):
        query_mask("everything", image_mask, answer, attn)


def test_parse_layers():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("last:2", 4) == [2, 3]
    assert parse_layers("first:1", 4) == [0]
    assert parse_layers("0,-1", 4) == [0, 3]
    for bad in ("last:0", "last:5", "7", "x", ","):
        with pytest.raises(ValueError):
            parse_layers(bad, 4)
    # a hybrid decoder (Qwen3.5: softmax attention every 4th layer) counts and names softmax layers only
    hybrid = [3, 7]
    assert parse_layers("all", 8, hybrid) == [3, 7]
    assert parse_layers("last:1", 8, hybrid) == [7] and parse_layers("first:1", 8, hybrid) == [3]
    assert parse_layers("-1", 8, hybrid) == [7]
    with pytest.raises(ValueError, match="linear-attention layer"):
        parse_layers("0,3", 8, hybrid)
    with pytest.raises(ValueError, match="1..2"):
        parse_layers("last:3", 8, hybrid)


def test_probe_refuses_missing_layers_and_empty_queries():
    with pytest.raises(ValueError, match="no query tokens"):
        TrajectoryProbe(torch.tensor([[False, False]]), [0])
    probe = TrajectoryProbe(torch.tensor([[False, True]]), [0, 1])
    with pytest.raises(RuntimeError, match="never saw layers"):
        probe.a_traj()


def test_token_traces_pair_each_token_with_the_query_that_produces_it(teacher):
    from lavit.analysis.collect import token_category

    model, processor = teacher
    extractor = SignalExtractor(model, processor)
    batch = extractor.prepare_batch(["a", "b"], images()[:2], QUESTIONS[:2], ["red", "the blue square"])
    traces = extractor.forward_traces(batch)
    for trace, question, answer in zip(traces, QUESTIONS, ["red", "the blue square"]):
        tokens = processor.tokenizer.convert_ids_to_tokens(trace.token_ids.tolist())
        assert [t for t, a in zip(tokens, trace.is_answer) if a] == answer.split()  # not the end-of-turn
        assert tokens[0] == question.split()[0]  # produced by <|vision_end|>, the first query after the image
        assert tokens[-1] == "<|im_end|>"
        np.testing.assert_allclose(trace.token_maps.mean(0), trace.a_traj, atol=1e-6)
        assert trace.hidden.shape == (len(tokens), 192) and (trace.token_maps.sum(1) < 1).all()
    assert [token_category(t) for t in ("Ġred", "square", "the", "▁left")] == [
        "attribute", "object", "functional", "attribute"]

    # The map paired with "red" is the attention of the query one position before it, and only that one.
    first_answer = int((batch["labels"][0] != -100).nonzero()[0])
    only = torch.zeros_like(batch["attention_mask"], dtype=torch.bool)
    only[0, first_answer - 1] = True
    only[1, first_answer - 1] = True  # the probe needs a query in every sample
    with torch.no_grad():
        probe, _ = extractor._forward({**batch, "query_mask": only})
    image_pos = batch["image_index"][0][batch["image_valid"][0]]
    expected = probe.per_query()[0, 0, image_pos].numpy()
    np.testing.assert_allclose(traces[0].token_maps[traces[0].is_answer][0], expected, atol=1e-6)
