"""Who writes what under tf.distribute: the chief writes checkpoints, configs and TensorBoard logs; every
other worker writes to a temporary directory of its own that is removed at the end (the Model Garden /
Orbit pattern). Every worker must still take part in saving a checkpoint (saving runs collective ops), so
the others save too, only somewhere nobody reads.

With one process (the default strategy, MirroredStrategy) the process is the chief and nothing changes.
"""

from __future__ import annotations

import functools
import json
import os
import shutil

import tensorflow as tf


def _task(strategy=None) -> tuple[str | None, int, dict]:
    """(task type, task id, cluster spec) from the strategy's resolver, else from TF_CONFIG."""
    resolver = getattr(strategy, "cluster_resolver", None) if strategy is not None else None
    if resolver is not None and resolver.task_type:
        return resolver.task_type, int(resolver.task_id or 0), resolver.cluster_spec().as_dict()
    try:
        tf_config = json.loads(os.environ.get("TF_CONFIG") or "{}")
    except ValueError:
        tf_config = {}
    task = tf_config.get("task") or {}
    return task.get("type"), int(task.get("index", 0)), tf_config.get("cluster") or {}


def is_chief(strategy=None) -> bool:
    """The chief is the worker of type `chief`, or worker 0 when the cluster has no chief; a process
    outside any cluster is its own chief. Without `strategy`, TF_CONFIG decides."""
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


def shard_policy(num_files: int, workers: int) -> tf.data.experimental.AutoShardPolicy:
    """FILE sharding when every worker gets at least one file, else DATA (each worker reads everything
    and keeps its part of each batch): FILE with fewer files than workers fails at start."""
    policy = tf.data.experimental.AutoShardPolicy
    return policy.FILE if num_files >= workers else policy.DATA
