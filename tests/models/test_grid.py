"""Grid geometry: image → merged grid (smart_resize), box → cells, cell overlap between two grids."""

from __future__ import annotations

import json
import warnings
from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from lavit.models.checkpoint import load_processor
from lavit.models.families import family_named
from lavit.models.grid import box_cells, cell_overlap, merged_grid, processor_pixel_limits
from lavit.models.tiny import build_tiny_processor

# A 112x84 image on a (1, 3, 4) grid: cell centres x = 14, 42, 70, 98 and y = 14, 42, 70.
SIZE, GRID = (112, 84), (1, 3, 4)


def test_box_cells_by_cell_centre():
    assert np.flatnonzero(box_cells([30, 0, 80, 50], SIZE, GRID)).tolist() == [1, 2, 5, 6]
    assert box_cells([0, 0, 112, 84], SIZE, GRID).all()


def test_box_smaller_than_a_cell_counts_the_cell_of_its_centre():
    assert np.flatnonzero(box_cells([0, 0, 5, 5], SIZE, GRID)).tolist() == [0]
    assert np.flatnonzero(box_cells([100, 75, 104, 80], SIZE, GRID)).tolist() == [11]


def test_box_cells_repeat_over_frames():
    assert box_cells([30, 0, 80, 50], SIZE, (2, 3, 4)).sum() == 8


def test_merged_grid_follows_smart_resize():
    assert merged_grid((112, 84)) == (1, 3, 4)
    assert merged_grid((2200, 1700), min_pixels=3136, max_pixels=12845056) == (1, 61, 79)


def test_merged_grid_takes_the_patch_size_from_a_family():
    limits = {"min_pixels": 200704, "max_pixels": 1003520}
    # 32-pixel tokens (Qwen3-VL) give a coarser grid of the same page than 28-pixel ones (Qwen2.5-VL)
    assert merged_grid((2480, 3508), family="qwen3_vl", **limits) == merged_grid((2480, 3508), 16, **limits)
    assert merged_grid((2480, 3508), family="qwen3_vl", **limits) == (1, 37, 26)
    assert merged_grid((2480, 3508), family=family_named("qwen2_5_vl"), **limits) == (1, 42, 30)
    assert merged_grid((2480, 3508), family="qwen2_5_vl", patch_size=14, **limits) == (1, 42, 30)
    with pytest.raises(ValueError, match="contradicts family qwen3_vl"):
        merged_grid((2480, 3508), patch_size=14, family="qwen3_vl")
    with pytest.raises(ValueError, match="not supported"):
        merged_grid((2480, 3508), family="llava")


def test_merged_grid_is_what_the_processor_gives():
    for family in ("qwen2_5_vl", "qwen3_vl"):
        processor = build_tiny_processor(family=family, min_pixels=20_000, max_pixels=300_000)
        for size in ((640, 480), (1999, 1333), (333, 1001)):
            grid_thw = processor.image_processor.preprocess(
                [np.zeros((size[1], size[0], 3), dtype=np.uint8)], return_tensors="np")["image_grid_thw"][0]
            assert merged_grid(size, family=family, min_pixels=20_000, max_pixels=300_000) == (
                1, grid_thw[1] // 2, grid_thw[2] // 2)


def overlap_by_hand(src: int, dst: int) -> np.ndarray:
    """Interval intersection of [i/src, (i+1)/src] and [j/dst, (j+1)/dst], over every pair."""
    out = np.zeros((dst, src))
    for j in range(dst):
        for i in range(src):
            lo = max(Fraction(i, src), Fraction(j, dst))
            hi = min(Fraction(i + 1, src), Fraction(j + 1, dst))
            out[j, i] = float(max(hi - lo, 0) * src)
    return out


@pytest.mark.parametrize("src,dst", [(3, 2), (125, 42), (89, 30), (143, 41), (7, 7), (5, 1), (99, 50)])
def test_cell_overlap_is_exact_and_conserves_mass(src, dst):
    w = cell_overlap(src, dst)
    assert w.shape == (dst, src)
    np.testing.assert_allclose(w, overlap_by_hand(src, dst), atol=1e-15)
    np.testing.assert_allclose(w.sum(0), 1.0, atol=1e-12)  # every source cell is fully distributed
    np.testing.assert_allclose(w.sum(1), src / dst, atol=1e-12)  # every destination cell covers src/dst cells


def test_cell_overlap_by_hand_three_onto_two():
    # source edges 0, 1/3, 2/3, 1; destination edges 0, 1/2, 1: the middle cell splits in half
    np.testing.assert_allclose(cell_overlap(3, 2), [[1, 0.5, 0], [0, 0.5, 1]])


def test_cell_overlap_rejects_empty_axes():
    with pytest.raises(ValueError, match="at least one cell"):
        cell_overlap(0, 3)


def test_processor_pixel_limits_explicit_and_default():
    assert processor_pixel_limits(build_tiny_processor(min_pixels=200704, max_pixels=1003520).image_processor) == {
        "min_pixels": 200704, "max_pixels": 1003520}
    unit = family_named("qwen3_vl").pixels_per_token  # the tiny processor's default: 4 to 64 merged tokens
    assert processor_pixel_limits(build_tiny_processor(family="qwen3_vl").image_processor) == {
        "min_pixels": 4 * unit, "max_pixels": 64 * unit}

    class NoLimits:
        size = {"height": 224, "width": 224}

    with pytest.raises(ValueError, match="states no pixel limits"):
        processor_pixel_limits(NoLimits())


@pytest.mark.parametrize("family", ["qwen2_5_vl", "qwen3_vl"])
def test_loaded_limits_live_in_size_and_no_call_passes_them(tmp_path, family):
    """`load_processor(min_pixels=..., max_pixels=...)` used to hand them to `from_pretrained`, which kept them in the
    tokenizer's init kwargs: every processor call passed them (a FutureWarning in transformers 5.20-5.24) and exports
    saved them in tokenizer_config.json. Now they are the image processor's `size` and nothing else; limits an older
    export left in its tokenizer config move into `size`, so the same images come out, with no warning."""
    unit = family_named(family).pixels_per_token
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 420, 3), dtype=np.uint8))
    text = ["<|vision_start|><|image_pad|><|vision_end|>what"]
    build_tiny_processor(family=family).save_pretrained(tmp_path / "saved")

    processor = load_processor(str(tmp_path / "saved"), min_pixels=9 * unit, max_pixels=16 * unit)
    assert processor_pixel_limits(processor.image_processor) == {"min_pixels": 9 * unit, "max_pixels": 16 * unit}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        grid = processor(text=text, images=[image])["image_grid_thw"][0].tolist()
    _, h, w = merged_grid(image.size, min_pixels=9 * unit, max_pixels=16 * unit, family=family)
    assert grid == [1, 2 * h, 2 * w] and h * w < 64  # resized within the limits, not the saved 4-64 tokens
    processor.save_pretrained(tmp_path / "export")
    saved_tokenizer = json.loads((tmp_path / "export" / "tokenizer_config.json").read_text())
    assert not {"min_pixels", "max_pixels"} & saved_tokenizer.keys()

    # an export saved the old way: the limits in tokenizer_config.json, the default size in processor_config.json
    saved_tokenizer.update(min_pixels=9 * unit, max_pixels=16 * unit)
    build_tiny_processor(family=family).save_pretrained(tmp_path / "old")
    (tmp_path / "old" / "tokenizer_config.json").write_text(json.dumps(saved_tokenizer))
    old = load_processor(str(tmp_path / "old"))
    assert processor_pixel_limits(old.image_processor) == {"min_pixels": 9 * unit, "max_pixels": 16 * unit}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert old(text=text, images=[image])["image_grid_thw"][0].tolist() == grid
    given = load_processor(str(tmp_path / "old"), max_pixels=12 * unit)  # a limit given wins over the stale one
    assert processor_pixel_limits(given.image_processor) == {"min_pixels": 9 * unit, "max_pixels": 12 * unit}
