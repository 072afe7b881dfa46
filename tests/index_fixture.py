"""What the index tests share with the Beam pipeline's tests: a tiny random export (two attributes, 64
px, 1/8 width, identity global layer: r = 32) and a folder of images of three sizes with a broken one.
Registered in conftest.py, built once per test session (the tests only read them)."""

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.model import network
from fashionsearchnet_v2.serving import export

VOCAB = export.Vocabulary(
    (
        schema.Attribute("color", ("red", "blue", "black")),
        schema.Attribute("sleeve_length", ("short", "long")),
    )
)
TINY = configs.ModelConfig(image_size=64, width=0.125, conv5_filters=48, conv67_filters=64, fc_sizes=(32,),
                           fc10_size=16, roi_size=2, box_backend="tf")  # fmt: skip


@pytest.fixture(scope="session")
def export_dir(tmp_path_factory):
    """A tiny random export with the identity global layer (a variant without stage 3): r = A * D = 32."""
    tf.keras.utils.set_random_seed(7)
    net = network.build_network(VOCAB.num_values, VOCAB.names, TINY, "full")
    memory = np.random.default_rng(0).normal(size=(5, 16)).astype(np.float32)
    module = export.ServingModule(net, export.identity_global_layer(memory, VOCAB.num_values), VOCAB, 64)
    return export.save(module, VOCAB, str(tmp_path_factory.mktemp("export") / "1"))


@pytest.fixture(scope="session")
def model(export_dir):
    return export.ExportedModel(export_dir)


@pytest.fixture(scope="session")
def folder(tmp_path_factory):
    """9 readable images of three sizes (PNG and JPEG, one in a subfolder), one broken, one non-image."""
    root = tmp_path_factory.mktemp("images")
    os.makedirs(root / "sub")
    rng = np.random.default_rng(3)
    for i in range(9):
        h, w = [(40, 50), (64, 64), (33, 71)][i % 3]
        img = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (5, 5), 0)
        cv2.imwrite(str(root / ("sub" if i == 4 else ".") / f"img{i}.{'png' if i % 2 else 'jpg'}"), img)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (root / "notes.txt").write_text("not an image")
    return str(root)
