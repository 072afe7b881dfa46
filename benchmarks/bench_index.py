"""Exact vs FAISS search on a synthetic million-vector catalogue: time per query, recall@k, peak memory.

Gallery: N x r float32 vectors (default 1,000,000 x 256) drawn around `--clusters` Gaussian centres
(centres ~ N(0, 1), offsets ~ N(0, spread^2) per dimension: random but clustered, as embeddings are);
queries are fresh draws from the same mixture. Exact search is `retrieval.metrics.ExactIndex` (numpy
float32 matmul + partial sort), the default backend of `experiments.search`; FAISS is IVF-Flat (k-means
cells, `--nprobe` cells scanned per query) and optionally HNSW. Recall@k is the overlap of each
approximate top-k with the exact top-k, averaged over queries.

Time per query is reported two ways: batched (all queries in one call, divided by their number: the
throughput of an offline evaluation) and one query per call (the latency of `experiments.search`).
Peak memory is the process's peak RSS during each phase (Linux VmHWM, reset per phase through
/proc/self/clear_refs), and the growth over the RSS at the start of the phase (the gallery's 1 GiB is
already resident then).

    python benchmarks/bench_index.py [--gallery 1000000] [--dim 256] [--queries 1000] [--nprobe 8,16,32,64]
        [--hnsw 0] [--single 50] [--threads 0]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from fashionsearchnet_v2.retrieval import metrics
from fashionsearchnet_v2.serving import index as index_lib

GIB = 1024**3


def _status(key: str) -> int:
    """A /proc/self/status memory field in bytes (Linux), 0 elsewhere."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class Phase:
    """Wall time, peak RSS and RSS growth of a block of code."""

    def __enter__(self):
        try:  # "5" resets the peak RSS (VmHWM) to the current RSS
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass
        self.rss0 = _status("VmRSS")
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0
        self.peak = _status("VmHWM")
        self.growth = max(0, self.peak - self.rss0)


def clustered(rng, n, dim, centres, spread, chunk=100_000) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, chunk):
        m = min(chunk, n - start)
        out[start : start + m] = centres[rng.integers(0, len(centres), m)]
        out[start : start + m] += spread * rng.standard_normal((m, dim), dtype=np.float32)
    return out


recall = index_lib.recall_at_k


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gallery", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.5, help="offset std per dimension around a centre")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--chunk", type=int, default=128, help="queries per exact-search block")
    parser.add_argument("--nlist", type=int, default=None, help="IVF cells (default about sqrt(N))")
    parser.add_argument("--nprobe", default="1,4,16,64")
    parser.add_argument("--hnsw", type=int, default=0, help="HNSW on the first N vectors (0: skip)")
    parser.add_argument("--ef_search", default="32,64,128")
    parser.add_argument("--single", type=int, default=50, help="queries timed one call each")
    parser.add_argument("--threads", type=int, default=0, help="FAISS OpenMP threads (0: all cores)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"{args.gallery:,} x {args.dim} float32 gallery ({args.gallery * args.dim * 4 / GIB:.2f} GiB), "
          f"{args.queries} queries, k={args.k}, {args.clusters} clusters (spread {args.spread}), {cores} cores")  # fmt: skip
    rng = np.random.default_rng(args.seed)
    with Phase() as p:
        centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
        gallery = clustered(rng, args.gallery, args.dim, centres, args.spread)
        queries = clustered(rng, args.queries, args.dim, centres, args.spread)
    print(f"data: {p.seconds:.1f} s, RSS {p.peak / GIB:.2f} GiB")
    rows = []

    with Phase() as p:
        exact = metrics.ExactIndex(gallery)
    print(f"exact: prepare {p.seconds:.1f} s, +{p.growth / GIB:.2f} GiB (the -2 G^T copy and norms)")
    with Phase() as p:
        truth, _ = exact.search(queries, args.k, chunk_size=args.chunk)
    batched = p.seconds / args.queries
    with Phase() as p1:
        for q in queries[: args.single]:
            exact.search(q[None], args.k)
    rows.append(("exact (numpy)", "-", batched, p1.seconds / max(1, args.single), 1.0, p.peak, p.growth, 0.0))
    del exact

    faiss = index_lib.import_faiss()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    nlist = args.nlist or index_lib.default_nlist(args.gallery)
    with Phase() as p:
        ivf = index_lib.build_faiss(gallery, "ivf_flat", nlist=nlist, seed=args.seed)
    print(f"faiss IVF-Flat nlist={nlist}: build {p.seconds:.1f} s (train on {min(args.gallery, 64 * nlist):,} "
          f"+ add), +{p.growth / GIB:.2f} GiB")  # fmt: skip
    for nprobe in [int(x) for x in args.nprobe.split(",") if x]:
        with Phase() as p:
            found, _ = index_lib.faiss_search(ivf, queries, args.k, nprobe=nprobe)
        with Phase() as p1:
            for q in queries[: args.single]:
                index_lib.faiss_search(ivf, q[None], args.k, nprobe=nprobe)
        rows.append((f"IVF-Flat nlist={nlist}", f"nprobe={nprobe}", p.seconds / args.queries,
                     p1.seconds / max(1, args.single), recall(found, truth), p.peak, p.growth, 0.0))  # fmt: skip
    del ivf

    if args.hnsw:
        n = min(args.hnsw, args.gallery)
        sub = gallery[:n]
        with Phase() as p:
            hnsw = index_lib.build_faiss(sub, "hnsw", hnsw_m=32)
        print(f"faiss HNSW M=32 on the first {n:,}: build {p.seconds:.1f} s, +{p.growth / GIB:.2f} GiB")
        sub_truth, _ = metrics.search_topk(queries, sub, args.k, chunk_size=args.chunk)
        for ef in [int(x) for x in args.ef_search.split(",") if x]:
            with Phase() as p:
                found, _ = index_lib.faiss_search(hnsw, queries, args.k, ef_search=ef)
            with Phase() as p1:
                for q in queries[: args.single]:
                    index_lib.faiss_search(hnsw, q[None], args.k, ef_search=ef)
            rows.append((f"HNSW M=32 (N={n:,})", f"efSearch={ef}", p.seconds / args.queries,
                         p1.seconds / max(1, args.single), recall(found, sub_truth), p.peak, p.growth, 0.0))  # fmt: skip

    print()
    print(f"| method | setting | ms/query batched | ms/query one by one | recall@{args.k} vs exact | "
          "peak RSS GiB | growth GiB |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for name, setting, b, s, r, peak, growth, _ in rows:
        print(
            f"| {name} | {setting} | {b * 1e3:.3f} | {s * 1e3:.2f} | {r:.3f} | {peak / GIB:.2f} | {growth / GIB:.2f} |"
        )


if __name__ == "__main__":
    main()
