"""Profile of the training step: stage 1 and stage 2 against the bare backbone, traced, top ops printed.

Issue 26, item 1. For each network and precision this runs `bench_train.py` (each row in its own
process, the step exactly as the trainer runs it) with `--profile_dir`, so every row leaves a TensorBoard
profiler trace (`<out_dir>/<network>/<row>-memory-<precision>-<size>px/`, open with
`tensorboard --logdir=<out_dir>` and the Profile tab) and prints its top ops by group and op type
(`trace_ops.py`). Networks:

* `main`: the embedded default's (the main job's): 128 px, BatchNorm, no LRN, Adam at 1e-3, its six
  attributes' value counts (8, 4, 4, 3, 4, 4);
* `paper`: the paper's: 227 px, LRN, no BatchNorm, SGD (lr 0.001 so random data stays finite), DARN's
  nine attributes' value counts.

Then a summary: ms per step of every row, stage 1's and stage 2's ratio to the bare backbone (issue 26's
goals: stage 1 <= 1.1x, stage 2 <= 1.3x in bfloat16) and the largest op groups of stage 2.
Arguments after `--` go to every `bench_train.py` run (e.g. `-- --fused_update=no` for the step before
issue 26's fused update). Run it with nothing else running:

    python benchmarks/profile_step.py --out_dir=/tmp/profile                 # both networks, ~20 min
    python benchmarks/profile_step.py --networks=main --precisions=bfloat16 --steps=10
"""

import argparse
import json
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
NETWORKS = {
    "main": [
        "--image_size=128", "--batch_norm", "--no_lrn", "--optimizer=adam", "--learning_rate=0.001",
        "--num_values=8,4,4,3,4,4",
    ],
    "paper": ["--image_size=227", "--optimizer=sgd", "--learning_rate=0.001", "--num_attributes=9"],
}  # fmt: skip
GOALS = {"stage1": 1.1, "stage2": 1.3}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out_dir", default="profile_step", help="traces and JSON results go here")
    p.add_argument("--networks", default="main,paper")
    p.add_argument("--precisions", default="float32,bfloat16")
    p.add_argument("--rows", default="baseline,stage1,stage2")
    p.add_argument("--steps", type=int, default=12, help="timed steps per row")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--profile_steps", type=int, default=5)
    p.add_argument("--rounds", type=int, default=1)
    args, extra = p.parse_known_args(argv)
    extra = [a for a in extra if a != "--"]
    bad = sorted(set(args.networks.split(",")) - set(NETWORKS))
    if bad:
        p.error(f"unknown --networks {bad}; valid: {', '.join(NETWORKS)}")
    return args, extra


def run(args, extra) -> dict:
    results = {}
    for network in args.networks.split(","):
        out = os.path.join(args.out_dir, network)
        os.makedirs(out, exist_ok=True)
        json_path = os.path.join(out, "bench_train.json")
        cmd = [
            sys.executable, os.path.join(HERE, "bench_train.py"), *NETWORKS[network],
            f"--rows={args.rows}", f"--precisions={args.precisions}", f"--steps={args.steps}",
            f"--warmup={args.warmup}", f"--rounds={args.rounds}", f"--profile_dir={out}",
            f"--profile_steps={args.profile_steps}", f"--json={json_path}", *extra,
        ]  # fmt: skip
        print("$ " + " ".join(cmd[1:]), flush=True)
        proc = subprocess.run(cmd, check=False)
        if proc.returncode or not os.path.isfile(json_path):
            print(f"{network}: bench_train.py failed (exit {proc.returncode})", flush=True)
            continue
        with open(json_path, encoding="utf-8") as f:
            results[network] = json.load(f)["rows"]
    return results


def summary(results: dict) -> str:
    lines = [
        "| network | precision | row | ms/step | vs bare backbone | goal | largest op groups (share of op time) |",
        "|---|---|---|---:|---:|---:|---|",
    ]
    for network, rows in results.items():
        base = {r["precision"]: r["step_ms"] for r in rows if r["row"] == "baseline" and "error" not in r}
        for r in rows:
            if "error" in r:
                lines.append(f"| {network} | {r['precision']} | {r['row']} | failed | | | |")
                continue
            ratio = r["step_ms"] / base[r["precision"]] if r["precision"] in base else float("nan")
            goal = GOALS.get(r["row"])
            verdict = "" if goal is None else f"≤ {goal} {'met' if ratio <= goal else 'NOT met'}"
            top = ", ".join(f"{g} {100 * s:.0f}%" for g, _, s in r.get("profile", {}).get("groups", [])[:5])
            lines.append(
                f"| {network} | {r['precision']} | {r['row']} | {r['step_ms']:.1f} | {ratio:.2f} | {verdict} | {top} |"
            )
    return "\n".join(lines)


def main(argv=None) -> int:
    args, extra = parse_args(argv)
    results = run(args, extra)
    print()
    print(summary(results))
    with open(os.path.join(args.out_dir, "summary.json"), "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "extra": extra, "results": results}, f, indent=2)
    return 0 if len(results) == len(args.networks.split(",")) else 1


if __name__ == "__main__":
    sys.exit(main())
