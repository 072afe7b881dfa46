"""Accuracy parity of bfloat16 against float32 training (issue 16, item 4), from two main-job runs.

Reads each seed's `eval/<variant>/results.json` of two work directories (the main job run with
`--precision=float32` and with `--precision=bfloat16`, the same seeds) and prints, for the variant
(default Full): Top-20 avg and every attribute's manipulation gain at Top-20, mean ± std over the seeds
in each precision, the paired per-seed differences (bfloat16 − float32) and whether bfloat16's Top-20 avg
lies within the float32 seeds' spread (its mean within float32's mean ± std, and within their range).

    python -m experiments.main --seeds=0,1,2 --precision=float32 --workdir=work/synthetic
    python -m experiments.main --seeds=0,1,2 --precision=bfloat16 --workdir=work/synthetic-bf16
    python benchmarks/precision_parity.py --float32=work/synthetic --bfloat16=work/synthetic-bf16

Any two versions of the main job pair the same way (issue 26: before and after a speed change), for
each of `--variants`:

    python benchmarks/precision_parity.py --a=work/before --b=work/after --labels=before,after \
        --variants=full,rank_lg_untrained
"""

from __future__ import annotations

import argparse
import json
import os

import numpy as np


def load(workdir: str, seeds: list[int], variant: str, k: int) -> dict[int, dict]:
    """{seed: {"avg": Top-k avg, "gain": {attribute: gain at Top-k}, "precision": str}}."""
    out = {}
    for seed in seeds:
        seed_dir = os.path.join(workdir, f"seed{seed}")
        path = os.path.join(seed_dir, "eval", variant, "results.json")
        if not os.path.isfile(path):
            raise SystemExit(f"error: {path} does not exist: run the main job for seed {seed} first")
        with open(path, encoding="utf-8") as f:
            r = json.load(f)
        gain = {a: v for a, v in r["gain"]["topk"][str(k)].items() if a not in ("avg", "all")}
        with open(os.path.join(seed_dir, "stage2_rank_l", "config.json"), encoding="utf-8") as f:
            precision = json.load(f)["train"]["precision"]
        out[seed] = {"avg": r["topk"][str(k)]["avg"], "gain": gain, "precision": precision}
    return out


def mean_std(values) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def signed(values) -> str:
    v = np.asarray(values, float)
    return f"{v.mean():+.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"


def table(f32: dict, bf16: dict, seeds: list[int], k: int, labels=("float32", "bfloat16")) -> str:
    attrs = list(f32[seeds[0]]["gain"])
    rows = [(f"Top-{k} avg", lambda r: r["avg"])] + [
        (f"gain {a}", lambda r, a=a: r["gain"][a]) for a in attrs
    ]
    head = (
        f"| metric | {labels[0]} | {labels[1]} | "
        + " | ".join(f"Δ seed {s}" for s in seeds)
        + " | Δ mean ± std |"
    )
    lines = [head, "|---|---:|---:|" + "---:|" * len(seeds) + "---:|"]
    for name, get in rows:
        a = [get(f32[s]) for s in seeds]
        b = [get(bf16[s]) for s in seeds]
        d = [y - x for x, y in zip(a, b)]
        lines.append(
            f"| {name} | {mean_std(a)} | {mean_std(b)} | "
            + " | ".join(f"{x:+.3f}" for x in d)
            + f" | {signed(d)} |"
        )
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--float32", help="work directory of the float32 main job")
    p.add_argument("--bfloat16", help="work directory of the bfloat16 main job")
    p.add_argument("--a", help="instead of --float32/--bfloat16: any two main jobs' work directories")
    p.add_argument("--b")
    p.add_argument("--labels", default="a,b", help="names of --a and --b in the table")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--variant", default="full")
    p.add_argument("--variants", default="", help="several variants, one table each (default: --variant)")
    p.add_argument("--k", type=int, default=20)
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.a or args.b:
        if not (args.a and args.b):
            p.error("--a and --b go together")
        labels = tuple(args.labels.split(","))
        for variant in (args.variants or args.variant).split(","):
            a_runs, b_runs = load(args.a, seeds, variant, args.k), load(args.b, seeds, variant, args.k)
            print(f"{variant}, seeds {args.seeds}: {args.a} ({labels[0]}) vs {args.b} ({labels[1]})\n")
            print(table(a_runs, b_runs, seeds, args.k, labels))
            a = np.array([a_runs[s]["avg"] for s in seeds])
            b = np.array([b_runs[s]["avg"] for s in seeds])
            sd = a.std(ddof=1) if len(a) > 1 else 0.0
            print(f"\n{labels[1]}'s Top-{args.k} avg {b.mean():.3f}: {labels[0]} {a.mean():.3f} ± {sd:.3f} "
                  f"(range {a.min():.3f}-{a.max():.3f}); within one std: {'yes' if abs(b.mean() - a.mean()) <= sd else 'NO'}\n")  # fmt: skip
        return
    if not (args.float32 and args.bfloat16):
        p.error("give --float32 and --bfloat16, or --a and --b")
    f32 = load(args.float32, seeds, args.variant, args.k)
    bf16 = load(args.bfloat16, seeds, args.variant, args.k)
    for name, runs, want in (("--float32", f32, "float32"), ("--bfloat16", bf16, "bfloat16")):
        got = {s: r["precision"] for s, r in runs.items() if r["precision"] != want}
        if got:
            raise SystemExit(f"error: {name} trained in another precision: {got}")
    print(f"{args.variant}, seeds {args.seeds}: {args.float32} (float32) vs {args.bfloat16} (bfloat16)\n")
    print(table(f32, bf16, seeds, args.k))
    a = np.array([f32[s]["avg"] for s in seeds])
    b = np.array([bf16[s]["avg"] for s in seeds])
    sd = a.std(ddof=1) if len(a) > 1 else 0.0
    within_sd = abs(b.mean() - a.mean()) <= sd
    within_range = a.min() <= b.mean() <= a.max()
    print(
        f"\nbfloat16's Top-{args.k} avg {b.mean():.3f}: float32 {a.mean():.3f} ± {sd:.3f} (range "
        f"{a.min():.3f}-{a.max():.3f}); within one std: {'yes' if within_sd else 'NO'}, within the "
        f"range: {'yes' if within_range else 'NO'}"
    )
    low = {
        a_: min(bf16[s]["gain"][a_] for s in seeds) for a_ in bf16[seeds[0]]["gain"]
    }  # smallest gain of any seed
    mean_gain = {a_: np.mean([bf16[s]["gain"][a_] for s in seeds]) for a_ in low}
    print(
        f"bfloat16 gains at Top-{args.k}, mean (lowest seed): "
        + ", ".join(f"{a_} {mean_gain[a_]:+.3f} ({low[a_]:+.3f})" for a_ in low)
    )


if __name__ == "__main__":
    main()
