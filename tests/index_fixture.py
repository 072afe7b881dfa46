"""What the index tests share with the Beam pipeline's tests: a tiny random export (two attributes, 64
px, 1/8 width, identity global layer: r = 32) and a folder of images of three sizes with a broken one,
registered in conftest.py and built once per test session (the tests only read them); and a tiny
dataset with VOCAB's attributes, written where a test asks."""

import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.data import convert, schema
from fashionsearchnet_v2.model import memory_block, network
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
    module = export.ServingModule(
        net, memory_block.identity_global_layer(memory, VOCAB.num_values), VOCAB, 64
    )
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


def write_tiny_dataset(root, n: int = 12, num_gallery: int = 6, per_shard: int = 2048) -> schema.DatasetInfo:
    """`n` random images of growing heights with VOCAB's labels (sleeve_length unknown for every fourth),
    converted into `root`/data: 2 query images, `num_gallery` gallery images, `per_shard` per shard."""
    rng = np.random.default_rng(4)
    examples = []
    for i in range(n):
        p = str(root / f"{i}.png")
        cv2.imwrite(p, rng.integers(0, 256, (30 + i, 40, 3), dtype=np.uint8))
        examples.append(convert.Example(f"id{i}", [i % 3, i % 2 if i % 4 else -1], path=p))
    return convert.write_dataset(examples, list(VOCAB.attributes), output_dir=str(root / "data"), name="t",
                                 source="test", num_query=2, num_gallery=num_gallery, seed=0,
                                 per_shard=per_shard, progress=False)  # fmt: skip
