import numpy as np
import pytest

from lib.demo.boxes import diff_boxes


def test_no_change_gives_no_box():
    a = np.full((40, 50), 100, dtype=np.uint8)
    assert diff_boxes(a, a.copy()) == []


def test_one_region_gets_its_bounding_box():
    a = np.zeros((40, 50), dtype=np.uint8)
    b = a.copy()
    b[10:20, 5:15] = 200
    assert diff_boxes(b, a) == [(5, 10, 10, 10)]


def test_changes_below_the_threshold_are_ignored():
    a = np.full((40, 50), 100, dtype=np.uint8)
    b = a.copy()
    b[:, :] = 105  # everywhere, but faint
    b[30:35, 40:45] = 200
    assert diff_boxes(b, a, threshold=8) == [(40, 30, 5, 5)]


def test_separate_regions_get_separate_boxes_largest_first():
    a = np.zeros((100, 100), dtype=np.uint8)
    b = a.copy()
    b[10:20, 10:20] = 255  # 100 px
    b[60:90, 60:90] = 255  # 900 px
    assert diff_boxes(b, a) == [(60, 60, 30, 30), (10, 10, 10, 10)]


def test_nearby_pieces_merge_and_specks_are_dropped():
    a = np.zeros((100, 100), dtype=np.uint8)
    b = a.copy()
    b[10:30, 10:30] = 255
    b[10:30, 32:50] = 255  # 2 px away: the same region
    b[90, 90] = 255  # a speck far away: under 5 % of the changed pixels
    assert diff_boxes(b, a, merge_fraction=0.04) == [(10, 10, 40, 20)]


def test_shapes_must_agree():
    with pytest.raises(ValueError, match="same shape"):
        diff_boxes(np.zeros((4, 4)), np.zeros((4, 5)))
