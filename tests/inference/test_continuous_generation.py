"""Generation of a continuous-latent student: forced mode equals a step-by-step manual decode (latents computed one at
a time, no cache), natural mode feeds the block back step by step to the same answer, masked mode feeds nothing
back, and the exported student round-trips with its design while stock clients and vLLM refuse it."""

import json

import pytest
import torch

from lavit.data.examples import render_prompt
from lavit.inference.generate import (
    ForceLatentBlock,
    build_generation_inputs,
    generate_answers,
)
from lavit.models.checkpoint import export_student, load_for_inference, read_lavit_meta
from lavit.models.continuous_latents import (
    LatentFeedback,
    attach_latent_feedback,
    continuous_latent_states,
    latent_feedback_for,
    latent_feedback_of,
    latent_feedback_prompt,
)
from lavit.models.lavit_student import LavitStudent
from tests.inference.test_interventions import QUESTIONS, images, redrawn

K = 4
NEW = 3


def continuous_student(family: str = "qwen2_5_vl", norm_match: str = "embedding_table"):
    tiny = redrawn(family)
    attach_latent_feedback(tiny.model, latent_feedback_for(tiny.model, norm_match, len(tiny.tokenizer),
                                                           tiny.latent_ids))
    return tiny


def forced_inputs(tiny, latent_tokens=None) -> dict:
    return build_generation_inputs(tiny.processor, images(), QUESTIONS, latent_tokens=latent_tokens or tiny.names,
                                   mode="forced", system_prompt=None)


@torch.no_grad()
def manual_decode(tiny, inputs: dict, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy tokens [B, steps] and first-step logits [B, V] without `generate` or a cache: latent j's state from a
    forward over the prompt cut after latent j (left-padded rows end together), its fed-back input placed by an
    explicit substitution; then each new token from a full forward over prompt + tokens so far."""
    model, feedback = tiny.model, latent_feedback_of(tiny.model)
    seq_len = inputs["input_ids"].shape[1]
    fed: dict[int, torch.Tensor] = {}  # column → [B, D]

    def forward(net, ids, mask, mm):
        def substitute(module, args, output):
            output = output.clone()
            for column, value in fed.items():
                if column < output.shape[1]:
                    output[:, column] = value
            return output

        handle = model.get_input_embeddings().register_forward_hook(substitute)
        try:
            return net(input_ids=ids, attention_mask=mask, pixel_values=inputs["pixel_values"],
                       image_grid_thw=inputs["image_grid_thw"], mm_token_type_ids=mm, use_cache=False)
        finally:
            handle.remove()

    for j in range(K - 1):
        end = seq_len - K + j + 1  # the prompt up to latent j+1
        states = forward(model.model, inputs["input_ids"][:, :end], inputs["attention_mask"][:, :end],
                         inputs["mm_token_type_ids"][:, :end]).last_hidden_state  # [B, end, D]
        fed[end] = feedback.feed_back(states[:, -1])  # the input of latent j+2, at column `end`
    ids, mask, mm = inputs["input_ids"], inputs["attention_mask"], inputs["mm_token_type_ids"]
    tokens, first = [], None
    eos = torch.tensor([tiny.tokenizer.eos_token_id])
    for _ in range(steps):
        logits = forward(model, ids, mask, mm).logits[:, -1]
        first = logits if first is None else first
        token = logits.index_fill(1, eos, float("-inf")).argmax(dim=-1)  # min_new_tokens = steps: no eos
        tokens.append(token)
        # a generated token enters as its embedding row, as in a decode step; its id is a pad, so that a generated
        # <|image_pad|> (re-drawn weights write anything) is not taken for an image placeholder
        fed[ids.shape[1]] = model.get_input_embeddings()(token)
        ids = torch.cat([ids, torch.full_like(token[:, None], tiny.tokenizer.pad_token_id)], dim=1)
        mask = torch.cat([mask, torch.ones_like(token[:, None])], dim=1)
        mm = torch.cat([mm, torch.zeros_like(token[:, None])], dim=1)
    return torch.stack(tokens, dim=1), first


@pytest.mark.parametrize("family", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "qwen3_5"])
def test_forced_generation_equals_a_step_by_step_manual_decode(family):
    tiny = continuous_student(family)
    inputs = forced_inputs(tiny)
    assert len(set(inputs["attention_mask"].sum(dim=1).tolist())) == 3  # left-padded
    tokens, first = manual_decode(tiny, inputs, NEW)
    expected = [tiny.tokenizer.decode(row, skip_special_tokens=True).strip() for row in tokens]
    got = generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode="forced",
                           max_new_tokens=NEW, min_new_tokens=NEW)
    assert got == expected
    with torch.no_grad(), latent_feedback_prompt(tiny.model, inputs, tiny.latent_ids):
        logits = tiny.model(**inputs).logits[:, -1]
    assert torch.allclose(logits, first, atol=1e-3)  # Qwen3.5: chunked vs whole-prompt linear attention
    # and the feedback matters: the same weights run as discrete latents answer otherwise
    attach_latent_feedback(tiny.model, None)
    with torch.no_grad():
        discrete = tiny.model(**inputs).logits[:, -1]
    assert (discrete - first).abs().amax() > 1e-2


def test_the_states_the_audit_reads_are_the_final_pass_of_training():
    """`continuous_latent_states` of forced prompts equals the training forward's final pass at the latents."""
    tiny = continuous_student()
    inputs = forced_inputs(tiny)
    states = continuous_latent_states(tiny.model, inputs, tiny.latent_ids)  # [B, K, D]
    assert states.shape == (3, K, 128)
    student = LavitStudent(tiny.model, tiny.latent_ids, trajectory_loss=False)
    for b in range(3):
        real = inputs["attention_mask"][b].bool()
        batch = {"input_ids": inputs["input_ids"][b:b + 1, real], "attention_mask": torch.ones(1, int(real.sum()),
                                                                                               dtype=torch.long),
                 "mm_token_type_ids": inputs["mm_token_type_ids"][b:b + 1, real],
                 "pixel_values": pixels_of(inputs, b), "image_grid_thw": inputs["image_grid_thw"][b:b + 1],
                 "latent_positions": torch.arange(int(real.sum()) - K, int(real.sum()))[None],
                 "gate_query_mask": torch.zeros(1, int(real.sum()), dtype=torch.bool)}
        with torch.no_grad():
            hidden = student(batch).hidden_states
        assert torch.allclose(hidden[0, -K:], states[b], atol=1e-4)


def pixels_of(inputs: dict, b: int) -> torch.Tensor:
    """Row b's patches of a batch's concatenated pixel values."""
    counts = inputs["image_grid_thw"].prod(dim=1).tolist()
    start = sum(counts[:b])
    return inputs["pixel_values"][start:start + counts[b]]


def test_natural_mode_feeds_the_block_back_step_by_step_to_the_forced_answer():
    """A prompt that ends with <lvr_1> (as when the model writes it): the rest of the block is forced and fed back
    token by token through the cache, and the answer after it is the forced mode's."""
    tiny = continuous_student()
    forced = generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names,
                              mode="forced", max_new_tokens=NEW, min_new_tokens=NEW)
    started = forced_inputs(tiny, latent_tokens=tiny.names[:1])
    raw = generate_answers(tiny.model, tiny.processor, None, QUESTIONS, latent_tokens=tiny.names, mode="natural",
                           max_new_tokens=K - 1 + NEW, min_new_tokens=K - 1 + NEW, inputs=started,
                           keep_special_tokens=True)
    assert all(r.split()[:K - 1] == tiny.names[1:] for r in raw), raw
    natural = generate_answers(tiny.model, tiny.processor, None, QUESTIONS, latent_tokens=tiny.names, mode="natural",
                               max_new_tokens=K - 1 + NEW, min_new_tokens=K - 1 + NEW, inputs=started)
    assert natural == forced
    with pytest.raises(ValueError, match="needs its feedback passes"):
        generate_answers(tiny.model, tiny.processor, None, QUESTIONS, latent_tokens=tiny.names, mode="natural",
                         max_new_tokens=2, inputs=forced_inputs(tiny))


def test_force_latent_block_completes_a_started_block_only():
    ids = [10, 11, 12, 13]
    force = ForceLatentBlock(ids)
    rows = torch.tensor([[5, 6, 10], [5, 10, 11], [10, 11, 12], [11, 12, 13], [5, 6, 12], [5, 6, 7]])
    scores = torch.zeros(6, 20)
    out = force(rows, scores)
    assert out.argmax(dim=1).tolist()[:3] == [11, 12, 13]
    assert torch.isinf(out[:3]).sum() == 3 * 19
    assert torch.equal(out[3:], scores[3:])  # a whole block, a latent out of a block, no latent: untouched


def test_masked_mode_feeds_nothing_back():
    """Masked: each latent keeps its token embedding and sees only the prompt and itself, exactly as a discrete
    student with the same weights."""
    tiny = continuous_student()
    masked = generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names,
                              mode="masked", max_new_tokens=NEW, min_new_tokens=NEW)
    attach_latent_feedback(tiny.model, None)
    assert generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode="masked",
                            max_new_tokens=NEW, min_new_tokens=NEW) == masked


def test_export_load_generate_round_trip_and_stock_clients_refused(tmp_path):
    from lavit.inference.engines import build_engine

    tiny = continuous_student()
    feedback = latent_feedback_of(tiny.model)
    meta = {"latent_tokens": tiny.names, "method": "lavit", "latent_design": "discrete", **feedback.to_meta()}
    export_student(LavitStudent(tiny.model, tiny.latent_ids), tiny.processor, tmp_path / "student", meta)
    recorded = read_lavit_meta(tmp_path / "student")
    assert recorded["latent_design"] == "continuous"
    assert recorded["latent_feedback"]["target_norm"] == pytest.approx(feedback.target_norm)
    model, processor = load_for_inference(str(tmp_path / "student"))
    assert latent_feedback_of(model) == feedback
    expected = generate_answers(tiny.model, tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names,
                                mode="forced", max_new_tokens=NEW, min_new_tokens=NEW)
    assert generate_answers(model, processor, images(), QUESTIONS, latent_tokens=tiny.names, mode="forced",
                            max_new_tokens=NEW, min_new_tokens=NEW) == expected
    # a stock client renders the template without lavit's flag: refused, saying why; lavit renders it
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "what color ?"}]}]
    with pytest.raises(Exception, match="continuous latents"):
        processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert render_prompt(processor, "what color ?", None).endswith("assistant\n")
    with pytest.raises(ValueError, match="continuous latents .* use engine=transformers"):
        build_engine("vllm", str(tmp_path / "student"))
    # a discrete export keeps a stock template and no design
    attach_latent_feedback(tiny.model, None)
    export_student(LavitStudent(tiny.model, tiny.latent_ids), tiny.processor, tmp_path / "discrete",
                   {"latent_tokens": tiny.names, "latent_design": "discrete"})
    plain, plain_processor = load_for_inference(str(tmp_path / "discrete"))
    assert latent_feedback_of(plain) is None
    assert plain_processor.apply_chat_template(messages, add_generation_prompt=True,
                                               tokenize=False).endswith("".join(tiny.names))
    assert json.loads((tmp_path / "discrete" / "lavit.json").read_text())["latent_design"] == "discrete"
    assert LatentFeedback.from_meta(read_lavit_meta(tmp_path / "discrete")) is None
