"""The library's layers import downwards only, and library code never reads flags (WORKSPACE.md's layering).

    experiments, data_prep, benchmarks          (entry points: flags, printing)
      errors                                    (the entry points' error report; imports what it reports)
      training   serving                        (neither imports the other)
      retrieval
      trained
      data   model
      configs
      precision   locks   losses   startup   progress      (leaves)

A module may import its own package and any package in a lower row; nothing under
`fashionsearchnet_v2/` imports an entry point or absl's flags.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "fashionsearchnet_v2"
#: Each unit of the package (a subpackage or top-level module) and its row, from the bottom.
RANK = {
    "precision": 0,
    "locks": 0,
    "losses": 0,
    "startup": 0,
    "progress": 0,
    "configs": 1,
    "data": 2,
    "model": 2,
    "trained": 3,
    "retrieval": 4,
    "training": 5,
    "serving": 5,
    "errors": 6,
}
ENTRY_POINTS = ("experiments", "data_prep", "benchmarks")


def module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path) -> list:
    """(line, absolute dotted name) of every import in a file, relative imports resolved; `from a import b`
    gives `a.b` (b may be a module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out += [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return out


def unit(dotted: str):
    """The package unit a dotted name belongs to (`fashionsearchnet_v2.model.aam` -> `model`), else None."""
    parts = dotted.split(".")
    return parts[1] if parts[0] == PACKAGE and len(parts) > 1 else None


def violations(path: pathlib.Path) -> list:
    here = unit(module_name(path))
    bad = []
    for line, name in imported_modules(path):
        where = f"{path.relative_to(ROOT)}:{line} imports {name}"
        if name.split(".")[0] in ENTRY_POINTS or name.startswith("absl.flags"):
            bad.append(f"{where}: library code must not import entry points or flags")
            continue
        target = unit(name)
        if target is None or here is None or target == here:
            continue
        if target not in RANK:
            bad.append(f"{where}: {target!r} has no row in RANK (add it)")
        elif RANK[target] >= RANK[here]:
            bad.append(
                f"{where}: {here} (row {RANK[here]}) may only import lower rows, {target} is row {RANK[target]}"
            )
    return bad


def library_files():
    return sorted((ROOT / PACKAGE).rglob("*.py"))


def test_every_unit_has_a_row():
    units = {unit(module_name(p)) for p in library_files()} - {None}
    assert units <= set(RANK), f"units without a row: {sorted(units - set(RANK))}"


def test_an_upward_import_and_a_flag_read_are_found(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    model = tmp_path / PACKAGE / "model"
    model.mkdir(parents=True)
    bad = model / "net.py"
    bad.write_text(
        "from fashionsearchnet_v2 import configs\n"
        "from fashionsearchnet_v2.training import trainer\n"
        "from ..serving import export\n"
        "from absl import flags\n"
        "import experiments.main\n"
        "from . import aam\n"
    )
    found = violations(bad)
    assert [v.split(": ")[0] for v in found] == [
        "fashionsearchnet_v2/model/net.py:2 imports fashionsearchnet_v2.training.trainer",
        "fashionsearchnet_v2/model/net.py:3 imports fashionsearchnet_v2.serving.export",
        "fashionsearchnet_v2/model/net.py:4 imports absl.flags",
        "fashionsearchnet_v2/model/net.py:5 imports experiments.main",
    ]


@pytest.mark.parametrize("path", library_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_down(path):
    assert violations(path) == []
