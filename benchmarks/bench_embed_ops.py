"""Two op-level choices inside `embed`, each timed against its alternative in one process (issue 26).

* ROI pooling's edge padding (`model/roi.py`, `_pad_edges`): the border of the conv5 maps replicated
  once by two concats (what the layer does) against `tf.pad(mode="SYMMETRIC")` (what it did), on a batch
  of conv5 maps at 128 px (6 x 6) and 227 px (13 x 13). The two give the same values (tests/test_roi.py).
* ROI pooling (`model/roi.py`, `RoiPooling`) at 128 px, 6 boxes per image: the layer (one
  crop_and_resize of every box, then one 2 x 2 max-pool) against cropping and pooling 4 images at a time
  (the same values bit for bit; a smaller scratch tensor of samples between the two ops).
* fc8_a, the first layer of every attribute branch: six separate products (the six Dense layers) against
  one batched einsum over the attributes, at a batch of 64 (`embed`'s batch in bench_extract.py).

Rows alternate within each round, so each pair saw the same machine load; the ratio printed is the
alternative's median time over the baseline's (> 1: the alternative is slower).

    python benchmarks/bench_embed_ops.py
    python benchmarks/bench_embed_ops.py --repeats=20 --rounds=2    # smoke run
"""

import argparse
import os
import statistics
import time

import fashionsearchnet_v2  # noqa: F401  (oneDNN on before TensorFlow loads)


def _time(fn, repeats: int) -> float:
    """Seconds per call, median over `repeats` calls (after two warm-up calls)."""
    fn()
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=100, help="timed calls per row and round")
    p.add_argument("--rounds", type=int, default=3, help="rows in turn, this many times")
    p.add_argument("--batch_size", type=int, default=64)
    args = p.parse_args()

    import numpy as np
    import tensorflow as tf

    from fashionsearchnet_v2.model.backbone import feature_grid_size
    from fashionsearchnet_v2.model.roi import RoiPooling, _pad_edges, samples_per_bin

    load = os.getloadavg()[0]
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average {load:.1f}")
    rng = np.random.default_rng(0)
    b = args.batch_size
    pairs = {}
    for size in (128, 227):
        grid = feature_grid_size(size)
        feats = tf.constant(rng.standard_normal((b, grid, grid, 384)).astype(np.float32))
        concat = tf.function(lambda f=feats: _pad_edges(f, tf.zeros((b, 6, 4)))[0])
        mirror = tf.function(lambda f=feats: tf.pad(f, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC"))
        if not np.array_equal(concat().numpy(), mirror().numpy()):
            raise SystemExit("the concat padding differs from MirrorPad: fix model/roi.py before timing it")
        pairs[f"edge padding, {b} x {grid} x {grid} x 384 ({size} px)"] = (
            ("concats", concat),
            ("MirrorPad", mirror),
        )
    grid, crop, chunk, boxes_per_image = feature_grid_size(128), 4, 4, 6
    m = samples_per_bin(grid, crop)
    conv5 = tf.constant(rng.standard_normal((b, grid, grid, 384)).astype(np.float32))
    low = rng.uniform(0.0, 0.5, (b, boxes_per_image, 2))
    high = np.minimum(low + rng.uniform(0.2, 0.5, (b, boxes_per_image, 2)), 1.0)
    boxes = tf.constant(np.concatenate([low, high], -1).astype(np.float32))
    layer = RoiPooling((crop, crop), m)
    whole = tf.function(lambda: layer([conv5, boxes]))

    @tf.function
    def chunked():
        padded, moved = _pad_edges(conv5, boxes)
        index = tf.repeat(tf.range(chunk), boxes_per_image)
        outs = []
        for start in range(0, b, chunk):
            crops = tf.image.crop_and_resize(
                padded[start : start + chunk], tf.reshape(moved[start : start + chunk], [-1, 4]), index,
                (crop * m, crop * m),
            )  # fmt: skip
            outs.append(tf.nn.max_pool2d(crops, m, m, "VALID"))
        return tf.reshape(tf.concat(outs, 0), [b, boxes_per_image, crop, crop, 384])

    if b % chunk or not np.array_equal(whole().numpy(), chunked().numpy()):
        raise SystemExit(
            f"chunked ROI pooling differs from the layer (or --batch_size is not a multiple of {chunk})"
        )
    pairs[f"ROI pooling, {b} x {boxes_per_image} boxes on {grid} x {grid} x 384 (128 px)"] = (
        ("the layer", whole),
        (f"{chunk} images at a time", chunked),
    )
    attributes, fan_in, units = 6, 6144, 512  # the embedded default's fc8_a at 128 px (4 x 4 x 384 inputs)
    x = tf.constant(rng.standard_normal((b, attributes, fan_in)).astype(np.float32))
    w = tf.constant((0.01 * rng.standard_normal((attributes, fan_in, units))).astype(np.float32))
    bias = tf.zeros((attributes, units))
    separate = tf.function(lambda: [tf.nn.relu(x[:, a] @ w[a] + bias[a]) for a in range(attributes)])
    batched = tf.function(lambda: tf.nn.relu(tf.einsum("bai,aio->bao", x, w) + bias))
    pairs[f"fc8_a, {attributes} x ({b} x {fan_in} @ {fan_in} x {units})"] = (
        ("six MatMuls", separate),
        ("one einsum", batched),
    )

    times = {name: ([], []) for name in pairs}
    for r in range(args.rounds):
        for name, ((_, base), (_, alt)) in pairs.items():
            times[name][0].append(_time(base, args.repeats))
            times[name][1].append(_time(alt, args.repeats))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n")
    print("| op | baseline | ms | alternative | ms | alternative / baseline |")
    print("|---|---|---:|---|---:|---:|")
    for name, ((base_name, _), (alt_name, _)) in pairs.items():
        base_ms, alt_ms = (1e3 * statistics.median(t) for t in times[name])
        print(
            f"| {name} | {base_name} | {base_ms:.2f} | {alt_name} | {alt_ms:.2f} | {alt_ms / base_ms:.2f}x |"
        )


if __name__ == "__main__":
    main()
