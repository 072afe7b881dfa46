"""Tests of `search.evaluate`: hits, Top-K and NDCG against brute force on a small random case."""

import json
import math

import numpy as np
import pytest

from fashionsearchnet_v2.retrieval import metrics, search

NUM_VALUES = [3, 2, 4, 3]
NAMES = ["color", "collar", "fit", "sleeve"]


def make_case(seed=0, q=20, g=200, r=8):
    rng = np.random.default_rng(seed)
    labels = lambda n: np.where(  # noqa: E731
        rng.random((n, 4)) < 0.2, -1, np.stack([rng.integers(0, v, n) for v in NUM_VALUES], 1)
    )
    query_labels, gallery_labels = labels(q), labels(g)
    manipulations = metrics.enumerate_manipulations(query_labels, gallery_labels, NUM_VALUES)
    base = rng.standard_normal((q, r)).astype(np.float32)
    shift = rng.standard_normal((4, 4, r)).astype(np.float32)
    gallery = rng.standard_normal((g, r)).astype(np.float32)

    def query_vectors_fn(idx):
        # A stand-in for the model: the query's vector moved by the manipulated attribute's new value.
        return (
            base[manipulations.query_index[idx]]
            + shift[manipulations.attribute[idx], manipulations.value[idx]]
        )

    return query_vectors_fn, gallery, gallery_labels, manipulations


def test_evaluate_against_brute_force():
    fn, gallery, gallery_labels, m = make_case()
    ks = (1, 5, 10, 20, 30)
    out = search.evaluate(fn, gallery, gallery_labels, m, NAMES, ks=ks, chunk_size=7)
    queries = fn(np.arange(len(m)))
    d = ((queries[:, None].astype(np.float64) - gallery[None]) ** 2).sum(-1)
    order = np.argsort(d, axis=1, kind="stable")
    relevant = np.array(
        [
            [all(t < 0 or t == x for t, x in zip(m.target[s], row)) for row in gallery_labels]
            for s in range(len(m))
        ]
    )
    ranked = np.take_along_axis(relevant, order, axis=1)
    for k in ks:
        per = {}
        for a, name in enumerate(NAMES):
            rows = ranked[m.attribute == a, :k].any(1)
            per[name] = rows.mean() if len(rows) else None
            assert out["topk"][str(k)][name] == pytest.approx(per[name])
        present = [v for v in per.values() if v is not None]
        assert out["topk"][str(k)]["avg"] == pytest.approx(np.mean(present))
        assert out["topk"][str(k)]["all"] == pytest.approx(ranked[:, :k].any(1).mean())
    disc = 1 / np.log2(np.arange(30) + 2)
    ndcg = [(ranked[s, :30] @ disc) / disc[: min(relevant[s].sum(), 30)].sum() for s in range(len(m))]
    for a, name in enumerate(NAMES):
        assert out["ndcg@30"][name] == pytest.approx(np.mean(np.array(ndcg)[m.attribute == a]))
    assert out["searches"]["total"] == len(m)
    assert sum(out["searches"][n] for n in NAMES) == len(m)
    json.dumps(out, allow_nan=False)  # plain JSON: no numpy types, no NaN


def test_chunk_size_does_not_change_results():
    fn, gallery, gallery_labels, m = make_case(seed=1)
    a = search.evaluate(fn, gallery, gallery_labels, m, NAMES, chunk_size=3)
    b = search.evaluate(fn, gallery, gallery_labels, m, NAMES, chunk_size=10_000)
    assert a == b


def test_attribute_without_searches_is_null_and_left_out_of_avg():
    fn, gallery, gallery_labels, m = make_case(seed=2)
    m = m.subset(m.attribute != 1)
    out = search.evaluate(fn, gallery, gallery_labels, m, NAMES, ks=(1, 30))
    assert out["searches"]["collar"] == 0
    assert out["topk"]["1"]["collar"] is None and out["ndcg@30"]["collar"] is None
    others = [out["topk"]["1"][n] for n in NAMES if n != "collar"]
    assert out["topk"]["1"]["avg"] == pytest.approx(sum(others) / 3)
    assert not math.isnan(out["ndcg@30"]["avg"])


def test_query_vectors_fn_is_called_chunk_by_chunk_and_checked():
    fn, gallery, gallery_labels, m = make_case(seed=3)
    calls = []

    def recording_fn(idx):
        calls.append(idx.copy())
        return fn(idx)

    search.evaluate(recording_fn, gallery, gallery_labels, m, NAMES, chunk_size=16)
    np.testing.assert_array_equal(np.concatenate(calls), np.arange(len(m)))
    assert max(len(c) for c in calls) == 16
    with pytest.raises(ValueError, match="query_vectors_fn returned"):
        search.evaluate(lambda idx: fn(idx)[:, :3], gallery, gallery_labels, m, NAMES)


def test_run_searches_indices_are_the_exact_ranking():
    fn, gallery, gallery_labels, m = make_case(seed=4)
    idx, hits = search.run_searches(fn, gallery, gallery_labels, m, k=12, chunk_size=5)
    ref, _ = metrics.search_topk(fn(np.arange(len(m))), gallery, 12)
    np.testing.assert_array_equal(idx, ref)
    np.testing.assert_array_equal(hits, metrics.target_hits(ref, m.target, gallery_labels))


def test_gain_is_manipulated_minus_unmanipulated_on_the_same_searches():
    fn, gallery, gallery_labels, m = make_case(seed=5)
    rng = np.random.default_rng(0)
    own = rng.standard_normal((int(m.query_index.max()) + 1, gallery.shape[1])).astype(np.float32)

    def unmanipulated(idx):
        return own[m.query_index[idx]]

    out = search.evaluate(
        fn, gallery, gallery_labels, m, NAMES, ks=(1, 20), unmanipulated_vectors_fn=unmanipulated
    )
    alone = search.evaluate(unmanipulated, gallery, gallery_labels, m, NAMES, ks=(1, 20))
    # The unmanipulated block is exactly an evaluation of the same searches with the query's own vectors.
    assert out["unmanipulated"]["topk"] == alone["topk"]
    assert out["unmanipulated"]["ndcg@30"] == alone["ndcg@30"]
    for k in ("1", "20"):
        for name in NAMES + ["avg", "all"]:
            assert out["gain"]["topk"][k][name] == pytest.approx(
                out["topk"][k][name] - alone["topk"][k][name]
            )
    # Brute force for one cell: Top-20 of "color" searches ranked by the unmanipulated vectors.
    q = unmanipulated(np.arange(len(m)))
    order = np.argsort(((q[:, None].astype(np.float64) - gallery[None]) ** 2).sum(-1), axis=1, kind="stable")
    hits = metrics.target_hits(order[:, :20], m.target, gallery_labels).any(1)
    assert out["unmanipulated"]["topk"]["20"]["color"] == pytest.approx(hits[m.attribute == 0].mean())
    json.dumps(out, allow_nan=False)


def test_gain_is_zero_when_the_manipulation_changes_nothing():
    fn, gallery, gallery_labels, m = make_case(seed=6)
    out = search.evaluate(fn, gallery, gallery_labels, m, NAMES, ks=(5,), unmanipulated_vectors_fn=fn)
    assert all(v in (0.0, None) for v in out["gain"]["topk"]["5"].values())
    assert all(v in (0.0, None) for v in out["gain"]["ndcg@30"].values())


def test_the_filter_baseline_ranks_each_search_among_the_images_predicted_to_have_its_target():
    """`gallery_filter_values`: search s ranks only the gallery rows whose value of the changed attribute
    (there, e.g. a prediction) is the target value: brute force per search; ranks past the rows that pass
    are -1 and misses. With the labels themselves as the filter, every result has the changed value."""
    fn, gallery, gallery_labels, m = make_case(seed=7, g=60)
    rng = np.random.default_rng(3)
    predicted = np.stack([rng.integers(0, v, len(gallery)) for v in NUM_VALUES], 1)  # a poor classifier
    idx, hits = search.run_searches(
        fn, gallery, gallery_labels, m, k=20, chunk_size=6, gallery_filter_values=predicted
    )
    queries = fn(np.arange(len(m)))
    short = 0
    for s in range(len(m)):
        rows = np.flatnonzero(predicted[:, m.attribute[s]] == m.value[s])
        d = ((queries[s].astype(np.float64) - gallery[rows]) ** 2).sum(-1)
        want = rows[np.argsort(d, kind="stable")][:20]
        np.testing.assert_array_equal(idx[s, : len(want)], want)
        assert (idx[s, len(want) :] == -1).all() and not hits[s, len(want) :].any()
        np.testing.assert_array_equal(
            hits[s, : len(want)], metrics.target_hits(want[None], m.target[s : s + 1], gallery_labels)[0]
        )
        short += len(want) < 20
    assert short > 0  # some searches have fewer than 20 images that pass (60 images, 2-4 values)

    own = rng.standard_normal((int(m.query_index.max()) + 1, gallery.shape[1])).astype(np.float32)
    out = search.evaluate(fn, gallery, gallery_labels, m, NAMES, ks=(1, 20), ndcg_k=20,
                          unmanipulated_vectors_fn=lambda i: own[m.query_index[i]], gallery_filter_values=gallery_labels)  # fmt: skip
    unfiltered = search.evaluate(
        lambda i: own[m.query_index[i]], gallery, gallery_labels, m, NAMES, ks=(1, 20), ndcg_k=20
    )
    assert set(out["filtered"]) == {"manipulated", "unmanipulated"}
    # Filtering on the labels only removes images that cannot be hits: Top-K can only rise.
    for k in ("1", "20"):
        assert out["filtered"]["unmanipulated"]["topk"][k]["avg"] >= unfiltered["topk"][k]["avg"]
    assert out["filtered"]["unmanipulated"]["topk"]["20"]["avg"] > unfiltered["topk"]["20"]["avg"]
    json.dumps(out, allow_nan=False)


def test_predicted_values_are_each_attributes_argmax_of_the_concatenated_logits():
    from fashionsearchnet_v2.retrieval import evaluation

    logits = np.array([[0.1, 0.9, 0.0, 5.0, 4.0], [2.0, 1.0, 3.0, -1.0, 0.0]])
    np.testing.assert_array_equal(evaluation.predicted_values(logits, [3, 2]), [[1, 0], [2, 1]])
    with pytest.raises(ValueError, match=r"must be \[N, 6\]"):
        evaluation.predicted_values(logits, [3, 3])
