import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lavit.data.official import QWEN_MAX_PIXELS, QWEN_MIN_PIXELS
from lavit.data.targets import TrajectoryGridError, build_traj_target, resample_map
from lavit.models.grid import merged_grid
from lavit.teacher.signals import s_focus
from lavit.models.grid import PAPER_MAX_PIXELS, PAPER_MIN_PIXELS


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


# -- resolution: teacher maps from large pages onto the student's Table A1 grid --------------------------

def test_upsampling_is_pytorch_bilinear():
    a = torch.rand(5 * 7, generator=torch.Generator().manual_seed(0))
    up = resample_map(a, (1, 5, 7), (1, 12, 9))
    expected = F.interpolate(a.view(1, 1, 5, 7), size=(12, 9), mode="bilinear", align_corners=False)
    torch.testing.assert_close(up, expected.reshape(-1), rtol=0, atol=1e-6)


def test_downsampling_by_an_integer_ratio_sums_blocks():
    a = torch.rand(6 * 6, generator=torch.Generator().manual_seed(1))
    down = resample_map(a, (1, 6, 6), (1, 3, 2)).view(3, 2)
    expected = a.view(3, 2, 2, 3).sum(dim=(1, 3))  # 2 x 3 blocks of source cells
    torch.testing.assert_close(down, expected, rtol=0, atol=1e-6)
    assert down.sum().item() == pytest.approx(a.sum().item(), rel=1e-6)


def test_one_axis_shrinks_the_other_grows():
    # rows 10 -> 5: pairs of rows summed (area); columns 4 -> 8: linear interpolation, as bilinear does
    a = torch.rand(10 * 4, generator=torch.Generator().manual_seed(2))
    mixed = resample_map(a, (1, 10, 4), (1, 5, 8)).view(5, 8)
    rows = a.view(5, 2, 4).sum(1)  # [5, 4]
    expected = F.interpolate(rows[None], size=8, mode="linear", align_corners=False)[0]  # [5, 8]
    torch.testing.assert_close(mixed, expected, rtol=0, atol=1e-6)


def test_frames_are_resampled_independently():
    a = torch.rand(3 * 9 * 8, generator=torch.Generator().manual_seed(3))
    together = resample_map(a, (3, 9, 8), (3, 4, 3)).view(3, -1)
    for f in range(3):
        torch.testing.assert_close(together[f], resample_map(a.view(3, -1)[f], (1, 9, 8), (1, 4, 3)))


TEACHER_DEFAULT = {"min_pixels": QWEN_MIN_PIXELS, "max_pixels": QWEN_MAX_PIXELS}  # the processor default
TABLE_A1 = {"min_pixels": PAPER_MIN_PIXELS, "max_pixels": PAPER_MAX_PIXELS}
PAGES = [(2480, 3508), (3000, 4000), (1999, 1333)]  # A4 at 300 dpi, a 12 MP photo, odd sides
# (image size, teacher grid, student grid): the same family with the teacher at its processor's default
# (up to 12.8 MP) for both patch sizes, and a Qwen2.5-VL teacher for a Qwen3-VL student, both at Table A1.
CASES = ([(size, merged_grid(size, patch, **TEACHER_DEFAULT), merged_grid(size, patch, **TABLE_A1))
          for size in PAGES for patch in (14, 16)]
         + [(size, merged_grid(size, family="qwen2_5_vl", **TABLE_A1), merged_grid(size, family="qwen3_vl", **TABLE_A1))
            for size in PAGES])
CASE_IDS = [f"{s[0]}x{s[1]}:{t[1]}x{t[2]}->{d[1]}x{d[2]}" for s, t, d in CASES]


def one_hot_maps(teacher: tuple[int, int, int], student: tuple[int, int, int], chunk: int = 512):
    """Every single-cell teacher map resampled onto the student grid, as (teacher cells [c], maps [c, h', w'])
    in chunks; one frame per teacher cell, as frames are resampled independently."""
    n = teacher[1] * teacher[2]
    for start in range(0, n, chunk):
        cells = torch.arange(start, min(start + chunk, n))
        hot = torch.zeros(len(cells), n)
        hot[torch.arange(len(cells)), cells] = 1.0
        yield cells, resample_map(hot.reshape(-1), (len(cells), *teacher[1:]), (len(cells), *student[1:])).view(
            len(cells), *student[1:])


def centre_cells(cells: torch.Tensor, teacher, student) -> tuple[torch.Tensor, torch.Tensor]:
    """The student cell holding each teacher cell's centre: (2r + 1) / 2h of the side, in integers."""
    rows, cols = cells // teacher[2], cells % teacher[2]
    return ((2 * rows + 1) * student[1]) // (2 * teacher[1]), ((2 * cols + 1) * student[2]) // (2 * teacher[2])


@pytest.mark.parametrize("size,teacher,student", CASES, ids=CASE_IDS)
def test_no_single_cell_teacher_peak_vanishes_and_each_keeps_its_area_share(size, teacher, student):
    """The failure of the old plain-bilinear downsampling: it samples the teacher map only near student cell
    centres, so on a 2480x3508 page (125x89 -> 42x30) 55 % of single-cell peaks left an all-zero map (68 % at
    3000x4000). Area weighting sends each teacher cell's mass to exactly the student cells it overlaps, in
    proportion to the overlap, the largest share to the cell holding its centre.

    Kept mass of a teacher cell: its resampled mass over that of a uniform map, times the number of teacher
    cells, i.e. relative to its area share 1/n. Area weighting: 1 within 1e-5 for every cell (float32
    rounding); the old code ranged from 0.00 to 8.6 at 125x89 -> 42x30."""
    n_t = teacher[1] * teacher[2]
    uniform = resample_map(torch.ones(n_t), teacher, student).sum()
    ys, xs = torch.arange(student[1])[None], torch.arange(student[2])[None]
    vanished = off_centre = wrong_support = 0
    kept_lo, kept_hi = float("inf"), 0.0
    for cells, maps in one_hot_maps(teacher, student):
        r, c = centre_cells(cells, teacher, student)
        at_centre = maps[torch.arange(len(cells)), r, c]  # [c]
        vanished += int((at_centre <= 0).sum())
        # the centre's cell holds the largest share (ties where the centre sits on a student cell edge)
        off_centre += int((at_centre < maps.flatten(1).max(1).values * (1 - 1e-6)).sum())
        kept = maps.flatten(1).sum(1) / uniform * n_t
        kept_lo, kept_hi = min(kept_lo, kept.min().item()), max(kept_hi, kept.max().item())
        rows, cols = (cells // teacher[2])[:, None], (cells % teacher[2])[:, None]
        # student cell j overlaps teacher cell i on an axis of n -> m cells iff j n < (i + 1) m and (j + 1) n > i m
        over_y = (ys * teacher[1] < (rows + 1) * student[1]) & ((ys + 1) * teacher[1] > rows * student[1])
        over_x = (xs * teacher[2] < (cols + 1) * student[2]) & ((xs + 1) * teacher[2] > cols * student[2])
        wrong_support += int(((maps > 0) != (over_y[:, :, None] & over_x[:, None, :])).flatten(1).any(1).sum())
    summary = (f"of {n_t} single-cell peaks: {vanished / n_t:.1%} vanished, {off_centre / n_t:.1%} peak off their "
               f"centre's cell, {wrong_support / n_t:.1%} land outside the cells they overlap; kept mass "
               f"{kept_lo:.2f}..{kept_hi:.2f} of the area share; uniform map's mass {uniform.item():.1f} of {n_t}")
    assert vanished == off_centre == wrong_support == 0, summary
    assert abs(kept_lo - 1) <= 1e-5 and abs(kept_hi - 1) <= 1e-5, summary
    assert uniform.item() == pytest.approx(n_t, rel=1e-6), summary  # mass conserved


@pytest.mark.parametrize("size,teacher,student", CASES, ids=CASE_IDS)
def test_a_peak_on_a_faint_background_is_the_target_argmax(size, teacher, student):
    """Through the whole target (min-max, Top-8, renormalise): a teacher cell 1000 x brighter than a uniform
    background stays non-zero at, and the argmax lands on, the student cell holding its centre (tied with its
    neighbour where the centre sits on a student cell edge; a uniform background keeps such ties)."""
    rng = np.random.default_rng(4)
    n_t = teacher[1] * teacher[2]
    cells = torch.from_numpy(rng.choice(n_t, size=60, replace=False))
    rows, cols = centre_cells(cells, teacher, student)
    for cell, r, c in zip(cells.tolist(), rows.tolist(), cols.tolist()):
        a_traj = np.full(n_t, 1e-3, dtype=np.float32)
        a_traj[cell] = 1.0
        target = build_traj_target(a_traj, teacher, student, top_k=8).view(student[1:])
        assert target[r, c] > 0 and target[r, c] >= target.max() * (1 - 1e-6)


@pytest.mark.parametrize("size,teacher,student", CASES, ids=CASE_IDS)
def test_mass_and_s_focus_are_preserved(size, teacher, student):
    """Mass is conserved to float32 rounding (1e-5 relative). S_focus (eq. 1) counts the cells whose centre lies
    in the box (here: random boxes; maps: a blob at the box, 5 spikes anywhere, a background), so teacher and
    student grids can disagree only about teacher cells within one student cell (plus one teacher cell) of the box
    edge: |ΔS_focus| is at most the teacher's mass there (plus 1e-5)."""
    rng = np.random.default_rng(5)
    width, height = size
    ys = (np.arange(teacher[1]) + 0.5) / teacher[1] * height  # teacher cell centres, pixels
    xs = (np.arange(teacher[2]) + 0.5) / teacher[2] * width
    # one student cell plus one teacher cell: also covers boxes smaller than a cell (counted by their centre)
    band_y, band_x = height / student[1] + height / teacher[1], width / student[2] + width / teacher[2]
    for _ in range(20):
        x1, x2 = np.sort(rng.uniform(0, width, 2))
        y1, y2 = np.sort(rng.uniform(0, height, 2))
        # a blob around the box and a few single-cell spikes, on a background: attention is peaky
        blob = np.exp(-(((ys[:, None] - (y1 + y2) / 2) / max((y2 - y1) / 4, 1)) ** 2
                        + ((xs[None, :] - (x1 + x2) / 2) / max((x2 - x1) / 4, 1)) ** 2))
        a_traj = blob + 0.05 * rng.random((teacher[1], teacher[2]))
        a_traj[rng.integers(0, teacher[1], 5), rng.integers(0, teacher[2], 5)] += 20.0
        a_traj = a_traj.astype(np.float32).reshape(-1)
        mapped = resample_map(torch.from_numpy(a_traj), teacher, student).numpy()
        box = [x1, y1, x2, y2]
        before, after = s_focus(a_traj, teacher, box, size), s_focus(mapped, student, box, size)
        near_y = (np.abs(ys - y1) < band_y) | (np.abs(ys - y2) < band_y)
        near_x = (np.abs(xs - x1) < band_x) | (np.abs(xs - x2) < band_x)
        in_y = (ys > y1 - band_y) & (ys < y2 + band_y)
        in_x = (xs > x1 - band_x) & (xs < x2 + band_x)
        edge = (near_y[:, None] & in_x[None, :]) | (in_y[:, None] & near_x[None, :])  # [h, w]
        bound = a_traj.reshape(teacher[1:])[edge].sum() / a_traj.sum()
        assert abs(after - before) <= bound + 1e-5, (before, after, bound)
        assert mapped.sum() == pytest.approx(a_traj.sum(), rel=1e-5)
