"""Caches that cannot go stale and data validated when loaded (issue 10, items 3 and 4): the content
fingerprint in dataset.json, features keyed on checkpoint and fingerprint, stages refusing a previous stage
trained on another version of the dataset or on other attributes, unknown format versions refused, records
checked against dataset.json, and a damaged shard named with its record."""

import dataclasses
import io
import json
import os
import shutil

import numpy as np
import pytest

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.data import integrity, schema, synthetic
from fashionsearchnet_v2.trained import checkpoints, features, loading, provenance
from fashionsearchnet_v2.training import run


def _write(out, seed=0, **kw):
    return synthetic.write_synthetic(
        str(out), num_images=120, image_size=64, num_query=12, num_gallery=36, seed=seed, progress=False, **kw
    )


def _config(workdir, **train):
    cfg = configs.quick(configs.ExperimentConfig(dataset="synthetic", workdir=str(workdir)))
    cfg.train = dataclasses.replace(cfg.train, **train)
    return cfg


def _edit_dataset_json(data_dir, change):
    path = os.path.join(data_dir, schema.DATASET_JSON)
    with open(path, encoding="utf-8") as f:
        obj = json.load(f)
    change(obj)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f)


def test_fingerprint_is_the_content(tmp_path):
    a = _write(tmp_path / "a")
    assert a.fingerprint.startswith("sha256:") and len(a.fingerprint) == 71
    assert schema.load_dataset_info(a.data_dir).fingerprint == a.fingerprint
    assert _write(tmp_path / "b").fingerprint == a.fingerprint  # same seed, same bytes
    assert _write(tmp_path / "c", seed=1).fingerprint != a.fingerprint
    assert schema.content_fingerprint(a.data_dir, a.attributes, a.shards) == a.fingerprint
    # A dataset converted before fingerprints: a cheap legacy one from dataset.json and the shards' stats,
    # which changes when a shard is written again.
    _edit_dataset_json(a.data_dir, lambda obj: obj.pop("fingerprint"))
    legacy = schema.load_dataset_info(a.data_dir).fingerprint
    assert legacy.startswith(schema.LEGACY_PREFIX)
    assert schema.load_dataset_info(a.data_dir).fingerprint == legacy
    shard = a.shard_paths("train")[0]
    os.utime(shard, ns=(1, 1))
    assert schema.load_dataset_info(a.data_dir).fingerprint != legacy


def test_reconverted_dataset_is_never_mistaken_for_the_old_one(tmp_path):
    """The issue's probe: train, convert again into the same directory with another seed, go on."""
    data = tmp_path / "data"
    info = _write(data)
    cfg = _config(tmp_path / "work", max_steps=2)
    run.run_stage1(cfg, info, out=io.StringIO())
    run.run_stage2(cfg, info, out=io.StringIO())
    assert (
        configs.read_config(loading.stage_dir(cfg.workdir, "stage1")).dataset_fingerprint == info.fingerprint
    )
    model, ckpt, s2 = loading.load_stage2(cfg.workdir, info, "rank_l")
    s2_dir = loading.stage_dir(cfg.workdir, "stage2", "rank_l")
    first = loading.split_features(model, ckpt, info, "query", 64, s2_dir, progress=False)

    new = _write(data, seed=1, overwrite=True)
    assert new.fingerprint != info.fingerprint
    # Cached features are keyed on the fingerprint: the new images are embedded, not the old ones reused.
    again = loading.split_features(model, ckpt, new, "query", 64, s2_dir, progress=False)
    assert list(again["ids"]) != list(first["ids"]) or not np.allclose(again["fc10"], first["fc10"])
    assert features.cache_key(ckpt, new) != features.cache_key(ckpt, info)
    # Stages trained on the old version are refused by whatever builds on them or resumes them.
    for attempt in (
        lambda: run.run_stage2(dataclasses.replace(cfg, variant="rank"), new, out=io.StringIO()),
        lambda: run.run_stage3(cfg, new, out=io.StringIO()),
        lambda: loading.load_stage2(cfg.workdir, new, "rank_l"),
        lambda: run.run_stage1(_config(tmp_path / "work", max_steps=4), new, out=io.StringIO()),
    ):
        with pytest.raises(provenance.ProvenanceError, match="another version of the dataset"):
            attempt()


def test_legacy_stage_and_legacy_dataset(tmp_path):
    """A stage written before fingerprints is accepted as it is; a legacy dataset whose files changed
    is refused with a message that says it has no content fingerprint."""
    info = _write(tmp_path / "data")
    cfg = _config(tmp_path / "work", max_steps=1)
    run.run_stage1(cfg, info, out=io.StringIO())
    s1 = loading.stage_dir(cfg.workdir, "stage1")
    old = configs.read_config(s1)
    dataclasses.replace(old, dataset_fingerprint="", attributes={}).write(s1)
    loading.load_stage1(cfg.workdir, info)  # unchecked, accepted
    _edit_dataset_json(info.data_dir, lambda obj: obj.pop("fingerprint"))
    legacy = schema.load_dataset_info(info.data_dir)
    old.write(s1)
    dataclasses.replace(old, dataset_fingerprint=legacy.fingerprint).write(s1)
    loading.load_stage1(cfg.workdir, legacy)
    os.utime(legacy.shard_paths("train")[0], ns=(1, 1))
    with pytest.raises(provenance.ProvenanceError, match="has no content fingerprint"):
        loading.load_stage1(cfg.workdir, schema.load_dataset_info(info.data_dir))


def test_attributes_and_value_counts_are_checked_against_the_stage(tmp_path):
    info = _write(tmp_path / "data")
    cfg = _config(tmp_path / "work", max_steps=1)
    run.run_stage1(cfg, info, out=io.StringIO())
    # One more value for `pattern` in dataset.json: the records still parse, but the model is not the same.
    _edit_dataset_json(info.data_dir, lambda obj: obj["attributes"][1]["values"].append("plaid"))
    changed = schema.load_dataset_info(info.data_dir)
    changed.fingerprint = info.fingerprint  # the same content: only the attribute check can tell
    with pytest.raises(provenance.ProvenanceError, match="pattern has 4 values there, 5 here"):
        run.run_stage2(cfg, changed, out=io.StringIO())
    with pytest.raises(provenance.ProvenanceError, match="pattern has 4 values there, 5 here"):
        run.run_stage1(_config(tmp_path / "work", max_steps=2), changed, out=io.StringIO())
    assert "missing here: hem" in provenance._attribute_difference({"color": 8, "hem": 4}, {"color": 8})


def test_unknown_format_version_is_refused(tmp_path):
    info = _write(tmp_path / "data")
    _edit_dataset_json(info.data_dir, lambda obj: obj.update(format_version=99))
    with pytest.raises(schema.DatasetError, match=r"format_version 99 is not one this code reads \(1\)"):
        schema.load_dataset_info(info.data_dir)
    _edit_dataset_json(info.data_dir, lambda obj: obj.pop("format_version"))
    with pytest.raises(schema.DatasetError, match="format_version None"):
        schema.load_dataset_info(info.data_dir)


def test_dataset_json_that_does_not_describe_its_records(tmp_path):
    """An attribute removed from dataset.json: stopped before training, naming the shard."""
    info = _write(tmp_path / "data")
    _edit_dataset_json(info.data_dir, lambda obj: obj["attributes"].pop())
    broken = schema.load_dataset_info(info.data_dir)
    with pytest.raises(
        schema.DatasetError,
        match=r"train-00000-of-00001.tfrecord: record 0 has 6 labels, but dataset.json lists 5",
    ):
        integrity.check_records(broken)
    with pytest.raises(schema.DatasetError, match="record 0 has 6 labels"):
        run.run_stage1(_config(tmp_path / "work", max_steps=1), broken, out=io.StringIO())


def test_shard_cut_in_half_names_file_and_record(tmp_path):
    info = _write(tmp_path / "data")
    good = tmp_path / "good"
    shutil.copytree(info.data_dir, good)
    shard = info.shard_paths("train")[0]
    with open(shard, "rb") as f:
        data = f.read()
    with open(shard, "wb") as f:
        f.write(data[: len(data) // 2])
    spans = list(integrity.record_spans(os.path.join(good, os.path.basename(shard))))
    cut = next(i for i, off, n in spans if off + 16 + n > len(data) // 2)
    expected = rf"{os.path.basename(shard)}: truncated at record {cut} \(byte offset {spans[cut][1]}\)"
    with pytest.raises(schema.DatasetError, match=expected):
        run.run_stage1(_config(tmp_path / "work", max_steps=2), info, out=io.StringIO())
    # Reading a split for features names it the same way; a flipped byte is a checksum error, named too.
    shutil.copy(os.path.join(good, os.path.basename(shard)), shard)
    gallery = info.shard_paths("gallery")[0]
    with open(gallery, "r+b") as f:
        f.seek(5000)
        byte = f.read(1)
        f.seek(5000)
        f.write(bytes([byte[0] ^ 0xFF]))
    error = integrity.locate_corruption(gallery)
    assert error is not None and "gallery-00000-of-00001.tfrecord: record 1 (byte offset" in str(error)
    model = loading.network.build_network(info.num_values, info.attribute_names, _config("x").model, "stage1")
    with pytest.raises(
        schema.DatasetError, match=r"gallery-00000-of-00001.tfrecord: record 1 \(byte offset \d+\) is corrupt"
    ):
        features.extract(model, info, "gallery", 64, progress=False)


def test_stage2_refuses_an_unfinished_stage1(tmp_path):
    info = _write(tmp_path / "data")
    run.run_stage1(_config(tmp_path / "work", max_steps=2), info, out=io.StringIO())
    # As if a run of 4 steps had been killed after its checkpoint at step 2: its config.json records the
    # 4 steps it trains to; one written before total_steps was recorded has only its schedule (max_steps).
    stage1 = loading.stage_dir(str(tmp_path / "work"), "stage1")
    cfg = configs.read_config(stage1)
    assert cfg.total_steps == 2
    for total in (4, None):
        dataclasses.replace(cfg, total_steps=total, train=dataclasses.replace(cfg.train, max_steps=4)).write(
            stage1
        )
        with pytest.raises(checkpoints.RestoreError, match=r"stage 1 in .* stopped at step 2 of 4"):
            run.run_stage2(_config(tmp_path / "work", max_steps=4), info, out=io.StringIO())


def test_a_real_run_refuses_a_quick_stage(tmp_path):
    info = _write(tmp_path / "data")
    cfg = _config(tmp_path / "work", max_steps=1)  # quick
    run.run_stage1(cfg, info, out=io.StringIO())
    real = dataclasses.replace(cfg, quick=False)
    with pytest.raises(provenance.ProvenanceError, match="written by a --quick smoke check"):
        run.run_stage2(real, info, out=io.StringIO())  # building on it
    with pytest.raises(provenance.ProvenanceError, match="written by a --quick smoke check"):
        run.run_stage1(real, info, out=io.StringIO())  # resuming it
    with pytest.raises(provenance.ProvenanceError, match="written by a --quick smoke check"):
        loading.load_stage1(cfg.workdir, info, quick=False)
    loading.load_stage1(cfg.workdir, info)  # evaluation and export do not ask
