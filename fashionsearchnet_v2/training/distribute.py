"""Who writes what under tf.distribute: the chief writes checkpoints, configs and TensorBoard logs; every
other worker writes to a temporary directory of its own that is removed at the end (the Model Garden /
Orbit pattern). Every worker must still take part in saving a checkpoint (saving runs collective ops), so
the others save too, only somewhere nobody reads.

With one process (the default strategy, MirroredStrategy) the process is the chief and nothing changes.
"""

from __future__ import annotations

import functools
import os
import shutil

import tensorflow as tf


def _task(strategy=None) -> tuple[str | None, int, dict]:
    """(task type, task id, cluster spec) from the strategy's cluster resolver (MultiWorkerMirroredStrategy
    reads TF_CONFIG into it); (None, 0, {}) for any other strategy or none: a process of its own. A
    TF_CONFIG left in the shell of worker 1 made stage 3, AMNet and `--strategy=default` stages save into
    a worker's temporary directory, removed at the end, and skip their TensorBoard and lock."""
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is not None and resolver.task_type:
        return resolver.task_type, int(resolver.task_id or 0), resolver.cluster_spec().as_dict()
    return None, 0, {}


def is_chief(strategy=None) -> bool:
    """The chief is the worker of type `chief`, or worker 0 when the cluster has no chief; a process
    outside any cluster (any strategy but MultiWorkerMirroredStrategy, or none) is its own chief."""
    task_type, task_id, cluster = _task(strategy)
    if task_type is None:
        return True
    if task_type == "chief":
        return True
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def num_workers(strategy=None) -> int:
    """How many processes train together (chief + workers); 1 outside a cluster."""
    _, _, cluster = _task(strategy)
    return max(1, sum(len(cluster.get(kind, [])) for kind in ("chief", "worker")))


def worker_temp_dir(workdir: str, strategy=None) -> str:
    """Where a non-chief worker writes what nobody reads: `<workdir>/.worker<i>-tmp`."""
    task_type, task_id, _ = _task(strategy)
    return os.path.join(workdir, f".{task_type or 'worker'}{task_id}-tmp")


def write_dirs(workdir: str, ckpt_dir: str, tb_dir: str, strategy) -> tuple[str, str | None, str | None]:
    """(checkpoint directory to save into, TensorBoard directory or None, temporary directory to remove
    at the end or None) for this process."""
    if is_chief(strategy):
        return ckpt_dir, tb_dir, None
    tmp = worker_temp_dir(workdir, strategy)
    return os.path.join(tmp, "ckpt"), None, tmp


def remove_temp(tmp: str | None) -> None:
    if tmp:
        shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=1)
def multi_worker_strategy() -> tf.distribute.Strategy:
    """The process's one MultiWorkerMirroredStrategy (from TF_CONFIG). A process can configure its
    collective ops only once, so every stage of a run shares this instance."""
    return tf.distribute.MultiWorkerMirroredStrategy()


#: FILE sharding's largest per-worker share of the training bytes may exceed the smallest by this much.
FILE_BALANCE = 0.02


def shard_policy(shard_paths, workers: int) -> tf.data.experimental.AutoShardPolicy:
    """FILE sharding when the training shards split evenly over the workers, else DATA (each worker reads
    everything and keeps its part of each batch).

    FILE gives worker i the shards i, i + W, ... and every worker the same share of each batch, so a worker
    with fewer records repeats them more often: 3 shards on 2 workers drew the lone shard of worker 1
    twice as often as the others, and the converters' short last shard (records come in shards of 2,048)
    skews it likewise. The shares are compared by bytes (records of one dataset are of a size), within
    `FILE_BALANCE`; with fewer shards than workers FILE would fail at start.
    """
    policy = tf.data.experimental.AutoShardPolicy
    paths = list(shard_paths)
    if len(paths) < workers:
        return policy.DATA
    shares = [sum(tf.io.gfile.stat(p).length for p in paths[w::workers]) for w in range(workers)]
    return policy.FILE if max(shares) <= (1 + FILE_BALANCE) * min(shares) else policy.DATA
