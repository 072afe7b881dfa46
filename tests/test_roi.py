"""Tests for ROI pooling of conv5 features with crop_and_resize (model/roi.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fashionsearchnet_v2.model.roi import RoiPooling, _pad_edges


def _ramp(b=2, h=5, w=7, c=3):
    """Features whose value encodes (image, row, col, channel): 1000 k + 100 r + 10 x + ch."""
    k, r, x, ch = np.meshgrid(np.arange(b), np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    return (1000 * k + 100 * r + 10 * x + ch).astype(np.float32)


def test_output_shape_static_and_dynamic():
    layer = RoiPooling(crop_size=(3, 4))
    feats = tf.zeros([2, 13, 13, 8])
    boxes = tf.tile(tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), [2, 5, 1])
    out = layer([feats, boxes])
    assert out.shape == (2, 5, 3, 4, 8)
    assert layer.compute_output_shape(((None, 13, 13, 8), (None, 5, 4))) == (None, 5, 3, 4, 8)


def test_box_on_cells_returns_those_cells():
    # 5x7 map: cell r -> r / 4, cell x -> x / 6. Box over rows 1..3, cols 2..5, crop 3x4 = box size,
    # so crop_and_resize samples rows 1, 2, 3 and cols 2, 3, 4, 5 exactly (up to float rounding of
    # (r/4) * 4, hence the tolerance far below the ramp's step of 1).
    feats = _ramp()
    boxes = np.array([[[1 / 4, 2 / 6, 3 / 4, 5 / 6]], [[0.0, 0.0, 0.0, 0.0]]], np.float32)
    out = RoiPooling(crop_size=(3, 4))([feats, boxes]).numpy()
    np.testing.assert_allclose(out[0, 0], feats[0, 1:4, 2:6], atol=1e-3)
    # By hand: image 0, row 1, col 2, channel 1 = 100 + 20 + 1; row 3, col 5, channel 2 = 352.
    assert abs(out[0, 0, 0, 0, 1] - 121) < 1e-3 and abs(out[0, 0, 2, 3, 2] - 352) < 1e-3
    # The second image's degenerate box (0, 0, 0, 0) is its cell (0, 0) everywhere: 1000 + ch.
    np.testing.assert_allclose(out[1, 0], np.broadcast_to([1000, 1001, 1002], (3, 4, 3)), atol=1e-3)


def test_box_ending_on_the_edge_keeps_its_last_row():
    # Raw crop_and_resize on a 13-row map, cells 5..12 cropped to 8 rows: float32(5/12) rounds down,
    # the row step comes out 1.0000001, the last sample lands at 12.0000007 > 12 and reads the
    # extrapolation value 0. The layer's edge padding keeps it the edge row.
    feats = np.random.default_rng(0).standard_normal((1, 13, 13, 2)).astype(np.float32) + 10.0
    box = np.array([[[np.float32(5) / np.float32(12), 0.0, 1.0, 1.0]]], np.float32)
    raw = tf.image.crop_and_resize(feats, box[0], [0], (8, 13)).numpy()
    assert np.all(raw[0, -1] == 0.0)  # the TF behaviour the padding works around
    out = RoiPooling(crop_size=(8, 13))([feats, box]).numpy()
    np.testing.assert_allclose(out[0, 0], feats[0, 5:], rtol=1e-5)


def test_edge_padding_is_mirror_padding_exactly():
    # The border is replicated with concats (faster on CPU than MirrorPad), its gradient by MirrorPad's
    # own gradient kernel: values and gradients must be those of tf.pad(mode="SYMMETRIC") bit for bit,
    # so neither a feature nor a training step changes (decision P6).
    feats = tf.constant(np.random.default_rng(1).standard_normal((2, 5, 7, 3)).astype(np.float32))
    weights = tf.constant(np.random.default_rng(2).standard_normal((2, 7, 9, 3)).astype(np.float32))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(feats)
        ours, _ = _pad_edges(feats, tf.zeros((2, 1, 4)))
        mirror = tf.pad(feats, [[0, 0], [1, 1], [1, 1], [0, 0]], mode="SYMMETRIC")
        loss_ours, loss_mirror = tf.reduce_sum(ours * weights), tf.reduce_sum(mirror * weights)
    np.testing.assert_array_equal(ours.numpy(), mirror.numpy())
    np.testing.assert_array_equal(
        tape.gradient(loss_ours, feats).numpy(), tape.gradient(loss_mirror, feats).numpy()
    )


def test_every_cell_aligned_box_returns_its_cells():
    feats = np.random.default_rng(2).standard_normal((1, 13, 13, 2)).astype(np.float32)
    cell = np.arange(13, dtype=np.float32) / np.float32(12)  # as model/aam.py builds boxes
    for r0 in range(0, 13, 2):
        for r1 in range(r0, 13):
            box = np.array([[[cell[r0], cell[12 - r1], cell[r1], cell[12]]]], np.float32)
            out = RoiPooling(crop_size=(r1 - r0 + 1, r1 + 1))([feats, box]).numpy()
            np.testing.assert_allclose(out[0, 0], feats[0, r0 : r1 + 1, 12 - r1 :], atol=1e-4)


def test_mixed_precision_keeps_boxes_in_float32():
    # A 1001-row map with one hot row 552: in float16, 552/1000 becomes 0.5517578 and the sample would
    # land 0.24 rows off (value ~0.76). Keras autocast is off for this layer, so the box stays float32.
    feats = np.zeros((1, 1001, 1, 1), np.float32)
    feats[0, 552] = 1.0
    box = np.array([[[0.552, 0.0, 0.552, 0.0]]], np.float32)
    out = RoiPooling(crop_size=(1, 1), dtype="mixed_float16")([feats, box])
    assert out.dtype == tf.float16
    assert abs(float(out[0, 0, 0, 0, 0]) - 1.0) < 1e-3


def test_boxes_follow_their_own_image():
    feats = _ramp(b=3)
    boxes = np.tile(np.array([[0.5, 0.5, 0.5, 0.5]], np.float32), (3, 2, 1))  # centre cell (2, 3)
    out = RoiPooling(crop_size=(1, 1))([feats, boxes]).numpy()
    for k in range(3):
        np.testing.assert_allclose(out[k, :, 0, 0], np.broadcast_to(feats[k, 2, 3], (2, 3)), atol=1e-3)


def test_whole_image_box():
    feats = _ramp()
    whole = np.tile(np.array([[[0.0, 0.0, 1.0, 1.0]]], np.float32), (2, 2, 1))
    # Crop size == map size: the map itself. Plain crop_and_resize gives it bit for bit (in_y = i * 1.0);
    # the layer's edge padding remaps the box to (1/6, ..., 5/6), so it is exact up to float rounding
    # of the sample positions (~1e-7 relative).
    same = RoiPooling(crop_size=(5, 7))([feats, whole]).numpy()
    np.testing.assert_allclose(same[:, 0], feats, rtol=1e-6, atol=1e-5)
    # Any other size: the corner-aligned resize (TF1 align_corners=True), not TF2's half-pixel
    # tf.image.resize, which samples at (i + 0.5) * H / h - 0.5 and differs.
    out = RoiPooling(crop_size=(3, 4))([feats, whole]).numpy()
    aligned = tf.compat.v1.image.resize_bilinear(feats, (3, 4), align_corners=True).numpy()
    np.testing.assert_allclose(out[:, 1], aligned, rtol=1e-6, atol=1e-3)
    half_pixel = tf.image.resize(feats, (3, 4), method="bilinear").numpy()
    assert np.abs(out[:, 1] - half_pixel).max() > 1.0


def test_gradient_reaches_features_not_boxes():
    feats = tf.Variable(_ramp(b=1))
    boxes = tf.Variable([[[0.0, 0.0, 0.5, 0.5]]])
    with tf.GradientTape() as tape:
        out = tf.reduce_sum(RoiPooling(crop_size=(2, 2))([feats, boxes]))
    g_feats, g_boxes = tape.gradient(out, [feats, boxes])
    assert g_boxes is None and np.isfinite(g_feats.numpy()).all() and g_feats.numpy().sum() > 0


def test_get_config_round_trip():
    layer = RoiPooling(crop_size=(6, 5), name="roi")
    clone = RoiPooling.from_config(layer.get_config())
    assert clone.crop_size == (6, 5) and clone.name == "roi"
    assert clone.get_config() == layer.get_config()
    with pytest.raises(ValueError):
        RoiPooling(crop_size=(0, 3))


def test_saved_keras_model_reloads_with_same_output(tmp_path):
    feats_in = keras.Input((13, 13, 8))
    boxes_in = keras.Input((4, 4))
    model = keras.Model([feats_in, boxes_in], RoiPooling(crop_size=(3, 3))([feats_in, boxes_in]))
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((2, 13, 13, 8)).astype(np.float32)
    lo = rng.uniform(0, 0.5, (2, 4, 2))
    boxes = np.concatenate([lo, lo + rng.uniform(0, 0.5, (2, 4, 2))], -1).astype(np.float32)
    path = tmp_path / "roi.keras"
    model.save(path)
    reloaded = keras.saving.load_model(path)  # registered: no custom_objects needed
    np.testing.assert_array_equal(reloaded([feats, boxes]).numpy(), model([feats, boxes]).numpy())


def test_tf_function_with_dynamic_batch():
    layer = RoiPooling(crop_size=(2, 3))

    @tf.function(input_signature=[tf.TensorSpec([None, 6, 6, 4]), tf.TensorSpec([None, 3, 4])])
    def pool(feats, boxes):
        out = layer([feats, boxes])
        assert out.shape.as_list() == [None, 3, 2, 3, 4]
        return out

    rng = np.random.default_rng(1)
    for b in (1, 5):
        feats = rng.standard_normal((b, 6, 6, 4)).astype(np.float32)
        boxes = np.tile(np.array([0.0, 0.2, 0.6, 1.0], np.float32), (b, 3, 1))
        got = pool(feats, boxes).numpy()
        np.testing.assert_allclose(got, layer([feats, boxes]).numpy(), rtol=1e-6)
        assert got.shape == (b, 3, 2, 3, 4)
    assert pool.experimental_get_tracing_count() == 1


def test_samples_per_bin_covers_every_cell():
    from fashionsearchnet_v2.model.roi import samples_per_bin

    assert samples_per_bin(13, 4) == 4 and samples_per_bin(6, 4) == 2 and samples_per_bin(4, 4) == 1
    assert samples_per_bin(3, 4) == 1


@pytest.mark.parametrize("grid,crop", [(13, 4), (6, 4), (6, 2), (13, 3)])
def test_max_pooling_reads_every_cell_of_a_whole_image_box(grid, crop):
    # Fast R-CNN style: every conv5 cell of a box can reach the pooled output. Channel k of the map is a
    # spike at cell k (grid * grid channels), so each channel's bins must find its spike: the gradient of
    # the pooled output then reaches every cell, in that cell's own channel.
    from fashionsearchnet_v2.model.roi import samples_per_bin

    layer = RoiPooling((crop, crop), samples_per_bin(grid, crop))
    whole = tf.constant([[[0.0, 0.0, 1.0, 1.0]]])
    spikes = tf.Variable(np.eye(grid * grid, dtype=np.float32).reshape(1, grid, grid, grid * grid))
    with tf.GradientTape() as tape:
        pooled = layer([spikes, whole])
        out = tf.reduce_sum(pooled)
    grad = tape.gradient(out, spikes).numpy()[0].reshape(grid * grid, grid * grid)
    assert np.all(np.diag(grad) > 0), "some cells never reach the pooled output"
    assert np.all(pooled.numpy().reshape(-1, grid * grid).max(0) > 0)  # every spike is seen
    if (grid, crop) == (13, 4):
        # Plain crop_and_resize to 4x4 samples rows/cols 0, 4, 8, 12 only: 16 of the 169 cells.
        with tf.GradientTape() as tape:
            out = tf.reduce_sum(RoiPooling((crop, crop), 1)([spikes, whole]))
        weights = np.diag(tape.gradient(out, spikes).numpy()[0].reshape(169, 169))
        assert (weights > 1e-3).sum() == 16  # (float rounding leaves ~1e-6 on a few neighbours)


def test_max_pooling_of_a_region_is_the_max_of_its_cells():
    # A cell-aligned box over rows 2..5, cols 1..4 of a 13x13 ramp, 2x2 bins, 4 samples per bin: the
    # bins' maxima are the max of the box's cells in each quadrant's sampled range; the last bin's max is
    # the box's bottom-right cell (the ramp grows with row and col).
    feats = _ramp(b=1, h=13, w=13, c=1)
    box = np.array([[[2 / 12, 1 / 12, 5 / 12, 4 / 12]]], np.float32)
    out = RoiPooling((2, 2), 4)([feats, box]).numpy()[0, 0, :, :, 0]
    assert abs(out[1, 1] - feats[0, 5, 4, 0]) < 1e-3
    assert abs(out.max() - feats[0, 2:6, 1:5].max()) < 1e-3
    # Every bin: the box is sampled at 8 x 8 evenly spaced points from its first cell to its last
    # (rows 2 + 3i/7, cols 1 + 3j/7), where bilinear sampling of the linear ramp is exact (100 r + 10 x),
    # and bin (r, c) is the max of samples i in 4r..4r+3, j in 4c..4c+3: its last sample's value.
    rows, cols = 2 + 3 * np.arange(8) / 7, 1 + 3 * np.arange(8) / 7
    samples = 100 * rows[:, None] + 10 * cols[None, :]
    want = samples.reshape(2, 4, 2, 4).max(axis=(1, 3))
    np.testing.assert_allclose(out, want, atol=1e-3)
