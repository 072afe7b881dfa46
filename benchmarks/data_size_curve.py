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

import os
import subprocess
import sys

import numpy as np
from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from operating_points import load_row  # noqa: E402

DATA_DIRS = flags.DEFINE_list("data_dirs", None, "Converted datasets that differ only in training images.")
WORKDIR = flags.DEFINE_string("workdir", None, "Base directory of the runs.")
SEEDS = flags.DEFINE_list("seeds", ["0"], "Seeds.")
VARIANTS = flags.DEFINE_list("variants", ["wo_rank", "full"], "Table 1 rows (experiments.main --variants).")
K = flags.DEFINE_integer("k", 20, "Top-K read from results.json.")
PAPER_VALUE = flags.DEFINE_float("paper_value", None, "The paper's number, drawn as a horizontal line.")
PAPER_TRAIN = flags.DEFINE_integer("paper_train_images", None, "The paper's training-set size.")
PAPER_LABEL = flags.DEFINE_string("paper_label", "paper", "Legend of --paper_value.")
NOTE = flags.DEFINE_string("note", "", "Which copy of the data made the numbers (printed under the table).")
TABLE_ONLY = flags.DEFINE_bool("table_only", False, "Report the runs evaluated so far; train nothing.")
flags.mark_flags_as_required(["data_dirs", "workdir"])


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


def main(argv):
    recipe = argv[1:]
    seeds = [int(s) for s in SEEDS.value]
    runs = {}
    for data_dir in DATA_DIRS.value:
        n = train_images(data_dir)
        if n in runs:
            raise app.UsageError(f"--data_dirs: two datasets have {n} training images")
        runs[n] = os.path.join(WORKDIR.value, os.path.basename(os.path.normpath(data_dir)))
        done = all(load_row(runs[n], s, v, K.value) for s in seeds for v in VARIANTS.value)
        if done or TABLE_ONLY.value:
            continue
        cmd = [sys.executable, "-m", "experiments.main", f"--data_dir={os.path.abspath(data_dir)}",
               f"--workdir={os.path.abspath(runs[n])}", f"--seeds={','.join(map(str, seeds))}",
               f"--variants={','.join(VARIANTS.value)}", *recipe]  # fmt: skip
        print(f"[{n:,} training images] {' '.join(cmd[1:])}", flush=True)
        subprocess.run(cmd, check=True, cwd=REPO, env=dict(os.environ, PYTHONPATH=REPO))
    from fashionsearchnet_v2.retrieval import figures

    data = collect(runs, seeds, VARIANTS.value, K.value)
    sizes = sorted(runs)
    text = report(data, sizes, K.value, PAPER_VALUE.value, PAPER_TRAIN.value)
    if NOTE.value:
        text += f"\n\n{NOTE.value}"
    print(text)
    os.makedirs(WORKDIR.value, exist_ok=True)
    with open(os.path.join(WORKDIR.value, "data_size_curve.md"), "w", encoding="utf-8") as f:
        f.write(text + "\n")
    fits = {v: fit for v, d in data.items() if (fit := fit_log(d["avg"])) is not None}
    reference = None
    if PAPER_VALUE.value is not None:
        reference = (PAPER_LABEL.value, PAPER_VALUE.value, PAPER_TRAIN.value)
    png = figures.plot_data_size_curve({v: d["avg"] for v, d in data.items() if d["avg"]},
                                       os.path.join(WORKDIR.value, "data_size_curve.png"), fits=fits,
                                       reference=reference, title=f"Top-{K.value} against training-set size",
                                       ylabel=f"Top-{K.value} retrieval accuracy")  # fmt: skip
    print(f"wrote {png}")


if __name__ == "__main__":
    app.run(main)
