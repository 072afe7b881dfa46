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
from fashionsearchnet_v2.progress import Progress
from fashionsearchnet_v2.serving import embeddings
from fashionsearchnet_v2.serving.index import (
    ImageReadError,
    IndexFileError,
    SearchIndex,
    content_digest,
    decode_image,
    list_images,
    read_bytes,
)

_OUTPUTS = ("global_representation", "predicted_values", "predicted_probabilities")


def _metadata(model, source: dict) -> dict:
    return {
        "source": source,
        "export_dir": model.export_dir,
        "export_fingerprint": model.fingerprint,
        "export": {k: model.metadata.get(k) for k in ("variant", "dataset", "created", "global_dim")},
        "vocabulary": model.vocabulary.to_json(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


class _Reuse:
    """The rows of an earlier index (`previous`) that an item may take instead of being embedded: the same
    id and the same image (`content_digest`), embedded by the same export. Without `previous`, none."""

    def __init__(self, model, previous: SearchIndex | None):
        self.previous, self.rows = previous, {}
        if previous is None:
            return
        if previous.content is None:
            raise IndexFileError(
                f"{previous.path} holds no digests of its images (written before indexes kept them), so nothing "
                "in it can be reused: build the index once without --reuse"
            )
        if previous.metadata.get("export_fingerprint") != model.fingerprint:
            raise IndexFileError(
                f"{previous.path} was embedded by another export ({previous.metadata.get('export_dir')}); its "
                f"vectors are not comparable with {model.export_dir}'s: build the index without --reuse"
            )
        self.rows = {
            (str(i), bytes(c)): row for row, (i, c) in enumerate(zip(previous.ids, previous.content))
        }

    def find(self, image_id: str, digest: bytes) -> int:
        """The earlier row for this item and image, or -1 (embed it)."""
        return self.rows.get((image_id, digest), -1)

    def assemble(self, parts: list[dict], taken: list[int]) -> dict:
        """`embed`'s outputs for every item, in order: the embedded ones from `parts` (in their order), the
        others from the earlier index's rows in `taken` (-1: embedded)."""
        new = {k: np.concatenate([p[k] for p in parts]) for k in _OUTPUTS} if parts else {}
        if self.previous is None or not taken:
            return new
        taken = np.asarray(taken)
        fresh = taken < 0
        earlier = {"global_representation": self.previous.vectors,
                   "predicted_values": self.previous.predicted_values,
                   "predicted_probabilities": self.previous.predicted_probabilities}  # fmt: skip
        out = {}
        for key, before in earlier.items():
            out[key] = np.empty((len(taken), *before.shape[1:]), before.dtype)
            out[key][~fresh] = before[taken[~fresh]]
            if fresh.any():
                out[key][fresh] = new[key]
        return out

    def summary(self, taken: list[int]) -> dict | None:
        """What the index took from the earlier one (its metadata's "reused"), or None without one."""
        if self.previous is None:
            return None
        return {"index": self.previous.path, "items": int(sum(row >= 0 for row in taken))}


def _from_embeddings(model, out: dict, ids, paths, labels, meta, content=None) -> SearchIndex:
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
        content=None if content is None else np.asarray(content, "S32"),
    )


def index_folder(model, folder: str, batch_size: int = 32, chunk: int = 256, progress: bool = True,
                 previous: SearchIndex | None = None):  # fmt: skip
    """Embeds every image under `folder` through `model` (an `export.ExportedModel`).

    Returns (SearchIndex, skipped) where skipped lists (relative path, reason) of unreadable files and of
    names that are not UTF-8 (an id must be text: the service puts it in URLs and JSON; such a name is
    listed with its undecodable bytes as \\xNN): one bad file in a catalogue is reported, not fatal. Labels are all -1 (a folder has none). With
    `previous` (an index of the same export), an image whose path and bytes are in it takes its row
    there instead of being embedded again (`experiments.index --reuse`).
    """
    folder = os.path.abspath(folder)
    names = list_images(folder, progress=progress)
    reuse = _Reuse(model, previous)
    meter = Progress(len(names), f"embedding {folder}", enabled=progress)
    ids, paths, digests, taken, skipped, parts = [], [], [], [], [], []
    for start in range(0, len(names), chunk):
        images = []
        for name in names[start : start + chunk]:
            path = os.path.join(folder, name)
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:  # os.walk keeps undecodable bytes as lone surrogates
                shown = os.fsencode(name).decode("utf-8", "backslashreplace")
                skipped.append((shown, "its name is not UTF-8 text: rename the file to index it"))
                continue
            try:
                data = read_bytes(path)
                digest = content_digest(data)
                row = reuse.find(name, digest)
                if row < 0:
                    images.append(decode_image(data, path))
            except ImageReadError as e:
                skipped.append((name, e.reason))
                continue
            ids.append(name)
            paths.append(path)
            digests.append(digest)
            taken.append(row)
        if images:
            parts.append(model.embed(images, batch_size))
        meter.update(min(start + chunk, len(names)))
    meter.update(len(names), force=True)
    out = reuse.assemble(parts, taken)
    labels = np.full((len(ids), len(model.vocabulary.names)), schema.UNLABELLED, np.int32)
    meta = _metadata(model, {"kind": "folder", "folder": folder})
    meta["skipped"] = [{"path": p, "reason": r} for p, r in skipped]
    if previous is not None:
        meta["reused"] = reuse.summary(taken)
    return _from_embeddings(model, out, ids, paths, labels, meta, digests), skipped


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
                progress: bool = True, previous: SearchIndex | None = None) -> SearchIndex:  # fmt: skip
    """Embeds the records of a dataset split through `model`, keeping their ids and labels; `split` may
    name several ("query,gallery") or "all" (the whole catalogue; `schema.split_list`), split after split.

    The dataset's attributes must be the export's (same names and values in the same order), or the
    labels would be read against the wrong vocabulary. With `previous`, a record whose id and image bytes
    are in it takes its row there instead of being embedded again (`index_folder`).
    """
    split = ",".join(schema.split_list(split))
    reuse = _Reuse(model, previous)
    shards = info.shards_of(split)
    check_dataset_vocabulary(model, info)
    meter = Progress(info.size_of(split), f"embedding {split}", enabled=progress)
    ids, labels, parts, images, digests, taken = [], [], [], [], [], []

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
        data = ex["encoded"].numpy()
        digests.append(content_digest(data))
        taken.append(reuse.find(ids[-1], digests[-1]))
        if taken[-1] < 0:
            images.append(decode_image(data, f"{split} record {ids[-1]!r}"))
        if len(images) >= chunk:
            flush()
        if len(ids) % chunk == 0:
            meter.update(len(ids))
    flush()
    meter.update(len(ids), force=True)
    out = reuse.assemble(parts, taken)
    meta = _metadata(model, {"kind": "split", "data_dir": os.path.abspath(info.data_dir), "split": split,
                             "dataset": info.name})  # fmt: skip
    if previous is not None:
        meta["reused"] = reuse.summary(taken)
    return _from_embeddings(model, out, ids, [""] * len(ids), labels, meta, digests)


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
    return _from_embeddings(model, out, rows["ids"], rows["paths"], rows["labels"], meta, rows["content"])


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
