"""The paper's Table 1 on one dataset: every variant trained (what is missing) and evaluated alike.

    python -m experiments.ablation --dataset=synthetic [--variants=wo_rank,rank,rank_l,rank_lg,full,full_ff]

Writes `<workdir>/ablation/`: table.md, table.json, topk_curves.png and one folder per variant.
"""

import os

from absl import flags

from experiments import common
from fashionsearchnet_v2 import configs

VARIANTS = flags.DEFINE_list("variants", list(configs.VARIANTS), "Table 1 rows to train and evaluate.")
OUT_DIR = flags.DEFINE_string("out_dir", None, "Output directory (default <workdir>/ablation).")


def main(argv):
    del argv
    unknown = [v for v in VARIANTS.value if v not in configs.VARIANTS]
    if unknown:
        common.fail(f"unknown --variants {unknown}; valid: {', '.join(configs.VARIANTS)}")
    cfg, info = common.build_config("ablation", variant="rank_l")
    from fashionsearchnet_v2.training import ablation

    ablation.run_ablation(cfg, info, VARIANTS.value, OUT_DIR.value or os.path.join(cfg.workdir, "ablation"))


if __name__ == "__main__":
    common.run(main)
