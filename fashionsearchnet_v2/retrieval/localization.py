"""How well AAM boxes find the attribute regions, on data whose records carry true regions (synthetic).

A predicted box is given on the conv grid in crop_and_resize coordinates (cell r ↦ r/(h-1)); in the
image, cells r0..r1 cover [r0/h, (r1+1)/h]. Two scores per localized attribute:
- `hit_rate`: the box's centre lies inside the attribute's true region (the box is centred on it);
- `covers`: the true region's centre lies inside the box (the box lands on the region).
Chance is the same boxes scored against the regions of other images (a fixed derangement), which keeps
the boxes' sizes and the regions' sizes and positions as they are.
"""

from __future__ import annotations

import numpy as np


def grid_boxes_to_image(boxes, grid_size: int) -> np.ndarray:
    """[..., 4] crop_and_resize boxes on an h x h grid -> [..., 4] image-normalised extents of the cells."""
    boxes = np.asarray(boxes, np.float64)
    h = grid_size
    cells = np.rint(boxes * max(h - 1, 1))
    return np.concatenate([cells[..., :2] / h, (cells[..., 2:] + 1) / h], axis=-1)


def centre_hits(pred_image_boxes, true_boxes) -> np.ndarray:
    """[N, A, 4] predicted and true (ymin, xmin, ymax, xmax) image-normalised boxes -> bool [N, A]."""
    p = np.asarray(pred_image_boxes, np.float64)
    t = np.asarray(true_boxes, np.float64)
    cy, cx = (p[..., 0] + p[..., 2]) / 2, (p[..., 1] + p[..., 3]) / 2
    return (cy >= t[..., 0]) & (cy <= t[..., 2]) & (cx >= t[..., 1]) & (cx <= t[..., 3])


def localization_report(pred_boxes, true_boxes, grid_size: int, attribute_names) -> dict:
    """Per localized attribute (true box not -1): hit rate, chance rate and count.

    Args:
        pred_boxes: [N, A, 4] AAM boxes in crop_and_resize coordinates of a grid_size x grid_size map.
        true_boxes: [N, A, 4] image-normalised true regions; rows of -1 mark global attributes.
    """
    pred = grid_boxes_to_image(pred_boxes, grid_size)
    true = np.asarray(true_boxes, np.float64)
    n = len(pred)
    shift = np.roll(np.arange(n), max(1, n // 2))  # a derangement for n > 1
    hits = centre_hits(pred, true)
    chance = centre_hits(pred, true[shift])
    covers = centre_hits(true, pred)
    covers_chance = centre_hits(true[shift], pred)
    report = {}
    for a, name in enumerate(attribute_names):
        localized = true[:, a, 0] >= 0
        if not localized.any():
            continue
        both = localized & localized[shift]
        report[name] = {
            "hit_rate": float(hits[localized, a].mean()),
            "chance": float(chance[both, a].mean()),
            "covers": float(covers[localized, a].mean()),
            "covers_chance": float(covers_chance[both, a].mean()),
            "images": int(localized.sum()),
        }
    if report:
        keys = ("hit_rate", "chance", "covers", "covers_chance")
        report["mean"] = {k: float(np.mean([r[k] for r in report.values()])) for k in keys}
    return report
