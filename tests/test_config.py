"""Typed overrides: text for text fields, YAML for the rest; non-finite numbers and negative counts refused."""

from __future__ import annotations

import pytest

from lavit.config import load_config
from lavit.teacher.extract_config import ExtractConfig
from lavit.training.lavit_config import LavitTrainConfig


@pytest.mark.parametrize("override, field, value", [
    ("system_prompt=Answer: briefly", "system_prompt", "Answer: briefly"),  # YAML would make it a mapping
    ("output_dir=on", "output_dir", "on"),  # YAML 1.1 would make it True
    ("output_dir=runs/no", "output_dir", "runs/no"),
    ("resume='latest'", "resume", "latest"),  # quotes optional
    ('system_prompt="  spaced  "', "system_prompt", "  spaced  "),
    ("model=0123", "model", "0123"),  # not the number 123
    ("system_prompt=", "system_prompt", ""),
    ("learning_rate=1e-4", "learning_rate", 1e-4),
    ("max_steps=500", "max_steps", 500),
    ("gradient_checkpointing=false", "gradient_checkpointing", False),
    ("data=[a.parquet, b.parquet]", "data", ["a.parquet", "b.parquet"]),
    ("precision=bf16", "precision", "bf16"),
])
def test_overrides_take_their_fields_types(override, field, value):
    assert getattr(load_config(LavitTrainConfig, None, [override]), field) == value


@pytest.mark.parametrize("override, message", [
    ("lam=inf", "lam must be a finite number"),
    ("lam=.nan", "lam must be a finite number"),
    ("learning_rate=-.inf", "learning_rate must be a finite number"),
    ("max_samples=-3", "max_samples must be >= 0"),
    ("save_total_limit=-1", "save_total_limit must be >= 0"),
    ("data=[a, b", "data: cannot read"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[")):
        load_config(LavitTrainConfig, None, [override])


def test_extract_refuses_negative_counts_before_any_work():
    with pytest.raises(ValueError, match="max_samples must be >= 0"):
        load_config(ExtractConfig, None, ["max_samples=-3"])


def test_a_recipe_value_yaml_read_as_a_boolean_is_refused_for_a_text_field(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("output_dir: on\n")
    with pytest.raises(ValueError, match="output_dir must be text, got True: quote it"):
        load_config(LavitTrainConfig, recipe, [])
    recipe.write_text("output_dir: 'on'\n")
    assert load_config(LavitTrainConfig, recipe, []).output_dir == "on"


def test_malformed_yaml_recipe_is_one_error_with_the_line(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("max_steps: 3\nsystem_prompt: [unclosed\n")
    with pytest.raises(ValueError, match=r"is not valid YAML at line \d"):
        load_config(LavitTrainConfig, recipe, [])
