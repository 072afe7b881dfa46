"""Trains what a set of Table 1 variants needs, evaluates each with the same protocol and queries, and
writes the dataset's Table 1 (Top-20 per attribute) and the Figure-5 curves of all of them.

Stages already trained are reused (the trainer sees a finished step count and returns); an
interrupted run resumes from the last checkpoint of the stage it was in; an evaluation whose
results.json came from the same checkpoints is reused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.configs import ExperimentConfig
from fashionsearchnet_v2.retrieval import evaluation, figures
from fashionsearchnet_v2.trained import checkpoints, loading
from fashionsearchnet_v2.training import run


def _say(msg: str, out=sys.stdout) -> None:
    print(f"\n=== {msg}", file=out, flush=True)


def train_variant(cfg: ExperimentConfig, info, variant: str, out=sys.stdout) -> None:
    """Stage 1 (shared), the variant's stage 2 and, where it has one, its stage 3."""
    s2, s3 = configs.VARIANTS[variant]
    _say("stage 1: GAP classifiers and AAMs (L_C)", out)
    run.run_stage1(cfg, info, out=out)
    if variant == "amnet":
        _say("AMNet baseline: memory + fusion on stage-1 features", out)
        run.run_amnet(cfg, info, out=out)
        return
    _say(f"stage 2 ({s2}): attribute representations", out)
    run.run_stage2(dataclasses.replace(cfg, variant=s2), info, out=out)
    if s3 is not None:
        _say(f"stage 3 ({s2}, {s3}): global representation (L_G)", out)
        stage3 = dataclasses.replace(cfg.stage3, update_memory=s3 == "full")
        run.run_stage3(dataclasses.replace(cfg, variant=s2, stage3=stage3), info, out=out)


def _current_checkpoint(workdir: str, variant: str) -> str | None:
    s2, s3 = configs.VARIANTS[variant]
    directory = loading.stage3_dir(workdir, s2, s3) if s3 else loading.stage_dir(workdir, "stage2", s2)
    return checkpoints.latest(os.path.join(directory, "ckpt"))


def evaluate_cached(workdir: str, info, variant: str, out_dir: str, out=sys.stdout) -> dict:
    """evaluate_variant, reusing `out_dir/results.json` when the checkpoints have not changed."""
    path = os.path.join(out_dir, "results.json")
    stamp = _current_checkpoint(workdir, variant)
    if os.path.isfile(path) and os.path.isfile(path + ".stamp"):
        with open(path + ".stamp", encoding="utf-8") as f:
            if f.read() == str(stamp):
                with open(path, encoding="utf-8") as g:
                    print(f"[evaluate] {variant}: reusing {path}", file=out)
                    return json.load(g)
    _say(f"evaluate {configs.LABELS[variant]}", out)
    results = evaluation.evaluate_variant(workdir, info, variant, out_dir, log=lambda m: print(m, file=out))
    with open(path + ".stamp", "w", encoding="utf-8") as f:
        f.write(str(stamp))
    return results


def run_ablation(cfg: ExperimentConfig, info, variants, out_dir: str, out=sys.stdout) -> dict:
    """Trains and evaluates `variants`; writes table.md, table.json and topk_curves.png to `out_dir`."""
    t0 = time.time()
    results = {}
    for variant in variants:
        train_variant(cfg, info, variant, out)
        results[variant] = evaluate_cached(cfg.workdir, info, variant, os.path.join(out_dir, variant), out)
    rows = {configs.LABELS[v]: r["topk"]["20"] for v, r in results.items()}
    searches = next(iter(results.values()))["searches"]["total"] if results else 0
    table = figures.markdown_table(
        rows, info.attribute_names, k=20,
        title=f"Top-20 retrieval accuracy on {info.name} ({searches} searches per variant).",
    )  # fmt: skip
    os.makedirs(out_dir, exist_ok=True)
    figures.write_atomic(os.path.join(out_dir, "table.md"), table.encode())
    summary = {
        "dataset": info.name,
        "variants": list(results),
        "top20": {v: r["topk"]["20"] for v, r in results.items()},
        "topk_avg": {v: {k: x["avg"] for k, x in r["topk"].items()} for v, r in results.items()},
        "ndcg@30": {v: r.get("ndcg@30", {}).get("avg") for v, r in results.items()},
        "searches": searches,
        "seconds": round(time.time() - t0, 1),
    }
    evaluation.write_json(os.path.join(out_dir, "table.json"), summary)
    figures.plot_topk_curves(
        {configs.LABELS[v]: c for v, c in summary["topk_avg"].items()},
        os.path.join(out_dir, "topk_curves.png"),
        title=f"Top-K retrieval accuracy, {info.name}",
    )
    _say(f"Table 1 on {info.name} ({out_dir}/table.md)", out)
    print(table, file=out, flush=True)
    return summary
