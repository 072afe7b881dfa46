"""Each Table 1 variant builds the parts it should, and not the parts it should not (§4.3, §4.5)."""

import dataclasses

import numpy as np
import pytest

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.model import amnet, memory_block, network

NUM_VALUES = [3, 4, 2]
NAMES = ["color", "collar", "hem"]
TINY = configs.ModelConfig(
    image_size=64, width=0.125, conv5_filters=16, conv67_filters=16, fc_sizes=(8,), fc10_size=4, roi_size=2
)


def _stage2_model(variant):
    return network.build_network(NUM_VALUES, NAMES, configs.variant_model_config(variant, TINY), "full")


def _layer_types(model):
    return {type(layer).__name__ for layer in model.layers}


def test_every_table1_row_is_a_variant():
    assert list(configs.VARIANTS) == [
        "amnet_untrained", "amnet", "wo_rank", "rank", "rank_l", "rank_lg_untrained", "rank_lg", "full", "full_ff"
    ]  # fmt: skip
    # Each trained row has its step 0 beside it: AMNet's and stage 3's untrained controls.
    assert configs.VARIANTS["amnet_untrained"] == ("stage1", "amnet_untrained")
    # Stage 3's control is Rank-LG's step 0, built on the same stage 2.
    assert configs.VARIANTS["rank_lg_untrained"] == ("rank_l", "untrained")
    assert configs.VARIANTS["rank_lg"] == ("rank_l", "lg") and configs.VARIANTS["full_ff"] == (
        "rank_l_ff",
        "full",
    )


@pytest.mark.parametrize(
    "variant, localization, fusion, lambda_t",
    [
        ("wo_rank", False, False, 0.0),
        ("rank", False, False, 1.5),
        ("rank_l", True, False, 1.5),
        ("rank_l_ff", True, True, 1.5),
    ],
)
def test_stage2_variants(variant, localization, fusion, lambda_t):
    model = _stage2_model(variant)
    assert model.get_layer("aam_boxes").localization is localization
    names = {layer.name for layer in model.layers}
    assert ("global_pooling" in names) is fusion and ("fusion_color" in names) is fusion
    assert configs.variant_train_config(variant, configs.TrainConfig()).lambda_t == lambda_t
    # Every stage-2 variant has the attribute branches fc8..fc10 and the L_TC classifiers.
    for fragment in NAMES:
        assert {f"fc8_{fragment}", f"fc10_{fragment}", f"cls_{fragment}"} <= names
    if not fusion:
        # Without fusion, fc8 sees only the ROI features: roi_size^2 * conv5 channels.
        assert model.get_layer("fc8_color").kernel.shape[0] == 2 * 2 * 16
    else:
        assert model.get_layer("fc8_color").kernel.shape[0] == 2 * (2 * 2 * 16)


def test_stage1_has_no_branches_and_stage3_rows_differ_only_in_memory():
    stage1 = network.build_network(NUM_VALUES, NAMES, TINY, "stage1")
    assert not {"RoiPooling", "AamBoxes", "Dense"} & _layer_types(stage1)
    lg = memory_block.build_global_model(NUM_VALUES, 4, r=8, update_memory=False)
    full = memory_block.build_global_model(NUM_VALUES, 4, r=8, update_memory=True)
    assert [w.name for w in lg.trainable_weights] == ["lambda", "w_r"]
    assert sorted(w.name for w in full.trainable_weights) == ["lambda", "memory_block", "w_r"]


def test_rows_without_global_learning_use_the_plain_concatenation():
    layer = memory_block.GlobalRepresentation(NUM_VALUES, 4, identity=True)
    layer.build([(None, 3, 4), (None, 9)])
    assert layer.output_dim == 12 and [w.name for w in layer.weights] == ["memory_block"]


def test_amnet_has_memory_and_fusion_but_no_localization():
    model = amnet.build_amnet(NUM_VALUES, feature_dim=16)
    types = _layer_types(model)
    assert "AmnetMemory" in types and not {"RoiPooling", "AamBoxes", "GlobalRepresentation"} & types
    assert model.get_layer("amnet_memory").memory.shape == (9, 256)
    assert model.get_layer("amnet_fusion").kernel.shape == (16 + 256, 256)
    # What is searched is what the margin triplet ranks: unit vectors.
    rng = np.random.default_rng(0)
    out = model(
        {
            "features": rng.standard_normal((5, 16)).astype("float32"),
            "manipulation": np.zeros((5, 9), "float32"),
        }
    )
    np.testing.assert_allclose(np.linalg.norm(out["embedding"].numpy(), axis=-1), 1.0, rtol=1e-5)


def test_variant_model_config_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown stage-2 variant 'rank_x'"):
        configs.variant_model_config("rank_x", TINY)
    assert dataclasses.replace(TINY, localization=False) == configs.variant_model_config("rank", TINY)
