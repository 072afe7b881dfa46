"""README's result rows and the tables in docs/ whose run files are kept in docs/runs are the numbers
those files give.

README's Results table is typed by hand; the main job's and the CelebA rows' evaluations are kept in
docs/runs (the other rows' runs were not). Each such row's Full, Rank-LG untrained, Full's gain and
w/o Rank cells must read as the mean ± std (ddof 1, 3 decimals, as `benchmarks/paper_table.py`
prints) of the seeds the row names, so that a rerun that changes the files, or an edit of README,
cannot leave the two apart.
"""

import json
import os
import re
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import paper_table  # noqa: E402
from operating_points import load_row  # noqa: E402

#: README row (the start of its first cell) -> the docs/runs folder its numbers come from.
ROWS = {
    "embedded default, the main job": "main-job",
    "CelebA, **this project's 23% copy**": "celeba-128",
    "CelebA, the same copy, the paper's operating point": "celeba-227",
}
#: README's columns after "seeds", as (row of Table 1, the number read from its results.json); a row
#: that was not run for any seed (the main job trains no w/o Rank) has an empty cell.
COLUMNS = (("full", "avg"), ("rank_lg_untrained", "avg"), ("full", "gain"), ("wo_rank", "avg"))
#: The cell format of paper_table.py's tables: mean, and ± std (ddof 1) over more than one seed.
cell = paper_table._cell


def text(*parts):
    """The file at ROOT/parts..., read as UTF-8."""
    with open(os.path.join(ROOT, *parts), encoding="utf-8") as f:
        return f.read()


def readme_rows():
    """{row start: the row's cells} for the rows of ROWS in README's Results table."""
    lines = [ln for ln in text("README.md").splitlines(keepends=True) if ln.startswith("| ")]
    found = {}
    for start in ROWS:
        matches = [ln for ln in lines if ln.startswith(f"| {start}")]
        assert len(matches) == 1, (
            f"README.md: expected one Results row starting {start!r}, found {len(matches)}"
        )
        found[start] = [c.strip() for c in matches[0].strip().strip("|").split("|")]
    return found


def expected_cells(folder, seeds):
    """README's four number cells for `seeds` of docs/runs/<folder>, or a message naming what is missing."""
    cells = []
    for variant, key in COLUMNS:
        rows = [load_row(os.path.join(ROOT, "docs", "runs", folder), s, variant, 20) for s in seeds]
        missing = [s for s, r in zip(seeds, rows) if r is None]
        if len(missing) == len(seeds):
            cells.append("")
            continue
        if missing:
            return f"docs/runs/{folder}: no results.json for {variant}, seeds {missing}"
        cells.append(cell([r[key] for r in rows], "+" if key == "gain" else ""))
    return cells


@pytest.mark.parametrize("start", sorted(ROWS))
def test_readme_row_is_what_its_run_files_give(start):
    cells = readme_rows()[start]
    seeds = [int(s) for s in re.findall(r"\d+", cells[1])]
    assert seeds, f"README.md row {start!r}: no seeds in its seeds cell {cells[1]!r}"
    expected = expected_cells(ROWS[start], seeds)
    assert not isinstance(expected, str), expected
    assert cells[2:6] == expected, f"README.md row {start!r} against docs/runs/{ROWS[start]}"


def test_a_changed_number_or_missing_run_is_caught():
    """The check reads the files: a seed whose files are absent, or another number, does not pass."""
    assert isinstance(expected_cells("celeba-227", [0, 7]), str)
    start = "CelebA, **this project's 23% copy**"
    cells = readme_rows()[start]
    expected = expected_cells(ROWS[start], [0, 1, 2])
    assert cells[2:6] == expected
    assert expected_cells(ROWS[start], [0, 1]) != expected  # two seeds give other means and spreads
    assert cell([0.7, 0.8]) == "0.750 ± 0.071" and cell([0.5], "+") == "+0.500"


#: docs/celeba.md's tables printed by paper_table.py from docs/runs: folder -> seeds.
DOC_TABLES = {"celeba-128": [0, 1, 2], "celeba-227": [0]}


@pytest.mark.parametrize("folder", sorted(DOC_TABLES))
def test_celeba_doc_tables_are_what_paper_table_prints_from_the_run_files(folder):
    doc = text("docs", "celeba.md")
    workdir = os.path.join(ROOT, "docs", "runs", folder)
    printed = paper_table.table(workdir, "celeba", DOC_TABLES[folder]).splitlines()
    printed += paper_table.gains_table(workdir, "celeba", DOC_TABLES[folder]).splitlines()
    ours = [ln for ln in printed if "| ours" in ln or re.match(r"\| [^|]+ \| \d \| [+-]", ln)]
    assert len(ours) >= 10, f"docs/runs/{folder}: expected the rows of at least five variants, got {ours}"
    missing = [ln for ln in ours if "no results.json" not in ln and ln not in doc]
    assert not missing, f"docs/celeba.md lacks these lines that paper_table.py prints from docs/runs/{folder}"


#: Tables copied by hand into docs from an evaluation's printed table kept in docs/runs:
#: (page, the table.md under docs/runs). Every row of its Approach tables (Top-20 and gains) is in the page.
COPIED_TABLES = (("docs/results.md", "main-job-float32/eval/table.md"),)


def approach_rows(markdown):
    """The rows of the tables in `markdown` whose header starts `| Approach`."""
    rows, inside = [], False
    for line in markdown.splitlines():
        if line.startswith("| Approach"):
            inside = True
        elif not line.startswith("|"):
            inside = False
        elif inside and not line.startswith("|---"):
            rows.append(line)
    return rows


@pytest.mark.parametrize("page,table", COPIED_TABLES)
def test_a_copied_table_is_what_its_run_printed(page, table):
    rows = approach_rows(text("docs", "runs", table))
    assert len(rows) == 4, rows  # Rank-LG untrained and Full, in the Top-20 and the gains table
    page_text = text(page)
    missing = [row for row in rows if row not in page_text]
    assert not missing, f"{page} lacks these rows of docs/runs/{table}: {missing}"


def test_readme_float32_main_job_figures_are_its_run_files():
    """README's sentence on a CPU without bfloat16 gives that run's Full and untrained Top-20 avg."""
    folder = os.path.join(ROOT, "docs", "runs", "main-job-float32")
    full, untrained = (load_row(folder, 0, variant, 20)["avg"] for variant in ("full", "rank_lg_untrained"))
    readme = text("README.md")
    assert f"printed Full {full:.3f} / untrained {untrained:.3f}" in readme


#: docs/results.md's `--init_from` table (decision 69): the start of each row -> its docs/runs folder.
INIT_FROM_ROWS = {
    "| ImageNet conv1-conv4 (the recipe": "fpi-v2-imagenet",
    "| v1's stage 2 (`--init_from`) | 3 + 3": "fpi-v2-from-v1",
    "| v1's stage 2 (`--init_from`) | 1 + 1": "fpi-v2-from-v1-1epoch",
    "| ImageNet conv1-conv4, twice the epochs": "fpi-v2-imagenet-6epochs",
}


@pytest.mark.parametrize("start", sorted(INIT_FROM_ROWS))
def test_init_from_table_is_what_its_run_files_give(start):
    """Full, its untrained control, Full's gain and both paired differences against the ImageNet start
    (seeds 0, 1 and 2) are the numbers of docs/runs/init-from-fpi."""
    lines = [ln for ln in text("docs", "results.md").splitlines() if ln.startswith(start)]
    assert len(lines) == 1, f"docs/results.md: expected one row starting {start!r}, found {len(lines)}"
    runs = os.path.join(ROOT, "docs", "runs", "init-from-fpi")

    def rows(folder, variant):
        found = [load_row(os.path.join(runs, folder), s, variant, 20) for s in (0, 1, 2)]
        assert None not in found, f"docs/runs/init-from-fpi/{folder}: a seed's {variant} is missing"
        return found

    full, untrained = rows(INIT_FROM_ROWS[start], "full"), rows(INIT_FROM_ROWS[start], "rank_lg_untrained")
    cells = [
        cell([r["avg"] for r in full]),
        cell([r["avg"] for r in untrained]),
        cell([r["gain"] for r in full], "+"),
    ]
    if INIT_FROM_ROWS[start] != "fpi-v2-imagenet":
        d = [r["avg"] - b["avg"] for r, b in zip(full, rows("fpi-v2-imagenet", "full"))]
        cells.append(" / ".join(f"{x:+.3f}" for x in d) + f" ({cell(d, '+')})")
        d = [r["avg"] - b["avg"] for r, b in zip(untrained, rows("fpi-v2-imagenet", "rank_lg_untrained"))]
        cells.append(f"| {cell(d, '+')} |")
    missing = [c for c in cells if c not in lines[0]]
    assert not missing, f"docs/results.md row {start!r} lacks {missing} (docs/runs/init-from-fpi)"


def localization_rows(page):
    """{attribute: its four numbers} of the table under `page`'s "**Localization on the embedded default**"."""
    lines = page.split("**Localization on the embedded default**", 1)[1].splitlines()
    table = lines[next(i for i, ln in enumerate(lines) if ln.startswith("| attribute")) :]
    rows = {}
    for ln in table[2:]:
        if not ln.startswith("| "):
            break
        cells = [c.strip() for c in ln.strip().strip("|").split("|")]
        rows[cells[0].split(" (")[0]] = cells[1:]
    return rows


def test_localization_table_is_the_kept_main_job_run():
    """docs/results.md's localization table (hit rate, chance, covers, chance) is the `localization`
    block of the kept main job's seed 0 (docs/runs/main-job), every attribute and the mean."""
    path = os.path.join(ROOT, "docs", "runs", "main-job", "seed0", "eval", "full", "results.json")
    with open(path, encoding="utf-8") as f:
        report = json.load(f)["localization"]
    keys = ("hit_rate", "chance", "covers", "covers_chance")
    expected = {name: [f"{r[k]:.3f}" for k in keys] for name, r in report.items()}
    assert localization_rows(text("docs", "results.md")) == expected


def test_a_changed_localization_number_is_caught():
    """The table reader sees one changed cell (so the test above can fail)."""
    page = text("docs", "results.md")
    rows = localization_rows(page)
    changed = localization_rows(page.replace(f"| {rows['front'][0]} |", "| 0.111 |", 1))
    assert changed["front"][0] == "0.111" and changed != rows


def test_every_kept_stage_config_is_read_by_this_code():
    """The config.json files kept in docs/runs were written by earlier versions (some with a `lambda_g`
    that stages 1-2 never read): this code still reads each, so their runs can be resumed or evaluated."""
    from fashionsearchnet_v2 import configs

    found = 0
    for folder, _, files in os.walk(os.path.join(ROOT, "docs", "runs")):
        if "config.json" in files:
            cfg = configs.read_config(folder)
            with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
                assert cfg.train.lambda_t == json.load(f)["train"]["lambda_t"]
            found += 1
    assert found >= 100, found


def test_the_schedule_study_in_results_is_what_its_run_files_print():
    """docs/results.md's table of the embedded default's epochs on the validation split (decisions 12 and
    72) is what benchmarks/stage12_validation.py prints from the scores kept in docs/runs, row for row,
    with each arm's paired difference."""
    import stage12_validation as sv

    folder = os.path.join(ROOT, "docs", "runs", "schedule-validation")
    arms = ["epochs4", "epochs3", "epochs6"]
    scored = sv.scored_runs(folder, arms)
    assert len(scored) >= 4, sorted(scored)
    first = next(iter(scored.values()))
    names = [n for n in first["topk"][str(first["k"])] if n not in ("avg", "all")]
    printed = sv.table(scored, arms, names)
    rows = [ln for ln in printed.splitlines() if ln.startswith("| epochs") or " − epochs4" in ln]
    page = text("docs", "results.md")
    missing = [row for row in rows if row not in page]
    assert not missing, f"docs/results.md lacks these lines of the study's table: {missing}"
