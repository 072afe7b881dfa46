"""Two runs of Table 1 side by side, and what each stage of a run cost (issue 17).

Reads each row's `seed<N>/eval/<variant>/results.json` of two ablation work directories (say the
paper's operating point, 227 px and 12 + 12 + 2 epochs, against the 128 px, 3-epoch run) and prints per
row the Top-K avg and the manipulation gain of both, and their paired difference on the same seed.
A row or seed missing from the second run is shown as such, never filled in.

`--times` adds the stage table of the first run, from the TensorBoard event files each stage wrote:
one line per process that trained it (a stage resumed after a kill has several), its first and last
logged step, the wall time between them and images/s (steps x batch size / wall time), and the stage's
sum. Event files hold no memory figures; peak memory comes from the run's own monitor (docs/results.md).

    python benchmarks/operating_points.py --a=work/fashion_product-paper --b=work/fashion_product-imagenet \
        --seeds=0 --times
"""

from __future__ import annotations

import argparse
import glob
import json
import os

from fashionsearchnet_v2.configs import LABELS

# Table 1's rows that a run of experiments.ablation can hold, in the paper's order.
VARIANTS = ("wo_rank", "rank", "rank_l", "rank_lg_untrained", "rank_lg", "full")


def load_row(workdir: str, seed: int, variant: str, k: int) -> dict | None:
    """{"avg", "gain", "attributes": {a: Top-k}, "gains": {a: gain}} or None when not evaluated."""
    path = os.path.join(workdir, f"seed{seed}", "eval", variant, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        r = json.load(f)
    top, gain = r["topk"][str(k)], r["gain"]["topk"][str(k)]
    attrs = [a for a in top if a not in ("avg", "all")]
    return {
        "avg": top["avg"],
        "gain": gain["avg"],
        "attributes": {a: top[a] for a in attrs},
        "gains": {a: gain[a] for a in attrs},
    }


def comparison(a: str, b: str, seeds: list[int], k: int, variants=VARIANTS) -> str:
    """Markdown: per row and seed, Top-k avg and gain of run a, of run b, and a − b."""
    lines = [
        f"| Approach | seed | A: Top-{k} avg | B: Top-{k} avg | A − B | A: gain | B: gain | A − B |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for v in variants:
        for s in seeds:
            ra, rb = load_row(a, s, v, k), load_row(b, s, v, k)
            if ra is None:
                continue
            if rb is None:
                lines.append(
                    f"| {LABELS[v]} | {s} | {ra['avg']:.3f} | no results.json | | {ra['gain']:+.3f} | no results.json | |"
                )
                continue
            lines.append(
                f"| {LABELS[v]} | {s} | {ra['avg']:.3f} | {rb['avg']:.3f} | {ra['avg'] - rb['avg']:+.3f} "
                f"| {ra['gain']:+.3f} | {rb['gain']:+.3f} | {ra['gain'] - rb['gain']:+.3f} |"
            )
    return "\n".join(lines)


def attribute_gains(a: str, b: str, seed: int, variant: str, k: int) -> str:
    """Markdown: one row's manipulation gain per attribute in both runs."""
    ra, rb = load_row(a, seed, variant, k), load_row(b, seed, variant, k)
    if ra is None or rb is None:
        return f"({LABELS[variant]}, seed {seed}: not in both runs)"
    attrs = list(ra["gains"])
    lines = [
        f"| {LABELS[variant]}, seed {seed} | " + " | ".join(attrs) + " |",
        "|---|" + "---:|" * len(attrs),
        "| A: gain | " + " | ".join(f"{ra['gains'][x]:+.3f}" for x in attrs) + " |",
        "| B: gain | " + " | ".join(f"{rb['gains'][x]:+.3f}" for x in attrs) + " |",
        "| A − B | " + " | ".join(f"{ra['gains'][x] - rb['gains'][x]:+.3f}" for x in attrs) + " |",
    ]
    return "\n".join(lines)


def segments(stage_dir: str, step_tag: str) -> list[tuple[int, int, float]]:
    """[(first step, last step, wall seconds)] of the logged `step_tag` scalar, one per event file."""
    import tensorflow as tf  # only --times needs it

    out = []
    for path in sorted(glob.glob(os.path.join(stage_dir, "tb", "events.out.tfevents.*"))):
        points = [
            (e.step, e.wall_time)
            for e in tf.compat.v1.train.summary_iterator(path)
            if any(v.tag == step_tag for v in e.summary.value)
        ]
        if len(points) >= 2:
            out.append((points[0][0], points[-1][0], points[-1][1] - points[0][1]))
    return out


def stage_times(workdir: str, seed: int) -> str:
    """Markdown: per stage directory and process, the steps it logged, its wall time and images/s."""
    lines = ["| stage | process | steps logged | wall time | images/s |", "|---|---:|---|---:|---:|"]
    seed_dir = os.path.join(workdir, f"seed{seed}")
    for stage_dir in sorted(glob.glob(os.path.join(seed_dir, "stage*"))):
        name = os.path.basename(stage_dir)
        cfg_path = os.path.join(stage_dir, "config.json")
        if not os.path.isfile(cfg_path) or not name.startswith(("stage1", "stage2")):
            continue  # stage 3 trains on cached features in seconds; its log has its time
        with open(cfg_path, encoding="utf-8") as f:
            batch = json.load(f)["train"]["batch_size"]
        segs = segments(stage_dir, "L_C")
        total_steps = total_wall = 0.0
        for i, (first, last, wall) in enumerate(segs, 1):
            # the first logged step is the end of the first logging window: the time before it is
            # tracing and input start-up, not counted, so the rate is of the steps in between
            steps = last - first
            total_steps, total_wall = total_steps + steps, total_wall + wall
            lines.append(f"| {name} | {i} | {first}-{last} | {fmt(wall)} | {steps * batch / wall:.1f} |")
        if len(segs) > 1:
            lines.append(f"| {name} | all | | {fmt(total_wall)} | {total_steps * batch / total_wall:.1f} |")
    return "\n".join(lines)


def fmt(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--a", required=True, help="ablation work directory A (e.g. the 227 px run)")
    p.add_argument("--b", required=True, help="ablation work directory B, compared with A")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--times", action="store_true", help="also A's stage times from its event files")
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"A = {args.a}\nB = {args.b}\n")
    print(comparison(args.a, args.b, seeds, args.k))
    for v in VARIANTS:
        for s in seeds:
            if load_row(args.a, s, v, args.k) is not None:
                print()
                print(attribute_gains(args.a, args.b, s, v, args.k))
    if args.times:
        for s in seeds:
            print(f"\nstage times of A, seed {s}:")
            print(stage_times(args.a, s))


if __name__ == "__main__":
    main()
