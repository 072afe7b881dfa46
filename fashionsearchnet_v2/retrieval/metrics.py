"""Evaluation protocol of attribute manipulation search (paper §4.4-4.5), in plain numpy.

What is searched, what counts as a hit and how the numbers of Table 1 / Figure 5 are averaged:

* `enumerate_manipulations` lists every single-attribute manipulation of every query whose target is
  present in the gallery ("every possible attribute manipulation that is available in the retrieval
  gallery is applied to the query images", §4.5).
* `matches` / `count_matches` / `target_hits` decide whether a gallery image "has all target attributes":
  every attribute labelled in the target must be equal in the gallery image; an attribute the query
  leaves unlabelled (-1) is "don't care"; an unlabelled gallery attribute never equals a labelled target.
* `search_topk` is the exact Euclidean nearest-neighbour search, chunked, with ties broken by gallery index.
* `topk_accuracy` and `ndcg_at_k` turn per-search hit lists into Top-K accuracy (per manipulated
  attribute, their mean "avg" as in Table 1's Avg column, and the mean over all searches "all") and
  NDCG@k with binary relevance.

Labels are int arrays `[N, attributes]`, -1 = unlabelled. Nothing here depends on the model: the model
only supplies vectors, so every function can be tested against brute-force loops.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

UNLABELLED = -1
DEFAULT_KS = tuple(range(1, 51))  # Figure 5 plots K = 1..50


@dataclasses.dataclass(frozen=True)
class Manipulations:
    """The searches of one evaluation: query `query_index[s]` with attribute `attribute[s]` set to `value[s]`.

    Fields (S = number of searches, A = attributes):
        query_index [S] int64: row of the query in the query labels / query images.
        attribute   [S] int64: the manipulated attribute (the column of Table 1 the search counts for).
        value       [S] int64: its new value.
        target      [S, A] int64: the labels a relevant gallery image must have (-1 = don't care).

    Multi-attribute manipulations fit the same structure: `target` may differ from the query in several
    attributes; `attribute` then names the one the search is reported under.
    """

    query_index: np.ndarray
    attribute: np.ndarray
    value: np.ndarray
    target: np.ndarray

    def __post_init__(self):
        s = len(self.query_index)
        target = np.asarray(self.target)
        if target.ndim != 2 or target.shape[0] != s or len(self.attribute) != s or len(self.value) != s:
            raise ValueError(
                f"inconsistent manipulation arrays: query_index {np.shape(self.query_index)}, attribute "
                f"{np.shape(self.attribute)}, value {np.shape(self.value)}, target {target.shape}"
            )

    def __len__(self) -> int:
        return len(self.query_index)

    def subset(self, index) -> Manipulations:
        """The searches selected by an index array or boolean mask, in that order."""
        return Manipulations(
            self.query_index[index], self.attribute[index], self.value[index], self.target[index]
        )


def _check_labels(labels, name: str, num_attributes: int | None = None) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"{name} must be [N, attributes], got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"{name} must be integer labels, got dtype {labels.dtype}")
    if num_attributes is not None and labels.shape[1] != num_attributes:
        raise ValueError(f"{name} has {labels.shape[1]} attributes, expected {num_attributes}")
    if labels.size and labels.min() < UNLABELLED:
        raise ValueError(f"{name} holds labels below -1 (min {labels.min()})")
    return labels.astype(np.int64, copy=False)


def _mixed_radix_weights(bases: Sequence[int]) -> list[int]:
    """Digit weights of the mixed-radix code with these bases (last digit weighs 1)."""
    weights = [1] * len(bases)
    for j in range(len(bases) - 2, -1, -1):
        weights[j] = weights[j + 1] * bases[j + 1]
    return weights


def count_matches(target, gallery_labels) -> np.ndarray:
    """Number of gallery images that have all target attributes, for each target.

    Args:
        target: [S, A] int, -1 = don't care.
        gallery_labels: [G, A] int, -1 = unlabelled (never equal to a labelled target value).
    Returns:
        [S] int64 counts (see `match_ranges`).
    """
    return match_ranges(target, gallery_labels)[2]


def match_ranges(target, gallery_labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The gallery images that have all target attributes, for each target, by hashing label rows.

    Args:
        target: [S, A] int, -1 = don't care.
        gallery_labels: [G, A] int, -1 = unlabelled (never equal to a labelled target value).
    Returns:
        (members [M] int64, start [S] int64, count [S] int64): the gallery rows matching target s are
        `members[start[s] : start[s] + count[s]]` (stage 3 draws its positives from them).

    Targets are grouped by which attributes they label (their don't-care mask); per group the gallery
    rows are projected on those attributes, encoded as int64 mixed-radix keys (label + 1 as digits, so
    -1 is a digit of its own and never equals a labelled value) and sorted once, so each target costs two
    binary searches instead of a pass over the gallery. Cost: O(groups * G log G + S log G).
    """
    target = _check_labels(target, "target")
    gallery_labels = _check_labels(gallery_labels, "gallery_labels", target.shape[1])
    counts = np.zeros(len(target), np.int64)
    starts = np.zeros(len(target), np.int64)
    if len(target) == 0:
        return np.zeros(0, np.int64), starts, counts
    num_attributes = target.shape[1]
    labelled = target >= 0
    gallery_codes = None
    if num_attributes <= 62:
        bits = np.int64(1) << np.arange(num_attributes, dtype=np.int64)
        codes = labelled @ bits
        _, first, group = np.unique(codes, return_index=True, return_inverse=True)
        masks, mask_codes = labelled[first], codes[first]
        gallery_codes = (gallery_labels >= 0) @ bits
    else:
        masks, group = np.unique(labelled, axis=0, return_inverse=True)
    group = group.reshape(-1)
    order = np.argsort(group, kind="stable")
    bounds = np.searchsorted(group[order], np.arange(len(masks) + 1))

    shifted_target, shifted_gallery = target + 1, gallery_labels + 1
    bases = np.maximum(shifted_target.max(axis=0), shifted_gallery.max(axis=0, initial=0)) + 1
    # Keys below 2^53 are exact in float64, which lets BLAS compute them (the int64 matmul of numpy is
    # ~10x slower and was the bulk of the time at 2,000 distinct masks); the mask enters as zero weights.
    gallery_f64 = shifted_gallery.astype(np.float64)
    members, offset = [], 0
    for g, mask in enumerate(masks):
        rows = order[bounds[g] : bounds[g + 1]]
        if not mask.any():  # a target with no constraint matches every gallery image
            members.append(np.arange(len(gallery_labels), dtype=np.int64))
            starts[rows], counts[rows] = offset, len(gallery_labels)
            offset += len(gallery_labels)
            continue
        # Only gallery rows labelled wherever the target is can match (unlabelled never matches); with
        # Shopping100k-like sparsity that is a few percent of the gallery, which is all that gets sorted.
        if gallery_codes is not None:
            candidates = np.flatnonzero((gallery_codes & mask_codes[g]) == mask_codes[g])
        else:
            candidates = np.flatnonzero((shifted_gallery[:, mask] > 0).all(axis=1))
        masked_bases = [int(b) for b in bases[mask]]
        weights = np.zeros(num_attributes, np.int64)
        weights[mask] = _mixed_radix_weights(masked_bases)
        if math.prod(masked_bases) < 2**53:
            target_keys = shifted_target[rows] @ weights.astype(np.float64)
            gallery_keys = gallery_f64[candidates] @ weights.astype(np.float64)
        elif math.prod(masked_bases) < 2**62:
            target_keys, gallery_keys = shifted_target[rows] @ weights, shifted_gallery[candidates] @ weights
        else:  # too many values to pack in 62 bits: rank the rows jointly instead
            both = np.concatenate([shifted_target[rows][:, mask], shifted_gallery[candidates][:, mask]])
            _, keys = np.unique(both, axis=0, return_inverse=True)
            keys = keys.reshape(-1)
            target_keys, gallery_keys = keys[: len(rows)], keys[len(rows) :]
        by_key = np.argsort(gallery_keys, kind="stable")
        gallery_keys = gallery_keys[by_key]
        lo = np.searchsorted(gallery_keys, target_keys, side="left")
        counts[rows] = np.searchsorted(gallery_keys, target_keys, side="right") - lo
        starts[rows] = offset + lo
        members.append(candidates[by_key].astype(np.int64))
        offset += len(candidates)
    return np.concatenate(members), starts, counts


def matches(target, gallery_labels, chunk_size: int = 256) -> np.ndarray:
    """Dense relevance matrix: whether gallery image g has all attributes of target s.

    Args:
        target: [S, A] int, -1 = don't care.
        gallery_labels: [G, A] int, -1 = unlabelled.
        chunk_size: targets compared at once (bounds the [chunk, G, A] temporary).
    Returns:
        [S, G] bool. Meant for small S (figures, tests, multi-attribute checks); use `count_matches` or
        `target_hits` at evaluation scale.
    """
    target = _check_labels(target, "target")
    gallery_labels = _check_labels(gallery_labels, "gallery_labels", target.shape[1])
    out = np.empty((len(target), len(gallery_labels)), bool)
    for start in range(0, len(target), chunk_size):
        t = target[start : start + chunk_size, None, :]
        out[start : start + chunk_size] = ((gallery_labels[None] == t) | (t < 0)).all(axis=-1)
    return out


def target_hits(indices, target, gallery_labels) -> np.ndarray:
    """Whether each retrieved gallery image has all target attributes.

    Args:
        indices: [S, K] int gallery indices (e.g. from `search_topk`).
        target: [S, A] int, -1 = don't care.
        gallery_labels: [G, A] int.
    Returns:
        [S, K] bool.
    """
    target = np.asarray(target)
    retrieved = np.asarray(gallery_labels)[np.asarray(indices)]  # [S, K, A]
    t = target[:, None, :]
    return ((retrieved == t) | (t < 0)).all(axis=-1)


def enumerate_manipulations(query_labels, gallery_labels, num_values: Sequence[int]) -> Manipulations:
    """Every single-attribute manipulation of every query whose target is present in the gallery.

    For query q, attribute a labelled in q and value v != q[a], the target is q with a := v; it is kept
    iff `count_matches(target, gallery) > 0`. Attributes unlabelled in the query stay -1 (don't care)
    and are never manipulated, since "changing" an unknown value is not a defined search.

    Args:
        query_labels: [Q, A] int, -1 = unlabelled.
        gallery_labels: [G, A] int.
        num_values: A ints, the number of values of each attribute.
    Returns:
        Manipulations sorted by (query_index, attribute, value).
    """
    num_values = [int(n) for n in num_values]
    query_labels = _check_labels(query_labels, "query_labels", len(num_values))
    gallery_labels = _check_labels(gallery_labels, "gallery_labels", len(num_values))
    for name, labels in (("query_labels", query_labels), ("gallery_labels", gallery_labels)):
        too_big = labels >= np.asarray(num_values, np.int64)[None]
        if too_big.any():
            col = int(np.argwhere(too_big)[0, 1])
            raise ValueError(f"{name} column {col} holds a value >= num_values[{col}] = {num_values[col]}")

    query_index, attribute, value = [], [], []
    for a, n in enumerate(num_values):
        q = np.flatnonzero(query_labels[:, a] >= 0)
        qq, vv = np.repeat(q, n), np.tile(np.arange(n, dtype=np.int64), len(q))
        keep = vv != query_labels[qq, a]
        query_index.append(qq[keep])
        value.append(vv[keep])
        attribute.append(np.full(int(keep.sum()), a, np.int64))
    query_index = np.concatenate(query_index) if query_index else np.zeros(0, np.int64)
    attribute = np.concatenate(attribute) if attribute else np.zeros(0, np.int64)
    value = np.concatenate(value) if value else np.zeros(0, np.int64)

    order = np.lexsort((value, attribute, query_index))
    query_index, attribute, value = query_index[order], attribute[order], value[order]
    target = query_labels[query_index].copy()
    target[np.arange(len(target)), attribute] = value

    present = count_matches(target, gallery_labels) > 0
    return Manipulations(query_index[present], attribute[present], value[present], target[present])


# `ExactIndex.search(allowed=...)` gathers the allowed columns when fewer than this share are allowed,
# and strikes the others out of a full search otherwise. 100,000 x 128 vectors, 16 queries, top 20, BLAS
# on one thread (as in the service), best of 9, two rounds (2026-12-05, the Zen 1 EPYC): a full search
# 46-47 ms; gathering 1% / 10% / 30% / 50% / 90% of the columns 2.1-2.4 / 12-13 / 25-26 / 39-40 / 69-79
# ms, striking out the rest 46-49 ms at every share.
_GATHER_BELOW = 0.5


class ExactIndex:
    """Exact Euclidean search over a fixed gallery [G, r] float32, prepared once for many query chunks.

    Ranking key per (query, gallery) pair is ||g||^2 - 2 q.g, a float32 matmul against the gallery
    pre-scaled by -2 (exact: a power of two) plus one broadcast add. ||q||^2 is the same for a whole row,
    so it is added only to the k returned values: two passes over the [chunk, G] block instead of four,
    and no tie is created by rounding in that addition. Ranking is by (key, gallery index): among equal
    keys the lower gallery index comes first, also across the k-th position, so results depend neither
    on the chunk size nor on argpartition's internal order.
    """

    def __init__(self, gallery):
        gallery = np.asarray(gallery, np.float32)
        if gallery.ndim != 2:
            raise ValueError(f"gallery must be [G, r], got {gallery.shape}")
        if not np.isfinite(gallery).all():
            raise ValueError("gallery vectors must be finite (a NaN has no place in a ranking)")
        self.size, self.dim = gallery.shape
        self._minus_2_gallery_t = np.ascontiguousarray((-2.0 * gallery).T)  # [r, G]
        self._gallery_sq = np.einsum("ij,ij->i", gallery, gallery)  # [G]

    def search(self, queries, k: int, chunk_size: int = 1024, allowed=None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest gallery rows of each query [S, r]; see `search_topk`.

        `allowed` (bool [G], optional) restricts the results to those rows: the k nearest of them (fewer
        when fewer are allowed), ranked and tie-broken as without it, with their gallery row numbers.
        """
        queries = np.asarray(queries, np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise ValueError(f"queries {queries.shape} must be [S, {self.dim}]")
        if not np.isfinite(queries).all():
            raise ValueError("query vectors must be finite (a NaN has no place in a ranking)")
        if k < 1 or chunk_size < 1:
            raise ValueError(f"k ({k}) and chunk_size ({chunk_size}) must be >= 1")
        gallery_t, gallery_sq, rows, struck = self._minus_2_gallery_t, self._gallery_sq, None, None
        if allowed is not None:
            allowed = np.asarray(allowed)
            if allowed.dtype != bool or allowed.shape != (self.size,):
                raise ValueError(f"allowed must be bool [{self.size}], got {allowed.dtype} {allowed.shape}")
            if allowed.mean() < _GATHER_BELOW:  # score only the allowed columns, in the gallery's order
                rows = np.flatnonzero(allowed)
                gallery_t, gallery_sq = gallery_t[:, rows], gallery_sq[rows]
            else:  # score every column, the others struck out (+inf): copying most columns costs more
                struck = ~allowed
        s, k = len(queries), min(k, len(gallery_sq) if struck is None else int(allowed.sum()))
        indices = np.empty((s, k), np.int64)
        distances = np.empty((s, k), np.float32)
        if k == 0:
            return indices, distances
        for start in range(0, s, chunk_size):
            q = queries[start : start + chunk_size]
            key = q @ gallery_t  # [chunk, G]
            key += gallery_sq[None, :]
            if struck is not None:
                key[:, struck] = np.inf
            idx = _smallest_k_stable(key, k)
            squared = np.take_along_axis(key, idx, axis=1) + np.einsum("ij,ij->i", q, q)[:, None]
            indices[start : start + len(q)] = idx if rows is None else rows[idx]
            # Rounding can make a zero distance slightly negative.
            distances[start : start + len(q)] = np.sqrt(np.maximum(squared, 0.0))
        return indices, distances


def search_topk(queries, gallery, k: int, chunk_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """Exact Euclidean k-nearest gallery vectors of each query, chunked over queries.

    Squared distances ||q||^2 - 2 q.g^T + ||g||^2 come from float32 matmuls, one [chunk, G] block at a
    time, so memory stays O(chunk * G) whatever S is; per row `np.argpartition` then a sort of the k.
    Ties are broken by gallery index (lower first), deterministically (see `ExactIndex`).

    Args:
        queries: [S, r] float32.
        gallery: [G, r] float32 (or an `ExactIndex` to reuse across calls).
        k: neighbours per query (clipped to G).
        chunk_size: queries per block.
    Returns:
        indices [S, k] int64, ordered nearest first; distances [S, k] float32 Euclidean (not squared).
    """
    index = gallery if isinstance(gallery, ExactIndex) else ExactIndex(gallery)
    return index.search(queries, k, chunk_size)


def _smallest_k_stable(d: np.ndarray, k: int) -> np.ndarray:
    """Column indices [n, k] of the k smallest entries of each row of d [n, G], by (value, index)."""
    n, g = d.shape
    if k < g:
        idx = np.argpartition(d, k - 1, axis=1)[:, :k]
        vals = np.take_along_axis(d, idx, axis=1)
        kth = vals.max(axis=1)
        # argpartition picks an arbitrary subset of the values tied with the k-th; only rows where more
        # than k entries are <= the k-th value are ambiguous, and they are rare enough to redo one by one.
        ambiguous = np.flatnonzero((d <= kth[:, None]).sum(axis=1) > k)
        for i in ambiguous:
            less = np.flatnonzero(d[i] < kth[i])
            equal = np.flatnonzero(d[i] == kth[i])[: k - len(less)]
            idx[i] = np.concatenate([less, equal])
    else:
        idx = np.broadcast_to(np.arange(g), (n, g)).copy()
    vals = np.take_along_axis(d, idx, axis=1)
    order = np.lexsort((idx, vals), axis=-1)
    return np.take_along_axis(idx, order, axis=1)


def per_attribute_mean(values, attribute, num_attributes: int) -> dict:
    """Mean of per-search values by manipulated attribute, plus the two overall means.

    Args:
        values: [S] float.
        attribute: [S] int in [0, num_attributes).
    Returns:
        {"per_attribute": [A] float64 (nan where an attribute has no searches),
         "avg": mean of the per-attribute means over attributes that have searches (Table 1's Avg),
         "all": mean over all searches, "count": [A] int64}.
    """
    values = np.asarray(values, np.float64)
    attribute = np.asarray(attribute, np.int64)
    if values.shape != attribute.shape or values.ndim != 1:
        raise ValueError(f"values {values.shape} and attribute {attribute.shape} must both be [S]")
    if attribute.size and (attribute.min() < 0 or attribute.max() >= num_attributes):
        raise ValueError(f"attribute indices must lie in [0, {num_attributes})")
    count = np.bincount(attribute, minlength=num_attributes).astype(np.int64)
    sums = np.bincount(attribute, weights=values, minlength=num_attributes)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_attribute = np.where(count > 0, sums / np.maximum(count, 1), np.nan)
    present = count > 0
    return {
        "per_attribute": per_attribute,
        "avg": float(per_attribute[present].mean()) if present.any() else math.nan,
        "all": float(values.mean()) if values.size else math.nan,
        "count": count,
    }


def topk_accuracy(hits, attribute, num_attributes: int, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """Top-K retrieval accuracy (§4.4): a search is a hit at K if any of its first K results is relevant.

    Args:
        hits: [S, Kmax] bool, relevance of the ranked results; Kmax >= max(ks).
        attribute: [S] int, the manipulated attribute of each search.
        num_attributes: A.
        ks: the K values.
    Returns:
        {"per_attribute": {K: [A] float64, nan without searches}, "avg": {K: float}, "all": {K: float},
         "count": [A] int64}. "avg" is the mean of the per-attribute accuracies (Table 1's Avg column),
        "all" the mean over searches.
    """
    hits = np.asarray(hits, bool)
    if hits.ndim != 2:
        raise ValueError(f"hits must be [S, K], got {hits.shape}")
    ks = [int(k) for k in ks]
    if ks and (min(ks) < 1 or max(ks) > hits.shape[1]):
        raise ValueError(f"ks {ks} must lie in [1, {hits.shape[1]}] (the number of ranked results)")
    # Rank of the first relevant result (Kmax when none): hit at K <=> first < K, for all K in one pass.
    first = np.where(hits.any(axis=1), hits.argmax(axis=1), hits.shape[1])
    out = {"per_attribute": {}, "avg": {}, "all": {}}
    out["count"] = per_attribute_mean(np.zeros(len(first)), attribute, num_attributes)["count"]
    for k in ks:
        m = per_attribute_mean(first < k, attribute, num_attributes)
        out["per_attribute"][k], out["avg"][k], out["all"][k] = m["per_attribute"], m["avg"], m["all"]
    return out


def ndcg_at_k(hits, num_relevant, k: int = 30) -> np.ndarray:
    """NDCG@k per search with binary relevance (as ADDE-M reports NDCG@30).

    DCG = sum_{i<k} hits[i] / log2(i + 2); the ideal DCG puts min(num_relevant, k) relevant images first.
    A search with no relevant gallery image scores 0 (enumerated searches always have one).

    Args:
        hits: [S, K] bool ranked relevance, K >= k.
        num_relevant: [S] int, relevant images in the whole gallery (e.g. from `count_matches`).
    Returns:
        [S] float64.
    """
    hits = np.asarray(hits, bool)
    num_relevant = np.asarray(num_relevant, np.int64)
    if hits.ndim != 2 or hits.shape[1] < k or num_relevant.shape != (hits.shape[0],):
        raise ValueError(f"hits {hits.shape} must be [S, >={k}] and num_relevant {num_relevant.shape} [S]")
    discount = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = hits[:, :k] @ discount
    ideal = np.concatenate([[0.0], np.cumsum(discount)])[np.clip(num_relevant, 0, k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), 0.0)
