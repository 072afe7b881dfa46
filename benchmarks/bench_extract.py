"""Feature extraction through the exported `embed` signature against the bare backbone's inference.

Issue 11: extracting features through `embed` (preprocessing, backbone, AAMs, boxes, ROI pooling, every
attribute branch, the global representation) should run at >= 0.85x the images/s of the bare backbone's
inference on the same batches; and how long 10,000 images take (the paper, §4.7: about 60 s on a
Titan X GPU).

Rows, each at one input size, measured alternately in one process (so both see the same machine load):

* embed: the SavedModel's `embed` signature, loaded with `tf.saved_model.load` as the service and
  `experiments.index` load it, on uint8 RGB batches (what a client sends).
* backbone: `build_backbone` (conv1-conv7) with the same in-graph preprocessing
  (`records.preprocess_image`) in a `tf.function`, on the same uint8 batches.

Models have random weights (speed does not depend on them) and the shapes of:
* 128 px: the embedded default's network (6 attributes, 27 values, BatchNorm, r = 256);
* 227 px: the paper's (9 attributes with DARN's 185 values, LRN, r = 256).
`--count` images (default 10,000) are then embedded end to end in batches of `--batch_size`: the time
for 10,000 images. Distinct images are drawn once (`--distinct`) and cycled.

    python benchmarks/bench_extract.py                                   # both sizes, 10,000 images each
    python benchmarks/bench_extract.py --sizes=128 --count=640 --repeats=3   # smoke run
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import fashionsearchnet_v2  # noqa: F401  (oneDNN on before TensorFlow loads)

GOAL = 0.85
SYNTHETIC_VALUES = (8, 4, 4, 3, 4, 4)
DARN_VALUES = (20, 13, 55, 7, 28, 11, 26, 8, 17)


def random_export(image_size: int, root: str):
    """(export directory, ModelConfig) of a random-weight model of that size's shapes (see the module
    docstring): the embedded default's network at 128 px, the paper's with DARN's attributes otherwise."""
    import keras
    import numpy as np

    from fashionsearchnet_v2 import configs
    from fashionsearchnet_v2.data import schema
    from fashionsearchnet_v2.model import memory_block, network
    from fashionsearchnet_v2.serving import export

    if image_size == 128:
        cfg = configs.ModelConfig(image_size=128, batch_norm=True, lrn=False, box_backend="tf")
        values = SYNTHETIC_VALUES
    else:
        cfg = configs.ModelConfig(image_size=image_size, box_backend="tf")
        values = DARN_VALUES
    vocab = export.Vocabulary(
        tuple(schema.Attribute(f"a{i}", [f"v{j}" for j in range(n)]) for i, n in enumerate(values))
    )
    keras.utils.set_random_seed(0)
    net = network.build_network(vocab.num_values, vocab.names, cfg, "full")
    layer = memory_block.GlobalRepresentation(
        vocab.num_values, cfg.fc10_size, r=256, name="global_representation"
    )
    layer.build([(None, len(values), cfg.fc10_size), (None, sum(values))])
    layer.memory_block.assign(
        np.random.default_rng(0).normal(size=(sum(values), cfg.fc10_size)).astype(np.float32)
    )
    out = export.save(
        export.ServingModule(net, layer, vocab, image_size), vocab, os.path.join(root, f"e{image_size}")
    )
    return out, cfg


def build(image_size: int, root: str):
    """(loaded embed signature, backbone function) of random-weight models of that size's shapes."""
    import keras
    import tensorflow as tf

    from fashionsearchnet_v2.data import records
    from fashionsearchnet_v2.model import backbone

    out, cfg = random_export(image_size, root)
    embed = tf.saved_model.load(out).signatures["embed"]

    image = keras.Input((image_size, image_size, 3))
    feats = backbone.build_backbone(
        image, cfg.width, cfg.conv5_filters, cfg.conv67_filters, cfg.lrn, cfg.batch_norm
    )
    bare = keras.Model(image, feats["conv7"])

    @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
    def backbone_fn(images):
        return bare(records.preprocess_image(images, image_size), training=False)

    return embed, backbone_fn


def images(n: int, size: int):
    """n distinct uint8 RGB garments of the embedded dataset's kind, drawn at `size` px."""
    import numpy as np

    from fashionsearchnet_v2.data import synthetic

    return np.stack([synthetic.render(synthetic.params_for(7, i), size)[0] for i in range(n)])


def measure(size: int, args, root: str) -> dict:
    import tensorflow as tf

    embed, backbone_fn = build(size, root)
    pool = images(args.distinct, size)
    batches = [tf.constant(pool[i : i + args.batch_size]) for i in range(0, len(pool), args.batch_size)]
    batches = [b for b in batches if b.shape[0] == args.batch_size] or batches

    def run_embed(b):
        out = embed(images=b)
        return {k: v.numpy() for k, v in out.items()}  # what a client receives

    def run_backbone(b):
        return backbone_fn(b).numpy()

    for b in batches[:2]:  # warm-up: tracing, oneDNN primitive creation
        run_embed(b), run_backbone(b)
    times = {"embed": [], "backbone": []}
    for r in range(args.repeats):
        b = batches[r % len(batches)]
        for name, fn in (("embed", run_embed), ("backbone", run_backbone)) if r % 2 == 0 else (
            ("backbone", run_backbone), ("embed", run_embed)):  # fmt: skip
            start = time.perf_counter()
            fn(b)
            times[name].append(time.perf_counter() - start)
    n = args.batch_size
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    start = time.perf_counter()
    done = 0
    while done < args.count:
        b = batches[(done // n) % len(batches)]
        take = min(n, args.count - done)
        run_embed(b[:take] if take < n else b)
        done += take
    total = time.perf_counter() - start
    return {"size": size, "embed": rate["embed"], "backbone": rate["backbone"],
            "ratio": rate["embed"] / rate["backbone"], "count": args.count, "seconds": total}  # fmt: skip


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="128,227")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=12, help="timed batches per row (alternating rows)")
    parser.add_argument("--distinct", type=int, default=256, help="distinct images drawn (then cycled)")
    parser.add_argument("--count", type=int, default=10_000, help="images embedded end to end")
    args = parser.parse_args()
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, TF_ENABLE_ONEDNN_OPTS="
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS')}, load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(measure(size, args, root))
            r = rows[-1]
            print(f"{size} px: embed {r['embed']:.1f} images/s, backbone {r['backbone']:.1f} images/s, "
                  f"ratio {r['ratio']:.2f}x; {r['count']:,} images through embed in {r['seconds']:.1f} s", flush=True)  # fmt: skip
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n")
    print("| input | embed images/s | bare backbone images/s | embed / backbone | goal | "
          f"{args.count:,} images through embed |")  # fmt: skip
    print("|---|---:|---:|---:|---|---:|")
    for r in rows:
        ok = "met" if r["ratio"] >= GOAL else "NOT met"
        print(f"| {r['size']} px | {r['embed']:.1f} | {r['backbone']:.1f} | {r['ratio']:.2f}x | >= {GOAL} ({ok}) | "
              f"{r['seconds']:.0f} s |")  # fmt: skip
    return 0 if all(r["ratio"] >= GOAL for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
