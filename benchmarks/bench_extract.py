"""Feature extraction through the exported `embed` signature against the bare backbone's inference.

Issue 11: extracting features through `embed` (preprocessing, backbone, AAMs, boxes, ROI pooling, every
attribute branch, the global representation) should run at >= 0.9x (issue 26; issue 11 asked 0.85x) the images/s of the bare backbone's
inference on the same batches; and how long 10,000 images take (the paper, §4.7: about 60 s on a
Titan X GPU).

Issue 16: the same `embed` exported in bfloat16 (`experiments.export --precision=bfloat16`, WORKSPACE.md
decision 63) should run at >= 1.3x the float32 export's images/s.

Rows, each at one input size, measured in turn batch by batch in one process (so all see the same
machine load):

* embed: the SavedModel's `embed` signature, loaded with `tf.saved_model.load` as the service and
  `experiments.index` load it, on uint8 RGB batches (what a client sends); float32 (the default export).
* embed bfloat16: the same weights exported with `precision="bfloat16"`.
* backbone: `build_backbone` (conv1-conv7) with the same in-graph preprocessing
  (`records.preprocess_image`) in a `tf.function`, on the same uint8 batches, in float32.
* backbone bfloat16: the same under the bfloat16 export's policy (bfloat16 compute, float32 weights):
  the baseline of `embed bfloat16` (issue 26 asks `embed` at >= 0.9x its backbone; in bfloat16 the
  ratio is `embed bfloat16 / backbone bfloat16`).

Models have random weights (speed does not depend on them) and the shapes of:
* 128 px: the embedded default's network (6 attributes, 27 values, BatchNorm, r = 256);
* 227 px: the paper's (9 attributes with DARN's 185 values, LRN, r = 256).
With `--cuts`, the float32 network is also timed cut after each of its steps (Keras sub-models of the
same network, in-process, the same preprocessing, in turn with the rows above): `to_maps` (backbone, GAP
classifiers and AAMs), `to_boxes` (+ the boxes), `to_roi` (+ ROI pooling) and `network` (every output);
the differences between neighbours are what each step adds to a batch in wall time, where a profile sums
op times over threads. `--roi_pooling=bilinear` times the networks with one bilinear sample per bin
instead of the default's max over m x m samples (WORKSPACE decision 8).

`--count` images (default 10,000) are then embedded end to end in batches of `--batch_size` by each
export: the time for 10,000 images. Distinct images are drawn once (`--distinct`) and cycled.

    python benchmarks/bench_extract.py                                   # both sizes, 10,000 images each
    python benchmarks/bench_extract.py --sizes=128 --count=640 --repeats=3   # smoke run
"""

import argparse
import dataclasses
import os
import statistics
import sys
import tempfile
import time

import fashionsearchnet_v2  # noqa: F401  (oneDNN on before TensorFlow loads)

GOAL = 0.9  # issue 26 (issue 11: 0.85)
BF16_GOAL = 1.3  # issue 16: bfloat16 embed vs float32 embed
SYNTHETIC_VALUES = (8, 4, 4, 3, 4, 4)
DARN_VALUES = (20, 13, 55, 7, 28, 11, 26, 8, 17)


def random_model(image_size: int, roi_pooling: str = ""):
    """(network, global layer, vocabulary, ModelConfig) of random weights with that size's shapes (see the
    module docstring): the embedded default's network at 128 px, the paper's with DARN's attributes otherwise.
    `roi_pooling` ("max" or "bilinear") replaces ModelConfig's default where given."""
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
    if roi_pooling:
        cfg = dataclasses.replace(cfg, roi_pooling=roi_pooling)
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
    return net, layer, vocab, cfg


def export_model(net, layer, vocab, cfg, image_size: int, root: str, precision: str = "float32") -> str:
    """Exports a `random_model` in `precision` under `root`; returns the export directory."""
    from fashionsearchnet_v2.serving import export

    rebuilt, _ = export.exportable_network(net, cfg, vocab, precision=precision)
    return export.save(
        export.ServingModule(rebuilt, layer, vocab, image_size),
        vocab,
        os.path.join(root, f"e{image_size}-{precision}"),
    )


def random_export(image_size: int, root: str):
    """(float32 export directory, ModelConfig) of a `random_model` (bench_embed_beam.py's model)."""
    net, layer, vocab, cfg = random_model(image_size)
    return export_model(net, layer, vocab, cfg, image_size, root), cfg


#: `--cuts`: (row, the layer whose output ends the cut), in network order.
CUTS = (("to_maps", "attribute_classifier"), ("to_boxes", "aam_boxes"), ("to_roi", "roi_pooling"))


def build(image_size: int, root: str, cuts: bool = False, roi_pooling: str = ""):
    """({precision: loaded embed signature}, {precision: backbone function}, {row: cut function}) of
    random-weight models of that size's shapes; both exports hold the same weights, and the cut functions
    (`--cuts`, else none) run the float32 network up to `CUTS`' layers and whole (`network`)."""
    import keras
    import tensorflow as tf

    from fashionsearchnet_v2.data import records
    from fashionsearchnet_v2.model import backbone

    net, layer, vocab, cfg = random_model(image_size, roi_pooling)
    embeds = {
        p: tf.saved_model.load(export_model(net, layer, vocab, cfg, image_size, root, p)).signatures["embed"]
        for p in ("float32", "bfloat16")
    }

    from fashionsearchnet_v2 import precision

    def bare_backbone(p: str):
        image = keras.Input((image_size, image_size, 3))
        feats = backbone.build_backbone(
            image, cfg.width, cfg.conv5_filters, cfg.conv67_filters, cfg.lrn, cfg.batch_norm,
            dtype=precision.layer_policy(p),
        )  # fmt: skip
        bare = keras.Model(image, feats["conv7"])

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def backbone_fn(images):
            return bare(records.preprocess_image(images, image_size), training=False)

        return backbone_fn

    def cut(outputs):
        part = keras.Model(net.input, outputs)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8)])
        def cut_fn(images):
            return part(records.preprocess_image(images, image_size), training=False)

        return cut_fn

    cut_fns = {}
    if cuts:
        cut_fns = {row: cut(net.get_layer(layer_name).output) for row, layer_name in CUTS}
        cut_fns["network"] = cut(net.output)
    return embeds, {p: bare_backbone(p) for p in ("float32", "bfloat16")}, cut_fns


def images(n: int, size: int):
    """n distinct uint8 RGB garments of the embedded dataset's kind, drawn at `size` px."""
    import numpy as np

    from fashionsearchnet_v2.data import synthetic

    return np.stack([synthetic.render(synthetic.params_for(7, i), size)[0] for i in range(n)])


def measure(size: int, args, root: str) -> dict:
    import tensorflow as tf

    embeds, backbone_fns, cut_fns = build(size, root, args.cuts, args.roi_pooling)
    pool = images(args.distinct, size)
    batches = [tf.constant(pool[i : i + args.batch_size]) for i in range(0, len(pool), args.batch_size)]
    batches = [b for b in batches if b.shape[0] == args.batch_size] or batches

    def embed_fn(signature):
        def run(b):
            out = signature(images=b)
            return {k: v.numpy() for k, v in out.items()}  # what a client receives

        return run

    def run_backbone(fn):
        return lambda b: fn(b).numpy()

    rows = {"embed": embed_fn(embeds["float32"]), "embed_bf16": embed_fn(embeds["bfloat16"])}
    rows["backbone"] = run_backbone(backbone_fns["float32"])
    rows["backbone_bf16"] = run_backbone(backbone_fns["bfloat16"])
    for name, fn in cut_fns.items():
        rows[name] = lambda b, fn=fn: [t.numpy() for t in tf.nest.flatten(fn(b))]
    for b in batches[:2]:  # warm-up: tracing, oneDNN primitive creation
        for fn in rows.values():
            fn(b)
    times = {name: [] for name in rows}
    order = list(rows)
    for r in range(args.repeats):
        b = batches[r % len(batches)]
        for name in order[r % len(order) :] + order[: r % len(order)]:  # each row first in turn
            start = time.perf_counter()
            rows[name](b)
            times[name].append(time.perf_counter() - start)
    n = args.batch_size
    rate = {k: n / statistics.median(v) for k, v in times.items()}
    seconds = {}
    for name in ("embed", "embed_bf16"):
        start = time.perf_counter()
        done = 0
        while done < args.count:
            b = batches[(done // n) % len(batches)]
            take = min(n, args.count - done)
            rows[name](b[:take] if take < n else b)
            done += take
        seconds[name] = time.perf_counter() - start
    profiles = {}
    if args.profile_dir:  # where embed's time goes beyond the backbone's (issue 26)
        import trace_ops

        for name in ("embed", "backbone"):
            logdir = os.path.join(args.profile_dir, f"{name}-{size}px")
            run, it = rows[name], iter(batches * args.profile_batches)
            trace_ops.trace(lambda run=run, it=it: run(next(it)), args.profile_batches, logdir)
            profiles[name] = trace_ops.summarize(logdir, args.profile_batches, top=15)
    per_batch = {k: 1000 * statistics.median(v) for k, v in times.items()}
    return {"size": size, **rate, "ratio": rate["embed"] / rate["backbone"], "profiles": profiles,
            "cuts": [k for k in ("backbone", *cut_fns, "embed") if cut_fns], "ms": per_batch,
            "ratio_bf16": rate["embed_bf16"] / rate["backbone_bf16"],
            "bf16_ratio": rate["embed_bf16"] / rate["embed"], "count": args.count, "seconds": seconds}  # fmt: skip


def trace_ops_format(title: str, summary: dict) -> str:
    import trace_ops

    return (
        trace_ops.format_summary(title, summary)
        .replace("ms per step", "ms per batch")
        .replace("ms/step", "ms/batch")
    )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="128,227")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=12, help="timed batches per row (rows in turn)")
    parser.add_argument("--distinct", type=int, default=256, help="distinct images drawn (then cycled)")
    parser.add_argument("--count", type=int, default=10_000, help="images embedded end to end")
    parser.add_argument("--profile_dir", default="", help="also trace embed and the backbone (trace_ops.py)")
    parser.add_argument("--profile_batches", type=int, default=4)
    parser.add_argument("--cuts", action="store_true", help="also time the network cut after each step")
    parser.add_argument(
        "--roi_pooling", default="", choices=("", "max", "bilinear"),
        help="ModelConfig.roi_pooling of the models timed (default: the config's, max)",
    )  # fmt: skip
    args = parser.parse_args()
    import tensorflow as tf

    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, TF_ENABLE_ONEDNN_OPTS="
          f"{os.environ.get('TF_ENABLE_ONEDNN_OPTS')}, load average {os.getloadavg()[0]:.1f}", flush=True)  # fmt: skip
    rows = []
    with tempfile.TemporaryDirectory() as root:
        for size in (int(s) for s in args.sizes.split(",")):
            rows.append(measure(size, args, root))
            r = rows[-1]
            print(f"{size} px: embed {r['embed']:.1f} images/s (bfloat16 {r['embed_bf16']:.1f}), backbone "
                  f"{r['backbone']:.1f} images/s (bfloat16 {r['backbone_bf16']:.1f}), ratio {r['ratio']:.2f}x "
                  f"(bfloat16 {r['ratio_bf16']:.2f}x), bfloat16 / float32 {r['bf16_ratio']:.2f}x; "
                  f"{r['count']:,} images through embed in {r['seconds']['embed']:.1f} s "
                  f"(bfloat16 {r['seconds']['embed_bf16']:.1f} s)", flush=True)  # fmt: skip
            previous = None
            for name in r["cuts"]:  # --cuts: wall time per batch, cut after each step
                added = "" if previous is None else f", {r['ms'][name] - r['ms'][previous]:+.1f} ms"
                print(f"  {name:9s} {r['ms'][name]:6.1f} ms a batch{added} "
                      f"({r['ms']['backbone'] / r['ms'][name]:.3f}x the backbone's images/s)")  # fmt: skip
                previous = name
            for name, summary in r["profiles"].items():
                print(trace_ops_format(f"\n{name}, {size} px, per batch of {args.batch_size}", summary))
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n")
    print("| input | embed images/s | bare backbone images/s | embed / backbone | goal | embed bfloat16 images/s | "
          "backbone bfloat16 images/s | embed / backbone, bfloat16 | "
          f"bfloat16 / float32 | goal | {args.count:,} images through embed, float32 / bfloat16 |")  # fmt: skip
    print("|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|")
    for r in rows:
        ok = "met" if r["ratio"] >= GOAL else "NOT met"
        ok16 = "met" if r["bf16_ratio"] >= BF16_GOAL else "NOT met"
        print(f"| {r['size']} px | {r['embed']:.1f} | {r['backbone']:.1f} | {r['ratio']:.2f}x | >= {GOAL} ({ok}) | "
              f"{r['embed_bf16']:.1f} | {r['backbone_bf16']:.1f} | {r['ratio_bf16']:.2f}x | "
              f"{r['bf16_ratio']:.2f}x | >= {BF16_GOAL} ({ok16}) | "
              f"{r['seconds']['embed']:.0f} s / {r['seconds']['embed_bf16']:.0f} s |")  # fmt: skip
    return 0 if all(r["ratio"] >= GOAL and r["bf16_ratio"] >= BF16_GOAL for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
