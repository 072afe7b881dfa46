"""The main job: the whole paper on one dataset, from data to Table 1 (README's first command).

    python -m experiments.main                       # embedded default, minutes on 2 CPU cores
    python -m experiments.main --seeds=0,1,2         # three seeds, mean ± std per cell
    python -m experiments.main --schedule=paper      # the paper's 227 px, 12 + 12 epochs

Generates the embedded dataset if needed, trains stage 1, stage 2 and stage 3 (Full), evaluates it with
the paper's protocol beside its baselines, the same searches with the query not manipulated (the
manipulation gain) and stage 3's untrained control (Rank-LG at step 0: what L_G learned), and prints the
Table-1-style result. `--variants=wo_rank,full` adds rows (the whole
Table 1 is experiments.ablation). Each seed runs in
`<workdir>/seed<N>` (checkpoints, TensorBoard logs, per-seed evaluations); the table over seeds goes to
`<workdir>/eval/`.
"""

import os

from absl import flags

from experiments import common
from fashionsearchnet_v2 import configs

VARIANTS = flags.DEFINE_list(
    "variants",
    ["rank_lg_untrained", "full"],
    "Table 1 rows to produce (experiments.ablation: all); Full's control, Rank-LG untrained, is stage 3's "
    "start and costs no training.",
)


def main(argv):
    del argv
    common.check_names("--variants", VARIANTS.value, configs.VARIANTS)
    cfgs, info = common.build_configs("main", variant="rank_l")
    from fashionsearchnet_v2.training import ablation

    base = os.path.dirname(cfgs[0].workdir)
    out_dir = os.path.join(base, "eval")
    ablation.run_ablation(cfgs, info, VARIANTS.value, out_dir)
    print(f"results, figures and tables: {out_dir}   TensorBoard: tensorboard --logdir {base}")


if __name__ == "__main__":
    common.run(main)
