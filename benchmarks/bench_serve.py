"""Load on the search service: `/search` requests per second and p50 / p95 latency at 1, 8 and 32 clients.

Issue 11. Each configuration starts `python -m experiments.serve` as its own process (as deployed: one
uvicorn process, the model in-process) and drives it from this process with N client threads, each
with its own keep-alive connection, sending `POST /search` back to back for `--duration` seconds after a
warm-up. Every request is what the page sends: one attribute changed at random, top_k = 20, either

* item: an indexed item's id as the query (the service reads its image from the dataset, embeds it,
  manipulates, ranks), or
* upload: a 128 x 128 PNG uploaded as multipart form data (decoded, embedded, manipulated, ranked).

Configurations:
* gallery: the embedded default's gallery (3,000 images of 128 px) indexed for exact search, with the
  embedded default's network (full width, BatchNorm, 6 attributes, r = 256). Without --export_dir and
  --index a network of those shapes with random weights is exported and the gallery generated and
  indexed here (speed does not depend on the weights); with them, the main job's export and index.
* million (FAISS): 1,000,000 vectors (the gallery's vectors and noisy copies of them, noise 0.25 of each
  dimension's spread, so queries fall where the catalogue is) in a FAISS IVF-Flat index (nlist 1,000,
  nprobe 16: `experiments.index`'s defaults), upload queries (its items have no images).
* million (exact): the same vectors, exact search (`--exact_million`, on by default).
* gallery with `--max_batch=1` (`--unbatched`, on by default): every search computed on its own, to show
  what batching concurrent searches (`service.Batcher`) brings.
* gallery with `--gather_ms=0 --blas_threads=0` (`--untuned_baseline`, on by default): the service as it
  was before issue 26 tuned it (a batch never waits for the previous batch's callers to come back;
  NumPy's BLAS on its default threads, which spin after each ranking and slow the next model call).
* gallery with each `--gather_ms` of `--gather_ms_values` (off by default), upload queries: how long a
  batch may wait for as many searches as the previous one held.
* gallery with `--precision=float32` (`--float32_baseline`, on by default): the service calling the
  export's float32 `embed` instead of what `--precision=auto` picks (`embed_bfloat16` on a CPU with native
  bfloat16; issue 26), the baseline of the same run.

Before the servers, `--in_process` (on by default) times lone upload searches in this process without
HTTP (decode, `Searcher.search`, `json.dumps`), with `embed`'s and `manipulate`'s share: what HTTP, the
event loop and the client add is the difference to the 1-client row.

The client threads share the 2 cores with the server; reported figures are therefore what one machine
does while also generating its load (conservative).

    python benchmarks/bench_serve.py [--duration=10] [--clients=1,8,32]
        [--export_dir=exports/synthetic/1 --index=indexes/gallery.npz]
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import fashionsearchnet_v2  # noqa: F401  (oneDNN on before TensorFlow loads)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def prepare_gallery(root: str):
    """A random-weight export of the embedded default's shapes and its 3,000-image gallery index."""
    import keras
    import numpy as np

    from fashionsearchnet_v2 import configs
    from fashionsearchnet_v2.data import synthetic
    from fashionsearchnet_v2.model import memory_block, network
    from fashionsearchnet_v2.serving import export, indexing

    info = synthetic.write_synthetic(os.path.join(root, "data"), num_images=3100, image_size=128, num_query=50,
                                     num_gallery=3000, progress=False)  # fmt: skip
    model_cfg, _, s3 = configs.dataset_defaults("synthetic")
    model_cfg = configs.dataclasses.replace(model_cfg, box_backend="tf")
    vocab = export.Vocabulary.from_info(info)
    keras.utils.set_random_seed(0)
    net = network.build_network(vocab.num_values, vocab.names, model_cfg, "full")
    d = model_cfg.fc10_size
    layer = memory_block.GlobalRepresentation(vocab.num_values, d, r=s3.r, name="global_representation")
    layer.build([(None, len(vocab.names), d), (None, sum(vocab.num_values))])
    layer.memory_block.assign(
        np.random.default_rng(0).normal(size=(sum(vocab.num_values), d)).astype(np.float32)
    )
    # As experiments.export writes it: `embed` in float32 and `embed_bfloat16` beside it (issue 26).
    fast, _ = export.exportable_network(net, model_cfg, vocab, "bfloat16", stored_bfloat16=True)
    module = export.ServingModule(net, layer, vocab, 128, model_bfloat16=fast)
    export_dir = export.save(module, vocab, os.path.join(root, "export", "1"),
                             metadata={"variant": "full", "dataset": "synthetic", "note": "random weights"})  # fmt: skip
    model = export.ExportedModel(export_dir)
    index = indexing.index_split(model, info, "gallery", progress=False)
    return export_dir, index.save(os.path.join(root, "gallery.npz")), info


def prepare_million(root: str, gallery_path: str, n: int, nlist: int = 1000, nprobe: int = 16):
    """Index files of n vectors around the gallery's: FAISS IVF-Flat, and the same for exact search."""
    import numpy as np

    from fashionsearchnet_v2.serving import index as index_lib

    g = index_lib.SearchIndex.load(gallery_path)
    rng = np.random.default_rng(0)
    spread = g.vectors.std(axis=0, keepdims=True) * 0.25
    vectors = np.empty((n, g.vectors.shape[1]), np.float32)
    vectors[: len(g)] = g.vectors
    for start in range(len(g), n, 100_000):
        m = min(100_000, n - start)
        vectors[start : start + m] = g.vectors[rng.integers(0, len(g), m)]
        vectors[start : start + m] += spread * rng.standard_normal((m, vectors.shape[1]), dtype=np.float32)
    a = g.labels.shape[1]
    meta = {k: v for k, v in g.metadata.items() if k not in ("faiss", "backend", "count", "dim")}
    meta["source"] = {"kind": "vectors", "note": f"{len(g)} gallery vectors + noisy copies"}
    big = index_lib.SearchIndex(
        vectors=vectors, ids=np.char.add("v", np.arange(n).astype(str)), paths=np.full(n, "", "<U1"),
        labels=np.full((n, a), -1, np.int32), predicted_values=np.zeros((n, a), np.int32),
        predicted_probabilities=np.zeros((n, a), np.float32), metadata=meta,
    )  # fmt: skip
    start = time.perf_counter()
    faiss_index = index_lib.build_faiss(vectors, "ivf_flat", nlist=nlist)
    built = time.perf_counter() - start
    big.metadata["faiss"] = {"kind": "ivf_flat", "nlist": nlist, "nprobe": nprobe}
    faiss_path = big.save(os.path.join(root, "million_faiss.npz"), faiss_index=faiss_index)
    exact_path = big.save(os.path.join(root, "million_exact.npz"))
    return faiss_path, exact_path, built


class Server:
    """`python -m experiments.serve` in a subprocess on a free port."""

    def __init__(self, export_dir: str, index: str, log: str, extra=()):
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        cmd = [sys.executable, "-m", "experiments.serve", f"--export_dir={export_dir}", f"--index={index}",
               f"--port={self.port}", "--log_level=warning", *extra]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=self.log, stderr=subprocess.STDOUT, env=env)
        deadline = time.time() + 600
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2) as r:
                    self.health = json.loads(r.read())
                    break
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the server did not start; see {log}") from None
                time.sleep(0.5)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def multipart(fields: dict, image: bytes | None) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
        for k, v in fields.items()
    ]
    if image is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
                     "Content-Type: image/png\r\n\r\n".encode() + image + b"\r\n")  # fmt: skip
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def load(port: int, bodies: list, clients: int, duration: float, warmup: float) -> dict:
    """N threads sending bodies round-robin for warmup + duration s; stats over the last `duration`."""
    latencies, errors, stop_at = [], [0], time.perf_counter() + warmup + duration
    measure_from = time.perf_counter() + warmup
    lock = threading.Lock()

    def client(i):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        j = i
        while True:
            body, ctype = bodies[j % len(bodies)]
            j += clients
            start = time.perf_counter()
            if start > stop_at:
                break
            conn.request("POST", "/search", body=body, headers={"Content-Type": ctype})
            response = conn.getresponse()
            response.read()
            end = time.perf_counter()
            with lock:
                if response.status != 200:
                    errors[0] += 1
                elif start >= measure_from:
                    latencies.append(end - start)
        conn.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q = statistics.quantiles(latencies, n=20) if len(latencies) > 1 else [float("nan")] * 19
    return {"clients": clients, "requests": len(latencies), "rps": len(latencies) / duration,
            "p50": 1000 * statistics.median(latencies), "p95": 1000 * q[18], "errors": errors[0]}  # fmt: skip


def in_process_split(export_dir: str, index, uploads: list, vocab: list, repeats: int = 50) -> str:
    """A lone upload search without HTTP, as the service computes it (decode, `Searcher.search`,
    `json.dumps`; `--precision=auto`, BLAS on one thread): median ms, and of it `embed` and `manipulate`."""
    import threadpoolctl

    from fashionsearchnet_v2.serving import export, searcher

    model = export.ExportedModel(export_dir, precision="auto")
    s = searcher.Searcher(model, index)
    timed = {"embed": [], "manipulate": []}
    for name in timed:
        fn = getattr(model, name)

        def wrapper(*a, _fn=fn, _name=name, **k):
            start = time.perf_counter()
            out = _fn(*a, **k)
            timed[_name].append(time.perf_counter() - start)
            return out

        setattr(model, name, wrapper)
    attr = vocab[0]
    total = []
    with threadpoolctl.threadpool_limits(1, user_api="blas"):
        for i in range(repeats + 5):
            start = time.perf_counter()
            image = searcher.decode_upload(uploads[i % len(uploads)])
            answer = s.search(image=image, changes=[(attr["name"], attr["values"][i % len(attr["values"])])])
            json.dumps(answer, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            total.append(time.perf_counter() - start)
    med = {k: 1000 * statistics.median(v[5:]) for k, v in timed.items()}
    return (f"in-process lone upload search ({model.embed_precision} embed, no HTTP, {repeats} searches): "
            f"median {1000 * statistics.median(total[5:]):.1f} ms, of which embed {med['embed']:.1f} ms, "
            f"manipulate {med['manipulate']:.1f} ms")  # fmt: skip


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--export_dir")
    parser.add_argument("--index")
    parser.add_argument("--clients", default="1,8,32")
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--million", type=int, default=1_000_000, help="vectors of the large index (0: skip)")
    parser.add_argument("--exact_million", type=int, default=1, help="also serve the large index exactly")
    parser.add_argument("--unbatched", type=int, default=1, help="also serve the gallery with --max_batch=1")
    parser.add_argument(
        "--float32_baseline", type=int, default=1, help="also serve the gallery with --precision=float32"
    )
    parser.add_argument(
        "--in_process", type=int, default=1, help="also time lone searches in-process, without HTTP"
    )
    parser.add_argument(
        "--gather_ms_values",
        default="",
        help="also serve the gallery with each of these --gather_ms (comma-separated), upload queries",
    )
    parser.add_argument(
        "--untuned_baseline",
        type=int,
        default=1,
        help="also serve the gallery with --gather_ms=0 --blas_threads=0",
    )
    args = parser.parse_args()
    import numpy as np

    from fashionsearchnet_v2.data import synthetic
    from fashionsearchnet_v2.serving import index as index_lib

    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}", flush=True)
    clients = [int(c) for c in args.clients.split(",")]
    rows = []
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        if args.export_dir and args.index:
            export_dir, gallery = args.export_dir, args.index
        else:
            export_dir, gallery, _ = prepare_gallery(root)
        print(f"gallery export and index ready in {time.perf_counter() - start:.0f} s", flush=True)
        g = index_lib.SearchIndex.load(gallery)
        vocab = g.vocabulary["attributes"]
        rng = np.random.default_rng(0)
        import cv2

        uploads = [cv2.imencode(".png", synthetic.render(synthetic.params_for(99, i), 128)[0][..., ::-1])[1].tobytes()
                   for i in range(16)]  # fmt: skip
        if args.in_process:
            print(in_process_split(export_dir, g, uploads, vocab), flush=True)

        def change(i):
            attr = vocab[i % len(vocab)]
            return f"{attr['name']}={attr['values'][int(rng.integers(len(attr['values'])))]}"

        item_bodies = [multipart({"item": str(g.ids[int(rng.integers(len(g)))]), "set": change(i), "top_k": 20}, None)
                       for i in range(64)]  # fmt: skip
        upload_bodies = [multipart({"set": change(i), "top_k": 20}, uploads[i % 16]) for i in range(64)]
        configs = [("gallery, 3,000, exact", gallery, (), [("item", item_bodies), ("upload", upload_bodies)])]
        if args.untuned_baseline:  # the service before issue 26's batching and BLAS settings
            configs.append(("gallery, 3,000, exact, --gather_ms=0 --blas_threads=0", gallery,
                            ("--gather_ms=0", "--blas_threads=0"), [("item", item_bodies), ("upload", upload_bodies)]))  # fmt: skip
        if args.float32_baseline:  # the same service calling the float32 `embed` (issue 26's baseline)
            configs.append(("gallery, 3,000, exact, --precision=float32", gallery, ("--precision=float32",),
                            [("item", item_bodies), ("upload", upload_bodies)]))  # fmt: skip
        for g_ms in [v for v in args.gather_ms_values.split(",") if v]:  # how long a batch waits (issue 26)
            configs.append((f"gallery, 3,000, exact, --gather_ms={g_ms}", gallery, (f"--gather_ms={g_ms}",),
                            [("upload", upload_bodies)]))  # fmt: skip
        if args.unbatched:
            configs.append(("gallery, 3,000, exact, --max_batch=1", gallery, ("--max_batch=1",),
                            [("upload", upload_bodies)]))  # fmt: skip
        if args.million:
            start = time.perf_counter()
            faiss_path, exact_path, built = prepare_million(root, gallery, args.million)
            print(f"{args.million:,}-vector indexes ready in {time.perf_counter() - start:.0f} s "
                  f"(FAISS build {built:.0f} s)", flush=True)  # fmt: skip
            configs.append(
                (f"{args.million:,}, FAISS IVF nprobe 16", faiss_path, (), [("upload", upload_bodies)])
            )
            if args.exact_million:
                configs.append(
                    (
                        f"{args.million:,}, exact",
                        exact_path,
                        ("--backend=exact",),
                        [("upload", upload_bodies)],
                    )
                )
        for name, index_path, extra, kinds in configs:
            start = time.perf_counter()
            server = Server(export_dir, index_path, os.path.join(root, "serve.log"), extra)
            print(f"[{name}] server up in {time.perf_counter() - start:.0f} s, {server.health.get('embed')}",
                  flush=True)  # fmt: skip
            try:
                for kind, bodies in kinds:
                    for c in clients:
                        r = load(server.port, bodies, c, args.duration, args.warmup)
                        r.update(index=name, query=kind)
                        rows.append(r)
                        print(f"[{name}] {kind}, {c} clients: {r['rps']:.1f} req/s, p50 {r['p50']:.0f} ms, "
                              f"p95 {r['p95']:.0f} ms, errors {r['errors']}", flush=True)  # fmt: skip
            finally:
                server.stop()
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n")
    print("| index | query | clients | requests/s | p50 ms | p95 ms | errors |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['index']} | {r['query']} | {r['clients']} | {r['rps']:.1f} | {r['p50']:.0f} | {r['p95']:.0f} | "
              f"{r['errors']} |")  # fmt: skip


if __name__ == "__main__":
    main()
