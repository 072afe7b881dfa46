"""Multi-worker training (issue 10, item 2): two real worker processes on localhost ports (TF_CONFIG) train
stage 1 under MultiWorkerMirroredStrategy; both finish, only the chief writes (one checkpoint series, one
config.json, one TensorBoard run, no worker leftovers), a dataset with one training shard is sharded by
DATA, and the weights equal a single-process run's with the same global batch."""

import json
import os
import shutil
import socket
import subprocess
import sys

import commands
import numpy as np
import pytest
import tensorflow as tf

from fashionsearchnet_v2.training import distribute

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The CLI's own main, with Keras seeded first so that two processes initialise the same weights.
SEEDED_STAGE1 = (
    "import sys, keras; keras.utils.set_random_seed(0); from experiments import common, stage1; "
    "sys.argv = ['stage1'] + sys.argv[1:]; common.run(stage1.main)"
)
# The same for a stage without dropout: its masks are drawn per replica, so no multi-worker run draws the
# one-process run's (the paper's 0.5 stays the only choice a user has).
NO_DROPOUT_STAGE = """
import dataclasses, importlib, os, sys, keras
import tensorflow as tf
if os.environ.get("LOGICAL_CPUS"):  # one process, several CPU devices: MirroredStrategy's replicas
    tf.config.set_logical_device_configuration(tf.config.list_physical_devices("CPU")[0],
        [tf.config.LogicalDeviceConfiguration()] * int(os.environ["LOGICAL_CPUS"]))
keras.utils.set_random_seed(0)
from experiments import common
build = common.build_config
def without_dropout(*args, **kwargs):
    cfg, info = build(*args, **kwargs)
    cfg.model = dataclasses.replace(cfg.model, dropout=0.0)
    return cfg, info
common.build_config = without_dropout
stage = importlib.import_module("experiments." + sys.argv[1])
sys.argv = sys.argv[1:]
common.run(stage.main)
"""


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


def _run_workers(commands_by_worker, timeout=240):
    """Starts worker i of a localhost cluster with `commands_by_worker[i]` (TF_CONFIG set), waits for all;
    (the processes, their combined stdout and stderr)."""
    ports = _free_ports(len(commands_by_worker))
    cluster = {"worker": [f"localhost:{p}" for p in ports]}
    workers = [
        commands.start(
            command,
            env=_env({"cluster": cluster, "task": {"type": "worker", "index": i}}),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
        for i, command in enumerate(commands_by_worker)
    ]
    try:
        logs = [w.communicate(timeout=timeout)[0] for w in workers]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
    return workers, logs


def _meaningful(weights):
    """The names of `weights` worth comparing between two runs: all but the biases of convolutions that
    BatchNorm follows. BatchNorm subtracts the batch mean, so their gradient is zero up to rounding, and
    Adam (which divides by the gradient's size) turns that rounding into steps of up to the learning rate
    in a random direction: their values are noise, different in any two runs that round differently."""
    before_bn = {n.split("/")[0].split("_bn")[0] for n in weights if "_bn/" in n}
    return [
        n for n in weights if not (n.split("/")[1] == "bias" and n.split("/")[0].split("_g")[0] in before_bn)
    ]


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


@pytest.mark.parametrize("batch_norm", [False, True])
def test_two_workers_train_like_one_process(info, data_dir, tmp_path, batch_norm):
    """With BatchNorm (the embedded default's network) the workers normalise with the global batch's
    statistics (synchronized): each worker's own half gave weights 6e-3 and moving variances 2e-2 away
    from the one-process run's after 3 steps; synchronized, within 1e-4 (its E[x²] − E[x]² against one
    process's two-pass moments; the biases before BatchNorm are not compared, see `_meaningful`)."""
    assert len(info.shards["train"]) == 1  # fewer training files than workers: DATA sharding
    # float32: equal to 1e-4 is float32's promise (bfloat16 rounds each worker's half batch differently)
    args = [
        "--quick",
        f"--data_dir={data_dir}",
        "--batch_norm" if batch_norm else "--nobatch_norm",
        "--max_steps=3",
        "--batch_size=8",
        "--precision=float32",
    ]
    command = [
        sys.executable,
        "-c",
        SEEDED_STAGE1,
        *args,
        f"--workdir={tmp_path / 'multi'}",
        "--strategy=multi_worker",
    ]
    workers, logs = _run_workers([command, command])
    for i, (w, log) in enumerate(zip(workers, logs)):
        assert w.returncode == 0, f"worker {i}:\n{log[-3000:]}"
        assert "step 3/3" in log and "done:" in log, log[-2000:]
        assert "significant overhead" not in log  # the start-up check ran eagerly and warned so
        assert "[stage1] 2 replicas, each 4 of the global batch of 8" in log
    single = commands.run(
        [sys.executable, "-c", SEEDED_STAGE1, *args, f"--workdir={tmp_path / 'single'}"],
        env=_env(),
        timeout=240,
    )
    assert single.returncode == 0, single.stderr[-3000:]

    stage = tmp_path / "multi" / "seed0" / "stage1"
    # One checkpoint series (the chief's), one config, one TensorBoard run; nothing left by worker 1.
    assert sorted(os.listdir(stage)) == ["ckpt", "config.json", "loss_reference.json", "tb"]
    assert sorted(f for f in os.listdir(stage / "ckpt") if f.endswith(".index")) == [
        "ckpt-2.index",
        "ckpt-3.index",
    ]
    assert len(os.listdir(stage / "tb")) == 1
    multi = _weights(str(stage / "ckpt"))
    one = _weights(str(tmp_path / "single" / "seed0" / "stage1" / "ckpt"))
    assert multi.keys() == one.keys() and len(multi) > 10
    assert any("moving_variance" in name for name in multi) == batch_norm
    for name in _meaningful(multi):
        np.testing.assert_allclose(
            multi[name], one[name], rtol=1e-4, atol=1e-4 if batch_norm else 1e-5, err_msg=name
        )


def test_two_workers_train_stage2_like_one_process(info, data_dir, tmp_path):
    """Stage 2's L_T mines its triplets over the whole global batch, gathered from every worker
    (differentiably), with one seed: two workers train the one-process run's weights. Each worker mined
    inside its own half before, with other triplets (and fewer: an anchor's positive had to be in its
    half)."""
    args = ["--quick", f"--data_dir={data_dir}", "--nobatch_norm", "--batch_size=8", "--precision=float32"]
    run = [sys.executable, "-c", NO_DROPOUT_STAGE]
    single = tmp_path / "single"
    first = commands.run([*run, "stage1", *args, "--max_steps=2", f"--workdir={single}"], env=_env(),
                         timeout=240)  # fmt: skip
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.copytree(single / "seed0" / "stage1", tmp_path / "multi" / "seed0" / "stage1")
    stage2 = [*run, "stage2", *args, "--max_steps=3"]
    command = [*stage2, f"--workdir={tmp_path / 'multi'}", "--strategy=multi_worker"]
    workers, logs = _run_workers([command, command])
    for w, log in zip(workers, logs):
        assert w.returncode == 0, "\n".join(f"worker {j}:\n{lg[-3000:]}" for j, lg in enumerate(logs))
        assert "step 3/3" in log and "done:" in log, log[-2000:]
    one = commands.run([*stage2, f"--workdir={single}"], env=_env(), timeout=240)
    assert one.returncode == 0, one.stderr[-3000:]
    multi = _weights(str(tmp_path / "multi" / "seed0" / "stage2_rank_l" / "ckpt"))
    one = _weights(str(single / "seed0" / "stage2_rank_l" / "ckpt"))
    branches = [n for n in multi if "fc10" in n]
    assert multi.keys() == one.keys() and branches, sorted(multi)[:20]
    for name in multi:
        np.testing.assert_allclose(multi[name], one[name], rtol=1e-4, atol=1e-5, err_msg=name)


def test_mirrored_replicas_train_stage2_like_one_process(data_dir, tmp_path):
    """`--strategy=mirrored` on two CPU devices of one process (as on a machine with two GPUs), with
    BatchNorm: synchronized statistics and L_T over the gathered batch give the one-device run's weights
    (within 1e-4; the biases before BatchNorm are not compared, see `_meaningful`)."""
    args = ["--quick", f"--data_dir={data_dir}", "--batch_norm", "--batch_size=8", "--precision=float32"]
    run = [sys.executable, "-c", NO_DROPOUT_STAGE]
    one = tmp_path / "one"
    first = commands.run(
        [*run, "stage1", *args, "--max_steps=2", f"--workdir={one}"], env=_env(), timeout=240
    )
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.copytree(one / "seed0" / "stage1", tmp_path / "two" / "seed0" / "stage1")
    stage2 = [*run, "stage2", *args, "--max_steps=3"]
    two = commands.run([*stage2, f"--workdir={tmp_path / 'two'}", "--strategy=mirrored"],
                       env=dict(_env(), LOGICAL_CPUS="2"), timeout=240)  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    assert "[stage2] 2 replicas, each 4 of the global batch of 8" in two.stdout
    single = commands.run([*stage2, f"--workdir={one}"], env=_env(), timeout=240)
    assert single.returncode == 0, single.stderr[-3000:]
    a = _weights(str(tmp_path / "two" / "seed0" / "stage2_rank_l" / "ckpt"))
    b = _weights(str(one / "seed0" / "stage2_rank_l" / "ckpt"))
    assert a.keys() == b.keys() and any("moving_variance" in n for n in a) and any("fc10" in n for n in a)
    for name in _meaningful(a):
        np.testing.assert_allclose(a[name], b[name], rtol=1e-4, atol=1e-4, err_msg=name)


class _Cluster:
    """What MultiWorkerMirroredStrategy exposes of its cluster: TF_CONFIG, read by its resolver."""

    def __init__(self):
        self.cluster_resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()


def test_chief_and_sharding_rules(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert distribute.is_chief(_Cluster()) and distribute.num_workers(_Cluster()) == 1
    cluster = {"worker": ["a:1", "b:2", "c:3"]}
    for index, chief in ((0, True), (2, False)):
        monkeypatch.setenv(
            "TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        )
        assert distribute.is_chief(_Cluster()) is chief and distribute.num_workers(_Cluster()) == 3
    with_chief = {"chief": ["a:1"], "worker": ["b:2"]}
    monkeypatch.setenv(
        "TF_CONFIG", json.dumps({"cluster": with_chief, "task": {"type": "worker", "index": 0}})
    )
    assert not distribute.is_chief(_Cluster()) and distribute.num_workers(_Cluster()) == 2
    assert distribute.worker_temp_dir("w", _Cluster()).endswith(os.path.join("w", ".worker0-tmp"))
    # A TF_CONFIG left in the shell makes no one-process stage a worker (it saved into a temporary
    # directory removed at the end: stage 3 "finished" without a checkpoint).
    for one_process in (None, tf.distribute.get_strategy(), tf.distribute.MirroredStrategy(["/cpu:0"])):
        assert distribute.is_chief(one_process) and distribute.num_workers(one_process) == 1
        assert distribute.write_dirs("w", "w/ckpt", "w/tb", one_process) == ("w/ckpt", "w/tb", None)


def test_file_sharding_only_where_the_shards_split_evenly(tmp_path):
    """FILE sharding hands worker i the shards i, i + W, ... and every worker the same share of a batch: a
    worker holding fewer records repeats them more often (3 shards on 2 workers drew one shard twice as
    often as the others). It is chosen only when the workers' bytes agree within FILE_BALANCE."""
    policy = tf.data.experimental.AutoShardPolicy

    def shards(*sizes):
        paths = []
        for size in sizes:
            path = tmp_path / f"train-{len(list(tmp_path.iterdir())):05d}.tfrecord"
            path.write_bytes(b"x" * size)
            paths.append(str(path))
        return paths

    assert distribute.shard_policy(shards(100), 2) == policy.DATA  # fewer shards than workers
    assert distribute.shard_policy(shards(100, 100, 100, 100), 2) == policy.FILE
    assert distribute.shard_policy(shards(100, 100, 100), 2) == policy.DATA  # 200 bytes against 100
    assert distribute.shard_policy(shards(2048, 2048, 2048, 356), 2) == policy.DATA  # a short last shard
    assert distribute.shard_policy(shards(2048, 2048, 2048, 2040), 2) == policy.FILE  # within 2%


def test_workers_started_with_other_flags_are_refused_before_training(data_dir, tmp_path):
    """Two workers whose commands differ (here worker 1's --learning_rate) trained together silently, each
    with its own recipe; now every worker gathers the others' digest before the stage starts and both stop
    with the same error line, having trained nothing."""
    args = ["--quick", f"--data_dir={data_dir}", "--max_steps=2", "--batch_size=8", "--strategy=multi_worker",
            f"--workdir={tmp_path / 'multi'}"]  # fmt: skip
    command = [sys.executable, "-m", "experiments.stage1", *args]
    workers, logs = _run_workers([command, [*command, "--learning_rate=0.5"]])
    for i, (w, log) in enumerate(zip(workers, logs)):
        assert w.returncode == 2, f"worker {i}:\n{log[-3000:]}"
        assert "error: the 2 workers of this stage1 run differ in their flags or data" in log, log[-2000:]
    assert not os.path.exists(tmp_path / "multi" / "seed0" / "stage1" / "ckpt")
