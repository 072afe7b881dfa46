"""The paper's Table 1 on one dataset: every variant trained (what is missing) and evaluated alike.

    python -m experiments.ablation --dataset=synthetic [--seeds=0,1,2]
        [--variants=amnet,wo_rank,rank,rank_l,rank_lg,full,full_ff]

Each seed trains in `<workdir>/seed<N>`; writes `<workdir>/ablation/`: table.md (mean ± std over seeds,
with the manipulation gain), table.json and topk_curves.png.
"""

import os

from absl import flags

from experiments import common
from fashionsearchnet_v2 import configs

VARIANTS = flags.DEFINE_list("variants", list(configs.VARIANTS), "Table 1 rows to train and evaluate.")
OUT_DIR = flags.DEFINE_string("out_dir", None, "Output directory (default <workdir>/ablation).")


def main(argv):
    del argv
    common.check_names("--variants", VARIANTS.value, configs.VARIANTS)
    cfgs, info = common.build_configs("ablation", variant="rank_l")
    from fashionsearchnet_v2.training import ablation

    out_dir = OUT_DIR.value or os.path.join(os.path.dirname(cfgs[0].workdir), "ablation")
    ablation.run_ablation(cfgs, info, VARIANTS.value, out_dir)


if __name__ == "__main__":
    common.run(main)
