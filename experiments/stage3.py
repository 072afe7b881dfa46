"""Stage 3 (§3.3, Eq. 7–8): global representation learning with L_G on fixed attribute representations.

    python -m experiments.stage3 --dataset=synthetic [--noupdate_memory] [--feature_fusion]

By default the memory block M is trained too (Full, the paper's model, what experiments.evaluate
evaluates by default); with --noupdate_memory it stays fixed (Rank-LG). --feature_fusion builds on the
fusion model of stage 2 (Full w/ FF).
"""

import dataclasses

from absl import flags

from experiments import common

UPDATE_MEMORY = flags.DEFINE_bool(
    "update_memory", True, "Train the memory block too (the paper's Full); --noupdate_memory: Rank-LG."
)
R = flags.DEFINE_integer("r", None, "Dimension of the global representation (default 256).")


def main(argv):
    del argv
    variant = "rank_l_ff" if common.FEATURE_FUSION.value else "rank_l"
    cfg, info = common.build_config("stage3", variant=variant)
    changes = {"update_memory": UPDATE_MEMORY.value}
    if R.value:
        changes["r"] = R.value
    cfg.stage3 = dataclasses.replace(cfg.stage3, **changes)
    from fashionsearchnet_v2.training import run

    run.run_stage3(cfg, info)


if __name__ == "__main__":
    common.run(main)
