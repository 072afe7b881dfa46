"""A trained FashionSearchNet-v2 variant as a self-contained SavedModel for serving, and its client side.

The export is a `tf.Module` saved with three named signatures (and, exported with a bfloat16 `embed`,
`embed_bfloat16` and `embed_bfloat16_resized`) (shapes: N images or queries, A attributes,
D = fc10 size, r = global dimension, C = all values of all attributes, M manipulation slots):

    embed(images: uint8 [N, H, W, 3] RGB, any H and W)
        -> attribute_representations float32 [N, A, D]   fc10_a of every attribute (§3.2)
           global_representation     float32 [N, r]      Eq. 7 without manipulation (gallery vectors)
           predicted_values          int32   [N, A]      argmax of each attribute's fc10 classifier (cls_a)
           predicted_probabilities   float32 [N, A]      softmax probability of that value
           boxes                     float32 [N, A, 4]   ROI per attribute (y1, x1, y2, x2), crop_and_resize
           maps                      float32 [N, A, h, w] attribute activation maps (Eq. 3)
    embed_resized(resized: float32 [N, S, S, 3] RGB, each image through `resize_for_embed`)
        -> the same outputs: what `embed` gives those images (the resize is the graph's, bit for bit;
           the network's last bits may change with the batch, as in `embed`); one batch may hold
           images of every size (`ExportedModel.embed` uses it for mixed sizes)
    manipulate(attribute_representations float32 [N, A, D], attributes int32 [N, M], values int32 [N, M])
        -> global_representation float32 [N, r]         Eq. 7 with fc10_a := memory prototype of value v
                                                         for every slot (a, v); a = -1 marks unused slots

Both signatures check what they get and what they give: `embed` refuses a batch that is not
[N, H, W, 3] with H, W > 0 (a grey or RGBA image, a single image without its batch axis), `manipulate`
refuses non-finite attribute representations, and neither returns a non-finite float: a request fails
with InvalidArgumentError naming the input or output instead of answering NaN. An export is refused when
the model holds a non-finite weight (a diverged training).

`embed` preprocesses inside the graph exactly as training did (`records.preprocess_image`: bilinear
squash to S x S, RGB -> BGR, minus the ImageNet mean), so a client sends decoded RGB pixels and nothing
else; it resizes the uint8 batch itself, not a float32 copy of it (`preprocess_uint8`: the same numbers,
bit for bit, without 4 bytes per pixel channel of the full-size images: 480 MB for a 40 MP upload). Predictions come from the stage-2 attribute classifiers cls_a on fc10_a (`fc10_logits`), not from
the stage-1 GAP classifiers: cls_a sees exactly the localized representation that the search uses, and
was trained last (L_TC), so its value is the one a result's representation stands for.

The network is rebuilt with the pure-TF box backend (the scikit-image one is a `tf.numpy_function`, which
a SavedModel cannot hold; both give identical boxes), so the export loads with TensorFlow alone: no code
of this project is needed to serve it. `precision="bfloat16"` rebuilds it under the mixed policy
(`model/network.py`): `embed` then computes the backbone, ROI pooling and fc8/fc9 in bfloat16 and
everything else, `manipulate` included, in float32; its outputs are float32 either way, and export.json
records the precision. The vocabulary (attribute names and value names, in label order)
travels as a SavedModel asset (`assets/vocabulary.json`) and as `vocabulary.json` at the export's top
level; `export.json` beside it records where the weights came from. The export is written into a
temporary sibling renamed into place; temporaries of killed exports (owner dead) are removed by the next.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import tensorflow as tf

from fashionsearchnet_v2 import configs, locks
from fashionsearchnet_v2.data import records, schema
from fashionsearchnet_v2.model import memory_block, network
from fashionsearchnet_v2.serving.destination import ExportError, check_destination, file_system_problem
from fashionsearchnet_v2.trained import checkpoints

VOCABULARY_JSON = "vocabulary.json"
EXPORT_JSON = "export.json"
SIGNATURES = ("embed", "manipulate")
#: The optional third signature: `embed` with the network's weights stored in bfloat16 (issue 26).
BFLOAT16_EMBED = "embed_bfloat16"
#: `embed` (and `embed_bfloat16`) of images the client already resized (`resize_for_embed`): one batch may
#: then mix images of every size. The name of each is its uint8 signature's plus this suffix.
RESIZED = "_resized"
EMBED_OUTPUTS = (
    "attribute_representations",
    "global_representation",
    "predicted_values",
    "predicted_probabilities",
    "boxes",
    "maps",
)


class VocabularyError(ValueError):
    """An attribute or value name that the export does not know; the message lists the valid names."""


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """Attribute names and their value names in label order: what the integer outputs mean."""

    attributes: tuple[schema.Attribute, ...]

    @classmethod
    def from_info(cls, info: schema.DatasetInfo) -> Vocabulary:
        return cls(tuple(info.attributes))

    @classmethod
    def from_json(cls, obj: dict) -> Vocabulary:
        return cls(tuple(schema.Attribute(a["name"], tuple(a["values"])) for a in obj["attributes"]))

    @classmethod
    def load(cls, export_dir: str) -> Vocabulary:
        path = os.path.join(export_dir, VOCABULARY_JSON)
        try:
            with tf.io.gfile.GFile(path, "r") as f:  # a local path, or any URI TensorFlow reads (gs://)
                return cls.from_json(json.load(f))
        except (OSError, tf.errors.OpError, ValueError, KeyError, TypeError) as e:
            raise ExportError(f"{path}: cannot read the export's vocabulary ({e})") from e

    def to_json(self) -> dict:
        return {"attributes": [{"name": a.name, "values": list(a.values)} for a in self.attributes]}

    @property
    def names(self) -> list[str]:
        return [a.name for a in self.attributes]

    @property
    def num_values(self) -> list[int]:
        return [a.num_values for a in self.attributes]

    def attribute_index(self, name: str) -> int:
        if name not in self.names:
            raise VocabularyError(f"unknown attribute {name!r}; valid attributes: {', '.join(self.names)}")
        return self.names.index(name)

    def value_index(self, attribute: str, value: str) -> int:
        attr = self.attributes[self.attribute_index(attribute)]
        if value not in attr.values:
            raise VocabularyError(
                f"unknown value {value!r} for attribute {attribute!r}; valid values: {', '.join(attr.values)}"
            )
        return attr.values.index(value)

    def value_name(self, attribute: int, value: int) -> str | None:
        """The name of `value` of attribute number `attribute`; None for -1 (unknown)."""
        return None if value < 0 else self.attributes[attribute].values[value]

    def _setting(self, setting: str, what: str) -> tuple[str, str]:
        """ "name=value" -> (name, value), stripped; VocabularyError naming `what` and the valid attributes."""
        name, sep, value = setting.partition("=")
        name, value = name.strip(), value.strip()
        if not sep or not name or not value:
            raise VocabularyError(
                f"{what} {setting!r} is not ATTRIBUTE=VALUE; valid attributes: {', '.join(self.names)}"
            )
        return name, value

    def parse_manipulations(self, settings: Sequence[str]) -> list[tuple[int, int]]:
        """["color=black", "sleeve_length=long"] -> [(attribute, value), ...] in the order given.

        Raises VocabularyError for a malformed setting, an unknown name (listing the valid ones) or an
        attribute set twice (a query has one value per attribute).
        """
        out, seen = [], {}
        for setting in settings:
            name, value = self._setting(setting, "manipulation")
            a = self.attribute_index(name)
            if a in seen:
                raise VocabularyError(f"attribute {name!r} is set twice ({seen[a]!r} and {setting!r})")
            seen[a] = setting
            out.append((a, self.value_index(name, value)))
        return out

    def parse_where(self, settings: Sequence[str]) -> dict[int, tuple[int, ...]]:
        """Result filters ["category=dress", "category=skirt", "color=black"] -> {attribute: (values)}.

        An attribute named more than once accepts any of its values; several attributes must all hold
        (`index.where_mask`). Raises VocabularyError for a malformed setting or an unknown name (listing
        the valid ones).
        """
        names = [self._setting(setting, "filter") for setting in settings]
        return where_conditions((self.attribute_index(n), self.value_index(n, v)) for n, v in names)


def where_conditions(pairs: Iterable[tuple[int, int]]) -> dict[int, tuple[int, ...]]:
    """Result filters [(attribute, value)] -> {attribute: (values, in first-named order)}, each value once:
    the form `index.where_mask` takes (values of one attribute: any; several attributes: all)."""
    out: dict[int, tuple[int, ...]] = {}
    for a, v in pairs:
        if v not in out.get(a, ()):
            out[a] = out.get(a, ()) + (v,)
    return out


def manipulation_arrays(manipulations: Sequence[Sequence[tuple[int, int]]], slots: int | None = None):
    """Per query a list of (attribute, value) -> (attributes, values) int32 [N, M], padded with -1.

    M is `slots` or the longest list (at least 1, so a query without manipulation is one unused slot).
    """
    m = max([len(x) for x in manipulations] + [1]) if slots is None else slots
    attributes = np.full((len(manipulations), m), -1, np.int32)
    values = np.full((len(manipulations), m), -1, np.int32)
    for i, pairs in enumerate(manipulations):
        if len(pairs) > m:
            raise ValueError(f"query {i} has {len(pairs)} manipulations but only {m} slots")
        for j, (a, v) in enumerate(pairs):
            attributes[i, j], values[i, j] = a, v
    return attributes, values


def exportable_network(
    model,
    model_cfg: configs.ModelConfig,
    vocabulary: Vocabulary,
    precision: str = "float32",
    stored_bfloat16: bool = False,
) -> tuple[object, configs.ModelConfig]:
    """The full network rebuilt with the pure-TF box backend in `precision` ("float32" or "bfloat16";
    `model` is float32), every weighted layer copied by name (`stored_bfloat16`: the bfloat16 layers'
    weights rounded to bfloat16 and stored so, for `embed_bfloat16`).

    Returns (network, its ModelConfig). Raises ExportError when a layer of either model has no
    counterpart of the same shapes in the other (a model that does not match its config).
    """
    cfg = dataclasses.replace(model_cfg, box_backend="tf")
    if model_cfg.box_backend == "tf" and precision == "float32":
        return model, cfg
    rebuilt = network.build_network(
        vocabulary.num_values, vocabulary.names, cfg, "full", precision=precision,
        stored_bfloat16=stored_bfloat16 and precision == "bfloat16",
    )  # fmt: skip
    source = {layer.name: layer for layer in model.layers if layer.weights}
    target = {layer.name: layer for layer in rebuilt.layers if layer.weights}
    if sorted(source) != sorted(target):
        raise ExportError(
            f"the rebuilt network's weighted layers {sorted(target)} differ from the trained {sorted(source)}"
        )
    for name, layer in target.items():
        weights = source[name].get_weights()
        if [w.shape for w in weights] != [tuple(v.shape) for v in layer.weights]:
            raise ExportError(f"layer {name}: shapes differ between the trained and the rebuilt network")
        layer.set_weights(weights)
    return rebuilt, cfg


class ServingModule(tf.Module):
    """The two serving signatures over a full network and a `GlobalRepresentation` layer.

    Args:
        model: the full network (`build_network(..., stage="full")`) with the "tf" box backend.
        global_layer: built `memory_block.GlobalRepresentation` (stage 3's, or the identity one with the
            memory block of the training means for the variants without stage 3).
        vocabulary: the attribute and value names, in the model's order.
        image_size: S, the network's input size.
    """

    def __init__(
        self, model, global_layer, vocabulary: Vocabulary, image_size: int, mean_bgr=None, model_bfloat16=None
    ):
        super().__init__(name="fashionsearchnet_v2")
        if getattr(global_layer, "num_values", None) != vocabulary.num_values:
            raise ExportError(
                f"global representation has values {getattr(global_layer, 'num_values', None)}, "
                f"the vocabulary {vocabulary.num_values}"
            )
        self._keep_untracked(model=model, global_layer=global_layer, model_bfloat16=model_bfloat16)
        # The SavedModel holds the networks' variables, which the signatures capture, and not the Keras
        # objects: saving a Keras model also traced and stored its own `serving_default` function and its
        # tree of layers, seconds of every export and of every load, for nothing a signature calls.
        self.network_variables = list(model.variables) + list(global_layer.variables)
        if model_bfloat16 is not None:
            self.network_bfloat16_variables = list(model_bfloat16.variables)
        # What the network computes in (export.json records it): bfloat16 where any layer does.
        self.precision = (
            "bfloat16" if any(layer.compute_dtype == "bfloat16" for layer in model.layers) else "float32"
        )
        self.num_values = list(vocabulary.num_values)
        self.image_size = int(image_size)
        self.mean_bgr = tuple(records.IMAGENET_MEAN_BGR if mean_bgr is None else mean_bgr)
        a, d = len(self.num_values), int(global_layer.dim)
        images_spec = [tf.TensorSpec([None, None, None, 3], tf.uint8, name="images")]
        # autograph=False (decision P9): no Python control flow on tensors here (the boxes' loop is a
        # tf.while_loop); converting the source only cost tracing time at every export.
        self.embed = tf.function(
            lambda images: self._embed(images, self.model), input_signature=images_spec, autograph=False
        )
        resized_spec = [
            tf.TensorSpec([None, self.image_size, self.image_size, 3], tf.float32, name="resized")
        ]
        self.embed_resized = tf.function(
            lambda resized: self._embed_resized(resized, self.model),
            input_signature=resized_spec,
            autograph=False,
        )
        # Optional: the same network with its weights stored in bfloat16 (issue 26), a second signature;
        # `embed` stays exactly what it was. The service picks one with --precision (auto's rule).
        if model_bfloat16 is not None:
            self.embed_bfloat16 = tf.function(
                lambda images: self._embed(images, self.model_bfloat16),
                input_signature=images_spec,
                autograph=False,
            )
            self.embed_bfloat16_resized = tf.function(
                lambda resized: self._embed_resized(resized, self.model_bfloat16),
                input_signature=resized_spec,
                autograph=False,
            )
        self.manipulate = tf.function(
            self._manipulate,
            autograph=False,
            input_signature=[
                tf.TensorSpec([None, a, d], tf.float32, name="attribute_representations"),
                tf.TensorSpec([None, None], tf.int32, name="attributes"),
                tf.TensorSpec([None, None], tf.int32, name="values"),
            ],
        )

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def _keep_untracked(self, **objects):
        """Sets attributes that tf.Module would otherwise track (and tf.saved_model.save then save)."""
        for name, value in objects.items():
            setattr(self, name, value)

    def _global(self, fc10, t):
        return tf.cast(self.global_layer([fc10, t]), tf.float32)

    def _embed(self, images, model):
        # The signature's shape is not enforced when it is called (a [N, H, W, 1] batch would broadcast
        # against the mean): EnsureShape checks rank and channels at run time.
        images = tf.ensure_shape(images, [None, None, None, 3], name="images_must_be_N_H_W_3")
        nonempty = tf.debugging.Assert(
            tf.reduce_all(tf.shape(images)[1:3] > 0),
            ["images must have height and width > 0, got", tf.shape(images)],
        )
        with tf.control_dependencies([nonempty]):
            images = tf.identity(images)
        # One call of preprocess_image on the batch equals calling it image by image: resize, channel
        # reversal and mean subtraction are all per image.
        return self._embed_preprocessed(preprocess_uint8(images, self.image_size, self.mean_bgr), model)

    def _embed_resized(self, resized, model):
        s = self.image_size
        resized = tf.ensure_shape(resized, [None, s, s, 3], name=f"resized_must_be_N_{s}_{s}_3")
        resized = tf.debugging.assert_all_finite(resized, "embed_resized: resized holds NaN or inf")
        return self._embed_preprocessed(normalize_resized(resized, self.mean_bgr), model)

    def _embed_preprocessed(self, x, model):
        out = model(x, training=False)
        fc10 = tf.cast(out["fc10"], tf.float32)
        t = tf.zeros([tf.shape(fc10)[0], sum(self.num_values)], tf.float32)
        probs = [
            tf.nn.softmax(tf.cast(lg, tf.float32), axis=-1)
            for lg in network.split_logits(out["fc10_logits"], self.num_values)
        ]
        outputs = {
            "attribute_representations": fc10,
            "global_representation": self._global(fc10, t),
            "predicted_values": tf.stack([tf.argmax(p, -1, output_type=tf.int32) for p in probs], axis=1),
            "predicted_probabilities": tf.stack([tf.reduce_max(p, -1) for p in probs], axis=1),
            "boxes": tf.cast(out["boxes"], tf.float32),
            "maps": tf.cast(out["maps"], tf.float32),
        }
        return _finite(outputs, "embed")

    def _manipulate(self, attribute_representations, attributes, values):
        a_count = len(self.num_values)
        attribute_representations = tf.debugging.assert_all_finite(
            attribute_representations, "manipulate: attribute_representations holds NaN or inf"
        )
        used = attributes >= 0
        safe = tf.where(used, attributes, 0)
        # Bad indices must fail loudly: one_hot would silently turn them into "no manipulation".
        checks = [
            tf.debugging.assert_less(
                attributes, a_count, message=f"attributes must be -1 (unused) or in 0..{a_count - 1}"
            ),
            tf.debugging.assert_greater_equal(
                attributes, -1, message=f"attributes must be -1 (unused) or in 0..{a_count - 1}"
            ),
            tf.debugging.assert_equal(
                tf.shape(attributes), tf.shape(values), message="attributes and values must have one shape"
            ),
            tf.debugging.assert_equal(
                tf.shape(attributes)[0],
                tf.shape(attribute_representations)[0],
                message="attributes need one row per query",
            ),
        ]
        with tf.control_dependencies(checks):
            limit = tf.gather(tf.constant(self.num_values, tf.int32), safe)
            value_ok = tf.logical_or(tf.logical_not(used), (values >= 0) & (values < limit))
            per_attribute = tf.reduce_sum(tf.one_hot(tf.where(used, attributes, -1), a_count), axis=1)
            checks2 = [
                tf.debugging.assert_equal(
                    tf.reduce_all(value_ok), True, message="a value lies outside the values of its attribute"
                ),
                tf.debugging.assert_less_equal(
                    per_attribute, 1.0, message="an attribute is manipulated twice in one query"
                ),
            ]
        with tf.control_dependencies(checks2):
            t = memory_block.manipulations_tf(attributes, values, self.num_values)  # multi-hot [N, C]
            return _finite(
                {"global_representation": self._global(attribute_representations, t)}, "manipulate"
            )


def preprocess_uint8(images, image_size: int, mean_bgr) -> tf.Tensor:
    """`records.preprocess_image` of a uint8 batch, bit for bit, resized before any float32 copy.

    The bilinear kernel reads uint8 pixels as float32 and returns float32, so resizing first gives the
    numbers that casting first gives (tests/test_export.py compares them on photo-sized images), while a
    float32 copy of the full-size batch (4 bytes per pixel channel) is never made. The training pipeline
    keeps `records.preprocess_image`."""
    return normalize_resized(resize_for_embed(images, image_size), mean_bgr)


def resize_for_embed(images, image_size: int) -> tf.Tensor:
    """uint8 RGB `[..., H, W, 3]` -> float32 `[..., S, S, 3]`, `embed`'s own resize (bilinear), image by
    image: what the `*_resized` signatures take, so that images of any size share one batch."""
    return tf.image.resize(images, [image_size, image_size], method="bilinear")


def normalize_resized(resized, mean_bgr) -> tf.Tensor:
    """The rest of `preprocess_uint8`: RGB -> BGR, minus the mean."""
    return tf.reverse(resized, axis=[-1]) - tf.constant(mean_bgr, tf.float32)


def _finite(outputs: dict, signature: str) -> dict:
    """The outputs, each float one checked to be finite (CheckNumerics names the output)."""
    return {
        k: tf.debugging.assert_all_finite(v, f"{signature}: output {k} is not finite (the model diverged?)")
        if v.dtype.is_floating
        else v
        for k, v in outputs.items()
    }


#: The largest relative L2 difference between export.json's probe vector and what a served copy of the
#: export answers (`probe_difference`), by the export's precision. Measured at 128 px: float32 without
#: oneDNN 1.4e-6 (a GPU's TF32 products: about 1e-3); an export computing in bfloat16 5.5e-4 on a CPU
#: without native bfloat16 and 6.5e-3 without oneDNN. Another model's weights: about the vector's size (1).
PROBE_TOLERANCE = {"float32": 0.02, "bfloat16": 0.05}


def probe_image(size: int) -> np.ndarray:
    """A fixed uint8 RGB `[size, size, 3]` texture, from a formula (no random stream that a NumPy version
    could change): the image whose `embed` export.json keeps as "probe"."""
    y, x, c = np.meshgrid(np.arange(size), np.arange(size), np.arange(3), indexing="ij")
    return ((7 * x + 13 * y + 101 * c + (x * y) % 251) % 256).astype(np.uint8)


def probe_difference(expected, got) -> float:
    """‖got − expected‖ / ‖expected‖ of two global representations (see PROBE_TOLERANCE)."""
    expected = np.asarray(expected, np.float64).ravel()
    got = np.asarray(got, np.float64).ravel()
    if got.shape != expected.shape:
        return float("inf")
    return float(np.linalg.norm(got - expected) / max(np.linalg.norm(expected), 1e-12))


def probe_vector(module: ServingModule) -> list[float]:
    """The float32 `embed`'s global representation of `probe_image(image_size)`; ExportError when it
    is not finite."""
    try:
        out = module.embed(images=tf.constant(probe_image(module.image_size)[None]))
    except tf.errors.InvalidArgumentError as e:
        raise ExportError(
            f"the model's embed is not finite on a test image ({e.message.splitlines()[0]}): its training "
            "diverged; train it again (with a lower learning rate) before exporting"
        ) from None
    return [float(v) for v in out["global_representation"][0].numpy()]


def check_finite_module(module: ServingModule) -> None:
    """Raises ExportError naming the layers with non-finite weights (a diverged model is not exported)."""
    layers = {layer.name: layer for layer in module.model.layers if layer.weights}
    layers[module.global_layer.name] = module.global_layer
    bad = checkpoints.nonfinite_layers(layers)
    if bad:
        raise ExportError(
            f"the model holds non-finite weights in layer {', '.join(bad[:3])}: its training diverged; "
            "train it again (with a lower learning rate) before exporting"
        )


def save(
    module: ServingModule,
    vocabulary: Vocabulary,
    export_dir: str,
    overwrite: bool = False,
    metadata: dict | None = None,
) -> str:
    """Writes the SavedModel to a temporary sibling of `export_dir`, then renames it into place.

    A reader therefore sees either the old export or the complete new one, never a half-written one.
    Temporaries of exports that were killed (`.<name>.tmp-<pid>-*`, owner dead) are removed first.
    Returns the absolute export directory. Raises ExportError for a model with non-finite weights.
    """
    export_dir = check_destination(export_dir, overwrite)
    check_finite_module(module)
    parent = os.path.dirname(export_dir)
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(export_dir)
    locks.remove_orphans(parent, [f".{name}.tmp-*", f".{name}.old-*"])
    tmp = tempfile.mkdtemp(dir=parent, prefix=f".{name}.tmp-{os.getpid()}-")
    try:
        locks.mark_owner(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; a server often runs as another user
        vocab_path = os.path.join(tmp, VOCABULARY_JSON)
        with open(vocab_path, "w", encoding="utf-8") as f:
            json.dump(vocabulary.to_json(), f, indent=2)
        module.vocabulary_file = tf.saved_model.Asset(vocab_path)  # copied into assets/ by save
        signatures = {"embed": module.embed, "manipulate": module.manipulate}
        if getattr(module, "model_bfloat16", None) is not None:
            signatures[BFLOAT16_EMBED] = module.embed_bfloat16
        signatures["embed" + RESIZED] = module.embed_resized
        if getattr(module, "model_bfloat16", None) is not None:
            signatures[BFLOAT16_EMBED + RESIZED] = module.embed_bfloat16_resized
        tf.saved_model.save(module, tmp, signatures=signatures)
        probe = probe_vector(module)
        info = {
            "format_version": 1,
            "signatures": list(signatures),
            "image_size": module.image_size,
            "precision": module.precision,
            "mean_bgr": list(module.mean_bgr),
            "num_values": module.num_values,
            "attribute_dim": int(module.global_layer.dim),
            "global_dim": int(module.global_layer.output_dim),
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            # What `embed` (float32) answers for `probe_image(image_size)`: a copy served elsewhere
            # (TensorFlow Serving) is checked against it (`remote.RemoteModel`).
            **({"probe": {"global_representation": probe}} if probe is not None else {}),
            **(metadata or {}),
        }
        with open(os.path.join(tmp, EXPORT_JSON), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
        os.remove(os.path.join(tmp, locks.OWNER_FILE))  # the name's PID still marks it until the rename
        _replace_dir(tmp, export_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return export_dir


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _replace_dir(src: str, dst: str, overwrite: bool) -> None:
    # A directory cannot be renamed over a non-empty one: move the old one aside first, then drop it.
    old = None
    if os.path.lexists(dst):
        if not overwrite:
            raise ExportError(f"{dst} already exists; pass --overwrite to replace it")
        old = tempfile.mkdtemp(
            dir=os.path.dirname(dst), prefix=f".{os.path.basename(dst)}.old-{os.getpid()}-"
        )
        os.rmdir(old)
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        if os.path.isdir(old) and not os.path.islink(old):
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.remove(old)


exportable_variants = configs.exportable_variants


def exportable_variant(
    workdir: str, info: schema.DatasetInfo, variant: str, progress: bool = True, precision: str = "float32"
):
    """A trained Table 1 variant (`trained.loading.load_variant`) made ready to export, its network
    computing in `precision` (resolved).

    Returns (network with the "tf" box backend, GlobalRepresentation layer, ModelConfig, metadata).
    Raises checkpoints.RestoreError when a stage has not been trained.
    """
    from fashionsearchnet_v2.trained import loading  # heavy imports only where needed

    if variant not in exportable_variants():
        raise ValueError(f"cannot export variant {variant!r}; exportable: {', '.join(exportable_variants())}")
    v = loading.load_variant(workdir, info, variant, progress)
    metadata = {"variant": variant, "workdir": os.path.abspath(workdir), "stage2_checkpoint": v.checkpoint}
    if v.stage3_checkpoint:
        metadata["stage3_checkpoint"] = v.stage3_checkpoint
    vocabulary = Vocabulary.from_info(info)
    net, model_cfg = exportable_network(v.model, v.config.model, vocabulary, precision)
    metadata["dataset"] = info.name
    metadata["dataset_fingerprint"] = info.fingerprint
    return net, v.layer, model_cfg, metadata


# ----------------------------------------------------------------------------------------------------
# Client side: what experiments.index and experiments.search use (TensorFlow only, like a server).


def absolute(path: str) -> str:
    """An absolute local path; a URI (gs://bucket/...) as it is."""
    return path if "://" in path else os.path.abspath(path)


class ExportInfo:
    """What an export says about itself, read without loading its graph: directory, vocabulary,
    `export.json` and the SavedModel's fingerprint. The directory may be local or any URI TensorFlow's
    file system reads (gs://...), as batch embedding on other machines needs; another (s3:// without
    tensorflow-io) is an ExportError naming the schemes it reads."""

    def __init__(self, export_dir: str):
        self.export_dir = absolute(export_dir)
        problem = file_system_problem(self.export_dir)
        if problem:  # s3:// without tensorflow-io: "holds no saved_model.pb" would be untrue
            raise ExportError(problem)
        if not tf.io.gfile.exists(os.path.join(self.export_dir, "saved_model.pb")):
            raise ExportError(
                f"{self.export_dir} holds no saved_model.pb; write one with `python -m experiments.export`"
            )
        self.vocabulary = Vocabulary.load(self.export_dir)
        try:
            with tf.io.gfile.GFile(os.path.join(self.export_dir, EXPORT_JSON), "r") as f:
                self.metadata = json.load(f)
        except (OSError, tf.errors.OpError, ValueError):
            self.metadata = {}
        try:
            self.fingerprint = tf.saved_model.experimental.read_fingerprint(self.export_dir).singleprint()
        except (ValueError, tf.errors.OpError):
            self.fingerprint = ""


class ExportedModel(ExportInfo):
    """A loaded export: its signatures, vocabulary and metadata.

    `embed` accepts images of different sizes. Images of one size go to `embed` in batches; where sizes
    are mixed (more batches that way than images / batch size) and the export has the `*_resized`
    signatures, every image is resized here with `embed`'s own resize (`resize_for_embed`, bit for bit the
    graph's) and they share batches of `embed_resized`: the same outputs up to float32 rounding (a batch's
    shape may change the network's last bits, as in `embed`), at full batches.
    """

    def __init__(self, export_dir: str, precision: str = "float32"):
        """`precision`: which embed to call. "float32" (default): `embed`, what the evaluation computes;
        "bfloat16": `embed_bfloat16` (ExportError when the export has none); "auto": `embed_bfloat16`
        where the export has it and this machine multiplies bfloat16 natively (training's rule,
        `precision.resolve`), else `embed`. `embed_precision` and `embed_reason` say which and why."""
        super().__init__(export_dir)
        self.loaded = tf.saved_model.load(self.export_dir)
        missing = [s for s in SIGNATURES if s not in self.loaded.signatures]
        if missing:
            raise ExportError(f"{self.export_dir} lacks the signatures {missing}")
        self.embed_precision, self.embed_reason = _choose_embed(self.loaded.signatures, precision, export_dir)
        name = BFLOAT16_EMBED if self.embed_precision == "bfloat16" else "embed"
        self._embed = self.loaded.signatures[name]
        self._manipulate = self.loaded.signatures["manipulate"]
        # Exports written before the resized signatures batch mixed sizes by size only.
        has_resized = name + RESIZED in self.loaded.signatures and self.metadata.get("image_size")
        self._embed_resized = self.loaded.signatures[name + RESIZED] if has_resized else None

    def embed(self, images: Sequence[np.ndarray], batch_size: int = 32) -> dict[str, np.ndarray]:
        """uint8 RGB images [H_i, W_i, 3] -> the `embed` outputs stacked in input order, [N, ...].

        Raises ExportError for an image that is not [H, W, 3]; the signature raises InvalidArgumentError
        when the model's outputs are not finite."""
        resized = None
        if self._embed_resized is not None:
            resized = (
                int(self.metadata["image_size"]),
                lambda batch: {k: v.numpy() for k, v in self._embed_resized(resized=batch).items()},
            )
        return embed_in_batches(
            images,
            batch_size,
            lambda batch: {k: v.numpy() for k, v in self._embed(images=tf.constant(batch)).items()},
            resized=resized,
        )

    def manipulate(self, attribute_representations, attributes, values) -> np.ndarray:
        """[N, A, D], int [N, M], int [N, M] (-1 = unused) -> global representations [N, r]."""
        out = self._manipulate(
            attribute_representations=tf.constant(np.asarray(attribute_representations, np.float32)),
            attributes=tf.constant(np.asarray(attributes, np.int32)),
            values=tf.constant(np.asarray(values, np.int32)),
        )
        return out["global_representation"].numpy()


def _choose_embed(signatures, precision: str, export_dir: str) -> tuple[str, str]:
    """(the embed's precision, why) for ExportedModel (see there)."""
    from fashionsearchnet_v2 import precision as precision_lib

    precision_lib.check(precision)
    has = BFLOAT16_EMBED in signatures
    if precision == "float32":
        return "float32", "embed (float32, as asked)"
    if precision == "bfloat16":
        if not has:
            raise ExportError(
                f"{export_dir} has no {BFLOAT16_EMBED} signature (exported before issue 26, or with "
                "--noembed_bfloat16): serve it with --precision=float32 or auto, or export it again"
            )
        return "bfloat16", f"{BFLOAT16_EMBED} (as asked)"
    if not has:
        return "float32", f"embed: the export has no {BFLOAT16_EMBED} signature"
    choice = precision_lib.resolve("auto")
    name = BFLOAT16_EMBED if choice.precision == "bfloat16" else "embed"
    return choice.precision, f"{name} ({choice.reason})"


def embed_in_batches(
    images: Sequence[np.ndarray],
    batch_size: int,
    run: Callable[[np.ndarray], dict[str, np.ndarray]],
    resized: tuple[int, Callable[[tf.Tensor], dict[str, np.ndarray]]] | None = None,
) -> dict[str, np.ndarray]:
    """The client side of `embed`, for a loaded export and for TensorFlow Serving alike: checks every
    image is uint8-able RGB [H, W, 3] (ExportError naming the first that is not, before anything runs),
    batches images only with others of their size, calls `run(uint8 [n, H, W, 3]) -> {output: [n, ...]}`
    per batch and returns the outputs stacked in input order, [N, ...].

    `resized`: (S, `run_resized(float32 [n, S, S, 3]) -> outputs`), an `embed_resized` signature. When
    batching by size would take more calls than the images need (mixed sizes), every image is resized
    here (`resize_for_embed`, `embed`'s own resize) and they go in input order, `batch_size` at a time."""
    groups: dict[tuple, list[int]] = {}
    for i, img in enumerate(images):
        shape = np.shape(img)
        if len(shape) != 3 or shape[-1] != 3 or min(shape) < 1:
            raise ExportError(f"image {i} has shape {shape}: embed takes RGB images [height, width, 3]")
        groups.setdefault(shape, []).append(i)
    calls = sum(-(-len(g) // batch_size) for g in groups.values())
    out: dict[str, np.ndarray] = {}

    def keep(chunk, outputs):
        for key, value in outputs.items():
            if key not in out:
                out[key] = np.zeros((len(images),) + value.shape[1:], value.dtype)
            out[key][chunk] = value

    if resized is not None and calls > -(-len(images) // batch_size):
        size, run_resized = resized
        for start in range(0, len(images), batch_size):
            chunk = list(range(start, min(start + batch_size, len(images))))
            batch = tf.stack([resize_for_embed(np.asarray(images[i], np.uint8), size) for i in chunk])
            keep(chunk, run_resized(batch))
        return out
    for positions in groups.values():
        for start in range(0, len(positions), batch_size):
            chunk = positions[start : start + batch_size]
            if len(chunk) == 1:  # a view, not a copy, of a lone image (an upload of up to --max_pixels)
                batch = np.asarray(images[chunk[0]], np.uint8)[None]
            else:
                batch = np.stack([np.asarray(images[i], np.uint8) for i in chunk])
            keep(chunk, run(batch))
    return out


def rest_request(signature_name: str, inputs: dict, columnar: bool = True) -> dict:
    """The JSON body of a TensorFlow Serving REST `:predict` request for one signature.

    Columnar (`"inputs": {name: batch}`) sends each named input as a whole batch; row format
    (`"instances": [{name: item}, ...]`) sends one object per query (all inputs share the batch size).
    """
    inputs = {k: np.asarray(v) for k, v in inputs.items()}
    if columnar:
        return {"signature_name": signature_name, "inputs": {k: v.tolist() for k, v in inputs.items()}}
    n = {len(v) for v in inputs.values()}
    if len(n) != 1:
        raise ValueError(f"row format needs one batch size for every input, got {sorted(n)}")
    instances = [{k: v[i].tolist() for k, v in inputs.items()} for i in range(n.pop())]
    return {"signature_name": signature_name, "instances": instances}


def rest_request_body(signature_name: str, inputs: dict) -> bytes:
    """`rest_request(signature_name, inputs)` (columnar) as compact JSON, byte for byte
    `json.dumps(..., separators=(",", ":"))`, with uint8 arrays (images) written by NumPy without Python
    lists: a 4 MP image's 51 MB body took 3.4 s and 0.5 GB through `.tolist()` and `json.dumps`, 0.5 s
    and 0.15 GB so. Other arrays (`manipulate`'s, small) go through `json.dumps`."""
    parts = [b'{"signature_name":', json.dumps(signature_name).encode(), b',"inputs":{']
    for i, (name, value) in enumerate(inputs.items()):
        value = np.asarray(value)
        parts += [b"," if i else b"", json.dumps(name).encode(), b":"]
        if value.dtype == np.uint8:
            _uint8_json(value, parts)
        else:
            parts.append(json.dumps(value.tolist(), separators=(",", ":")).encode())
    parts.append(b"}}")
    return b"".join(parts)


# The decimal digits of 0-255, left-aligned, NUL-padded (NUL is no JSON character: dropped at the end).
_UINT8_DIGITS = np.zeros((256, 3), np.uint8)
for _v in range(256):
    _UINT8_DIGITS[_v, : len(str(_v))] = np.frombuffer(str(_v).encode(), np.uint8)
del _v
_UINT8_JSON_CHUNK = 1 << 16  # numbers written at once: the temporaries stay small (about 0.5 MB)


def _uint8_json(a: np.ndarray, parts: list) -> None:
    """Appends to `parts` the compact JSON of `a.tolist()` (nested lists of 0-255)."""
    if a.ndim > 1 and a.size > _UINT8_JSON_CHUNK:  # the outer lists here, the inner ones at once
        parts.append(b"[")
        for i, sub in enumerate(a):
            if i:
                parts.append(b",")
            _uint8_json(sub, parts)
        parts.append(b"]")
        return
    if a.ndim == 0 or a.size == 0:
        parts.append(json.dumps(a.tolist(), separators=(",", ":")).encode())
        return
    # One cell per number: its digits, then what follows it: "," inside the innermost list, "],[" after
    # its last number, "]],[[" after the last of the list around that, ...; nothing after the very last.
    n = a.ndim
    cells = np.zeros(a.shape + (2 * n + 2,), np.uint8)
    cells[..., :3] = _UINT8_DIGITS[a]
    cells[..., 3] = ord(",")
    for level in range(1, n):
        between = np.frombuffer(b"]" * level + b"," + b"[" * level, np.uint8)
        cells[(Ellipsis,) + (-1,) * level + (slice(3, 3 + between.size),)] = between
    cells[(-1,) * n + (slice(3, None),)] = 0
    flat = cells.reshape(-1)
    parts += [b"[" * n, flat[flat != 0].tobytes(), b"]" * n]
