"""Building an index file (`serving.index.SearchIndex`) through an export: from a folder of images, from a
dataset split, or from the embedding shards of the Beam pipeline; and the check that an index belongs to
the export that searches it.
"""

from __future__ import annotations

import datetime
import os

import numpy as np
import tensorflow as tf

from fashionsearchnet_v2.data import integrity, records, schema
from fashionsearchnet_v2.data.convert import Progress
from fashionsearchnet_v2.serving import embeddings
from fashionsearchnet_v2.serving.index import (
    ImageReadError,
    IndexFileError,
    SearchIndex,
    decode_image,
    list_images,
    read_image,
)


def _metadata(model, source: dict) -> dict:
    return {
        "source": source,
        "export_dir": model.export_dir,
        "export_fingerprint": model.fingerprint,
        "export": {k: model.metadata.get(k) for k in ("variant", "dataset", "created", "global_dim")},
        "vocabulary": model.vocabulary.to_json(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def _from_embeddings(model, out: dict, ids, paths, labels, meta) -> SearchIndex:
    a = len(model.vocabulary.names)
    r = int(model.metadata.get("global_dim") or 0)
    empty = len(ids) == 0
    if not empty:  # an export made before `embed` checked its outputs may still answer NaN
        bad = np.flatnonzero(~np.isfinite(out["global_representation"]).all(axis=1))
        if len(bad):
            raise IndexFileError(
                f"{model.export_dir} gives non-finite global representations for {len(bad)} of {len(ids)} "
                f"images (first: {ids[bad[0]]}): the exported model diverged; nothing was written"
            )
    return SearchIndex(
        vectors=np.zeros((0, r), np.float32) if empty else out["global_representation"],
        ids=np.asarray(ids, str),
        paths=np.asarray(paths, str),
        labels=np.asarray(labels, np.int32).reshape(-1, a),
        predicted_values=np.zeros((0, a), np.int32) if empty else out["predicted_values"],
        predicted_probabilities=np.zeros((0, a), np.float32) if empty else out["predicted_probabilities"],
        metadata=meta,
    )


def index_folder(model, folder: str, batch_size: int = 32, chunk: int = 256, progress: bool = True):
    """Embeds every image under `folder` through `model` (an `export.ExportedModel`).

    Returns (SearchIndex, skipped) where skipped lists (relative path, reason) of unreadable files:
    one bad file in a catalogue is reported, not fatal. Labels are all -1 (a folder has none).
    """
    folder = os.path.abspath(folder)
    names = list_images(folder)
    meter = Progress(len(names), f"embedding {folder}", enabled=progress)
    ids, paths, skipped, parts = [], [], [], []
    for start in range(0, len(names), chunk):
        images = []
        for name in names[start : start + chunk]:
            try:
                images.append(read_image(os.path.join(folder, name)))
            except ImageReadError as e:
                skipped.append((name, e.reason))
                continue
            ids.append(name)
            paths.append(os.path.join(folder, name))
        if images:
            parts.append(model.embed(images, batch_size))
        meter.update(min(start + chunk, len(names)))
    meter.update(len(names), force=True)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    labels = np.full((len(ids), len(model.vocabulary.names)), schema.UNLABELLED, np.int32)
    meta = _metadata(model, {"kind": "folder", "folder": folder})
    meta["skipped"] = [{"path": p, "reason": r} for p, r in skipped]
    return _from_embeddings(model, out, ids, paths, labels, meta), skipped


def check_dataset_vocabulary(model, info: schema.DatasetInfo) -> None:
    """Raises IndexFileError unless the dataset's attributes are the export's (same names and values in
    the same order): its labels would otherwise be read against the wrong vocabulary."""
    vocab = model.vocabulary.to_json()["attributes"]
    ours = [{"name": a.name, "values": list(a.values)} for a in info.attributes]
    if vocab != ours:
        raise IndexFileError(
            f"{info.data_dir}: the dataset's attributes {[a['name'] for a in ours]} (with their values) "
            f"differ from the export's {[a['name'] for a in vocab]}; index a dataset the model was trained on"
        )


def index_split(model, info: schema.DatasetInfo, split: str, batch_size: int = 32, chunk: int = 256,
                progress: bool = True) -> SearchIndex:  # fmt: skip
    """Embeds the records of a dataset split through `model`, keeping their ids and labels; `split` may
    name several ("query,gallery") or "all" (the whole catalogue; `schema.split_list`), split after split.

    The dataset's attributes must be the export's (same names and values in the same order), or the
    labels would be read against the wrong vocabulary.
    """
    split = ",".join(schema.split_list(split))
    shards = info.shards_of(split)
    check_dataset_vocabulary(model, info)
    meter = Progress(info.size_of(split), f"embedding {split}", enabled=progress)
    ids, labels, parts, images = [], [], [], []

    def flush():
        if images:
            parts.append(model.embed(images, batch_size))
            images.clear()

    ds = tf.data.TFRecordDataset(shards).map(
        tf.autograph.experimental.do_not_convert(lambda s: records.parse_example(s, info.num_attributes))
    )
    for ex in integrity.reading(ds, info):
        ids.append(ex["id"].numpy().decode("utf-8"))
        labels.append(ex["labels"].numpy())
        images.append(decode_image(ex["encoded"].numpy(), f"{split} record {ids[-1]!r}"))
        if len(images) >= chunk:
            flush()
            meter.update(len(ids))
    flush()
    meter.update(len(ids), force=True)
    out = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    meta = _metadata(model, {"kind": "split", "data_dir": os.path.abspath(info.data_dir), "split": split,
                             "dataset": info.name})  # fmt: skip
    return _from_embeddings(model, out, ids, [""] * len(ids), labels, meta)


def index_embeddings(model, directory: str) -> SearchIndex:
    """The index of a directory of embedding shards written by the Beam pipeline (`serving.embeddings`):
    the same rows, in the same order and with the same metadata as `index_folder` / `index_split` give
    for its source. `model` (an `export.ExportInfo` or `ExportedModel`) must be the export that embedded
    them: vectors of another model are not comparable."""
    try:
        contents, rows = embeddings.read(directory)
    except embeddings.EmbeddingsError as e:
        raise IndexFileError(str(e)) from e
    if contents["vocabulary"] != model.vocabulary.to_json():
        raise IndexFileError(
            f"{directory} was embedded with another vocabulary than {model.export_dir}; embed it with this export"
        )
    if model.fingerprint and contents.get("export_fingerprint") not in ("", model.fingerprint):
        raise IndexFileError(
            f"{directory} was embedded by another export ({contents.get('export_dir')}); its vectors are not "
            f"comparable with {model.export_dir}'s: embed it again with this export, or index it with that one"
        )
    meta = _metadata(model, contents["source"])
    skipped = embeddings.read_skipped(directory, contents)
    if contents["source"]["kind"] == "folder":
        meta["skipped"] = [{"path": e["id"], "reason": e["reason"]} for e in skipped]
    else:  # where the records are, so that the service can leave them out of its table (items.ItemImages)
        meta["skipped"] = [{k: e[k] for k in ("id", "reason", "shard", "record")} for e in skipped]
    meta["embeddings"] = {"directory": directory, "created": contents.get("created"),
                          "pipeline": contents.get("pipeline", {})}  # fmt: skip
    out = {k: rows[k] for k in ("global_representation", "predicted_values", "predicted_probabilities")}
    return _from_embeddings(model, out, rows["ids"], rows["paths"], rows["labels"], meta)


def check_compatible(
    index: SearchIndex, vocabulary_json: dict, global_dim: int, fingerprint: str | None = None
):
    """Raises IndexFileError unless the index was embedded with this vocabulary and dimension (and, given a
    SavedModel `fingerprint`, by that very export: vectors of another model are not comparable)."""
    if index.vocabulary != vocabulary_json:
        raise IndexFileError(
            f"{index.path} was built with another vocabulary than this export; rebuild it with experiments.index"
        )
    if index.vectors.shape[1] != global_dim:
        raise IndexFileError(
            f"{index.path} holds vectors of dimension {index.vectors.shape[1]}, the export makes {global_dim}"
        )
    recorded = index.metadata.get("export_fingerprint")
    if fingerprint and recorded and recorded != fingerprint:
        raise IndexFileError(
            f"{index.path} was embedded by another export ({index.metadata.get('export_dir')}); its vectors "
            "are not comparable with this model's: rebuild the index with experiments.index"
        )
