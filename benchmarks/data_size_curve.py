"""How much of the distance to the paper is data (issue 25, item 4): Table 1 rows trained on nested
training subsets (same query and gallery), their Top-K against the number of training images, and what a
fit in ln(n) says for a larger training set.

    python benchmarks/data_size_curve.py \\
        --data_dirs=data/celeba-train6679,data/celeba-train13358,data/celeba \\
        --workdir=work/celeba-size --seeds=0 --variants=wo_rank,full \\
        --paper_value=0.775 --paper_train_images=182599 --paper_label="paper, Full (CelebA)" \\
        -- --image_size=128 --epochs=2 --batch_norm --optimizer=adam --learning_rate=0.001

Everything after `--` goes to `experiments.main` unchanged (the recipe). Each dataset trains in
`<workdir>/<basename of its data_dir>` (rerunning resumes, and a seed whose rows are all evaluated is not
run again); the table goes to `<workdir>/data_size_curve.md` and the figure to `<workdir>/data_size_curve.png`.
The subsets come from `data_prep.subset` (nested training images, the query and gallery bytes unchanged).

The fit is y = a + b·ln(n) over every seed's point. Its value at --paper_train_images is an extrapolation
beyond the data; the range printed beside it is the spread of the same fit leaving out one training-set
size at a time, which says how much the extrapolation rests on any one point, not a confidence interval.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from operating_points import load_row  # noqa: E402


def fit_log(points: dict[int, list[float]]) -> tuple[float, float] | None:
    """Least squares y = a + b·ln(n) over every (n, value) pair; None with fewer than two sizes."""
    pairs = [(n, v) for n, values in points.items() for v in values]
    if len({n for n, _ in pairs}) < 2:
        return None
    x = np.log([n for n, _ in pairs])
    y = np.array([v for _, v in pairs])
    b, a = np.polyfit(x, y, 1)
    return float(a), float(b)


def extrapolate(points: dict[int, list[float]], n: int) -> tuple[float, float, float] | None:
    """(fit at n, lowest and highest fit at n leaving one training-set size out); None without a fit.

    With only two sizes, leaving one out leaves no fit: the range is then the fit itself."""
    fit = fit_log(points)
    if fit is None:
        return None
    at = fit[0] + fit[1] * np.log(n)
    loo = []
    for drop in points:
        f = fit_log({m: v for m, v in points.items() if m != drop})
        if f is not None:
            loo.append(f[0] + f[1] * np.log(n))
    loo = loo or [at]
    return float(at), float(min(loo)), float(max(loo))


def collect(runs: dict[int, str], seeds: list[int], variants: list[str], k: int) -> dict:
    """variant -> {"avg": {n: [per seed]}, "gain": {n: [per seed]}} from each run's results.json."""
    out = {v: {"avg": {}, "gain": {}} for v in variants}
    for n, workdir in sorted(runs.items()):
        for v in variants:
            rows = [load_row(workdir, s, v, k) for s in seeds]
            rows = [r for r in rows if r is not None]
            if rows:
                out[v]["avg"][n] = [r["avg"] for r in rows]
                out[v]["gain"][n] = [r["gain"] for r in rows]
    return out


def _cell(values: list[float], sign: str = "") -> str:
    if not values:
        return "not run"
    std = f" ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else ""
    return f"{np.mean(values):{sign}.3f}{std} ({len(values)} seed{'s' if len(values) > 1 else ''})"


def report(data: dict, sizes: list[int], k: int, paper_value=None, paper_train=None) -> str:
    lines = [f"| row | training images | Top-{k} avg | gain |", "|---|---:|---:|---:|"]
    for v, d in data.items():
        for n in sizes:
            lines.append(
                f"| {v} | {n:,} | {_cell(d['avg'].get(n, []))} | {_cell(d['gain'].get(n, []), '+')} |"
            )
    lines.append("")
    for v, d in data.items():
        fit = fit_log(d["avg"])
        if fit is None:
            lines.append(f"- {v}: fewer than two training-set sizes evaluated, no fit.")
            continue
        text = (
            f"- {v}: Top-{k} avg = {fit[0]:.3f} + {fit[1]:.4f}·ln(n), {fit[1] * np.log(2):+.3f} per doubling"
        )
        if paper_train:
            at, lo, hi = extrapolate(d["avg"], paper_train)
            text += (f"; at {paper_train:,} images {at:.3f} (leaving one size out: {lo:.3f}-{hi:.3f}), "
                     f"{paper_train / max(sizes):.1f}x the largest size run")  # fmt: skip
            if paper_value is not None:
                text += f"; the paper: {paper_value:.3f}"
        lines.append(text + ".")
    return "\n".join(lines)


def train_images(data_dir: str) -> int:
    from fashionsearchnet_v2.data import schema

    return int(schema.load_dataset_info(data_dir).splits["train"])


def parse_args(argv=None) -> tuple[argparse.Namespace, list[str]]:
    """(options, the recipe: everything after `--`, passed to experiments.main unchanged)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    recipe = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--data_dirs", required=True, help="Comma-separated datasets that differ only in training images."
    )
    p.add_argument("--workdir", required=True, help="Base directory of the runs.")
    p.add_argument("--seeds", default="0", help="Comma-separated seeds.")
    p.add_argument("--variants", default="wo_rank,full", help="Table 1 rows (experiments.main --variants).")
    p.add_argument("--k", type=int, default=20, help="Top-K read from results.json.")
    p.add_argument("--paper_value", type=float, default=None, help="The paper's number, a horizontal line.")
    p.add_argument("--paper_train_images", type=int, default=None, help="The paper's training-set size.")
    p.add_argument("--paper_label", default="paper", help="Legend of --paper_value.")
    p.add_argument("--note", default="", help="Which copy of the data made the numbers (under the table).")
    p.add_argument(
        "--table_only", action="store_true", help="Report the runs evaluated so far; train nothing."
    )
    return p.parse_args(argv), recipe


def main(argv=None):
    args, recipe = parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = args.variants.split(",")
    runs = {}
    for data_dir in args.data_dirs.split(","):
        n = train_images(data_dir)
        if n in runs:
            raise SystemExit(f"error: --data_dirs: two datasets have {n} training images")
        runs[n] = os.path.join(args.workdir, os.path.basename(os.path.normpath(data_dir)))
        done = all(load_row(runs[n], s, v, args.k) for s in seeds for v in variants)
        if done or args.table_only:
            continue
        cmd = [sys.executable, "-m", "experiments.main", f"--data_dir={os.path.abspath(data_dir)}",
               f"--workdir={os.path.abspath(runs[n])}", f"--seeds={','.join(map(str, seeds))}",
               f"--variants={','.join(variants)}", *recipe]  # fmt: skip
        print(f"[{n:,} training images] {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    from fashionsearchnet_v2.retrieval import figures

    data = collect(runs, seeds, variants, args.k)
    text = report(data, sorted(runs), args.k, args.paper_value, args.paper_train_images)
    if args.note:
        text += f"\n\n{args.note}"
    print(text)
    os.makedirs(args.workdir, exist_ok=True)
    with open(os.path.join(args.workdir, "data_size_curve.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    fits = {v: fit for v, d in data.items() if (fit := fit_log(d["avg"])) is not None}
    reference = None
    if args.paper_value is not None:
        reference = (args.paper_label, args.paper_value, args.paper_train_images)
    png = figures.plot_data_size_curve({v: d["avg"] for v, d in data.items() if d["avg"]},
                                       os.path.join(args.workdir, "data_size_curve.png"), fits=fits,
                                       reference=reference, title=f"Top-{args.k} against training-set size",
                                       ylabel=f"Top-{args.k} retrieval accuracy")  # fmt: skip
    print(f"wrote {png}")


if __name__ == "__main__":
    main()
