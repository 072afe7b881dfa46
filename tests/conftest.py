"""Test session setup: oneDNN on, quiet logs, the CPU only (tiny models, and every numeric comparison
was measured there), and two logical CPU devices (for the MirroredStrategy test), which must be
configured before TensorFlow initialises its devices. The command lines the tests run inherit the same
variables, so they share one command server per pytest worker (tests/commands.py)."""

import os
import tempfile

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from fashionsearchnet_v2 import startup  # noqa: E402

startup.skip_keras_optional_imports()  # as the commands do (decisions P11, P11b)
startup.quiet_tensorflow_start()

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
except RuntimeError:  # already initialised by an earlier import; the mirrored test then fails and says why
    pass

import pytest  # noqa: E402

from fashionsearchnet_v2.data import synthetic  # noqa: E402

# The slowest modules first, the rest in file order. `-n 2 --dist loadscope --no-loadscope-reorder`
# (pyproject.toml) runs each module whole on one worker and hands modules out in collection order, the
# next one to whichever worker is nearly done. In file order test_readme (about 190 s in one process),
# test_reproducible (60 s), test_same_data (120 s) and test_seeds (37 s) came last, and in xdist's default
# order (most tests first) some of them still did, so one worker could still be inside them while the
# other had nothing left. Longest first evens the two out. The order is each module's seconds in
# `pytest -v --durations=0` with the command server (2026-12-05, the 2-core EPYC without AVX-512):
# 131, 122, 102, 92, 82, 63, 56, 43, 36, 34, 33, 27, 25, 23, 22, 16, 13, 13; the last of the run's modules
# had been test_stage3 (27 s), which left one worker idle for 28 s.
SLOW_FIRST = ("test_readme.py", "test_localization_floor.py", "test_training.py", "test_cli.py",
              "test_same_data.py", "test_page.py", "test_reproducible.py", "test_seeds.py", "test_amnet.py",
              "test_beam_embed.py", "test_precision.py", "test_stage3.py", "test_provenance.py",
              "test_multi_worker.py", "test_export.py", "test_service.py", "test_box_swap.py",
              "test_guard.py")  # fmt: skip


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(SLOW_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(SLOW_FIRST)))  # stable: modules stay whole


@pytest.fixture(scope="session", autouse=True)
def _session_temporary_directory(tmp_path_factory):
    """The temporary directory of the tests and of the command lines they run is the session's own, so
    what is left there (Beam's directories of every pipeline run, autograph's files of a command killed on
    purpose) goes with pytest's old session directories instead of piling up in /tmp."""
    before = os.environ.get("TMPDIR"), tempfile.tempdir
    path = str(tmp_path_factory.mktemp("tmp"))
    os.environ["TMPDIR"] = tempfile.tempdir = path
    yield path
    if before[0] is None:
        os.environ.pop("TMPDIR", None)
    else:
        os.environ["TMPDIR"] = before[0]
    tempfile.tempdir = before[1]


@pytest.fixture(scope="session")
def info(tmp_path_factory):
    """A tiny embedded dataset (120 images of 64 px; 72 train, 12 query, 36 gallery) that tests only read."""
    out = str(tmp_path_factory.mktemp("data") / "synthetic")
    return synthetic.write_synthetic(
        out, num_images=120, image_size=64, num_query=12, num_gallery=36, progress=False
    )


@pytest.fixture
def autograph_conversions(monkeypatch):
    """`module:name` of each function outside TensorFlow that autograph converts while the test runs
    (decision P9: none should be; each conversion parses and rewrites a function's source and everything
    it calls, seconds of tracing per process). TensorFlow's own wrappers, which `tf.saved_model.save`
    converts, are not listed."""
    from tensorflow.python.autograph.impl import api

    converted, convert = [], api._convert_actual

    def recording(entity, program_ctx):
        module = getattr(entity, "__module__", "") or ""
        if not module.startswith("tensorflow."):
            converted.append(f"{module}:{getattr(entity, '__qualname__', repr(entity))}")
        return convert(entity, program_ctx)

    monkeypatch.setattr(api, "_convert_actual", recording)
    return converted


@pytest.fixture(scope="session")
def data_dir(info):
    """The directory of `info`, for tests that run the command lines."""
    return info.data_dir


# Fixtures defined once here, so that every module shares one session fixture: the index tests' tiny
# random export and image folder (shared with the Beam pipeline's tests), the service tests' tiny trained
# model.
from index_fixture import export_dir, folder, model  # noqa: E402, F401
from service_fixture import trained  # noqa: E402, F401
