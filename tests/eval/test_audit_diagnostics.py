"""The audit's 2026 diagnostics on tiny students, each against a reference computed by hand: the oracle's view,
emission counting, natural-mode decoding under the training gate, the norm ratio from explicitly gathered
embeddings, the input sensitivity from separately recorded states (exactly 0 for latents that cannot see the image),
the oracle and format-only arms from explicit state patches; summaries, markdown, refusals and the CLI."""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

import lavit.inference.generate as generate_module
from lavit.cli import main
from lavit.eval.audit import (
    DIAGNOSTICS,
    LoadedModel,
    audit_items,
    audit_markdown,
    benchmark_items,
    latent_emission,
    norm_ratios,
    region_only,
    relative_change,
    sample_items,
)
from lavit.inference.diagnostics import LatentNormRecorder, chain, natural_generation
from lavit.inference.generate import build_generation_inputs, generate_answers
from lavit.inference.interventions import (
    LatentStatePatch,
    LatentStateRecorder,
    donor_block,
)
from lavit.models.attention import gated_image_keys
from lavit.models.continuous_latents import latent_feedback_of
from lavit.models.families import family_of
from lavit.models.gating import InferenceGate, gated_query_mask
from lavit.toyworld.latent_audit import audit_table_lines, summarise_audits
from tests.conftest import Tiny
from tests.eval.fixtures import write_vstar
from tests.inference.test_interventions import QUESTIONS, images, prompt_inputs, redrawn

K = 4
BOX = [10, 8, 60, 50]


@pytest.fixture(scope="module")
def tiny() -> Tiny:
    return redrawn()


@pytest.fixture(scope="module")
def student(tiny) -> LoadedModel:
    return LoadedModel(tiny.model, tiny.processor, tiny.names, max_new_tokens=2, name="tiny-redrawn")


def write_boxed_samples(directory) -> tuple:
    """Six askable rows — two pairs with boxes (one fractional), a pair whose first row has none, a row whose box
    leaves its image — and one skipped row."""
    folder = directory / "images"
    folder.mkdir(parents=True)
    for i in range(7):
        image = Image.new("RGB", (112, 84), (20 + 30 * i, 200 - 25 * i, 90))
        image.paste((230, 40 * i % 255, 30), (12 + 3 * i, 10, 58, 48))
        image.save(folder / f"{i}.png")
    q1, q2 = "what color is the circle ?", "which shape is red ?"
    rows = [{"id": "p1a", "image": "0.png", "question": q1, "answer": "red", "pair": "p1", "bbox": BOX},
            {"id": "p1b", "image": "1.png", "question": q1, "answer": "blue", "pair": "p1", "bbox": BOX},
            {"id": "p2a", "image": "2.png", "question": q2, "answer": "square", "pair": 2,
             "bbox": [5.5, 7.2, 80.4, 70.9]},
            {"id": "p2b", "image": "3.png", "question": q2, "answer": "circle", "pair": 2,
             "bbox": [5.5, 7.2, 80.4, 70.9]},
            {"id": "p3a", "image": "4.png", "question": q1, "answer": "green", "pair": "p3"},
            {"id": "p3b", "image": "5.png", "question": q1, "answer": "red", "pair": "p3", "bbox": BOX},
            {"id": "outside", "image": "6.png", "question": q2, "answer": "circle", "bbox": [0, 0, 500, 500]},
            {"id": "gone", "image": "missing.png", "question": q1, "answer": "red", "bbox": BOX}]
    path = directory / "samples.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path, folder


def test_region_only_keeps_the_pixels_a_box_touches_and_fills_the_rest():
    image = Image.new("RGB", (10, 8), (0, 0, 0))
    for x in range(10):
        for y in range(8):
            image.putpixel((x, y), (x, y, 200))
    view = region_only(image, [[2.5, 1.0, 5.2, 3.0]])
    kept = {(x, y) for x in range(10) for y in range(8) if view.getpixel((x, y)) == (x, y, 200)}
    assert kept == {(x, y) for x in range(2, 6) for y in range(1, 3)}  # columns floor(2.5)..ceil(5.2)−1
    assert all(view.getpixel((x, y)) == (128, 128, 128) for x in range(10) for y in range(8) if (x, y) not in kept)
    assert view.size == image.size and region_only(image, [[0, 0, 10, 8]]).tobytes() == image.tobytes()
    # two boxes (V*'s relative_position items name two objects): the pixels either touches, and no others
    view = region_only(image, [[2.5, 1.0, 5.2, 3.0], [8, 6, 10, 8]])
    kept = {(x, y) for x in range(10) for y in range(8) if view.getpixel((x, y)) == (x, y, 200)}
    assert kept == {(x, y) for x in range(2, 6) for y in range(1, 3)} | {(x, y) for x in (8, 9) for y in (6, 7)}


def test_latent_emission_counts_latent_ids_up_to_the_first_eos():
    latents, eos = [7, 8, 9], [2]
    assert latent_emission([7, 8, 9, 5, 2, 7, 7], latents, eos) == {"count": 3, "all_first": True}
    assert latent_emission([7, 9, 8, 5, 2], latents, eos) == {"count": 3, "all_first": False}  # out of order
    assert latent_emission([5, 7, 8, 9, 2], latents, eos) == {"count": 3, "all_first": False}  # after a word
    assert latent_emission([5, 6, 2, 7, 8, 9], latents, eos) == {"count": 0, "all_first": False}  # after eos: padding
    assert latent_emission([7, 8], latents, eos) == {"count": 2, "all_first": False}  # cut short


def _reference_natural(model, inputs: dict, latent_ids: list[int], gate: InferenceGate, steps: int,
                       gate_generated) -> list[list[int]]:
    """Greedy decoding without a cache: each step a full forward of prompt + generated tokens, its gate's query mask
    built from scratch (`gate_generated(token) -> gated?` for the generated positions)."""
    image_id = model.config.image_token_id
    prompt_ids = inputs["input_ids"]
    no_latents = torch.zeros_like(prompt_ids, dtype=torch.bool)
    prompt_gated = gated_query_mask(prompt_ids == image_id, no_latents, inputs["attention_mask"], True, False)
    generated = prompt_ids.new_zeros(prompt_ids.shape[0], 0)
    for _ in range(steps):
        ids = torch.cat([prompt_ids, generated], dim=1)
        extra = generated.shape[1]
        full = {**inputs, "input_ids": ids,
                "attention_mask": torch.cat([inputs["attention_mask"], torch.ones_like(generated)], dim=1),
                "mm_token_type_ids": torch.cat([inputs["mm_token_type_ids"], torch.zeros_like(generated)], dim=1)}
        gated = torch.cat([prompt_gated, gate_generated(generated)], dim=1) if extra else prompt_gated
        with torch.no_grad(), gated_image_keys(ids == image_id, gated, gate.gamma):
            logits = model(**full, use_cache=False).logits[:, -1]
        generated = torch.cat([generated, logits.argmax(dim=-1, keepdim=True)], dim=1)
    return generated.tolist()


def test_natural_generation_gates_the_queries_as_training_did():
    tiny = redrawn()
    with torch.no_grad():  # latents likely enough to be written now and then, among words
        tiny.model.get_input_embeddings().weight[tiny.latent_ids] *= 2.5
    inputs = build_generation_inputs(tiny.processor, images(), QUESTIONS, latent_tokens=tiny.names, mode="natural",
                                     system_prompt=None)
    gate = InferenceGate(0.0, question_tokens=True, readout=True)
    steps = 6
    got = natural_generation(tiny.model, tiny.tokenizer, inputs, latent_ids=tiny.latent_ids, max_new_tokens=steps,
                             gate=gate).tolist()
    latent = torch.tensor(tiny.latent_ids)
    as_trained = _reference_natural(tiny.model, inputs, tiny.latent_ids, gate, steps,
                                    lambda gen: ~torch.isin(gen, latent) | (gen == tiny.latent_ids[-1]))
    eos = tiny.model.generation_config.eos_token_id
    assert not any(eos in row for row in as_trained)  # no padding after an eos to compare
    assert got == as_trained
    flat = [t for row in got for t in row]
    assert any(t in tiny.latent_ids for t in flat) and any(t not in tiny.latent_ids for t in flat)
    # the gate matters here: every generated token gated (generate_answers' forced-mode rule) decodes otherwise
    everything = _reference_natural(tiny.model, inputs, tiny.latent_ids, gate, steps,
                                    lambda gen: torch.ones_like(gen, dtype=torch.bool))
    assert everything != got


def test_norm_recorder_sees_the_embeddings_and_final_states_gathered_by_hand(tiny):
    inputs = prompt_inputs(tiny)
    norms, states = LatentNormRecorder(tiny.model, tiny.latent_ids), LatentStateRecorder(tiny.model, tiny.latent_ids)
    generate_answers(tiny.model, tiny.processor, None, QUESTIONS, latent_tokens=tiny.names, max_new_tokens=2,
                     inputs=inputs, intervention=chain(norms, states))
    ids = inputs["input_ids"]
    with torch.no_grad():
        embedded = tiny.model.get_input_embeddings()(ids)  # [B, S, D]
    text = inputs["attention_mask"].bool() & (ids != tiny.model.config.image_token_id) & ~torch.isin(
        ids, torch.tensor(tiny.latent_ids))
    real = text | (ids == tiny.model.config.image_token_id)
    assert torch.equal(norms.text_tokens, text)
    assert torch.allclose(norms.input_norms[text], embedded.norm(dim=-1)[text], rtol=1e-5)
    assert not torch.allclose(norms.input_norms[real & ~text], embedded.norm(dim=-1)[real & ~text])  # image features
    with torch.no_grad():
        final = family_of(tiny.model).backbone(tiny.model)(**inputs).last_hidden_state[:, -K:]  # [B, K, D]
    assert torch.allclose(norms.final_norms, final.norm(dim=-1), rtol=1e-4)
    layer_norms = states.states[:, :, 1:].norm(dim=-1)  # [L, B, K]
    ratios = norm_ratios(norms.input_norms, norms.final_norms, layer_norms, text)
    row_table = tiny.model.get_input_embeddings().weight[tiny.latent_ids].norm(dim=-1)  # [K]
    for b in range(ids.shape[0]):
        ebar = embedded[b][text[b]].norm(dim=-1).mean()
        assert ratios["text_norm"][b] == pytest.approx(ebar.item(), rel=1e-5)
        assert torch.allclose(ratios["input"][b], row_table / ebar, rtol=1e-5)  # discrete: the latent rows
        assert torch.allclose(ratios["final"][b], final[b].norm(dim=-1) / ebar, rtol=1e-4)
        assert torch.allclose(ratios["layers"][:, b], layer_norms[:, b] / ebar, rtol=1e-5)


@pytest.fixture(scope="module")
def audited(student, tmp_path_factory):
    path, folder = write_boxed_samples(tmp_path_factory.mktemp("boxed"))
    items = sample_items(path, folder)
    return items, audit_items(student, items, interventions=["none", "swap"], diagnostics=None, batch_size=8, seed=1)


def test_boxes_are_read_checked_and_recorded(audited):
    items, result = audited
    by_id = {it.id: it for it in items}
    assert by_id["p1a"].boxes == [[10.0, 8.0, 60.0, 50.0]] and by_id["p2a"].boxes == [[5.5, 7.2, 80.4, 70.9]]
    assert by_id["p3a"].boxes is None and by_id["p3a"].no_box == "the row has no bbox"
    assert by_id["outside"].boxes is None and by_id["outside"].no_box.startswith("box_outside_image")
    assert by_id["outside"].skip is None and by_id["gone"].skip.startswith("image_missing")  # askable; skipped
    assert result["diagnostics"]["chosen"] == list(DIAGNOSTICS) and result["n_asked"] == 7
    arms = {r["arm"]: r for r in result["diagnostics"]["table"]}
    assert arms["oracle"]["n"] == 5 and arms["oracle"]["no_source"] == 2  # p3a, outside: no box
    # oracle_donor: p3b's donor p3a has no box; p3a takes p3b's region, outside a row asking its question
    assert arms["oracle_donor"]["n"] == 6 and arms["oracle_donor"]["no_source"] == 1
    assert arms["format_only"]["n"] == 7 and arms["format_only"]["no_source"] == 0
    per_item = {it["id"]: it for it in result["items"]}
    assert per_item["p1a"]["boxes"] == [BOX] and "oracle_view" not in per_item["p3a"]


def test_oracle_and_format_only_arms_equal_explicit_state_patches(tiny, audited):
    items, result = audited
    per_item = {it["id"]: it for it in result["items"]}
    net, latent_ids = tiny.model, tiny.latent_ids
    ready = [it for it in items if it.skip is None]
    boxed = [it for it in ready if it.boxes is not None]

    def run(batch, views, intervention=None):
        return generate_answers(net, tiny.processor, views, [it.prompt for it in batch], latent_tokens=tiny.names,
                                max_new_tokens=2, intervention=intervention)

    recorder = LatentStateRecorder(net, latent_ids)
    oracle_answers = run(boxed, [region_only(it.images[0].open(), it.boxes) for it in boxed], recorder)
    assert [per_item[it.id]["oracle_view"]["raw"] for it in boxed] == oracle_answers
    views = {it.id: recorder.states[:, b, 1:K] for b, it in enumerate(boxed)}  # [L, K−1, D]
    full = [it.images[0].open() for it in boxed]
    injected = run(boxed, full, LatentStatePatch(net, latent_ids, donor_block(torch.stack(
        [views[it.id] for it in boxed], dim=1))))
    assert [per_item[it.id]["answers"]["oracle"]["raw"] for it in boxed] == injected
    donors = {it["id"]: it["donors"]["swap"] for it in result["items"]}
    takers = [it for it in ready if donors[it.id] in views]
    donor_injected = run(takers, [it.images[0].open() for it in takers], LatentStatePatch(
        net, latent_ids, donor_block(torch.stack([views[donors[it.id]] for it in takers], dim=1))))
    assert [per_item[it.id]["answers"]["oracle_donor"]["raw"] for it in takers] == donor_injected
    recorder = LatentStateRecorder(net, latent_ids)
    forced = run(ready, [it.images[0].open() for it in ready], recorder)
    assert [per_item[it.id]["answers"]["forced"]["raw"] for it in ready] == forced
    mean = recorder.states[:, :, 1:K].mean(dim=1, keepdim=True).expand(-1, len(ready), -1, -1)  # [L, B, K−1, D]
    blank = run(ready, [it.images[0].open() for it in ready], LatentStatePatch(net, latent_ids, donor_block(mean)))
    assert [per_item[it.id]["answers"]["format_only"]["raw"] for it in ready] == blank
    assert any(per_item[it.id]["answers"]["format_only"]["raw"] != per_item[it.id]["answers"]["forced"]["raw"]
               for it in ready)  # the filler did something to this model


def test_arm_rows_agree_with_the_per_item_answers(audited):
    _, result = audited
    items = result["items"]
    arms = {r["arm"]: r for r in result["diagnostics"]["table"]}
    views = {it["id"]: it["oracle_view"]["extracted"] for it in items if "oracle_view" in it}
    donor = {it["id"]: it["donors"]["swap"] for it in items}
    for arm, source in (("oracle", lambda i: i), ("oracle_donor", lambda i: donor[i])):
        asked = [it for it in items if arm in it["answers"]]
        assert arms[arm]["correct"] == sum(it["answers"][arm]["correct"] for it in asked)
        contrast = [it for it in asked if it["answers"]["forced"]["extracted"] not in (None, "")
                    and views[source(it["id"])] not in (None, "", it["answers"]["forced"]["extracted"])]
        followed = sum(it["answers"][arm]["extracted"] == views[source(it["id"])] for it in contrast)
        assert arms[arm]["follows_oracle"] == {"n": len(contrast), "followed": followed,
                                               "rate": followed / len(contrast) if contrast else None}
    none = [it["answers"]["none"]["correct"] for it in items]
    blank = [it["answers"]["format_only"]["correct"] for it in items]
    assert arms["format_only"]["vs_none"]["difference"] == pytest.approx((sum(blank) - sum(none)) / len(items))
    view = result["diagnostics"]["oracle_view"]
    assert view["n"] == len(views) and view["fill"] == [128, 128, 128]


def test_sensitivity_and_norm_ratio_recomputed_from_recorded_states(tiny, audited):
    items, result = audited
    ready = [it for it in items if it.skip is None]
    recorder, norms = LatentStateRecorder(tiny.model, tiny.latent_ids), LatentNormRecorder(tiny.model, tiny.latent_ids)
    generate_answers(tiny.model, tiny.processor, [[it.images[0].open()] for it in ready], [it.prompt for it in ready],
                     latent_tokens=tiny.names, max_new_tokens=2, intervention=chain(recorder, norms))
    states = {it.id: recorder.states[:, b] for b, it in enumerate(ready)}  # [L, K+1, D]
    donors = {it["id"]: it["donors"]["swap"] for it in result["items"]}
    pairs = [(i, d) for i, d in donors.items() if d is not None]
    sens = result["diagnostics"]["sensitivity"]
    assert sens["pairs"] == len(pairs) == 7 and sens["no_donor"] == 0
    for name, cols in (("latents", slice(1, K)), ("readout", slice(K, K + 1)), ("last_prompt_token", slice(0, 1))):
        by_hand = [sum(((states[i][layer, cols] - states[d][layer, cols]).norm() / states[i][layer, cols].norm()).item()
                       for i, d in pairs) / len(pairs) for layer in range(states["p1a"].shape[0])]
        assert sens[name]["per_layer"] == pytest.approx(by_hand, rel=1e-5)
        assert sens[name]["last_layer"] == pytest.approx(by_hand[-1], rel=1e-5)
    assert sens["latents"]["last_layer"] > 0.01
    ratio = result["diagnostics"]["norm_ratio"]
    inputs = build_generation_inputs(tiny.processor, [[it.images[0].open()] for it in ready], [it.prompt for it in ready],
                                     latent_tokens=tiny.names, mode="forced", system_prompt=None)
    ids = inputs["input_ids"]
    text = inputs["attention_mask"].bool() & (ids != tiny.model.config.image_token_id) & ~torch.isin(
        ids, torch.tensor(tiny.latent_ids))
    ebar = torch.stack([norms.input_norms[b][text[b]].mean() for b in range(len(ready))])  # [N]
    assert ratio["items"] == len(ready) and ratio["text_embedding_norm"] == pytest.approx(ebar.mean().item(), rel=1e-5)
    assert ratio["final"]["per_latent"] == pytest.approx((norms.final_norms / ebar[:, None]).mean(dim=0).tolist(),
                                                         rel=1e-5)
    assert ratio["input"]["mean"] == pytest.approx((norms.input_norms[:, -K:] / ebar[:, None]).mean().item(), rel=1e-5)


def test_emission_counts_what_natural_generation_wrote(tiny, student, audited):
    items, result = audited
    ready = [it for it in items if it.skip is None]
    emission = result["diagnostics"]["emission"]
    assert emission["no_system"]["same_as"] == "checkpoint" and emission["paper_system"]["same_as"] is None
    eos = tiny.model.generation_config.eos_token_id
    for style, prompt in (("checkpoint", None), ("paper_system", emission["paper_system"]["system_prompt"])):
        inputs = build_generation_inputs(tiny.processor, [[it.images[0].open()] for it in ready],
                                         [it.prompt for it in ready], latent_tokens=tiny.names, mode="natural",
                                         system_prompt=prompt)
        rows = natural_generation(tiny.model, tiny.tokenizer, inputs, latent_ids=tiny.latent_ids,
                                  max_new_tokens=2 + K).tolist()
        counted = [latent_emission(row, tiny.latent_ids, [eos]) for row in rows]
        assert emission[style]["n"] == len(ready)
        assert emission[style]["mean_latents"] == pytest.approx(sum(c["count"] for c in counted) / len(ready))
        assert emission[style]["all_latents_first"] == sum(c["all_first"] for c in counted) / len(ready)
        per_item = {it["id"]: it["natural"][style] for it in result["items"]}
        assert [per_item[it.id]["count"] for it in ready] == [c["count"] for c in counted]


def test_latents_that_cannot_see_the_image_have_no_input_sensitivity(tiny, tmp_path, monkeypatch):
    path, folder = write_boxed_samples(tmp_path)
    items = [it for it in sample_items(path, folder) if it.pair in ("p1", 2)]
    gate = InferenceGate(0.0, question_tokens=True, readout=True)
    model = LoadedModel(tiny.model, tiny.processor, tiny.names, max_new_tokens=1, gate=gate)
    seen = audit_items(model, items, interventions=["zero"], diagnostics=["sensitivity"])["diagnostics"]["sensitivity"]
    assert seen["latents"]["last_layer"] > 0.01  # the latents see the image: the positive side

    def after_the_image(image_mask, latent_mask, attention_mask, *args):  # every token after the image, latents too
        positions = torch.arange(image_mask.shape[1])
        last = torch.where(image_mask, positions, -1).amax(dim=1, keepdim=True)
        return (positions > last) & attention_mask.bool()

    monkeypatch.setattr(generate_module, "gated_query_mask", after_the_image)
    blind = audit_items(model, items, interventions=["zero"], diagnostics=["sensitivity"])["diagnostics"]["sensitivity"]
    for name in ("latents", "readout", "last_prompt_token"):
        assert blind[name]["per_layer"] == [0.0] * len(blind[name]["per_layer"]), name
    assert blind["latents_over_readout"] is None


def test_relative_change_is_a_frobenius_ratio():
    a = torch.tensor([[[3.0, 0.0], [0.0, 4.0]]])  # [1, 2, 2]: norm 5
    b = torch.tensor([[[0.0, 0.0], [0.0, 4.0]]])
    assert relative_change(a, b).tolist() == [pytest.approx(3 / 5)]
    with pytest.raises(ValueError, match="all-zero"):
        relative_change(torch.zeros(1, 2, 2), a)


def test_refusals_and_not_applicable_arms(tmp_path):
    path, folder = write_boxed_samples(tmp_path)
    items = sample_items(path, folder)[:2]
    hybrid = Tiny(family="qwen3_5")
    model = LoadedModel(hybrid.model, hybrid.processor, hybrid.names, max_new_tokens=1)
    with pytest.raises(ValueError, match=r"\['oracle', 'format_only'\].*recurrent state"):
        audit_items(model, items, interventions=["none"], diagnostics=None)
    found = audit_items(model, items, interventions=["none"], diagnostics=["norm_ratio", "sensitivity"])["diagnostics"]
    assert found["sensitivity"]["pairs"] == 2 and found["norm_ratio"]["items"] == 2
    one = Tiny(k=1)
    result = audit_items(LoadedModel(one.model, one.processor, one.names, max_new_tokens=1), items,
                         interventions=["none"], diagnostics=["sensitivity", "oracle", "format_only"])
    arms = {r["arm"]: r for r in result["diagnostics"]["table"]}
    assert set(arms) == {"oracle", "oracle_donor", "format_only"}
    assert all(not r["applicable"] and "K = 1" in r["reason"] for r in arms.values())
    assert result["diagnostics"]["sensitivity"]["latents"] is None
    assert "not applicable: K = 1" in audit_markdown(result)
    tiny = Tiny()
    loaded = LoadedModel(tiny.model, tiny.processor, tiny.names, max_new_tokens=1)
    with pytest.raises(ValueError, match="unknown diagnostics"):
        audit_items(loaded, items, diagnostics=["emission_rate"])
    with pytest.raises(ValueError, match="leave out emission"):
        audit_items(loaded, items, interventions=["zero"], diagnostics=["emission"], hide_latents=True)
    unboxed = [it for it in sample_items(path, folder) if it.id in ("p3a", "outside")]
    arms = {r["arm"]: r for r in audit_items(loaded, unboxed, interventions=["zero"], diagnostics=["oracle"])
            ["diagnostics"]["table"]}
    assert not arms["oracle"]["applicable"] and "no item has a source" in arms["oracle"]["reason"]


def test_summaries_and_tables_carry_the_diagnostics(audited):
    _, result = audited
    summary = summarise_audits([result, result])
    d = summary["diagnostics"]
    assert d["chosen"] == list(DIAGNOSTICS)
    arms = {r["arm"]: r for r in d["table"]}
    row = {r["arm"]: r for r in result["diagnostics"]["table"]}
    assert arms["oracle_donor"]["difference"] == pytest.approx(row["oracle_donor"]["vs_forced"]["difference"])
    assert arms["oracle"]["follows_oracle"] == row["oracle"]["follows_oracle"]["rate"]
    assert arms["format_only"]["vs_none"] == pytest.approx(row["format_only"]["vs_none"]["difference"])
    assert d["norm_ratio"]["final"] == pytest.approx(result["diagnostics"]["norm_ratio"]["final"]["mean"])
    assert d["sensitivity"]["latents"] == pytest.approx(result["diagnostics"]["sensitivity"]["latents"]["last_layer"])
    assert d["emission"]["paper_system"]["any_latent"] == result["diagnostics"]["emission"]["paper_system"]["any_latent"]
    lines = "\n".join(audit_table_lines(summary))
    assert "| diagnostic arm |" in lines and "| oracle_donor |" in lines and "Emission, paper_system prompt" in lines
    assert "Norm ratio" in lines and "Input sensitivity" in lines and "Oracle view" in lines
    markdown = audit_markdown(result)
    assert "## Diagnostics (2026)" in markdown and "| format_only |" in markdown and "latent 4" in markdown
    assert math.isfinite(d["oracle_view"]["accuracy"])
    plain = {**result, "diagnostics": {"chosen": []}}
    assert summarise_audits([plain])["diagnostics"] is None and "## Diagnostics" not in audit_markdown(plain)
    with pytest.raises(ValueError, match="different diagnostics"):
        summarise_audits([result, plain])


def test_cli_audit_diagnostics(tmp_path, export_tiny_student):
    path, folder = write_boxed_samples(tmp_path)
    export_tiny_student(tmp_path / "student")
    args = ["audit", "--model", str(tmp_path / "student"), "--samples", str(path), "--image-root", str(folder),
            "--out", str(tmp_path / "out"), "--interventions", "zero", "--max-new-tokens", "1", "--max-samples", "4",
            "--diagnostics", "norm_ratio,oracle"]
    assert main(args) == 0
    result = json.loads((tmp_path / "out" / "audit.json").read_text())
    assert result["settings"]["diagnostics"] == ["norm_ratio", "oracle"]
    assert set(result["diagnostics"]) == {"chosen", "norm_ratio", "oracle_view", "table"}
    assert "## Diagnostics (2026)" in (tmp_path / "out" / "audit.md").read_text()
    assert main([*args[:-1], "norm,oracle"]) == 2
    assert main([*args[:8], str(tmp_path / "none"), *args[9:-1], "none"]) == 0
    assert json.loads((tmp_path / "none" / "audit.json").read_text())["diagnostics"] == {"chosen": []}


def test_vstar_items_carry_their_published_boxes_into_the_oracle_arm(tmp_path, export_tiny_student, student):
    """`lavit audit --benchmark vstar:all` shows the oracle the targets V* publishes beside each image (two regions
    for a relative_position item); an item whose annotation is missing or whose box leaves its image stays in every
    other run and is left out of the arm, saying why. The oracle view's answer is the model's on `region_only`."""
    bad = {3: None, 4: json.dumps({"target_object": ["fence"], "bbox": [[40, 30, 200, 200]]})}
    root = write_vstar(tmp_path / "vstar_bench", annotations=bad)
    export_tiny_student(tmp_path / "student")
    assert main(["audit", "--model", str(tmp_path / "student"), "--benchmark", "vstar:all", "--data-root", str(root),
                 "--out", str(tmp_path / "out"), "--interventions", "zero", "--max-new-tokens", "2",
                 "--diagnostics", "oracle"]) == 0
    result = json.loads((tmp_path / "out" / "audit.json").read_text())
    per_item = {it["id"]: it for it in result["items"]}
    assert per_item["2"]["boxes"] == [[5.0, 2.0, 25.0, 17.0], [35.0, 3.0, 55.0, 19.0]]
    assert "oracle_view" not in per_item["3"] and "oracle_view" not in per_item["4"]
    arms = {r["arm"]: r for r in result["diagnostics"]["table"]}
    assert arms["oracle"]["n"] == 5 and arms["oracle"]["no_source"] == 2
    items = {it.id: it for it in benchmark_items("vstar:all", root)}
    assert items["3"].no_box.startswith("no annotation file") and items["4"].no_box.startswith("box_outside_image")
    boxed = [items[i] for i in ("0", "2", "6")]
    views = [region_only(it.images[0].open(), it.boxes) for it in boxed]
    assert views[1].getpixel((0, 0)) == (128, 128, 128) and views[1].getpixel((40, 10)) != (128, 128, 128)
    direct = audit_items(student, list(items.values()), interventions=["zero"], diagnostics=["oracle"])
    answers = generate_answers(student.model, student.processor, views, [it.prompt for it in boxed],
                               latent_tokens=student.latent_tokens, max_new_tokens=2)
    assert [next(r for r in direct["items"] if r["id"] == it.id)["oracle_view"]["raw"] for it in boxed] == answers


@pytest.mark.parametrize("norm_match", ["none", "embedding_table"])
def test_diagnostics_of_a_continuous_student_see_the_fed_back_states(tmp_path, norm_match):
    from tests.inference.test_continuous_generation import continuous_student

    tiny = continuous_student(norm_match=norm_match)
    with torch.no_grad():  # <lvr_1> likely enough to be written unprompted now and then
        tiny.model.get_input_embeddings().weight[tiny.latent_ids[0]] *= 3.0
    path, folder = write_boxed_samples(tmp_path)
    items = [it for it in sample_items(path, folder) if it.pair in ("p1", 2)]
    model = LoadedModel(tiny.model, tiny.processor, tiny.names, max_new_tokens=1)
    result = audit_items(model, items, interventions=["zero"], diagnostics=None)
    found = result["diagnostics"]
    ratio = found["norm_ratio"]
    # latent 1 enters as its token embedding, latents 2..K as the final state of the latent before them
    row = tiny.model.get_input_embeddings().weight[tiny.latent_ids[0]].norm().item()
    assert ratio["input"]["per_latent"][0] == pytest.approx(row / ratio["text_embedding_norm"], rel=0.05)
    if norm_match == "none":
        assert ratio["input"]["per_latent"][1:] == pytest.approx(ratio["final"]["per_latent"][:-1], rel=1e-4)
    else:  # rescaled to the embedding table's mean norm
        target = latent_feedback_of(tiny.model).target_norm
        fed = torch.tensor(ratio["input"]["per_latent"][1:]) * ratio["text_embedding_norm"]
        assert fed.tolist() == pytest.approx([target] * (K - 1), rel=0.05)
    layers = len(family_of(tiny.model).decoder_layers(tiny.model))
    assert len(ratio["layer_output"]["per_layer"]) == layers  # decoder layers only, not the fed-back site
    assert len(found["sensitivity"]["latents"]["per_layer"]) == layers and found["sensitivity"]["pairs"] == 4
    arms = {r["arm"]: r for r in found["table"]}
    assert all(arms[a]["applicable"] and arms[a]["n"] == 4 for a in ("oracle", "oracle_donor", "format_only"))
    natural = [it["natural"][style] for it in result["items"] for style in ("checkpoint", "paper_system")]
    assert any(n["all_first"] for n in natural)  # once <lvr_1> is written the block follows whole
    assert all(n["count"] >= K for n in natural if n["all_first"])
