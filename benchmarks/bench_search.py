"""Benchmark of the evaluation protocol at the paper's size (§4.2: 2,000 queries, 18,000 gallery images).

Synthetic Shopping100k-shaped labels (12 attributes, 151 values, skewed value frequencies and unlabelled
attributes so that many manipulated targets exist in the gallery) and random r=256 float32 vectors.
Times `enumerate_manipulations` and the whole `search.evaluate`, and, in the same run, a bare baseline:
float32 matmuls of the same total size (every search against the gallery, in the same chunks) that
any exact search has to pay. Prints searches, seconds, searches/s, peak RSS and the ratio.

    python benchmarks/bench_search.py [--queries 2000] [--gallery 18000] [--dim 256] [--chunk 1024]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np

from fashionsearchnet_v2.retrieval import metrics, search

SHOPPING100K_NUM_VALUES = [16, 17, 19, 14, 10, 15, 2, 11, 16, 7, 9, 15]
NAMES = ["category", "collar", "color", "fabric", "fastening", "fit", "gender", "neckline", "pattern",
         "pocket", "sleeve", "sport"]  # fmt: skip


def synthetic_labels(rng, n, num_values, p_unlabelled=0.3, skew=3.0):
    """[n, A] labels: value v of an attribute drawn with probability ~ 1/(v+1)^skew, 30% unlabelled.

    Skew and missing labels are what make targets findable: with uniform, complete labels hardly any
    12-attribute combination would occur twice in 18,000 images. The defaults give ~38k searches of
    ~195k candidates (a milder skew 1.5 with 40% unlabelled gives ~7k).
    """
    columns = []
    for n_values in num_values:
        p = 1.0 / np.arange(1, n_values + 1) ** skew
        col = rng.choice(n_values, size=n, p=p / p.sum())
        col[rng.random(n) < p_unlabelled] = -1
        columns.append(col)
    return np.stack(columns, axis=1).astype(np.int64)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--gallery", type=int, default=18000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--unlabelled", type=float, default=0.3, help="fraction of unlabelled attributes")
    parser.add_argument("--skew", type=float, default=3.0, help="value frequency ~ 1/(v+1)^skew")
    parser.add_argument("--repeat", type=int, default=1, help="search each manipulation this many times "
                        "(stress test of the search at larger S)")  # fmt: skip
    args = parser.parse_args()

    rng = np.random.default_rng(args.seed)
    query_labels = synthetic_labels(rng, args.queries, SHOPPING100K_NUM_VALUES, args.unlabelled, args.skew)
    gallery_labels = synthetic_labels(rng, args.gallery, SHOPPING100K_NUM_VALUES, args.unlabelled, args.skew)
    gallery = rng.standard_normal((args.gallery, args.dim), dtype=np.float32)
    query_base = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    print(f"peak RSS after data: {peak_rss_gib():.2f} GiB")

    t0 = time.perf_counter()
    manipulations = metrics.enumerate_manipulations(query_labels, gallery_labels, SHOPPING100K_NUM_VALUES)
    t_enum = time.perf_counter() - t0
    if args.repeat > 1:
        manipulations = manipulations.subset(np.tile(np.arange(len(manipulations)), args.repeat))
    s = len(manipulations)
    candidates = int(
        sum(((query_labels[:, a] >= 0).sum() * (n - 1)) for a, n in enumerate(SHOPPING100K_NUM_VALUES))
    )
    print(
        f"enumerate_manipulations: {s // args.repeat} searches of {candidates} candidates in {t_enum:.2f} s"
    )

    def query_vectors_fn(idx):
        # Gather + noise: as cheap as possible so the timing is the search's, not the "model's".
        noise = np.random.default_rng(int(idx[0])).standard_normal((len(idx), args.dim), dtype=np.float32)
        return query_base[manipulations.query_index[idx]] + 0.5 * noise

    t0 = time.perf_counter()
    results = search.evaluate(query_vectors_fn, gallery, gallery_labels, manipulations, NAMES,
                              chunk_size=args.chunk)  # fmt: skip
    t_eval = time.perf_counter() - t0

    # Baseline: the same S x G x r float32 multiply-adds, chunk by chunk, and nothing else.
    t0 = time.perf_counter()
    for start in range(0, s, args.chunk):
        q = query_vectors_fn(np.arange(start, min(start + args.chunk, s)))
        _ = q @ gallery.T
    t_base = time.perf_counter() - t0

    print(f"evaluate: {s} searches in {t_eval:.2f} s = {s / t_eval:.0f} searches/s "
          f"(Top-20 avg {results['topk']['20']['avg']:.4f}, NDCG@30 avg {results['ndcg@30']['avg']:.4f})")  # fmt: skip
    print(f"baseline (chunked float32 matmul, {s}x{args.gallery}x{args.dim}): {t_base:.2f} s; "
          f"evaluate / baseline = {t_eval / t_base:.2f}")  # fmt: skip
    print(f"total (enumerate + evaluate): {t_enum + t_eval:.2f} s; peak RSS {peak_rss_gib():.2f} GiB")
    print("searches per attribute:", {k: v for k, v in results["searches"].items()})


if __name__ == "__main__":
    main()
