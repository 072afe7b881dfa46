"""bfloat16 where the processor has it (issue 16): the choice of `--precision=auto` (CPU flags and GPU
capabilities faked), the float32 islands of a bfloat16 network (losses, AAMs and boxes, representations,
the memory block, distances), training resumed across precisions, and a bfloat16 export whose outputs
are float32 and rank like the float32 export's."""

import dataclasses
import io
import json
import os

import keras
import ml_dtypes
import numpy as np
import pytest
import tensorflow as tf

from fashionsearchnet_v2 import configs, losses, precision
from fashionsearchnet_v2.data import synthetic
from fashionsearchnet_v2.model import aam, memory_block, network
from fashionsearchnet_v2.retrieval import metrics
from fashionsearchnet_v2.serving import export
from fashionsearchnet_v2.trained import loading
from fashionsearchnet_v2.training import run, stages

# /proc/cpuinfo as Linux writes it (two processors, abridged). avx512_vnni alone is int8, not bfloat16.
PLAIN = "flags\t\t: fpu vme sse sse2 avx avx2 avx512f avx512bw avx512_vnni"
CPUINFO = {
    "epyc": f"processor\t: 0\nvendor_id\t: AuthenticAMD\n{PLAIN} avx512_bf16\n\nprocessor\t: 1\n{PLAIN} avx512_bf16\n",
    "sapphire_rapids": f"processor\t: 0\n{PLAIN} avx512_bf16 amx_bf16 amx_tile amx_int8\n",
    "amx_only": f"processor\t: 0\n{PLAIN} amx_bf16 amx_tile\n",
    "skylake": f"processor\t: 0\nvendor_id\t: GenuineIntel\n{PLAIN}\n",
    "none": "",  # no /proc/cpuinfo (another OS)
}


@pytest.mark.parametrize(
    "asked,cpu,gpus,expected,reason",
    [
        ("auto", "epyc", [], "bfloat16", "auto: the CPU has avx512_bf16"),
        ("auto", "sapphire_rapids", [], "bfloat16", "auto: the CPU has avx512_bf16, amx_bf16"),
        ("auto", "amx_only", [], "bfloat16", "auto: the CPU has amx_bf16"),
        ("auto", "skylake", [], "float32", "auto: the CPU has neither avx512_bf16 nor amx_bf16"),
        ("auto", "none", [], "float32", "neither"),
        # With GPUs TensorFlow runs the model there, so they decide, whatever the CPU has.
        ("auto", "skylake", [(8, 0)], "bfloat16", "GPU compute capability 8.0"),
        ("auto", "skylake", [(9, 0), (8, 6)], "bfloat16", "9.0, 8.6"),
        ("auto", "epyc", [(7, 5)], "float32", "GPU compute capability 7.5, below 8.0"),
        ("auto", "epyc", [(8, 0), (7, 0)], "float32", "below 8.0"),
        # Asked for explicitly: given, and said when the device only emulates it.
        ("float32", "epyc", [(8, 0)], "float32", "as asked"),
        ("bfloat16", "epyc", [], "bfloat16", "as asked; the CPU has avx512_bf16"),
        ("bfloat16", "skylake", [], "bfloat16", "emulated and slower than float32"),
    ],
)
def test_auto_picks_bfloat16_only_where_the_device_has_it(asked, cpu, gpus, expected, reason):
    choice = precision.resolve(asked, cpuinfo=CPUINFO[cpu], capabilities=gpus)
    assert choice.precision == expected
    assert reason in choice.reason, choice.reason
    assert str(choice).startswith(f"precision {expected} (")


def test_precision_values_are_checked():
    assert precision.cpu_flags(CPUINFO["epyc"]) >= {"avx512_bf16", "avx512_vnni", "fpu"}
    with pytest.raises(ValueError, match="precision must be one of auto, float32, bfloat16, got 'fp16'"):
        configs.TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="needs a resolved precision"):
        precision.layer_policy("auto")
    assert precision.layer_policy("bfloat16").name == "mixed_bfloat16"
    assert precision.layer_policy("float32").name == "float32"


def _quick_model(**changes):
    return dataclasses.replace(configs.quick(configs.ExperimentConfig()).model, **changes)


def _computed_in_float32(x) -> bool:
    """Some value is not a bfloat16 number: it was not computed in bfloat16 and cast up afterwards."""
    x = np.asarray(x, np.float32)
    return bool(np.any(x != x.astype(ml_dtypes.bfloat16).astype(np.float32)))


def test_a_bfloat16_network_keeps_its_float32_islands(info):
    cfg = _quick_model(feature_fusion=True, box_backend="tf")
    model = network.build_network(info.num_values, info.attribute_names, cfg, "full", precision="bfloat16")
    # The heavy part computes in bfloat16, the variables are float32 (the same checkpoints).
    for name in ("conv1", "conv3", "conv5_g0", "conv7", "roi_pooling", "global_pooling", "fc8_color"):
        assert model.get_layer(name).compute_dtype == "bfloat16", name
    assert {v.dtype for v in model.variables} == {"float32", "int64"}  # (int64: dropout seeds)
    conv5 = keras.Model(model.input, model.get_layer("conv5_concat").output)
    images = np.random.default_rng(0).normal(0, 60, (4, 64, 64, 3)).astype(np.float32)
    assert conv5(images).dtype == tf.bfloat16
    # The islands: GAP classifiers (logits and AAMs), boxes, fc10 and cls: float32, computed in float32.
    for name in ("attribute_classifier", "gap", "aam_boxes", "fc10_color", "cls_color", "fc10_logits"):
        assert model.get_layer(name).compute_dtype == "float32", name
    out = model(images, training=False)
    assert {k: v.dtype for k, v in out.items()} == {k: tf.float32 for k in out}
    for key in ("logits", "maps", "fc10", "fc10_logits"):
        assert _computed_in_float32(out[key]), key
    # The 20% threshold and the boxes: from the float32 maps, exactly as the float32 reference path.
    np.testing.assert_array_equal(
        out["boxes"].numpy(), aam.boxes_from_maps(out["maps"].numpy(), cfg.aam_threshold)
    )


def test_losses_memory_block_and_distances_stay_float32_under_bfloat16(info, tmp_path):
    cfg = configs.quick(configs.ExperimentConfig(dataset="synthetic", workdir=str(tmp_path)))
    cfg.train = dataclasses.replace(cfg.train, precision="bfloat16")
    task = stages.Stage2Task(cfg, info, str(tmp_path), tf.distribute.get_strategy(), "", None)
    model = task.build_model()
    optimizer = task.build_optimizer(4)
    optimizer.build(model.trainable_variables)
    batch = next(iter(task.build_inputs(0)))
    before = [v.numpy() for v in model.trainable_variables]
    result = task.train_step(model, optimizer, batch, tf.constant(0, tf.int64))
    for key in ("loss", "L_C", "L_T", "L_TC"):
        assert result[key].dtype == tf.float32 and np.isfinite(result[key].numpy()), key
    changed = [not np.array_equal(a, v.numpy()) for a, v in zip(before, model.trainable_variables)]
    assert all(v.dtype == "float32" for v in model.trainable_variables) and sum(changed) > 10
    # The losses take bfloat16 inputs and compute in float32.
    fc10 = tf.cast(tf.random.stateless_normal([8, 2, 4], [1, 2]), tf.bfloat16)
    labels = tf.constant([[0, 1], [1, 0]] * 4)
    pos, neg, valid = losses.mine_triplets(labels, tf.constant([3, 4]))
    assert losses.attribute_ranking_loss(fc10, pos, neg, valid).dtype == tf.float32
    assert losses.classification_loss([fc10[:, 0, :2], fc10[:, 1, :2]], labels).dtype == tf.float32
    # The memory block (stage 3) reads bfloat16 representations as float32: the same result as float32 ones.
    layer = memory_block.GlobalRepresentation([2, 2], 4, r=3, name="global_representation")
    t = tf.constant(np.eye(4, dtype=np.float32)[[0, 3, 1, 2, 0, 0, 1, 3]])
    f_bf16, f_f32 = layer([fc10, t]), layer([tf.cast(fc10, tf.float32), t])
    assert f_bf16.dtype == tf.float32 and layer.memory_block.dtype == "float32"
    np.testing.assert_array_equal(f_bf16.numpy(), f_f32.numpy())
    # Distances of the search and the evaluation: float32 whatever the vectors' type.
    queries = np.asarray(f_bf16.numpy(), ml_dtypes.bfloat16)
    idx, dist = metrics.search_topk(queries, f_f32.numpy(), 3)
    assert dist.dtype == np.float32 and idx.shape == (8, 3)


def _config(workdir, **train):
    cfg = configs.quick(configs.ExperimentConfig(dataset="synthetic", workdir=str(workdir)))
    cfg.train = dataclasses.replace(cfg.train, **train)
    return cfg


def test_a_run_resumes_in_the_other_precision(info, tmp_path):
    """Checkpoints do not depend on the precision: stage 1 starts in bfloat16 and resumes in float32,
    stage 2 the other way round; config.json records what the last run used, and the evaluation loads
    the stage in float32."""
    s1 = os.path.join(tmp_path, "stage1")
    for steps, asked in ((2, "bfloat16"), (4, "float32")):
        log = io.StringIO()
        run.run_stage1(_config(tmp_path, max_steps=steps, precision=asked), info, out=log)
        assert f"[stage1] precision {asked}" in log.getvalue()
        assert configs.read_config(s1).train.precision == asked
    assert "resumed from" in log.getvalue() and "at step 2" in log.getvalue() and "step 4/4" in log.getvalue()
    for steps, asked in ((2, "float32"), (4, "bfloat16")):
        log = io.StringIO()
        run.run_stage2(_config(tmp_path, max_steps=steps, precision=asked), info, out=log)
        assert f"[stage2] precision {asked}" in log.getvalue()
    assert "resumed from" in log.getvalue() and "at step 2" in log.getvalue() and "step 4/4" in log.getvalue()
    model, path, cfg = loading.load_stage2(str(tmp_path), info, "rank_l")
    assert path.endswith("ckpt-4") and cfg.train.precision == "bfloat16"
    assert model.get_layer("conv3").compute_dtype == "float32"  # evaluation and stage 3 features: float32


def test_bfloat16_export_outputs_float32_and_ranks_like_the_float32_one(tmp_path):
    vocab = export.Vocabulary(tuple(synthetic.ATTRIBUTES))
    cfg = _quick_model(box_backend="skimage")
    keras.utils.set_random_seed(5)
    model = network.build_network(vocab.num_values, vocab.names, cfg, "full")
    layer = memory_block.identity_global_layer(
        np.random.default_rng(0).normal(size=(sum(vocab.num_values), cfg.fc10_size)), vocab.num_values
    )
    outs, dirs = {}, {}
    for p in ("float32", "bfloat16"):
        net, net_cfg = export.exportable_network(model, cfg, vocab, precision=p)
        dirs[p] = export.save(export.ServingModule(net, layer, vocab, 64), vocab, str(tmp_path / p))
        images = np.random.default_rng(1).integers(0, 256, (48, 64, 64, 3), dtype=np.uint8)
        outs[p] = export.ExportedModel(dirs[p]).embed(list(images))
    for p in outs:
        with open(os.path.join(dirs[p], export.EXPORT_JSON), encoding="utf-8") as f:
            assert json.load(f)["precision"] == p
        assert {k: v.dtype for k, v in outs[p].items() if v.dtype.kind == "f"} == {
            k: np.float32 for k in ("attribute_representations", "global_representation", "predicted_probabilities", "boxes", "maps")
        }  # fmt: skip
    a, b = outs["float32"]["global_representation"], outs["bfloat16"]["global_representation"]
    assert not np.array_equal(a, b)  # the bfloat16 export really computes in bfloat16
    cosine = np.sum(a * b, 1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    # A box can move where bfloat16 tips an AAM cell over the 20% threshold (then that attribute's fc10
    # changes); elsewhere the representations agree to bfloat16's precision.
    same_boxes = np.all(outs["float32"]["boxes"] == outs["bfloat16"]["boxes"], axis=-1)
    print(
        f"cosine median {np.median(cosine):.6f} min {cosine.min():.4f}; boxes equal {same_boxes.mean():.3f}"
    )
    assert np.median(cosine) > 0.999 and same_boxes.mean() >= 0.9, (np.median(cosine), same_boxes.mean())
    # Ranking agreement: each image's 10 nearest neighbours among the others, by either export.
    near = {p: metrics.search_topk(v, v, 11)[0][:, 1:] for p, v in
            ((p, outs[p]["global_representation"]) for p in outs)}  # fmt: skip
    overlap = np.mean([len(set(x) & set(y)) / 10 for x, y in zip(near["float32"], near["bfloat16"])])
    print(f"top-10 overlap {overlap:.3f}")
    assert overlap >= 0.8, overlap
