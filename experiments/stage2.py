"""Stage 2 (§3.2, §3.4): localization, ROI pooling, attribute branches; λ_C L_C + λ_T L_T + λ_TC L_TC.

    python -m experiments.stage2 --dataset=synthetic [--variant=rank_l] [--feature_fusion]

Starts from `<workdir>/stage1` (a checked partial restore) and writes `<workdir>/stage2_<variant>`.
"""

from absl import flags

from experiments import common
from fashionsearchnet_v2 import configs

VARIANT = flags.DEFINE_enum(
    "variant", None, list(configs.STAGE2_VARIANTS),
    "Table 1 model: wo_rank (L_C+L_TC), rank (no localization), rank_l (default), rank_l_ff (fusion).",
)  # fmt: skip


def main(argv):
    del argv
    variant = VARIANT.value or ("rank_l_ff" if common.FEATURE_FUSION.value else "rank_l")
    cfg, info = common.build_config("stage2", variant=variant)
    from fashionsearchnet_v2.training import run

    run.run_stage2(cfg, info)


if __name__ == "__main__":
    common.run(main)
