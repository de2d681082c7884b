"""The toy world: deterministic streams, a language prior of the set strength, objects that fill their slot's
merged tokens, answers that follow the scene, per-token labels for the vision pretraining."""

from __future__ import annotations

import json

import numpy as np
import pytest

from lavit.models.grid import box_cells
from lavit.toyworld.world import (
    ALL_SHAPES,
    COLORS,
    PREMISE_WORLD,
    PRIOR_COLOR,
    SHAPES,
    WORLDS,
    WorldConfig,
    cell_labels,
    generate,
    generate_pairs,
    write_split,
)


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


def test_the_premise_world_crowds_the_canvas_with_repeating_distractors():
    cfg = WORLDS["premise"]
    assert cfg is PREMISE_WORLD and cfg.grid == 6 and cfg.shapes == ALL_SHAPES and not cfg.distinct_shapes
    samples = generate("val", 200, cfg=cfg)
    assert {s.kind for s in samples} == {"color", "shape"}
    for s in samples:
        image = pixels(s)
        assert image.shape == (168, 168, 3) and cfg.min_objects <= len(s.objects) <= cfg.max_objects
        shapes, colours = [o.shape for o in s.objects], [o.color for o in s.objects]
        assert len({(o.box[0] // 56, o.box[1] // 56) for o in s.objects}) == len(s.objects)  # one object per slot
        for o in s.objects:
            x1, y1, x2, y2 = o.box
            assert x1 // 56 == (x2 - 1) // 56 and y1 // 56 == (y2 - 1) // 56
            assert tuple(image[(y1 + y2) // 2, (x1 + x2) // 2]) == COLORS[o.color]  # the centre is inside every shape
            cells = box_cells(o.box, s.image.size, (1, 6, 6)).reshape(6, 6)
            row, col = y1 // 56 * 2, x1 // 56 * 2
            assert cells.sum() == 4 and cells[row:row + 2, col:col + 2].all()
        target = next(o for o in s.objects if list(o.box) == s.bbox)
        if s.kind == "color":  # the question names a shape that occurs once, among repeated distractors
            assert s.question == f"what color is the {target.shape} ?" and shapes.count(target.shape) == 1
            assert s.answer == target.color and s.prior_answer == PRIOR_COLOR[target.shape]
        else:
            assert s.question == f"which shape is {target.color} ?" and colours.count(target.color) == 1
            assert s.answer == target.shape and PRIOR_COLOR[s.prior_answer] == target.color  # every colour has one
    assert np.mean([len({o.shape for o in s.objects}) < len(s.objects) for s in samples]) > 0.4  # distractors
    assert any("diamond" == s.answer for s in samples)
    colour, shape = cell_labels(samples[0].objects, cfg)
    assert colour.shape == shape.shape == (36,) and (colour > 0).sum() == 4 * len(samples[0].objects)
    assert shape.max() <= len(ALL_SHAPES)


def test_the_premise_world_prior_names_one_shape_per_colour():
    samples = generate("pretrain", 2000, cfg=PREMISE_WORLD)
    color_qs = [s for s in samples if s.kind == "color"]
    assert abs(np.mean([s.answer == s.prior_answer for s in color_qs]) - PREMISE_WORLD.prior_strength) < 0.05
    shape_qs = [s for s in samples if s.kind == "shape"]
    assert all(s.prior_answer == {c: k for k, c in PRIOR_COLOR.items()}[s.question.split()[3]] for s in shape_qs)
    # most questions ask for a shape (the kind a student learns to see last), and the prior is right about half the
    # time on both kinds, so a student that does not find the evidence stays far below the teacher
    assert 0.5 < len(shape_qs) / len(samples) <= PREMISE_WORLD.shape_question_share
    assert all(0.4 < np.mean([s.answer == s.prior_answer for s in qs]) < 0.6 for qs in (color_qs, shape_qs))


def test_premise_world_configs_are_validated():
    for bad in (dict(num_shapes=0), dict(num_shapes=5), dict(max_objects=10), dict(max_objects=5, distinct_shapes=True),
                dict(min_objects=6, max_objects=5)):
        with pytest.raises(ValueError):
            WorldConfig(**(dict(min_objects=3, max_objects=5, num_shapes=4, distinct_shapes=False) | bad))
    WorldConfig(min_objects=9, max_objects=9, num_shapes=4, distinct_shapes=False)  # every slot
    big = WorldConfig(image_size=224, min_objects=16, max_objects=16, num_shapes=4, distinct_shapes=False)
    assert big.grid == 8 and cell_labels(generate("val", 1, cfg=big)[0].objects, big)[0].shape == (64,)


@pytest.mark.parametrize("world", ["default", "premise"])
def test_pairs_share_the_question_and_differ_in_the_answer(world):
    cfg = WORLDS[world]
    pairs = generate_pairs("test", 60, cfg=cfg)
    assert {a.kind for a, _ in pairs} == {"color", "shape"}
    for a, b in pairs:
        assert a.question == b.question and a.answer != b.answer and a.bbox == b.bbox and a.kind == b.kind
        assert a.prior_answer == b.prior_answer
        changed = [i for i, (x, y) in enumerate(zip(a.objects, b.objects)) if x != y]
        assert len(changed) == 1 and list(a.objects[changed[0]].box) == a.bbox  # only the asked-about object
        for s in (a, b):  # both are valid scenes of the world: the question names exactly one object
            attribute = "shape" if s.kind == "color" else "color"
            named = [o for o in s.objects if getattr(o, attribute) in s.question.split()]
            assert len(named) == 1 and list(named[0].box) == s.bbox
            assert s.answer == getattr(named[0], s.kind)
            if cfg.distinct_shapes:
                assert len({o.shape for o in s.objects}) == len(s.objects)
        assert not np.array_equal(pixels(a), pixels(b))
    again = generate_pairs("test", 60, cfg=cfg)
    assert [(a.question, a.answer, b.answer) for a, b in pairs] == [(a.question, a.answer, b.answer) for a, b in again]
    assert all(np.array_equal(pixels(x), pixels(y)) for p, q in zip(pairs, again) for x, y in zip(p, q))


def test_write_split_writes_pairs_with_a_shared_key(tmp_path):
    path = write_split(tmp_path, "test", 8, world_seed=2, cfg=PREMISE_WORLD, pairs=True)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == 8 and len({r["id"] for r in rows}) == 8
    for a, b in zip(rows[::2], rows[1::2]):
        assert a["pair"] == b["pair"] and a["question"] == b["question"] and a["answer"] != b["answer"]
        assert (tmp_path / "images" / a["image"]).is_file() and (tmp_path / "images" / b["image"]).is_file()
    assert len({r["pair"] for r in rows}) == 4
    first = generate_pairs("test", 1, world_seed=2, cfg=PREMISE_WORLD)[0]
    assert [rows[0]["answer"], rows[1]["answer"]] == [first[0].answer, first[1].answer]
    assert "pair" not in json.loads(write_split(tmp_path / "plain", "test", 2).read_text().splitlines()[0])
    with pytest.raises(ValueError, match="even"):
        write_split(tmp_path, "test", 3, pairs=True)


@pytest.mark.parametrize("world", ["default", "premise"])
def test_every_answer_word_of_a_world_is_in_its_toy_models_vocabulary(world):
    from lavit.models.tiny import build_tiny_tokenizer
    from lavit.toyworld.models import toy_tokenizer

    tokenizer = toy_tokenizer(WORLDS[world])
    for word in (*WORLDS[world].shapes, *COLORS):  # an unknown word could be neither asked about nor answered
        assert tokenizer.tokenize(f" {word}") == [word]
    if world == "default":  # the committed default models' vocabulary is unchanged
        assert tokenizer.get_vocab() == build_tiny_tokenizer().get_vocab()
