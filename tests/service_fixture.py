"""What the service tests share: a tiny model that has learnt colour, its export and gallery index, and a
live server (uvicorn in a thread) on a free localhost port.

The model is trained once per test run (about 30 s on 2 cores), by whichever xdist worker asks first; the
other loads the same files (a lock file beside the workers' temporary directories): stage 1 and stage 2 (Rank-L) of a
network of 1/8 width, 250 steps each (SGD, momentum 0.9), on 1,200 generated 64-px garments, exported with the memory block
of the training means and indexed on the 200-image gallery. That is enough for colour, a global
attribute: a colour change brings that colour into most of the Top-10 (measured in test_page.py), which
a random network would not.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import os
import shutil
import socket
import threading
import time
import types
import urllib.request

import keras
import pytest

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.data import schema, synthetic
from fashionsearchnet_v2.serving import export, indexing
from fashionsearchnet_v2.training import run

STEPS = 250


def train_tiny_colour_model(root: str, seed: int = 0, steps: int = STEPS) -> types.SimpleNamespace:
    """Data, stages 1-2, export (variant rank_l) and gallery index under `root`."""
    keras.utils.set_random_seed(seed)
    info = synthetic.write_synthetic(os.path.join(root, "data"), num_images=1200, image_size=64, num_query=20,
                                     num_gallery=200, seed=seed, progress=False)  # fmt: skip
    cfg = configs.ExperimentConfig(dataset="synthetic", workdir=os.path.join(root, "work"), variant="rank_l")
    cfg.model = configs.ModelConfig(image_size=64, width=0.125, conv5_filters=48, conv67_filters=64,
                                    batch_norm=True, lrn=False, fc_sizes=(32,), fc10_size=16, roi_size=2)  # fmt: skip
    # SGD with momentum 0.9, as measured for the page test's margin (decision 52, in float32); the paper's
    # plain SGD learns colour too slowly for a test of seconds.
    cfg.train = configs.TrainConfig(batch_size=32, max_steps=steps, momentum=0.9, log_every_steps=1000,
                                    checkpoint_every_steps=10_000, heldout_images=0, summary_images=0, seed=seed,
                                    precision="float32")  # fmt: skip
    run.run_stage1(cfg, info, out=io.StringIO())
    run.run_stage2(cfg, info, out=io.StringIO())
    net, layer, model_cfg, metadata = export.exportable_variant(cfg.workdir, info, "rank_l", progress=False)
    vocabulary = export.Vocabulary.from_info(info)
    module = export.ServingModule(net, layer, vocabulary, model_cfg.image_size)
    export_dir = export.save(module, vocabulary, os.path.join(root, "exports", "fsn", "1"), metadata=metadata)
    model = export.ExportedModel(export_dir)
    index = indexing.index_split(model, info, "gallery", progress=False)
    index_path = index.save(os.path.join(root, "indexes", "gallery.npz"))
    return types.SimpleNamespace(root=root, info=info, data_dir=info.data_dir, export_dir=export_dir,
                                 index_path=index_path, model=model)  # fmt: skip


def load_tiny_colour_model(root: str) -> types.SimpleNamespace:
    """The files `train_tiny_colour_model` wrote under `root`, and their export loaded again."""
    info = schema.load_dataset_info(os.path.join(root, "data"))
    export_dir = os.path.join(root, "exports", "fsn", "1")
    return types.SimpleNamespace(root=root, info=info, data_dir=info.data_dir, export_dir=export_dir,
                                 index_path=os.path.join(root, "indexes", "gallery.npz"),
                                 model=export.ExportedModel(export_dir))  # fmt: skip


@pytest.fixture(scope="session")
def trained(tmp_path_factory, worker_id):
    """The tiny colour model's files and loaded export, shared by every service test: built once per run
    (under xdist, by the first worker to ask, in the directory above the workers' own; tests only read it)."""
    if worker_id == "master":  # one process (-n 0)
        return train_tiny_colour_model(str(tmp_path_factory.mktemp("service")))
    root = tmp_path_factory.getbasetemp().parent / "service"
    with open(f"{root}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other worker waits here until the files are complete
        if (root / "COMPLETE").exists():
            return load_tiny_colour_model(str(root))
        shutil.rmtree(root, ignore_errors=True)  # a worker that failed half-way left these
        made = train_tiny_colour_model(str(root))
        (root / "COMPLETE").write_text("written by train_tiny_colour_model\n")
        return made


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app, timeout: float = 30.0):
    """Runs an ASGI app with uvicorn in a background thread; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url + "/healthz", timeout=2):
                break
        except OSError:
            if time.time() > deadline or not thread.is_alive():
                raise RuntimeError(f"the server at {url} did not start") from None
            time.sleep(0.1)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=10)
