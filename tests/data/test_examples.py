import numpy as np
import pytest
import torch

from lavit.data.collator import LavitCollator
from lavit.data.examples import LAVIT_SYSTEM_PROMPT, LayoutError, build_example, locate_layout
from lavit.data.targets import TrajectoryGridError


def test_example_layout_and_labels(tiny):
    ex = build_example(tiny.processor, tiny.sample(0), tiny.names, system_prompt=LAVIT_SYSTEM_PROMPT)
    ids, labels = ex["input_ids"], ex["labels"]
    lat = ex["latent_positions"]
    assert ids[lat].tolist() == tiny.latent_ids
    assert ex["image_positions"].max() < lat.min()
    labelled = (labels != -100).nonzero().flatten()
    assert labelled[0] == lat[0]  # labels start at <lvr_1> ...
    assert labels[-1] == tiny.tokenizer.eos_token_id  # ... and end with the end-of-turn token
    assert tiny.tokenizer.decode(ids[lat[-1] + 1:-1]) == "red"
    assert ex["traj_target"].shape == ex["image_positions"].shape
    assert ex["traj_target"].sum().item() == pytest.approx(1.0)
    assert (ex["traj_target"] > 0).sum() <= 8


def test_naive_sft_example_has_no_latents(tiny):
    ex = build_example(tiny.processor, tiny.sample(0), [], system_prompt=None)
    assert ex["latent_positions"].numel() == 0
    assert not torch.isin(ex["input_ids"], torch.tensor(tiny.latent_ids)).any()


def test_collator_pads_mixed_image_sizes(tiny):
    examples = tiny.examples()
    batch = LavitCollator(tiny.tokenizer.pad_token_id)(examples)
    lengths = [e["input_ids"].numel() for e in examples]
    assert batch["input_ids"].shape == (2, max(lengths))
    assert batch["attention_mask"].sum(1).tolist() == lengths
    assert batch["pixel_values"].shape[0] == sum(e["pixel_values"].shape[0] for e in examples)
    counts = [e["image_positions"].numel() for e in examples]
    assert batch["image_valid"].sum(1).tolist() == counts and counts[0] != counts[1]
    assert batch["image_mask"].sum(1).tolist() == counts
    for b, e in enumerate(examples):
        assert torch.equal(batch["latent_positions"][b], e["latent_positions"])
        gated = batch["gate_query_mask"][b].nonzero().flatten()
        assert gated.min() == e["image_positions"].max() + 1  # question tokens after the image ...
        assert not batch["latent_mask"][b, gated].any()  # ... never the latents ...
        assert gated.max() == len(e["input_ids"]) - 1  # ... through the last answer token, not padding
        assert (batch["labels"][b, len(e["input_ids"]):] == -100).all()


def test_missing_latent_tokens_are_a_clear_error(tiny):
    ids = torch.tensor([1, 2, tiny.processor.image_token_id, tiny.processor.image_token_id, 5, 6])
    with pytest.raises(LayoutError, match="latent token id .* appears 0 times"):
        locate_layout(ids, tiny.processor.image_token_id, tiny.latent_ids, "x")


def test_tokenizer_without_latent_tokens_is_a_clear_error(tiny):
    from lavit.models.tiny import build_tiny_processor, build_tiny_tokenizer

    plain = build_tiny_processor(build_tiny_tokenizer())
    with pytest.raises(LayoutError, match="sample s0"):
        build_example(plain, tiny.sample(0), tiny.names, system_prompt=None)


def test_missing_image_tokens_are_a_clear_error(tiny):
    ids = torch.tensor([1, 2, 3] + tiny.latent_ids + [5])
    with pytest.raises(LayoutError, match="no image tokens"):
        locate_layout(ids, tiny.processor.image_token_id, tiny.latent_ids, "x")


def test_latents_out_of_order_or_before_image(tiny):
    img = tiny.processor.image_token_id
    swapped = torch.tensor([img, img, tiny.latent_ids[1], tiny.latent_ids[0], *tiny.latent_ids[2:]])
    with pytest.raises(LayoutError, match="contiguous and in order"):
        locate_layout(swapped, img, tiny.latent_ids)
    early = torch.tensor([*tiny.latent_ids, img, img])
    with pytest.raises(LayoutError, match="before the end of the image"):
        locate_layout(early, img, tiny.latent_ids)


def test_trajectory_on_the_wrong_grid_is_a_clear_error(tiny):
    sample = tiny.sample(0)
    sample.a_traj = np.random.rand(7).astype(np.float32)  # grid says 3x4 = 12
    with pytest.raises(TrajectoryGridError, match="sample s0: attention map has 7 values"):
        build_example(tiny.processor, sample, tiny.names, system_prompt=None)


def test_collator_refuses_mixed_signals_and_mixed_k(tiny):
    a, b = tiny.examples()
    del b["v_sem"]
    with pytest.raises(ValueError, match="v_sem missing for samples"):
        LavitCollator(0)([a, b])
    c = dict(tiny.examples()[1], latent_positions=torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="different numbers of latent tokens"):
        LavitCollator(0)([a, c])


def test_v_sem_of_mixed_dimensions_is_a_clear_error(tiny):
    a, b = tiny.examples()
    b["v_sem"] = b["v_sem"][:100]
    with pytest.raises(ValueError, match="different dimensions"):
        LavitCollator(0)([a, b])
