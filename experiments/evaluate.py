"""The paper's evaluation (§4.4–4.5) of one Table 1 variant: Top-K accuracy per attribute, NDCG@30,
Table-1-style markdown, Top-K curves (Figure 5), result grid (Figure 6) and AAM overlays.

    python -m experiments.evaluate --dataset=synthetic [--variant=full] [--eval_dir=DIR]

Writes `<workdir>/eval/<variant>/` by default (results.json, table.md, topk.png, results_grid.png, aam_queries.png).
"""

import os

from absl import flags

from experiments import common
from fashionsearchnet_v2 import configs

VARIANT = flags.DEFINE_enum("variant", "full", list(configs.VARIANTS), "Table 1 row to evaluate.")
EVAL_DIR = flags.DEFINE_string("eval_dir", None, "Output directory (default <workdir>/eval/<variant>).")


def main(argv):
    del argv
    cfg, info = common.build_config("evaluate", variant=VARIANT.value)
    # TensorFlow loads here, after the flags and the dataset are checked: a refusal comes in a second.
    from fashionsearchnet_v2.retrieval import evaluation
    from fashionsearchnet_v2.trained import checkpoints

    out_dir = EVAL_DIR.value or os.path.join(cfg.workdir, "eval", VARIANT.value)
    try:
        evaluation.evaluate_variant(cfg.workdir, info, VARIANT.value, out_dir)
    except checkpoints.RestoreError as e:
        common.fail(str(e))
    print(f"wrote {out_dir}")


if __name__ == "__main__":
    common.run(main)
