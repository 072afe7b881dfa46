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
