"""Do the AAM boxes matter to a trained network's search? (issue 25: Rank and Rank-L tie on CelebA, where
the paper has Rank-L +0.036 above Rank.) Rank and Rank-L differ only in the boxes their attribute
branches pool: the whole image, or each attribute's AAM box (decision 25). This evaluates trained stage-2
networks with the other kind of boxes, retraining nothing: Rank-L's network with whole-image boxes, and
Rank's with the AAM boxes its own attribute classifier draws. If a network's Top-20 barely moves when its
boxes are swapped, its boxes pool nearly what the whole image does, and the two rows cannot differ much.

    python benchmarks/box_swap.py --data_dir=data/celeba --workdir=work/celeba-128/seed0 \\
        --out_dir=work/celeba-128-boxswap/seed0

For each row (`--variants`, rows without stage 3) it copies the row's stage-2 checkpoint and config into
`<out_dir>/stage2_<row>/`, flips `localization` in the copy's config (the original is only read) and
evaluates the copy as `experiments.evaluate` does (`<out_dir>/eval/<row>/results.json`; rerunning keeps
an evaluation already written). It prints each row's Top-20 with its own boxes
(`<workdir>/eval/<row>/results.json`) beside the swapped boxes', per attribute, and the AAM boxes' mean
share of the image on the query split, and writes the same to `<out_dir>/box_swap.md`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

K = "20"


def swapped_copy(workdir: str, out_dir: str, stage2_variant: str) -> str:
    """Copies `<workdir>/stage2_<v>`'s checkpoints and config into `<out_dir>/stage2_<v>` with
    `localization` flipped; returns the copy's directory. A copy already made is kept (checked flipped)."""
    from fashionsearchnet_v2 import configs
    from fashionsearchnet_v2.trained import loading

    src = loading.stage_dir(workdir, "stage2", stage2_variant)
    dst = loading.stage_dir(out_dir, "stage2", stage2_variant)
    cfg = configs.read_config(src)
    if cfg is None or not os.path.isdir(os.path.join(src, "ckpt")):
        raise SystemExit(
            f"error: --workdir: {src} has no config.json and ckpt/: train stage 2 ({stage2_variant}) first"
        )
    done = configs.read_config(dst)
    if done is not None:
        if done.model.localization == cfg.model.localization:
            raise SystemExit(f"error: --out_dir: {dst} holds a copy whose boxes are not swapped; remove it")
        return dst
    os.makedirs(dst, exist_ok=True)
    shutil.copytree(os.path.join(src, "ckpt"), os.path.join(dst, "ckpt"), dirs_exist_ok=True)
    cfg.model.localization = not cfg.model.localization
    cfg.workdir = out_dir
    cfg.write(dst)  # written last: a copy interrupted before this is copied again
    return dst


def box_area(boxes: np.ndarray) -> np.ndarray:
    """boxes [N, A, 4] (y1, x1, y2, x2) in [0, 1] -> [A]: each attribute's mean share of the image."""
    boxes = np.asarray(boxes, np.float64)
    return ((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])).mean(axis=0)


def boxes_name(localization: bool) -> str:
    return "AAM boxes" if localization else "whole image"


def markdown(rows: list[dict], names: list[str], where: str) -> str:
    """rows: {"row", "boxes", "topk": {attribute: Top-20, "avg": ...}, "gain"} in printing order."""
    head = " | ".join(names)
    lines = [f"Top-20 of trained rows with their own and swapped boxes, {where}", "",
             f"| row | boxes | {head} | Avg. | gain |", "|---|---|" + "---:|" * (len(names) + 2)]  # fmt: skip
    for r in rows:
        fmt = "{:+.3f}" if r.get("diff") else "{:.3f}"
        cells = " | ".join(
            "–" if r["topk"].get(n) is None else fmt.format(r["topk"][n]) for n in names + ["avg"]
        )
        gain = "" if r["gain"] is None else f"{r['gain']:+.3f}"
        lines.append(f"| {r['row']} | {r['boxes']} | {cells} | {gain} |")
    return "\n".join(lines)


def _read(path: str) -> dict | None:
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="Converted dataset.")
    p.add_argument("--workdir", required=True, help="A seed's work directory (holds stage2_<row>).")
    p.add_argument("--out_dir", required=True, help="Where the swapped copies and their evaluations go.")
    p.add_argument("--variants", default="rank_l,rank", help="Table 1 rows without stage 3 to swap.")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from fashionsearchnet_v2 import configs
    from fashionsearchnet_v2.data import schema
    from fashionsearchnet_v2.retrieval import evaluation, figures
    from fashionsearchnet_v2.trained import features, loading

    if os.path.abspath(args.out_dir) == os.path.abspath(args.workdir):
        raise SystemExit("error: --out_dir must differ from --workdir (the originals are only read)")
    info = schema.load_dataset_info(args.data_dir)
    names = list(info.attribute_names)
    rows = []
    for variant in args.variants.split(","):
        if variant not in configs.VARIANTS or configs.VARIANTS[variant][1] is not None:
            no_s3 = [v for v, (_, s3) in configs.VARIANTS.items() if s3 is None and not v.startswith("amnet")]
            raise SystemExit(f"error: --variants: {variant!r} is not a Table 1 row without stage 3 ({no_s3})")
        s2 = configs.VARIANTS[variant][0]
        dst = swapped_copy(args.workdir, args.out_dir, s2)
        eval_dir = os.path.join(args.out_dir, "eval", variant)
        swapped = _read(os.path.join(eval_dir, "results.json"))
        if swapped is None:
            swapped = evaluation.evaluate_variant(args.out_dir, info, variant, eval_dir)
        loc = configs.read_config(dst).model.localization
        label = swapped.get("label", variant)
        own = _read(os.path.join(args.workdir, "eval", variant, "results.json"))
        if own is not None:
            rows.append({"row": label, "boxes": boxes_name(not loc) + " (its own)",
                         "topk": own["topk"][K], "gain": own["gain"]["topk"][K]["avg"]})  # fmt: skip
        rows.append({"row": label, "boxes": boxes_name(loc) + " (swapped)",
                     "topk": swapped["topk"][K], "gain": swapped["gain"]["topk"][K]["avg"]})  # fmt: skip
        if own is not None:
            a, b = swapped["topk"][K], own["topk"][K]
            diff = {n: None if a.get(n) is None or b.get(n) is None else a[n] - b[n] for n in names + ["avg"]}
            rows.append({"row": label, "boxes": "swapped − own", "topk": diff, "gain": None, "diff": True})
        # The AAM boxes are the copy's when it was swapped to them, else the original's (not cached there).
        model, _, cfg = loading.load_stage2(args.out_dir if loc else args.workdir, info, s2)
        area = box_area(features.extract(model, info, "query", cfg.model.image_size, progress=True)["boxes"])
        rows.append({"row": label, "boxes": "AAM boxes' mean share of the image (query)",
                     "topk": dict(zip(names, area.tolist()), avg=float(area.mean())), "gain": None})  # fmt: skip
    text = markdown(rows, names, f"{info.name}, {args.workdir} (swapped copies in {args.out_dir})")
    print(text)
    figures.write_atomic(os.path.join(args.out_dir, "box_swap.md"), (text + "\n").encode())


if __name__ == "__main__":
    main()
