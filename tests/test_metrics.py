"""Tests of the evaluation protocol against brute-force loops and hand-computed numbers."""

import itertools
import math

import numpy as np
import pytest

from fashionsearchnet_v2.retrieval import metrics

NUM_VALUES = [3, 2, 4, 3]


def random_labels(rng, n, num_values=NUM_VALUES, p_unlabelled=0.2):
    labels = np.stack([rng.integers(0, v, n) for v in num_values], axis=1)
    labels[rng.random(labels.shape) < p_unlabelled] = -1
    return labels


def brute_match(target, row):
    return all(t < 0 or t == g for t, g in zip(target, row))


def brute_manipulations(query_labels, gallery_labels, num_values):
    out = []
    for q, labels in enumerate(query_labels):
        for a, n in enumerate(num_values):
            if labels[a] < 0:
                continue
            for v in range(n):
                if v == labels[a]:
                    continue
                target = labels.copy()
                target[a] = v
                if any(brute_match(target, g) for g in gallery_labels):
                    out.append((q, a, v, tuple(target)))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_enumerate_manipulations_matches_triple_loop(seed):
    rng = np.random.default_rng(seed)
    query, gallery = random_labels(rng, 20), random_labels(rng, 200)
    m = metrics.enumerate_manipulations(query, gallery, NUM_VALUES)
    got = [(q, a, v, tuple(t)) for q, a, v, t in zip(m.query_index, m.attribute, m.value, m.target)]
    expected = brute_manipulations(query, gallery, NUM_VALUES)
    assert got == expected  # same searches, same (query, attribute, value) order
    assert 0 < len(got) < sum(n - 1 for n in NUM_VALUES) * 20  # some targets are absent, some present


def test_count_matches_and_matches_against_loops():
    rng = np.random.default_rng(3)
    targets, gallery = random_labels(rng, 50, p_unlabelled=0.4), random_labels(rng, 200)
    dense = metrics.matches(targets, gallery, chunk_size=7)  # 7 does not divide 50
    brute = np.array([[brute_match(t, g) for g in gallery] for t in targets])
    np.testing.assert_array_equal(dense, brute)
    np.testing.assert_array_equal(metrics.count_matches(targets, gallery), brute.sum(axis=1))


def test_count_matches_without_radix_room_falls_back_to_unique():
    # 8 columns with 500 values each need 72 bits of mixed radix: the np.unique path must agree.
    rng = np.random.default_rng(4)
    gallery = rng.integers(0, 3, (300, 8)) * 166
    gallery[rng.random(gallery.shape) < 0.2] = -1
    targets = np.concatenate([gallery[:40], rng.integers(0, 3, (40, 8)) * 166])
    targets[:, 0] = 499
    gallery[:20, 0] = 499
    brute = np.array([[brute_match(t, g) for g in gallery] for t in targets]).sum(axis=1)
    np.testing.assert_array_equal(metrics.count_matches(targets, gallery), brute)


def test_dont_care_and_unlabelled_gallery_rules():
    gallery = np.array([[0, 1], [0, -1], [1, 1]])
    # Target (0, -1): attribute 1 unlabelled in the query is "don't care" -> rows 0 and 1 match.
    # Target (0, 1): row 1's -1 never equals a labelled 1 -> only row 0 matches.
    targets = np.array([[0, -1], [0, 1], [-1, 1], [2, 0]])
    np.testing.assert_array_equal(metrics.count_matches(targets, gallery), [2, 1, 2, 0])
    np.testing.assert_array_equal(
        metrics.matches(targets, gallery),
        [[1, 1, 0], [1, 0, 0], [1, 0, 1], [0, 0, 0]],
    )


def test_unlabelled_query_attribute_is_never_manipulated_and_absent_targets_are_dropped():
    num_values = [3, 2]
    query = np.array([[0, -1]])
    gallery = np.array([[1, 0], [1, -1]])  # value 2 of attribute 0 is not in the gallery
    m = metrics.enumerate_manipulations(query, gallery, num_values)
    # Only (a=0, v=1) exists: target (1, -1); (a=0, v=2) has no gallery image; attribute 1 is unlabelled.
    np.testing.assert_array_equal(m.attribute, [0])
    np.testing.assert_array_equal(m.value, [1])
    np.testing.assert_array_equal(m.target, [[1, -1]])
    # With the query labelling attribute 1 = 1, target (1, 1) needs a gallery image with attribute 1 = 1.
    m = metrics.enumerate_manipulations(np.array([[0, 1]]), gallery, num_values)
    assert len(m) == 0


def test_enumerate_rejects_out_of_range_labels():
    with pytest.raises(ValueError, match="num_values"):
        metrics.enumerate_manipulations(np.array([[3, 0]]), np.array([[0, 0]]), [3, 2])


def brute_topk(queries, gallery, k):
    d = ((queries[:, None, :].astype(np.float64) - gallery[None].astype(np.float64)) ** 2).sum(-1)
    order = np.array([np.lexsort((np.arange(len(gallery)), row)) for row in d])[:, :k]
    return order, np.sqrt(np.take_along_axis(d, order, axis=1))


@pytest.mark.parametrize("chunk_size", [1, 7, 20, 1000])
def test_search_topk_matches_full_argsort(chunk_size):
    rng = np.random.default_rng(5)
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    gallery = rng.standard_normal((200, 16)).astype(np.float32)
    idx, dist = metrics.search_topk(queries, gallery, 10, chunk_size=chunk_size)
    ref_idx, ref_dist = brute_topk(queries, gallery, 10)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(dist, ref_dist, rtol=1e-4, atol=1e-4)


def test_search_topk_ties_are_broken_by_gallery_index():
    # Integer vectors: distances are exact in float32. The gallery holds many copies of few points, so
    # ties straddle the k-th position and argpartition alone would pick an arbitrary subset of them.
    rng = np.random.default_rng(6)
    points = rng.integers(-2, 3, (5, 4)).astype(np.float32)
    gallery = points[rng.integers(0, 5, 200)]
    queries = rng.integers(-2, 3, (20, 4)).astype(np.float32)
    ref_idx, _ = brute_topk(queries, gallery, 25)
    for chunk_size in (3, 20):
        idx, _ = metrics.search_topk(queries, gallery, 25, chunk_size=chunk_size)
        np.testing.assert_array_equal(idx, ref_idx)
    # A query equal to every gallery vector: the ranking is simply the gallery order.
    idx, dist = metrics.search_topk(np.zeros((2, 3), np.float32), np.zeros((9, 3), np.float32), 4)
    np.testing.assert_array_equal(idx, [[0, 1, 2, 3]] * 2)
    np.testing.assert_array_equal(dist, 0)


def test_search_topk_k_larger_than_gallery_returns_whole_ranking():
    rng = np.random.default_rng(7)
    queries, gallery = rng.standard_normal((3, 4)), rng.standard_normal((5, 4))
    idx, _ = metrics.search_topk(queries, gallery, 50)
    np.testing.assert_array_equal(idx, brute_topk(queries, gallery, 5)[0])


def test_an_allowed_mask_ranks_only_those_rows_as_the_full_ranking_orders_them():
    """`ExactIndex.search(allowed=...)` is the full ranking with the other rows struck out: the same
    order (ties to the lower gallery row, here with integer vectors whose distances are exact), gallery row
    numbers, fewer than k when fewer rows are allowed, none when none are."""
    rng = np.random.default_rng(9)
    points = rng.integers(-2, 3, (6, 4)).astype(np.float32)
    gallery = points[rng.integers(0, 6, 300)]
    queries = rng.integers(-2, 3, (15, 4)).astype(np.float32)
    index = metrics.ExactIndex(gallery)
    full_idx, full_dist = index.search(queries, 300)
    # Few rows allowed: only those are scored; most: the others are struck out of a full search.
    for allowed in (
        rng.random(300) < 0.3,
        rng.random(300) < 0.02,
        np.arange(300) % 2 == 0,
        rng.random(300) < 0.9,
    ):
        k = 20
        idx, dist = index.search(queries, k, chunk_size=4, allowed=allowed)
        want = [row[allowed[row]][:k] for row in full_idx]
        assert idx.shape == (15, min(k, allowed.sum()))
        np.testing.assert_array_equal(idx, want)
        np.testing.assert_array_equal(dist, [d[allowed[r]][:k] for r, d in zip(full_idx, full_dist)])
    idx, dist = index.search(queries, 5, allowed=np.zeros(300, bool))
    assert idx.shape == dist.shape == (15, 0)
    with pytest.raises(ValueError, match=r"allowed must be bool \[300\]"):
        index.search(queries, 5, allowed=np.ones(299, bool))
    with pytest.raises(ValueError, match=r"allowed must be bool"):
        index.search(queries, 5, allowed=np.ones(300, int))


def test_target_hits_against_loop():
    rng = np.random.default_rng(8)
    gallery = random_labels(rng, 200)
    targets = random_labels(rng, 20)
    idx = rng.integers(0, 200, (20, 6))
    hits = metrics.target_hits(idx, targets, gallery)
    brute = [[brute_match(targets[s], gallery[i]) for i in idx[s]] for s in range(20)]
    np.testing.assert_array_equal(hits, brute)


def test_topk_accuracy_against_loops():
    rng = np.random.default_rng(9)
    hits = rng.random((300, 50)) < 0.03
    attribute = rng.integers(0, 4, 300)
    attribute[attribute == 2] = 1  # attribute 2 has no searches: count 0, nan, left out of avg
    out = metrics.topk_accuracy(hits, attribute, 5)
    np.testing.assert_array_equal(out["count"], [np.sum(attribute == a) for a in range(5)])
    for k in metrics.DEFAULT_KS:
        per = []
        for a in range(5):
            rows = [any(hits[s, :k]) for s in range(300) if attribute[s] == a]
            per.append(sum(rows) / len(rows) if rows else math.nan)
        np.testing.assert_allclose(out["per_attribute"][k], per)
        present = [p for p in per if not math.isnan(p)]
        assert out["avg"][k] == pytest.approx(sum(present) / len(present))
        assert out["all"][k] == pytest.approx(np.mean([any(h[:k]) for h in hits]))


def test_topk_accuracy_hand_computed():
    hits = np.array(
        [
            [0, 1, 0],  # attribute 0: first hit at rank 2
            [0, 0, 0],  # attribute 0: never
            [1, 0, 0],  # attribute 1: first hit at rank 1
        ],
        bool,
    )
    out = metrics.topk_accuracy(hits, np.array([0, 0, 1]), 2, ks=(1, 2))
    # K=1: attribute 0 -> 0/2 = 0, attribute 1 -> 1/1 = 1; avg = (0 + 1)/2 = 0.5; all = 1/3.
    np.testing.assert_allclose(out["per_attribute"][1], [0.0, 1.0])
    assert out["avg"][1] == pytest.approx(0.5)
    assert out["all"][1] == pytest.approx(1 / 3)
    # K=2: attribute 0 -> 1/2; attribute 1 -> 1; avg = 0.75; all = 2/3.
    assert out["avg"][2] == pytest.approx(0.75)
    assert out["all"][2] == pytest.approx(2 / 3)


def test_avg_is_mean_of_attribute_accuracies_as_in_table1():
    # Shopping100k, Full, Top-20 (Table 1a): the Avg column is the plain mean of the 12 attribute columns.
    full = [0.336, 0.569, 0.613, 0.395, 0.364, 0.510, 0.446, 0.491, 0.521, 0.549, 0.590, 0.410]
    values = np.concatenate([np.full(1000, acc) for acc in full])
    attribute = np.repeat(np.arange(12), 1000)
    out = metrics.per_attribute_mean(values, attribute, 12)
    assert round(out["avg"], 3) == 0.483


def test_ndcg_hand_computed():
    # hits [1, 0, 1], 2 relevant in the gallery, k = 3:
    #   DCG  = 1/log2(2) + 1/log2(4) = 1 + 0.5 = 1.5
    #   IDCG = 1/log2(2) + 1/log2(3) = 1 + 0.63093 = 1.63093  -> NDCG = 0.91972
    # hits [0, 1, 0], 5 relevant, k = 3: DCG = 1/log2(3) = 0.63093; IDCG = 1 + 0.63093 + 0.5 = 2.13093
    #   -> NDCG = 0.29608. No relevant image at all scores 0.
    hits = np.array([[1, 0, 1, 1], [0, 1, 0, 0], [0, 0, 0, 0]], bool)
    got = metrics.ndcg_at_k(hits, np.array([2, 5, 0]), k=3)
    np.testing.assert_allclose(got, [0.91972, 0.29608, 0.0], atol=1e-5)


def test_ndcg_against_loop():
    rng = np.random.default_rng(10)
    hits = rng.random((100, 40)) < 0.1
    num_relevant = hits[:, :30].sum(1) + rng.integers(0, 40, 100)
    got = metrics.ndcg_at_k(hits, num_relevant, k=30)
    for s in range(100):
        dcg = sum(1 / math.log2(i + 2) for i in range(30) if hits[s, i])
        idcg = sum(1 / math.log2(i + 2) for i in range(min(num_relevant[s], 30)))
        assert got[s] == pytest.approx(dcg / idcg if idcg else 0.0)
    assert np.all(got <= 1 + 1e-12)


def test_manipulations_subset_and_shape_check():
    m = metrics.Manipulations(np.arange(3), np.zeros(3, int), np.ones(3, int), np.zeros((3, 2), int))
    sub = m.subset(np.array([2, 0]))
    np.testing.assert_array_equal(sub.query_index, [2, 0])
    with pytest.raises(ValueError):
        metrics.Manipulations(np.arange(3), np.zeros(2, int), np.ones(3, int), np.zeros((3, 2), int))


def test_multi_attribute_targets_use_the_same_matching():
    rng = np.random.default_rng(11)
    gallery = random_labels(rng, 200)
    query = random_labels(rng, 1, p_unlabelled=0.0)[0]
    # Change two attributes at once; count_matches and matches agree with the loop.
    targets = []
    for v0, v2 in itertools.product(range(3), range(4)):
        t = query.copy()
        t[0], t[2] = v0, v2
        targets.append(t)
    targets = np.array(targets)
    brute = np.array([[brute_match(t, g) for g in gallery] for t in targets])
    np.testing.assert_array_equal(metrics.matches(targets, gallery), brute)
    np.testing.assert_array_equal(metrics.count_matches(targets, gallery), brute.sum(1))
