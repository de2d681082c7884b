"""The latent-usage audit on its controls, in the toy world.

Positive control: a trained student whose answer cannot see the image (`controls/latent_only`, built by
`build_controls.py`: readout and question gated at γ ≡ 0, in training and at inference), so vision reaches the
answer only through latents 1..K-1 — the audit must find a large, significant drop under zero, random and swap,
and swapped answers that follow the donor image. Negative control: the same student with its latents hidden from
everything after them — no state intervention may change a single answer.

The 2026 diagnostics (docs/audit.md, "Diagnostics (2026)") on the same controls: the oracle and format-only arms
detect the positive control and not the negative one; the input sensitivity is clearly positive for its latents and
exactly 0 when they cannot see the image; it writes latent tokens unprompted where the base student, never trained
on them, writes none; and the norm ratio reads the latents' input embeddings exactly (scaled rows scale it).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import lavit.inference.generate as generate_module
from lavit.demo import evaluate
from lavit.eval.audit import LoadedModel, audit_items, sample_items
from lavit.models.checkpoint import (
    load_for_inference,
    load_model_and_processor,
    read_lavit_meta,
)
from lavit.models.gating import InferenceGate
from lavit.models.latent_tokens import add_latent_tokens
from lavit.toyworld.artifacts import ARTIFACTS_DIR
from lavit.toyworld.latent_audit import audit_student, summarise_audits
from lavit.toyworld.world import WorldConfig, write_split

CONTROL = Path(__file__).parent / "controls" / "latent_only"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    world = WorldConfig(**json.loads((ARTIFACTS_DIR / "artifacts.json").read_text())["world"])
    return write_split(tmp_path_factory.mktemp("audit"), "test", 48, world_seed=0, cfg=world, pairs=True)


@pytest.fixture(scope="module")
def positive(pairs) -> dict:
    return audit_student(CONTROL, pairs)


def control(gate: bool = True) -> LoadedModel:
    meta = read_lavit_meta(str(CONTROL))
    model, processor = load_for_inference(str(CONTROL))
    return LoadedModel(model, processor, meta["latent_tokens"], None, max_new_tokens=3,
                       gate=InferenceGate.from_meta(meta) if gate else None)


def test_the_positive_control_loses_its_answers_when_its_latents_are_replaced(pairs, positive):
    audit = positive
    rows = {r["intervention"]: r for r in audit["table"]}
    assert rows["forced"]["accuracy"] >= 0.6
    # the audit's passes (inputs and image features reused across interventions) score as plain evaluation does
    for mode in ("forced", "none", "masked"):
        assert rows[mode]["accuracy"] == evaluate(str(CONTROL), pairs, mode=mode)["accuracy"], mode
    for name in ("zero", "random", "swap", "none"):
        diff = rows[name]["vs_forced"]
        assert diff["difference"] <= -0.2 and diff["ci95"][1] < 0 and diff["mcnemar_p"] < 0.01, (name, diff)
    assert rows["swap"]["follows_donor"]["rate"] >= 0.5 and rows["swap"]["follows_donor"]["n"] >= 12
    summary = summarise_audits([audit])
    assert {r["intervention"]: r["significant_seeds"] for r in summary["table"]}["swap"] == 1


def test_the_negative_control_changes_nothing(pairs):
    loaded = control()
    audit = audit_items(loaded, sample_items(pairs, pairs.parent / "images"),
                        interventions=["zero", "first_repeat", "random", "swap"], batch_size=48, hide_latents=True,
                        diagnostics=["oracle", "format_only"])
    rows = {r["intervention"]: r for r in audit["table"]}
    assert set(rows) == {"forced", "zero", "first_repeat", "random", "swap"}
    for name in ("zero", "first_repeat", "random", "swap"):
        assert rows[name]["flip_rate"] == 0.0 and rows[name]["vs_forced"]["difference"] == 0.0, name
        assert rows[name]["vs_forced"]["mcnemar_p"] == 1.0
    # nor any diagnostic arm: no answer changes, so none follows an oracle
    arms = {r["arm"]: r for r in audit["diagnostics"]["table"]}
    assert set(arms) == {"oracle", "oracle_donor", "format_only"}
    for name, row in arms.items():
        assert row["applicable"] and row["n"] == 48 and row["flip_rate"] == 0.0, name
        assert row["vs_forced"]["difference"] == 0.0 and row["vs_forced"]["mcnemar_p"] == 1.0, name
    assert arms["oracle"]["follows_oracle"]["followed"] == arms["oracle_donor"]["follows_oracle"]["followed"] == 0
    with pytest.raises(ValueError, match="leave out none"):
        audit_items(loaded, sample_items(pairs, pairs.parent / "images"), interventions=["none"], hide_latents=True)


def test_every_diagnostic_detects_the_positive_control(positive):
    found = positive["diagnostics"]
    arms = {r["arm"]: r for r in found["table"]}
    # format-only: the block's content removed (its mean over the items), the answer loses what it read
    diff = arms["format_only"]["vs_forced"]
    assert diff["difference"] <= -0.2 and diff["ci95"][1] < 0 and diff["mcnemar_p"] < 0.01, diff
    # donor oracle: the paired scene's region (the asked object with the other answer) — the answer follows it
    diff = arms["oracle_donor"]["vs_forced"]
    assert diff["difference"] <= -0.2 and diff["ci95"][1] < 0 and diff["mcnemar_p"] < 0.01, diff
    assert arms["oracle_donor"]["follows_oracle"]["n"] >= 12 and arms["oracle_donor"]["follows_oracle"]["rate"] >= 0.9
    # own oracle: where the region alone answers otherwise than the full image, the injected answer follows it
    assert arms["oracle"]["follows_oracle"]["n"] >= 1 and arms["oracle"]["follows_oracle"]["rate"] >= 0.5
    assert found["sensitivity"]["latents"]["last_layer"] >= 0.05  # its latents carry the image
    assert all(e["any_latent"] >= 0.9 for e in found["emission"].values())  # it writes latents unprompted
    ratio = found["norm_ratio"]  # discrete latents: inputs on the embedding scale, final states far above it
    assert 0.5 <= ratio["input"]["mean"] <= 2 and ratio["final"]["mean"] >= 10
    summary = summarise_audits([positive])["diagnostics"]
    assert {r["arm"]: r["significant_seeds"] for r in summary["table"]} == {"oracle": 0, "oracle_donor": 1,
                                                                             "format_only": 1}


@pytest.mark.slow  # ~30-75 s on 2 cores: a 300-scene audit each
def test_latents_cut_from_the_image_have_no_input_sensitivity(pairs, monkeypatch):
    def after_the_image(image_mask, latent_mask, attention_mask, *args):  # every query after the image, latents too
        positions = torch.arange(image_mask.shape[1])
        last = torch.where(image_mask, positions, -1).amax(dim=1, keepdim=True)
        return (positions > last) & attention_mask.bool()

    monkeypatch.setattr(generate_module, "gated_query_mask", after_the_image)
    found = audit_items(control(), sample_items(pairs, pairs.parent / "images")[:16], interventions=["zero"],
                        batch_size=16, diagnostics=["sensitivity"])["diagnostics"]["sensitivity"]
    assert found["pairs"] == 16
    for name in ("latents", "readout", "last_prompt_token"):
        assert max(found[name]["per_layer"]) == 0.0, name


@pytest.mark.slow  # ~30-75 s on 2 cores: a 300-scene audit each
def test_a_student_never_trained_on_its_latents_does_not_write_them(pairs):
    model, processor = load_model_and_processor(str(ARTIFACTS_DIR / "base"))
    names = read_lavit_meta(str(CONTROL))["latent_tokens"]
    add_latent_tokens(processor.tokenizer, model, names)
    audit = audit_items(LoadedModel(model, processor, names, None, max_new_tokens=3),
                        sample_items(pairs, pairs.parent / "images")[:16], interventions=["none"], batch_size=16,
                        diagnostics=["emission"])
    emission = audit["diagnostics"]["emission"]
    assert all(e["any_latent"] == 0.0 and e["mean_latents"] == 0.0 for e in emission.values()), emission
    none = {r["intervention"]: r for r in audit["table"]}["none"]["accuracy"]
    assert emission["checkpoint"]["natural_accuracy"]["accuracy"] == none  # no latent: natural mode is mode none


@pytest.mark.slow  # ~30-75 s on 2 cores: a 300-scene audit each
def test_the_norm_ratio_scales_with_the_latents_input_rows(pairs):
    items = sample_items(pairs, pairs.parent / "images")[:8]
    loaded = control()
    plain = audit_items(loaded, items, interventions=["zero"], diagnostics=["norm_ratio"])["diagnostics"]["norm_ratio"]
    ids = loaded.processor.tokenizer.convert_tokens_to_ids(loaded.latent_tokens)
    with torch.no_grad():
        loaded.model.get_input_embeddings().weight[ids] *= 40.0  # the GAP situation: inputs far off the scale
    scaled = audit_items(loaded, items, interventions=["zero"], diagnostics=["norm_ratio"])["diagnostics"]["norm_ratio"]
    assert scaled["input"]["per_latent"] == pytest.approx([40 * x for x in plain["input"]["per_latent"]], rel=1e-4)
    assert scaled["text_embedding_norm"] == pytest.approx(plain["text_embedding_norm"], rel=1e-6)
