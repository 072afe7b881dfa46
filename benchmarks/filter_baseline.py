"""Does manipulating beat filtering? Full beside the filter baseline, per attribute, over seeds.

The filter baseline (`retrieval/search.py`, decision 68) ranks the query's own, unmanipulated
representation among the gallery images whose *predicted* value of the changed attribute is the target
value; it needs no manipulation at all, only the model's classifiers, and it is what a search team could
do instead of the paper's method. This prints, for each variant's Top-k (default 20), the manipulated
query, the unmanipulated one, the filter baseline, the manipulated query under the same filter, and the
paired difference manipulated − filter baseline on the same seed (mean ± std over seeds).

Reads `<workdir>/seed<N>/eval/<variant>/results.json` as `experiments.main` and `experiments.ablation`
write them; results written before the filter baseline (no "filtered" block) are listed as such:
`python -m experiments.evaluate --workdir=<workdir>/seed<N> --variant=<variant>` adds it (cached features).

    python benchmarks/filter_baseline.py --workdir=work/synthetic --seeds=0,1,2 --variants=full,rank_lg_untrained

`--plot=FILE` also draws the first variant's four rows as bars per attribute (the main job writes the same
figure for Full as `<workdir>/eval/filter_baseline.png`).
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np

from fashionsearchnet_v2.configs import LABELS
from fashionsearchnet_v2.retrieval import search

LABELS_OF = dict(search.FILTER_ROWS)
ROWS = (
    *((name, LABELS_OF[name]) for name in ("manipulated", "unmanipulated", "filter_baseline", "filtered")),
    ("difference", "manipulated − filter baseline (paired)"),
)


def _results(workdir: str, seed: int, variant: str) -> dict | None:
    """One results.json, or None when absent; raises KeyError naming the file when it lacks the filter
    baseline."""
    path = os.path.join(workdir, f"seed{seed}", "eval", variant, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        r = json.load(f)
    if "filtered" not in r or "unmanipulated" not in r["filtered"]:
        raise KeyError(
            f"{path} was written before the filter baseline: python -m experiments.evaluate "
            f"--workdir={os.path.join(workdir, f'seed{seed}')} --variant={variant} adds it"
        )
    return r


def load(workdir: str, seed: int, variant: str, k: int) -> dict | None:
    """{row: {attribute | "avg": Top-k}} of one results.json (`search.filter_rows` and the paired
    difference), or None when absent."""
    r = _results(workdir, seed, variant)
    if r is None:
        return None
    rows = {name: {a: v[0] for a, v in row.items()} for name, row in search.filter_rows([r], k).items()}
    rows["difference"] = {
        a: None if v is None or rows["filter_baseline"][a] is None else v - rows["filter_baseline"][a]
        for a, v in rows["manipulated"].items()
    }
    return rows


def plot(workdir: str, seeds: list[int], variant: str, k: int, path: str) -> str:
    """`figures.plot_bars` of the four rows over the seeds that have results (the main job's figure)."""
    runs = [r for r in (_results(workdir, s, variant) for s in seeds) if r is not None]
    if not runs:
        raise KeyError(f"no {workdir}/seed<N>/eval/{variant}/results.json for seeds {seeds}")
    return search.plot_filter_baseline(
        runs, path, LABELS.get(variant, variant), runs[0].get("dataset", ""), k
    )


def _cell(values: list, sign: str = "") -> str:
    values = [v for v in values if v is not None]
    if not values:
        return ""
    std = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
    return f"{np.mean(values):{sign}.3f}{std}"


def table(workdir: str, seeds: list[int], variants: list[str], k: int) -> str:
    """Markdown, one block of rows per variant; mean ± sample std over the seeds that have results."""
    out = []
    for variant in variants:
        runs = {s: load(workdir, s, variant, k) for s in seeds}
        found = [s for s, r in runs.items() if r is not None]
        if not found:
            out.append(f"{LABELS.get(variant, variant)}: no results.json for seeds {seeds}\n")
            continue
        columns = list(runs[found[0]]["manipulated"])
        out.append(f"**{LABELS.get(variant, variant)}**, Top-{k}, seeds {', '.join(map(str, found))}\n")
        out.append("| row | " + " | ".join(columns) + " |")
        out.append("|---|" + "---:|" * len(columns))
        for name, text in ROWS:
            sign = "+" if name == "difference" else ""
            cells = [_cell([runs[s][name][c] for s in found], sign) for c in columns]
            out.append(f"| {text} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", required=True, help="holds seed<N>/eval/<variant>/results.json")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--variants", default="full,rank_lg_untrained", help="comma-separated variants")
    parser.add_argument("--k", type=int, default=20, help="the K of Top-K")
    parser.add_argument("--plot", default="", help="also write the first variant's bars as this PNG")
    args = parser.parse_args()
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        parser.error(f"--seeds: expected comma-separated integers, got {args.seeds!r}")
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    try:
        print(table(args.workdir, seeds, variants, args.k))
        if args.plot:
            print("wrote", plot(args.workdir, seeds, variants[0], args.k, args.plot))
    except KeyError as e:
        parser.exit(2, f"error: {e.args[0]}\n")


if __name__ == "__main__":
    main()
