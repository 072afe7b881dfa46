"""Chooses AMNet's training on the validation split (never on query or gallery; issue 24).

    python -m experiments.amnet_select --dataset=synthetic [--seed=0] [--candidates=old,proto-adam1e-3]
        [--select_epochs=3] [--out_dir=DIR]

Trains every candidate of `training.amnet_selection.CANDIDATES` on top of the seed's trained stage 1
(run experiments.stage1 first) and writes `<workdir>/seed<N>/amnet_selection/selection.md`: validation
Top-K at step 0, after each epoch and where selection stops, per candidate, with the manipulation gain
and the ranking loss on validation triplets.
"""

import os

from absl import flags

from experiments import common

CANDIDATES = flags.DEFINE_list("candidates", None, "Candidates to train (default: all).")
EPOCHS = flags.DEFINE_float("select_epochs", 3.0, "Epochs per candidate (validated after each).")
OUT_DIR = flags.DEFINE_string("out_dir", None, "Default <workdir>/seed<N>/amnet_selection.")


def main(argv):
    del argv
    from fashionsearchnet_v2.training import amnet_selection

    names = CANDIDATES.value or list(amnet_selection.CANDIDATES)
    common.check_names("--candidates", names, list(amnet_selection.CANDIDATES))  # before any data is read
    cfg, info = common.build_config("amnet", variant="amnet")
    out_dir = OUT_DIR.value or os.path.join(cfg.workdir, "amnet_selection")
    amnet_selection.run_selection(cfg, info, names, out_dir, EPOCHS.value)


if __name__ == "__main__":
    common.run(main)
