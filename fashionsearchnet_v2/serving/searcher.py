"""The search service's core, without the web: searches "this item, but ..." over one index with one
model, batching concurrent requests (`Batcher`), and checks uploads. `serving.service` puts it on HTTP;
tests and other front ends call `Searcher` directly. docs/serving.md has the request and answer formats.
"""

from __future__ import annotations

import logging
import re
import threading
import time
import urllib.parse
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from fashionsearchnet_v2.data import images
from fashionsearchnet_v2.retrieval import metrics
from fashionsearchnet_v2.serving import export, indexing, items
from fashionsearchnet_v2.serving import index as index_lib

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_BYTES = 10 * 2**20  # a phone photo is 2-8 MB
DEFAULT_MAX_PIXELS = 40_000_000  # 40 megapixels: larger images are refused before they are decoded
DEFAULT_TOP_K = 20
DEFAULT_MAX_TOP_K = 200
DEFAULT_MAX_BATCH = 16
# Issue 26: with 8 clients, batches of 8 instead of 1 and 8 in turn (5 ms before 2026-12-03).
DEFAULT_GATHER_MS = 10.0


class Batcher:
    """Calls `fn(items) -> results` on batches of the items submitted from concurrent threads.

    `batcher(item)` blocks until its result is ready. The first caller leads: it runs one batch of
    everything pending (its own item first, at most `max_batch`), hands each caller its result, and
    passes the lead to the oldest caller still waiting, if any. So a batch runs as soon as the previous
    one ends, holding whatever arrived meanwhile; one caller at a time runs exactly as without batching.
    An exception in `fn` is raised in every caller of that batch. The queue is the only shared mutable
    state of the service's request path, and it is guarded by a lock.

    `gather_ms` > 0: a leader whose queue is shorter than the previous batch waits up to that long for
    it to fill to that size. Clients answered by one batch come back together, a few milliseconds
    apart; without the wait the first one back runs alone, and the batches alternate between one item
    and the rest (issue 26: 8 clients, batches of 1 and 8 in turn). After a batch of one (a lone client)
    nobody waits, so a lone search is never delayed.
    """

    class _Slot:
        def __init__(self):
            self.ready = threading.Event()
            self.done, self.result, self.error = False, None, None

    def __init__(self, fn, max_batch: int = DEFAULT_MAX_BATCH, gather_ms: float = 0.0):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        if gather_ms < 0:
            raise ValueError(f"gather_ms must be >= 0, got {gather_ms}")
        self.fn, self.max_batch, self.gather_s = fn, int(max_batch), float(gather_ms) / 1000.0
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._pending: list = []
        self._running = False
        self._last_size = 1

    def __call__(self, item):
        slot = self._Slot()
        with self._lock:
            self._pending.append((item, slot))
            lead = not self._running
            self._running = True
            self._arrived.notify()
        if not lead:
            slot.ready.wait()  # set when served by another batch, or when handed the lead
        if not slot.done:
            self._run_one_batch()
        if slot.error is not None:
            raise slot.error
        return slot.result

    def _run_one_batch(self):
        with self._lock:
            want = min(self._last_size, self.max_batch)
            if self.gather_s > 0 and len(self._pending) < want:
                deadline = time.perf_counter() + self.gather_s
                while len(self._pending) < want:
                    left = deadline - time.perf_counter()
                    if left <= 0 or not self._arrived.wait(left):
                        break
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            self._last_size = len(batch)
        try:
            results = self.fn([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"batch function returned {len(results)} results for {len(batch)} items")
            for (_, slot), result in zip(batch, results):
                slot.result = result
        except BaseException as e:  # every caller of the batch gets the error
            for _, slot in batch:
                slot.error = e
        for _, slot in batch:
            slot.done = True
            slot.ready.set()
        with self._lock:
            if self._pending:
                self._pending[0][1].ready.set()  # the oldest waiting caller leads the next batch
            else:
                self._running = False


class RequestError(Exception):
    """A request the service refuses: HTTP `status`, a reason, and optionally the valid names."""

    def __init__(self, status: int, message: str, valid: Sequence[str] | None = None):
        super().__init__(message)
        self.status, self.message, self.valid = status, message, list(valid) if valid is not None else None

    def body(self) -> dict:
        out = {"error": self.message}
        if self.valid is not None:
            out["valid"] = self.valid
        return out


# ----------------------------------------------------------------------------------------------------
# Uploads


def decode_upload(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Uploaded bytes -> uint8 RGB [H, W, 3]; RequestError 400 (not an image, truncated) or 413 (too many
    pixels, checked from the header before decoding)."""
    if not data:
        raise RequestError(400, "the uploaded image is empty")
    if images.image_format(data) is None:
        # TensorFlow also decodes WebP and other formats whose size is not checked here: refused undecoded.
        raise RequestError(
            400,
            "the uploaded image is not a decodable JPEG/PNG/BMP/GIF image (its first bytes are none of these "
            "formats'; send one of them)",
        )
    size = images.dimensions(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise RequestError(
            413, f"the image has {size[0]} x {size[1]} pixels, more than the limit of {max_pixels:,}"
        )
    layout = images.gif_layout(data)
    if layout is not None and layout[0] * layout[1] * layout[2] > max_pixels:  # every frame is decoded
        raise RequestError(
            413,
            f"the GIF has {layout[2]} frames of {layout[0]} x {layout[1]} pixels, more than the limit of "
            f"{max_pixels:,} pixels in all",
        )
    if images.truncated_jpeg(data):
        raise RequestError(
            400, "the uploaded image is not a decodable JPEG/PNG/BMP/GIF image (truncated JPEG)"
        )
    try:
        image = index_lib.decode_image(data, "upload")
    except index_lib.ImageReadError as e:
        raise RequestError(400, f"the uploaded image is {e.reason}") from None
    if image.shape[0] * image.shape[1] > max_pixels:
        raise RequestError(
            413, f"the image has {image.shape[1]} x {image.shape[0]} pixels, more than {max_pixels:,}"
        )
    return image


def _item_error(e: items.ItemImageError) -> RequestError:
    """500 for an item image the server cannot serve: the client gets the reason without the server's
    paths, the log gets the full message."""
    log.error("%s", e)
    return RequestError(500, e.public)


# ----------------------------------------------------------------------------------------------------
# The core


class _Job(NamedTuple):
    """One search as the batcher gathers it."""

    image: np.ndarray
    pairs: list  # [(attribute, value)]: the changes
    k: int
    where: tuple  # a hashable form of `Searcher.parse_where`'s filters; () for none
    allowed: np.ndarray | None  # their `index.where_mask`; None for none


class Searcher:
    """Answers searches over one index with one model; thread-safe: after construction only the batcher's
    queue changes, under its lock.

    Args:
        model: `export.ExportedModel` (in-process) or `remote.RemoteModel` (TensorFlow Serving).
        index: `index_lib.SearchIndex` embedded by that export (checked: vocabulary, dimension, fingerprint).
        item_images: `items.ItemImages` of the index (default: built from the index's recorded source).
        backend: "exact" or "faiss" (default: the index's).
        nprobe, ef_search: FAISS search parameters (default: those recorded in the index).
        max_top_k: the largest top_k a request may ask for.
        max_batch: searches that arrive while others are computed are embedded, manipulated and ranked
            together, up to this many at once (1: one at a time). A batch runs as soon as the previous one
            ends, waiting for more only as `gather_ms` says: no added latency when requests come one by one.
        gather_ms: how long a batch may wait for as many searches as the previous batch held
            (`Batcher`; never after a batch of one); 0: never waits.
    """

    def __init__(
        self,
        model,
        index: index_lib.SearchIndex,
        item_images: items.ItemImages | None = None,
        backend: str | None = None,
        nprobe: int | None = None,
        ef_search: int | None = None,
        max_top_k: int = DEFAULT_MAX_TOP_K,
        max_batch: int = DEFAULT_MAX_BATCH,
        gather_ms: float = DEFAULT_GATHER_MS,
    ):
        self.model = model
        self.index = index
        self.vocabulary: export.Vocabulary = model.vocabulary
        global_dim = int(model.metadata.get("global_dim") or index.vectors.shape[1])
        indexing.check_compatible(index, self.vocabulary.to_json(), global_dim, model.fingerprint)
        self.names = self.vocabulary.names
        self.item_images = item_images if item_images is not None else items.ItemImages(index)
        self.max_top_k = int(max_top_k)
        self.max_batch, self.gather_ms = int(max_batch), float(gather_ms)
        self._batches = Batcher(self._run_batch, self.max_batch, self.gather_ms)
        self.backend = backend or index.backend
        self._known = index.known_values()  # [N, A] label where known, else prediction
        self._rows = {str(i): r for r, i in enumerate(index.ids)}
        if len(self._rows) != len(index):
            raise index_lib.IndexFileError(f"{index.path}: item ids are not unique")
        if self.backend == "exact":
            self._exact = metrics.ExactIndex(index.vectors)
        elif self.backend == "faiss":
            self._faiss = index.faiss_index()
            params = index.metadata.get("faiss", {})
            # Set once here: the request path then only reads the FAISS index.
            index_lib.faiss_search(
                self._faiss,
                index.vectors[:1],
                1,
                nprobe if nprobe is not None else params.get("nprobe"),
                ef_search if ef_search is not None else params.get("ef_search"),
            )
        else:
            raise ValueError(f"unknown backend {self.backend!r}; valid: {', '.join(index_lib.BACKENDS)}")

    # -- catalogue

    def row_of(self, item_id: str) -> int:
        row = self._rows.get(str(item_id))
        if row is None:
            raise RequestError(404, f"no item {item_id!r} in the index ({len(self.index)} items)")
        return row

    def item(self, row: int) -> dict:
        """One item's JSON: id, attributes (label where known, else prediction), image URL.

        Where the index holds the images' digests the URL carries the first 12 hex digits (`?v=...`): an
        image that changed under the same id (re-indexed, and swapped in by a running service) gets a new
        URL, so a browser never shows its cached old picture beside results of the new one."""
        item_id = str(self.index.ids[row])
        out = {"id": item_id, "attributes": self.index.attributes(row)}
        if self.item_images.available:
            out["image_url"] = "/images/" + urllib.parse.quote(item_id, safe="")
            if self.index.content is not None:
                out["image_url"] += "?v=" + bytes(self.index.content[row])[:12].decode("ascii")
        return out

    def list_items(self, offset: int = 0, limit: int = 50) -> dict:
        if offset < 0 or not 1 <= limit <= 1000:
            raise RequestError(
                400, f"offset must be >= 0 and limit in 1..1000, got offset={offset} limit={limit}"
            )
        rows = range(offset, min(offset + limit, len(self.index)))
        return {"total": len(self.index), "offset": offset, "items": [self.item(r) for r in rows]}

    def item_image(self, item_id: str) -> tuple[bytes, str]:
        """(bytes, media type) of an item's image; 404 for an unknown item or an index without images."""
        row = self.row_of(item_id)
        if not self.item_images.available:
            raise RequestError(404, "this index holds vectors only: its items have no images")
        try:
            data = self.item_images.read(row)
        except items.ItemImageError as e:
            raise _item_error(e) from None
        return data, images.media_type(data)

    # -- search

    def parse_changes(self, changes: Sequence[tuple[str, str]]) -> list[tuple[int, int]]:
        """[(attribute name, value name)] -> [(attribute, value)]; 400 listing the valid names otherwise."""
        out, seen = [], set()
        for name, value in changes:
            a, v = self._lookup(name, value)
            if a in seen:
                raise RequestError(
                    400,
                    f"attribute {str(name).strip()!r} is changed twice; a query has one value per attribute",
                )
            seen.add(a)
            out.append((a, v))
        return out

    def _lookup(self, name, value, where: str = "") -> tuple[int, int]:
        """(attribute name, value name) -> (attribute, value); 400 listing the valid names otherwise."""
        name, value = str(name).strip(), str(value).strip()
        if name not in self.names:
            raise RequestError(400, f"unknown attribute {name!r}{where}", valid=self.names)
        a = self.names.index(name)
        values = self.vocabulary.attributes[a].values
        if value not in values:
            raise RequestError(
                400, f"unknown value {value!r} for attribute {name!r}{where}", valid=list(values)
            )
        return a, values.index(value)

    def parse_where(self, settings: Sequence[tuple[str, str]]) -> dict[int, tuple[int, ...]]:
        """Result filters [(attribute name, value name)] -> {attribute: (values)}: an attribute named more
        than once accepts any of its values, several attributes must all hold; 400 listing the valid names
        otherwise."""
        return export.where_conditions([self._lookup(name, value, " in 'where'") for name, value in settings])

    def check_top_k(self, top_k) -> int:
        """top_k as sent (an int, or digits in a form field) -> int in 1..max_top_k; 400 otherwise."""
        if isinstance(top_k, str) and re.fullmatch(r"[0-9]+", top_k.strip()):  # not "²": isdigit, no int
            top_k = int(top_k)
        if not isinstance(top_k, int) or isinstance(top_k, bool):
            raise RequestError(400, f"top_k must be an integer, got {top_k!r}")
        if not 1 <= top_k <= self.max_top_k:
            raise RequestError(400, f"top_k must be in 1..{self.max_top_k}, got {top_k}")
        return top_k

    def _rank(self, queries: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        k = min(k, len(self.index))
        if self.backend == "exact":
            return self._exact.search(queries, k, allowed=allowed)
        if allowed is not None:
            return index_lib.faiss_filtered_search(self._faiss, self.index.vectors, queries, k, allowed)
        return index_lib.faiss_search(self._faiss, queries, k)

    def _run_batch(self, jobs: list[_Job]) -> list:
        """Jobs -> per job ({embed output: [1, ...]}, rows [k'], distances [k']).

        One `embed` call (images grouped by size inside), one `manipulate` for the jobs with changes, one
        ranking with the largest k per distinct filter (a smaller k's results are its prefix).
        """
        emb = self.model.embed([job.image for job in jobs], batch_size=len(jobs))
        queries = np.array(emb["global_representation"], np.float32)
        changed = [i for i, job in enumerate(jobs) if job.pairs]
        if changed:  # without a change, manipulate would give embed's global representation
            attributes, values = export.manipulation_arrays([jobs[i].pairs for i in changed])
            queries[changed] = self.model.manipulate(
                emb["attribute_representations"][changed], attributes, values
            )
        ranked = [None] * len(jobs)
        for where in dict.fromkeys(job.where for job in jobs):
            group = [i for i, job in enumerate(jobs) if job.where == where]
            k = max(jobs[i].k for i in group)
            rows, distances = self._rank(queries[group], k, jobs[group[0]].allowed)
            for j, i in enumerate(group):
                ranked[i] = rows[j][: jobs[i].k], distances[j][: jobs[i].k]
        return [({key: value[i : i + 1] for key, value in emb.items()}, *ranked[i]) for i in range(len(jobs))]

    def search(
        self,
        image: np.ndarray | None = None,
        item: str | None = None,
        changes: Sequence[tuple[str, str]] = (),
        top_k=DEFAULT_TOP_K,
        where: Sequence[tuple[str, str]] = (),
    ) -> dict:
        """One search: a decoded image or an indexed item's id, attribute changes by name, top_k, and
        optional result filters by name (`parse_where`: only items with those values are ranked).

        An item's own entry is left out of its results. The target is the query's attributes (an item's
        labels where known, else the model's predictions) with the changes applied; each result says which
        target attributes it has (`matches`), whether it has all (`all_match`, the paper's hit, §4.4) and
        whether it has every changed one (`changes_match`).
        """
        start = time.perf_counter()
        if (image is None) == (item is None):
            raise RequestError(400, "give exactly one query: an uploaded image or an indexed item's id")
        pairs = self.parse_changes(changes)
        conditions = self.parse_where(where)
        k = self.check_top_k(top_k)
        row = None
        if item is not None:
            row = self.row_of(item)
            if not self.item_images.available:
                raise RequestError(404, "this index holds vectors only: its items cannot be queries")
            try:
                image = self.item_images.decode(row)
            except items.ItemImageError as e:
                raise _item_error(e) from None
            except index_lib.ImageReadError as e:  # names the item, not its path
                raise RequestError(500, str(e)) from None
        where_key = tuple(sorted((a, tuple(sorted(v))) for a, v in conditions.items()))
        allowed = index_lib.where_mask(self._known, conditions) if conditions else None
        emb, rows, distances = self._batches(_Job(image, pairs, k + (row is not None), where_key, allowed))
        keep = (rows >= 0) & (rows != (-1 if row is None else row))
        rows, distances = rows[keep][:k], distances[keep][:k]

        predicted = emb["predicted_values"][0]
        current = self._known[row] if row is not None else predicted
        target = np.array(current, np.int64)
        for a, v in pairs:
            target[a] = v
        values = [attr.values for attr in self.vocabulary.attributes]
        changed = [a for a, _ in pairs]
        results = []
        for rank, (r, d) in enumerate(zip(rows, distances), 1):
            hit = self._known[r] == target
            results.append({
                "rank": rank,
                **self.item(int(r)),
                "distance": round(float(d), 5),
                "matches": {n: bool(hit[a]) for a, n in enumerate(self.names)},
                "all_match": bool(hit.all()),
                "changes_match": bool(hit[changed].all()) if changed else True,
            })  # fmt: skip
        query_json = {
            "item": None if row is None else str(self.index.ids[row]),
            "size": [int(image.shape[1]), int(image.shape[0])],
            "predicted": {
                n: {"value": values[a][int(predicted[a])],
                    "probability": round(float(emb["predicted_probabilities"][0, a]), 4)}
                for a, n in enumerate(self.names)
            },
            "target": {n: values[a][int(target[a])] for a, n in enumerate(self.names)},
            "boxes": {n: [round(float(x), 4) for x in emb["boxes"][0, a]] for a, n in enumerate(self.names)},
            "maps": {n: np.round(emb["maps"][0, a].astype(np.float64), 4).tolist() for a, n in enumerate(self.names)},
        }  # fmt: skip
        if row is not None:
            query_json["attributes"] = self.index.attributes(row)
        return {
            "query": query_json,
            "changes": [
                {"attribute": self.names[a], "from": values[a][int(current[a])], "to": values[a][v]}
                for a, v in pairs
            ],
            "where": {self.names[a]: [values[a][v] for v in vs] for a, vs in conditions.items()},
            "candidates": len(self.index) if allowed is None else int(allowed.sum()),
            "top_k": k,
            "backend": self.backend,
            "results": results,
            "took_ms": round(1000 * (time.perf_counter() - start), 1),
        }

    def health(self) -> dict:
        meta = self.model.metadata
        return {
            "status": "ok",
            "items": len(self.index),
            "backend": self.backend,
            "model": getattr(self.model, "model_url", None) or "in-process",
            "export_dir": self.model.export_dir,
            "variant": meta.get("variant"),
            "dataset": meta.get("dataset"),
            "item_images": self.item_images.available,
            "embed": getattr(self.model, "embed_reason", "embed"),
            "max_batch": self.max_batch,
            "gather_ms": self.gather_ms,
        }
