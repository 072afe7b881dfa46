"""Decision P11: a command starts without the optional modules Keras probes for, and nothing else changes."""

import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import pytest

from fashionsearchnet_v2 import startup

REPO = str(pathlib.Path(__file__).resolve().parent.parent)


def _import_as(module_name: str, statement: str) -> None:
    """Runs an import statement as code of the module `module_name` would."""
    exec(compile(statement, f"<{module_name}>", "exec"), {"__name__": module_name})


@pytest.fixture
def hooked(monkeypatch):
    monkeypatch.setattr(
        sys, "meta_path", [f for f in sys.meta_path if not isinstance(f, startup._SkipKerasOptionalImports)]
    )
    startup.skip_keras_optional_imports()
    startup.skip_keras_optional_imports()  # idempotent
    assert sum(isinstance(f, startup._SkipKerasOptionalImports) for f in sys.meta_path) == 1
    # A matplotlib submodule nothing here has imported, so that the import reaches the finders.
    monkeypatch.delitem(sys.modules, "matplotlib.sankey", raising=False)


def test_only_kerass_probing_modules_are_refused(hooked):
    probing = startup.SKIPPED["matplotlib"][0]
    with pytest.raises(ImportError, match=f"is not imported for {probing}"):
        _import_as(probing, "import matplotlib.sankey")
    assert "matplotlib.sankey" not in sys.modules
    # Another Keras module, and this project's code, import it as usual.
    _import_as("keras.src.visualization.draw_bounding_boxes", "import matplotlib.sankey")
    assert "matplotlib.sankey" in sys.modules
    del sys.modules["matplotlib.sankey"]
    _import_as("fashionsearchnet_v2.retrieval.figures", "import matplotlib.sankey")
    assert "matplotlib.sankey" in sys.modules


def test_a_command_process_imports_tensorflow_without_them_and_can_still_draw():
    """A fresh process as `python -m experiments.<name>` starts: Keras finds neither package, and both stay
    importable afterwards (the project's figures need matplotlib)."""
    code = (
        "import json, sys\n"
        "import experiments, tensorflow, keras\n"
        "from keras.src.saving import file_editor\n"
        "from keras.src.visualization import plot_bounding_box_gallery, plot_image_gallery\n"
        "skipped = sorted(m for m in ('IPython', 'matplotlib') if m in sys.modules)\n"
        "probes = [file_editor.ipython, plot_image_gallery.plt, plot_bounding_box_gallery.patches]\n"
        "from fashionsearchnet_v2.retrieval import figures\n"
        "import matplotlib.pyplot\n"
        "print(json.dumps({'imported': skipped, 'probes': [p is None for p in probes]}))\n"
    )
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="3", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["imported"] == [], f"Keras imported {out['imported']} at start-up"
    assert out["probes"] == [True, True, True]
    assert importlib.util.find_spec("matplotlib") is not None  # the dependency is there: the check meant it


NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1796529969.637430    4235 port.cc:153] oneDNN custom operations are on. You may see ...\n"
    "I0000 00:00:1796529969.637797    4235 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU "
    "will not be used.\n"
)
CUINIT = (
    "E0000 00:00:1796529972.990952    4235 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error\n"
)


@pytest.mark.parametrize("nvidia", [False, True])
def test_start_noise_is_dropped_and_every_other_line_kept(capfd, nvidia):
    def start():
        os.write(2, (NOISE + "a real warning\n" + CUINIT + "I0000 00:00:1.0 1 other.cc:1] kept\n").encode())
        return 7

    assert startup.run_with_start_noise_filtered(start, has_nvidia_device=nvidia) == 7
    err = capfd.readouterr().err
    # On a machine with an NVIDIA device the cuInit failure is a driver problem worth seeing.
    assert err == "a real warning\n" + (CUINIT if nvidia else "") + "I0000 00:00:1.0 1 other.cc:1] kept\n"


def test_a_failed_start_keeps_its_messages_and_its_exception(capfd):
    def start():
        os.write(2, (NOISE + "ImportError: libcudnn.so.9: cannot open shared object file\n").encode())
        raise ImportError("broken")

    with pytest.raises(ImportError, match="broken"):
        startup.run_with_start_noise_filtered(start)
    assert capfd.readouterr().err == "ImportError: libcudnn.so.9: cannot open shared object file\n"


def _fresh_stderr(level: str | None) -> str:
    code = "import experiments, tensorflow as tf\nassert type(tf.__loader__).__name__ == 'SourceFileLoader'\n"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env.update(PYTHONPATH=REPO, **({} if level is None else {"TF_CPP_MIN_LOG_LEVEL": level}))
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def test_a_command_starts_tensorflow_without_its_start_up_lines():
    """A fresh `experiments` process with the project's default log level (2) prints none of the lines
    TensorFlow 2.21 writes whatever that level says; asked for them (`TF_CPP_MIN_LOG_LEVEL=0`), it shows them."""
    quiet = _fresh_stderr(None)
    assert not [line for line in quiet.splitlines() if startup.is_start_noise(line)], quiet
    assert "oneDNN custom operations" not in quiet and "cuInit" not in quiet
    assert "oneDNN custom operations are on" in _fresh_stderr("0")
