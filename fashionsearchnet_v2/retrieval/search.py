"""Attribute-manipulation search over a gallery and its evaluation (paper §4.4-4.5, Table 1, Figure 5).

The model is kept out: it is represented by `query_vectors_fn`, which maps a chunk of search indices to
the manipulated global representations F_{I,t} (Eq. 7) of those searches. This module ranks the gallery
by Euclidean distance, marks which results have all target attributes and summarises the hits into the
results dict that experiments write as JSON:

    {"ks": [1, 2, ...], "topk": {"1": {"<attr>": acc | None, ..., "avg": acc, "all": acc}, ...},
     "ndcg@30": {"<attr>": ..., "avg": ..., "all": ...}, "searches": {"<attr>": n, ..., "total": n},
     "unmanipulated": {"topk": ..., "ndcg@30": ...},      # the same searches, query NOT manipulated
     "gain": {"topk": ..., "ndcg@30": ...},               # manipulated - unmanipulated
     "filtered": {"manipulated": {"topk": ..., "ndcg@30": ...},     # with `gallery_filter_values`: each
                  "unmanipulated": {...}}}                          # ranked among the predicted targets

An attribute without searches reports None (JSON null) and count 0, and is left out of "avg".

The manipulation gain is the number that says whether a manipulation does anything: the same searches
(same queries, same targets, same relevance) are ranked a second time with the query's own, unmanipulated
representation. A model that ignores an attribute retrieves look-alikes of the query, whose value of that
attribute is often the target by chance; its Top-K can look good while its gain is zero.

The filter baseline asks the next question, whether manipulating beats filtering: the unmanipulated query
ranked only among the gallery images whose *predicted* value of the changed attribute is the target value
(the model's own classifiers, as a search service's `where` filter would use them where no label is
known), beside the manipulated query under the same filter. A filter leaves fewer images; where fewer
than K pass, the missing ranks are misses.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from fashionsearchnet_v2.progress import Progress
from fashionsearchnet_v2.retrieval import figures, metrics
from fashionsearchnet_v2.retrieval.metrics import DEFAULT_KS, Manipulations

QueryVectorsFn = Callable[[np.ndarray], np.ndarray]


def run_searches(
    query_vectors_fn: QueryVectorsFn,
    gallery_vectors,
    gallery_labels,
    manipulations: Manipulations,
    k: int,
    chunk_size: int = 1024,
    gallery_filter_values=None,
    progress: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Rank the gallery for every search, chunk by chunk, and mark the relevant results.

    Args:
        query_vectors_fn: maps search indices [s] (into `manipulations`) to query vectors [s, r].
        gallery_vectors: [G, r] float32.
        gallery_labels: [G, A] int, -1 = unlabelled.
        manipulations: the S searches; their `target` decides relevance.
        k: results kept per search.
        chunk_size: searches embedded and ranked at once; memory is O(chunk_size * G).
        gallery_filter_values: [G, A] int, optional: search s ranks only the gallery rows whose value of
            `manipulations.attribute[s]` here is `manipulations.value[s]` (e.g. predicted values).
        progress: when given, the name of a meter on stderr (searches/s, ETA) updated per chunk.
    Returns:
        indices [S, k] int64 gallery rows, nearest first, -1 past the rows a filter leaves; hits [S, k]
        bool (False at -1).
    """
    gallery_vectors = np.asarray(gallery_vectors, np.float32)
    gallery_labels = np.asarray(gallery_labels)
    if len(gallery_vectors) != len(gallery_labels):
        raise ValueError(f"{len(gallery_vectors)} gallery vectors but {len(gallery_labels)} label rows")
    index = metrics.ExactIndex(gallery_vectors)
    if gallery_filter_values is not None:
        filter_values = np.asarray(gallery_filter_values)
        if filter_values.shape != gallery_labels.shape:
            raise ValueError(f"gallery_filter_values {filter_values.shape} must be {gallery_labels.shape}")
    s = len(manipulations)
    k = min(k, len(gallery_vectors))
    indices = np.empty((s, k), np.int64)
    hits = np.empty((s, k), bool)
    meter = Progress(s, progress or "", "searches", enabled=progress is not None)
    for start in range(0, s, chunk_size):
        chunk = np.arange(start, min(start + chunk_size, s))
        queries = np.asarray(query_vectors_fn(chunk), np.float32)
        if queries.shape != (len(chunk), gallery_vectors.shape[1]):
            raise ValueError(
                f"query_vectors_fn returned {queries.shape} for {len(chunk)} searches, "
                f"expected {(len(chunk), gallery_vectors.shape[1])}"
            )
        if gallery_filter_values is None:
            idx, _ = index.search(queries, k, chunk_size=len(chunk))
        else:
            idx = np.full((len(chunk), k), -1, np.int64)
            pairs = np.stack([manipulations.attribute[chunk], manipulations.value[chunk]], axis=1)
            for a, v in np.unique(pairs, axis=0):  # one ranking per filter
                group = np.flatnonzero((pairs[:, 0] == a) & (pairs[:, 1] == v))
                found, _ = index.search(queries[group], k, allowed=filter_values[:, a] == v)
                idx[group, : found.shape[1]] = found
        indices[chunk] = idx
        hits[chunk] = metrics.target_hits(np.maximum(idx, 0), manipulations.target[chunk], gallery_labels) & (
            idx >= 0
        )
        meter.update(chunk[-1] + 1)
    meter.finish(s)
    return indices, hits


def _num(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def summarize(
    hits,
    num_relevant,
    attribute,
    attribute_names: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    ndcg_k: int = 30,
) -> dict:
    """The results dict (module docstring) from ranked hits [S, K] and relevant counts [S]."""
    names = list(attribute_names)
    if len(set(names)) != len(names) or {"avg", "all", "total"} & set(names):
        raise ValueError(f"attribute names must be distinct and not avg/all/total: {names}")
    ks = sorted({int(k) for k in ks})
    acc = metrics.topk_accuracy(hits, attribute, len(names), ks)
    ndcg = metrics.per_attribute_mean(metrics.ndcg_at_k(hits, num_relevant, ndcg_k), attribute, len(names))

    def table(per_attribute, avg, all_):
        row = {name: _num(v) for name, v in zip(names, per_attribute)}
        row["avg"], row["all"] = _num(avg), _num(all_)
        return row

    searches = {name: int(n) for name, n in zip(names, acc["count"])}
    searches["total"] = int(acc["count"].sum())
    return {
        "ks": ks,
        "topk": {str(k): table(acc["per_attribute"][k], acc["avg"][k], acc["all"][k]) for k in ks},
        f"ndcg@{ndcg_k}": table(ndcg["per_attribute"], ndcg["avg"], ndcg["all"]),
        "searches": searches,
    }


def difference(a: dict, b: dict) -> dict:
    """a - b for two results tables of the same shape ({K: {attr: x}} or {attr: x}); None stays None."""
    out = {}
    for key, x in a.items():
        y = b.get(key)
        if isinstance(x, dict):
            out[key] = difference(x, y)
        else:
            out[key] = None if x is None or y is None else float(x) - float(y)
    return out


def evaluate(
    query_vectors_fn: QueryVectorsFn,
    gallery_vectors,
    gallery_labels,
    manipulations: Manipulations,
    attribute_names: Sequence[str],
    ks: Sequence[int] = DEFAULT_KS,
    chunk_size: int = 1024,
    ndcg_k: int = 30,
    unmanipulated_vectors_fn: QueryVectorsFn | None = None,
    gallery_filter_values=None,
    progress: bool = False,
) -> dict:
    """Top-K accuracy and NDCG@k of attribute-manipulation search (Table 1 / Figure 5 numbers).

    Args:
        query_vectors_fn: search indices [s] -> manipulated global representations [s, r], called once
            per chunk of `chunk_size` consecutive searches.
        gallery_vectors: [G, r] float32 global representations of the gallery.
        gallery_labels: [G, A] int, -1 = unlabelled.
        manipulations: e.g. `metrics.enumerate_manipulations(query_labels, gallery_labels, num_values)`.
        attribute_names: A names, the keys of the per-attribute numbers.
        ks: the K of Top-K; max(max(ks), ndcg_k) results are ranked per search.
        chunk_size: searches per block (memory O(chunk_size * G)).
        ndcg_k: the k of NDCG@k (30 as in ADDE-M).
        unmanipulated_vectors_fn: search indices [s] -> the queries' own representations [s, r]; when
            given, the same searches are ranked with them too ("unmanipulated") and "gain" is added.
        gallery_filter_values: [G, A] int, e.g. the gallery's predicted values: when given, the same
            searches are ranked again among the gallery rows whose value of the changed attribute here is
            the target value, manipulated and (with `unmanipulated_vectors_fn`) unmanipulated ("filtered").
        progress: a meter on stderr for each ranking that takes more than a few seconds.
    Returns:
        the results dict of the module docstring.
    """
    if len(attribute_names) != np.shape(gallery_labels)[1]:
        raise ValueError(
            f"{len(attribute_names)} attribute names for {np.shape(gallery_labels)[1]} attributes"
        )
    k = max(max(ks), ndcg_k)
    if k > len(gallery_vectors):
        raise ValueError(f"cannot rank {k} results in a gallery of {len(gallery_vectors)}")
    num_relevant = metrics.count_matches(manipulations.target, gallery_labels)

    def score(fn, filter_values=None, what="manipulated"):
        meter = f"ranking the gallery ({what})" if progress else None
        _, hits = run_searches(
            fn, gallery_vectors, gallery_labels, manipulations, k, chunk_size, filter_values, meter
        )
        return summarize(hits, num_relevant, manipulations.attribute, attribute_names, ks, ndcg_k)

    scores = ("topk", f"ndcg@{ndcg_k}")
    results = score(query_vectors_fn)
    if unmanipulated_vectors_fn is not None:
        base = score(unmanipulated_vectors_fn, what="not manipulated")
        results["unmanipulated"] = {key: base[key] for key in scores}
        results["gain"] = {key: difference(results[key], base[key]) for key in scores}
    if gallery_filter_values is not None:
        fns = {"manipulated": query_vectors_fn, "unmanipulated": unmanipulated_vectors_fn}
        results["filtered"] = {}
        for name, fn in fns.items():
            if fn is not None:
                filtered = score(fn, gallery_filter_values, f"{name}, filtered")
                results["filtered"][name] = {key: filtered[key] for key in scores}
    return results


FILTER_ROWS = (
    ("unmanipulated", "the query not manipulated"),
    ("filter_baseline", "filter baseline: not manipulated, among images predicted to have the target value"),
    ("manipulated", "the query manipulated (the method)"),
    ("filtered", "manipulated, among the same images"),
)


def filter_rows(runs: Sequence[dict], k: int = 20) -> dict[str, dict[str, list[float | None]]]:
    """The filter baseline's four rows of Top-k, one value per run (seed), for a table or a figure.

    Args:
        runs: results dicts of `evaluate` with "unmanipulated" and "filtered", one per seed.
    Returns:
        {row name of FILTER_ROWS: {attribute | "avg": [Top-k per run]}}, in FILTER_ROWS' order, the
        attributes in the results' order, without "all".
    Raises:
        KeyError: a results dict lacks those blocks (it was written before the filter baseline).
    """
    key = str(k)
    blocks = {
        "unmanipulated": lambda r: r["unmanipulated"]["topk"][key],
        "filter_baseline": lambda r: r["filtered"]["unmanipulated"]["topk"][key],
        "manipulated": lambda r: r["topk"][key],
        "filtered": lambda r: r["filtered"]["manipulated"]["topk"][key],
    }
    columns = [c for c in runs[0]["topk"][key] if c != "all"] if runs else []
    return {name: {c: [blocks[name](r).get(c) for r in runs] for c in columns} for name, _ in FILTER_ROWS}


def plot_filter_baseline(runs: Sequence[dict], path, label: str, dataset: str, k: int = 20) -> str:
    """`figures.plot_bars` of `filter_rows` (one bar group per attribute, the seeds' mean and range) for the
    row named `label` on `dataset`; returns the path."""
    rows = filter_rows(runs, k)
    seeds = f" ({len(runs)} seeds, bars: mean, lines: range)" if len(runs) > 1 else ""
    return figures.plot_bars(
        {text: rows[name] for name, text in FILTER_ROWS},
        path,
        title=f"{label} against the filter baseline, Top-{k}, {dataset}{seeds}",
        ylabel=f"Top-{k} retrieval accuracy",
    )
