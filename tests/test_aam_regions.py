"""benchmarks/aam_regions.py: where AAM boxes lie against each attribute's expected region of an aligned
face (issue 25, item 5)."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import aam_regions  # noqa: E402


def test_centre_in_reads_the_box_centre_against_every_rectangle():
    rects = [(0.0, 0.0, 0.4, 1.0), (0.4, 0.0, 1.0, 0.2)]
    boxes = np.array([[0.1, 0.2, 0.3, 0.8],  # centre (0.2, 0.5): top band
                      [0.5, 0.0, 0.9, 0.3],  # centre (0.7, 0.15): left band
                      [0.5, 0.3, 0.9, 0.7],  # centre (0.7, 0.5): neither
                      [0.0, 0.0, 1.0, 1.0]])  # centre (0.5, 0.5): neither  # fmt: skip
    assert aam_regions.centre_in(boxes, rects).tolist() == [True, True, False, False]
    assert aam_regions.area(rects) == pytest.approx(0.4 + 0.12)


def test_region_report_counts_own_boxes_others_and_the_images_that_have_the_attribute():
    names = ["beard", "hat", "age"]
    values = [["goatee", "no_beard"], ["no_hat", "hat"], ["old", "young"]]
    regions = {"beard": [(0.6, 0.0, 1.0, 1.0)], "hat": [(0.0, 0.0, 0.4, 1.0)]}
    low, top, mid = [0.7, 0.2, 0.9, 0.8], [0.0, 0.2, 0.3, 0.8], [0.4, 0.4, 0.6, 0.6]
    # Four images: the beard box is low on the three with a goatee, central on the one without; the hat
    # box is at the top on every image; age's box is central.
    boxes = np.array([[low, top, mid], [low, top, mid], [low, top, mid], [mid, top, mid]])
    labels = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 1], [1, 0, -1]])
    r = aam_regions.region_report(
        boxes, labels, names, values, regions, {"beard": "no_beard", "hat": "no_hat"}
    )
    assert set(r) == {"beard", "hat"}  # age has no region
    assert r["beard"]["own"] == 0.75 and r["beard"]["own_present"] == 1.0 and r["beard"]["present"] == 3
    assert r["beard"]["others"] == 0.0  # hat and age boxes are never low
    assert r["hat"]["own"] == 1.0 and r["hat"]["present"] == 1 and r["hat"]["others"] == 0.0
    assert r["hat"]["area"] == pytest.approx(0.4)
    text = aam_regions.markdown(r, 4, "test")
    assert "| beard | 0.750 | 1.000 (3) | 0.000 | 0.40 |" in text
