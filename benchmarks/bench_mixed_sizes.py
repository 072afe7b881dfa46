"""A catalogue of mixed image sizes through `ExportedModel.embed`: batched by size against shared batches.

`embed` takes one size per batch, so a folder of many sizes ran at batches near 1 ("by size"); images of
mixed sizes now go to `embed_resized` in full batches, each resized on the client with `embed`'s own
resize ("shared"), with the same outputs up to float32 rounding (tests/test_export.py). Rows, in turn round by
round in one process (so all see the same machine load), on the float32 export of a random-weight model of
the embedded default's shapes (128 px) or the paper's (227 px), `bench_extract.random_model`:

* one size: `--count` images all of one size (`--one_size`), `embed` in full batches: the ceiling;
* by size: `--count` images of `--kinds` sizes drawn from 100-600 px a side, batched by size (what an
  export without `embed_resized` does);
* shared: the same images through `embed_resized`.

    python benchmarks/bench_mixed_sizes.py --image_size=128 --count=256 --kinds=64 --rounds=3
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import fashionsearchnet_v2  # noqa: F401  (oneDNN on before TensorFlow loads)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image_size", type=int, default=128)
    parser.add_argument("--count", type=int, default=256, help="images per row and round")
    parser.add_argument("--kinds", type=int, default=64, help="distinct sizes among them")
    parser.add_argument("--one_size", type=int, default=300, help="the one-size row's side, px")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    import numpy as np
    from bench_extract import export_model, random_model

    from fashionsearchnet_v2.serving import export

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    rng = np.random.default_rng(args.seed)
    sides = rng.integers(100, 601, size=(args.kinds, 2))
    mixed = [rng.integers(0, 256, (*sides[i % args.kinds], 3), dtype=np.uint8) for i in range(args.count)]
    s = args.one_size
    one = [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for _ in range(args.count)]
    with tempfile.TemporaryDirectory() as root:
        net, layer, vocab, cfg = random_model(args.image_size)
        model = export.ExportedModel(export_model(net, layer, vocab, cfg, args.image_size, root))
        shared = model._embed_resized

        def by_size():
            model._embed_resized = None
            try:
                return model.embed(mixed, args.batch_size)
            finally:
                model._embed_resized = shared

        rows = {
            "one size": lambda: model.embed(one, args.batch_size),
            "by size": by_size,
            "shared": lambda: model.embed(mixed, args.batch_size),
        }
        for fn in rows.values():  # warm-up: trace every batch shape once
            fn()
        a, b = by_size()["global_representation"], rows["shared"]()["global_representation"]
        print(f"shared against by size: global representations differ by at most {np.abs(a - b).max():.2g} "
              f"(|values| up to {np.abs(a).max():.2g}; float32 rounding of other batch shapes)")  # fmt: skip
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-4)
        seconds = {name: [] for name in rows}
        for r in range(args.rounds):
            for name, fn in rows.items():
                start = time.perf_counter()
                fn()
                seconds[name].append(time.perf_counter() - start)
            print(f"round {r + 1}: " + ", ".join(f"{n} {args.count / t[-1]:.1f} images/s" for n, t in seconds.items()),
                  flush=True)  # fmt: skip
    speed = {name: args.count / statistics.median(t) for name, t in seconds.items()}
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}")
    print(f"| {args.image_size} px, {args.count} images, {args.kinds} sizes, batch {args.batch_size} | images/s "
          "(median of rounds) | / by size |\n|---|---:|---:|")  # fmt: skip
    for name, v in speed.items():
        print(f"| {name} | {v:.1f} | {v / speed['by size']:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
