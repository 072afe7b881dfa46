"""Stage 1 from an earlier run (decision 69, `--init_from`): a new catalogue, or the same one grown, trains
from an earlier model's backbone instead of ImageNet's conv1-conv4. The backbone comes back exactly, the
attribute classifiers start fresh (their values may differ), and what cannot match is refused in one
line naming what differs."""

import dataclasses
import io
import os

import fixtures_formats as fx
import numpy as np
import pytest

from data_prep import celeba
from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.trained import checkpoints, loading
from fashionsearchnet_v2.training import run, stages, trainer


def _config(workdir, init_from=None, **model):
    cfg = configs.quick(configs.ExperimentConfig(dataset="synthetic", workdir=str(workdir)))
    cfg.train = dataclasses.replace(cfg.train, max_steps=2)
    cfg.model = dataclasses.replace(cfg.model, **model)
    cfg.init_from = init_from
    return cfg


def _started(cfg, info):
    """Stage 1's task for `cfg` on `info`: its model after `initialize`, and the line it logged."""
    task = stages.Stage1Task(cfg, info, os.path.join(cfg.workdir, "stage1"), trainer.make_strategy("default"))
    model = task.build_model()
    return model, task.initialize(model)


@pytest.fixture(scope="module")
def earlier(info, tmp_path_factory):
    """An earlier run's work directory on the embedded dataset: stage 1, then stage 2 (Rank-L)."""
    workdir = tmp_path_factory.mktemp("earlier")
    cfg = _config(workdir)
    run.run_stage1(cfg, info, out=io.StringIO())
    run.run_stage2(cfg, info, out=io.StringIO())
    return workdir


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Another dataset with other attributes (a few CelebA-format faces): 8 attributes, 21 values."""
    root = tmp_path_factory.mktemp("faces")
    rows = [(f"{i:06d}.jpg", ("Smiling",) if i % 2 else ("Male", "Eyeglasses")) for i in range(1, 9)]
    fx.write_celeba(str(root / "raw"), rows, images=[r[0] for r in rows])
    return celeba.convert(str(root / "raw"), str(root / "data"), num_query=1, num_gallery=2, progress=False)


def test_the_backbone_comes_from_the_earlier_stage_and_the_classifiers_start_fresh(
    earlier, info, faces, tmp_path
):
    trained = {
        "stage1": loading.load_stage1(str(earlier), info)[0],
        "stage2_rank_l": loading.load_stage2(str(earlier), info, "rank_l")[0],
    }
    assert faces.attribute_names != info.attribute_names
    for source, model_there in trained.items():
        cfg = _config(tmp_path / source, init_from=str(earlier / source))
        cfg.train = dataclasses.replace(cfg.train, classifier_init="zeros")
        model, line = _started(cfg, faces)
        backbone = sorted(n for n in checkpoints.layer_dict(model) if n != "attribute_classifier")
        assert len(backbone) >= 7 and f"started {len(backbone)} backbone layers" in line, line
        for name in backbone:
            for here, there in zip(model.get_layer(name).weights, model_there.get_layer(name).weights):
                np.testing.assert_array_equal(here.numpy(), there.numpy(), err_msg=f"{source}: {name}")
        # w_a: this dataset's shapes, at their fresh start (zeros, asked for), not the earlier run's.
        kernels = model.get_layer("attribute_classifier").kernels
        assert [int(k.shape[-1]) for k in kernels] == faces.num_values
        assert all(not np.any(k.numpy()) for k in kernels)
    # Stage 2 trained the backbone on, so the two starts differ: each really came from its own stage.
    assert not np.array_equal(
        trained["stage1"].get_layer("conv3").weights[0].numpy(),
        trained["stage2_rank_l"].get_layer("conv3").weights[0].numpy(),
    )


def test_what_cannot_match_is_refused_naming_it(earlier, info, tmp_path):
    other = _config(tmp_path / "bn", init_from=str(earlier / "stage1"), batch_norm=True, lrn=False)
    with pytest.raises(checkpoints.RestoreError, match=r"--init_from=.*batch_norm: False there, True here"):
        _started(other, info)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(
        checkpoints.RestoreError, match=r"--init_from=.*empty: no checkpoint in .*expected a stage"
    ):
        _started(_config(tmp_path / "e", init_from=str(empty)), info)
    both = _config(tmp_path / "both", init_from=str(earlier / "stage1"))
    both.alexnet_weights = "bvlc_alexnet.npy"
    with pytest.raises(ValueError, match="--alexnet_weights and --init_from both"):
        _started(both, info)


def test_a_run_from_an_earlier_one_says_so_and_a_resume_continues_its_own_checkpoint(earlier, info, tmp_path):
    cfg = _config(tmp_path, init_from=str(earlier / "stage1"))
    log = io.StringIO()
    run.run_stage1(cfg, info, out=log)
    assert "(--init_from); the attribute classifiers w_a start fresh" in log.getvalue()
    assert configs.read_config(str(tmp_path / "stage1")).init_from == str(earlier / "stage1")
    # Resumed with a source that no longer exists: the stage's own checkpoint is all it reads.
    more = dataclasses.replace(cfg, init_from=str(tmp_path / "gone"))
    more.train = dataclasses.replace(cfg.train, max_steps=4)
    log = io.StringIO()
    run.run_stage1(more, info, out=log)
    said = log.getvalue()
    assert "started" not in said and "step 4/4" in said, said[-2000:]
    assert f"resuming: --init_from={tmp_path / 'gone'} is not read" in said
    assert configs.read_config(str(tmp_path / "stage1")).init_from == str(earlier / "stage1")  # the start
