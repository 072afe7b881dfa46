"""Embedding shards: what the Beam pipeline (`serving.beam_embed`) writes and `experiments.index` reads.

Reading needs TensorFlow alone (no Beam), so an index can be built wherever the shards are. A directory
of embeddings holds

    vectors-SSSSS-of-NNNNN.tfrecord  one tf.train.Example per embedded image (features below)
    skipped.jsonl                    one JSON object per image that could not be embedded:
                                     {"id", "path", "reason"} (+ "shard", "record" for a dataset split)
    embeddings.json                  written last, once every shard is complete: format, counts, shard
                                     names, the export (directory, fingerprint, vocabulary, metadata), the
                                     source (folder, or dataset split) and how the pipeline ran

Features of a vectors record (A attributes, r = global dimension):

    id                       bytes      record id (split) or path relative to the folder
    path                     bytes      the image file's absolute path or URI ("" for records)
    order                    int64 [2]  (shard number, record number) of a split's record; (0, 0) for a
                                        folder, whose rows are ordered by id
    labels                   int64 [A]  the record's labels, -1 where unknown (always, for a folder)
    global_representation    float [r]  `embed`'s global_representation (no manipulation)
    predicted_values         int64 [A]  `embed`'s predicted_values
    predicted_probabilities  float [A]  `embed`'s predicted_probabilities
    content                  bytes      `index.content_digest` of the encoded image (what `experiments.index
                                        --reuse` compares); absent in shards written before it

Beam does not keep the order of a collection: the rows are put back in `experiments.index`'s order when
read (`read`): a split's records in shard order, a folder's files sorted by relative path, which is the
order `list_images` walks.
"""

from __future__ import annotations

import datetime
import json
import os

import numpy as np
import tensorflow as tf

from fashionsearchnet_v2.data import records
from fashionsearchnet_v2.progress import Progress
from fashionsearchnet_v2.serving.destination import file_system_problem

MANIFEST = "embeddings.json"
VECTORS_PREFIX = "vectors"
VECTORS_SUFFIX = ".tfrecord"
SKIPPED = "skipped.jsonl"
FORMAT_VERSION = 1
KIND = "fashionsearchnet_v2 embeddings"


class EmbeddingsError(ValueError):
    """A directory of embeddings that cannot be read or does not belong to the export; says why."""


def _bytes(value: bytes | str) -> tf.train.Feature:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _ints(values) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in np.ravel(values)]))


def _floats(values) -> tf.train.Feature:
    return tf.train.Feature(float_list=tf.train.FloatList(value=np.ravel(values).astype(np.float32)))


def serialize_row(image_id: str, path: str, order, labels, outputs: dict, content: bytes = b"") -> bytes:
    """One vectors record: an image's id, path, order and labels with its `embed` outputs
    (global_representation [r], predicted_values [A], predicted_probabilities [A]) and its image's
    digest (`content`, where known)."""
    feature = {
        "id": _bytes(image_id),
        "path": _bytes(path),
        "order": _ints(order),
        "labels": _ints(labels),
        "global_representation": _floats(outputs["global_representation"]),
        "predicted_values": _ints(outputs["predicted_values"]),
        "predicted_probabilities": _floats(outputs["predicted_probabilities"]),
    }
    if content:
        feature["content"] = _bytes(content)
    return records.serialize(feature)


def _parser(dim: int, num_attributes: int):
    spec = {
        "id": tf.io.FixedLenFeature([], tf.string),
        "path": tf.io.FixedLenFeature([], tf.string),
        "order": tf.io.FixedLenFeature([2], tf.int64),
        "labels": tf.io.FixedLenFeature([num_attributes], tf.int64),
        "global_representation": tf.io.FixedLenFeature([dim], tf.float32),
        "predicted_values": tf.io.FixedLenFeature([num_attributes], tf.int64),
        "predicted_probabilities": tf.io.FixedLenFeature([num_attributes], tf.float32),
        "content": tf.io.FixedLenFeature([], tf.string, default_value=b""),
    }
    return lambda serialized: tf.io.parse_example(serialized, spec)


def manifest(
    count: int,
    skipped: int,
    shards: list[str],
    export_info,
    source: dict,
    pipeline: dict,
) -> dict:
    """The contents of embeddings.json (`export_info`: an `export.ExportInfo`)."""
    return {
        "format_version": FORMAT_VERSION,
        "kind": KIND,
        "count": int(count),
        "skipped": int(skipped),
        "skipped_file": SKIPPED,
        "shards": sorted(os.path.basename(s) for s in shards),
        "dim": int(export_info.metadata.get("global_dim") or 0),
        "export_dir": export_info.export_dir,
        "export_fingerprint": export_info.fingerprint,
        "export": {k: export_info.metadata.get(k) for k in ("variant", "dataset", "created", "global_dim")},
        "vocabulary": export_info.vocabulary.to_json(),
        "source": source,
        "pipeline": pipeline,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _outputs(directory: str) -> list[str]:
    patterns = (MANIFEST, SKIPPED, f"{VECTORS_PREFIX}-*-of-*{VECTORS_SUFFIX}")
    return sorted(p for pattern in patterns for p in tf.io.gfile.glob(os.path.join(directory, pattern)))


def prepare_directory(directory: str, overwrite: bool) -> None:
    """Creates `directory`; refuses one that holds embeddings unless `overwrite`, then removes them (the
    manifest first: a directory is never left with a manifest naming shards of another run). A URI that
    TensorFlow's file systems here do not reach (s3:// without tensorflow-io) is an EmbeddingsError."""
    problem = file_system_problem(directory)
    if problem:  # before anything: tf.io.gfile.makedirs would raise UnimplementedError
        raise EmbeddingsError(problem)
    found = _outputs(directory) if tf.io.gfile.isdir(directory) else []
    if found and not overwrite:
        raise EmbeddingsError(f"{directory} already holds embeddings ({len(found)} files); pass --overwrite")
    for path in sorted(found, key=lambda p: os.path.basename(p) != MANIFEST):
        tf.io.gfile.remove(path)
    tf.io.gfile.makedirs(directory)


def write_manifest(directory: str, contents: dict) -> str:
    """Writes `<directory>/embeddings.json` (through a temporary name: a reader sees it whole or not)."""
    path = os.path.join(directory, MANIFEST)
    tmp = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(tmp, "w") as f:
        json.dump(contents, f, indent=2)
    tf.io.gfile.rename(tmp, path, overwrite=True)
    return path


def load_manifest(directory: str) -> dict:
    """The manifest of a directory of embeddings; EmbeddingsError when it is missing or not one."""
    path = os.path.join(directory, MANIFEST)
    problem = file_system_problem(directory)
    if problem:  # not "holds no embeddings.json"
        raise EmbeddingsError(problem)
    if not tf.io.gfile.exists(path):
        raise EmbeddingsError(
            f"{directory} holds no {MANIFEST}: it is not the output of experiments.embed_beam, or the "
            "pipeline did not finish (the manifest is written last); run it again"
        )
    try:
        with tf.io.gfile.GFile(path, "r") as f:
            contents = json.load(f)
    except (OSError, tf.errors.OpError, ValueError) as e:
        raise EmbeddingsError(f"{path}: not readable ({e})") from e
    if contents.get("kind") != KIND or contents.get("format_version") != FORMAT_VERSION:
        raise EmbeddingsError(
            f"{path}: not a manifest of embeddings this code reads (kind {contents.get('kind')!r}, format "
            f"{contents.get('format_version')!r}; expected {KIND!r}, {FORMAT_VERSION})"
        )
    return contents


def read_skipped(directory: str, contents: dict) -> list[dict]:
    """The skipped images' entries, in the order `experiments.index` would have met them."""
    path = os.path.join(directory, contents.get("skipped_file", SKIPPED))
    if not tf.io.gfile.exists(path):
        if contents.get("skipped"):
            raise EmbeddingsError(
                f"{path} is missing; the manifest counts {contents['skipped']} skipped images"
            )
        return []
    with tf.io.gfile.GFile(path, "r") as f:
        entries = [json.loads(line) for line in f if line.strip()]
    if len(entries) != contents.get("skipped", 0):
        raise EmbeddingsError(
            f"{path} lists {len(entries)} skipped images, {MANIFEST} counts {contents.get('skipped', 0)}"
        )
    return sorted(entries, key=lambda e: (e.get("shard", 0), e.get("record", 0), e["id"]))


def read(directory: str, batch_size: int = 1024, progress: bool = True) -> tuple[dict, dict[str, np.ndarray]]:
    """(manifest, rows) of a directory of embeddings, the rows in `experiments.index`'s order.

    rows: ids str [N], paths str [N], labels int32 [N, A], global_representation float32 [N, r],
    predicted_values int32 [N, A], predicted_probabilities float32 [N, A], content bytes [N] (or None
    where the shards carry no digests). Raises EmbeddingsError when a
    shard is missing, the count differs from the manifest's, or an id appears twice (shards of two runs).
    """
    contents = load_manifest(directory)
    shards = [os.path.join(directory, name) for name in contents["shards"]]
    missing = [s for s in shards if not tf.io.gfile.exists(s)]
    if missing:
        raise EmbeddingsError(f"{missing[0]} is missing; {MANIFEST} lists {len(shards)} shards")
    num_attributes = len(contents["vocabulary"]["attributes"])
    parse = _parser(contents["dim"], num_attributes)
    parts: dict[str, list[np.ndarray]] = {}
    meter = Progress(int(contents.get("count", 0)), f"reading {directory}", "vectors", enabled=progress)
    done = 0
    try:
        for batch in (
            tf.data.TFRecordDataset(shards)
            .batch(batch_size)
            .map(tf.autograph.experimental.do_not_convert(parse))
        ):
            for key, value in batch.items():
                parts.setdefault(key, []).append(value.numpy())
            done += len(parts["id"][-1])
            meter.update(done)
        meter.finish(done)
    except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
        raise EmbeddingsError(
            f"{directory}: a vectors shard is damaged or of another format ({e.message})"
        ) from e
    empty = {
        "id": np.zeros(0, object), "path": np.zeros(0, object), "order": np.zeros((0, 2), np.int64),
        "labels": np.zeros((0, num_attributes), np.int64),
        "global_representation": np.zeros((0, contents["dim"]), np.float32),
        "predicted_values": np.zeros((0, num_attributes), np.int64),
        "predicted_probabilities": np.zeros((0, num_attributes), np.float32),
        "content": np.zeros(0, object),
    }  # fmt: skip
    cols = {k: np.concatenate(parts[k]) if k in parts else v for k, v in empty.items()}
    ids = np.array([b.decode("utf-8") for b in cols["id"]], dtype=str)
    paths = np.array([b.decode("utf-8") for b in cols["path"]], dtype=str)
    if len(ids) != contents["count"]:
        raise EmbeddingsError(
            f"{directory}: the shards hold {len(ids)} rows, {MANIFEST} counts {contents['count']}"
        )
    rows = np.lexsort((ids, cols["order"][:, 1], cols["order"][:, 0])) if len(ids) else np.zeros(0, int)
    ids = ids[rows]
    values, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise EmbeddingsError(
            f"{directory}: id {values[counts > 1][0]!r} appears {counts.max()} times (shards of two runs mixed?)"
        )
    return contents, {
        "ids": ids,
        "paths": paths[rows],
        "labels": cols["labels"][rows].astype(np.int32),
        "global_representation": cols["global_representation"][rows],
        "predicted_values": cols["predicted_values"][rows].astype(np.int32),
        "predicted_probabilities": cols["predicted_probabilities"][rows],
        # Digests where every row has one (shards written before them have none): else None.
        "content": np.asarray(cols["content"][rows], "S32") if all(cols["content"]) else None,
    }
