"""Tests for the paper's losses and in-batch triplet mining (fashionsearchnet_v2/losses.py)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from fashionsearchnet_v2 import configs, losses

# ---------------------------------------------------------------------------------------------------
# classification_loss (Eq. 2)


def test_classification_loss_hand_computed_with_unlabelled():
    # Attribute 0, logits (0, ln 3): softmax = (1/4, 3/4). Attribute 1, logits (0, 0, 0): 1/3 each.
    logits = [
        tf.constant([[0.0, math.log(3.0)]] * 3),
        tf.zeros([3, 3]),
    ]
    labels = tf.constant([[1, 2], [0, 2], [-1, -1]])
    got = losses.classification_loss(logits, labels).numpy()
    # Example 0: -ln(3/4) + ln 3 = ln 4. Example 1: ln 4 + ln 3 = ln 12. Example 2: nothing labelled.
    np.testing.assert_allclose(got, [math.log(4.0), math.log(12.0), 0.0], rtol=1e-6)


def test_unlabelled_attributes_get_no_gradient():
    z0 = tf.Variable([[1.0, 2.0], [3.0, -1.0]])
    z1 = tf.Variable([[0.5, 0.1, 0.2], [0.0, 1.0, 2.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.classification_loss([z0, z1], tf.constant([[-1, 2], [1, -1]])))
    g0, g1 = tape.gradient(loss, [z0, z1])
    np.testing.assert_array_equal(g0.numpy()[0], 0.0)  # example 0, attribute 0 unlabelled
    np.testing.assert_array_equal(g1.numpy()[1], 0.0)  # example 1, attribute 1 unlabelled
    assert np.abs(g0.numpy()[1]).sum() > 0 and np.abs(g1.numpy()[0]).sum() > 0


def test_classification_loss_rejects_attribute_count_mismatch():
    with pytest.raises(ValueError):
        losses.classification_loss([tf.zeros([2, 3])], tf.zeros([2, 2], tf.int32))


# ---------------------------------------------------------------------------------------------------
# soft_triplet (Eqs. 4-6)


def test_soft_triplet_hand_computed():
    # ‖a−p‖ = 3, ‖a−n‖ = 4: d+ = e^3 / (e^3 + e^4) = 1 / (1 + e) = 0.2689414...
    a, p, n = tf.constant([0.0, 0.0]), tf.constant([3.0, 0.0]), tf.constant([0.0, 4.0])
    d_plus = 1.0 / (1.0 + math.e)
    np.testing.assert_allclose(losses.soft_triplet(a, p, n).numpy(), d_plus, rtol=1e-6)
    # squared: (d+)^2 = 0.0723294...
    np.testing.assert_allclose(losses.soft_triplet(a, p, n, squared=True).numpy(), d_plus**2, rtol=1e-6)
    # Swapping positive and negative gives d- = 1 - d+ = e / (1 + e).
    np.testing.assert_allclose(losses.soft_triplet(a, n, p).numpy(), 1.0 - d_plus, rtol=1e-6)


def test_soft_triplet_is_stable_for_large_distances():
    # exp(1000) overflows float32; the sigmoid form gives d+ = sigmoid(1000 - 0) = 1 and 0 swapped.
    a, p, n = tf.zeros([1, 2]), tf.constant([[1000.0, 0.0]]), tf.zeros([1, 2])
    assert losses.soft_triplet(a, p, n).numpy()[0] == pytest.approx(1.0)
    assert losses.soft_triplet(a, n, p).numpy()[0] == pytest.approx(0.0, abs=1e-30)


def test_gradient_finite_when_anchor_equals_positive():
    a = tf.Variable([[1.0, 2.0]])
    p = tf.Variable([[1.0, 2.0]])
    n = tf.Variable([[1.0, 2.0]])  # all three equal: both distances are at the sqrt kink
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(losses.soft_triplet(a, p, n)) + tf.reduce_sum(
            losses.soft_triplet(a, p, n, squared=True)
        )
    for g in tape.gradient(loss, [a, p, n]):
        assert np.isfinite(g.numpy()).all()


def test_global_ranking_loss_is_per_example_soft_triplet():
    rng = np.random.default_rng(0)
    q, p, n = (rng.standard_normal((5, 8)).astype(np.float32) for _ in range(3))
    got = losses.global_ranking_loss(q, p, n).numpy()
    want = 1.0 / (1.0 + np.exp(np.linalg.norm(q - n, axis=1) - np.linalg.norm(q - p, axis=1)))
    assert got.shape == (5,)
    np.testing.assert_allclose(got, want, rtol=1e-5)


# ---------------------------------------------------------------------------------------------------
# mine_triplets


def _check_triplets(labels, pos, neg, valid):
    b, a = labels.shape
    for i in range(b):
        for k in range(a):
            y = labels[i, k]
            others = [j for j in range(b) if j != i]
            can_pos = y >= 0 and any(labels[j, k] == y for j in others)
            can_neg = y >= 0 and any(labels[j, k] >= 0 and labels[j, k] != y for j in range(b))
            assert valid[i, k] == (can_pos and can_neg), (i, k)
            if can_pos:
                assert pos[i, k] != i and labels[pos[i, k], k] == y
            else:
                assert pos[i, k] == i
            if can_neg:
                assert labels[neg[i, k], k] >= 0 and labels[neg[i, k], k] != y
            else:
                assert neg[i, k] == i


def test_mine_triplets_properties_on_random_label_matrices():
    rng = np.random.default_rng(0)
    gen = tf.random.Generator.from_seed(1)
    for trial in range(60):
        b = int(rng.integers(1, 12))
        a = int(rng.integers(1, 5))
        labels = rng.integers(-1, int(rng.integers(1, 4)), size=(b, a))
        source = gen if trial % 2 else tf.constant([trial, 7])
        pos, neg, valid = (t.numpy() for t in losses.mine_triplets(tf.constant(labels), source))
        assert pos.shape == neg.shape == valid.shape == (b, a)
        assert pos.dtype == neg.dtype == np.int32 and valid.dtype == bool
        _check_triplets(labels, pos, neg, valid)


def test_mine_triplets_choice_is_uniform():
    # 3000 independent attribute columns with labels (0, 0, 0, 0, 1, 2): anchor 0 has positives
    # {1, 2, 3} and negatives {4, 5}; each should be drawn about equally often. Anchors 4 and 5 have
    # no positive, so they are invalid.
    labels = tf.tile(tf.constant([[0], [0], [0], [0], [1], [2]]), [1, 3000])
    pos, neg, valid = losses.mine_triplets(labels, tf.random.Generator.from_seed(3))
    np.testing.assert_array_equal(valid.numpy().all(axis=1), [True] * 4 + [False] * 2)
    pos_counts = np.bincount(pos.numpy()[0], minlength=6)
    neg_counts = np.bincount(neg.numpy()[0], minlength=6)
    np.testing.assert_array_equal(pos_counts[[0, 4, 5]], 0)
    np.testing.assert_array_equal(neg_counts[:4], 0)
    # Binomial sd: sqrt(3000 * 1/3 * 2/3) = 26 and sqrt(3000 / 4) = 27; allow 5 sd.
    assert np.all(np.abs(pos_counts[1:4] - 1000) < 130)
    assert np.all(np.abs(neg_counts[4:] - 1500) < 140)


def test_mine_triplets_seeds_and_tf_function():
    labels = tf.constant(np.random.default_rng(2).integers(-1, 3, size=(16, 4)))
    a = losses.mine_triplets(labels, tf.constant([5, 6]))
    b = losses.mine_triplets(labels, tf.constant([5, 6]))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.numpy(), y.numpy())  # stateless: same seed, same triplets

    gen = tf.random.Generator.from_seed(4)

    @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.int64)])
    def mine(lab):
        return losses.mine_triplets(lab, gen)

    first = mine(labels)
    second = mine(labels)
    mine(labels[:5])  # dynamic batch: no retrace
    assert mine.experimental_get_tracing_count() == 1
    assert not np.array_equal(first[0].numpy(), second[0].numpy())  # generator advances
    _check_triplets(labels.numpy(), *(t.numpy() for t in second))


# ---------------------------------------------------------------------------------------------------
# attribute_ranking_loss (Eq. 6)


@pytest.mark.parametrize("squared", [False, True])
def test_attribute_ranking_loss_matches_numpy_loop(squared):
    rng = np.random.default_rng(5)
    b, a, d = 10, 3, 6
    fc10 = rng.standard_normal((b, a, d)).astype(np.float32)
    labels = rng.integers(-1, 3, size=(b, a))
    pos, neg, valid = losses.mine_triplets(tf.constant(labels), tf.constant([1, 2]))
    got = losses.attribute_ranking_loss(tf.constant(fc10), pos, neg, valid, squared=squared).numpy()
    pos, neg, valid = pos.numpy(), neg.numpy(), valid.numpy()
    want = np.zeros(b)
    for i in range(b):
        for k in range(a):
            if valid[i, k]:
                dp = np.linalg.norm(fc10[i, k] - fc10[pos[i, k], k])
                dn = np.linalg.norm(fc10[i, k] - fc10[neg[i, k], k])
                d_plus = math.exp(dp) / (math.exp(dp) + math.exp(dn))
                want[i] += d_plus**2 if squared else d_plus
    assert valid.any() and not valid.all()
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_attribute_ranking_loss_gradient_finite_with_invalid_triplets():
    fc10 = tf.Variable(np.random.default_rng(6).standard_normal((4, 2, 3)).astype(np.float32))
    labels = tf.constant([[0, -1], [0, -1], [1, -1], [-1, -1]])  # attribute 1 never valid
    pos, neg, valid = losses.mine_triplets(labels, tf.constant([0, 0]))
    with tf.GradientTape() as tape:
        loss = losses.attribute_ranking_loss(fc10, pos, neg, valid)
        total = tf.reduce_sum(loss)
    g = tape.gradient(total, fc10).numpy()
    assert np.isfinite(g).all()
    np.testing.assert_array_equal(g[:, 1], 0.0)
    assert loss.numpy()[3] == 0.0  # unlabelled anchor


def test_attribute_ranking_loss_of_some_anchors_is_those_rows_of_the_whole_batch():
    """A worker's L_T: its own anchors against the gathered batch's positives and negatives equals those
    rows of the one-process loss, and the gradient reaches positives and negatives in other rows."""
    rng = np.random.default_rng(7)
    fc10 = tf.Variable(rng.standard_normal((12, 3, 5)).astype(np.float32))
    labels = tf.constant(rng.integers(-1, 3, size=(12, 3)))
    pos, neg, valid = losses.mine_triplets(labels, tf.constant([3, 0]))
    rows = tf.range(6, 12)
    whole = losses.attribute_ranking_loss(fc10, pos, neg, valid).numpy()
    with tf.GradientTape() as tape:
        part = losses.attribute_ranking_loss(
            fc10, *(tf.gather(x, rows) for x in (pos, neg, valid)), anchors=tf.gather(fc10, rows)
        )
        total = tf.reduce_sum(part)
    np.testing.assert_allclose(part.numpy(), whole[6:], rtol=1e-6)
    reached = np.abs(tape.gradient(total, fc10).numpy()).sum(axis=(1, 2)) > 0
    assert reached[:6].any()  # some triplet of rows 6-11 has its positive or negative in rows 0-5
    active = losses.attribute_triplets_active(
        fc10, *(tf.gather(x, rows) for x in (pos, neg, valid)), anchors=tf.gather(fc10, rows)
    )
    assert int(active[1]) == int(tf.reduce_sum(tf.cast(valid[6:], tf.int32)))


# ---------------------------------------------------------------------------------------------------
# joint_loss (Eq. 9)


def test_joint_loss_stage2_weights():
    parts = {
        "L_C": tf.constant([1.0, 2.0]),
        "L_T": tf.constant([3.0, 4.0]),
        "L_TC": tf.constant([5.0, 6.0]),
        "L_G": tf.constant([np.nan, np.nan]),  # weight 0: left out, so NaN cannot leak in
    }
    t = configs.TrainConfig()  # the paper's stage-2 weights are the config's defaults; L_G is stage 3's
    weights = {"L_C": t.lambda_c, "L_T": t.lambda_t, "L_TC": t.lambda_tc, "L_G": 0.0}
    total, logged = losses.joint_loss(parts, weights)
    # 1*1 + 1.5*3 + 1*5 = 10.5;  1*2 + 1.5*4 + 1*6 = 14
    np.testing.assert_allclose(total.numpy(), [10.5, 14.0])
    assert set(logged) == set(parts)


def test_joint_loss_rejects_inconsistent_names():
    one = {"L_C": tf.ones([2])}
    with pytest.raises(ValueError, match="unknown"):
        losses.joint_loss({"L_X": tf.ones([2])}, {"L_X": 1.0})
    with pytest.raises(ValueError, match="no weight"):
        losses.joint_loss({**one, "L_T": tf.ones([2])}, {"L_C": 1.0})
    with pytest.raises(ValueError, match="not computed"):
        losses.joint_loss(one, {"L_C": 1.0, "L_T": 1.5})
    total, _ = losses.joint_loss(one, {"L_C": 1.0, "L_G": 0.0})  # zero weight, absent part: fine
    np.testing.assert_array_equal(total.numpy(), [1.0, 1.0])


def test_active_triplets_by_hand():
    # x = |a-p| - |a-n|: 0 (undecided, active), -5 (d+ = 0.0067, d+(1-d+) = 0.0066 >= 0.0025, active),
    # -7 (0.0009 < 0.0025, saturated), +7 (wrong order but saturated too).
    a = tf.zeros([4, 1])
    p = tf.constant([[1.0], [1.0], [1.0], [8.0]])
    n = tf.constant([[1.0], [6.0], [8.0], [1.0]])
    np.testing.assert_array_equal(losses.active_triplets(a, p, n).numpy(), [1.0, 1.0, 0.0, 0.0])
    fc10 = tf.constant([[[0.0]], [[1.0]], [[8.0]]])  # 3 images, 1 attribute
    pos = tf.constant([[1], [0], [0]])
    neg = tf.constant([[2], [2], [1]])
    valid = tf.constant([[True], [True], [False]])
    active, count = losses.attribute_triplets_active(fc10, pos, neg, valid)
    # image 0: |0-1| - |0-8| = -7 saturated; image 1: |1-0| - |1-8| = -6 saturated (d+(1-d+) = 0.00247).
    assert int(count) == 2 and int(active) == 0
