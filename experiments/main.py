"""The main job: the whole paper on one dataset, from data to Table 1 (README's first command).

    python -m experiments.main                       # embedded default, minutes on 2 CPU cores
    python -m experiments.main --schedule=paper      # the paper's 227 px, 12/12/2 epochs

Generates the embedded dataset if needed, trains stage 1, stage 2 and stage 3 (Full), trains the
w/o Rank baseline, evaluates both with the paper's protocol and prints the Table-1-style result.
Everything lands in `<workdir>` (default work/<dataset>): checkpoints, TensorBoard logs, eval/.
"""

import os

from absl import flags

from experiments import common

VARIANTS = flags.DEFINE_list("variants", ["wo_rank", "full"], "Table 1 rows to produce.")


def main(argv):
    del argv
    cfg, info = common.build_config("main", variant="rank_l")
    from fashionsearchnet_v2.training import ablation

    out_dir = os.path.join(cfg.workdir, "eval")
    ablation.run_ablation(cfg, info, VARIANTS.value, out_dir)
    print(f"results, figures and tables: {out_dir}   TensorBoard: tensorboard --logdir {cfg.workdir}")


if __name__ == "__main__":
    common.run(main)
