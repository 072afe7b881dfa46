"""What the learning-rate warm-up of stages 1 and 2 (WORKSPACE.md decision 64) does to retrieval, measured
on the validation split (decision 59), never on query or gallery.

    python benchmarks/warmup_validation.py --data_dir=data/celeba --workdir=work/celeba-warmup \
        --recipes=adam_bn,sgd --warmups=0,100 --seeds=0,1 \
        --alexnet_weights=../shared/weights/alexnet-imagenet-lossy/bvlc_alexnet.npy

For each recipe, warm-up and seed it trains stage 1 and stage 2 (Rank-L) with the project's own commands
(`experiments.stage1`, `experiments.stage2`; rerunning resumes them) in
`<workdir>/<recipe>-warmup<W>/seed<N>`, then scores Rank-L on the validation split
(`evaluation.validate_stage2`, Top-K at Top-20's share of the gallery) into `validation_rank_l.json`
there, and prints the table with the warm-up's paired difference per seed; `<workdir>/warmup_validation.md`
gets every run scored there so far, by this command or an earlier one. Recipes:

- `adam_bn`: the embedded default's recipe on real data (BatchNorm, Adam 1e-3, from scratch);
- `sgd`: the paper's (plain SGD 0.01, LRN, no BatchNorm) from the ImageNet weights given.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

from absl import app, flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "benchmarks"))

import paired  # noqa: E402  (the paired summary both studies print)

RECIPES = {
    "adam_bn": ["--batch_norm", "--optimizer=adam", "--learning_rate=0.001"],
    "sgd": ["--nobatch_norm", "--optimizer=sgd", "--learning_rate=0.01"],
}
DATA_DIR = flags.DEFINE_string("data_dir", None, "Converted dataset.")
WORKDIR = flags.DEFINE_string("workdir", None, "Base directory of the runs.")
RECIPE_LIST = flags.DEFINE_list("recipes", ["adam_bn", "sgd"], f"Any of {', '.join(RECIPES)}.")
WARMUPS = flags.DEFINE_list("warmups", ["0", "100"], "Warm-up steps compared (0: the paper's start).")
SEEDS = flags.DEFINE_list("seeds", ["0", "1"], "Seeds.")
IMAGE_SIZE = flags.DEFINE_integer("image_size", 128, "Input size.")
EPOCHS = flags.DEFINE_float("epochs", 2.0, "Epochs of stages 1 and 2.")
ALEXNET = flags.DEFINE_string("alexnet_weights", None, "ImageNet conv1-conv4 for the sgd recipe.")
TABLE_ONLY = flags.DEFINE_bool(
    "table_only", False, "Print the table of the runs scored so far; train nothing."
)
flags.mark_flags_as_required(["data_dir", "workdir"])


def run_dir(recipe: str, warmup: int, seed: int) -> str:
    return os.path.join(WORKDIR.value, f"{recipe}-warmup{warmup}", f"seed{seed}")


def train(recipe: str, warmup: int, seed: int) -> None:
    args = [f"--data_dir={DATA_DIR.value}", f"--workdir={os.path.dirname(run_dir(recipe, warmup, seed))}",
            f"--seed={seed}", f"--image_size={IMAGE_SIZE.value}", f"--epochs={EPOCHS.value}",
            f"--warmup_steps={warmup}", *RECIPES[recipe]]  # fmt: skip
    if recipe == "sgd":
        if not ALEXNET.value:
            raise app.UsageError("--recipes=sgd starts from ImageNet: pass --alexnet_weights")
        args.append(f"--alexnet_weights={ALEXNET.value}")
    env = dict(os.environ, PYTHONPATH=REPO)
    for stage in (["experiments.stage1"], ["experiments.stage2", "--variant=rank_l"]):
        print(f"[{recipe} warmup {warmup} seed {seed}] {' '.join(stage)}", flush=True)
        subprocess.run([sys.executable, "-m", *stage, *args], check=True, env=env, cwd=REPO)


def score(recipe: str, warmup: int, seed: int, info) -> dict:
    from fashionsearchnet_v2.retrieval import evaluation

    path = os.path.join(run_dir(recipe, warmup, seed), "validation_rank_l.json")
    if not os.path.isfile(path):
        results = evaluation.validate_stage2(run_dir(recipe, warmup, seed), info, "rank_l")
        evaluation.write_json(path, results)
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def table(scored: dict, names: list[str]) -> str:
    """One row per run (`scored`: {(recipe, warm-up, seed): validation results}), then per recipe each
    warm-up's paired difference, seed by seed, against the smallest warm-up scored (0: the paper's start)."""
    lines = ["| recipe | warm-up | seed | " + " | ".join(names) + " | avg | unmanipulated | gain |",
             "|---|---:|---:|" + "---:|" * (len(names) + 3)]  # fmt: skip
    for (recipe, warmup, seed), r in sorted(scored.items()):
        k = str(r["k"])
        top, base = r["topk"][k], r["unmanipulated"]["topk"][k]
        cells = ["–" if top.get(n) is None else f"{top[n]:.3f}" for n in names] + [f"{top['avg']:.3f}", f"{base['avg']:.3f}",
                                                    f"{r['gain']['topk'][k]['avg']:+.3f}"]  # fmt: skip
        lines.append(f"| {recipe} | {warmup} | {seed} | " + " | ".join(cells) + " |")
    for recipe in sorted({key[0] for key in scored}):
        warmups = sorted({w for r, w, _ in scored if r == recipe})
        seeds = sorted({s for r, _, s in scored if r == recipe})
        for warmup in warmups[1:]:
            pairs = [
                (scored.get((recipe, warmups[0], seed)), scored.get((recipe, warmup, seed))) for seed in seeds
            ]
            summary = paired.paired_summary(pairs)
            if summary:
                lines.append(
                    f"\n{recipe}: warm-up {warmup} − warm-up {warmups[0]}, validation Top-K avg, {summary}"
                )
    return "\n".join(lines)


def scored_runs(workdir: str) -> dict:
    """Every run scored under `workdir` ({(recipe, warm-up, seed): results}), whichever command scored it,
    so that the table written never drops an earlier invocation's runs."""
    found = {}
    for name in sorted(os.listdir(workdir)) if os.path.isdir(workdir) else []:
        recipe, _, warmup = name.rpartition("-warmup")
        if recipe not in RECIPES or not warmup.isdigit():
            continue
        for seed_dir in sorted(os.listdir(os.path.join(workdir, name))):
            path = os.path.join(workdir, name, seed_dir, "validation_rank_l.json")
            if seed_dir.startswith("seed") and seed_dir[4:].isdigit() and os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    found[(recipe, int(warmup), int(seed_dir[4:]))] = json.load(f)
    return found


def main(argv):
    del argv
    from fashionsearchnet_v2.data import schema

    info = schema.load_dataset_info(DATA_DIR.value)
    unknown = [r for r in RECIPE_LIST.value if r not in RECIPES]
    if unknown:
        raise app.UsageError(f"unknown --recipes {unknown}; valid: {', '.join(RECIPES)}")
    scored = {}
    # Seed by seed, so that a stopped run has complete pairs first.
    for seed in (int(s) for s in SEEDS.value):
        for recipe in RECIPE_LIST.value:
            for warmup in (int(w) for w in WARMUPS.value):
                done = os.path.isfile(os.path.join(run_dir(recipe, warmup, seed), "validation_rank_l.json"))
                if not done and TABLE_ONLY.value:
                    continue
                if not done:
                    train(recipe, warmup, seed)
                scored[(recipe, warmup, seed)] = score(recipe, warmup, seed, info)
                print(table(scored, info.attribute_names), flush=True)
    everything = scored_runs(WORKDIR.value)  # this command's runs and any scored before
    out = os.path.join(WORKDIR.value, "warmup_validation.md")
    with open(out, "w", encoding="utf-8") as f:
        f.write(table(everything, info.attribute_names) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    app.run(main)
