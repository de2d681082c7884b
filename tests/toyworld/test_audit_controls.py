"""The latent-usage audit on its controls, in the toy world.

Positive control: a trained student whose answer cannot see the image (`controls/latent_only`, built by
`build_controls.py`: readout and question gated at γ ≡ 0, in training and at inference), so vision reaches the
answer only through latents 1..K-1 — the audit must find a large, significant drop under zero, random and swap,
and swapped answers that follow the donor image. Negative control: the same student with its latents hidden from
everything after them — no state intervention may change a single answer.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lavit.demo import evaluate
from lavit.eval.audit import LoadedModel, audit_items, sample_items
from lavit.models.checkpoint import load_for_inference, read_lavit_meta
from lavit.models.gating import InferenceGate
from lavit.toyworld.latent_audit import audit_student, summarise_audits
from lavit.toyworld.world import WorldConfig, write_split
from lavit.toyworld.artifacts import ARTIFACTS_DIR

CONTROL = Path(__file__).parent / "controls" / "latent_only"


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    world = WorldConfig(**json.loads((ARTIFACTS_DIR / "artifacts.json").read_text())["world"])
    return write_split(tmp_path_factory.mktemp("audit"), "test", 48, world_seed=0, cfg=world, pairs=True)


def test_the_positive_control_loses_its_answers_when_its_latents_are_replaced(pairs):
    audit = audit_student(CONTROL, pairs)
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
    meta = read_lavit_meta(str(CONTROL))
    model, processor = load_for_inference(str(CONTROL))
    loaded = LoadedModel(model, processor, meta["latent_tokens"], None, max_new_tokens=3,
                         gate=InferenceGate.from_meta(meta))
    audit = audit_items(loaded, sample_items(pairs, pairs.parent / "images"),
                        interventions=["zero", "first_repeat", "random", "swap"], batch_size=48, hide_latents=True)
    rows = {r["intervention"]: r for r in audit["table"]}
    assert set(rows) == {"forced", "zero", "first_repeat", "random", "swap"}
    for name in ("zero", "first_repeat", "random", "swap"):
        assert rows[name]["flip_rate"] == 0.0 and rows[name]["vs_forced"]["difference"] == 0.0, name
        assert rows[name]["vs_forced"]["mcnemar_p"] == 1.0
    with pytest.raises(ValueError, match="leave out none"):
        audit_items(loaded, sample_items(pairs, pairs.parent / "images"), interventions=["none"], hide_latents=True)
