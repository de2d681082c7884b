"""Per-sample teacher signals from one forward pass: A_traj on the image grid, V_sem, S_focus (eq. 1)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lavit.models.grid import box_cells


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
