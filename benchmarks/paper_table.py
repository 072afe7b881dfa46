"""A run's Table 1 beside the paper's: per row, our Top-20 per attribute and Avg. (mean ± std over the
seeds found), the paper's row, and the difference; our manipulation gain beside it (the paper prints none).

Reads `<workdir>/seed<N>/eval/<variant>/results.json` as written by `experiments.ablation`; a row with no
results.json is listed as such, never filled in.

    python benchmarks/paper_table.py --workdir=work/celeba --paper=celeba --seeds=0,1,2 \
        --note="CelebA, 26,715 training images (15% of the paper's)"
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np
from operating_points import load_row

from fashionsearchnet_v2.configs import LABELS

# Table 1 (d) of the paper, Top-20: hair colour, beard, hair type, smiling, eyeglasses, gender, hat, age, Avg.
PAPER = {
    "celeba": {
        "attributes": ("hair_color", "beard", "hair_type", "smiling", "eyeglasses", "gender", "hat", "age"),
        "rows": {
            "amnet": (0.604, 0.439, 0.556, 0.496, 0.275, 0.293, 0.155, 0.370, 0.399),
            "wo_rank": (0.468, 0.290, 0.530, 0.563, 0.163, 0.315, 0.127, 0.396, 0.357),
            "rank": (0.816, 0.500, 0.710, 0.805, 0.747, 0.782, 0.642, 0.515, 0.690),
            "rank_l": (0.818, 0.556, 0.752, 0.806, 0.779, 0.812, 0.748, 0.537, 0.726),
            "rank_lg": (0.836, 0.598, 0.788, 0.809, 0.785, 0.818, 0.769, 0.759, 0.770),
            "full": (0.841, 0.604, 0.787, 0.815, 0.785, 0.829, 0.766, 0.772, 0.775),
            "full_ff": (0.827, 0.613, 0.783, 0.805, 0.789, 0.813, 0.771, 0.766, 0.771),
        },
    },
}
# Every row of Table 1, each untrained control just above the row it controls (the paper has neither).
ORDER = (
    "amnet_untrained",
    "amnet",
    "wo_rank",
    "rank",
    "rank_l",
    "rank_lg_untrained",
    "rank_lg",
    "full",
    "full_ff",
)


def _cell(values, sign: str = "") -> str:
    if not values:
        return ""
    mean = float(np.mean(values))
    std = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
    return f"{mean:{sign}.3f}{std}"


def _found(workdir: str, seeds: list[int], variant: str, k: int) -> list[dict]:
    """`load_row` of each seed that has the row's results.json, in the seeds' order."""
    return [r for r in (load_row(workdir, s, variant, k) for s in seeds) if r is not None]


def table(workdir: str, paper: str, seeds: list[int], k: int = 20, variants: tuple[str, ...] = ORDER) -> str:
    """The rows of `variants` (in Table 1's order), each followed by the paper's row and the difference."""
    unknown = sorted(set(variants) - set(ORDER))
    if unknown:
        raise ValueError(f"--variants: unknown rows {unknown}; expected some of {', '.join(ORDER)}")
    spec = PAPER[paper]
    names = spec["attributes"]
    head = "| Approach | source | " + " | ".join(names) + " | Avg. | gain |"
    lines = [head, "|---|---|" + "---:|" * (len(names) + 2)]
    for variant in (v for v in ORDER if v in variants):
        rows = _found(workdir, seeds, variant, k)
        ours = [[r["attributes"][n] for r in rows] for n in names] + [[r["avg"] for r in rows]]
        theirs = spec["rows"].get(variant)
        label = LABELS[variant]
        if rows:
            found = f"ours, {len(rows)} seed{'s' if len(rows) > 1 else ''}"
            cells = [_cell([x for x in v if x is not None]) for v in ours]
            lines.append(
                f"| {label} | {found} | "
                + " | ".join(cells)
                + f" | {_cell([r['gain'] for r in rows], '+')} |"
            )
        else:
            lines.append(f"| {label} | ours: no results.json |" + " |" * (len(names) + 2))
        if theirs:
            lines.append("| | paper | " + " | ".join(f"{x:.3f}" for x in theirs) + " | |")
            if rows:
                diffs = [f"{np.mean([x for x in v if x is not None]) - p:+.3f}" for v, p in zip(ours, theirs)]
                lines.append("| | ours − paper | " + " | ".join(diffs) + " | |")
    return "\n".join(lines)


def gains_table(
    workdir: str,
    paper: str,
    seeds: list[int],
    k: int = 20,
    variants: tuple[str, ...] = ORDER,
    floor: float = 0.10,
) -> str:
    """Our manipulation gain at Top-k per attribute (mean ± std over the seeds found) for the rows that
    have results.json; a mean under `floor` is marked with a dagger (the issue asks each to be named)."""
    names = PAPER[paper]["attributes"]
    lines = ["| row | seeds | " + " | ".join(names) + " | Avg. |", "|---|---:|" + "---:|" * (len(names) + 1)]
    for variant in (v for v in ORDER if v in variants):
        rows = _found(workdir, seeds, variant, k)
        if not rows:
            continue
        cells = []
        for values in [[r["gains"][n] for r in rows] for n in names] + [[r["gain"] for r in rows]]:
            mark = " †" if np.mean(values) < floor and not variant.endswith("_untrained") else ""
            cells.append(_cell(values, "+") + mark)
        lines.append(f"| {LABELS[variant]} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def mean_curves(workdir: str, paper: str, seeds: list[int], k: int = 20) -> tuple[dict, dict]:
    """({label: {K: Top-K avg, mean over the seeds found}}, {label: (k, the paper's Top-k Avg.)}) of the
    rows that have results.json, in Table 1's order."""
    curves, marks = {}, {}
    for variant in ORDER:
        found = []
        for s in seeds:
            path = os.path.join(workdir, f"seed{s}", "eval", variant, "results.json")
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    found.append(json.load(f)["topk"])
        if not found:
            continue
        ks = sorted({int(x) for r in found for x in r})
        label = LABELS[variant]
        curves[label] = {x: float(np.mean([r[str(x)]["avg"] for r in found if str(x) in r])) for x in ks}
        if variant in PAPER[paper]["rows"]:
            marks[label] = (k, PAPER[paper]["rows"][variant][-1])
    return curves, marks


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--paper", choices=sorted(PAPER), default="celeba")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--variants", default=",".join(ORDER), help="rows to print, comma-separated (e.g. "
                   "rank_lg,full for the --paper_stage3 pair)")  # fmt: skip
    p.add_argument("--floor", type=float, default=0.10, help="gains under this are marked †")
    p.add_argument("--note", default="", help="what this copy of the data is, printed above the table")
    p.add_argument("--plot", default=None, help="also draw the rows' Top-K curves (mean over seeds) with the "
                   "paper's Top-k Avg. of each row as a star, as a PNG here")  # fmt: skip
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.note:
        print(args.note + "\n")
    variants = tuple(args.variants.split(","))
    print(table(args.workdir, args.paper, seeds, args.k, variants))
    print(f"\nManipulation gain at Top-{args.k} per attribute (ours; † a trained row's mean under "
          f"+{args.floor:.2f}):\n")  # fmt: skip
    print(gains_table(args.workdir, args.paper, seeds, args.k, variants, args.floor))
    if args.plot:
        from fashionsearchnet_v2.retrieval import figures

        curves, marks = mean_curves(args.workdir, args.paper, seeds, args.k)
        title = f"Top-K, {args.paper} (ours: lines, mean over seeds; paper's Top-{args.k}: stars)"
        print("wrote", figures.plot_topk_curves(curves, args.plot, title=title, size=(800, 560), marks=marks,
                                                marks_label=f"paper's Top-{args.k}"))  # fmt: skip


if __name__ == "__main__":
    main()
