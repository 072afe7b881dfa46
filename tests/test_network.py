"""The networks as a whole: parameter counts worked out from the paper's layer sizes (§3.1-3.3, §4.1 and
decisions 1, 2, 5, 9, 11, 19), and every custom layer's config round trip (Keras rebuilds a layer from
`get_config`)."""

import keras
import pytest

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.model import amnet, memory_block, network

NUM_VALUES = [3, 5]
NAMES = ["color", "sleeve length"]


def conv(kernel, cin, cout, groups=1, batch_norm=False):
    """Weights and biases of a (grouped) conv: each group sees cin / groups inputs; BatchNorm adds
    gamma, beta and the two moving statistics per channel."""
    return kernel * kernel * (cin // groups) * cout + cout + (4 * cout if batch_norm else 0)


def dense(n_in, n_out, bias=True):
    return n_in * n_out + (n_out if bias else 0)


def paper_count(cfg, num_values, stage):
    """The network's parameters from the paper's table, not from the code: AlexNet's conv1-conv4
    (96, 256, 384, 384; conv2 and conv4 in two groups), conv5 (384, two groups), conv6 and conv7 (512),
    the GAP classifiers w_a without bias (decision 5); the full network adds per attribute fc8_a on the
    4 x 4 ROI-pooled conv5 (with feature fusion, the whole image's 4 x 4 too), fc9_a, fc10_a and cls_a."""
    bn = cfg.batch_norm
    backbone = (
        conv(11, 3, 96, 1, bn) + conv(5, 96, 256, 2, bn) + conv(3, 256, 384, 1, bn) + conv(3, 384, 384, 2, bn)
        + conv(3, 384, cfg.conv5_filters, 2, bn) + conv(3, cfg.conv5_filters, cfg.conv67_filters, 1, bn)
        + conv(3, cfg.conv67_filters, cfg.conv67_filters, 1, bn)
    )  # fmt: skip
    total = backbone + dense(cfg.conv67_filters, sum(num_values), bias=False)
    if stage == "full":
        pooled = cfg.roi_size**2 * cfg.conv5_filters * (2 if cfg.feature_fusion else 1)
        fc8, fc9 = cfg.fc_sizes
        for n in num_values:
            total += (
                dense(pooled, fc8) + dense(fc8, fc9) + dense(fc9, cfg.fc10_size) + dense(cfg.fc10_size, n)
            )
    return total


@pytest.mark.parametrize(
    "stage, changes",
    [
        ("stage1", {}),
        ("full", {}),
        ("full", {"feature_fusion": True}),
        ("full", {"batch_norm": True, "lrn": False, "image_size": 128}),
    ],
)
def test_parameter_count_is_the_papers_layer_table(stage, changes):
    cfg = configs.ModelConfig(**changes)
    model = network.build_network(NUM_VALUES, NAMES, cfg, stage)
    assert model.count_params() == paper_count(cfg, NUM_VALUES, stage)


def test_the_global_model_and_amnet_count_their_weights():
    # Eq. 7: lambda [A], w_r [A*D, r] without bias, the memory block M [C, D].
    d, r = 128, 256
    glob = memory_block.build_global_model(NUM_VALUES, d, r=r)
    assert glob.count_params() == len(NUM_VALUES) + len(NUM_VALUES) * d * r + sum(NUM_VALUES) * d
    # AMNet: memory [C, m], fusion Dense(F + m -> e), attribute logits Dense(e -> C).
    f, m, e = 512, 256, 256
    net = amnet.build_amnet(NUM_VALUES, f, memory_dim=m, embedding_dim=e)
    c = sum(NUM_VALUES)
    assert net.count_params() == c * m + dense(f + m, e) + dense(e, c)


def _project_layers(model):
    return [layer for layer in model.layers if type(layer).__module__.startswith("fashionsearchnet_v2.")]


def test_every_custom_layer_is_rebuilt_from_its_config():
    cfg = configs.ModelConfig(image_size=67, feature_fusion=True, width=0.25)
    models = [
        network.build_network(NUM_VALUES, NAMES, cfg, "full"),
        memory_block.build_global_model(NUM_VALUES, 16, r=8, update_memory=True),
        amnet.build_amnet(NUM_VALUES, 32, memory_dim=8, embedding_dim=8),
    ]
    layers = [layer for model in models for layer in _project_layers(model)]
    kinds = {type(layer).__name__ for layer in layers}
    assert kinds >= {"LocalResponseNorm", "AttributeClassifier", "AamBoxes", "RoiPooling", "WholeImageBoxes",
                     "GlobalRepresentation", "AmnetMemory"}, kinds  # fmt: skip
    for layer in layers:
        config = layer.get_config()
        rebuilt = type(layer).from_config(config)
        assert rebuilt.get_config() == config, type(layer).__name__
        # and through Keras' registry, as a saved model would be read
        again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
        assert type(again) is type(layer) and again.get_config() == config
