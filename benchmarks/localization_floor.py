"""The localization floor of `tests/test_localization_floor.py`, for any seed and training setting.

The test trains a small stage 1 (width 0.25, BatchNorm, 128 px) for 500 steps on 3,000 generated images
and asks the AAM boxes on the gallery to land on the attributes' true regions (which the synthetic
records carry) more often than chance by set margins. The test's configuration lives here, so the test
and this command train the same thing; this command varies it, one seed after the other, to see whether
a cheaper setting keeps the margins on every seed:

    python benchmarks/localization_floor.py --seeds=0,1,2
    python benchmarks/localization_floor.py --seeds=0,1,2 --steps=300 --warmup_steps=0
    python benchmarks/localization_floor.py --seeds=0,1,2 --steps=250 --optimizer=adam --learning_rate=0.001

A seed sets `keras.utils.set_random_seed` and the training config's seed; the data is the same for every
seed (written once to `--data_dir`, or to a temporary directory). Prints, per seed, the hit rate minus
chance of the mean over attributes, `front` and `sleeve_length`, whether each meets the test's margin,
and the training time.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from fashionsearchnet_v2 import startup  # noqa: E402

startup.skip_keras_optional_imports()

import keras  # noqa: E402

from fashionsearchnet_v2 import configs  # noqa: E402
from fashionsearchnet_v2.data import schema, synthetic  # noqa: E402
from fashionsearchnet_v2.model import aam, backbone  # noqa: E402
from fashionsearchnet_v2.retrieval import localization  # noqa: E402
from fashionsearchnet_v2.trained import features  # noqa: E402
from fashionsearchnet_v2.training import run  # noqa: E402

IMAGE_SIZE = 128
#: Hit rate minus chance the test requires: the mean over attributes, and two attributes of their own.
MARGINS = {"mean": 0.05, "front": 0.1, "sleeve_length": 0.05}


def write_data(directory: str) -> schema.DatasetInfo:
    """The test's dataset: 3,000 generated images of 128 px (2,750 training, 200 gallery)."""
    return synthetic.write_synthetic(directory, num_images=3000, image_size=IMAGE_SIZE, num_query=50,
                                     num_gallery=200, progress=False)  # fmt: skip


def floor_config(workdir: str, seed: int = 0, steps: int = 500, batch_size: int = 32, optimizer: str = "sgd",
                 learning_rate: float = 0.01, warmup_steps: int = 100) -> configs.ExperimentConfig:  # fmt: skip
    """The test's network and training (the defaults), float32 so that every CPU trains the same way."""
    cfg = configs.ExperimentConfig(dataset="synthetic", workdir=workdir)
    cfg.model = configs.ModelConfig(image_size=IMAGE_SIZE, width=0.25, conv5_filters=96, conv67_filters=128,
                                    batch_norm=True, lrn=False, fc_sizes=(32,), fc10_size=16, roi_size=2)  # fmt: skip
    cfg.train = configs.TrainConfig(batch_size=batch_size, max_steps=steps, log_every_steps=100,
                                    checkpoint_every_steps=1000, optimizer=optimizer, learning_rate=learning_rate,
                                    momentum=0.9 if optimizer == "sgd" else 0.0, warmup_steps=warmup_steps,
                                    seed=seed, heldout_images=0, summary_images=0, precision="float32")  # fmt: skip
    return cfg


def floor_report(cfg: configs.ExperimentConfig, info: schema.DatasetInfo) -> dict:
    """Seeds Keras with the config's seed, trains stage 1 and scores its gallery boxes
    (`localization.localization_report`: per attribute and `mean`, `hit_rate` and `chance`)."""
    keras.utils.set_random_seed(cfg.train.seed)
    model = run.run_stage1(cfg, info, out=io.StringIO())
    feats = features.extract(model, info, "gallery", IMAGE_SIZE, 64, progress=False, keep_maps=True)
    return localization.localization_report(
        aam.boxes_from_maps(feats["maps"]), feats["true_boxes"], backbone.feature_grid_size(IMAGE_SIZE),
        info.attribute_names,
    )  # fmt: skip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", default="0", help="Comma-separated seeds, trained one after the other.")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--optimizer", default="sgd", choices=["sgd", "adam"])
    parser.add_argument("--learning_rate", type=float, default=0.01)
    parser.add_argument("--warmup_steps", type=int, default=100)
    parser.add_argument("--data_dir", default=None, help="Where the dataset is (written there if missing).")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = args.data_dir or os.path.join(tmp, "data")
        exists = os.path.isfile(os.path.join(data_dir, "dataset.json"))
        info = schema.load_dataset_info(data_dir) if exists else write_data(data_dir)
        print(f"steps={args.steps} batch={args.batch_size} {args.optimizer} lr={args.learning_rate} "
              f"warm-up={args.warmup_steps}; margins required: {MARGINS}")  # fmt: skip
        failed = 0
        for seed in seeds:
            cfg = floor_config(os.path.join(tmp, f"work-seed{seed}"), seed, args.steps, args.batch_size,
                               args.optimizer, args.learning_rate, args.warmup_steps)  # fmt: skip
            start = time.time()
            report = floor_report(cfg, info)
            got = {k: report[k]["hit_rate"] - report[k]["chance"] for k in MARGINS}
            ok = all(got[k] >= MARGINS[k] for k in MARGINS)
            failed += not ok
            shown = "  ".join(f"{k} {v:+.3f}" for k, v in got.items())
            print(f"seed {seed}: {shown}  {'meets' if ok else 'MISSES'} the margins  ({time.time() - start:.0f} s)",
                  flush=True)  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
