"""Embedding a split fed by the tf.data stream, against the same batches held in memory (decision P7).

With tf.data's autotuner on (its default), a model fed by the stream on these 2 cores embedded about half
the images/s it reached on the same batches held in memory, on some of the iterators (293 against
520-590 images/s, at random from one iterator to the next); with the autotuner off it did not. Rows, measured in turn in one
process on the embedded default's gallery (generated into `--data_dir` when missing) with the main job's
stage-2 network (random weights: speed does not depend on them), float32 inference as the evaluation
runs it (`trained.features`' compiled function):

* memory: the batches read once beforehand, then only the model;
* stream, autotuned: `make_dataset(autotune=True)`, tf.data's default;
* stream, autotuner off: `make_dataset()` (P7's default).

    python benchmarks/bench_input.py                 # 3,000 gallery images, 8 rounds
    python benchmarks/bench_input.py --rounds=1      # smoke run

Prints images/s per row and round, the median and the slowest round, and each stream row's median as a
ratio to memory's, all from this run (a new iterator each round, so a slow mode shows as a slow round).
"""

import argparse
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import fashionsearchnet_v2  # noqa: E402, F401  (oneDNN on before TensorFlow loads)


def rate(fn, batches) -> float:
    """Images/s of `fn` over `batches` (an iterable of {"image", "labels"}), fetching fc10 as extraction does."""
    t, n = time.perf_counter(), 0
    for b in batches:
        fn(b["image"])["fc10"].numpy()
        n += len(b["labels"])
    return n / (time.perf_counter() - t)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data_dir", default="data/synthetic", help="Embedded default (generated if missing).")
    p.add_argument("--split", default="gallery", help="Split embedded.")
    p.add_argument("--batch_size", type=int, default=64, help="As trained.features.extract.")
    p.add_argument("--rounds", type=int, default=8, help="Rounds; each measures every row once.")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import keras

    from fashionsearchnet_v2 import configs
    from fashionsearchnet_v2.data import pipeline, schema, synthetic
    from fashionsearchnet_v2.model import network
    from fashionsearchnet_v2.trained import features

    if not os.path.isfile(os.path.join(args.data_dir, "dataset.json")):
        synthetic.write_synthetic(args.data_dir)
    info = schema.load_dataset_info(args.data_dir)
    model_cfg, _, _ = configs.dataset_defaults("synthetic")
    size = model_cfg.image_size
    keras.utils.set_random_seed(0)
    model = network.build_network(info.num_values, info.attribute_names, model_cfg, "full")

    def stream(autotune):
        return pipeline.make_dataset(
            info, args.split, size, args.batch_size, with_boxes=True, autotune=autotune
        )

    fn = features._inference_fn(model, stream(False).element_spec["image"])
    held = list(stream(False))
    rows = {
        "memory": lambda: held,
        "stream, autotuned (tf.data's default)": lambda: stream(True),
        "stream, autotuner off (P7)": lambda: stream(False),
    }
    rate(fn, held[:2])  # trace once
    results = {name: [] for name in rows}
    for r in range(args.rounds):
        for name, batches in rows.items():
            results[name].append(rate(fn, batches()))
            print(f"round {r + 1}: {name}: {results[name][-1]:.0f} images/s", flush=True)
    med = {name: statistics.median(v) for name, v in results.items()}
    print(
        f"\n{info.name} {args.split} ({info.splits[args.split]} images, {size} px), median of {args.rounds}:\n"
    )
    print("| row | images/s (each round) | median | slowest | median vs memory |")
    print("|---|---|---:|---:|---:|")
    for name, v in results.items():
        cells = f"{' / '.join(f'{x:.0f}' for x in v)} | {med[name]:.0f} | {min(v):.0f}"
        print(f"| {name} | {cells} | {med[name] / med['memory']:.2f}x |")
    off, tuned = med["stream, autotuner off (P7)"], med["stream, autotuned (tf.data's default)"]
    print(f"\nautotuner off vs on: {off / tuned:.2f}x the median images/s")


if __name__ == "__main__":
    main()
