"""Stage 1 (§3.2, §3.4): train the backbone and the GAP classifiers w_a with L_C.

python -m experiments.stage1 --dataset=synthetic [--quick] [--alexnet_weights=bvlc_alexnet.npy]
"""

from experiments import common


def main(argv):
    del argv
    cfg, info = common.build_config("stage1", variant="")
    from fashionsearchnet_v2.training import run

    run.run_stage1(cfg, info)


if __name__ == "__main__":
    common.run(main)
