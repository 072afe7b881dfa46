"""One run per work directory (issue 10, item 5): a stage directory's lock names its holder, a second run
stops, a dead holder's lock is taken over, and temporaries of killed conversions and exports are removed."""

import dataclasses
import io
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

from fashionsearchnet_v2 import configs, locks
from fashionsearchnet_v2.data import schema, synthetic
from fashionsearchnet_v2.serving import export
from fashionsearchnet_v2.training import run


@pytest.fixture()
def live_pid():
    """The PID of a live process (not this one)."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc.pid
    proc.kill()
    proc.wait()


@pytest.fixture()
def dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _hold(directory, pid, host=None):
    os.makedirs(directory, exist_ok=True)
    record = {"pid": pid, "host": host or socket.gethostname(), "command": "python -m experiments.stage1",
              "started": "2026-01-01T00:00:00+00:00"}  # fmt: skip
    with open(os.path.join(directory, locks.LOCK_FILE), "w", encoding="utf-8") as f:
        json.dump(record, f)


def test_lock_names_its_holder_and_is_released(tmp_path, live_pid):
    with locks.DirectoryLock(str(tmp_path), "stage 1") as lock:
        with open(lock.path, encoding="utf-8") as f:
            assert json.load(f)["pid"] == os.getpid()
    assert not os.path.exists(tmp_path / locks.LOCK_FILE)
    _hold(tmp_path, live_pid)
    with pytest.raises(
        locks.LockError, match=rf"in use by stage 1: PID {live_pid} on host {socket.gethostname()}"
    ):
        locks.DirectoryLock(str(tmp_path), "stage 1").acquire()
    _hold(tmp_path, 1, host="elsewhere")  # another host: never taken over, since it cannot be checked
    with pytest.raises(locks.LockError, match="on another host: cannot check"):
        locks.DirectoryLock(str(tmp_path)).acquire()


def test_second_run_on_a_stage_directory_stops_and_a_stale_lock_is_taken_over(tmp_path, live_pid, dead_pid):
    info = synthetic.write_synthetic(
        str(tmp_path / "data"), num_images=60, image_size=64, num_query=6, num_gallery=18, progress=False
    )
    cfg = configs.quick(configs.ExperimentConfig(dataset="synthetic", workdir=str(tmp_path / "work")))
    cfg.train = dataclasses.replace(cfg.train, max_steps=1)
    stage1 = tmp_path / "work" / "stage1"
    _hold(stage1, live_pid)
    with pytest.raises(
        locks.LockError, match=rf"work/stage1 is in use by another stage1 run: PID {live_pid}"
    ):
        run.run_stage1(cfg, info, out=io.StringIO())
    assert not (stage1 / "ckpt").exists()  # nothing written
    _hold(stage1, dead_pid)  # its holder was killed: taken over
    log = io.StringIO()
    run.run_stage1(cfg, info, out=log)
    assert f"took over the lock of a run that is gone: PID {dead_pid}" in log.getvalue()
    assert (stage1 / "ckpt").is_dir() and not (stage1 / locks.LOCK_FILE).exists()


def _orphan(parent, name, pid, marked=True):
    path = os.path.join(parent, name)
    os.makedirs(path)
    with open(os.path.join(path, "shard"), "w") as f:
        f.write("x")
    if marked:
        with open(os.path.join(path, locks.OWNER_FILE), "w", encoding="utf-8") as f:
            json.dump({"pid": pid, "host": socket.gethostname()}, f)
    return path


def test_orphaned_conversion_temporaries_are_removed(tmp_path, live_pid, dead_pid):
    dead = _orphan(tmp_path, f"synthetic.tmp-{dead_pid}", dead_pid)
    unmarked = _orphan(tmp_path, f"synthetic.tmp-{dead_pid + 100000}", 0, marked=False)  # older version
    alive = _orphan(tmp_path, f"synthetic.tmp-{live_pid}", live_pid)
    other = _orphan(tmp_path, f"other.tmp-{dead_pid}", dead_pid)  # another output's: not this one's business
    info = synthetic.write_synthetic(
        str(tmp_path / "synthetic"), num_images=30, image_size=64, num_query=3, num_gallery=9, progress=False
    )
    assert not os.path.exists(dead) and not os.path.exists(unmarked)
    assert os.path.exists(alive) and os.path.exists(other)
    assert locks.OWNER_FILE not in os.listdir(info.data_dir)  # the marker does not travel into the output
    assert schema.load_dataset_info(info.data_dir).splits == {"train": 18, "query": 3, "gallery": 9}


def test_orphaned_export_temporaries_are_removed(tmp_path, live_pid, dead_pid):
    parent = tmp_path / "exports"
    os.makedirs(parent)
    dead = _orphan(parent, f".1.tmp-{dead_pid}-abcd1234", dead_pid)
    old = _orphan(parent, f".1.old-{dead_pid}-abcd1234", dead_pid, marked=False)
    alive = _orphan(parent, f".1.tmp-{live_pid}-abcd1234", live_pid)
    vocab = export.Vocabulary((schema.Attribute("color", ("red", "blue")),))
    cfg = dataclasses.replace(configs.quick(configs.ExperimentConfig()).model, box_backend="tf")
    from fashionsearchnet_v2.model import memory_block, network

    net = network.build_network(vocab.num_values, vocab.names, cfg, "full")
    layer = memory_block.identity_global_layer(np.zeros((2, cfg.fc10_size), np.float32), vocab.num_values)
    out = export.save(export.ServingModule(net, layer, vocab, cfg.image_size), vocab, str(parent / "1"))
    assert not os.path.exists(dead) and not os.path.exists(old) and os.path.exists(alive)
    assert locks.OWNER_FILE not in os.listdir(out)
    assert sorted(os.listdir(parent)) == sorted(["1", os.path.basename(alive)])


def test_a_killed_features_cache_write_is_removed_by_the_next_one(tmp_path, live_pid, dead_pid, monkeypatch):
    """`cached_extract` writes `<split>.npz.tmp-<pid>.npz` then renames it: a kill in between left the
    temporary (hundreds of MB for a large training split) for good. The next write removes those of dead
    writers and keeps a live one's (two evaluations of one stage may cache at once)."""
    from fashionsearchnet_v2.trained import features

    cache = tmp_path / "features"
    os.makedirs(cache)
    dead = cache / f"train.npz.tmp-{dead_pid}.npz"
    alive = cache / f"train.npz.tmp-{live_pid}.npz"
    other = cache / "gallery.npz"
    for path in (dead, alive, other):
        path.write_bytes(b"x")
    monkeypatch.setattr(features, "cache_key", lambda checkpoint, info: "key")
    monkeypatch.setattr(features, "extract", lambda *a, **k: {"labels": np.zeros((2, 1), np.int32)})
    info = schema.DatasetInfo(name="x", attributes=[], splits={}, seed=0, source="test")
    features.cached_extract(None, info, "train", 64, str(cache), "ckpt-1", progress=False)
    assert sorted(os.listdir(cache)) == sorted(["gallery.npz", "train.npz", alive.name])
