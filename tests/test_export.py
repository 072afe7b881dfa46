"""The serving export: a fresh TensorFlow-only process reproduces `embed` and `manipulate`, the vocabulary
travels as asset and json, overwriting needs consent, manipulation equals the library's Eq. 7, and a
TensorFlow Serving REST body decodes into the tensors the signatures take."""

import json
import os
import sys
import textwrap

import commands
import numpy as np
import pytest
import tensorflow as tf

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.data import records, schema
from fashionsearchnet_v2.model import memory_block, network
from fashionsearchnet_v2.serving import export

VOCAB = export.Vocabulary(
    (
        schema.Attribute("color", ("red", "blue", "black")),
        schema.Attribute("sleeve length", ("none", "short", "long", "3/4")),
        schema.Attribute("pattern", ("solid", "dots")),
    )
)
TINY = configs.ModelConfig(image_size=64, width=0.125, conv5_filters=48, conv67_filters=64, fc_sizes=(32,),
                           fc10_size=16, roi_size=2, box_backend="skimage")  # fmt: skip


def _module():
    """Tiny random network (scikit-image boxes, so the export must rebuild it) and a random Eq. 7 layer."""
    keras_seed = 3
    tf.keras.utils.set_random_seed(keras_seed)
    model = network.build_network(VOCAB.num_values, VOCAB.names, TINY, "full")
    net, cfg = export.exportable_network(model, TINY, VOCAB)
    layer = memory_block.GlobalRepresentation(VOCAB.num_values, 16, r=8, name="global_representation")
    layer.build([(None, 3, 16), (None, 9)])
    rng = np.random.default_rng(0)
    layer.memory_block.assign(rng.normal(size=(9, 16)).astype(np.float32))
    layer.lambdas.assign(rng.uniform(0.5, 1.5, size=3).astype(np.float32))
    return model, export.ServingModule(net, layer, VOCAB, cfg.image_size), layer


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    model, module, layer = _module()
    out = export.save(
        module, VOCAB, str(tmp_path_factory.mktemp("exp") / "fsn" / "1"), metadata={"marker": 1}
    )
    return model, module, layer, out


def _images(n=3, h=50, w=70, seed=1):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


FRESH = textwrap.dedent(
    """
    import json, sys
    # This project must not be needed: any import of it fails.
    for name in ("fashionsearchnet_v2", "experiments"):
        sys.modules[name] = None
    import numpy as np
    import tensorflow as tf
    export_dir, inputs, outputs = sys.argv[1:4]
    loaded = tf.saved_model.load(export_dir)
    x = np.load(inputs)
    out = {"embed/" + k: v.numpy() for k, v in loaded.signatures["embed"](images=tf.constant(x["images"])).items()}
    m = loaded.signatures["manipulate"](
        attribute_representations=tf.constant(x["fc10"]), attributes=tf.constant(x["attributes"]),
        values=tf.constant(x["values"]))
    out["manipulate/global_representation"] = m["global_representation"].numpy()
    with open(loaded.vocabulary_file.asset_path.numpy().decode(), encoding="utf-8") as f:
        out["vocabulary"] = np.asarray(json.dumps(json.load(f)))
    # What `saved_model_cli show` lists: each signature's named inputs (dtype, shape) and outputs.
    sigs = {name: {"inputs": {k: [v.dtype.name, v.shape.as_list()]
                              for k, v in fn.structured_input_signature[1].items()},
                   "outputs": sorted(fn.structured_outputs)} for name, fn in loaded.signatures.items()}
    out["signatures"] = np.asarray(json.dumps(sigs))
    loaded_project = [k for k, v in sys.modules.items() if k.startswith("fashionsearchnet_v2") and v is not None]
    out["project_modules"] = np.asarray(json.dumps(loaded_project))
    np.savez(outputs, **out)
    """
)


def test_fresh_process_reproduces_embed_and_manipulate(exported, tmp_path):
    model, module, layer, out_dir = exported
    images = _images()
    attributes = np.array([[0, 1], [2, -1], [-1, -1]], np.int32)
    values = np.array([[2, 3], [1, -1], [-1, -1]], np.int32)
    ours = {k: v.numpy() for k, v in module.embed(tf.constant(images)).items()}
    ours_m = module.manipulate(tf.constant(ours["attribute_representations"]), attributes, values)
    np.savez(tmp_path / "in.npz", images=images, fc10=ours["attribute_representations"], attributes=attributes,
             values=values)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = commands.run([sys.executable, "-c", FRESH, out_dir, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
                        cwd=tmp_path, env=env, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    theirs = np.load(tmp_path / "out.npz")
    assert json.loads(str(theirs["project_modules"])) == []
    assert json.loads(str(theirs["signatures"])) == {
        "embed": {"inputs": {"images": ["uint8", [None, None, None, 3]]}, "outputs": sorted(export.EMBED_OUTPUTS)},
        "embed_resized": {"inputs": {"resized": ["float32", [None, 64, 64, 3]]},
                          "outputs": sorted(export.EMBED_OUTPUTS)},
        "manipulate": {"inputs": {"attribute_representations": ["float32", [None, 3, 16]],
                                  "attributes": ["int32", [None, None]], "values": ["int32", [None, None]]},
                       "outputs": ["global_representation"]},
    }  # fmt: skip
    assert json.loads(str(theirs["vocabulary"])) == VOCAB.to_json()
    assert set(export.EMBED_OUTPUTS) == set(ours)
    for key in export.EMBED_OUTPUTS:
        assert theirs["embed/" + key].dtype == ours[key].dtype
        np.testing.assert_allclose(theirs["embed/" + key], ours[key], rtol=0, atol=1e-5, err_msg=key)
    np.testing.assert_allclose(theirs["manipulate/global_representation"], ours_m["global_representation"],
                               rtol=0, atol=1e-5)  # fmt: skip
    # The export is the trained network: scikit-image boxes and the rebuilt "tf" network agree.
    ref = model(records.preprocess_image(tf.constant(images), 64), training=False)
    np.testing.assert_array_equal(ours["boxes"], ref["boxes"].numpy())
    np.testing.assert_allclose(ours["attribute_representations"], ref["fc10"].numpy(), atol=1e-5)
    probs = tf.nn.softmax(network.split_logits(ref["fc10_logits"], VOCAB.num_values)[1]).numpy()
    np.testing.assert_array_equal(ours["predicted_values"][:, 1], probs.argmax(-1))
    np.testing.assert_allclose(ours["predicted_probabilities"][:, 1], probs.max(-1), atol=1e-6)
    assert ours["maps"].shape[:2] == (3, 3) and ours["global_representation"].shape == (3, 8)


def test_vocabulary_asset_json_and_metadata(exported):
    _, _, _, out_dir = exported
    with open(os.path.join(out_dir, "assets", export.VOCABULARY_JSON), encoding="utf-8") as f:
        asset = json.load(f)
    with open(os.path.join(out_dir, export.VOCABULARY_JSON), encoding="utf-8") as f:
        beside = json.load(f)
    expected = {"attributes": [{"name": "color", "values": ["red", "blue", "black"]},
                               {"name": "sleeve length", "values": ["none", "short", "long", "3/4"]},
                               {"name": "pattern", "values": ["solid", "dots"]}]}  # fmt: skip
    assert asset == beside == expected
    assert export.Vocabulary.load(out_dir) == VOCAB
    with open(os.path.join(out_dir, export.EXPORT_JSON), encoding="utf-8") as f:
        meta = json.load(f)
    assert meta["image_size"] == 64 and meta["global_dim"] == 8 and meta["attribute_dim"] == 16
    assert meta["marker"] == 1 and meta["num_values"] == [3, 4, 2]


def test_refuses_to_overwrite_without_consent(exported):
    _, module, _, out_dir = exported
    before = open(os.path.join(out_dir, "saved_model.pb"), "rb").read()
    with pytest.raises(export.ExportError, match="already exists; pass --overwrite"):
        export.save(module, VOCAB, out_dir)
    assert open(os.path.join(out_dir, "saved_model.pb"), "rb").read() == before
    export.save(module, VOCAB, out_dir, overwrite=True, metadata={"marker": 2})
    with open(os.path.join(out_dir, export.EXPORT_JSON), encoding="utf-8") as f:
        assert json.load(f)["marker"] == 2
    assert sorted(os.listdir(os.path.dirname(out_dir))) == ["1"]  # no temporary or old copy left behind
    assert export.ExportedModel(out_dir).embed([_images(1)[0]])["global_representation"].shape == (1, 8)


def test_manipulate_two_attributes_equals_library_eq7(exported):
    _, module, layer, out_dir = exported
    loaded = export.ExportedModel(out_dir)
    fc10 = np.random.default_rng(2).normal(size=(2, 3, 16)).astype(np.float32)
    pairs = [[(0, 2), (1, 3)], [(2, 1)]]
    attributes, values = export.manipulation_arrays(pairs)
    assert attributes.tolist() == [[0, 1], [2, -1]]
    got = loaded.manipulate(fc10, attributes, values)
    t = np.stack([memory_block.manipulation_vector(p, VOCAB.num_values) for p in pairs])
    want = layer([tf.constant(fc10), tf.constant(t)]).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    # Order of the slots does not matter; all -1 is the plain representation.
    np.testing.assert_allclose(loaded.manipulate(fc10[:1], [[1, 0]], [[3, 2]]), want[:1], atol=1e-5)
    plain = loaded.manipulate(fc10, [[-1], [-1]], [[-1], [-1]])
    np.testing.assert_allclose(plain, layer([tf.constant(fc10), tf.zeros((2, 9))]).numpy(), atol=1e-5)
    for bad_a, bad_v, message in (([[0]], [[3]], "outside the values of its attribute"),
                                  ([[3]], [[0]], "must be -1"),
                                  ([[0, 0]], [[1, 2]], "manipulated twice")):  # fmt: skip
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            loaded.manipulate(fc10[:1], bad_a, bad_v)


def test_vocabulary_parses_manipulations_and_lists_valid_names():
    assert VOCAB.parse_manipulations(["pattern=dots", "sleeve length = 3/4"]) == [(2, 1), (1, 3)]
    with pytest.raises(export.VocabularyError, match="valid attributes: color, sleeve length, pattern"):
        VOCAB.parse_manipulations(["colour=red"])
    with pytest.raises(export.VocabularyError, match="valid values: red, blue, black"):
        VOCAB.parse_manipulations(["color=green"])
    with pytest.raises(export.VocabularyError, match="set twice"):
        VOCAB.parse_manipulations(["color=red", "color=blue"])


def test_tf_serving_rest_body_is_todays_compact_json_written_without_python_lists(monkeypatch):
    """`rest_request_body` writes images (uint8) with NumPy instead of `.tolist()` and `json.dumps`
    (a 4 MP image: 3.4 s and 0.5 GB before): the bytes are those of the compact `json.dumps` of
    `rest_request`, for every value 0-255, any shape (empty, one number, several images), an image
    written in pieces, and `manipulate`'s float and int inputs."""

    def today(signature, inputs):
        return json.dumps(export.rest_request(signature, inputs), separators=(",", ":")).encode()

    rng = np.random.default_rng(0)
    arrays = [np.arange(256, dtype=np.uint8).reshape(1, 4, 64, 1), np.zeros((1, 1, 1, 3), np.uint8),
              np.uint8(7), np.zeros((0,), np.uint8), np.zeros((2, 0, 3, 3), np.uint8)]  # fmt: skip
    arrays += [rng.integers(0, 256, shape, dtype=np.uint8) for shape in [(3,), (2, 5, 7, 3), (1, 9, 300, 3)]]
    for chunk in (1 << 16, 7):  # 7: every image larger than a piece, written row by row
        monkeypatch.setattr(export, "_UINT8_JSON_CHUNK", chunk)
        for a in arrays:
            assert export.rest_request_body("embed", {"images": a}) == today("embed", {"images": a}), a.shape
    manipulate = {"attribute_representations": rng.normal(size=(2, 3, 4)).astype(np.float32),
                  "attributes": np.array([[0, 1], [-1, -1]], np.int32), "values": [[2, 0], [-1, -1]]}  # fmt: skip
    assert export.rest_request_body("manipulate", manipulate) == today("manipulate", manipulate)
    # no Python list of an image's numbers is made
    image = rng.integers(0, 256, (1, 20, 30, 3), dtype=np.uint8)
    want = today("embed", {"images": image})
    monkeypatch.setattr(export, "rest_request", None)
    monkeypatch.setattr(export.np, "asarray", lambda a, *args, **kw: _NoList(np.array(a, *args, **kw)))
    assert export.rest_request_body("embed", {"images": image}) == want


class _NoList(np.ndarray):
    """An array whose `tolist` fails, nested views included."""

    def __new__(cls, a: np.ndarray):
        return a.view(cls)

    def tolist(self):
        raise AssertionError("an image went through a Python list")


def test_tf_serving_rest_body_feeds_the_signatures(exported):
    _, module, _, out_dir = exported
    loaded = tf.saved_model.load(out_dir)
    images = _images(2, 30, 40, seed=5)
    direct = loaded.signatures["embed"](images=tf.constant(images))
    for columnar in (True, False):
        body = json.loads(json.dumps(export.rest_request("embed", {"images": images}, columnar)))
        assert body["signature_name"] == "embed"
        # What TensorFlow Serving does with the body: each named input becomes one tensor of its dtype.
        if columnar:
            batch = np.asarray(body["inputs"]["images"], np.uint8)
        else:
            batch = np.stack([np.asarray(row["images"], np.uint8) for row in body["instances"]])
        out = loaded.signatures[body["signature_name"]](images=tf.constant(batch))
        for key in export.EMBED_OUTPUTS:
            np.testing.assert_array_equal(out[key].numpy(), direct[key].numpy())
    fc10 = direct["attribute_representations"].numpy()
    body = json.loads(json.dumps(export.rest_request(
        "manipulate", {"attribute_representations": fc10, "attributes": [[0, 1], [-1, -1]],
                       "values": [[2, 0], [-1, -1]]})))  # fmt: skip
    inputs = body["inputs"]
    got = loaded.signatures["manipulate"](
        attribute_representations=tf.constant(np.asarray(inputs["attribute_representations"], np.float32)),
        attributes=tf.constant(np.asarray(inputs["attributes"], np.int32)),
        values=tf.constant(np.asarray(inputs["values"], np.int32)),
    )["global_representation"].numpy()
    np.testing.assert_allclose(got[1], direct["global_representation"].numpy()[1], atol=1e-5)
    want = module.manipulate(tf.constant(fc10), [[0, 1], [-1, -1]], [[2, 0], [-1, -1]])
    np.testing.assert_allclose(got, want["global_representation"].numpy(), atol=1e-6)


def test_embed_checks_its_input(exported):
    """A grey or RGBA batch, an image without its batch axis, an empty image: refused by the signature
    itself (TensorFlow Serving calls it directly), and by the client before it sends anything."""
    _, _, _, out_dir = exported
    loaded = tf.saved_model.load(out_dir)
    embed = loaded.signatures["embed"]
    for shape, message in (((1, 40, 40, 1), r"not compatible with expected shape \[\?,\?,\?,3\]"),
                           ((1, 40, 40, 4), "not compatible with expected shape"),
                           ((40, 40, 3), "not compatible with expected shape"),
                           ((1, 0, 40, 3), "height and width > 0")):  # fmt: skip
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            embed(images=tf.zeros(shape, tf.uint8))
    client = export.ExportedModel(out_dir)
    with pytest.raises(export.ExportError, match=r"image 1 has shape \(40, 40\): embed takes RGB images"):
        client.embed([np.zeros((40, 40, 3), np.uint8), np.zeros((40, 40), np.uint8)])


def test_embed_bfloat16_beside_an_unchanged_embed_and_chosen_by_the_rule(
    exported, tmp_path, monkeypatch, autograph_conversions
):
    """Issue 26: a float32 export may carry `embed_bfloat16` (the network with its weights stored in
    bfloat16); `embed` gives exactly what it gave without it, and ExportedModel picks by `precision`.
    Saving converts nothing with autograph (P9), and the SavedModel holds the networks' variables, not
    the Keras objects with their own `serving_default` (P10)."""
    from fashionsearchnet_v2 import precision

    _, module, layer, plain_dir = exported
    fast, _ = export.exportable_network(module.model, TINY, VOCAB, "bfloat16", stored_bfloat16=True)
    assert {v.dtype for v in fast.get_layer("conv1").weights} == {"bfloat16"}
    assert {v.dtype for v in fast.get_layer(module.model.layers[-1].name).weights} <= {"float32"}
    both = export.ServingModule(module.model, layer, VOCAB, 64, model_bfloat16=fast)
    both_dir = export.save(both, VOCAB, str(tmp_path / "both" / "1"))
    with open(os.path.join(both_dir, export.EXPORT_JSON), encoding="utf-8") as f:
        assert json.load(f)["signatures"] == [
            "embed", "manipulate", export.BFLOAT16_EMBED, "embed_resized", "embed_bfloat16_resized"
        ]  # fmt: skip
    assert autograph_conversions == []
    loaded = tf.saved_model.load(both_dir)
    assert not hasattr(loaded, "model") and not hasattr(loaded, "model_bfloat16")
    assert len(loaded.network_variables) == len(module.model.variables) + len(layer.variables)
    assert len(loaded.network_bfloat16_variables) == len(fast.variables)

    images = _images(4, 64, 64)
    plain = export.ExportedModel(plain_dir)
    f32 = export.ExportedModel(both_dir)  # default: float32, what the evaluation computes
    b16 = export.ExportedModel(both_dir, precision="bfloat16")
    assert (f32.embed_precision, b16.embed_precision) == ("float32", "bfloat16")
    a, b, c = plain.embed(list(images)), f32.embed(list(images)), b16.embed(list(images))
    for key in export.EMBED_OUTPUTS:
        np.testing.assert_array_equal(a[key], b[key])  # embed unchanged by the extra signature
    x, y = a["global_representation"], c["global_representation"]
    assert not np.array_equal(x, y)  # really another computation
    cosine = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    assert cosine.min() > 0.98, cosine

    native = precision.Choice("bfloat16", "test: native")
    monkeypatch.setattr(
        precision, "resolve", lambda p="auto", **k: native if p == "auto" else precision.Choice(p, "")
    )
    assert export.ExportedModel(both_dir, precision="auto").embed_precision == "bfloat16"
    auto_plain = export.ExportedModel(plain_dir, precision="auto")
    assert auto_plain.embed_precision == "float32" and "no embed_bfloat16" in auto_plain.embed_reason
    monkeypatch.setattr(precision, "resolve", lambda p="auto", **k: precision.Choice("float32", "test: none"))
    assert export.ExportedModel(both_dir, precision="auto").embed_precision == "float32"
    with pytest.raises(export.ExportError, match="no embed_bfloat16 signature"):
        export.ExportedModel(plain_dir, precision="bfloat16")


def test_images_of_mixed_sizes_share_batches_with_the_same_outputs(exported):
    """A folder of many sizes ran at batches near 1 (`embed` takes one size per batch); images of mixed
    sizes are now resized on the client with `embed`'s own resize (bit for bit the graph's, batched) and
    share batches of `embed_resized`, with the outputs each image gets alone (up to float32 rounding: a
    batch's shape may change the last bits, as it does in `embed`). One size keeps `embed`; an export
    without the resized signatures batches by size as before."""
    _, _, _, out_dir = exported
    model = export.ExportedModel(out_dir)
    shapes = [(50, 70), (64, 64), (90, 40), (50, 70), (33, 129), (64, 64), (200, 150)]
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in shapes]
    alone = [model.embed([image]) for image in images]
    calls = {"embed": [], "resized": []}
    plain, resized = model._embed, model._embed_resized
    model._embed = lambda images: calls["embed"].append(len(images)) or plain(images=images)
    model._embed_resized = lambda resized: calls["resized"].append(len(resized)) or resized_fn(resized)
    resized_fn = lambda r: resized(resized=r)  # noqa: E731
    got = model.embed(images, batch_size=4)
    assert calls == {"embed": [], "resized": [4, 3]}  # 2 calls, not 5 (one per size)
    for key in export.EMBED_OUTPUTS:
        np.testing.assert_allclose(got[key], np.concatenate([a[key] for a in alone]), 1e-5, 1e-6, err_msg=key)
    batched_resize = tf.function(lambda b: export.resize_for_embed(b, 64))
    for image in images:
        np.testing.assert_array_equal(export.resize_for_embed(image, 64), batched_resize(image[None])[0])
    calls["resized"].clear()
    same = model.embed([images[1], images[5]], batch_size=4)
    assert calls == {"embed": [2], "resized": []}
    np.testing.assert_allclose(
        same["global_representation"][1], alone[5]["global_representation"][0], 1e-5, 1e-6
    )
    model._embed_resized = None  # an export written before the resized signatures
    calls["embed"].clear()
    before = model.embed(images, batch_size=4)
    assert sorted(calls["embed"]) == [1, 1, 1, 2, 2]
    np.testing.assert_allclose(before["global_representation"], got["global_representation"], 1e-5, 1e-6)
    with pytest.raises(tf.errors.InvalidArgumentError, match="resized holds NaN"):
        resized(resized=tf.fill([1, 64, 64, 3], np.nan))


def test_embed_resizes_the_uint8_images_before_any_float32_copy(exported):
    """A 40 MP upload cost ~820 MB in embed when the batch was cast to float32 before the resize (the audit
    of 2026-12-05); the uint8 batch is now resized itself, and the model sees the same numbers, bit for bit,
    on photo-sized and real images."""
    _, module, _, out_dir = exported
    graph = tf.saved_model.load(out_dir).signatures["embed"].graph
    graph_def = graph.as_graph_def()
    resizes = [n for f in graph_def.library.function for n in f.node_def if n.op == "ResizeBilinear"]
    resizes += [n for n in graph_def.node if n.op == "ResizeBilinear"]
    assert resizes and all(n.attr["T"].type == tf.uint8.as_datatype_enum for n in resizes), resizes
    rng = np.random.default_rng(0)
    photo = tf.io.decode_jpeg(tf.io.read_file(os.path.join(os.path.dirname(__file__), "..", "docs",
                                                           "fpi_227_results_grid.jpg"))).numpy()  # fmt: skip
    for image in (rng.integers(0, 256, (3000, 4000, 3), dtype=np.uint8), photo, _images(1)[0]):
        batch = tf.constant(image[None])
        for size in (64, 227):
            want = records.preprocess_image(batch, size).numpy()
            np.testing.assert_array_equal(
                export.preprocess_uint8(batch, size, records.IMAGENET_MEAN_BGR), want
            )
            traced = tf.function(lambda b, s=size: export.preprocess_uint8(b, s, records.IMAGENET_MEAN_BGR))
            np.testing.assert_array_equal(traced(batch), want)
