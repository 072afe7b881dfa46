"""Times ROI-box estimation from AAMs on one CPU core against the 0.5 ms/image budget (paper §4.7: 2 ms).

Input: [256, 12, 13, 13] random smooth maps (12 attributes, conv7 13x13 as with AlexNet at 227 px).
Reports ms per image for the scikit-image path (`boxes_from_maps`) and the pure-TF path
(`boxes_from_maps_tf` under `tf.function`), plus the bit-exact agreement of the two.

    python benchmarks/bench_boxes.py [--batch 256] [--repeats 20]
"""

import os

# One core: thread pools are sized from these when numpy / TF load, so set them before any import
# (the oneDNN switch too, which importing fashionsearchnet_v2 would otherwise set).
os.environ["OMP_NUM_THREADS"] = "1"
os.environ["OPENBLAS_NUM_THREADS"] = "1"
os.environ["MKL_NUM_THREADS"] = "1"
os.environ["TF_ENABLE_ONEDNN_OPTS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from fashionsearchnet_v2.model import aam  # noqa: E402

TARGET_MS = 0.5


def _best_of(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls, in seconds (best-of filters scheduler noise)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--attributes", type=int, default=12)
    parser.add_argument("--size", type=int, default=13)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})

    rng = np.random.default_rng(0)
    b, a, s = args.batch, args.attributes, args.size
    noise = rng.standard_normal((b * a, s, s)).astype(np.float32)
    maps = gaussian_filter(noise, (0, 1.5, 1.5)).astype(np.float32).reshape(b, a, s, s)

    boxes_tf = tf.function(
        aam.boxes_from_maps_tf, input_signature=[tf.TensorSpec([None, a, s, s], tf.float32)]
    )
    maps_t = tf.constant(maps)
    ref = aam.boxes_from_maps(maps)  # warm-up
    got = boxes_tf(maps_t).numpy()  # trace + warm-up

    t_np = _best_of(lambda: aam.boxes_from_maps(maps), args.repeats)
    t_tf = _best_of(lambda: boxes_tf(maps_t).numpy(), args.repeats)

    print(f"maps [{b}, {a}, {s}, {s}], 1 CPU core, best of {args.repeats}")
    for name, t in [("skimage (boxes_from_maps)", t_np), ("tf (boxes_from_maps_tf, tf.function)", t_tf)]:
        per = 1e3 * t / b
        verdict = "OK" if per <= TARGET_MS else "OVER"
        print(
            f"  {name:40s} {per:7.4f} ms/image  ({1e3 * t:7.2f} ms/batch)  target {TARGET_MS} ms: {verdict}"
        )
    print(f"  paths agree bit for bit: {np.array_equal(ref, got)}")


if __name__ == "__main__":
    main()
