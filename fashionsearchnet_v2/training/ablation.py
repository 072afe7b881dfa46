"""Trains what a set of Table 1 variants needs, for one or several seeds, evaluates each with the same
protocol and queries, and writes the dataset's Table 1 (Top-20 per attribute, mean ± std over seeds, with
the manipulation gain) and the Figure-5 curves of all of them.

Each seed trains in its own work directory (`<workdir>/seed<N>`) and its evaluations stay there
(`<seed dir>/eval/<variant>/`); the aggregated table goes to the caller's `out_dir`. Stages already
trained are reused (the trainer sees a finished step count and returns); an interrupted run resumes from
the last checkpoint of the stage it was in; an evaluation whose results.json came from the same
checkpoints is reused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from collections.abc import Sequence

import numpy as np

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.configs import ExperimentConfig
from fashionsearchnet_v2.retrieval import evaluation, figures, search
from fashionsearchnet_v2.trained import checkpoints, loading
from fashionsearchnet_v2.training import run


def _say(msg: str, out=sys.stdout) -> None:
    print(f"\n=== {msg}", file=out, flush=True)


def train_variant(
    cfg: ExperimentConfig, info, variant: str, out=sys.stdout, trained: set | None = None
) -> None:
    """Stage 1 (shared), the variant's stage 2 and, where it has one, its stage 3. `trained`: the stages
    (`stage1`, `stage2_<variant>`) already trained or resumed for `cfg` in this process, which are not
    entered again (each entry builds and restores its network only to find it finished); added to."""
    trained = set() if trained is None else trained
    s2, s3 = configs.VARIANTS[variant]
    if "stage1" not in trained:
        _say(f"stage 1: GAP classifiers and AAMs (L_C), seed {cfg.train.seed}", out)
        run.run_stage1(cfg, info, out=out)
        trained.add("stage1")
    if variant == "amnet":
        _say("AMNet baseline: memory + fusion on stage-1 features", out)
        run.run_amnet(cfg, info, out=out)
        return
    if variant == "amnet_untrained":
        _say("AMNet at step 0, its untrained control", out)
        run.run_amnet_untrained(cfg, info, out=out)
        return
    if f"stage2_{s2}" not in trained:
        _say(f"stage 2 ({s2}): attribute representations", out)
        run.run_stage2(dataclasses.replace(cfg, variant=s2), info, out=out)
        trained.add(f"stage2_{s2}")
    if s3 == "untrained":
        _say(f"stage 3 ({s2}): Rank-LG at step 0, the untrained control", out)
        run.run_stage3_untrained(dataclasses.replace(cfg, variant=s2), info, out=out)
    elif s3 is not None:
        _say(f"stage 3 ({s2}, {s3}): global representation (L_G)", out)
        stage3 = dataclasses.replace(cfg.stage3, update_memory=s3 == "full")
        run.run_stage3(dataclasses.replace(cfg, variant=s2, stage3=stage3), info, out=out)


def _current_checkpoint(workdir: str, variant: str) -> str | None:
    s2, s3 = configs.VARIANTS[variant]
    directory = loading.stage3_dir(workdir, s2, s3) if s3 else loading.stage_dir(workdir, "stage2", s2)
    if variant in ("amnet", "amnet_untrained"):
        directory = os.path.join(workdir, variant)
    selected = checkpoints.selected_checkpoint(directory) if s3 else None
    # What the row's features come from: stage 2 below stage 3, stage 1 below AMNet. One trained further
    # makes the cached results stale (the evaluation then refuses the row: `loading.check_built_on`).
    below = None
    if variant in ("amnet", "amnet_untrained"):
        below = checkpoints.latest(os.path.join(loading.stage_dir(workdir, "stage1"), "ckpt"))
    elif s3:
        below = checkpoints.latest(os.path.join(loading.stage_dir(workdir, "stage2", s2), "ckpt"))
    stamp = f"{checkpoints.latest(os.path.join(directory, 'ckpt'))} {selected}"
    return stamp if below is None else f"{stamp} {below}"


def _cached_results(workdir: str, variant: str, out_dir: str) -> dict | None:
    """`out_dir/results.json` if it was evaluated from the row's current checkpoints, else None."""
    path = os.path.join(out_dir, "results.json")
    if not (os.path.isfile(path) and os.path.isfile(path + ".stamp")):
        return None
    with open(path + ".stamp", encoding="utf-8") as f:
        if f.read() != str(_current_checkpoint(workdir, variant)):
            return None
    with open(path, encoding="utf-8") as g:
        results = json.load(g)
    # results of older versions lack the baselines (gain, filter baseline): evaluate again
    return results if "gain" in results and "filtered" in results else None


def evaluate_cached(workdir: str, info, variant: str, out_dir: str, out=sys.stdout) -> dict:
    """evaluate_variant, reusing `out_dir/results.json` when the checkpoints have not changed."""
    path = os.path.join(out_dir, "results.json")
    results = _cached_results(workdir, variant, out_dir)
    if results is not None:
        print(f"[evaluate] {variant}: reusing {path}", file=out)
        return results
    stamp = _current_checkpoint(workdir, variant)
    _say(f"evaluate {configs.LABELS[variant]} ({workdir})", out)
    results = evaluation.evaluate_variant(workdir, info, variant, out_dir, log=lambda m: print(m, file=out))
    evaluation.write_text(path + ".stamp", str(stamp))
    return results


def _mean_std(values: Sequence[float | None]) -> dict:
    stats = figures.seed_stats(list(values))
    return {"mean": None, "std": None} if stats is None else {"mean": stats[0], "std": stats[1]}


def aggregate(per_seed: dict[int, dict[str, dict]], attribute_names: Sequence[str], k: int = 20) -> dict:
    """Per variant, mean and sample std over seeds of Top-k, the unmanipulated Top-k and the gain.

    Args:
        per_seed: seed -> variant -> results dict of `evaluation.evaluate_variant`.
    Returns:
        {variant: {"topk" | "unmanipulated" | "gain": {attribute | "avg": {"mean", "std", "values"}}}}.
    """
    variants = list(next(iter(per_seed.values())))
    columns = list(attribute_names) + ["avg"]
    blocks = {"topk": lambda r: r["topk"], "unmanipulated": lambda r: r["unmanipulated"]["topk"],
              "gain": lambda r: r["gain"]["topk"]}  # fmt: skip
    out = {}
    for v in variants:
        runs = [per_seed[s][v] for s in sorted(per_seed)]
        out[v] = {}
        for name, block in blocks.items():
            table = {}
            for c in columns:
                values = [block(r)[str(k)].get(c) for r in runs]
                table[c] = {**_mean_std(values), "values": values}
            out[v][name] = table
    return out


# Paired differences of Table 1 rows, same seed (what each step adds); read where both rows were run.
PAIRS = (
    ("amnet", "amnet_untrained", "what AMNet learned: AMNet − its untrained control"),
    ("amnet", "wo_rank", "the baseline against the paper's weakest row: AMNet − w/o Rank"),
    ("rank_lg_untrained", "rank_l", "projection, no learning: Rank-LG at step 0 − Rank-L"),
    ("rank_lg", "rank_lg_untrained", "what L_G learned: Rank-LG − its untrained control"),
    ("full", "rank_lg", "updating M: Full − Rank-LG"),
    ("full", "rank_lg_untrained", "stage 3 as a whole: Full − Rank-LG untrained"),
)


def paired_differences(per_seed: dict[int, dict[str, dict]], k: int = 20) -> list[dict]:
    """Per pair of PAIRS present in `per_seed`: the per-seed differences of Top-k avg, mean and std."""
    seeds = sorted(per_seed)
    out = []
    for a, b, what in PAIRS:
        if all(a in per_seed[s] and b in per_seed[s] for s in seeds):
            diffs = [
                per_seed[s][a]["topk"][str(k)]["avg"] - per_seed[s][b]["topk"][str(k)]["avg"] for s in seeds
            ]
            out.append({"a": a, "b": b, "what": what, "values": diffs, **_mean_std(diffs)})
    return out


def stage3_report(workdir: str, variant: str) -> dict | None:
    """What a stage-3 row kept (selection.json): the selected step, validation Top-K there and at step 0,
    λ and how far M moved (‖M − M_0‖ / ‖M_0‖); None for rows without stage 3."""
    s2, s3 = configs.VARIANTS[variant]
    if s3 is None or variant in ("amnet", "amnet_untrained"):
        return None
    path = os.path.join(loading.stage3_dir(workdir, s2, s3), "selection.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        sel = json.load(f)
    history = sel.get("history") or []
    chosen = sel.get("selected") or (history[-1] if history else None)
    if chosen is None:
        return None
    k = sel.get("k", 20)
    return {"step": chosen["step"], "validation_top": chosen[f"top{k}"],
            "validation_top_step0": history[0][f"top{k}"] if history else None,
            "lambda": chosen["lambda"], "memory_shift": chosen["memory_shift"]}  # fmt: skip


def amnet_report(workdir: str) -> dict | None:
    """What AMNet kept (its selection.json): the selected step, validation Top-K and L_rank there and at
    step 0; None when it did not select (AMNet before issue 24) or did not run."""
    path = os.path.join(workdir, "amnet", "selection.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        sel = json.load(f)
    history, chosen = sel.get("history") or [], sel.get("selected")
    if not history or chosen is None:
        return None
    k = sel.get("k", 20)
    return {"k": k, "step": chosen["step"], "validation_top": chosen[f"top{k}"],
            "validation_top_step0": history[0][f"top{k}"], "validation_gain": chosen[f"gain{k}"],
            "L_rank_validation": chosen.get("L_rank_validation"),
            "L_rank_validation_step0": history[0].get("L_rank_validation")}  # fmt: skip


def amnet_table(reports: dict) -> str:
    """Markdown: per seed, what AMNet's selection kept on the validation split."""
    seeds = [s for s in sorted(reports) if reports[s]]
    if not seeds:
        return ""
    k = reports[seeds[0]]["k"]
    lines = [f"AMNet as kept (selected on the validation split, Top-{k}):", "",
             f"| seed | selected step | validation Top-{k} at step 0 | selected | its gain | validation L_rank at step 0 | selected |",
             "|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for s in seeds:
        r = reports[s]
        lr0, lr = r["L_rank_validation_step0"], r["L_rank_validation"]
        lines.append(f"| {s} | {r['step']} | {r['validation_top_step0']:.3f} | {r['validation_top']:.3f} | "
                     f"{r['validation_gain']:+.3f} | {lr0 if lr0 is None else f'{lr0:.4f}'} | {lr if lr is None else f'{lr:.4f}'} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def stage3_tables(per_seed, reports, variants, attribute_names, k: int = 20) -> str:
    """Markdown: the paired differences per seed and, per stage-3 row, the learned λ and M's shift."""
    seeds = sorted(per_seed)
    lines = []
    pairs = paired_differences(per_seed, k)
    if pairs:
        lines += [f"Paired differences of Top-{k} avg, same seed ({', '.join(map(str, seeds))}):", "",
                  "| difference | " + " | ".join(f"seed {s}" for s in seeds) + (" | mean ± std |" if len(seeds) > 1 else " | mean |"),
                  "|---|" + "---:|" * (len(seeds) + 1)]  # fmt: skip
        for p in pairs:
            spread = f"{p['mean']:+.3f} ± {p['std']:.3f}" if len(p["values"]) > 1 else f"{p['mean']:+.3f}"
            lines.append(
                f"| {p['what']} | " + " | ".join(f"{v:+.3f}" for v in p["values"]) + f" | {spread} |"
            )
        lines.append("")
    rows = [v for v in variants if any(reports[s].get(v) for s in seeds)]
    if rows:
        lines += ["Stage 3 as kept (selected on the validation split): λ per attribute, ‖M − M₀‖/‖M₀‖ and the "
                  "selected step, mean over seeds:", "",
                  "| row | " + " | ".join(attribute_names) + " | M shift | step (per seed) |",
                  "|---|" + "---:|" * (len(attribute_names) + 2)]  # fmt: skip
        for v in rows:
            reps = [reports[s][v] for s in seeds if reports[s].get(v)]
            lam = [np.mean([r["lambda"][n] for r in reps]) for n in attribute_names]
            shift = np.mean([r["memory_shift"] for r in reps])
            steps = ", ".join(str(r["step"]) for r in reps)
            lines.append(
                f"| {configs.LABELS[v]} | "
                + " | ".join(f"{x:.3f}" for x in lam)
                + f" | {shift:.2e} | {steps} |"
            )
        lines.append("")
    return "\n".join(lines)


def run_ablation(
    cfgs: Sequence[ExperimentConfig], info, variants, out_dir: str, eval_name: str = "eval", out=sys.stdout
) -> dict:
    """Trains and evaluates `variants` for each config (one per seed); writes the aggregated table.md,
    table.json and topk_curves.png to `out_dir`. Returns the summary written to table.json."""
    t0 = time.time()
    per_seed: dict[int, dict[str, dict]] = {}
    for cfg in cfgs:
        seed = cfg.train.seed
        per_seed[seed] = {}
        trained: set[str] = set()
        # What a resumed run of hours has left, before its first stage says it: rows evaluated from their
        # current checkpoints are reused; every other row trains what it lacks (a stage already trained
        # or partly trained says so when reached) and is evaluated. Labels joined by " · ": some hold commas.
        done = [
            v for v in variants if _cached_results(cfg.workdir, v, os.path.join(cfg.workdir, eval_name, v))
        ]
        left = [configs.LABELS[v] for v in variants if v not in done]
        _say(f"Table 1, seed {seed}: {len(done)} of {len(variants)} rows evaluated already"
             + (f" ({' · '.join(configs.LABELS[v] for v in done)})" if done else "")
             + (f"; to train and evaluate: {' · '.join(left)}" if left else ""), out)  # fmt: skip
        for variant in variants:
            train_variant(cfg, info, variant, out, trained)
            eval_dir = os.path.join(cfg.workdir, eval_name, variant)
            per_seed[seed][variant] = evaluate_cached(cfg.workdir, info, variant, eval_dir, out)
    seeds = sorted(per_seed)
    first = per_seed[seeds[0]]
    searches = next(iter(first.values()))["searches"]["total"] if first else 0
    where = f" on {info.name} ({searches} searches per variant; " + (
        f"mean ± std over seeds {', '.join(map(str, seeds))})" if len(seeds) > 1 else f"seed {seeds[0]})"
    )
    per_variant = {configs.LABELS[v]: [per_seed[s][v] for s in seeds] for v in variants}
    table = figures.results_tables(per_variant, info.attribute_names, k=20, where=where)
    reports = {cfg.train.seed: {v: stage3_report(cfg.workdir, v) for v in variants} for cfg in cfgs}
    extra = stage3_tables(per_seed, reports, variants, info.attribute_names)
    amnet_reports = {cfg.train.seed: amnet_report(cfg.workdir) for cfg in cfgs} if "amnet" in variants else {}
    extra = "\n".join(x for x in (extra, amnet_table(amnet_reports)) if x)
    if extra:
        table = f"{table.rstrip()}\n\n{extra}"
    os.makedirs(out_dir, exist_ok=True)
    figures.write_atomic(os.path.join(out_dir, "table.md"), table.encode())
    ks = [int(k) for k in first[variants[0]]["topk"]] if variants else []

    def mean_curve(v, block):
        return {k: float(np.mean([block(per_seed[s][v])[str(k)]["avg"] for s in seeds])) for k in ks}

    curves = {v: mean_curve(v, lambda r: r["topk"]) for v in variants}
    unmanipulated = {v: mean_curve(v, lambda r: r["unmanipulated"]["topk"]) for v in variants}
    summary = {
        "dataset": info.name,
        "variants": list(variants),
        "seeds": seeds,
        "searches": searches,
        "top20": aggregate(per_seed, info.attribute_names, 20),
        "topk_avg": curves,
        "topk_avg_unmanipulated": unmanipulated,
        "ndcg@30": {v: _mean_std([per_seed[s][v]["ndcg@30"]["avg"] for s in seeds]) for v in variants},
        "paired": paired_differences(per_seed),
        "stage3": {str(s): r for s, r in reports.items()},
        "amnet": {str(s): r for s, r in amnet_reports.items()},
        "workdirs": {str(cfg.train.seed): cfg.workdir for cfg in cfgs},
        "seconds": round(time.time() - t0, 1),
    }
    evaluation.write_json(os.path.join(out_dir, "table.json"), summary)
    figures.plot_topk_curves(
        {configs.LABELS[v]: c for v, c in curves.items()},
        os.path.join(out_dir, "topk_curves.png"),
        baselines={configs.LABELS[v]: c for v, c in unmanipulated.items()} if len(variants) <= 2 else None,
        title=f"Top-K retrieval accuracy, {info.name}"
        + (f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""),
    )
    figures.plot_topk_curves(
        {configs.LABELS[v]: {k: curves[v][k] - unmanipulated[v][k] for k in ks} for v in variants},
        os.path.join(out_dir, "gain_curves.png"),
        title=f"Manipulation gain, {info.name}"
        + (f" (mean of {len(seeds)} seeds)" if len(seeds) > 1 else ""),
        ylabel="Top-K accuracy: manipulated − not manipulated",
    )
    shown = "full" if "full" in variants else variants[-1] if variants else None
    if shown and all("filtered" in per_seed[s][shown] for s in seeds):
        search.plot_filter_baseline(
            [per_seed[s][shown] for s in seeds], os.path.join(out_dir, "filter_baseline.png"),
            configs.LABELS[shown], info.name,
        )  # fmt: skip
    _say(f"Table 1 on {info.name} ({out_dir}/table.md)", out)
    print(table, file=out, flush=True)
    return summary
