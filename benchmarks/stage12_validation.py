"""Compares settings of stages 1 and 2 (a schedule, a batch size, a learning rate) on the validation split
(decision 59), with the carve left out of their training (`--exclude_validation`, decision 72): the way
a choice of stages 1-2 is made without query or gallery, and without the carve flattering the longer
schedule (decision 12).

    python benchmarks/stage12_validation.py --data_dir=data/synthetic --workdir=work/schedule-validation \\
        --arm="epochs3=--epochs=3" --arm="epochs4=--epochs=4" --arm="epochs6=--epochs=6" --seeds=0,1 \\
        --flags="--image_size=128 --batch_norm --optimizer=adam --learning_rate=0.001"

Each arm is `NAME=FLAGS` (the flags of `experiments.stage1`/`stage2`, space-separated); `--flags` go to
every arm. For each seed and arm it trains stage 1 and stage 2 (Rank-L) with the project's own commands
in `<workdir>/<arm>/seed<N>` (rerunning resumes them), scores Rank-L on the validation split
(`evaluation.validate_stage2`: Top-K at Top-20's share of the gallery, with the unmanipulated query)
into `validation_rank_l.json` there, and prints the table with each arm's paired difference per seed
against the first arm; `<workdir>/stage12_validation.md` gets every run scored there so far.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import paired  # noqa: E402

SCORES = "validation_rank_l.json"
DATA_DIR = flags.DEFINE_string("data_dir", None, "Converted dataset.")
WORKDIR = flags.DEFINE_string("workdir", None, "Base directory of the runs.")
ARMS = flags.DEFINE_multi_string(
    "arm", [], "NAME=FLAGS, one per setting compared; the first is the baseline."
)
COMMON = flags.DEFINE_string("flags", "", "Flags of stages 1 and 2 for every arm (space-separated).")
SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds.")
TABLE_ONLY = flags.DEFINE_bool(
    "table_only", False, "Print the table of the runs scored so far; train nothing."
)
flags.mark_flags_as_required(["data_dir", "workdir"])


def parse_arms(specs: list[str]) -> dict[str, list[str]]:
    """["epochs4=--epochs=4 --batch_size=64", ...] -> {name: flags}, in the order given."""
    arms: dict[str, list[str]] = {}
    for spec in specs:
        name, sep, rest = spec.partition("=")
        if not sep or not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"--arm {spec!r}: expected NAME=FLAGS, NAME of letters, digits, . _ -")
        if name in arms:
            raise ValueError(f"--arm {name!r} is given twice")
        words = shlex.split(rest)
        if any(not w.startswith("--") for w in words):
            raise ValueError(f"--arm {spec!r}: its flags must each start with -- (got {words})")
        arms[name] = words
    if not arms:
        raise ValueError("give at least one --arm=NAME=FLAGS")
    return arms


def stage_commands(
    data_dir: str, workdir: str, arm: list[str], common: list[str], seed: int
) -> list[list[str]]:
    """The two command lines of one run: stage 1, then stage 2 (Rank-L), both leaving the carve out."""
    args = [f"--data_dir={data_dir}", f"--workdir={workdir}", f"--seed={seed}", "--exclude_validation",
            *common, *arm]  # fmt: skip
    return [[sys.executable, "-m", "experiments.stage1", *args],
            [sys.executable, "-m", "experiments.stage2", "--variant=rank_l", *args]]  # fmt: skip


def table(scored: dict, arms: list[str], names: list[str]) -> str:
    """One row per run (`scored`: {(arm, seed): validation results}), then each arm's paired difference
    in validation Top-K avg against the first arm, seed by seed."""
    lines = ["| arm | seed | " + " | ".join(names) + " | avg | unmanipulated | gain |",
             "|---|---:|" + "---:|" * (len(names) + 3)]  # fmt: skip
    for (arm, seed), r in sorted(scored.items(), key=lambda kv: (arms.index(kv[0][0]), kv[0][1])):
        k = str(r["k"])
        top, base = r["topk"][k], r["unmanipulated"]["topk"][k]
        cells = ["–" if top.get(n) is None else f"{top[n]:.3f}" for n in names]
        cells += [f"{top['avg']:.3f}", f"{base['avg']:.3f}", f"{r['gain']['topk'][k]['avg']:+.3f}"]
        lines.append(f"| {arm} | {seed} | " + " | ".join(cells) + " |")
    seeds = sorted({s for _, s in scored})
    for arm in arms[1:]:
        pairs = [(scored.get((arms[0], seed)), scored.get((arm, seed))) for seed in seeds]
        summary = paired.paired_summary(pairs, " (one seed: no spread)")
        if summary:
            lines.append(f"\n{arm} − {arms[0]}, validation Top-K avg, {summary}")
    return "\n".join(lines)


def scored_runs(workdir: str, arms: list[str]) -> dict:
    """Every run of `arms` scored under `workdir`, whichever command scored it."""
    found = {}
    for arm in arms:
        base = os.path.join(workdir, arm)
        for seed_dir in sorted(os.listdir(base)) if os.path.isdir(base) else []:
            path = os.path.join(base, seed_dir, SCORES)
            if re.fullmatch(r"seed\d+", seed_dir) and os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    found[(arm, int(seed_dir[4:]))] = json.load(f)
    return found


def main(argv):
    del argv
    from fashionsearchnet_v2.data import schema
    from fashionsearchnet_v2.retrieval import evaluation

    try:
        arms = parse_arms(ARMS.value)
    except ValueError as e:
        raise app.UsageError(str(e)) from None
    info = schema.load_dataset_info(DATA_DIR.value)
    common = shlex.split(COMMON.value)
    env = dict(os.environ, PYTHONPATH=REPO)
    for seed in (int(s) for s in SEEDS.value):  # seed by seed: a stopped study has complete pairs first
        for arm, arm_flags in arms.items():
            run_dir = os.path.join(WORKDIR.value, arm, f"seed{seed}")
            path = os.path.join(run_dir, SCORES)
            if os.path.isfile(path) or TABLE_ONLY.value:
                continue
            for cmd in stage_commands(DATA_DIR.value, os.path.dirname(run_dir), arm_flags, common, seed):
                print(f"[{arm} seed {seed}] {' '.join(cmd[2:4])}", flush=True)
                subprocess.run(cmd, check=True, env=env, cwd=REPO)
            evaluation.write_json(path, evaluation.validate_stage2(run_dir, info, "rank_l"))
            print(table(scored_runs(WORKDIR.value, list(arms)), list(arms), info.attribute_names), flush=True)
    text = table(scored_runs(WORKDIR.value, list(arms)), list(arms), info.attribute_names)
    out = os.path.join(WORKDIR.value, "stage12_validation.md")
    os.makedirs(WORKDIR.value, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    print(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
