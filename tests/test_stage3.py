"""Stage 3 as issue 15 asks: the paper's enumeration of manipulations, near negatives, the validation split
carved from the training split (never query or gallery), selection that cannot end below step 0, and the
untrained control that is exactly Rank-LG at step 0."""

import dataclasses
import io
import itertools
import json
import os
import shutil

import numpy as np
import pytest
from tensorboard.backend.event_processing import event_accumulator

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.data import pipeline, schema
from fashionsearchnet_v2.retrieval import validation
from fashionsearchnet_v2.trained import features, loading
from fashionsearchnet_v2.training import ablation, run, stage3, trainer

NUM_VALUES = [3, 2, 4]


def _labels(n, seed=0, unlabelled=0.0):
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(v, size=n) for v in NUM_VALUES], axis=1)
    labels[rng.random(labels.shape) < unlabelled] = -1
    return labels


def test_enumerator_walks_every_manipulation_with_a_positive():
    labels = _labels(40, unlabelled=0.1)
    enum = stage3.ManipulationEnumerator(labels, NUM_VALUES)
    expected = set()
    for i, row in enumerate(labels):
        for a, n in enumerate(NUM_VALUES):
            if row[a] < 0:
                continue
            for v in range(n):
                if v == row[a]:
                    continue
                target = row.copy()
                target[a] = v
                ok = ((labels == target) | (target < 0)).all(axis=1)
                if ok.any():
                    expected.add((i, a, v))
    got = set(zip(enum.anchor.tolist(), enum.attribute.tolist(), enum.value.tolist()))
    assert got == expected and len(expected) > 20
    rng = np.random.default_rng(1)
    for _ in range(5):
        idx = np.arange(len(enum))
        pos = enum.positives(idx, rng)
        t = enum.target[idx]
        assert (
            ((labels[pos] == t) | (t < 0)).all(axis=1)
        ).all()  # every positive has the target's attributes
        assert not (pos == enum.anchor).any()


def test_fixed_triplets_are_the_same_every_call_and_their_positives_have_the_target():
    """Stage 3's and AMNet's held-out loss is scored on one fixed draw (stage3.fixed_triplets)."""
    labels = _labels(60, seed=3, unlabelled=0.1)
    first, again = (stage3.fixed_triplets(labels, NUM_VALUES, limit=50) for _ in range(2))
    assert all(np.array_equal(x, y) for x, y in zip(first, again))
    anchor, attribute, value, positive, negative = first
    assert len(anchor) == 50 and len(set(zip(anchor.tolist(), attribute.tolist(), value.tolist()))) == 50
    target = labels[anchor].copy()
    target[np.arange(50), attribute] = value
    assert (value != labels[anchor, attribute]).all()
    assert (((labels[positive] == target) | (target < 0)).all(axis=1)).all()
    assert ((0 <= negative) & (negative < len(labels))).all()
    assert stage3.fixed_triplets(labels[:1], NUM_VALUES) is None  # one image: no target has a positive


def test_near_negatives_miss_the_target_by_exactly_one_attribute():
    labels = _labels(400, seed=2)
    targets = labels[:50].copy()
    targets[:, 0] = (targets[:, 0] + 1) % NUM_VALUES[0]
    neg = stage3.near_negatives(labels, targets, NUM_VALUES, np.random.default_rng(0))
    differing = (labels[neg] != targets).sum(axis=1)
    assert (differing == 1).all()  # 400 images over 24 combinations: every near neighbour exists


def test_validation_carve_is_fixed_by_ids_not_by_order():
    ids = np.array([f"img{i:05d}" for i in range(5000)])
    held = validation.carve(ids, 0.1)
    assert 0.08 < held.mean() < 0.12
    perm = np.random.default_rng(0).permutation(len(ids))
    np.testing.assert_array_equal(validation.carve(ids[perm], 0.1), held[perm])
    assert not validation.carve(ids, 0.0).any()
    q = validation.query_mask(ids[held], 1 / 3)
    assert 0.25 < q.mean() < 0.42
    with pytest.raises(ValueError, match="validation fraction"):
        validation.carve(ids, 1.0)


def _fake_features(n=900, dim=4, seed=0):
    """fc10 whose attribute blocks carry their label (plus noise): a stage 2 that learned something."""
    rng = np.random.default_rng(seed)
    labels = _labels(n, seed)
    centres = [rng.normal(size=(v, dim)) for v in NUM_VALUES]
    fc10 = np.stack([centres[a][labels[:, a]] + 0.6 * rng.normal(size=(n, dim)) for a in range(3)], axis=1)
    return {"fc10": fc10.astype(np.float32), "labels": labels, "ids": np.array([f"x{i}" for i in range(n)])}


def _info():
    attrs = [schema.Attribute(f"a{i}", [f"v{j}" for j in range(n)]) for i, n in enumerate(NUM_VALUES)]
    return schema.DatasetInfo(name="fake", attributes=attrs, splits={"train": 900}, seed=0, source="test")


def _train(workdir, feats, steps, out=None, steps_per_call=1, log_every=10**6, **s3):
    cfg = configs.ExperimentConfig(stage="stage3")
    cfg.stage3 = dataclasses.replace(cfg.stage3, r=8, batch_size=32, **s3)
    task = stage3.Stage3Task(cfg, _info(), feats, str(workdir))
    per_epoch = task.steps_per_epoch()
    model = trainer.Trainer(task, str(workdir), trainer.make_strategy("default"), total_steps=steps,
                            steps_per_epoch=min(per_epoch, steps), batch_size=32, log_every=log_every,
                            checkpoint_every=10**6, steps_per_call=steps_per_call,
                            out=out or io.StringIO()).run()  # fmt: skip
    return task, model


def test_several_steps_per_call_train_the_same_weights_and_log_the_same_lines(
    tmp_path, autograph_conversions
):
    """Stage 3's default runs 100 steps per tf.function call; it must be step-by-step training exactly:
    the same weights bit for bit, the same logged losses, the same validated epochs (epochs of 22 steps
    here, so calls of 5 are cut at log lines and epoch ends). Nothing of it is autograph-converted (P9:
    the loop is an explicit tf.while_loop)."""
    feats = _fake_features()
    runs = {}
    for n in (1, 5):
        out = io.StringIO()
        task, model = _train(tmp_path / f"n{n}", feats, 50, out=out, steps_per_call=n, log_every=3,
                             sampling="images")  # fmt: skip
        lines = [line.split(" | ")[0] for line in out.getvalue().splitlines() if "] step " in line]
        runs[n] = (model.get_weights(), lines, task.history, task.steps_per_epoch())
    (w1, lines1, hist1, per_epoch), (w5, lines5, hist5, _) = runs[1], runs[5]
    assert per_epoch == 22 and len(hist1) == 4  # step 0 and the ends of steps 22, 44 and the last, 50
    assert lines1 == lines5 and len(lines1) >= 7
    assert hist1 == hist5  # validated on the same states: Top-20, L_G, λ and M's shift to the last digit
    assert len(w1) == len(w5) and all(np.array_equal(a, b) for a, b in zip(w1, w5))
    one_step = _train(tmp_path / "one", feats, 1)[1].get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(w5, one_step))  # the 50 steps did run
    assert autograph_conversions == []


def test_validation_images_never_enter_a_triplet_or_the_memory_block(tmp_path):
    feats = _fake_features()
    task, _ = _train(tmp_path, feats, 1)
    held = validation.carve(feats["ids"], task.s3.validation_fraction)
    assert set(task.ids).isdisjoint(feats["ids"][held]) and len(task.ids) == (~held).sum()
    assert task.validation is not None and len(task.validation) > 50
    batch = next(task._batches(0))
    train_rows = {r.tobytes() for r in feats["fc10"][~held]}
    for part in (batch[0], batch[2], batch[3]):  # anchors, positives, negatives
        assert all(r.tobytes() in train_rows for r in part)
    m, _ = stage3.memory_block.build_memory_block(feats["fc10"][~held], feats["labels"][~held], NUM_VALUES)
    np.testing.assert_allclose(task.memory, m)


def test_selection_keeps_step_0_when_learning_makes_validation_worse(tmp_path):
    feats = _fake_features()
    # A learning rate that wrecks the representation in a few steps.
    task, model = _train(tmp_path, feats, 30, optimizer="sgd", learning_rate=3e3, normalize=False)
    with open(os.path.join(tmp_path, "selection.json"), encoding="utf-8") as f:
        sel = json.load(f)
    assert sel["history"][0]["step"] == 0 and len(sel["history"]) >= 2
    assert sel["history"][-1]["top20"] < sel["history"][0]["top20"]  # it did get worse
    assert sel["selected"]["step"] == 0
    acc = event_accumulator.EventAccumulator(os.path.join(tmp_path, "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    tags = set(acc.Tags()["tensors"])
    assert {"L_G", "L_G/validation", "validation/top20/avg", "validation/gain20/avg", "lambda/a0"} <= tags
    cfg = configs.ExperimentConfig(stage="stage3")
    cfg.stage3 = dataclasses.replace(cfg.stage3, r=8, normalize=False)
    cfg.write(str(tmp_path))  # what the loader reads to build the model
    kept, path = loading.load_global_model(str(tmp_path), NUM_VALUES, 4)
    assert "selected" in path
    layer, trained = kept.get_layer("global_representation"), model.get_layer("global_representation")
    np.testing.assert_allclose(layer.lambdas.numpy(), 1.0)  # step 0's λ, not the wrecked one
    assert not np.allclose(trained.lambdas.numpy(), 1.0)


def test_identity_start_ranks_as_the_concatenation(tmp_path):
    feats = _fake_features()
    cfg = configs.ExperimentConfig(stage="stage3")
    cfg.stage3 = dataclasses.replace(cfg.stage3, r=12, w_r_init="identity", normalize=False)
    task = stage3.Stage3Task(cfg, _info(), feats, None)
    model = task.build_model()
    task.initialize(model)
    f = task.vectors(model)(feats["fc10"][:50])
    flat = feats["fc10"][:50].reshape(50, -1)
    scale = f[:, 0] / flat[:, 0]
    np.testing.assert_allclose(f, flat * scale[0], rtol=1e-5, atol=1e-6)  # s·concatenation
    assert 0.1 < 1 / scale[0] < 100


def _record_reads(monkeypatch) -> list[str]:
    """The splits read from now on (records or features extracted), in order."""
    read = []
    real_make, real_extract = pipeline.make_dataset, features.extract
    monkeypatch.setattr(
        pipeline, "make_dataset", lambda i, split, *a, **k: read.append(split) or real_make(i, split, *a, **k)
    )
    monkeypatch.setattr(
        features,
        "extract",
        lambda m, i, split, *a, **k: read.append(split) or real_extract(m, i, split, *a, **k),
    )
    return read


def test_stage3_reads_only_the_training_split_and_the_control_is_rank_lg_at_step_0(
    info, tmp_path, monkeypatch
):
    cfg = configs.quick(configs.ExperimentConfig(dataset="synthetic", workdir=str(tmp_path)))
    run.run_stage1(cfg, info, out=io.StringIO())
    run.run_stage2(cfg, info, out=io.StringIO())
    read = _record_reads(monkeypatch)
    # Rank-LG with a zero learning rate stays where it started; the control is that start, saved.
    lg = dataclasses.replace(
        cfg, stage3=dataclasses.replace(cfg.stage3, learning_rate=0.0, select_on_validation=False)
    )
    model = run.run_stage3(lg, info, out=io.StringIO())
    control = run.run_stage3_untrained(cfg, info, out=io.StringIO())
    assert set(read) == {"train"}, f"stage 3 read {sorted(set(read))}"
    a, b = model.get_layer("global_representation"), control.get_layer("global_representation")
    for x, y in zip(a.weights, b.weights):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    # Learning for real moves it away from the control.
    cfg2 = dataclasses.replace(
        cfg,
        workdir=str(tmp_path),
        stage3=dataclasses.replace(
            cfg.stage3, update_memory=True, learning_rate=1.0, select_on_validation=False
        ),
    )
    full = run.run_stage3(cfg2, info, out=io.StringIO()).get_layer("global_representation")
    assert not np.allclose(full.w_r.numpy(), b.w_r.numpy())


def test_paired_differences_per_seed():
    def res(avg):
        return {"topk": {"20": {"avg": avg}}}

    per_seed = {0: {"rank_l": res(0.5), "rank_lg_untrained": res(0.55), "rank_lg": res(0.6)},
                1: {"rank_l": res(0.4), "rank_lg_untrained": res(0.42), "rank_lg": res(0.41)}}  # fmt: skip
    pairs = {(p["a"], p["b"]): p for p in ablation.paired_differences(per_seed)}
    assert set(pairs) == {("rank_lg_untrained", "rank_l"), ("rank_lg", "rank_lg_untrained")}
    np.testing.assert_allclose(pairs[("rank_lg", "rank_lg_untrained")]["values"], [0.05, -0.01])
    np.testing.assert_allclose(pairs[("rank_lg", "rank_lg_untrained")]["mean"], 0.02)
    np.testing.assert_allclose(pairs[("rank_lg_untrained", "rank_l")]["std"], np.std([0.05, 0.02], ddof=1))


def test_every_candidate_is_a_valid_stage3_config():
    cfg = configs.ExperimentConfig()
    from fashionsearchnet_v2.training import stage3_selection

    for name in stage3_selection.CANDIDATES:
        c = stage3_selection.candidate_config(cfg, name, 2.0, False)
        assert c.stage3.select_on_validation and c.stage3.epochs == 2.0
    paper = stage3_selection.candidate_config(cfg, "paper", 2.0, False).stage3
    assert (paper.sampling, paper.negatives, paper.w_r_init, paper.normalize) == (
        "enumerate",
        "random",
        "glorot",
        False,
    )
    with pytest.raises(ValueError, match="negatives"):
        configs.Stage3Config(negatives="hard")
    assert list(itertools.islice(stage3_selection.CANDIDATES, 1)) == ["paper"]


def test_stage2_validation_reads_only_the_training_split_and_sees_the_learnt_colour(
    trained, monkeypatch, tmp_path
):
    """`evaluation.validate_stage2` (the warm-up's measure, decision 64): the tiny colour model's Rank-L on
    validation searches of the training split only; its colour manipulation beats the unmanipulated
    query, as on the test split."""
    from fashionsearchnet_v2.retrieval import evaluation

    read = _record_reads(monkeypatch)
    # A copy without cached features (they would hide what is read); the shared model is only read.
    workdir = str(tmp_path / "work")
    shutil.copytree(os.path.join(trained.root, "work"), workdir, ignore=shutil.ignore_patterns("features"))
    results = evaluation.validate_stage2(workdir, trained.info, "rank_l", progress=False)
    assert set(read) == {"train"}, f"validation read {sorted(set(read))}"
    k = str(results["k"])
    # 980 training images: ~196 validation images, ~131 in the validation gallery: K = 20 x 131 / 200.
    assert results["k"] == validation.top20_share(int(results["validation"].split()[3]), 200)
    assert results["topk"][k]["color"] > results["unmanipulated"]["topk"][k]["color"] + 0.1


def test_selection_tables_show_each_epoch_the_selected_state_and_what_learning_added():
    """Stage 3's and AMNet's sweeps print one table shape (`stage3_selection.epochs_table`)."""
    from fashionsearchnet_v2.training import amnet_selection, stage3_selection

    h = [{"step": 0, "top6": 0.4, "gain6": 0.1, "L_rank_validation": 0.2, "lambda": {"a": 1.0}},
         {"step": 10, "top6": 0.9, "gain6": 0.4, "L_rank_validation": 0.01, "lambda": {"a": 1.1}},
         {"step": 20, "top6": 0.8, "gain6": 0.3, "L_rank_validation": 0.02, "lambda": {"a": 1.2}}]  # fmt: skip
    rows = [{"name": "x", "k": 6, "validation": "v", "history": h, "selected": h[1]}]
    s3 = stage3_selection.selection_table(rows, ["a"]).splitlines()
    assert s3[2] == "| candidate | step 0 | epoch 1 | epoch 2 | selected | learned | λ (a) |"
    assert s3[4] == "| x | 0.400 | 0.900 | 0.800 | 0.900 (epoch 1) | +0.500 | 1.10 |"
    am = amnet_selection.selection_table(rows).splitlines()
    assert am[4] == "| x | 0.400 | 0.900 | 0.800 | 0.900 (epoch 1) | +0.500 | +0.400 | 0.2000 → 0.0100 |"


def test_a_sweep_trains_each_candidate_into_its_folder_and_keeps_one_row_each(tmp_path):
    """`stage3_selection.sweep`, the loop of stage 3's and AMNet's searches: each candidate's own
    selection.json becomes its row, in the order asked; an unknown name stops it before anything trains."""
    from fashionsearchnet_v2.training import stage3_selection

    candidates = {"a": ("the first", {}), "b": ("the second", {})}
    trained = []

    def train(name, directory):
        trained.append(name)
        os.makedirs(directory)
        with open(os.path.join(directory, "selection.json"), "w", encoding="utf-8") as f:
            json.dump({"selected": {"step": len(name) * 10 + len(trained)}}, f)

    out = io.StringIO()
    rows = stage3_selection.sweep(
        "test", candidates, ["b", "a"], train, lambda r: f"{len(r)} rows\n", str(tmp_path), out
    )
    assert trained == ["b", "a"] and [r["name"] for r in rows] == ["b", "a"]
    assert [r["what"] for r in rows] == ["the second", "the first"]
    assert [r["selected"]["step"] for r in rows] == [11, 12]
    with open(tmp_path / "selection.json", encoding="utf-8") as f:
        assert [r["name"] for r in json.load(f)] == ["b", "a"]
    assert (tmp_path / "selection.md").read_text(encoding="utf-8") == "2 rows\n"
    assert "=== test candidate b: the second" in out.getvalue()
    with pytest.raises(ValueError, match=r"unknown test candidates \['c'\]; valid: a, b"):
        stage3_selection.sweep("test", candidates, ["a", "c"], train, str, str(tmp_path / "x"), out)
    assert trained == ["b", "a"]  # the unknown name stopped the sweep before "a" trained again


def _selection(directory):
    with open(os.path.join(directory, "selection.json"), encoding="utf-8") as f:
        sel = json.load(f)
    return [r["step"] for r in sel["history"]], sel["selected"]["step"]


def _kept_weights(directory):
    cfg = configs.ExperimentConfig(stage="stage3")
    cfg.stage3 = dataclasses.replace(cfg.stage3, r=8, sampling="images", learning_rate=3e-2)
    cfg.write(str(directory))  # what the loader reads to build the model
    model, path = loading.load_global_model(str(directory), NUM_VALUES, 4)
    return [w.numpy() for w in model.get_layer("global_representation").weights], path


@pytest.mark.parametrize("killed_at", ["evaluate 22", "evaluate 50", "keep 22"])
def test_a_stage3_killed_around_an_epochs_validation_keeps_what_an_uninterrupted_one_keeps(
    tmp_path, monkeypatch, killed_at
):
    """A kill after an epoch's checkpoint and before its validation (`evaluate`), or between the selected
    checkpoint and `selection.json` (`keep`), used to lose that epoch from the selection (the resume went on
    from the saved step, or said "already trained") or to leave `selected/` holding another step than
    the one `selection.json` and the tables name. Resumed, the run keeps exactly what one that never
    stopped keeps (50 steps, 22 an epoch: epochs end at 22, 44 and 50)."""
    feats = _fake_features()
    s3 = dict(sampling="images", learning_rate=3e-2)
    _train(tmp_path / "whole", feats, 50, **s3)
    where, at = killed_at.split()
    owner = trainer.FixedFeatureTask if where == "keep" else stage3.Stage3Task
    real = getattr(owner, where)

    def killed(self, *args, **kwargs):
        step = kwargs.get("step", args[-1] if args else None)
        if int(step) == int(at):
            if where == "keep":  # the selected checkpoint is written, selection.json is not
                monkeypatch.setattr(trainer.os, "replace", _raise_interrupt)
            else:
                raise KeyboardInterrupt
        return real(self, *args, **kwargs)

    monkeypatch.setattr(owner, where, killed)
    with pytest.raises(KeyboardInterrupt):
        _train(tmp_path / "killed", feats, 50, **s3)
    monkeypatch.undo()
    if where == "keep":  # what a kill leaves: selection.json and the checkpoint it names agree
        assert _kept_weights(tmp_path / "killed")[1].endswith(f"ckpt-{_selection(tmp_path / 'killed')[1]}")
    log = io.StringIO()
    _train(tmp_path / "killed", feats, 50, out=log, **s3)
    whole, resumed = _selection(tmp_path / "whole"), _selection(tmp_path / "killed")
    assert whole[0] == [0, 22, 44, 50] and resumed == whole
    assert f"step {at} was saved but not evaluated (interrupted): evaluating it" in log.getvalue()
    (w_whole, p_whole), (w_resumed, p_resumed) = (
        _kept_weights(tmp_path / "whole"),
        _kept_weights(tmp_path / "killed"),
    )
    assert os.path.basename(p_whole) == os.path.basename(p_resumed) == f"ckpt-{whole[1]}"
    for a, b in zip(w_whole, w_resumed):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _raise_interrupt(*args, **kwargs):
    raise KeyboardInterrupt
