"""The toy world: deterministic streams, a language prior of the set strength, objects that fill their slot's
merged tokens, answers that follow the scene, per-token labels for the vision pretraining."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lavit.models.grid import box_cells
from lavit.toyworld.world import COLORS, PRIOR_COLOR, SHAPES, WorldConfig, cell_labels, generate, write_split


def pixels(sample) -> np.ndarray:
    return np.asarray(sample.image)


def test_streams_are_deterministic_and_distinct_across_splits_draws_and_worlds():
    a, b = generate("val", 20), generate("val", 20)
    assert [s.question for s in a] == [s.question for s in b]
    assert all(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, b))
    for other in (generate("test", 20), generate("val", 20, draw=1), generate("val", 20, world_seed=1)):
        assert sum(np.array_equal(pixels(x), pixels(y)) for x, y in zip(a, other)) == 0
    # a larger draw starts with the smaller one (nested pools for the data-efficiency sweep)
    assert [s.question for s in generate("pool", 30, draw=2)[:10]] == [s.question for s in generate("pool", 10, draw=2)]
    assert [s.id for s in a][:2] == ["val-00000", "val-00001"]
    with pytest.raises(ValueError, match="split"):
        generate("nope", 1)
    with pytest.raises(ValueError, match=">= 0"):
        generate("val", 1, world_seed=-1)


@pytest.mark.parametrize("strength", [0.7, 0.25])
def test_language_prior_has_the_set_strength(strength):
    samples = generate("pretrain", 3000, cfg=WorldConfig(prior_strength=strength))
    objects = [o for s in samples for o in s.objects]
    assert abs(np.mean([o.color == PRIOR_COLOR[o.shape] for o in objects]) - strength) < 0.03
    color_qs = [s for s in samples if s.kind == "color"]
    assert abs(np.mean([s.answer == s.prior_answer for s in color_qs]) - strength) < 0.05
    if strength == 0.25:  # unbiased: every colour equally likely for every shape
        for shape in SHAPES:
            shares = [np.mean([o.color == c for o in objects if o.shape == shape]) for c in COLORS]
            assert max(shares) - min(shares) < 0.06


def test_objects_fill_their_slot_and_answers_follow_the_scene():
    cfg = WorldConfig()
    samples = generate("val", 300)
    assert {s.kind for s in samples} == {"color", "shape"}
    assert abs(np.mean([s.kind == "shape" for s in samples]) - cfg.shape_question_share) < 0.08
    for s in samples:
        image = pixels(s)
        assert len({o.shape for o in s.objects}) == len(s.objects) and 2 <= len(s.objects) <= 3
        for o in s.objects:
            x1, y1, x2, y2 = o.box
            assert cfg.min_side <= x2 - x1 <= cfg.max_side and x2 - x1 == y2 - y1
            assert x1 // cfg.slot_size == (x2 - 1) // cfg.slot_size  # inside one slot
            x, y = (x1 + x2) // 2, y1 + (y2 - y1) * 3 // 4  # inside every shape
            assert tuple(image[y, x]) == COLORS[o.color]
            # the box covers exactly the 2 x 2 merged tokens of its slot
            cells = box_cells(o.box, s.image.size, (1, 6, 6)).reshape(6, 6)
            row, col = y1 // cfg.slot_size * 2, x1 // cfg.slot_size * 2
            assert cells.sum() == 4 and cells[row:row + 2, col:col + 2].all()
        by_shape = {o.shape: o for o in s.objects}
        if s.kind == "color":
            target = by_shape[s.question.split()[4]]
            assert s.answer == target.color and s.bbox == list(target.box)
            assert s.prior_answer == PRIOR_COLOR[target.shape]
        else:
            target = by_shape[s.answer]
            assert target.color in s.question and [o.color for o in s.objects].count(target.color) == 1
            assert s.bbox == list(target.box)


def test_cell_labels_mark_the_objects_tokens():
    sample = generate("val", 1)[0]
    colour, shape = cell_labels(sample.objects, WorldConfig())
    assert colour.shape == shape.shape == (36,)
    assert (colour > 0).sum() == 4 * len(sample.objects) and ((colour > 0) == (shape > 0)).all()
    for o in sample.objects:
        cells = box_cells(o.box, sample.image.size, (1, 6, 6))
        assert (colour[cells] == list(COLORS).index(o.color) + 1).all()
        assert (shape[cells] == SHAPES.index(o.shape) + 1).all()


def test_bad_worlds_are_refused():
    for bad in (dict(prior_strength=1.5), dict(shape_question_share=-0.1), dict(slot_size=50),
                dict(min_side=40), dict(max_side=60), dict(max_objects=4), dict(min_objects=0)):
        with pytest.raises(ValueError):
            WorldConfig(**bad)


def test_write_split_uses_the_sample_format(tmp_path):
    path = write_split(tmp_path, "test", 5, world_seed=3)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 5 and {"id", "image", "question", "answer", "bbox", "kind", "prior_answer"} <= set(rows[0])
    assert (tmp_path / "images" / rows[0]["image"]).is_file()
    assert rows[0]["question"] == generate("test", 1, world_seed=3)[0].question
