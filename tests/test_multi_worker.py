"""Multi-worker training (issue 10, item 2): two real worker processes on localhost ports (TF_CONFIG) train
stage 1 under MultiWorkerMirroredStrategy; both finish, only the chief writes (one checkpoint series, one
config.json, one TensorBoard run, no worker leftovers), a dataset with one training shard is sharded by
DATA, and the weights equal a single-process run's with the same global batch."""

import json
import os
import socket
import subprocess
import sys

import commands
import numpy as np
import tensorflow as tf

from fashionsearchnet_v2.training import distribute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The CLI's own main, with Keras seeded first so that two processes initialise the same weights.
SEEDED_STAGE1 = (
    "import sys, keras; keras.utils.set_random_seed(0); from experiments import common, stage1; "
    "sys.argv = ['stage1'] + sys.argv[1:]; common.run(stage1.main)"
)


def _free_ports(n):
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def _env(tf_config=None):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop("TF_CONFIG", None)
    if tf_config is not None:
        env["TF_CONFIG"] = json.dumps(tf_config)
    return env


def _weights(ckpt_dir):
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(ckpt_dir))
    out = {}
    for name in reader.get_variable_to_shape_map():
        if name.startswith("optimizer") or "OBJECT_CONFIG" in name:
            continue
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            out[name] = value
    return out


def test_two_workers_train_like_one_process(info, data_dir, tmp_path):
    assert len(info.shards["train"]) == 1  # fewer training files than workers: DATA sharding
    # float32: equal to 1e-4 is float32's promise (bfloat16 rounds each worker's half batch differently)
    args = [
        "--quick",
        f"--data_dir={data_dir}",
        "--nobatch_norm",
        "--max_steps=3",
        "--batch_size=8",
        "--precision=float32",
    ]
    ports = _free_ports(2)
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = [
        commands.start(
            [
                sys.executable,
                "-c",
                SEEDED_STAGE1,
                *args,
                f"--workdir={tmp_path / 'multi'}",
                "--strategy=multi_worker",
            ],
            env=_env({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    try:
        logs = [w.communicate(timeout=240)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    for i, (w, log) in enumerate(zip(workers, logs)):
        assert w.returncode == 0, f"worker {i}:\n{log[-3000:]}"
        assert "step 3/3" in log and "done:" in log, log[-2000:]
    single = commands.run(
        [sys.executable, "-c", SEEDED_STAGE1, *args, f"--workdir={tmp_path / 'single'}"],
        env=_env(),
        timeout=240,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    stage = tmp_path / "multi" / "seed0" / "stage1"
    # One checkpoint series (the chief's), one config, one TensorBoard run; nothing left by worker 1.
    assert sorted(os.listdir(stage)) == ["ckpt", "config.json", "tb"]
    assert sorted(f for f in os.listdir(stage / "ckpt") if f.endswith(".index")) == [
        "ckpt-2.index",
        "ckpt-3.index",
    ]
    assert len(os.listdir(stage / "tb")) == 1
    multi = _weights(str(stage / "ckpt"))
    one = _weights(str(tmp_path / "single" / "seed0" / "stage1" / "ckpt"))
    assert multi.keys() == one.keys() and len(multi) > 10
    for name in multi:
        np.testing.assert_allclose(multi[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_chief_and_sharding_rules(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief() and distribute.num_workers() == 1
    cluster = {"worker": ["a:1", "b:2", "c:3"]}
    for index, chief in ((0, True), (2, False)):
        monkeypatch.setenv(
            "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        )
        assert distribute.is_chief() is chief and distribute.num_workers() == 3
    with_chief = {"chief": ["a:1"], "worker": ["b:2"]}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}})
    )
    assert not distribute.is_chief() and distribute.num_workers() == 2
    assert distribute.worker_temp_dir("w").endswith(os.path.join("w", ".worker0-tmp"))
    policy = tf.data.experimental.AutoShardPolicy
    assert distribute.shard_policy(1, 2) == policy.DATA and distribute.shard_policy(4, 2) == policy.FILE
