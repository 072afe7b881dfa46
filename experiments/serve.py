"""Serves search with attribute manipulation over HTTP: a JSON API and a page at `/`.

    pip install -e .[web]
    python -m experiments.serve --export_dir=exports/synthetic/1 --index=indexes/gallery.npz \\
        [--host=127.0.0.1 --port=8000] [--model_url=http://tf-serving:8501/v1/models/fsn] \\
        [--data_dir=DIR] [--max_upload_bytes=10485760] [--backend=exact|faiss] [--precision=auto] \\
        [--max_batch=16 --gather_ms=10 --blas_threads=1] [--watch_index_s=10]

The model is the export loaded in this process, or, with --model_url, a TensorFlow Serving deployment
of that export called over its REST API (the export directory then only provides the vocabulary and
the fingerprint the index is checked against, and its name the version asked for: exports/shop/1 is
version 1, which must be AVAILABLE there). Items' images come from where the index says (a folder
index: the files; a split index: the dataset's records; --data_dir when the dataset moved). Endpoints
and request formats: fashionsearchnet_v2/serving/service.py and docs/serving.md.
"""

import functools
import math
import socket
import sys

from absl import app, flags

from experiments import common
from fashionsearchnet_v2 import progress
from fashionsearchnet_v2.serving import export, items, live, service
from fashionsearchnet_v2.serving import index as index_lib

EXPORT_DIR = flags.DEFINE_string("export_dir", None, "SavedModel written by experiments.export.")
INDEX = flags.DEFINE_string("index", None, "Index file written by experiments.index.")
HOST = flags.DEFINE_string("host", "127.0.0.1", "Interface to listen on (0.0.0.0: every interface).")
PORT = flags.DEFINE_integer("port", 8000, "Port to listen on.")
MODEL_URL = flags.DEFINE_string(
    "model_url",
    None,
    "TensorFlow Serving REST model URL (http://HOST:8501/v1/models/NAME) instead of in-process; requests "
    "go to the version --export_dir is (its name, .../N), which must be AVAILABLE there.",
)
MODEL_TIMEOUT = flags.DEFINE_float("model_timeout", 30.0, "Seconds per TensorFlow Serving call.")
MAX_UPLOAD_BYTES = flags.DEFINE_integer(
    "max_upload_bytes", service.DEFAULT_MAX_UPLOAD_BYTES, "Largest request body (an upload); larger gets 413."
)
MAX_PIXELS = flags.DEFINE_integer(
    "max_pixels", service.DEFAULT_MAX_PIXELS, "Largest image (width x height) decoded; larger gets 413."
)
MAX_TOP_K = flags.DEFINE_integer("max_top_k", service.DEFAULT_MAX_TOP_K, "Largest top_k a request may ask.")
MAX_BATCH = flags.DEFINE_integer(
    "max_batch",
    service.DEFAULT_MAX_BATCH,
    "Concurrent searches computed together, at most (1: one at a time).",
)
GATHER_MS = flags.DEFINE_float(
    "gather_ms",
    service.DEFAULT_GATHER_MS,
    "How long a batch may wait for as many searches as the previous batch held (0: never waits; a "
    "lone client is never delayed).",
)
BLAS_THREADS = flags.DEFINE_integer(
    "blas_threads",
    1,
    "Threads of NumPy's BLAS (the exact ranking's product); 0: the library's default. One, because "
    "BLAS threads that spin after a product slow the model's next call (issue 26).",
)
BACKEND = flags.DEFINE_enum("backend", None, list(index_lib.BACKENDS), "Override the index's backend.")
NPROBE = flags.DEFINE_integer("nprobe", None, "FAISS IVF cells scanned per query (default: the index's).")
EF_SEARCH = flags.DEFINE_integer("ef_search", None, "FAISS HNSW candidates per query (default: the index's).")
WATCH_INDEX_S = flags.DEFINE_float(
    "watch_index_s",
    10.0,
    "Every this many seconds, look whether --index was rewritten (experiments.index --overwrite) and, if "
    "so, load it and swap it in without a restart (a file that does not load is logged and the index "
    "served kept); 0: never.",
)
LOG_LEVEL = flags.DEFINE_enum(
    "log_level", "info", ["debug", "info", "warning", "error"], "uvicorn's log level."
)
flags.mark_flags_as_required(["export_dir", "index"])


def searcher_over(model, index: index_lib.SearchIndex) -> service.Searcher:
    """The flags' Searcher over `index` with `model` (at start-up, and for each rewritten index file)."""
    return service.Searcher(
        model,
        index,
        items.ItemImages(index, common.DATA_DIR.value),
        BACKEND.value,
        NPROBE.value,
        EF_SEARCH.value,
        MAX_TOP_K.value,
        MAX_BATCH.value,
        GATHER_MS.value,
    )


def build_searcher() -> live.LiveIndex:
    """The Searcher the flags describe, held by a LiveIndex of --index; exits with code 2 and the reason
    when something is unusable."""
    from fashionsearchnet_v2.serving import remote

    try:
        with progress.phase(f"loading the index {INDEX.value}"):
            index = index_lib.SearchIndex.load(INDEX.value)
        with progress.phase(f"loading the model {MODEL_URL.value or EXPORT_DIR.value}"):
            if MODEL_URL.value:
                model = remote.RemoteModel(MODEL_URL.value, EXPORT_DIR.value, timeout=MODEL_TIMEOUT.value)
            else:
                model = export.ExportedModel(EXPORT_DIR.value, precision=common.precision_flag())
        with progress.phase(f"preparing {BACKEND.value or index.backend} search over {len(index)} items"):
            searcher = searcher_over(model, index)
    except (export.ExportError, index_lib.IndexFileError, index_lib.FaissUnavailable, items.ItemImageError,
            remote.RemoteModelError, ValueError) as e:  # fmt: skip
        common.fail(str(e))
    return live.LiveIndex(searcher, INDEX.value, functools.partial(searcher_over, model))


def check_limits() -> None:
    """The service's numbers, before anything loads: a limit of 0 would refuse every request, a
    --model_timeout of 0 or less every TensorFlow Serving call."""
    for flag in (MAX_UPLOAD_BYTES, MAX_PIXELS, MAX_TOP_K, MAX_BATCH):
        if flag.value < 1:
            common.fail(f"--{flag.name} must be >= 1, got {flag.value}")
    if not (MODEL_TIMEOUT.value > 0 and math.isfinite(MODEL_TIMEOUT.value)):
        # urllib takes <= 0 as "no wait at all": every TensorFlow Serving call failed as "not JSON"
        common.fail(f"--model_timeout must be a finite number of seconds > 0, got {MODEL_TIMEOUT.value}")
    if not (GATHER_MS.value >= 0 and math.isfinite(GATHER_MS.value)):
        common.fail(f"--gather_ms must be a finite number >= 0, got {GATHER_MS.value}")
    if not (WATCH_INDEX_S.value >= 0 and math.isfinite(WATCH_INDEX_S.value)):
        common.fail(f"--watch_index_s must be a finite number of seconds >= 0, got {WATCH_INDEX_S.value}")
    if BLAS_THREADS.value < 0:
        common.fail(f"--blas_threads must be >= 0, got {BLAS_THREADS.value}")
    if not 0 <= PORT.value <= 65535:
        common.fail(f"--port must be in 0..65535, got {PORT.value}")


def check_port_free() -> None:
    """Binds --host:--port once and lets go, so a port in use is one error line before the model loads
    (uvicorn would log it after minutes of loading and exit 3)."""
    try:
        infos = socket.getaddrinfo(HOST.value, PORT.value, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        common.fail(f"--host={HOST.value}: not an address of this machine ({e})")
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as e:
            common.fail(f"--host={HOST.value} --port={PORT.value}: cannot listen there ({e.strerror}); "
                        "another service may hold it: pick another --port")  # fmt: skip


def main(argv):
    common.refuse_stray_arguments(argv)
    try:
        import threadpoolctl
        import uvicorn
    except ImportError:
        common.fail("the service needs FastAPI, uvicorn and threadpoolctl: pip install -e .[web]")
    check_limits()
    check_port_free()
    if BLAS_THREADS.value:
        # For the whole process: its BLAS products are the ranking's, small beside the model. Two BLAS
        # threads spinning after each ranking took a core from the next `embed` (8 ms of a 20-ms search).
        threadpoolctl.threadpool_limits(BLAS_THREADS.value, user_api="blas")
    live_index = build_searcher()
    web = service.create_app(live_index, MAX_UPLOAD_BYTES.value, MAX_PIXELS.value)
    health = live_index.health()
    print(f"serving {health['items']} items ({health['backend']} search, model {health['model']}, "
          f"{health['embed']}) on http://{HOST.value}:{PORT.value}/", file=sys.stderr, flush=True)  # fmt: skip
    if WATCH_INDEX_S.value:
        live_index.start(WATCH_INDEX_S.value)
        print(f"watching {INDEX.value}: rewritten, it is loaded and swapped in without a restart (every "
              f"{WATCH_INDEX_S.value:g} s; --watch_index_s=0: never)", file=sys.stderr, flush=True)  # fmt: skip
    try:
        uvicorn.run(web, host=HOST.value, port=PORT.value, log_level=LOG_LEVEL.value)
    finally:
        live_index.stop()


if __name__ == "__main__":
    app.run(main)
