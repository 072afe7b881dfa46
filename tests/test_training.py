"""Stages 1-3 on a tiny generated dataset: hand-off (checked partial restore), resume, TensorBoard tags,
the config guard between stages, and MirroredStrategy over two logical CPUs against one device."""

import dataclasses
import glob
import io
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.retrieval import evaluation
from fashionsearchnet_v2.trained import checkpoints
from fashionsearchnet_v2.training import run, stages, trainer


def _config(workdir, **train):
    cfg = configs.quick(configs.ExperimentConfig(dataset="synthetic", workdir=str(workdir)))
    cfg.train = dataclasses.replace(cfg.train, **train)
    return cfg


def _tags(directory):
    acc = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
    acc.Reload()
    return set(acc.Tags()["tensors"])


def test_stage1_writes_checkpoints_and_tensorboard_and_resumes(info, tmp_path):
    log = io.StringIO()
    run.run_stage1(_config(tmp_path, max_steps=2), info, out=log)
    s1 = os.path.join(tmp_path, "stage1")
    assert checkpoints.latest(os.path.join(s1, "ckpt")).endswith("ckpt-2")
    assert configs.read_config(s1).model.image_size == 64
    tags = _tags(os.path.join(s1, "tb"))
    assert {"L_C", "loss", "learning_rate", "images_per_second", "accuracy/train/color"} <= tags
    assert {"accuracy/heldout/color", "aam_boxes/heldout"} <= tags
    # A longer rerun (as after a kill) resumes at step 2 instead of starting over.
    log = io.StringIO()
    run.run_stage1(_config(tmp_path, max_steps=4), info, out=log)
    assert "resumed from" in log.getvalue() and "at step 2" in log.getvalue()
    assert "step 4/4" in log.getvalue() and "step 2/4" not in log.getvalue()
    assert checkpoints.latest(os.path.join(s1, "ckpt")).endswith("ckpt-4")
    # A finished stage is not retrained.
    log = io.StringIO()
    run.run_stage1(_config(tmp_path, max_steps=4), info, out=log)
    assert "already trained" in log.getvalue()


def test_a_resumed_stream_says_it_reads_past_the_steps_done(info, tmp_path):
    """Streaming (no decoded cache), a resumed stage reads past the records of its steps before its first
    step, which takes minutes on a large split: the log says so, and a decoded split needs no such pass."""
    log = io.StringIO()
    run.run_stage1(_config(tmp_path, max_steps=2, cache_decoded_mib=0), info, out=log)
    assert "resuming the input stream" not in log.getvalue()
    log = io.StringIO()
    run.run_stage1(_config(tmp_path, max_steps=4, cache_decoded_mib=0), info, out=log)
    assert "resuming the input stream: reading past the 16 records of the 2 steps done" in log.getvalue()
    log = io.StringIO()
    run.run_stage1(_config(tmp_path / "decoded", max_steps=2), info, out=log)
    run.run_stage1(_config(tmp_path / "decoded", max_steps=4), info, out=log)
    assert (
        "training split decoded once" in log.getvalue() and "resuming the input stream" not in log.getvalue()
    )


def test_stage2_restores_stage1_layers_and_trains_all_losses(info, tmp_path):
    cfg = _config(tmp_path, max_steps=2)
    with pytest.raises(checkpoints.RestoreError, match="run stage 1 first"):
        run.run_stage2(cfg, info, out=io.StringIO())
    stage1 = run.run_stage1(cfg, info, out=io.StringIO())
    log = io.StringIO()
    run.run_stage2(cfg, info, out=log)
    assert "restored 11 stage-1 layers" in log.getvalue()
    tags = _tags(os.path.join(tmp_path, "stage2_rank_l", "tb"))
    assert {"L_C", "L_T", "L_TC", "accuracy_fc10/heldout/color"} <= tags
    # The hand-off copies exactly stage 1's weights into a fresh full network.
    task = stages.Stage2Task(cfg, info, str(tmp_path / "x"), tf.distribute.get_strategy(),
                             os.path.join(tmp_path, "stage1"), None)  # fmt: skip
    fresh = task.build_model()
    task.initialize(fresh)
    for name in ("conv1", "conv5_g1", "attribute_classifier"):
        for a, b in zip(stage1.get_layer(name).get_weights(), fresh.get_layer(name).get_weights()):
            np.testing.assert_array_equal(a, b)


def test_stage2_refuses_a_stage1_of_another_shape(info, tmp_path):
    cfg = _config(tmp_path, max_steps=1)
    run.run_stage1(cfg, info, out=io.StringIO())
    other = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, conv67_filters=32))
    with pytest.raises(checkpoints.RestoreError, match="conv67_filters: stage 1 64 vs 32"):
        run.run_stage2(other, info, out=io.StringIO())


def test_stage3_trains_global_representation(info, tmp_path):
    cfg = _config(tmp_path, max_steps=1)
    run.run_stage1(cfg, info, out=io.StringIO())
    run.run_stage2(cfg, info, out=io.StringIO())
    cfg.stage3 = dataclasses.replace(cfg.stage3, update_memory=True, max_steps=3)
    log = io.StringIO()
    model = run.run_stage3(cfg, info, out=log)
    assert "trained (Full)" in log.getvalue()
    layer = model.get_layer("global_representation")
    assert layer.memory_block.trainable and layer.w_r.shape == (info.num_attributes * 16, 16)
    assert "L_G" in _tags(os.path.join(tmp_path, "stage3_rank_l_full", "tb"))
    assert glob.glob(os.path.join(tmp_path, "stage2_rank_l", "features", "train.npz"))
    # The evaluation is deterministic: twice on the same checkpoints, the same numbers.
    lines = []
    first = evaluation.evaluate_variant(
        str(tmp_path), info, "full", str(tmp_path / "e1"), figures_n=0, log=lines.append
    )
    # The filter baseline (decision 68) is evaluated beside it on the same searches, and printed.
    assert set(first["filtered"]) == {"manipulated", "unmanipulated"}
    assert first["filtered"]["unmanipulated"]["topk"].keys() == first["topk"].keys()
    assert any(line.startswith("filter baseline, Top-") for line in lines), lines
    for f in glob.glob(os.path.join(tmp_path, "stage2_rank_l", "features", "*.npz")):
        os.remove(f)  # recompute the features too
    second = evaluation.evaluate_variant(
        str(tmp_path), info, "full", str(tmp_path / "e2"), figures_n=0, log=str
    )
    assert first["searches"]["total"] > 0
    assert {k: v for k, v in first.items() if k != "seconds"} == {
        k: v for k, v in second.items() if k != "seconds"
    }


def _weights_after_steps(info, workdir, strategy):
    keras.utils.set_random_seed(0)
    # float32: equal to 1e-4 is float32's promise (bfloat16 rounds each replica's half batch differently)
    cfg = _config(
        workdir, max_steps=3, heldout_images=0, summary_images=0, shuffle_buffer=1, precision="float32"
    )
    cfg.model = dataclasses.replace(cfg.model, batch_norm=False)
    task = stages.Stage1Task(cfg, info, os.path.join(workdir, "stage1"), strategy)
    model = trainer.Trainer(task, os.path.join(workdir, "stage1"), strategy, total_steps=3, steps_per_epoch=3,
                            batch_size=8, log_every=3, checkpoint_every=3, out=io.StringIO()).run()  # fmt: skip
    return [v.numpy() for v in model.trainable_variables]


def test_mirrored_strategy_matches_one_device(info, tmp_path):
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "tests/conftest.py configures two logical CPUs before TensorFlow starts"
    single = _weights_after_steps(info, str(tmp_path / "one"), tf.distribute.get_strategy())
    mirrored = _weights_after_steps(info, str(tmp_path / "two"), trainer.make_strategy("mirrored"))
    assert trainer.make_strategy("mirrored").num_replicas_in_sync == 2
    for a, b in zip(single, mirrored):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _kill_at(monkeypatch, at_step):
    """Makes the training loop stop as a kill would, right after step `at_step` ran (not yet saved)."""
    from fashionsearchnet_v2.training import guard

    check = guard.check_step

    def check_then_kill(name, step, *args, **kwargs):
        check(name, step, *args, **kwargs)
        if step == at_step:
            raise KeyboardInterrupt(f"killed after step {step}")

    monkeypatch.setattr(guard, "check_step", check_then_kill)
    return lambda: monkeypatch.setattr(guard, "check_step", check)


def _weights(model):
    return {w.path: w.numpy() for w in model.weights}


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-6, atol=1e-7, err_msg=k)


@pytest.mark.parametrize("stage", ["stage1", "stage2"])
def test_a_run_resumed_after_a_kill_equals_one_that_never_stopped(info, tmp_path, monkeypatch, stage):
    """Killed mid-stage (after step 7, last checkpoint at 6, in the second epoch: 72 images, batch 8)
    and started again, a stage ends with the weights of the same run uninterrupted: the resume continues
    the input stream where it stopped and restores dropout's random state (stage 2: dropout, triplets)."""
    steps = dict(max_steps=12, checkpoint_every_steps=3, heldout_images=8, summary_images=0)
    first = run.run_stage1 if stage == "stage1" else run.run_stage2
    if stage == "stage2":  # one stage 1 for both runs
        run.run_stage1(_config(tmp_path / "whole", max_steps=2), info, out=io.StringIO())
        import shutil

        shutil.copytree(tmp_path / "whole" / "stage1", tmp_path / "killed" / "stage1")
    whole = _weights(first(_config(tmp_path / "whole", **steps), info, out=io.StringIO()))

    restore = _kill_at(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        first(_config(tmp_path / "killed", **steps), info, out=io.StringIO())
    restore()
    log = io.StringIO()
    resumed = _weights(first(_config(tmp_path / "killed", **steps), info, out=log))
    assert "at step 6" in log.getvalue() and "random-number state" not in log.getvalue()
    _assert_same_weights(whole, resumed)


def test_linear_warmup_ramps_to_the_rate_then_holds():
    schedule = trainer.LinearWarmup(0.01, 100)
    got = [float(schedule(s)) for s in (0, 49, 99, 100, 5000)]
    np.testing.assert_allclose(got, [0.0001, 0.005, 0.01, 0.01, 0.01], rtol=1e-6)
    cosine = trainer.make_optimizer("sgd", 0.01, 0.0, "cosine", 1000, warmup_steps=10).learning_rate
    assert float(cosine) == pytest.approx(0.001)  # step 0: a tenth of the cosine's start
    plain = trainer.make_optimizer("sgd", 0.01, 0.0, "constant", 1000, warmup_steps=0)
    assert float(plain.learning_rate) == pytest.approx(0.01)  # the paper: the full rate from step 1


def _logged(directory, tag):
    acc = event_accumulator.EventAccumulator(directory, size_guidance={"tensors": 0})
    acc.Reload()
    return {e.step: float(tf.make_ndarray(e.tensor_proto)) for e in acc.Tensors(tag)}


def test_warmup_ramps_each_stage_and_continues_across_a_resume(info, tmp_path):
    """Decision 64's schedule as trained (issue 25 asked whether it is what the decision says): stages 1
    and 2 each ramp from their own first step, and a stage 2 stopped at step 4 and resumed goes on where
    it stopped. TensorBoard logs, after step s, the rate of step s + 1: lr x min(1, (s + 1) / warm-up)."""
    warm = dict(warmup_steps=6, log_every_steps=1, checkpoint_every_steps=2, heldout_images=0)
    run.run_stage1(_config(tmp_path, max_steps=8, **warm), info, out=io.StringIO())
    run.run_stage2(_config(tmp_path, max_steps=4, **warm), info, out=io.StringIO())
    log = io.StringIO()
    run.run_stage2(_config(tmp_path, max_steps=8, **warm), info, out=log)
    assert "resumed from" in log.getvalue() and "at step 4" in log.getvalue()
    rate = _config(tmp_path).train.learning_rate
    want = {s: rate * min(1.0, (s + 1) / 6) for s in range(1, 9)}
    for stage in ("stage1", "stage2_rank_l"):
        got = _logged(os.path.join(tmp_path, stage, "tb"), "learning_rate")
        assert sorted(got) == sorted(want), stage
        np.testing.assert_allclose([got[s] for s in want], list(want.values()), rtol=1e-5, err_msg=stage)


@pytest.mark.parametrize("init", ["zeros", "glorot"])
def test_zero_initialised_classifiers_start_at_chance(info, tmp_path, init):
    """Decision 64: with w_a at zero every attribute's softmax is uniform, so stage 1's first loss is
    exactly Σ_a ln C_a; the framework's glorot start is not (here, as on real data, above it)."""
    cfg = _config(tmp_path, max_steps=1, log_every_steps=1, classifier_init=init, heldout_images=0)
    log = io.StringIO()
    run.run_stage1(cfg, info, out=log)
    first = float(log.getvalue().split(" L_C ")[1].split()[0])
    chance = sum(np.log(n) for n in info.num_values)
    if init == "zeros":
        assert first == pytest.approx(chance, abs=2e-3)  # (the log prints 3 decimals)
        assert "w_a start at zero" in log.getvalue()
    else:
        assert abs(first - chance) > 0.05


def test_periodic_checkpoints_skip_the_ones_an_epoch_end_is_about_to_write():
    """Issue 26: a save every 200 steps and one at each epoch's end wrote the main job's stage 2 twice
    within 3 steps (200 and 203); the periodic save now yields to an epoch end less than 100 steps on."""

    def saved(total, per_epoch, every):
        t = trainer.Trainer(None, "unused", None, total_steps=total, steps_per_epoch=per_epoch, batch_size=1,
                            log_every=10**6, checkpoint_every=every)  # fmt: skip
        return [d for d in range(1, total + 1) if d % per_epoch == 0 or d == total or t._periodic_save(d)]

    assert saved(812, 203, 200) == [203, 406, 609, 812]  # the embedded default: 4 saves, not 8
    assert saved(1668, 834, 200) == [200, 400, 600, 834, 1000, 1200, 1400, 1668]  # CelebA at 128 px
    assert saved(12, 9, 3) == [3, 6, 9, 12]  # small intervals keep every periodic save


def test_an_xla_compiled_step_computes_the_uncompiled_step():
    """`trainer.step_function(jit_compile=True)` (bench_train.py's `_xla` rows) runs the same step: the
    same loss and the same weights after two steps from the same start, in float32."""
    info = schema.DatasetInfo(name="bench", attributes=[schema.Attribute("a", ("x", "y", "z")),
                              schema.Attribute("b", ("u", "v"))], splits={}, seed=0, source="random")  # fmt: skip
    rng = np.random.default_rng(0)
    batch = {"image": tf.constant(rng.normal(0, 60, (4, 64, 64, 3)).astype(np.float32)),
             "labels": tf.constant(np.stack([rng.integers(0, 3, 4), rng.integers(0, 2, 4)], 1).astype(np.int32))}  # fmt: skip
    cfg = _config("unused", precision="float32", batch_size=4)
    cfg.model = dataclasses.replace(cfg.model, image_size=64, batch_norm=False)
    runs = []
    for jit in (False, True):
        keras.utils.set_random_seed(0)
        strategy = tf.distribute.get_strategy()
        task = stages.Stage1Task(cfg, info, "", strategy)
        model, optimizer, step = trainer.build_state(task, strategy, 2)
        start = [v.numpy() for v in model.trainable_variables]
        fn = trainer.step_function(task, strategy, model, optimizer, step, jit_compile=jit)
        assert bool(fn._jit_compile) is jit  # tf.function's own record of XLA compilation
        losses = [float(fn(batch)[0]["loss"]) for _ in range(2)]
        runs.append((start, losses, [v.numpy() for v in model.trainable_variables]))
    (start_a, loss_a, weights_a), (start_b, loss_b, weights_b) = runs
    for a, b in zip(start_a, start_b):
        np.testing.assert_array_equal(a, b)  # the same start
    assert any(not np.allclose(w, w0) for w, w0 in zip(weights_a, start_a))  # the steps moved the weights
    np.testing.assert_allclose(loss_a, loss_b, rtol=1e-4)
    for a, b in zip(weights_a, weights_b):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_a_run_shorter_than_an_epoch_says_which_fraction_of_one_it_ran(info, tmp_path):
    """`--max_steps` below an epoch keeps the epoch's length (72 training images in batches of 8: 9
    steps), so the progress line of step 4 says epoch 0.44, not 1.00."""
    cfg = configs.quick(configs.ExperimentConfig(dataset="synthetic", workdir=str(tmp_path)))
    assert info.splits["train"] == 72 and run.schedule(cfg, info) == (4, 9)
    long = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, max_steps=None, epochs=2.0))
    assert run.schedule(long, info) == (18, 9)
    log = io.StringIO()
    run.run_stage1(cfg, info, out=log)
    assert "step 4/4 (100%) epoch 0.44 " in log.getvalue(), log.getvalue()[-1500:]


def test_stages_1_and_2_can_leave_the_validation_carve_out(info, tmp_path):
    """Decision 72: with exclude_validation the training stream never yields an image of decision 59's
    carve, decoded or streamed alike (the same elements), an epoch is the rest, and `skip` still counts
    what is yielded (a resume lines up); without it, nothing changes."""
    from fashionsearchnet_v2.data import pipeline
    from fashionsearchnet_v2.retrieval import validation

    cfg = configs.quick(configs.ExperimentConfig(dataset="synthetic", workdir=str(tmp_path)))
    assert stages.left_out_ids(cfg, info) == []
    held_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, exclude_validation=True))
    ids = pipeline.split_ids(info, "train")
    carved = {i for i, h in zip(ids, validation.carve(ids, cfg.stage3.validation_fraction)) if h}
    left_out = stages.left_out_ids(held_cfg, info)
    assert set(left_out) == carved and 0 < len(carved) < len(ids)

    def stream(decoded=None, skip=0, leave_out=left_out, batches=12):
        ds = pipeline.make_dataset(info, "train", 64, 8, training=True, seed=3, skip=skip, decoded=decoded,
                                   leave_out=leave_out)  # fmt: skip
        return [x.decode() for batch in ds.take(batches) for x in batch["id"].numpy()]

    streamed = stream()
    decoded = pipeline.decode_split(info, "train", 1 << 30)
    assert stream(decoded) == streamed and not carved & set(streamed)
    assert len(set(streamed)) == len(ids) - len(carved)  # 96 draws over one epoch and more: every kept image
    assert stream(skip=8) == stream(batches=13)[8:104]
    assert carved & set(stream(leave_out=()))  # without it the carve is trained on, as before
    kept = len(ids) - len(carved)
    assert run.schedule(held_cfg, info)[1] == kept // cfg.train.batch_size


def test_the_carve_is_left_out_by_both_stages_or_neither(info, tmp_path):
    """A stage 2 that trains on the carve stage 1 left out (or the reverse), or a stage resumed with the
    other setting, would not hold the carve out: each is refused, naming the flag."""
    cfg = _config(tmp_path, max_steps=2, exclude_validation=True)
    log = io.StringIO()
    run.run_stage1(cfg, info, out=log)
    assert "training images left out for validation (--exclude_validation, decision 72)" in log.getvalue()
    with pytest.raises(checkpoints.RestoreError, match="left out the validation carve.*--exclude_validation"):
        run.run_stage2(_config(tmp_path, max_steps=2), info, out=io.StringIO())
    with pytest.raises(checkpoints.RestoreError, match=r"exclude_validation: True there vs False now"):
        run.run_stage1(_config(tmp_path, max_steps=4), info, out=io.StringIO())
    run.run_stage2(cfg, info, out=io.StringIO())  # the same setting: trains


def _config_json(directory):
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
        return f.read()


def test_a_resume_with_another_recipe_is_refused_naming_the_flag(info, tmp_path):
    """A stage resumed with another --batch_size (or optimiser, rate, λ) used to go on silently: the input
    stream skipped the new batch size's records and config.json named only the new recipe. Longer
    training and the speed switches stay free; a cosine rate refuses another length (it would jump)."""
    run.run_stage1(_config(tmp_path, max_steps=2), info, out=io.StringIO())
    before = _config_json(tmp_path / "stage1")
    for change, flag in [({"batch_size": 16}, "--batch_size: 8 there vs 16 now"),
                         ({"optimizer": "adam"}, "--optimizer: sgd there vs adam now"),
                         ({"lambda_c": 2.0}, "--lambda_c: 1.0 there vs 2.0 now")]:  # fmt: skip
        with pytest.raises(checkpoints.RestoreError, match="another recipe") as e:
            run.run_stage1(_config(tmp_path, max_steps=4, **change), info, out=io.StringIO())
        assert flag in str(e.value), str(e.value)
        assert _config_json(tmp_path / "stage1") == before  # nothing rewritten
    log = io.StringIO()
    run.run_stage1(_config(tmp_path, max_steps=3, log_every_steps=1, precision="float32"), info, out=log)
    assert "resumed from" in log.getvalue() and "at step 2" in log.getvalue()
    cosine = tmp_path / "cosine"
    run.run_stage1(_config(cosine, max_steps=2, lr_schedule="cosine"), info, out=io.StringIO())
    with pytest.raises(checkpoints.RestoreError, match=r"the cosine's length, in steps\): 2 there vs 4 now"):
        run.run_stage1(_config(cosine, max_steps=4, lr_schedule="cosine"), info, out=io.StringIO())


def test_what_is_built_on_a_stage_refuses_it_unfinished_or_moved_on(info, tmp_path, monkeypatch):
    """The evaluation and the export loaded a stage 2 killed half-way (its newest checkpoint) as if it were
    finished; stage 3 and its cached evaluation went on using a stage 3 fitted to the features of a stage
    2 that has since trained further. Both are refused now, naming the step or the checkpoint."""
    from fashionsearchnet_v2.trained import loading

    run.run_stage1(_config(tmp_path, max_steps=2), info, out=io.StringIO())
    run.run_stage2(_config(tmp_path, max_steps=2), info, out=io.StringIO())
    s3 = dataclasses.replace(configs.ExperimentConfig().stage3, max_steps=2, validation_fraction=0.0)
    cfg = dataclasses.replace(_config(tmp_path, max_steps=2), stage3=s3)
    run.run_stage3(cfg, info, out=io.StringIO())
    assert loading.load_variant(str(tmp_path), info, "rank_lg", progress=False).stage3_checkpoint
    from fashionsearchnet_v2.training import ablation

    cached = str(tmp_path / "eval_rank_lg")
    os.makedirs(cached)
    ablation.evaluate_cached(str(tmp_path), info, "rank_lg", cached, out=io.StringIO())
    with open(os.path.join(tmp_path, "stage3_rank_l_lg", "config.json"), encoding="utf-8") as f:
        assert '"built_on": "stage2_rank_l/ckpt/ckpt-2"' in f.read()
    # Stage 2 asked for 4 steps now, killed after step 3: its newest checkpoint is the first run's 2.
    longer = _config(tmp_path, max_steps=4)
    restore = _kill_at(monkeypatch, 3)
    with pytest.raises(KeyboardInterrupt):
        run.run_stage2(longer, info, out=io.StringIO())
    restore()
    with pytest.raises(checkpoints.RestoreError, match=r"stage 2 \(rank_l\) in .* stopped at step 2 of 4"):
        loading.load_variant(str(tmp_path), info, "rank_l", progress=False)
    with pytest.raises(checkpoints.RestoreError, match="stopped at step 2 of 4"):
        run.run_stage3(cfg, info, out=io.StringIO())
    run.run_stage2(longer, info, out=io.StringIO())  # finished: 4 of 4
    moved = r"trained on the features of stage2_rank_l/ckpt/ckpt-2, but stage2_rank_l/ckpt/ckpt-4 is there"
    with pytest.raises(checkpoints.RestoreError, match=moved):
        loading.load_variant(str(tmp_path), info, "rank_lg", progress=False)
    with pytest.raises(checkpoints.RestoreError, match=moved):  # not "reusing" the old results
        ablation.evaluate_cached(str(tmp_path), info, "rank_lg", cached, out=io.StringIO())
    with pytest.raises(checkpoints.RestoreError, match=moved):
        run.run_stage3(
            dataclasses.replace(cfg, stage3=dataclasses.replace(s3, max_steps=4)), info, out=io.StringIO()
        )


def test_a_resumed_stage_logs_each_step_to_tensorboard_once(info, tmp_path, monkeypatch):
    """Killed after step 8 (logged up to 7, last checkpoint at 6), the resumed stage trains 7 and 8 again:
    they used to be logged a second time into a new event file, so TensorBoard drew two points per step."""
    steps = dict(
        max_steps=12, log_every_steps=1, checkpoint_every_steps=3, heldout_images=8, summary_images=0
    )
    restore = _kill_at(monkeypatch, 8)
    with pytest.raises(KeyboardInterrupt):
        run.run_stage1(_config(tmp_path, **steps), info, out=io.StringIO())
    restore()
    import gc

    gc.collect()  # the killed run's writer flushes what it holds, as a process ends
    log = io.StringIO()
    run.run_stage1(_config(tmp_path, **steps), info, out=log)
    assert "TensorBoard holds steps up to 7 from before the kill" in log.getvalue()
    tb = os.path.join(tmp_path, "stage1", "tb")
    per_step = {}
    for path in glob.glob(os.path.join(tb, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            if any(v.tag == "L_C" for v in event.summary.value):
                per_step[event.step] = per_step.get(event.step, 0) + 1
    assert len(glob.glob(os.path.join(tb, "events.out.tfevents.*"))) == 2
    assert per_step == {s: 1 for s in range(1, 13)}


def test_a_resumed_stage_measures_loss_growth_from_the_stages_first_loss(info, tmp_path, monkeypatch):
    """The growth limit (guard.LossBound) was measured from the first loss the resumed process saw, often
    a tenth of the stage's first: a resume could stop as diverged where the run that never stopped goes
    on. The first run's first loss is kept in loss_reference.json and the resume measures from it."""
    from fashionsearchnet_v2.training import guard

    seen = []

    class Recorded(guard.LossBound):
        def exceeded(self, loss):
            seen.append((self.first, float(loss)))
            return super().exceeded(loss)

    monkeypatch.setattr(guard, "LossBound", Recorded)
    steps = dict(max_steps=8, checkpoint_every_steps=3, heldout_images=8, summary_images=0)
    restore = _kill_at(monkeypatch, 7)
    with pytest.raises(KeyboardInterrupt):
        run.run_stage1(_config(tmp_path, **steps), info, out=io.StringIO())
    restore()
    first_loss = seen[0][1]
    with open(tmp_path / "stage1" / "loss_reference.json", encoding="utf-8") as f:
        assert json.load(f) == {"first_loss": first_loss, "step": 1}
    seen.clear()
    run.run_stage1(_config(tmp_path, **steps), info, out=io.StringIO())  # resumes at step 6
    assert len(seen) == 2 and all(first == first_loss for first, _ in seen)
    assert seen[0][1] != first_loss  # the resumed process's own first loss is another
