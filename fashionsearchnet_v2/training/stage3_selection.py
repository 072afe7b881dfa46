"""The search for a stage 3 that helps, on the validation split only (issue 15, WORKSPACE.md decisions 59-62).

Each candidate is a Stage3Config change (optimiser, step size, w_r's start, F's normalisation, sampling,
negatives, which weights learn), trained for up to `epochs` epochs on top of one trained stage 2 and
scored on the validation split carved from the training split after every epoch and at step 0
(`training.stage3`). Query and gallery are never read: only the training split's features are
embedded. The table gives, per candidate, validation Top-K at step 0 (its own untrained control), after
each epoch, and the state selection keeps, with λ at that state.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.configs import ExperimentConfig
from fashionsearchnet_v2.retrieval import evaluation
from fashionsearchnet_v2.training import run

_UNIT = dict(normalize=True)
_RAW = dict(normalize=False)
_ID = dict(w_r_init="identity")

# name -> (what it tests, Stage3Config changes on top of the dataset's defaults).
CANDIDATES: dict[str, tuple[str, dict]] = {
    "paper": ("the paper as written: random w_r, raw F, SGD 0.01", dict(sampling="enumerate", **_RAW)),
    "images": ("one manipulation per image (the sampler before issue 15), unit F, SGD 0.01",
               dict(sampling="images", **_UNIT)),
    "unit-sgd0.01": ("random w_r, unit F, SGD 0.01 (decision 57's F)", dict(**_UNIT)),
    "unit-sgd0.1": ("random w_r, unit F, SGD 0.1", dict(learning_rate=0.1, **_UNIT)),
    "unit-sgd1": ("random w_r, unit F, SGD 1.0", dict(learning_rate=1.0, **_UNIT)),
    "unit-adam1e-3": ("random w_r, unit F, Adam 1e-3", dict(optimizer="adam", learning_rate=1e-3, **_UNIT)),
    "unit-adam1e-4": ("random w_r, unit F, Adam 1e-4", dict(optimizer="adam", learning_rate=1e-4, **_UNIT)),
    "id-raw-sgd0.01": ("w_r = s·I, raw F, SGD 0.01", dict(learning_rate=0.01, **_ID, **_RAW)),
    "id-raw-sgd0.1": ("w_r = s·I, raw F, SGD 0.1", dict(learning_rate=0.1, **_ID, **_RAW)),
    "id-unit-sgd0.1": ("w_r = s·I, unit F, SGD 0.1", dict(learning_rate=0.1, **_ID, **_UNIT)),
    "id-raw-adam1e-4": ("w_r = s·I, raw F, Adam 1e-4", dict(optimizer="adam", learning_rate=1e-4, **_ID, **_RAW)),
    "id-raw-λ-sgd0.1": ("w_r = s·I fixed, only λ learns, raw F, SGD 0.1",
                        dict(train_w_r=False, learning_rate=0.1, **_ID, **_RAW)),
    "id-raw-λ-adam1e-2": ("w_r = s·I fixed, only λ learns, raw F, Adam 1e-2",
                          dict(train_w_r=False, optimizer="adam", learning_rate=1e-2, **_ID, **_RAW)),
    "near-unit-sgd0.1": ("near negatives, random w_r, unit F, SGD 0.1",
                         dict(negatives="near", learning_rate=0.1, **_UNIT)),
    "near-id-raw-adam1e-4": ("near negatives, w_r = s·I, raw F, Adam 1e-4",
                             dict(negatives="near", optimizer="adam", learning_rate=1e-4, **_ID, **_RAW)),
    "near-id-raw-λ-adam1e-2": ("near negatives, w_r = s·I fixed, only λ learns, raw F, Adam 1e-2",
                               dict(negatives="near", train_w_r=False, optimizer="adam", learning_rate=1e-2, **_ID, **_RAW)),
    # Round 2: around round 1's best (near negatives, w_r = s·I, raw F, Adam 1e-4), one choice at a time.
    "near-id-raw-adam3e-4": ("near negatives, w_r = s·I, raw F, Adam 3e-4",
                             dict(negatives="near", optimizer="adam", learning_rate=3e-4, **_ID, **_RAW)),
    "near-id-raw-adam3e-5": ("near negatives, w_r = s·I, raw F, Adam 3e-5",
                             dict(negatives="near", optimizer="adam", learning_rate=3e-5, **_ID, **_RAW)),
    "near-id-unit-adam1e-4": ("near negatives, w_r = s·I, unit F, Adam 1e-4",
                              dict(negatives="near", optimizer="adam", learning_rate=1e-4, **_ID, **_UNIT)),
    "near-raw-adam1e-4": ("near negatives, random w_r, raw F, Adam 1e-4",
                          dict(negatives="near", optimizer="adam", learning_rate=1e-4, **_RAW)),
    "near-id-raw-sgd0.1": ("near negatives, w_r = s·I, raw F, SGD 0.1",
                           dict(negatives="near", learning_rate=0.1, **_ID, **_RAW)),
    "raw-adam1e-4": ("random w_r, raw F, Adam 1e-4 (the paper's triplets; round 2's best w_r, F, optimiser)",
                     dict(optimizer="adam", learning_rate=1e-4, **_RAW)),
    "near-id-raw-images-adam1e-4": ("near negatives, w_r = s·I, raw F, Adam 1e-4, one manipulation per image",
                                    dict(sampling="images", negatives="near", optimizer="adam", learning_rate=1e-4, **_ID, **_RAW)),
}  # fmt: skip


def candidate_config(
    cfg: ExperimentConfig, name: str, epochs: float, update_memory: bool
) -> ExperimentConfig:
    """`cfg` with stage 3 set to candidate `name` (see CANDIDATES), `epochs` epochs, selection on."""
    if name not in CANDIDATES:
        raise ValueError(f"unknown stage-3 candidate {name!r}; valid: {', '.join(CANDIDATES)}")
    changes = dict(CANDIDATES[name][1])
    base = configs.paper_stage3(cfg.stage3) if name == "paper" else cfg.stage3
    s3 = dataclasses.replace(
        base, **changes, epochs=epochs, update_memory=update_memory, select_on_validation=True
    )
    return dataclasses.replace(cfg, variant="rank_l", stage3=s3)


def run_selection(
    cfg: ExperimentConfig, info, names, out_dir: str, epochs: float = 4.0, update_memory: bool = False,
    out=sys.stdout,
) -> list[dict]:  # fmt: skip
    """Trains each candidate into `<out_dir>/<name>` (reused when finished) and writes
    `<out_dir>/selection.md` and `.json`; returns one row per candidate."""

    def train(name, directory):
        c = candidate_config(cfg, name, epochs, update_memory)
        run.run_stage3(c, info, out=out, stage3_dir=directory)

    return sweep(
        "stage-3", CANDIDATES, names, train, lambda rows: selection_table(rows, info.attribute_names),
        out_dir, out,
    )  # fmt: skip


def sweep(kind: str, candidates: dict, names, train, table, out_dir: str, out=sys.stdout) -> list[dict]:
    """A validation sweep (stage 3's, AMNet's): `train(name, directory)` trains each of `names` into
    `<out_dir>/<name>`, which leaves its `selection.json` there; one row per candidate (name, what
    `candidates[name][0]` says it is, seconds, and that file's keys), in `<out_dir>/selection.json`, and
    `table(rows)` in `<out_dir>/selection.md` and printed. Returns the rows."""
    unknown = [name for name in names if name not in candidates]
    if unknown:  # before anything trains
        raise ValueError(f"unknown {kind} candidates {unknown}; valid: {', '.join(candidates)}")
    rows = []
    for name in names:
        directory = os.path.join(out_dir, name)
        print(f"\n=== {kind} candidate {name}: {candidates[name][0]}", file=out, flush=True)
        t0 = time.time()
        train(name, directory)
        with open(os.path.join(directory, "selection.json"), encoding="utf-8") as f:
            sel = json.load(f)
        rows.append({"name": name, "what": candidates[name][0], "seconds": round(time.time() - t0, 1), **sel})
    markdown = table(rows)
    os.makedirs(out_dir, exist_ok=True)
    evaluation.write_text(os.path.join(out_dir, "selection.md"), markdown)
    evaluation.write_json(os.path.join(out_dir, "selection.json"), rows)
    print(markdown, file=out, flush=True)
    return rows


def epochs_table(rows: list[dict], extra_columns) -> str:
    """Markdown of a validation sweep (stage 3's, AMNet's): per candidate, validation Top-K at step 0, after
    each epoch, the selected state and what learning added (selected − step 0), then `extra_columns`:
    [(heading, fn(history, selected) -> cell)]."""
    if not rows:
        return ""
    k = rows[0]["k"]
    epochs = max(len(r["history"]) - 1 for r in rows)
    head = (
        ["candidate", "step 0"]
        + [f"epoch {e}" for e in range(1, epochs + 1)]
        + ["selected", "learned"]
        + [heading for heading, _ in extra_columns]
    )
    lines = [f"Validation Top-{k} avg ({rows[0]['validation']}).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]  # fmt: skip
    for r in rows:
        h = r["history"]
        cells = [f"{x[f'top{k}']:.3f}" for x in h] + [""] * (epochs + 1 - len(h))
        s = r["selected"]
        epoch_of = {x["step"]: i for i, x in enumerate(h)}
        chosen = f"{s[f'top{k}']:.3f} (epoch {epoch_of.get(s['step'], '?')})"
        learned = f"{s[f'top{k}'] - h[0][f'top{k}']:+.3f}"
        extra = [fn(h, s) for _, fn in extra_columns]
        lines.append(f"| {r['name']} | " + " | ".join(cells + [chosen, learned, *extra]) + " |")
    return "\n".join(lines) + "\n"


def selection_table(rows: list[dict], attribute_names) -> str:
    """`epochs_table` with λ at the selected state."""
    lam = (
        "λ (" + ", ".join(attribute_names) + ")",
        lambda h, s: ", ".join(f"{v:.2f}" for v in s["lambda"].values()),
    )
    return epochs_table(rows, [lam])
