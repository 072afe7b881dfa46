"""Are the AAM boxes where the attributes are? (issue 25, item 5: "are the beard and hat boxes where beards
and hats are?") For a dataset without true regions, the faces of CelebA's `img_align_celeba` are aligned
(eyes, nose and mouth at nearly the same pixels in every image), so each local attribute has a fixed
expected region of the image. This reads a trained stage 2's boxes on a split and reports, per attribute,
how often its box's centre falls in its region, beside how often the other attributes' boxes of the same
images fall there (a box placed for that attribute beats the others by a wide margin) and the region's
share of the image (a box centred at random).

    python benchmarks/aam_regions.py --data_dir=data/celeba --workdir=work/celeba/seed0 --variant=rank_l \\
        --out_dir=work/celeba/seed0/aam_regions

Writes `<out_dir>/aam_regions.md` (the table) and `<out_dir>/aam_regions.png`: per shown attribute a row
of query images that have it (a beard, a hat, ...), each with that attribute's activation map and box.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Rectangles (y1, x1, y2, x2) in [0, 1] of the 178 x 218 aligned image (squash-resized, so the same
# fractions of the network's input). The aligned faces' eyes sit near y = 0.51 (pixel 111 of 218), x = 0.39
# and 0.61; the nose tip near y = 0.61; the mouth corners near y = 0.70, x = 0.40 and 0.60.
CELEBA_ALIGNED = {
    "eyeglasses": [(0.40, 0.18, 0.62, 0.82)],  # the eye band
    "smiling": [(0.62, 0.28, 0.82, 0.72)],  # the mouth
    "beard": [(0.62, 0.15, 1.00, 0.85)],  # below the nose: upper lip, cheeks, chin
    "hat": [(0.00, 0.00, 0.40, 1.00)],  # above the eyes
    "hair_color": [(0.00, 0.00, 0.40, 1.00), (0.40, 0.00, 1.00, 0.20), (0.40, 0.80, 1.00, 1.00)],
    "hair_type": [(0.00, 0.00, 0.40, 1.00), (0.40, 0.00, 1.00, 0.20), (0.40, 0.80, 1.00, 1.00)],
}
# The value that means "the attribute is not there": images with any other known value have it.
CELEBA_ABSENT = {
    "beard": "no_beard",
    "hat": "no_hat",
    "eyeglasses": "no_eyeglasses",
    "smiling": "not_smiling",
}
PRESETS = {"celeba_aligned": (CELEBA_ALIGNED, CELEBA_ABSENT)}


def centre_in(boxes: np.ndarray, rects) -> np.ndarray:
    """boxes [..., 4] (y1, x1, y2, x2) -> bool [...]: the box's centre lies in one of the rectangles."""
    boxes = np.asarray(boxes, np.float64)
    cy, cx = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    hit = np.zeros(cy.shape, bool)
    for y1, x1, y2, x2 in rects:
        hit |= (cy >= y1) & (cy <= y2) & (cx >= x1) & (cx <= x2)
    return hit


def area(rects) -> float:
    """Share of the unit square the (non-overlapping) rectangles cover."""
    return float(sum((y2 - y1) * (x2 - x1) for y1, x1, y2, x2 in rects))


def present_mask(labels: np.ndarray, attribute: int, absent: int | None) -> np.ndarray:
    """bool [N]: the image's value of `attribute` is known and is not `absent` (all known, without one)."""
    known = labels[:, attribute] >= 0
    return known if absent is None else known & (labels[:, attribute] != absent)


def absent_index(values: list[str], name: str, absent: dict) -> int | None:
    """Index of the value of attribute `name` that means "not there"; None for an attribute without one."""
    return values.index(absent[name]) if name in absent else None


def region_report(boxes, labels, names, values, regions, absent) -> dict:
    """Per attribute with a region: its boxes' centre-in-region rate over all images and over the images
    that have the attribute, the other attributes' boxes' rate in the same region, the region's area.

    Args:
      boxes: [N, A, 4] normalised (y1, x1, y2, x2); labels: [N, A] value indices (-1 unknown);
      names: A attribute names; values: A lists of value names; regions: name -> rectangles;
      absent: name -> the value name meaning "not there".
    """
    boxes, labels = np.asarray(boxes), np.asarray(labels)
    report = {}
    for a, name in enumerate(names):
        if name not in regions:
            continue
        rects = regions[name]
        own = centre_in(boxes[:, a], rects)
        others = centre_in(np.delete(boxes, a, axis=1), rects)  # [N, A-1]
        has = present_mask(labels, a, absent_index(values[a], name, absent))
        report[name] = {
            "own": float(own.mean()),
            "own_present": float(own[has].mean()) if has.any() else None,
            "present": int(has.sum()),
            "others": float(others.mean()),
            "area": area(rects),
            "mean_box": [round(float(x), 3) for x in boxes[:, a].mean(axis=0)],
        }
    return report


def markdown(report: dict, n: int, where: str) -> str:
    lines = [f"AAM box centres in each attribute's expected region, {where} ({n} images)", "",
             "| attribute | own box (all images) | own box (images that have it) | other attributes' boxes | "
             "region's share of the image | mean box (y1, x1, y2, x2) |",
             "|---|---:|---:|---:|---:|---|"]  # fmt: skip
    for name, r in report.items():
        present = "–" if r["own_present"] is None else f"{r['own_present']:.3f} ({r['present']})"
        lines.append(f"| {name} | {r['own']:.3f} | {present} | {r['others']:.3f} | {r['area']:.2f} | "
                     f"{tuple(r['mean_box'])} |")  # fmt: skip
    return "\n".join(lines)


def _title(name: str, value: str) -> str:
    """ "hat", not "hat: hat"; "beard: goatee"."""
    return value if name in value else f"{name}: {value}"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="Converted dataset.")
    p.add_argument("--workdir", required=True, help="A seed's work directory (holds stage2_<variant>).")
    p.add_argument("--variant", default="rank_l", help="Stage-2 variant whose boxes are read.")
    p.add_argument("--split", default="query", choices=["train", "query", "gallery"], help="Split read.")
    p.add_argument("--regions", default="celeba_aligned", choices=list(PRESETS), help="Expected regions.")
    p.add_argument("--show", default="beard,hat,eyeglasses,smiling", help="Attributes drawn, a row each.")
    p.add_argument("--per_row", type=int, default=4, help="Images per drawn attribute.")
    p.add_argument("--out_dir", default=None, help="Output directory (default <workdir>/aam_regions).")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from fashionsearchnet_v2.data import schema
    from fashionsearchnet_v2.retrieval import evaluation, figures
    from fashionsearchnet_v2.trained import features, loading

    info = schema.load_dataset_info(args.data_dir)
    regions, absent = PRESETS[args.regions]
    values = [list(attr.values) for attr in info.attributes]
    show = args.show.split(",")
    unknown = [s for s in show if s not in info.attribute_names]
    if unknown:
        raise SystemExit(
            f"error: --show: {unknown} are not attributes of {args.data_dir} ({info.attribute_names})"
        )
    model, ckpt, cfg = loading.load_stage2(args.workdir, info, args.variant)
    size = cfg.model.image_size
    feats = features.extract(model, info, args.split, size, keep_maps=True)
    report = region_report(feats["boxes"], feats["labels"], info.attribute_names, values, regions, absent)
    where = f"{info.name} {args.split}, {os.path.relpath(ckpt, args.workdir)} of {args.workdir}"
    text = markdown(report, len(feats["labels"]), where)
    out_dir = args.out_dir or os.path.join(args.workdir, "aam_regions")
    os.makedirs(out_dir, exist_ok=True)
    figures.write_atomic(os.path.join(out_dir, "aam_regions.md"), (text + "\n").encode())
    rows = []
    rng = np.random.default_rng(0)
    for name in show:
        a = info.attribute_names.index(name)
        pool = np.flatnonzero(present_mask(feats["labels"], a, absent_index(values[a], name, absent)))
        picks = np.sort(rng.choice(pool, size=min(args.per_row, len(pool)), replace=False))
        if not len(picks):
            continue
        images = evaluation.read_images(info, args.split, feats["ids"][picks], size)
        panels = [figures.overlay_maps(img, feats["maps"][i, a : a + 1], feats["boxes"][i, a : a + 1],
                                       [_title(name, values[a][feats["labels"][i, a]])], cols=1)
                  for img, i in zip(images, picks)]  # fmt: skip
        row = np.concatenate(panels, axis=1)
        width = args.per_row * panels[0].shape[1]
        rows.append(np.pad(row, ((0, 0), (0, width - row.shape[1]), (0, 0)), constant_values=255))
    if rows:
        figures.write_png(os.path.join(out_dir, "aam_regions.png"), np.concatenate(rows, axis=0))
    print(text)
    print(f"wrote {out_dir}/aam_regions.md and aam_regions.png")


if __name__ == "__main__":
    main()
