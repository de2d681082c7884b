"""Per-sample teacher signals from one forward pass: A_traj on the image grid, V_sem, S_focus (eq. 1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from transformers.models.qwen2_vl.image_processing_qwen2_vl import smart_resize


def box_cells(bbox: Sequence[float], image_size: tuple[int, int], grid: Sequence[int]) -> np.ndarray:
    """Cells of a (t, h, w) merged-token grid whose centre lies in the pixel box, flattened [t*h*w] bool.

    Qwen's processor stretches each axis independently onto the grid, so a cell centre
    ((c + ½)/w, (r + ½)/h) in image fractions is compared with the box in image fractions. A box that
    covers no cell centre (smaller than one token) counts the cell holding the box's centre.
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


def s_focus(a_traj: np.ndarray, grid: Sequence[int], bbox: Sequence[float], image_size: tuple[int, int]) -> float:
    """Eq. 1: attention mass on the box's cells over the total image mass (map normalised to sum 1)."""
    a_traj = np.asarray(a_traj, dtype=np.float64)
    cells = box_cells(bbox, image_size, grid)
    if cells.size != a_traj.size:
        raise ValueError(f"attention map has {a_traj.size} values, grid {tuple(grid)} has {cells.size}")
    total = a_traj.sum()
    if not np.isfinite(total) or total <= 0:
        raise ValueError("attention map has no positive finite mass")
    return float(a_traj[cells].sum() / total)


def merged_grid(image_size: tuple[int, int], patch_size: int = 14, merge_size: int = 2,
                min_pixels: int = 4 * 28 * 28, max_pixels: int = 64 * 28 * 28) -> tuple[int, int, int]:
    """The (t, h, w) merged-token grid a Qwen-VL processor gives an image of this (width, height) (patch_size 14:
    Qwen2/2.5-VL, 16: Qwen3-VL/3.5)."""
    width, height = image_size
    factor = patch_size * merge_size
    h, w = smart_resize(height, width, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return 1, h // factor, w // factor
