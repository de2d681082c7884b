"""The committed toy models are the ones their world and budget describe: a change to `WORLDS` or
`WORLD_BUDGETS` without a rebuild (`python -m lavit.toyworld.artifacts --world NAME`) fails here."""

import json
from dataclasses import asdict

import pytest

from lavit.toyworld.artifacts import KEPT, ROLES, WORLD_ARTIFACTS, budget_for
from lavit.toyworld.validity import CAPACITY_ACCURACY, TEACHER_ACCURACY
from lavit.toyworld.world import WORLDS, WorldConfig

SHARED = ("batch_size", "vision_learning_rate", "learning_rate", "seed")
# the budget fields each role's training reads (a role built before another role's steps changed is still current)
ROLE_FIELDS = {"teacher": ("teacher_vision_steps", "teacher_steps", "teacher_shape_share"),
               "base": ("student_vision_steps", "base_steps"), "capacity": ("student_vision_steps", "capacity_steps"),
               "text_only": ("text_only_steps",)}


@pytest.mark.parametrize("world", sorted(WORLD_ARTIFACTS))
def test_committed_models_match_their_world_and_budget(world):
    where = WORLD_ARTIFACTS[world]
    record = json.loads((where / "artifacts.json").read_text())
    # a record older than the world's later fields holds the default world (as the demo reads it)
    assert record.get("world_name", "default") == world and WorldConfig(**record["world"]) == WORLDS[world]
    assert set(record["models"]) == set(ROLES)
    budget = asdict(budget_for(record.get("student_family", "qwen2_5_vl"), world))
    for role, model in record["models"].items():
        used = (*ROLE_FIELDS[role], *SHARED, "val_samples")
        assert {k: model["budget"][k] for k in used} == {k: budget[k] for k in used}, role
    for role in KEPT:
        assert (where / role / "model.safetensors").is_file() and (where / role / "config.json").is_file()
    # what the demo's validity table reads from these records
    assert record["models"]["teacher"]["val_accuracy"] >= TEACHER_ACCURACY
    assert record["models"]["capacity"]["val_accuracy"] >= CAPACITY_ACCURACY
