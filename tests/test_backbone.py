"""Backbone shapes, grouped convolutions and the bvlc_alexnet.npy loader on a small fake file."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fashionsearchnet_v2.configs import MIN_IMAGE_SIZE, ModelConfig
from fashionsearchnet_v2.model import backbone, network

NUM_VALUES = [3, 2, 4]
NAMES = ["color", "sleeve length", "collar"]


def test_grid_size_matches_the_model():
    assert backbone.feature_grid_size(227) == 13  # AlexNet's conv5 grid
    assert backbone.feature_grid_size(128) == 6
    cfg = ModelConfig(
        image_size=96, width=0.125, conv5_filters=32, conv67_filters=48, fc_sizes=(8,), fc10_size=4
    )
    model = network.build_network(NUM_VALUES, NAMES, cfg, "stage1")
    out = model(np.zeros((2, 96, 96, 3), np.float32))
    g = backbone.feature_grid_size(96)
    assert out["logits"].shape == (2, 9) and out["maps"].shape == (2, 3, g, g)
    # conv5 keeps the paper's grouping: two halves of 16 maps (width 0.125 of 384 is 48 -> config 32).
    assert model.get_layer("conv5_g0").filters == 16 and model.get_layer("conv5_g1").filters == 16
    assert model.get_layer("conv7").filters == 48


def test_the_smallest_input_leaves_conv5_one_cell_and_the_whole_network_runs_on_it():
    """configs.MIN_IMAGE_SIZE, which `--image_size` is checked against, is the backbone's real bound."""
    assert (
        backbone.feature_grid_size(MIN_IMAGE_SIZE) == 1 and backbone.feature_grid_size(MIN_IMAGE_SIZE - 1) < 1
    )
    cfg = ModelConfig(image_size=MIN_IMAGE_SIZE, width=0.125, conv5_filters=32, conv67_filters=48,
                      fc_sizes=(8,), fc10_size=4, roi_size=2)  # fmt: skip
    out = network.build_network(NUM_VALUES, NAMES, cfg, "full")(np.zeros((2, 35, 35, 3), np.float32))
    assert out["maps"].shape == (2, 3, 1, 1) and np.isfinite(out["fc10"].numpy()).all()


def _fake_alexnet(path, conv2_shape=(5, 5, 48, 256)):
    rng = np.random.default_rng(0)
    shapes = {
        "conv1": (11, 11, 3, 96),
        "conv2": conv2_shape,
        "conv3": (3, 3, 256, 384),
        "conv4": (3, 3, 192, 384),
        "conv5": (3, 3, 192, 256),
        "fc6": (9216, 8),  # small stand-ins: fc layers are never loaded
        "fc7": (8, 8),
        "fc8": (8, 10),
    }
    data = {
        k: [rng.normal(size=s).astype(np.float32), rng.normal(size=s[-1]).astype(np.float32)]
        for k, s in shapes.items()
    }
    np.save(path, data, allow_pickle=True)
    return data


@pytest.fixture(scope="module")
def full_width_model():
    cfg = ModelConfig(image_size=67, fc_sizes=(8,), fc10_size=4)
    return network.build_network(NUM_VALUES, NAMES, cfg, "stage1")


def test_loader_sets_conv1_to_conv4_and_splits_groups(tmp_path, full_width_model):
    path = str(tmp_path / "bvlc_alexnet.npy")
    data = _fake_alexnet(path)
    before = full_width_model.get_layer("conv5_g0").get_weights()[0].copy()
    assert backbone.load_alexnet_weights(full_width_model, path) == ["conv1", "conv2", "conv3", "conv4"]
    # conv1 sees input / PIXEL_STD (from-scratch scale), so its kernel is scaled up: the same function.
    np.testing.assert_allclose(
        full_width_model.get_layer("conv1").get_weights()[0], data["conv1"][0] * backbone.PIXEL_STD, rtol=1e-6
    )
    w2, b2 = data["conv2"]
    np.testing.assert_array_equal(full_width_model.get_layer("conv2_g0").get_weights()[0], w2[..., :128])
    np.testing.assert_array_equal(full_width_model.get_layer("conv2_g1").get_weights()[0], w2[..., 128:])
    np.testing.assert_array_equal(
        full_width_model.get_layer("conv4_g1").get_weights()[1], data["conv4"][1][192:]
    )
    # conv5 onwards is reinitialised, not loaded (§4.1).
    np.testing.assert_array_equal(full_width_model.get_layer("conv5_g0").get_weights()[0], before)


def test_loader_errors_name_file_layer_and_shapes(tmp_path, full_width_model):
    with pytest.raises(backbone.WeightsError, match="does not exist"):
        backbone.load_alexnet_weights(full_width_model, str(tmp_path / "nope.npy"))
    path = str(tmp_path / "wrong.npy")
    _fake_alexnet(path, conv2_shape=(5, 5, 96, 256))
    with pytest.raises(
        backbone.WeightsError, match=r"conv2 gives conv2_g0 shapes \[\(5, 5, 96, 128\), \(128,\)\]"
    ):
        backbone.load_alexnet_weights(full_width_model, path)
    np.save(str(tmp_path / "list.npy"), np.zeros(3))
    with pytest.raises(backbone.WeightsError, match="not a bvlc_alexnet.npy dict"):
        backbone.load_alexnet_weights(full_width_model, str(tmp_path / "list.npy"))


def test_loaded_network_computes_the_imagenet_function_at_either_input_scale(tmp_path):
    # The paper's network (input scale 1) and the from-scratch scale (1/60, kernel x 60) give the same
    # conv1 outputs for the same pixels; only the learning dynamics differ.
    path = str(tmp_path / "bvlc_alexnet.npy")
    data = _fake_alexnet(path)
    pixels = np.random.default_rng(1).normal(0, 60, (2, 67, 67, 3)).astype(np.float32)
    outs = []
    for scale in (1.0, 1 / backbone.PIXEL_STD):
        model = network.build_network(
            NUM_VALUES, NAMES, ModelConfig(image_size=67, input_scale=scale), "stage1"
        )
        backbone.load_alexnet_weights(model, path)
        probe = keras.Model(model.input, model.get_layer("conv1").output)
        outs.append(probe(pixels).numpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-4, atol=1e-3)
    # ... and that is the ImageNet file's conv1 itself: ReLU(pixels * W + b), stride 4, no padding.
    w, b = data["conv1"]
    want = tf.nn.relu(tf.nn.conv2d(pixels, w, strides=4, padding="VALID") + b).numpy()
    assert want.shape == outs[0].shape and (want > 0).mean() > 0.2
    np.testing.assert_allclose(outs[0], want, rtol=1e-4, atol=1e-2)
