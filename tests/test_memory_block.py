"""Memory block means (§3.3), manipulation replacing exactly the chosen blocks, Eq. 7 shapes."""

import numpy as np
import pytest

from fashionsearchnet_v2.model import memory_block

NUM_VALUES = [2, 3]


def test_memory_block_is_the_mean_per_value():
    fc10 = np.array(
        [
            [[1.0, 0.0], [10.0, 0.0]],
            [[3.0, 2.0], [20.0, 4.0]],
            [[5.0, 4.0], [30.0, 8.0]],
        ],
        np.float32,
    )  # [N=3, A=2, D=2]
    labels = np.array([[0, 2], [0, -1], [1, 2]])
    m, counts = memory_block.build_memory_block(fc10, labels, NUM_VALUES)
    # attribute 0: value 0 <- images 0, 1: mean (2, 1); value 1 <- image 2: (5, 4)
    # attribute 1: values 0, 1 unseen -> zeros; value 2 <- images 0, 2: mean (20, 4); image 1 unlabelled.
    np.testing.assert_allclose(m, [[2, 1], [5, 4], [0, 0], [0, 0], [20, 4]])
    assert counts.tolist() == [2, 1, 0, 0, 2]


def test_manipulation_replaces_exactly_the_chosen_attributes():
    rng = np.random.default_rng(0)
    fc10 = rng.normal(size=(4, 2, 3)).astype(np.float32)
    memory = rng.normal(size=(5, 3)).astype(np.float32)
    e = memory_block.value_to_attribute(NUM_VALUES)
    t = np.stack(
        [
            np.zeros(5),  # no manipulation
            memory_block.manipulation_vector([(1, 2)], NUM_VALUES),  # attribute 1 -> value 2 (row 4)
            memory_block.manipulation_vector([(0, 1)], NUM_VALUES),  # attribute 0 -> value 1 (row 1)
            memory_block.manipulation_vector([(0, 0), (1, 0)], NUM_VALUES),  # both (rows 0 and 2)
        ]
    ).astype(np.float32)
    out = memory_block.manipulate(fc10, t, memory, e).numpy()
    np.testing.assert_array_equal(out[0], fc10[0])
    np.testing.assert_array_equal(out[1, 0], fc10[1, 0])
    np.testing.assert_allclose(out[1, 1], memory[4])
    np.testing.assert_allclose(out[2, 0], memory[1])
    np.testing.assert_array_equal(out[2, 1], fc10[2, 1])
    np.testing.assert_allclose(out[3], memory[[0, 2]])
    with pytest.raises(ValueError, match="manipulated twice"):
        memory_block.manipulation_vector([(0, 0), (0, 1)], NUM_VALUES)
    with pytest.raises(ValueError, match="outside 0..2"):
        memory_block.manipulation_vector([(1, 3)], NUM_VALUES)


def test_global_representation_eq7():
    model = memory_block.build_global_model(NUM_VALUES, dim=3, r=4)
    layer = model.get_layer("global_representation")
    rng = np.random.default_rng(1)
    fc10 = rng.normal(size=(6, 2, 3)).astype(np.float32)
    layer.memory_block.assign(rng.normal(size=(5, 3)).astype(np.float32))
    layer.lambdas.assign([2.0, 0.5])
    t = np.zeros((6, 5), np.float32)
    t[:, 3] = 1  # attribute 1 -> value 1
    f = model({"fc10": fc10, "manipulation": t})["global"].numpy()
    assert f.shape == (6, 4)
    # Eq. 7 by hand: [fc10_1 λ_1, g λ_2] w_r with g = M[3].
    manual = np.concatenate([fc10[:, 0] * 2.0, np.repeat(layer.memory_block.numpy()[3:4] * 0.5, 6, 0)], 1)
    np.testing.assert_allclose(f, manual @ layer.w_r.numpy(), rtol=1e-5, atol=1e-6)
    # Rank-LG keeps M fixed, Full trains it.
    assert not layer.memory_block.trainable
    full = memory_block.build_global_model(NUM_VALUES, dim=3, r=4, update_memory=True)
    assert full.get_layer("global_representation").memory_block.trainable
    assert len(full.trainable_weights) == 3 and len(model.trainable_weights) == 2
    ident = memory_block.GlobalRepresentation(NUM_VALUES, 3, identity=True)
    ident.build([(None, 2, 3), (None, 5)])
    np.testing.assert_array_equal(ident([fc10, np.zeros((6, 5), np.float32)]).numpy(), fc10.reshape(6, 6))
