"""Training targets from stored teacher signals (DESIGN §2: min-max and Top-K happen here, not in the data)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from lavit.models.grid import cell_overlap

# Values of the min-max scaled map (in [0, 1]) closer than this count as tied: resampling weights applied in a
# different order round differently in the last bits.
TIE_TOLERANCE = 1e-6


class TrajectoryGridError(ValueError):
    """A stored attention map does not fit the grid it claims, or cannot be mapped to the student's."""


def axis_weights(src: int, dst: int) -> torch.Tensor:
    """[dst, src] float64 weights resampling one grid axis of `src` cells onto `dst` cells.

    Shrinking (dst < src): area overlap — destination cell j gets the exact fraction of each source cell
    lying inside it (`cell_overlap`; columns sum to 1, so mass is conserved). Plain bilinear sampling
    (paper C.2) reads the map only near destination-cell centres, so at a ratio of 2 or more a teacher
    cell between two centres vanishes from the target. Growing or equal (dst >= src): PyTorch's half-pixel
    linear interpolation (`align_corners=False`, paper C.2), taken as the response to one impulse per cell.
    """
    if dst < src:
        return torch.from_numpy(cell_overlap(src, dst).copy())
    impulses = torch.eye(src, dtype=torch.float64).unsqueeze(0)  # [1, src, src]
    return F.interpolate(impulses, size=dst, mode="linear", align_corners=False)[0].T  # [dst, src]


def resample_map(a_traj: torch.Tensor, src_grid: Sequence[int], dst_grid: Sequence[int]) -> torch.Tensor:
    """Resample a flattened (t, h, w) map onto another (t, h', w') grid, each axis separably by
    `axis_weights`: area-weighted where the axis shrinks, bilinear where it grows.

    The map is treated as mass on cells where axes shrink (the sum is conserved when no axis grows) and
    as values where they grow (interpolated, as before); with one axis of each, the result is both at once.
    Its overall scale then differs from the source's, which min-max (eq. 3) and any normalisation remove.
    """
    src_t, src_h, src_w = (int(x) for x in src_grid)
    dst_t, dst_h, dst_w = (int(x) for x in dst_grid)
    if a_traj.numel() != src_t * src_h * src_w:
        raise TrajectoryGridError(
            f"attention map has {a_traj.numel()} values but its grid {tuple(src_grid)} holds {src_t * src_h * src_w}")
    if src_t != dst_t:
        raise TrajectoryGridError(f"temporal grids differ: teacher {src_t}, student {dst_t}")
    grid = a_traj.float().view(src_t, src_h, src_w)  # [t, h, w]
    if (src_h, src_w) == (dst_h, dst_w):
        return grid.reshape(-1)
    rows, cols = axis_weights(src_h, dst_h), axis_weights(src_w, dst_w)  # [h', h], [w', w]
    out = torch.einsum("yh,thw,xw->tyx", rows, grid.double(), cols)  # [t, h', w']
    return out.float().reshape(-1)  # [t*h'*w']


def build_traj_target(a_traj: np.ndarray | torch.Tensor, teacher_grid: Sequence[int], student_grid: Sequence[int],
                      top_k: int = 8) -> torch.Tensor:
    """Teacher map → student-grid distribution: resample (`resample_map`), min-max (eq. 3), Top-K (ties at the
    k-th value all kept), renormalise to sum 1."""
    raw = torch.as_tensor(np.asarray(a_traj, dtype=np.float32))
    if not torch.isfinite(raw).all():
        raise TrajectoryGridError("attention map contains NaN or inf")
    mapped = resample_map(raw, teacher_grid, student_grid)  # [N]
    span = mapped.max() - mapped.min()
    if span <= 0:
        raise TrajectoryGridError("attention map is constant: it carries no 'where to look' signal")
    scaled = (mapped - mapped.min()) / span  # eq. 3
    if 0 < top_k < scaled.numel():
        # Every value tied with the k-th largest is kept. Upsampling onto a finer student grid makes equal
        # neighbours common, and keeping an arbitrary subset of them (what `topk` returns) would tilt the target
        # by tensor order; keeping all of them, rather than dropping all, never empties the target.
        kth = scaled.topk(top_k).values[-1]
        scaled = torch.where(scaled >= kth - TIE_TOLERANCE, scaled, torch.zeros_like(scaled))  # [N]
    return scaled / scaled.sum()
