"""The same data is the same data (issue 23): a conversion gives the same bytes in any process; commands
make only what they were asked for; a seed's directory given as --workdir is that seed's; a weights file
loads without running code."""

import os
import pickle
import shutil

import numpy as np
import pytest
from fixtures_formats import write_celeba
from test_cli import _cli, assert_one_error_line

from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.model import backbone

SMALL_SYNTHETIC = ["--num_images=60", "--image_size=64", "--num_query=6", "--num_gallery=18"]


def _files(directory):
    return {name: open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))}


def _convert_twice(tmp_path, args):
    """Runs one converter command into a/ and b/ in two processes whose string hashing differs."""
    for name, hash_seed in (("a", "1"), ("b", "2")):
        os.environ["PYTHONHASHSEED"] = hash_seed  # _cli passes the environment on
        try:
            result = _cli([*args, f"--output_dir={tmp_path / name}"], tmp_path)
        finally:
            del os.environ["PYTHONHASHSEED"]
        assert result.returncode == 0, result.stderr[-3000:]
    return _files(tmp_path / "a"), _files(tmp_path / "b")


def test_converting_twice_in_two_processes_gives_the_same_bytes_and_fingerprint(tmp_path):
    """Every file, shards and dataset.json, byte for byte, for the generator and for a converter of a
    distributed layout (CelebA's, read from files). The map of features was serialized in an order that
    depended on the process, so no record was equal and the fingerprints differed."""
    a, b = _convert_twice(tmp_path, ["data_prep.synthetic", *SMALL_SYNTHETIC])
    assert a.keys() == b.keys() and any(name.endswith(".tfrecord") for name in a)
    for name in a:
        assert a[name] == b[name], name
    fingerprint = schema.load_dataset_info(str(tmp_path / "a")).fingerprint
    assert fingerprint.startswith("sha256:")
    assert fingerprint == schema.load_dataset_info(str(tmp_path / "b")).fingerprint

    src = tmp_path / "celeba"
    rows = [(f"00000{i}.jpg", ("Black_Hair", "Smiling") if i % 2 else ("Blond_Hair",)) for i in range(1, 8)]
    write_celeba(str(src), rows, images=[name for name, _ in rows])
    converted = tmp_path / "celeba_out"
    converted.mkdir()
    a, b = _convert_twice(
        converted, ["data_prep.celeba", f"--input_dir={src}", "--num_query=1", "--num_gallery=2"]
    )
    assert a.keys() == b.keys() and a == b


def _quick(args, cwd):
    return _cli([*args, "--quick"], cwd)


def test_a_regenerated_embedded_dataset_serves_its_trained_stages_and_nothing_else_makes_data(tmp_path):
    """Stages trained, the embedded dataset deleted: export and evaluation refuse in one line naming the
    missing directory, the stage that recorded it and --data_dir, and generate nothing; stage 1 generates
    it again (the same bytes), resumes its finished stage, and the stages export and evaluate from the new
    copy. A seed's directory as --workdir is that seed's, from any working directory, which stays empty."""
    for stage in ("stage1", "stage2"):
        result = _quick([f"experiments.{stage}", "--max_steps=2"], tmp_path)
        assert result.returncode == 0, f"{stage}: {result.stderr[-3000:]}"
    data = tmp_path / "data" / "synthetic-quick"
    fingerprint = schema.load_dataset_info(str(data)).fingerprint
    shutil.rmtree(data)

    seed_dir = tmp_path / "work" / "synthetic-quick" / "seed0"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for cmd in (
        ["experiments.export", "--variant=rank_l", f"--export_dir={tmp_path / 'e'}"],
        ["experiments.evaluate", "--variant=rank_l"],
        ["experiments.stage2", "--max_steps=2"],
    ):
        missing = _quick([*cmd, f"--workdir={seed_dir}"], elsewhere)
        assert_one_error_line(
            missing, f"{data} does not exist", os.path.join("stage1", "config.json"), "--data_dir"
        )
        assert os.listdir(elsewhere) == [] and not data.exists(), cmd
    assert sorted(os.listdir(tmp_path)) == ["data", "elsewhere", "work"]

    again = _quick(["experiments.stage1", "--max_steps=2"], tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "generating the embedded default dataset" in again.stdout
    assert schema.load_dataset_info(str(data)).fingerprint == fingerprint

    exported = _quick(
        ["experiments.export", "--variant=rank_l", f"--workdir={seed_dir}", f"--export_dir={tmp_path / 'e'}"],
        elsewhere,
    )
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert f"--workdir={seed_dir} is seed 0's directory" in exported.stderr
    assert (tmp_path / "e" / "saved_model.pb").is_file()
    evaluated = _quick(["experiments.evaluate", "--variant=rank_l", f"--workdir={seed_dir}"], elsewhere)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert (seed_dir / "eval" / "rank_l" / "results.json").is_file()
    assert not (seed_dir / "seed0").exists() and os.listdir(elsewhere) == []

    other_seed = _quick(["experiments.evaluate", f"--workdir={seed_dir}", "--seed=1"], elsewhere)
    assert_one_error_line(other_seed, f"pass --workdir={seed_dir.parent} --seed=1")


def test_only_the_training_entry_points_generate_the_embedded_default(tmp_path):
    """export in an empty directory: one line saying where the dataset is expected and how to make it; the
    directory stays empty (it used to fill with the 10,000-image dataset)."""
    result = _cli(["experiments.export", f"--export_dir={tmp_path / 'out' / 'e'}"], tmp_path)
    assert_one_error_line(
        result, "data/synthetic", "python -m data_prep.synthetic --output_dir=data/synthetic"
    )
    assert os.listdir(tmp_path) == []


class _Payload:
    """Unpickling this calls os.mkdir(path): a stand-in for any code a crafted file could run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_crafted_weights_file_is_refused_without_running_its_payload(tmp_path):
    marker = tmp_path / "payload_ran"
    path = str(tmp_path / "bvlc_alexnet.npy")
    weights = {"conv1": [np.zeros((11, 11, 3, 96), np.float32), np.zeros(96, np.float32)]}
    np.save(path, {**weights, "extra": _Payload(str(marker))}, allow_pickle=True)
    # The payload is real: numpy's own loader runs it.
    np.load(path, allow_pickle=True)
    assert marker.is_dir()
    marker.rmdir()

    with pytest.raises(backbone.WeightsError, match=r"bvlc_alexnet.npy was refused.*posix.mkdir"):
        backbone.read_weights_dict(path)
    assert not marker.exists()

    # The format it is for still loads: a pickled dict of arrays, written by Python 3 or (protocol 2,
    # latin-1 strings) by Python 2's numpy, as bvlc_alexnet.npy is.
    np.save(path, weights, allow_pickle=True)
    loaded = backbone.read_weights_dict(path)
    np.testing.assert_array_equal(loaded["conv1"][1], weights["conv1"][1])
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(np.array(weights, dtype=object), f, protocol=2)
    assert backbone.read_weights_dict(path)["conv1"][0].shape == (11, 11, 3, 96)
