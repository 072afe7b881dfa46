"""FashionSearchNet-v2 as functional Keras models with named outputs (§3.1–3.2, Figure 2).

    image -> backbone (conv1..conv7) -> GAP -> w_a                      logits  (Eq. 1–2, L_C)
                                      \\-> AAM of the predicted class  maps    (Eq. 3)
                                           -> threshold + largest CC   boxes
    conv5, boxes -> ROI pooling (crop_and_resize) -> fc8_a -> fc9_a -> fc10_a   (attribute representations)
                                                               \\-> cls_a      fc10_logits (L_TC)

`build_network(..., stage="stage1")` is the classification network of stage 1; `stage="full"` adds the
localization and the attribute branches. Both name their layers alike, so stage 2 restores stage 1's
layers by name (`trained.checkpoints.restore_layers`).

`precision="bfloat16"` builds the same network under Keras' mixed policy (issue 16): the backbone, ROI
pooling and fc8/fc9 compute in bfloat16, every variable stays float32 (the checkpoints are the same).
Where bfloat16's 8-bit mantissa would change results the layers are float32 whatever the precision
(`FLOAT32`): the GAP classifiers (logits, softmax in the losses) and the AAMs, the 20% threshold and
the boxes, the box coordinates of ROI pooling, and fc10_a and cls_a (the representation the search
ranks and the L_TC logits).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import keras
import tensorflow as tf

from fashionsearchnet_v2 import precision as precision_lib
from fashionsearchnet_v2.configs import ModelConfig
from fashionsearchnet_v2.model import aam, backbone, roi

INPUT_NAME = "image"
#: The dtype of the float32 islands of a bfloat16 network (see the module docstring).
FLOAT32 = "float32"


def safe_name(name: str) -> str:
    """An attribute name as a layer-name fragment (`sleeve length` -> `sleeve_length`)."""
    return re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_") or "attr"


@keras.saving.register_keras_serializable(package="fashionsearchnet_v2")
class AttributeClassifier(keras.layers.Layer):
    """The per-attribute linear classifiers w_a on GAP(conv7) (Eq. 2) and their AAMs (Eq. 3).

    Input conv7 [B, h, w, K]. Outputs: logits [B, sum C_a] (attributes concatenated in order), and
    maps [B, A, h, w], the activation map of each attribute's predicted class. w_a has no bias, so
    the AAM of the predicted class is exactly the spatial map behind its GAP logit.
    """

    def __init__(self, num_values: Sequence[int], weight_names: Sequence[str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.num_values = [int(n) for n in num_values]
        self.weight_names = list(weight_names or [f"w_{i}" for i in range(len(self.num_values))])

    def build(self, input_shape):
        k = int(input_shape[-1])
        self.kernels = []
        for i, (name, n) in enumerate(zip(self.weight_names, self.num_values)):
            w = self.add_weight(name=name, shape=(k, n), initializer="glorot_uniform")
            # One attribute per kernel: tf.train.Checkpoint tracks attributes, not Keras' lists.
            setattr(self, f"kernel_{i}", w)
            self.kernels.append(w)

    def call(self, conv7):
        gap = tf.reduce_mean(conv7, axis=[1, 2])  # Eq. 1 (mean instead of sum: a constant scale)
        logits = [tf.matmul(gap, w) for w in self.kernels]
        maps = aam.activation_maps(conv7, self.kernels, logits)
        return tf.concat(logits, axis=-1), maps

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        return (b, sum(self.num_values)), (b, len(self.num_values), h, w)

    def get_config(self):
        return {**super().get_config(), "num_values": self.num_values, "weight_names": self.weight_names}


@keras.saving.register_keras_serializable(package="fashionsearchnet_v2")
class AamBoxes(keras.layers.Layer):
    """maps [B, A, h, w] -> boxes [B, A, 4] (ymin, xmin, ymax, xmax) normalised for crop_and_resize.

    `localization=False` gives whole-image boxes (the Rank and w/o Rank rows of Table 1). Boxes
    carry no gradient: they are discrete choices.
    """

    def __init__(self, threshold=0.2, backend="skimage", localization=True, **kwargs):
        super().__init__(**kwargs)
        self.threshold, self.backend, self.localization = threshold, backend, localization

    def call(self, maps):
        maps = tf.stop_gradient(maps)
        if not self.localization:
            shape = tf.shape(maps)
            return tf.tile(tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), [shape[0], shape[1], 1])
        if self.backend == "tf":
            return aam.boxes_from_maps_tf(maps, self.threshold)
        return aam.boxes_from_maps_numpy_op(maps, self.threshold)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], input_shape[1], 4)

    def get_config(self):
        return {
            **super().get_config(),
            "threshold": self.threshold,
            "backend": self.backend,
            "localization": self.localization,
        }


@keras.saving.register_keras_serializable(package="fashionsearchnet_v2")
class WholeImageBoxes(keras.layers.Layer):
    """features [B, h, w, C] -> [B, n, 4] boxes covering the whole map (feature fusion's global input)."""

    def __init__(self, n=1, **kwargs):
        super().__init__(**kwargs)
        self.n = n

    def call(self, features):
        return tf.tile(tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), [tf.shape(features)[0], self.n, 1])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.n, 4)

    def get_config(self):
        return {**super().get_config(), "n": self.n}


def attribute_branch(x, index: int, fragment: str, num_values: int, cfg: ModelConfig, seed: int, dtype=None):
    """Pooled features [B, F] -> (fc10_a [B, D], cls_a logits [B, C_a]). Dropout after every FC layer.

    fc8/fc9 compute in `dtype` (the run's policy); fc10_a and cls_a in float32 (module docstring)."""
    for j, units in enumerate(cfg.fc_sizes):
        name = f"fc{8 + j}_{fragment}"
        x = keras.layers.Dense(units, activation="relu", name=name, dtype=dtype)(x)
        x = keras.layers.Dropout(
            cfg.dropout, seed=seed + 97 * index + j, name=f"drop{8 + j}_{fragment}", dtype=dtype
        )(x)
    fc10 = keras.layers.Dense(cfg.fc10_size, name=f"fc10_{fragment}", dtype=FLOAT32)(x)
    x = keras.layers.Dropout(
        cfg.dropout, seed=seed + 97 * index + 50, name=f"drop10_{fragment}", dtype=FLOAT32
    )(fc10)
    logits = keras.layers.Dense(num_values, name=f"cls_{fragment}", dtype=FLOAT32)(x)
    return fc10, logits


def build_network(
    num_values: Sequence[int],
    attribute_names: Sequence[str],
    cfg: ModelConfig,
    stage: str = "full",
    seed: int = 0,
    name: str | None = None,
    precision: str = "float32",
    stored_bfloat16: bool = False,
    synchronized_batch_norm: bool = False,
) -> keras.Model:
    """Builds the stage-1 (`stage="stage1"`) or full network; outputs are a dict of named tensors.

    Outputs: logits [B, C] (GAP classifiers, C = sum of values), maps [B, A, h, w], gap [B, K]; and for the full
    network boxes [B, A, 4], fc10 [B, A, D] (attribute representations) and fc10_logits [B, C]; all float32.
    `precision` ("float32" or "bfloat16", resolved) is the compute dtype of everything but the float32
    islands (module docstring); the variables are float32 either way, except with `stored_bfloat16`
    (inference only: the export's `embed_bfloat16`), where the bfloat16 layers store them in bfloat16.
    `synchronized_batch_norm` (training on several replicas): BatchNorm's statistics are the global
    batch's (`backbone.build_backbone`).
    """
    if stage not in ("stage1", "full"):
        raise ValueError(f"stage must be 'stage1' or 'full', got {stage!r}")
    policy = precision_lib.layer_policy(precision, stored=stored_bfloat16)
    fragments = [safe_name(n) for n in attribute_names]
    if len(set(fragments)) != len(fragments):
        raise ValueError(f"attribute names collide as layer names: {fragments}")
    image = keras.Input((cfg.image_size, cfg.image_size, 3), name=INPUT_NAME)
    feats = backbone.build_backbone(
        image, cfg.width, cfg.conv5_filters, cfg.conv67_filters, cfg.lrn, cfg.batch_norm, cfg.input_scale,
        dtype=policy, synchronized_batch_norm=synchronized_batch_norm,
    )  # fmt: skip
    # The float32 islands take conv7 in bfloat16 and cast it up (Keras' autocast of layer inputs).
    logits, maps = AttributeClassifier(
        num_values, [f"w_{f}" for f in fragments], name="attribute_classifier", dtype=FLOAT32
    )(feats["conv7"])
    # image feature (AMNet's input), float32 like every output
    gap = keras.layers.GlobalAveragePooling2D(name="gap", dtype=FLOAT32)(feats["conv7"])
    outputs = {"logits": logits, "maps": maps, "gap": gap}
    if stage == "full":
        boxes = AamBoxes(
            cfg.aam_threshold, cfg.box_backend, cfg.localization, name="aam_boxes", dtype=FLOAT32
        )(maps)
        size = (cfg.roi_size, cfg.roi_size)
        grid = backbone.feature_grid_size(cfg.image_size)
        samples = roi.samples_per_bin(grid, cfg.roi_size) if cfg.roi_pooling == "max" else 1
        # RoiPooling keeps the boxes float32 and crops in float32 (crop_and_resize has no bfloat16 kernel);
        # its output is in the run's precision, for fc8.
        pooled = roi.RoiPooling(size, samples, name="roi_pooling", dtype=policy)(
            [feats["conv5"], boxes]
        )  # [B, A, r, r, C5]
        global_feats = None
        if cfg.feature_fusion:
            whole = WholeImageBoxes(1, name="whole_image_boxes", dtype=FLOAT32)(feats["conv5"])
            g = roi.RoiPooling(size, samples, name="global_pooling", dtype=policy)([feats["conv5"], whole])
            global_feats = keras.layers.Flatten(name="global_flat", dtype=policy)(g)
        fc10s, cls = [], []
        # One unstack instead of A slices: each slice's gradient would build a full-size zero tensor.
        per_attribute = keras.ops.unstack(pooled, num=len(num_values), axis=1)
        for a, (fragment, n) in enumerate(zip(fragments, num_values)):
            x = keras.layers.Flatten(name=f"roi_flat_{fragment}", dtype=policy)(per_attribute[a])
            if global_feats is not None:
                x = keras.layers.Concatenate(name=f"fusion_{fragment}", dtype=policy)([x, global_feats])
            f, c = attribute_branch(x, a, fragment, n, cfg, seed, dtype=policy)
            fc10s.append(f)
            cls.append(c)
        outputs["boxes"] = boxes
        outputs["fc10"] = keras.ops.stack(fc10s, axis=1)
        outputs["fc10_logits"] = keras.layers.Concatenate(name="fc10_logits", dtype=FLOAT32)(cls)
    return keras.Model(image, outputs, name=name or f"fashionsearchnet_v2_{stage}")


def split_logits(logits, num_values: Sequence[int]) -> list:
    """[B, C] -> A tensors [B, C_a]."""
    return tf.split(logits, list(num_values), axis=-1)
