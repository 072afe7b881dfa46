"""docs/serving.md's "From your own Python code" block, run as written in a fresh Python: it loads the
export and an index with TensorFlow and numpy alone, and ranks what this project's search ranks."""

from __future__ import annotations

import os
import re
import shutil
import sys

import commands
import numpy as np

from fashionsearchnet_v2.serving import index as index_lib
from fashionsearchnet_v2.serving import indexing, searcher

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HEADING = "### From your own Python code, with TensorFlow alone"
# Appended to the block: the program must not have needed this project.
NOTHING_OF_THIS_PROJECT = """
import sys as _sys
_ours = sorted(m for m in _sys.modules if m.split(".")[0] in ("fashionsearchnet_v2", "experiments", "data_prep"))
assert not _ours, f"imported {_ours}"
"""


def python_block() -> str:
    with open(os.path.join(REPO, "docs", "serving.md"), encoding="utf-8") as f:
        text = f.read()
    return re.findall(r"```python\n(.*?)```", text[text.index(HEADING) :], flags=re.S)[0]


def test_the_python_example_ranks_what_the_search_ranks(export_dir, model, folder, tmp_path):
    os.makedirs(tmp_path / "exports" / "synthetic")
    shutil.copytree(export_dir, tmp_path / "exports" / "synthetic" / "1")
    index, _ = indexing.index_folder(model, folder, progress=False)
    index.save(str(tmp_path / "indexes" / "gallery.npz"))
    shutil.copy(os.path.join(folder, "img3.png"), tmp_path / "query.png")

    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = commands.run([sys.executable, "-c", python_block() + NOTHING_OF_THIS_PROJECT], cwd=str(tmp_path),
                        env=env, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.strip().splitlines()

    expected = searcher.Searcher(model, index).search(
        image=index_lib.read_image(str(tmp_path / "query.png")), changes=[("color", "black")], top_k=5
    )
    predicted = {name: p["value"] for name, p in expected["query"]["predicted"].items()}
    assert lines[0] == str(predicted)
    ranked = [line.split() for line in lines[1:]]
    assert [r[0] for r in ranked] == ["1", "2", "3", "4", "5"]
    assert [r[1] for r in ranked] == [r["id"] for r in expected["results"]]
    np.testing.assert_allclose([float(r[2]) for r in ranked], [r["distance"] for r in expected["results"]],
                               atol=2e-4)  # fmt: skip
