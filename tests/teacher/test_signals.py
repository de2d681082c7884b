"""S_focus (eq. 1) against hand-computed values (the box → cell mapping is tested in tests/models/test_grid.py)."""

from __future__ import annotations

import numpy as np
import pytest

from lavit.teacher.signals import s_focus

# A 112x84 image on a (1, 3, 4) grid: cell centres x = 14, 42, 70, 98 and y = 14, 42, 70.
SIZE, GRID = (112, 84), (1, 3, 4)
MAP = np.arange(1, 13, dtype=np.float32)  # total mass 78


def test_s_focus_hand_value():
    # the box [30, 0, 80, 50] holds the centres of cells 1, 2, 5, 6
    assert s_focus(MAP, GRID, [30, 0, 80, 50], SIZE) == pytest.approx((2 + 3 + 6 + 7) / 78)
    # scale invariance: the raw map needs no normalisation first
    assert s_focus(MAP * 1e-3, GRID, [30, 0, 80, 50], SIZE) == pytest.approx(18 / 78)
    assert s_focus(MAP, GRID, [0, 0, 112, 84], SIZE) == pytest.approx(1.0)


def test_box_smaller_than_a_cell_counts_the_cell_of_its_centre():
    assert s_focus(MAP, GRID, [0, 0, 5, 5], SIZE) == pytest.approx(1 / 78)


def test_sizes_are_checked():
    with pytest.raises(ValueError, match="12 values"):
        s_focus(MAP, (1, 2, 4), [0, 0, 10, 10], SIZE)
    with pytest.raises(ValueError, match="no positive"):
        s_focus(np.zeros(12), GRID, [0, 0, 10, 10], SIZE)
