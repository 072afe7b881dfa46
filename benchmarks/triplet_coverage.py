"""How many of stage 2's L_T anchors get a triplet at a given batch size (decision 70).

L_T's triplets are mined inside each batch (decision 15, `losses.mine_triplets`): a labelled anchor adds
to L_T only when the same batch holds another image with its value (the positive) and one with another
labelled value (the negative). The paper gives no batch size (§4.1), so this measures what the choice
costs on a converted dataset's training split: each epoch a fresh random permutation cut into full
batches (as training's shuffle), every batch through `mine_triplets` itself, and per attribute the share
of labelled anchors it marks valid. Labels only; no image is decoded, no network is run.

    python benchmarks/triplet_coverage.py --data_dir=data/celeba --batch_sizes=16,32,64,128 --epochs=2 --seed=0
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def coverage(labels: np.ndarray, batch_size: int, epochs: int = 1, seed: int = 0) -> np.ndarray:
    """Per attribute, the share of labelled anchors that `losses.mine_triplets` gives a valid triplet.

    Args:
      labels: int `[N, A]`, -1 = unlabelled.
      batch_size: images a batch; each epoch uses the N // batch_size full batches of a permutation.
      epochs, seed: how many permutations, and the seed of both the permutations and the mining.

    Returns:
      float `[A]`: valid anchors / labelled anchors (NaN where no anchor is labelled).
    """
    import tensorflow as tf

    from fashionsearchnet_v2 import losses

    labels = np.asarray(labels, np.int64)
    if labels.ndim != 2 or batch_size < 2 or batch_size > len(labels):
        raise ValueError(f"need labels [N, A] with 2 <= batch_size <= N; got {labels.shape}, {batch_size}")
    mine = tf.function(lambda batch, s: losses.mine_triplets(batch, s)[2], autograph=False)
    rng = np.random.default_rng(seed)
    valid = np.zeros(labels.shape[1], np.int64)
    labelled = np.zeros(labels.shape[1], np.int64)
    for epoch in range(epochs):
        order = rng.permutation(len(labels))
        for b in range(len(labels) // batch_size):
            batch = labels[order[b * batch_size : (b + 1) * batch_size]]
            valid += mine(tf.constant(batch), tf.constant([seed * 1000003 + epoch, b])).numpy().sum(0)
            labelled += (batch >= 0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return valid / labelled


def training_labels(data_dir: str) -> tuple[list[str], np.ndarray]:
    """The attribute names and the int `[N, A]` labels of `data_dir`'s training split."""
    import tensorflow as tf

    from fashionsearchnet_v2.data import records, schema

    info = schema.load_dataset_info(data_dir)
    spec = {records.FEATURE_LABELS: tf.io.FixedLenFeature([info.num_attributes], tf.int64)}
    rows = [
        ex[records.FEATURE_LABELS].numpy()
        for ex in tf.data.TFRecordDataset(info.shard_paths("train"))
        .batch(1024)
        .map(lambda s: tf.io.parse_example(s, spec))
    ]
    return info.attribute_names, np.concatenate(rows)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", required=True, help="a converted dataset (dataset.json + shards)")
    p.add_argument("--batch_sizes", default="16,32,64,128", help="comma-separated batch sizes")
    p.add_argument("--epochs", type=int, default=2, help="random permutations per batch size")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    sizes = [int(b) for b in args.batch_sizes.split(",")]
    names, labels = training_labels(args.data_dir)
    print(f"{args.data_dir}: {len(labels)} training images, {len(names)} attributes; "
          f"unlabelled share per attribute: " + ", ".join(
              f"{n} {s:.2f}" for n, s in zip(names, (labels < 0).mean(0))))  # fmt: skip
    print(f"\nShare of labelled anchors with an in-batch triplet (epochs {args.epochs}, seed {args.seed}):\n")
    print("| batch | " + " | ".join(names) + " | mean | all anchors |")
    print("|---:|" + "---:|" * (len(names) + 2))
    for size in sizes:
        share = coverage(labels, size, args.epochs, args.seed)
        weights = (labels >= 0).sum(0)
        overall = float(np.nansum(share * weights) / weights.sum())
        cells = " | ".join(f"{s:.3f}" for s in share)
        print(f"| {size} | {cells} | {np.nanmean(share):.3f} | {overall:.3f} |", flush=True)


if __name__ == "__main__":
    main()
