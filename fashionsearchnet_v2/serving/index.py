"""Index files of global representations, embedded through an export, and exact or FAISS search on them.

This is the serving-side catalogue, built by `serving.indexing` (a dataset split or a folder of images
embedded with an export, or the Beam pipeline's embedding shards) and searched by `experiments.search`
and the service. An index file is an .npz, written atomically:

    vectors                  float32 [N, r]  `embed`'s global_representation (no manipulation)
    ids                      str [N]         record ids (dataset split) or paths relative to the folder
    paths                    str [N]         absolute image paths ("" for dataset records)
    labels                   int32 [N, A]    dataset labels, -1 where unknown (always, for a folder)
    predicted_values         int32 [N, A]    `embed`'s predictions
    predicted_probabilities  float32 [N, A]
    metadata                 str             JSON: source, export dir and metadata, vocabulary, backend
    content                  bytes [N]       a digest of each item's encoded image (`content_digest`), which
                                             `--reuse` compares; absent in files written before it

With the FAISS backend, `<FILE>.<token>.faiss` beside it (named in the metadata) holds an approximate index over the same vectors
(IVF-Flat or HNSW). Exact search (`metrics.ExactIndex`, numpy) is the default and the reference: the
paper ranks by exact Euclidean distance. FAISS is for catalogues where a full scan per query is too slow;
`benchmarks/bench_index.py` measures what it costs in recall. FAISS is an optional extra
(`pip install -e .[faiss]`), imported only when asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import uuid
import zipfile
from collections.abc import Collection, Mapping

import numpy as np
import tensorflow as tf

from fashionsearchnet_v2.data import records
from fashionsearchnet_v2.progress import Progress
from fashionsearchnet_v2.retrieval import metrics

FORMAT_VERSION = 1
BACKENDS = ("exact", "faiss")
FAISS_KINDS = ("ivf_flat", "hnsw")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
FAISS_SUFFIX = ".faiss"
#: The arrays every index file holds besides its metadata (`content` is optional).
_ARRAYS = ("vectors", "ids", "paths", "labels", "predicted_values", "predicted_probabilities")


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


def read_bytes(path: str) -> bytes:
    """The bytes of the image file at `path`; ImageReadError (path + reason) when it cannot be read."""
    if os.path.isdir(path):
        raise ImageReadError(path, "it is a directory")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ImageReadError(path, e.strerror or str(e)) from None


def read_image(path: str) -> np.ndarray:
    """uint8 RGB [H, W, 3] of the image file at `path`; ImageReadError (path + reason) otherwise."""
    return decode_image(read_bytes(path), path)


def content_digest(data: bytes) -> bytes:
    """What identifies an item's image in an index (`SearchIndex.content`): 128 bits of BLAKE2b, as hex."""
    return hashlib.blake2b(data, digest_size=16).hexdigest().encode()


def list_images(folder: str, progress: bool = False) -> list[str]:
    """Image files under `folder` (recursively, by extension), as sorted paths relative to it.

    With `progress`, a walk that takes seconds (a catalogue of millions of files, a network disk) prints
    the count found so far and its rate on stderr, so the wait before embedding begins is not silent.
    """
    if not os.path.isdir(folder):
        raise IndexFileError(f"{folder} is not a directory")
    found = []
    meter = Progress(None, f"listing {folder}", enabled=progress)
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in files:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(os.path.relpath(os.path.join(root, name), folder))
        meter.update(len(found))
    meter.finish(len(found))
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


def faiss_search(
    index,
    queries: np.ndarray,
    k: int,
    nprobe: int | None = None,
    ef_search: int | None = None,
    allowed: np.ndarray | None = None,
):
    """(indices int64 [S, k], Euclidean distances float32 [S, k]); -1 / inf where fewer than k found.

    nprobe and ef_search, when given, are set on the index (and stay). `allowed` (bool [N]) restricts the
    results to those rows, through FAISS's own ID selector, with the index's nprobe / efSearch: an
    approximate index may then find fewer than k of them (-1), the exact backend never does.
    """
    faiss = import_faiss()
    if nprobe is not None and hasattr(index, "nprobe"):
        index.nprobe = int(nprobe)
    if ef_search is not None:
        faiss.downcast_index(index).hnsw.efSearch = int(ef_search)
    params = None
    if allowed is not None:
        allowed = np.asarray(allowed)
        if allowed.dtype != bool or allowed.shape != (index.ntotal,):
            raise ValueError(f"allowed must be bool [{index.ntotal}], got {allowed.dtype} {allowed.shape}")
        bits = np.packbits(allowed, bitorder="little")  # FAISS's bitmap: bit i of byte i // 8 is row i
        inner = faiss.downcast_index(index)
        if hasattr(inner, "nprobe"):  # the parameters replace the index's own; a default would be 1 cell
            params = faiss.SearchParametersIVF(nprobe=int(inner.nprobe))
        elif hasattr(inner, "hnsw"):
            params = faiss.SearchParametersHNSW(efSearch=int(inner.hnsw.efSearch))
        else:
            params = faiss.SearchParameters()
        params.sel = selector = faiss.IDSelectorBitmap(bits)
    squared, indices = index.search(np.ascontiguousarray(queries, np.float32), int(k), params=params)
    if params is not None:
        del selector, bits  # FAISS holds raw pointers to both: kept alive until the search has returned
    distances = np.where(indices >= 0, np.sqrt(np.maximum(squared, 0.0)), np.inf).astype(np.float32)
    return indices.astype(np.int64), distances


#: A `where` filter that lets at most this many items through is ranked exactly among them, whatever the
#: backend: scoring 20,000 vectors costs a fraction of a millisecond a query, and FAISS's approximate search
#: restricted to few items finds fewer than k of them (the cells or graph nodes it visits hold too few).
EXACT_BELOW = 20_000


def faiss_filtered_search(index, vectors: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray,
                          nprobe: int | None = None, ef_search: int | None = None):  # fmt: skip
    """`faiss_search` restricted to the `allowed` rows (bool [N]), returning k' = min(k, allowed rows)
    results as the exact backend does: exactly among them when they are at most `EXACT_BELOW`; else FAISS
    with its ID selector, and a query for which it found fewer than k' is ranked exactly among them."""
    rows = np.flatnonzero(allowed)
    k = min(int(k), len(rows))
    if k == 0:
        return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
    if len(rows) <= EXACT_BELOW:
        found, distances = metrics.ExactIndex(vectors[rows]).search(queries, k)
        return rows[found], distances
    found, distances = faiss_search(index, queries, k, nprobe, ef_search, allowed)
    short = np.flatnonzero((found < 0).any(axis=1))
    if len(short):
        exact, exact_distances = metrics.ExactIndex(vectors[rows]).search(queries[short], k)
        found[short], distances[short] = rows[exact], exact_distances
    return found, distances


def recall_at_k(approx: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of each row of `exact` ([S, k] indices) that the same row of `approx` holds (-1: none)."""
    k = exact.shape[1]
    return float(np.mean([len(set(a[a >= 0].tolist()) & set(e.tolist())) / k for a, e in zip(approx, exact)]))


def faiss_recall(
    index, vectors: np.ndarray, k: int = 20, queries: int = 100, seed: int = 0,
    nprobe: int | None = None, ef_search: int | None = None,
) -> dict:  # fmt: skip
    """Recall@k of the FAISS `index` against exact search over the same `vectors` [N, r], on the user's own
    data: `queries` of the vectors (seeded sample) as queries, each one's own row left out of both result
    lists (it would be found trivially). {"k", "queries", "recall"}; what `experiments.index` reports, so a
    catalogue's own recall is known, not only the synthetic benchmark's (bench_index.py)."""
    vectors = np.ascontiguousarray(vectors, np.float32)
    n = len(vectors)
    k = min(int(k), n - 1)
    if k < 1:
        return {"k": 0, "queries": 0, "recall": 1.0}
    rows = np.sort(np.random.default_rng(seed).choice(n, min(int(queries), n), replace=False))
    exact, _ = metrics.ExactIndex(vectors).search(vectors[rows], k + 1)
    approx, _ = faiss_search(index, vectors[rows], k + 1, nprobe, ef_search)

    def without_self(found):
        return np.stack([r[r != q][:k] if (r == q).any() else r[:k] for r, q in zip(found, rows)])

    return {"k": k, "queries": len(rows), "recall": recall_at_k(without_self(approx), without_self(exact))}


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
    content: np.ndarray | None = None  # bytes [N]: `content_digest` of each item's image, where known
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
        if self.content is not None:
            arrays["content"] = np.asarray(self.content, "S32")
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
            loaded = np.load(path, allow_pickle=False)
            if not isinstance(loaded, np.lib.npyio.NpzFile):  # a plain .npy: one array, not several
                raise ValueError(f"a single {loaded.dtype} array {loaded.shape}, not an .npz of arrays")
            with loaded as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # empty, truncated, damaged
            raise IndexFileError(f"{path}: not a readable index file ({type(e).__name__}: {e})") from e
        missing = {*_ARRAYS, "metadata"} - set(arrays)
        if missing:
            raise IndexFileError(f"{path}: not an index file (missing {sorted(missing)})")
        content = arrays.pop("content", None)  # optional: absent in files written before it
        try:
            meta = json.loads(str(arrays.pop("metadata")))
        except ValueError as e:
            raise IndexFileError(
                f"{path}: its metadata is not JSON ({e}); rebuild it with experiments.index"
            ) from e
        if meta.get("format_version") != FORMAT_VERSION:
            raise IndexFileError(
                f"{path}: index format {meta.get('format_version')}, expected {FORMAT_VERSION}"
            )
        return cls(
            **{k: arrays[k] for k in _ARRAYS}, metadata=meta, path=os.path.abspath(path), content=content
        )

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
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest entries of each query [S, r] -> (indices int64 [S, k'], Euclidean distances [S, k']),
        k' = min(k, N). `backend` defaults to the one the index was built for. `allowed` (bool [N], e.g.
        `where_mask`'s) keeps the results to those entries: k' = min(k, allowed entries) exactly; FAISS
        pads with -1 what its approximate search did not find."""
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
            return self._exact.search(queries, k, allowed=allowed)
        if backend == "faiss":
            params = self.metadata.get("faiss", {})
            nprobe = nprobe if nprobe is not None else params.get("nprobe")
            ef_search = ef_search if ef_search is not None else params.get("ef_search")
            if allowed is not None:
                return faiss_filtered_search(
                    self.faiss_index(), self.vectors, queries, k, allowed, nprobe, ef_search
                )
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

    def where_mask(self, conditions: Mapping[int, Collection[int]]) -> np.ndarray:
        """bool [N]: `where_mask` of this index's known values."""
        return where_mask(self.known_values(), conditions)


def where_mask(known: np.ndarray, conditions: Mapping[int, Collection[int]]) -> np.ndarray:
    """bool [N]: the entries whose value of every attribute in `conditions` ({attribute: values}) is one of
    its values (values of one attribute: any of them; several attributes: all of them). `known` [N, A] is
    `SearchIndex.known_values()`: an item's label where known, else the model's prediction, the values the
    service's `matches` compare too."""
    mask = np.ones(len(known), bool)
    for a, values in conditions.items():
        mask &= np.isin(known[:, a], np.asarray(list(values), known.dtype))
    return mask


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


# Moved in the split of this module (issue 27): the builders to `serving.indexing`, the search figure to
# `serving.search_figure`; `read_split_images` lives in `data.pipeline`. Old imports work for one release.
_MOVED = {
    **dict.fromkeys(
        ("index_folder", "index_split", "index_embeddings", "check_dataset_vocabulary", "check_compatible"),
        "fashionsearchnet_v2.serving.indexing",
    ),
    **dict.fromkeys(("result_images", "search_figure"), "fashionsearchnet_v2.serving.search_figure"),
    "read_split_images": "fashionsearchnet_v2.data.pipeline",
}


def __getattr__(name):
    if name in _MOVED:
        import importlib

        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
