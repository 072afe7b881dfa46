"""The search for AMNet's training on the validation split only (issue 24, WORKSPACE.md A9).

The same protocol and the same budget as stage 3's search (`training.stage3_selection`, decision 62):
each candidate is an AmnetConfig change (memory start, sampling, negatives, optimiser, step size,
margin, weight of attribute prediction), trained on top of one trained stage 1 and scored on decision
59's validation split (the same images as stage 3's) after every epoch and at step 0. Query and gallery
are never read: only the training split's features are embedded. At most 25 candidates in all, stage 3's
count.
"""

from __future__ import annotations

import dataclasses
import sys

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.configs import ExperimentConfig
from fashionsearchnet_v2.training import run, stage3_selection

BUDGET = 25  # stage 3's search trained 25 candidates (decision 62); AMNet's gets no more

SEARCH_BASE = dict(margin=0.2, lambda_attr=1.0)
_P = dict(memory_init="prototypes")
_R = dict(memory_init="random")

# name -> (what it tests, AmnetConfig changes on top of the defaults). "old": AMNet before issue 24.
CANDIDATES: dict[str, tuple[str, dict]] = {
    # Round 1: every choice, 3 epochs.
    "old": ("AMNet before issue 24: random memory, one manipulation per image, SGD 0.01", {}),
    "random-sgd0.01": ("random memory, the enumeration, SGD 0.01", dict(optimizer="sgd", learning_rate=0.01, **_R)),
    "proto-sgd0.01": ("prototype memory, the enumeration, SGD 0.01", dict(optimizer="sgd", learning_rate=0.01, **_P)),
    "proto-sgd0.1": ("prototype memory, SGD 0.1", dict(optimizer="sgd", learning_rate=0.1, **_P)),
    "proto-adam1e-3": ("prototype memory, Adam 1e-3", dict(optimizer="adam", learning_rate=1e-3, **_P)),
    "proto-adam1e-4": ("prototype memory, Adam 1e-4 (stage 3's)", dict(optimizer="adam", learning_rate=1e-4, **_P)),
    "random-adam1e-3": ("random memory, Adam 1e-3", dict(optimizer="adam", learning_rate=1e-3, **_R)),
    "proto-adam1e-3-near": ("prototype memory, Adam 1e-3, near negatives",
                            dict(optimizer="adam", learning_rate=1e-3, negatives="near", **_P)),
    "proto-adam1e-3-m0.5": ("prototype memory, Adam 1e-3, margin 0.5",
                            dict(optimizer="adam", learning_rate=1e-3, margin=0.5, **_P)),
    "proto-adam1e-3-attr0.1": ("prototype memory, Adam 1e-3, attribute prediction weighted 0.1",
                               dict(optimizer="adam", learning_rate=1e-3, lambda_attr=0.1, **_P)),
    "proto-adam1e-3-images": ("prototype memory, Adam 1e-3, one manipulation per image",
                              dict(optimizer="adam", learning_rate=1e-3, sampling="images", **_P)),
    # Round 2: around round 1's best (prototypes, Adam 1e-3, attribute prediction at 0.1), one choice at a
    # time, 6 epochs.
    "proto-adam1e-4-attr0.1": ("prototype memory, Adam 1e-4, attribute prediction 0.1",
                               dict(optimizer="adam", learning_rate=1e-4, lambda_attr=0.1, **_P)),
    "proto-adam3e-4-attr0.1": ("prototype memory, Adam 3e-4, attribute prediction 0.1",
                               dict(optimizer="adam", learning_rate=3e-4, lambda_attr=0.1, **_P)),
    "proto-adam1e-3-attr0.1-m0.5": ("prototype memory, Adam 1e-3, attribute prediction 0.1, margin 0.5",
                                    dict(optimizer="adam", learning_rate=1e-3, lambda_attr=0.1, margin=0.5, **_P)),
    "proto-adam1e-3-attr0.1-near": ("prototype memory, Adam 1e-3, attribute prediction 0.1, near negatives",
                                    dict(optimizer="adam", learning_rate=1e-3, lambda_attr=0.1, negatives="near", **_P)),
    "random-adam1e-3-attr0.1": ("random memory, Adam 1e-3, attribute prediction 0.1",
                                dict(optimizer="adam", learning_rate=1e-3, lambda_attr=0.1, **_R)),
    "proto-adam1e-3-attr0": ("prototype memory, Adam 1e-3, no attribute prediction (ranking only; not AMNet)",
                             dict(optimizer="adam", learning_rate=1e-3, lambda_attr=0.0, **_P)),
}  # fmt: skip


def candidate_config(cfg: ExperimentConfig, name: str, epochs: float) -> ExperimentConfig:
    """`cfg` with AMNet set to candidate `name` (see CANDIDATES), `epochs` epochs, selection on the
    validation split (for "old" too: its validation images are then held out, as for every candidate)."""
    if name not in CANDIDATES:
        raise ValueError(f"unknown AMNet candidate {name!r}; valid: {', '.join(CANDIDATES)}")
    # The search's starting point is AMNet before it (margin 0.2, attribute prediction at weight 1), not
    # today's defaults, which it chose: every candidate keeps meaning what it meant when it ran.
    base = configs.AmnetConfig(
        seed=cfg.amnet.seed, batch_size=cfg.amnet.batch_size, max_steps=cfg.amnet.max_steps, **SEARCH_BASE
    )
    if name == "old":
        base = configs.old_amnet(base)
    am = dataclasses.replace(
        base,
        **CANDIDATES[name][1],
        epochs=epochs,
        validation_fraction=configs.AmnetConfig.validation_fraction,
        select_on_validation=True,
    )
    return dataclasses.replace(cfg, amnet=am)


def run_selection(
    cfg: ExperimentConfig, info, names, out_dir: str, epochs: float = 3.0, out=sys.stdout
) -> list[dict]:
    """Trains each candidate into `<out_dir>/<name>` (reused when finished) and writes
    `<out_dir>/selection.md` and `.json`; returns one row per candidate."""

    def train(name, directory):
        run.run_amnet(candidate_config(cfg, name, epochs), info, out=out, amnet_dir=directory)

    return stage3_selection.sweep("AMNet", CANDIDATES, names, train, selection_table, out_dir, out)


def selection_table(rows: list[dict]) -> str:
    """`stage3_selection.epochs_table` with the manipulation gain at the selected state and L_rank on
    validation triplets at step 0 and there."""
    if not rows:
        return ""
    k = rows[0]["k"]

    def loss(h, s):
        l0, l1 = h[0].get("L_rank_validation"), s.get("L_rank_validation")
        return f"{l0:.4f} → {l1:.4f}" if l0 is not None and l1 is not None else ""

    return stage3_selection.epochs_table(
        rows, [("gain there", lambda h, s: f"{s[f'gain{k}']:+.3f}"), ("val. L_rank step 0 → there", loss)]
    )
