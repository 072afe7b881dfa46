"""Index files of global representations, embedded through an export, and exact or FAISS search on them.

This is the serving-side catalogue: `experiments.index` embeds a dataset split or a folder of images with
an exported SavedModel (`fashionsearchnet_v2.serving.export`), or reads the embedding shards that the Beam
pipeline wrote for a catalogue too large for one process (`serving.beam_embed`, `serving.embeddings`), and
writes one index file; `experiments.search` embeds a query, manipulates it and ranks the index. An index file is an .npz, written atomically:

    vectors                  float32 [N, r]  `embed`'s global_representation (no manipulation)
    ids                      str [N]         record ids (dataset split) or paths relative to the folder
    paths                    str [N]         absolute image paths ("" for dataset records)
    labels                   int32 [N, A]    dataset labels, -1 where unknown (always, for a folder)
    predicted_values         int32 [N, A]    `embed`'s predictions
    predicted_probabilities  float32 [N, A]
    metadata                 str             JSON: source, export dir and metadata, vocabulary, backend

With the FAISS backend, `<FILE>.<token>.faiss` beside it (named in the metadata) holds an approximate index over the same vectors
(IVF-Flat or HNSW). Exact search (`metrics.ExactIndex`, numpy) is the default and the reference: the
paper ranks by exact Euclidean distance. FAISS is for catalogues where a full scan per query is too slow;
`benchmarks/bench_index.py` measures what it costs in recall. FAISS is an optional extra
(`pip install -e .[faiss]`), imported only when asked for.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import math
import os
import re
import tempfile
import uuid
from collections.abc import Sequence

import cv2
import numpy as np
import tensorflow as tf

from fashionsearchnet_v2.data import integrity, records, schema
from fashionsearchnet_v2.data.convert import Progress
from fashionsearchnet_v2.data.pipeline import read_split_images
from fashionsearchnet_v2.retrieval import figures, metrics
from fashionsearchnet_v2.serving import embeddings

FORMAT_VERSION = 1
BACKENDS = ("exact", "faiss")
FAISS_KINDS = ("ivf_flat", "hnsw")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
FAISS_SUFFIX = ".faiss"


class ImageReadError(ValueError):
    """An image that cannot be read; the message names the path and the reason."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"cannot read image {path}: {reason}")
        self.path, self.reason = path, reason


class IndexFileError(ValueError):
    """An index file that cannot be written, read or used with an export; the message says why."""


class FaissUnavailable(ImportError):
    """FAISS was asked for but is not installed."""


def import_faiss():
    """The faiss module, or FaissUnavailable with the install command."""
    # The loader logs (at INFO) every CPU-specific build it tries and does not find; absl shows INFO.
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    try:
        import faiss  # optional extra: imported only when the FAISS backend is used
    except ImportError as e:
        raise FaissUnavailable(
            "the FAISS backend needs faiss-cpu, which is not installed: `pip install -e .[faiss]` "
            f"(or `pip install faiss-cpu`), or use --backend=exact ({e})"
        ) from e
    return faiss


# ----------------------------------------------------------------------------------------------------
# Images


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 RGB [H, W, 3], decoded by TensorFlow as in training."""
    if not data:
        raise ImageReadError(where, "the file is empty")
    try:
        return records.decode_image(tf.constant(data)).numpy()
    except (tf.errors.InvalidArgumentError, tf.errors.UnimplementedError) as e:
        # TF wraps the reason in "{{function_node ...}} REASON [Op:DecodeImage] ..."; keep REASON.
        first = (e.message or str(e)).strip().splitlines()[0]
        first = re.sub(r"^\{\{.*?\}\}\s*|\s*\[Op:.*$", "", first)
        raise ImageReadError(where, f"not a decodable JPEG/PNG/BMP/GIF image ({first})") from None


def read_image(path: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] of the image file at `path`; ImageReadError (path + reason) otherwise."""
    if os.path.isdir(path):
        raise ImageReadError(path, "it is a directory")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ImageReadError(path, e.strerror or str(e)) from None
    return decode_image(data, path)


def list_images(folder: str) -> list[str]:
    """Image files under `folder` (recursively, by extension), as sorted paths relative to it."""
    if not os.path.isdir(folder):
        raise IndexFileError(f"{folder} is not a directory")
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, name), folder))
    return sorted(found)


# ----------------------------------------------------------------------------------------------------
# FAISS


def default_nlist(n: int) -> int:
    """IVF cells for n vectors: about sqrt(n) (FAISS's rule of thumb), with >= 39 training points each."""
    return max(1, min(int(round(math.sqrt(n))), n // 39))


def build_faiss(
    vectors: np.ndarray,
    kind: str = "ivf_flat",
    nlist: int | None = None,
    hnsw_m: int = 32,
    train_size: int | None = None,
    seed: int = 0,
):
    """An approximate L2 index over vectors [N, r] float32.

    ivf_flat: k-means into `nlist` cells (trained on at most `train_size` vectors, default 64 per cell),
    then a query scans the `nprobe` nearest cells exactly. hnsw: a graph with `hnsw_m` links per node.
    """
    faiss = import_faiss()
    vectors = np.ascontiguousarray(vectors, np.float32)
    n, d = vectors.shape
    if kind == "ivf_flat":
        nlist = nlist or default_nlist(n)
        if nlist == 1:  # an IVF with one cell is a flat scan; skip k-means on a handful of points
            index = faiss.IndexFlatL2(d)
            index.add(vectors)
            return index
        quantizer = faiss.IndexFlatL2(d)
        index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
        sample = min(n, train_size or 64 * nlist)
        rng = np.random.default_rng(seed)
        train = vectors if sample == n else vectors[np.sort(rng.choice(n, sample, replace=False))]
        index.cp.seed = seed  # k-means seed: the same vectors give the same cells
        index.train(train)
        index.add(vectors)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, hnsw_m, faiss.METRIC_L2)
        index.add(vectors)
    else:
        raise ValueError(f"unknown FAISS index kind {kind!r}; valid: {', '.join(FAISS_KINDS)}")
    return index


def faiss_search(index, queries: np.ndarray, k: int, nprobe: int | None = None, ef_search: int | None = None):
    """(indices int64 [S, k], Euclidean distances float32 [S, k]); -1 / inf where fewer than k found."""
    faiss = import_faiss()
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = int(nprobe)
    if ef_search is not None:
        faiss.downcast_index(index).hnsw.efSearch = int(ef_search)
    squared, indices = index.search(np.ascontiguousarray(queries, np.float32), int(k))
    distances = np.where(indices >= 0, np.sqrt(np.maximum(squared, 0.0)), np.inf).astype(np.float32)
    return indices.astype(np.int64), distances


# ----------------------------------------------------------------------------------------------------
# The index file


@dataclasses.dataclass
class SearchIndex:
    """An index file in memory; see the module docstring for the arrays."""

    vectors: np.ndarray
    ids: np.ndarray
    paths: np.ndarray
    labels: np.ndarray
    predicted_values: np.ndarray
    predicted_probabilities: np.ndarray
    metadata: dict
    path: str | None = None
    _faiss: object = dataclasses.field(default=None, repr=False)
    _exact: object = dataclasses.field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def vocabulary(self) -> dict:
        return self.metadata["vocabulary"]

    @property
    def backend(self) -> str:
        return self.metadata.get("backend", "exact")

    def save(self, path: str, overwrite: bool = False, faiss_index=None) -> str:
        """Writes `path` (and `<path>.faiss` with `faiss_index`) atomically; refuses to replace without
        `overwrite`. Returns the absolute path."""
        path = os.path.abspath(path)
        if os.path.lexists(path) and not overwrite:
            raise IndexFileError(f"{path} already exists; pass --overwrite to replace it")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        meta = dict(
            self.metadata, format_version=FORMAT_VERSION, count=len(self), dim=int(self.vectors.shape[1])
        )
        # The FAISS partner gets a fresh name each time and the .npz, written last, names it: an index
        # file always points at the .faiss written with it, even if a rebuild is interrupted halfway.
        faiss_path = None
        if faiss_index is not None:
            faiss = import_faiss()
            faiss_path = f"{path}.{uuid.uuid4().hex[:12]}{FAISS_SUFFIX}"
            tmp = _temp_path(faiss_path)
            try:
                faiss.write_index(faiss_index, tmp)
                os.replace(tmp, faiss_path)
            finally:
                if os.path.exists(tmp):
                    os.remove(tmp)
            meta["backend"] = "faiss"
            meta["faiss"] = dict(
                meta.get("faiss", {}),
                file=os.path.basename(faiss_path),
                ntotal=int(faiss_index.ntotal),
                bytes=os.path.getsize(faiss_path),
            )
        else:
            meta["backend"] = "exact"
            meta.pop("faiss", None)
        arrays = {
            "vectors": np.asarray(self.vectors, np.float32),
            "ids": np.asarray(self.ids, str),
            "paths": np.asarray(self.paths, str),
            "labels": np.asarray(self.labels, np.int32),
            "predicted_values": np.asarray(self.predicted_values, np.int32),
            "predicted_probabilities": np.asarray(self.predicted_probabilities, np.float32),
            "metadata": np.asarray(json.dumps(meta)),
        }
        tmp = _temp_path(path)
        try:
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        for stale in faiss_partners(path):  # earlier partners of this file, no longer named by it
            if stale != faiss_path:
                os.remove(stale)
        self.metadata, self.path, self._faiss = meta, path, faiss_index
        return path

    @classmethod
    def load(cls, path: str) -> SearchIndex:
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError) as e:
            raise IndexFileError(f"{path}: not a readable index file ({e})") from e
        missing = {"vectors", "ids", "paths", "labels", "predicted_values", "predicted_probabilities",
                   "metadata"} - set(arrays)  # fmt: skip
        if missing:
            raise IndexFileError(f"{path}: not an index file (missing {sorted(missing)})")
        meta = json.loads(str(arrays.pop("metadata")))
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexFileError(
                f"{path}: index format {meta.get('format_version')}, expected {FORMAT_VERSION}"
            )
        return cls(**arrays, metadata=meta, path=os.path.abspath(path))

    def faiss_index(self):
        """The .faiss index beside the file (checked against what the file recorded), loaded once."""
        if self._faiss is None:
            info = self.metadata.get("faiss")
            if not info or self.path is None:
                raise IndexFileError(f"{self.path}: built for exact search; rebuild it with --backend=faiss")
            faiss = import_faiss()
            faiss_path = os.path.join(os.path.dirname(self.path), info["file"])
            if not os.path.isfile(faiss_path) or os.path.getsize(faiss_path) != info["bytes"]:
                raise IndexFileError(
                    f"{faiss_path} is missing or does not belong to {self.path}; rebuild the index"
                )
            index = faiss.read_index(faiss_path)
            if index.ntotal != len(self) or index.ntotal != info["ntotal"]:
                raise IndexFileError(f"{faiss_path} holds {index.ntotal} vectors, {self.path} {len(self)}")
            self._faiss = index
        return self._faiss

    def search(
        self,
        queries,
        k: int,
        backend: str | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest entries of each query [S, r] -> (indices int64 [S, k'], Euclidean distances [S, k']),
        k' = min(k, N). `backend` defaults to the one the index was built for."""
        backend = backend or self.backend
        queries = np.asarray(queries, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.vectors.shape[1]:
            raise IndexFileError(
                f"queries {queries.shape} do not match the index's vectors of dimension {self.vectors.shape[1]}"
            )
        k = min(int(k), len(self))
        if backend == "exact":
            if self._exact is None:
                self._exact = metrics.ExactIndex(self.vectors)
            return metrics.search_topk(queries, self._exact, k)
        if backend == "faiss":
            params = self.metadata.get("faiss", {})
            nprobe = nprobe if nprobe is not None else params.get("nprobe")
            ef_search = ef_search if ef_search is not None else params.get("ef_search")
            return faiss_search(self.faiss_index(), queries, k, nprobe, ef_search)
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")

    def attributes(self, row: int) -> dict[str, dict]:
        """{attribute: {"value": name, "source": "label" | "predicted", "probability": p}} of one entry:
        its dataset label where known, else the model's prediction."""
        out = {}
        for a, attr in enumerate(self.vocabulary["attributes"]):
            label = int(self.labels[row, a])
            if label >= 0:
                out[attr["name"]] = {"value": attr["values"][label], "source": "label"}
            else:
                pred = int(self.predicted_values[row, a])
                out[attr["name"]] = {
                    "value": attr["values"][pred],
                    "source": "predicted",
                    "probability": round(float(self.predicted_probabilities[row, a]), 4),
                }
        return out

    def known_values(self) -> np.ndarray:
        """[N, A] int: labels where known, predictions elsewhere."""
        return np.where(self.labels >= 0, self.labels, self.predicted_values)


def faiss_partners(path: str) -> list[str]:
    """The `<path>.<token>.faiss` files beside index file `path`."""
    directory, name = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(name) + r"\.[0-9a-f]{12}" + re.escape(FAISS_SUFFIX) + "$")
    return sorted(os.path.join(directory, f) for f in os.listdir(directory) if pattern.match(f))


def _temp_path(path: str) -> str:
    fd, tmp = tempfile.mkstemp(
        dir=os.path.dirname(path), prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    os.close(fd)
    return tmp


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
    """Embeds the records of a dataset split through `model`, keeping their ids and labels.

    The dataset's attributes must be the export's (same names and values in the same order), or the
    labels would be read against the wrong vocabulary.
    """
    check_dataset_vocabulary(model, info)
    meter = Progress(info.splits.get(split, 0), f"embedding {split}", enabled=progress)
    ids, labels, parts, images = [], [], [], []

    def flush():
        if images:
            parts.append(model.embed(images, batch_size))
            images.clear()

    ds = tf.data.TFRecordDataset(info.shard_paths(split)).map(
        lambda s: records.parse_example(s, info.num_attributes)
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


def result_images(index: SearchIndex, rows: Sequence[int], data_dir: str | None = None) -> list[np.ndarray]:
    """uint8 RGB images of the given index rows: read from their paths (folder index) or from the
    dataset records by id (split index; `data_dir` overrides the one recorded)."""
    source = index.metadata["source"]
    if source["kind"] == "folder":
        return [read_image(str(index.paths[r])) for r in rows]
    info = schema.load_dataset_info(data_dir or source["data_dir"])
    found = read_split_images(info, source["split"], [str(index.ids[r]) for r in rows])
    missing = [str(index.ids[r]) for r in rows if str(index.ids[r]) not in found]
    if missing:
        raise IndexFileError(f"{info.data_dir} split {source['split']} has no records with ids {missing[:5]}")
    return [found[str(index.ids[r])] for r in rows]


def search_figure(
    query_image: np.ndarray,
    text: str,
    results: Sequence[np.ndarray],
    matched,
    path: str,
    maps: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    size: int = 128,
) -> np.ndarray:
    """A PNG of one search: query, manipulation text and ranked results framed green where every
    requested value matches (`figures.result_grid`), and below it the query's attribute activation maps
    with their boxes (`figures.overlay_maps`) when `maps` [A, h, w] and `boxes` [A, 4] are given.
    Images of any size are squashed to `size` x `size` for the grid. Returns the canvas written."""

    def square(img):
        return cv2.resize(np.asarray(img, np.uint8), (size, size), interpolation=cv2.INTER_AREA)

    query = square(query_image)
    grid_results = np.stack([square(r) for r in results])[None] if len(results) else None
    if grid_results is None:
        grid_results = np.zeros((1, 0, size, size, 3), np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        canvas = figures.result_grid(
            query[None],
            [text],
            grid_results,
            np.asarray(matched, bool).reshape(1, -1),
            os.path.join(tmp, "g.png"),
        )
    if maps is not None and boxes is not None:
        overlays = figures.overlay_maps(query, maps, boxes, list(names or []), cols=max(1, len(maps)))
        width = max(canvas.shape[1], overlays.shape[1])
        canvas = np.concatenate([_pad_width(canvas, width), _pad_width(overlays, width)], axis=0)
    figures.write_png(path, canvas)
    return canvas


def _pad_width(image: np.ndarray, width: int) -> np.ndarray:
    pad = width - image.shape[1]
    return np.pad(image, ((0, 0), (0, pad), (0, 0)), constant_values=figures.WHITE) if pad > 0 else image
