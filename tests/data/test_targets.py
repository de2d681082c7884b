import pytest
import torch

from lavit.data.targets import TrajectoryGridError, build_traj_target, resample_map


def test_same_grid_is_identity():
    a = torch.arange(12.0)
    assert torch.equal(resample_map(a, (1, 3, 4), (1, 3, 4)), a)


def test_resample_to_finer_grid_keeps_the_peak_region():
    a = torch.zeros(4)
    a[3] = 1.0  # bottom-right cell of a 2x2 grid
    up = resample_map(a, (1, 2, 2), (1, 4, 4)).view(4, 4)
    assert up[3, 3] == up.max() and up[0, 0] == 0


def test_minmax_topk_renormalise_by_hand():
    a = [1.0, 2.0, 3.0, 5.0, 4.0]
    # min-max: [0, .25, .5, 1, .75]; top-2 keeps 1 and .75; renormalised: [0, 0, 0, 4/7, 3/7]
    t = build_traj_target(a, (1, 1, 5), (1, 1, 5), top_k=2)
    assert torch.allclose(t, torch.tensor([0, 0, 0, 4 / 7, 3 / 7]))
    assert build_traj_target(a, (1, 1, 5), (1, 1, 5), top_k=0).sum().item() == pytest.approx(1.0)


@pytest.mark.parametrize("values,grid,message", [
    ([1.0] * 6, (1, 2, 4), "holds 8"),
    ([1.0] * 8, (1, 2, 4), "constant"),
    ([1.0, float("nan"), 0, 0], (1, 2, 2), "NaN"),
])
def test_bad_maps_are_clear_errors(values, grid, message):
    with pytest.raises(TrajectoryGridError, match=message):
        build_traj_target(values, grid, (1, 2, 2))


def test_temporal_mismatch():
    with pytest.raises(TrajectoryGridError, match="temporal"):
        resample_map(torch.rand(8), (2, 2, 2), (1, 2, 2))


def test_ties_at_the_kth_value_are_all_kept_so_the_target_is_symmetric():
    # one bright teacher cell, upsampled 3x3 -> 6x6: its 4 student cells tie, and so do their neighbours
    teacher = torch.zeros(3, 3)
    teacher[1, 1] = 1.0
    target = build_traj_target(teacher.reshape(-1), (1, 3, 3), (1, 6, 6), top_k=6).view(6, 6)
    kept = target > 0
    assert kept.sum() > 6  # the tie at the 6th value is kept whole, not cut to an arbitrary 6
    values = sorted(set(target[kept].tolist()))
    assert all((target == v).sum() % 4 == 0 for v in values)  # every kept value comes with its mirror images
    # the target does not depend on tensor order: flipping or transposing the teacher map flips the target
    for op in (lambda m: m.flip(0), lambda m: m.flip(1), lambda m: m.t()):
        mirrored = build_traj_target(op(teacher).reshape(-1), (1, 3, 3), (1, 6, 6), top_k=6).view(6, 6)
        assert torch.allclose(mirrored, op(target))
    assert target.sum().item() == pytest.approx(1.0)


def test_without_ties_exactly_k_values_survive():
    a_traj = torch.arange(16, dtype=torch.float32)
    target = build_traj_target(a_traj, (1, 4, 4), (1, 4, 4), top_k=5)
    assert (target > 0).sum() == 5 and target.argmax() == 15
