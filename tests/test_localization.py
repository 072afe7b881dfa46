"""The localization score: grid boxes to image extents, centre hits, chance from other images' regions."""

import numpy as np

from fashionsearchnet_v2.retrieval import localization


def test_grid_boxes_map_to_cell_extents():
    # On a 6x6 grid, cells 1..2 (rows) and 0..5 (cols): crop_and_resize box (1/5, 0, 2/5, 1).
    box = np.array([1 / 5, 0.0, 2 / 5, 1.0])
    np.testing.assert_allclose(localization.grid_boxes_to_image(box, 6), [1 / 6, 0, 3 / 6, 1])


def test_report_counts_hits_and_chance():
    # Two images, one localized attribute "collar" and one global "color".
    true = np.array(
        [
            [[0.0, 0.0, 0.5, 0.5], [-1, -1, -1, -1]],  # collar in the top-left quarter
            [[0.5, 0.5, 1.0, 1.0], [-1, -1, -1, -1]],  # collar in the bottom-right quarter
        ]
    )
    # Predicted cell boxes on a 4x4 grid: image 0 -> cell (0, 0) (centre 1/8, 1/8): hit;
    # image 1 -> cell (3, 3) (centre 7/8, 7/8): hit. Swapped (chance): both miss.
    pred = np.array([[[0, 0, 0, 0], [0, 0, 1, 1]], [[1, 1, 1, 1], [0, 0, 1, 1]]], np.float64)
    report = localization.localization_report(pred, true, 4, ["collar", "color"])
    # The true regions' centres (1/4, 1/4) and (3/4, 3/4) lie on the edges of the one-cell boxes
    # [0, 1/4] and [3/4, 1] (bounds inclusive): covered; swapped, they are not.
    assert report["collar"] == {
        "hit_rate": 1.0,
        "chance": 0.0,
        "covers": 1.0,
        "covers_chance": 0.0,
        "images": 2,
    }
    assert "color" not in report and report["mean"]["hit_rate"] == 1.0
