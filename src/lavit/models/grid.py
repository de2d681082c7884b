"""Merged-token grid geometry of the Qwen-VL processors, in one place for every stage.

An image of (width, height) pixels is resized by `smart_resize` (each side a multiple of patch · merge, the
area within the processor's pixel limits) and each axis is stretched independently onto the (t, h, w)
grid of merged image tokens. So a cell covers the same fraction of the image on every grid of that image,
whatever the resolution: geometry between grids (a box's cells, how much of one grid's cell lies in
another's) is computed in image fractions.
"""

from __future__ import annotations

from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache

import numpy as np
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize

from lavit.models.families import DEFAULT_FAMILY, ModelFamily, family_named

# Table A1's image processor limits (256 to 1280 merged tokens of 28 × 28 pixels): the student's, and by the
# extraction recipes the teacher's, so both see the same image area.
PAPER_MIN_PIXELS = 256 * 28 * 28
PAPER_MAX_PIXELS = 1280 * 28 * 28
# Default limits of `merged_grid`: the tiny processor's 4 to 64 merged tokens of 28 × 28 pixels.
TINY_MIN_PIXELS = 4 * 28 * 28
TINY_MAX_PIXELS = 64 * 28 * 28


def merged_grid(image_size: tuple[int, int], patch_size: int | None = None, merge_size: int | None = None,
                min_pixels: int = TINY_MIN_PIXELS, max_pixels: int = TINY_MAX_PIXELS, *,
                family: ModelFamily | str | None = None) -> tuple[int, int, int]:
    """The (t, h, w) merged-token grid a Qwen-VL processor gives an image of this (width, height).

    Patch and merge sizes come from `family` (a `ModelFamily` or its model type) or are given directly
    (patch_size 14: Qwen2/2.5-VL, 16: Qwen3-VL/3.5); neither given: the default family's (Qwen2.5-VL).
    """
    fam = family_named(family) if isinstance(family, str) else family
    if fam is not None:
        for name, given, own in (("patch_size", patch_size, fam.patch_size),
                                 ("merge_size", merge_size, fam.merge_size)):
            if given is not None and given != own:
                raise ValueError(f"{name}={given} contradicts family {fam.model_type} ({name} {own})")
    fam = fam or family_named(DEFAULT_FAMILY)
    factor = (patch_size or fam.patch_size) * (merge_size or fam.merge_size)
    width, height = image_size
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return 1, h // factor, w // factor


def box_cells(bbox: Sequence[float], image_size: tuple[int, int], grid: Sequence[int]) -> np.ndarray:
    """Cells of a (t, h, w) merged-token grid whose centre lies in the pixel box, flattened [t*h*w] bool.

    A cell centre ((c + ½)/w, (r + ½)/h) in image fractions is compared with the box in image fractions
    (see the module docstring). A box that covers no cell centre (smaller than one token) counts the
    cell holding the box's centre.
    """
    width, height = image_size
    t, h, w = (int(x) for x in grid)
    x1, y1, x2, y2 = bbox
    ys = (np.arange(h) + 0.5) / h * height
    xs = (np.arange(w) + 0.5) / w * width
    inside = (ys[:, None] >= y1) & (ys[:, None] <= y2) & (xs[None, :] >= x1) & (xs[None, :] <= x2)  # [h, w]
    if not inside.any():
        row = min(int((y1 + y2) / 2 / height * h), h - 1)
        col = min(int((x1 + x2) / 2 / width * w), w - 1)
        inside[row, col] = True
    return np.broadcast_to(inside, (t, h, w)).reshape(-1)


@lru_cache(maxsize=1024)  # one matrix per axis pair, reused for every sample of that size
def cell_overlap(src: int, dst: int) -> np.ndarray:
    """[dst, src]: the fraction of source cell i (of `src` equal cells on one axis) that lies in destination
    cell j (of `dst` cells on the same axis), both spanning the whole image side.

    Every column sums to 1: mass put through this matrix is conserved (box-filter / area resampling).
    Cell edges are exact fractions i/src, j/dst, so the overlaps carry no accumulated rounding. Read-only.
    """
    if src < 1 or dst < 1:
        raise ValueError(f"grid axes need at least one cell, got {src} -> {dst}")
    out = np.zeros((dst, src))
    for j in range(dst):
        lo, hi = Fraction(j, dst), Fraction(j + 1, dst)
        for i in range(src * j // dst, min(-(-src * (j + 1) // dst), src)):  # the source cells j can touch
            overlap = min(hi, Fraction(i + 1, src)) - max(lo, Fraction(i, src))
            out[j, i] = float(overlap * src)  # in units of source cell i
    out.setflags(write=False)  # shared by the cache
    return out


def set_pixel_limits(processor, min_pixels: int | None = None, max_pixels: int | None = None) -> None:
    """Give `processor`'s image processor these resize limits, where transformers keeps them: its `size`
    {shortest_edge, longest_edge}, which `save_pretrained` writes with it (processor_config.json).

    Limits a checkpoint left in its tokenizer's init kwargs (how `AutoProcessor.from_pretrained(min_pixels=...)`
    kept them, and lavit's exports before 2026-12-07 saved them) are moved there first: transformers would
    otherwise pass them to every processor call (deprecated, with a FutureWarning, in every transformers lavit
    admits), over `size`.
    Limits given here win over both.
    """
    image_processor = processor.image_processor
    size = dict(image_processor.size)
    stale = processor.tokenizer.init_kwargs
    for key, edge, given in (("min_pixels", "shortest_edge", min_pixels), ("max_pixels", "longest_edge", max_pixels)):
        left = stale.pop(key, None)
        if given or left:
            size[edge] = given or left
    image_processor.size = type(image_processor.size)(**size)


def processor_pixel_limits(image_processor) -> dict[str, int]:
    """{min_pixels, max_pixels} an image processor resizes to, whether set explicitly or its default
    (`size` {shortest_edge, longest_edge}: the pixel area limits of Qwen-VL processors)."""
    size = getattr(image_processor, "size", None) or {}
    limits = {"min_pixels": size.get("shortest_edge"), "max_pixels": size.get("longest_edge")}
    if not all(isinstance(v, int) and v > 0 for v in limits.values()):
        raise ValueError(f"{type(image_processor).__name__} states no pixel limits (size={size!r}); expected a "
                         "Qwen-VL image processor with size {shortest_edge, longest_edge}")
    return limits
