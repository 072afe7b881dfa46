"""How stage 1 starts from the ImageNet weights (issue 17, item 4): first-step loss, overshoot, divergence.

Trains stage 1 through the project's own code (`training.run.run_stage1`: the real-data defaults, plain
SGD at the paper's lr 0.01, LRN, no BatchNorm, `--alexnet_weights` for conv1-conv4) for `--steps` steps per
seed, image size and start, each in a fresh temporary work directory, and prints per run: the first step's
loss against chance (Σ_a ln C_a, a uniform prediction), the largest loss of the run and its step, the loss
at step 20, the mean of the last 20 steps, and whether the divergence guard stopped it. Starts:

  paper         the paper's start: the rate at 0.01 from the first step (no warm-up), glorot w_a
  default       this project's default start: the rate warms up over 100 steps (WORKSPACE.md decision 64)
  warmup30      a 30-step warm-up
  zeros         w_a start at zero (a first loss of exactly chance), no warm-up
  zeros_warmup  w_a at zero and the 100-step warm-up

    python benchmarks/imagenet_start.py --data_dir=data/fashion_product \\
        --alexnet_weights=../shared/weights/alexnet-imagenet-lossy/bvlc_alexnet.npy \\
        --image_sizes=128,227 --seeds=0,1,2,3,4 --starts=paper,default --steps=200

Losses do not depend on the machine's load; the seconds do (they are printed for orientation only).
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import re
import tempfile
import time

import fashionsearchnet_v2  # noqa: F401  (oneDNN on before TensorFlow loads)
from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.training import guard, run

# TrainConfig fields of each start; "default" keeps the dataset's defaults (decision 64: a 100-step
# warm-up, glorot w_a). The others are the candidates decision 64 compared.
STARTS = {
    "paper": {"warmup_steps": 0},
    "default": {},
    "warmup30": {"warmup_steps": 30},
    "zeros": {"warmup_steps": 0, "classifier_init": "zeros"},
    "zeros_warmup": {"classifier_init": "zeros"},
}
_STEP = re.compile(r"\[stage1\] step (\d+)/\d+ .*?\bloss ([0-9.eE+-]+|nan|inf)")


def chance_loss(num_values) -> float:
    """L_C of a uniform prediction: Σ_a ln C_a."""
    return float(sum(math.log(n) for n in num_values))


def losses_from_log(text: str) -> list[tuple[int, float]]:
    """(step, loss) of every progress line of a stage-1 log (logged every step here)."""
    return [(int(m.group(1)), float(m.group(2))) for m in _STEP.finditer(text)]


def one_run(info, data_dir, weights, size, seed, start, steps, precision) -> dict:
    model_cfg, train_cfg, stage3_cfg = configs.dataset_defaults(info.name)
    train_cfg = dataclasses.replace(
        train_cfg,
        **STARTS[start],
        seed=seed,
        max_steps=steps,
        log_every_steps=1,
        checkpoint_every_steps=10**9,
        heldout_images=0,  # the held-out monitor reads the gallery: not needed here
        summary_images=0,
        precision=precision,
    )
    with tempfile.TemporaryDirectory() as workdir:
        cfg = configs.ExperimentConfig(
            dataset=info.name, data_dir=data_dir, workdir=workdir, stage="stage1", variant="rank_l",
            model=dataclasses.replace(model_cfg, image_size=size), train=train_cfg, stage3=stage3_cfg,
            alexnet_weights=weights,
        )  # fmt: skip
        log = io.StringIO()
        t0 = time.time()
        stopped = ""
        try:
            run.run_stage1(cfg, info, out=log)
        except guard.DivergenceError as e:
            stopped = str(e).splitlines()[0]
        seconds = time.time() - t0
    values = losses_from_log(log.getvalue())
    if not values:
        raise SystemExit(f"error: no progress line in the stage-1 log:\n{log.getvalue()}")
    peak_step, peak = max(values, key=lambda v: v[1] if math.isfinite(v[1]) else float("inf"))
    tail = [v for _, v in values[-20:]]
    at20 = dict(values).get(20)
    return {
        "image_size": size, "seed": seed, "start": start, "steps": len(values),
        "first": values[0][1], "max": peak, "max_step": peak_step, "at20": at20,
        "last20": sum(tail) / len(tail), "stopped": stopped, "seconds": round(seconds, 1),
    }  # fmt: skip


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--alexnet_weights", required=True)
    p.add_argument("--image_sizes", default="128,227")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--starts", default="paper,default")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--precision", default="auto", help="auto, float32 or bfloat16 (the stage's own flag)")
    p.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = p.parse_args()
    starts = args.starts.split(",")
    unknown = [s for s in starts if s not in STARTS]
    if unknown:
        raise SystemExit(f"error: --starts: unknown {unknown}; choose from {', '.join(STARTS)}")
    info = schema.load_dataset_info(args.data_dir)
    chance = chance_loss(info.num_values)
    print(f"{info.name}: chance L_C = Σ ln C_a = {chance:.2f}; {args.steps} steps of SGD at lr 0.01 per run")
    print(
        "| size | start | seed | first-step loss | max loss (step) | loss at step 20 | mean of last 20 | stopped | s |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---|---:|")
    rows = []
    for size in (int(s) for s in args.image_sizes.split(",")):
        for start in starts:
            for seed in (int(s) for s in args.seeds.split(",")):
                r = one_run(
                    info, args.data_dir, args.alexnet_weights, size, seed, start, args.steps, args.precision
                )
                rows.append(r)
                at20 = "-" if r["at20"] is None else f"{r['at20']:.2f}"
                print(
                    f"| {size} | {start} | {seed} | {r['first']:.2f} | {r['max']:.2f} ({r['max_step']}) | "
                    f"{at20} | {r['last20']:.2f} | {r['stopped'] or 'no'} | {r['seconds']:.0f} |",
                    flush=True,
                )
    print("\nper size and start: first-step loss / chance, runs whose max exceeds 2x chance, runs stopped")
    for size in sorted({r["image_size"] for r in rows}):
        for start in starts:
            rs = [r for r in rows if r["image_size"] == size and r["start"] == start]
            first = sum(r["first"] for r in rs) / len(rs)
            over = sum(r["max"] > 2 * chance for r in rs)
            stopped = sum(bool(r["stopped"]) for r in rs)
            last = sum(r["last20"] for r in rs) / len(rs)
            print(
                f"  {size} px {start:8s}: first {first:.2f} = {first / chance:.2f}x chance; "
                f"max > 2x chance in {over}/{len(rs)}; stopped {stopped}/{len(rs)}; mean of last 20 {last:.2f}"
            )
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"chance": chance, "steps": args.steps, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
