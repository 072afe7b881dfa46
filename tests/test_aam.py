"""Tests for attribute activation maps and the ROI boxes estimated from them (model/aam.py)."""

import numpy as np
import pytest
import tensorflow as tf
from scipy.ndimage import gaussian_filter
from skimage import measure

from fashionsearchnet_v2.model import aam


def _numpy_path(maps):
    return aam.boxes_from_maps(np.asarray(maps, np.float32))


def _tf_path(maps):
    return aam.boxes_from_maps_tf(tf.constant(maps, tf.float32)).numpy()


PATHS = pytest.mark.parametrize("boxes", [_numpy_path, _tf_path], ids=["skimage", "tf"])


def _one(grid):
    """A single [h, w] map as a [1, 1, h, w] float32 batch."""
    return np.asarray(grid, np.float32)[None, None]


def _reference_box(m, threshold=0.2):
    """Deliberately naive per-map reference: label one map, largest region, first label on ties."""
    m = m.astype(np.float32)
    h, w = m.shape
    fg = m > np.float32(threshold) * m.max()
    if not fg.any():
        fg[:] = True
    labels = measure.label(fg, connectivity=2)
    sizes = np.bincount(labels.ravel())[1:]
    best = int(np.argmax(sizes)) + 1  # np.argmax returns the first maximum
    rr, cc = np.nonzero(labels == best)
    dh, dw = max(h - 1, 1), max(w - 1, 1)
    return np.array([rr.min() / dh, cc.min() / dw, rr.max() / dh, cc.max() / dw], np.float32)


def _smooth_maps(rng, n, size, sigma=1.2):
    noise = rng.standard_normal((n, size, size)).astype(np.float32)
    return gaussian_filter(noise, (0, sigma, sigma)).astype(np.float32)


# ---------------------------------------------------------------------------------------------------
# activation_maps


def test_activation_maps_matches_numpy_loop():
    rng = np.random.default_rng(0)
    b, h, w, k = 3, 4, 5, 6
    classes = [2, 4, 3]
    conv7 = rng.standard_normal((b, h, w, k)).astype(np.float32)
    kernels = [rng.standard_normal((k, c)).astype(np.float32) for c in classes]
    logits = [rng.standard_normal((b, c)).astype(np.float32) for c in classes]
    got = aam.activation_maps(tf.constant(conv7), [tf.constant(x) for x in kernels], logits).numpy()
    assert got.shape == (b, len(classes), h, w)
    want = np.zeros_like(got)
    for i in range(b):
        for a in range(len(classes)):
            c = int(np.argmax(logits[a][i]))
            for kk in range(k):
                want[i, a] += kernels[a][kk, c] * conv7[i, :, :, kk]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_activation_maps_rejects_mismatched_lists():
    with pytest.raises(ValueError):
        aam.activation_maps(tf.zeros([1, 2, 2, 3]), [tf.zeros([3, 2])], [])


# ---------------------------------------------------------------------------------------------------
# Hand-made maps with known components. 5x5 maps: cell r maps to r / 4.


@PATHS
def test_single_rectangle(boxes):
    m = np.zeros((5, 5))
    m[1:3, 1:4] = 1.0  # rows 1..2, cols 1..3
    np.testing.assert_array_equal(boxes(_one(m))[0, 0], [0.25, 0.25, 0.5, 0.75])


@PATHS
def test_larger_of_two_blobs_wins_even_if_later_in_raster_order(boxes):
    m = np.zeros((5, 5))
    m[0, 0:2] = 1.0  # 2 cells, first in raster order
    m[3:5, 2:4] = 0.5  # 4 cells, dimmer, but larger -> chosen (0.5 > 0.2 * 1.0)
    np.testing.assert_array_equal(boxes(_one(m))[0, 0], [0.75, 0.5, 1.0, 0.75])


@PATHS
def test_tie_goes_to_first_region_in_raster_order(boxes):
    m = np.zeros((5, 5))
    m[3, 0:2] = 1.0  # 2 cells, brightest, starts at raster index 15
    m[0, 3:5] = 0.5  # 2 cells, starts at raster index 3 -> wins the tie
    np.testing.assert_array_equal(boxes(_one(m))[0, 0], [0.0, 0.75, 0.0, 1.0])


@PATHS
def test_diagonal_neighbours_are_connected(boxes):
    m = np.zeros((5, 5))
    m[0, 4] = 1.0  # lone cell, raster-first
    m[2, 1] = m[3, 2] = 1.0  # diagonal pair: one 2-cell region under 8-connectivity
    # Under 4-connectivity all three would be 1-cell regions and (0, 4) would win the tie.
    np.testing.assert_array_equal(boxes(_one(m))[0, 0], [0.5, 0.25, 0.75, 0.5])


@PATHS
def test_bbox_of_non_convex_region_encloses_the_hole(boxes):
    m = np.zeros((5, 5))
    m[1:4, 1] = m[1:4, 3] = m[3, 1:4] = 1.0  # U shape, rows 1..3, cols 1..3
    np.testing.assert_array_equal(boxes(_one(m))[0, 0], [0.25, 0.25, 0.75, 0.75])


@PATHS
def test_one_pixel_blob(boxes):
    m = np.full((5, 5), -1.0)
    m[2, 3] = 0.7
    np.testing.assert_array_equal(boxes(_one(m))[0, 0], [0.5, 0.75, 0.5, 0.75])


@PATHS
def test_threshold_is_strict(boxes):
    m = np.zeros((5, 5), np.float32)
    m[2, 2] = 1.0
    m[2, 3] = np.float32(0.2)  # == 0.2 * max exactly in float32 -> background
    m[2, 1] = np.float32(0.21)  # above -> foreground
    np.testing.assert_array_equal(boxes(_one(m))[0, 0], [0.5, 0.25, 0.5, 0.5])


@PATHS
@pytest.mark.parametrize("fill", [-3.0, 0.0, np.nan])
def test_map_without_foreground_falls_back_to_whole_map(boxes, fill):
    m = np.full((5, 5), fill)
    if fill < 0:
        m[1, 1] = -0.5  # max -0.5 <= 0: nothing exceeds 0.2 * max = -0.1
    np.testing.assert_array_equal(boxes(_one(m))[0, 0], [0.0, 0.0, 1.0, 1.0])


@PATHS
def test_single_row_and_single_column_maps(boxes):
    row = np.array([[0.0, 1.0, 1.0, 0.0, 0.0]])  # h == 1: denominator guarded to 1
    np.testing.assert_array_equal(boxes(_one(row))[0, 0], [0.0, 0.25, 0.0, 0.5])
    col = row.T  # w == 1
    np.testing.assert_array_equal(boxes(_one(col))[0, 0], [0.25, 0.0, 0.5, 0.0])
    cell = np.array([[2.0]])
    np.testing.assert_array_equal(boxes(_one(cell))[0, 0], [0.0, 0.0, 0.0, 0.0])


@PATHS
def test_batch_and_attribute_axes_are_kept_apart(boxes):
    m = np.zeros((2, 3, 5, 5), np.float32)
    m[0, 0, 0, 0] = 1  # (0, 0)
    m[0, 1, 4, 4] = 1  # (4, 4)
    m[1, 2, 2, 1:3] = 1  # row 2, cols 1..2
    got = boxes(m)
    assert got.shape == (2, 3, 4) and got.dtype == np.float32
    np.testing.assert_array_equal(got[0, 0], [0, 0, 0, 0])
    np.testing.assert_array_equal(got[0, 1], [1, 1, 1, 1])
    np.testing.assert_array_equal(got[1, 2], [0.5, 0.25, 0.5, 0.5])
    for i, a in [(0, 2), (1, 0), (1, 1)]:  # empty maps
        np.testing.assert_array_equal(got[i, a], [0, 0, 1, 1])


# ---------------------------------------------------------------------------------------------------
# The batched skimage path against the naive per-map reference (checks the one-strip labelling trick).


def test_skimage_labels_regions_in_raster_order():
    # The tie rule of the numpy path relies on it; pin it against scikit-image upgrades.
    rng = np.random.default_rng(1)
    for _ in range(50):
        labels = measure.label(rng.random((13, 13)) > 0.6, connectivity=2).ravel()
        firsts = labels[np.sort(np.unique(labels, return_index=True)[1])]
        firsts = firsts[firsts > 0]
        np.testing.assert_array_equal(firsts, np.arange(1, len(firsts) + 1))


@pytest.mark.parametrize("size", [6, 13])
def test_batched_skimage_path_matches_naive_reference(size):
    rng = np.random.default_rng(size)
    smooth = _smooth_maps(rng, 120, size)
    # Coarse integer maps give many equal-sized regions, i.e. many ties.
    blocky = rng.integers(-2, 3, size=(80, size, size)).astype(np.float32)
    maps = np.concatenate([smooth, blocky]).reshape(40, 5, size, size)
    got = aam.boxes_from_maps(maps)
    want = np.stack([_reference_box(m) for m in maps.reshape(-1, size, size)]).reshape(40, 5, 4)
    np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------------------------------------
# TF path == skimage path


@pytest.mark.parametrize("size", [6, 13])
def test_tf_path_equals_skimage_path_on_random_maps(size):
    rng = np.random.default_rng(100 + size)
    smooth = _smooth_maps(rng, 120, size)
    blocky = rng.integers(-2, 3, size=(80, size, size)).astype(np.float32)
    maps = np.concatenate([smooth, blocky]).reshape(50, 4, size, size)  # 200 maps
    want = aam.boxes_from_maps(maps)
    np.testing.assert_array_equal(aam.boxes_from_maps_tf(maps).numpy(), want)

    # In a graph with a dynamic batch and attribute count, as the training step uses it.
    fn = tf.function(
        aam.boxes_from_maps_tf, input_signature=[tf.TensorSpec([None, None, size, size], tf.float32)]
    )
    np.testing.assert_array_equal(fn(maps).numpy(), want)
    np.testing.assert_array_equal(fn(maps[:7, :2]).numpy(), want[:7, :2])


def test_tf_path_worst_case_snake_converges():
    # A serpentine region needs many propagation rounds; its label must still reach every cell.
    m = np.zeros((7, 7), np.float32)
    m[0::2, 1:] = 1.0  # rows 0, 2, 4, 6 over cols 1..6, joined alternately at the right and left ends
    m[1, 6] = m[3, 1] = m[5, 6] = 1.0
    want = aam.boxes_from_maps(m[None, None])
    np.testing.assert_array_equal(want[0, 0], [0.0, np.float32(1) / np.float32(6), 1.0, 1.0])
    np.testing.assert_array_equal(aam.boxes_from_maps_tf(m[None, None]).numpy(), want)


def test_numpy_op_wrapper_sets_static_shape_and_matches():
    rng = np.random.default_rng(3)
    maps = _smooth_maps(rng, 12, 13).reshape(3, 4, 13, 13)

    @tf.function(input_signature=[tf.TensorSpec([3, 4, 13, 13], tf.float32)])
    def fn(x):
        out = aam.boxes_from_maps_numpy_op(x)
        assert out.shape.as_list() == [3, 4, 4]
        return out

    np.testing.assert_array_equal(fn(maps).numpy(), aam.boxes_from_maps(maps))


def test_boxes_carry_no_gradient():
    maps = tf.Variable(_smooth_maps(np.random.default_rng(4), 2, 6).reshape(1, 2, 6, 6))
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(aam.boxes_from_maps_tf(maps))
    assert tape.gradient(out, maps) is None


def test_tf_path_exports_to_a_saved_model(tmp_path):
    # Only stock TF ops (no numpy_function), so the exported graph runs wherever TF does.
    module = tf.Module()
    module.boxes = tf.function(
        aam.boxes_from_maps_tf, input_signature=[tf.TensorSpec([None, 3, 13, 13], tf.float32)]
    )
    tf.saved_model.save(module, str(tmp_path / "boxes"))
    ops = {op.type for op in module.boxes.get_concrete_function().graph.get_operations()}
    assert not any("PyFunc" in op for op in ops)
    maps = _smooth_maps(np.random.default_rng(7), 6, 13).reshape(2, 3, 13, 13)
    loaded = tf.saved_model.load(str(tmp_path / "boxes"))
    np.testing.assert_array_equal(loaded.boxes(tf.constant(maps)).numpy(), aam.boxes_from_maps(maps))
