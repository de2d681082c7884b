"""Continuous latents: the K−1-pass forward equals a latent-by-latent reference for every family (states and
gradients), its final pass is a fixed point under the gate, the norm matching gives the stated norms, and the
design is recorded, validated and carried by the loaded model."""

import pytest
import torch
from PIL import Image

from lavit.data.collator import LavitCollator
from lavit.eval.models import GenerativeModel
from lavit.inference.engines import build_engine
from lavit.models import lavit_student
from lavit.models.checkpoint import load_model_and_processor, read_lavit_meta
from lavit.models.continuous_latents import (
    LatentFeedback,
    attach_latent_feedback,
    editing_fed_back,
    embedding_table_norm,
    latent_feedback_for,
    latent_feedback_of,
)
from lavit.models.latent_tokens import add_latent_tokens, latent_token_names
from lavit.models.lavit_student import LavitStudent
from lavit.models.projection_head import ProjectionHead
from lavit.toyworld.shapes import write_sft_set
from lavit.training.lavit_config import LavitTrainConfig
from lavit.training.train import run_training
from tests.conftest import TEACHER_DIM, Tiny


def continuous(tiny: Tiny, norm_match: str = "embedding_table") -> LatentFeedback:
    feedback = latent_feedback_for(tiny.model, norm_match, len(tiny.tokenizer), tiny.latent_ids)
    attach_latent_feedback(tiny.model, feedback)
    return feedback


def reference_hidden(tiny: Tiny, example: dict, feedback: LatentFeedback) -> tuple[torch.Tensor, torch.Tensor]:
    """One unpadded example, latent by latent: latent j's state from a run over the prefix ending at latent j, its
    fed-back input placed by an explicit substitution of the embedding output; then the whole sequence with every
    input in place. Returns the final states [S, D] and the fed-back inputs [K−1, D]."""
    model = tiny.model
    ids = example["input_ids"][None]  # [1, S]
    positions = example["latent_positions"].tolist()
    fed: dict[int, torch.Tensor] = {}

    def run(end: int) -> torch.Tensor:
        def substitute(module, args, output):
            output = output.clone()
            for position, value in fed.items():
                if position < end:
                    output[0, position] = value
            return output

        handle = model.get_input_embeddings().register_forward_hook(substitute)
        try:
            return model.model(input_ids=ids[:, :end], attention_mask=torch.ones_like(ids[:, :end]),
                               pixel_values=example["pixel_values"], image_grid_thw=example["image_grid_thw"],
                               mm_token_type_ids=example["mm_token_type_ids"][None, :end],
                               use_cache=False).last_hidden_state[0]  # [end, D]
        finally:
            handle.remove()

    for j in range(len(positions) - 1):
        fed[positions[j + 1]] = feedback.feed_back(run(positions[j] + 1)[positions[j]])
    return run(ids.shape[1]), torch.stack([fed[p] for p in positions[1:]])


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_feedback_forward_equals_the_latent_by_latent_reference_states_and_gradients(family):
    tiny = Tiny(family=family)
    feedback = continuous(tiny)
    student = LavitStudent(tiny.model, tiny.latent_ids)
    batch = tiny.batch()
    assert not batch["attention_mask"].all()  # right-padded: the rows differ in length
    weights = torch.randn(batch["input_ids"].shape + (128,), generator=torch.Generator().manual_seed(3))
    embed, last = tiny.model.get_input_embeddings().weight, student.family.decoder_layers(tiny.model)[-1]
    vision = student.family.vision_tower(tiny.model)  # trainable here: its features are computed once, used K times
    params = [embed, *last.parameters(), next(vision.parameters())]
    calls = []
    handle = vision.register_forward_hook(lambda *args: calls.append(1))

    def grads(loss):
        for p in params:
            p.grad = None
        loss.backward()
        return [p.grad.clone() for p in params]

    hidden = student(batch).hidden_states  # [B, S, D]
    handle.remove()
    assert len(calls) == 1  # one vision pass for the K decoder passes
    real = batch["attention_mask"].bool()
    got = grads((hidden * weights)[real].sum())
    references = [reference_hidden(tiny, ex, feedback) for ex in tiny.examples()]
    for b, (ref, fed) in enumerate(references):
        n = int(real[b].sum())
        assert torch.allclose(hidden[b, :n], ref, atol=1e-5), (b, (hidden[b, :n] - ref).abs().max())
        assert torch.allclose(fed.norm(dim=-1), torch.full((fed.shape[0],), feedback.target_norm), rtol=1e-5)
    expected = grads(sum((ref * weights[b, :ref.shape[0]]).sum() for b, (ref, _) in enumerate(references)))
    for g, e in zip(got, expected):
        assert torch.isfinite(g).all() and g.abs().sum() > 0
        assert (g - e).abs().max() <= 1e-5 * e.abs().max(), (g - e).abs().max()  # fp32 sums in another order
    # the feedback is no no-op: the discrete student's latents read other inputs
    attach_latent_feedback(tiny.model, None)
    with torch.no_grad():
        discrete = LavitStudent(tiny.model, tiny.latent_ids)(batch).hidden_states
    readout = batch["latent_positions"][:, -1]
    assert (discrete[[0, 1], readout] - hidden.detach()[[0, 1], readout]).abs().amax() > 1e-2


def test_gradient_reaches_the_fed_back_inputs_of_the_final_pass():
    """The concept loss on the readout backpropagates into the states latents 1..K−1 feed forward, through the
    passes: the inputs of latents 2..K in the final pass get a finite, nonzero gradient."""
    tiny = Tiny()
    continuous(tiny)
    student = LavitStudent(tiny.model, tiny.latent_ids, ProjectionHead(128, TEACHER_DIM))
    batch = tiny.batch()
    seen: list[torch.Tensor] = []

    def keep(fed):
        fed.retain_grad()
        seen.append(fed)
        return fed

    with editing_fed_back(keep):
        out = student(batch)
    assert len(seen) == len(tiny.latent_ids) - 1  # passes 1..K−2 and the final pass substitute
    (out.concept_pred - batch["v_sem"]).pow(2).sum().backward()
    final = seen[-1].grad  # [B, K−1, D]
    assert torch.isfinite(final).all()
    assert (final.abs().sum(dim=-1) > 0).all()  # every fed-back input of every row
    assert seen[0].grad is not None and seen[0].grad.abs().sum() > 0  # and into the earlier passes


@pytest.mark.parametrize("gamma", [1e-6, 0.5])
def test_the_final_pass_is_a_fixed_point_under_the_gate(gamma, monkeypatch):
    """With the gate closed (readout gated too), the inputs fed to latents 2..K in the final pass are exactly the
    fed-back final states of latents 1..K−1 in that same pass; the K passes share one gated mask."""
    tiny = Tiny()
    feedback = continuous(tiny)
    student = LavitStudent(tiny.model, tiny.latent_ids, gate_readout=True)
    student.gamma = gamma
    batch = LavitCollator(tiny.tokenizer.pad_token_id, True, True)(tiny.examples())
    assert batch["gate_query_mask"].any()
    seen: list[torch.Tensor] = []
    built = []
    build = lavit_student.build_gated_attention_mask
    monkeypatch.setattr(lavit_student, "build_gated_attention_mask", lambda *a, **kw: built.append(1) or build(*a, **kw))
    with torch.no_grad(), editing_fed_back(lambda fed: seen.append(fed) or fed):
        hidden = student(batch).hidden_states
    assert len(built) == 1
    positions = batch["latent_positions"]
    rows = torch.arange(2)[:, None]
    assert torch.allclose(feedback.feed_back(hidden[rows, positions[:, :-1]]), seen[-1], atol=1e-5)
    assert not torch.allclose(seen[0], seen[-1], atol=1e-3)  # the passes before had not converged yet


def test_the_diagnostics_read_the_final_pass():
    """`attention_from` (the latent-map diagnostics) runs the feedback passes too: its states are the forward's and
    its latent rows give the forward's trajectory map."""
    tiny = Tiny()
    continuous(tiny)
    student = LavitStudent(tiny.model, tiny.latent_ids)
    batch = tiny.batch()
    with torch.no_grad():
        out = student(batch)
    maps, hidden = student.attention_from(batch, batch["latent_positions"])  # [B, K, S], [B, S, D]
    assert torch.equal(hidden, out.hidden_states)
    index = batch["image_index"][:, None, :].expand(-1, maps.shape[1], -1)
    on_image = maps.gather(2, index) * batch["image_valid"][:, None, :]
    assert torch.allclose(on_image / on_image.sum(-1, keepdim=True), out.student_traj, atol=1e-6)


def test_the_text_loss_skips_the_latents_that_feed_forward():
    tiny = Tiny()
    batch = tiny.batch()
    with torch.no_grad():
        discrete = LavitStudent(tiny.model, tiny.latent_ids)(batch).ntp_targets
        continuous(tiny)
        fed = LavitStudent(tiny.model, tiny.latent_ids)(batch).ntp_targets
    ids = torch.tensor(tiny.latent_ids)
    assert torch.isin(discrete, ids).sum() == 2 * len(ids)  # every latent is a target of the discrete student
    assert fed.tolist() == [t for t in discrete.tolist() if t not in tiny.latent_ids[1:]]  # <lvr_1> stays
    assert (fed == tiny.latent_ids[0]).sum() == 2


def test_norm_matching_gives_the_stated_norms():
    table = torch.tensor([[3.0, 4.0], [0.0, 1.0], [6.0, 8.0], [100.0, 0.0], [7.0, 7.0]])  # norms 5, 1, 10, 100, …
    assert embedding_table_norm(table, 3, []) == pytest.approx((5 + 1 + 10) / 3)
    assert embedding_table_norm(table, 4, [3]) == pytest.approx((5 + 1 + 10) / 3)  # a latent row left out
    states = torch.randn(2, 3, 16) * 40
    matched = LatentFeedback("embedding_table", 0.75).feed_back(states)
    assert torch.allclose(matched.norm(dim=-1), torch.full((2, 3), 0.75))
    assert torch.allclose(matched / matched.norm(dim=-1, keepdim=True), states / states.norm(dim=-1, keepdim=True))
    assert torch.equal(LatentFeedback("none").feed_back(states), states)
    tiny = Tiny()
    feedback = latent_feedback_for(tiny.model, "embedding_table", len(tiny.tokenizer), tiny.latent_ids)
    rows = tiny.model.get_input_embeddings().weight[:len(tiny.tokenizer)].detach()
    keep = [i for i in range(len(tiny.tokenizer)) if i not in tiny.latent_ids]
    assert feedback.target_norm == pytest.approx(float(rows[keep].norm(dim=-1).mean()), rel=1e-6)
    # the forward feeds back states at that norm, or, unmatched, at the final norm's (far larger) one
    for norm_match in ("embedding_table", "none"):
        continuous(tiny, norm_match)
        seen: list[torch.Tensor] = []
        with torch.no_grad(), editing_fed_back(lambda fed, seen=seen: seen.append(fed) or fed):
            LavitStudent(tiny.model, tiny.latent_ids)(tiny.batch())
        norms = seen[-1].norm(dim=-1)
        if norm_match == "none":
            assert norms.min() > 20 * feedback.target_norm
        else:
            assert torch.allclose(norms, torch.full_like(norms, feedback.target_norm), rtol=1e-5)


def test_the_design_is_recorded_read_back_and_validated():
    feedback = LatentFeedback("embedding_table", 0.3)
    meta = feedback.to_meta()
    assert meta == {"latent_design": "continuous",
                    "latent_feedback": {"state": "final_norm", "norm_match": "embedding_table", "target_norm": 0.3}}
    assert LatentFeedback.from_meta(meta) == feedback
    assert LatentFeedback.from_meta(LatentFeedback("none").to_meta()) == LatentFeedback("none")
    assert LatentFeedback.from_meta({}) is None and LatentFeedback.from_meta({"latent_design": "discrete"}) is None
    with pytest.raises(ValueError, match="latent design 'spiral'"):
        LatentFeedback.from_meta({"latent_design": "spiral"})
    with pytest.raises(ValueError, match="no latent_feedback"):
        LatentFeedback.from_meta({"latent_design": "continuous"})
    with pytest.raises(ValueError, match="needs its target_norm"):
        LatentFeedback("embedding_table")
    with pytest.raises(ValueError, match="needs its target_norm"):
        LatentFeedback("none", 1.0)
    with pytest.raises(ValueError, match="must be > 0"):
        LatentFeedback("embedding_table", 0.0)
    with pytest.raises(ValueError, match="norm match must be one of"):
        LatentFeedback("prompt", 1.0)
    with pytest.raises(ValueError, match="needs a method with latent tokens"):
        LavitTrainConfig(method="naive_sft", latent_design="continuous")
    with pytest.raises(ValueError, match="num_latent_tokens >= 2"):
        LavitTrainConfig(latent_design="continuous", num_latent_tokens=1)
    with pytest.raises(ValueError, match="latent_design must be"):
        LavitTrainConfig(latent_design="spiral")
    one = Tiny(k=1)
    attach_latent_feedback(one.model, LatentFeedback("none"))
    with pytest.raises(ValueError, match="at least 2 latent tokens"):
        LavitStudent(one.model, one.latent_ids)


def test_the_design_travels_with_the_model_and_a_discrete_run_drops_it():
    tiny = Tiny()
    assert latent_feedback_of(tiny.model) is None
    feedback = continuous(tiny)
    assert latent_feedback_of(tiny.model) is feedback
    assert LavitStudent(tiny.model, tiny.latent_ids).latent_feedback is feedback
    attach_latent_feedback(tiny.model, None)
    assert LavitStudent(tiny.model, tiny.latent_ids).latent_feedback is None


@pytest.mark.slow
def test_a_continuous_student_trains_exports_and_is_served_by_lavit_only(tmp_path):
    """`lavit train latent_design=continuous` on the training tests' tiny set: every loss term finite, the design
    and its target norm (the base's embedding rows, latents left out) in lavit.json, lavit's evaluation model answers
    with it in forced mode, vLLM refuses it."""
    sft = write_sft_set(tmp_path / "sft", 24, seed=0)
    cfg = LavitTrainConfig(data=[str(sft)], image_root=str(sft.parent), output_dir=str(tmp_path / "run"),
                           global_batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, logging_steps=1, save_steps=1000,
                           gate_warmup_steps=1, max_steps=3, min_pixels=4 * 28 * 28, max_pixels=64 * 28 * 28,
                           gradient_checkpointing=False, latent_design="continuous",
                           latent_norm_match="embedding_table")
    result = run_training(cfg)
    logged = [h for h in result["log_history"] if "loss" in h]
    assert len(logged) == 3
    for key in ("loss_ntp", "loss_concept", "loss_traj"):
        assert all(torch.isfinite(torch.tensor(h[key])) for h in logged), key
    meta = read_lavit_meta(result["student_dir"])
    base, processor = load_model_and_processor("tiny", seed=cfg.seed)
    ids = add_latent_tokens(processor.tokenizer, base, latent_token_names(4))
    target = latent_feedback_for(base, "embedding_table", len(processor.tokenizer), ids).target_norm
    assert meta["latent_design"] == "continuous"
    assert meta["latent_feedback"] == {"state": "final_norm", "norm_match": "embedding_table",
                                       "target_norm": pytest.approx(target)}
    model = GenerativeModel(result["student_dir"], max_new_tokens=2)
    assert latent_feedback_of(model.model) == LatentFeedback("embedding_table", meta["latent_feedback"]["target_norm"])
    assert model.describe()["latent_design"] == "continuous" and model.mode == "forced"
    assert len(model.generate([[Image.new("RGB", (56, 56))]], ["what color ?"])) == 1
    with pytest.raises(ValueError, match="continuous latents"):
        build_engine("vllm", result["student_dir"])
