"""Chooses stage 3's open settings on the validation split (never on query or gallery).

    python -m experiments.stage3_select --dataset=synthetic [--seed=0] [--candidates=paper,unit-sgd0.1]
        [--select_epochs=4] [--noupdate_memory]

Trains every candidate of `training.stage3_selection.CANDIDATES` on top of the seed's trained stage 2
(Rank-L; run experiments.stage1 and experiments.stage2 first) and writes
`<workdir>/seed<N>/stage3_selection/selection.md`: validation Top-20 at step 0, after each epoch and
where selection stops, per candidate.
"""

import os

from absl import flags

from experiments import common

CANDIDATES = flags.DEFINE_list("candidates", None, "Candidates to train (default: all).")
EPOCHS = flags.DEFINE_float("select_epochs", 4.0, "Epochs per candidate (validated after each).")
UPDATE_MEMORY = flags.DEFINE_bool("update_memory", False, "Full instead of Rank-LG.")
OUT_DIR = flags.DEFINE_string("out_dir", None, "Default <workdir>/seed<N>/stage3_selection[_full].")


def main(argv):
    del argv
    from fashionsearchnet_v2.training import stage3_selection

    names = CANDIDATES.value or list(stage3_selection.CANDIDATES)
    common.check_names("--candidates", names, list(stage3_selection.CANDIDATES))  # before any data is read
    cfg, info = common.build_config("stage3", variant="rank_l")
    suffix = "_full" if UPDATE_MEMORY.value else ""
    out_dir = OUT_DIR.value or os.path.join(cfg.workdir, f"stage3_selection{suffix}")
    stage3_selection.run_selection(cfg, info, names, out_dir, EPOCHS.value, UPDATE_MEMORY.value)


if __name__ == "__main__":
    common.run(main)
