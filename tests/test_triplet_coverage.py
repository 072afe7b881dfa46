"""benchmarks/triplet_coverage.py: the share of labelled anchors that get an in-batch L_T triplet
(decision 70), counted through `losses.mine_triplets` itself."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import triplet_coverage  # noqa: E402

from fashionsearchnet_v2.data import pipeline  # noqa: E402


def test_coverage_counts_anchors_with_both_a_positive_and_a_negative():
    n = 12
    labels = np.stack(
        [
            np.zeros(n, int),  # one value only: no negative anywhere
            np.arange(n) % 2,  # two values, six each: every anchor has both in a batch of all
            np.r_[0, np.ones(n - 1, int)],  # value 0 once: its anchor lacks a positive; the rest lack nothing
            np.r_[np.full(n - 2, -1), 0, 1],  # ten unlabelled: of the two labelled, neither has a positive
        ],
        axis=1,
    )
    share = triplet_coverage.coverage(labels, batch_size=n, epochs=2, seed=3)
    np.testing.assert_allclose(share, [0.0, 1.0, (n - 1) / n, 0.0])


def test_a_smaller_batch_loses_the_anchors_of_a_rare_value():
    rng = np.random.default_rng(0)
    labels = (rng.random((400, 1)) < 0.05).astype(int)  # a value of about 5%
    small, large = (triplet_coverage.coverage(labels, b, epochs=3)[0] for b in (8, 200))
    assert large > 0.99 and small < 0.9, (small, large)


def test_coverage_refuses_a_batch_larger_than_the_split():
    with pytest.raises(ValueError, match="batch_size"):
        triplet_coverage.coverage(np.zeros((4, 1), int), batch_size=5)


def test_training_labels_are_the_splits_labels(info):
    names, labels = triplet_coverage.training_labels(info.data_dir)
    decoded = pipeline.decode_split(info, "train", 1 << 30)
    assert names == info.attribute_names
    np.testing.assert_array_equal(labels, decoded.labels.numpy())
