"""The one progress meter (`fashionsearchnet_v2.progress`) and the long phases that now report through it:
a phase that takes seconds prints rate and ETA, a quick one stays silent, and reporting changes no result."""

import itertools

import numpy as np
import pytest

from fashionsearchnet_v2 import progress
from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.retrieval import metrics, search


@pytest.fixture
def slow_clock(monkeypatch):
    """Every reading of the meters' clock is 3 s after the last: each update is due."""
    ticks = itertools.count(step=3.0)
    monkeypatch.setattr(progress.time, "time", lambda: float(next(ticks)))


def test_a_quick_phase_prints_nothing_and_a_slow_one_ends_with_its_line(capsys, slow_clock):
    quiet = progress.Progress(10, "quick", every=1e9)
    quiet.update(5)
    quiet.finish(10)
    assert capsys.readouterr().err == ""
    meter = progress.Progress(10, "slow", unit="rows")
    meter.update(4)
    meter.finish(10)
    err = capsys.readouterr().err
    # 4 rows after one 3-s tick, then 10 after two: rate and ETA from the clock. Captured stderr is not a
    # terminal (a log file, a pipe): one line per report.
    assert err == "slow: 4/10 rows (1/s, ETA 4s) \nslow: 10/10 rows (2/s, ETA 0s) \n"


def test_on_a_terminal_the_meter_rewrites_its_line(capsys, slow_clock, monkeypatch):
    meter = progress.Progress(10, "slow", unit="rows")
    monkeypatch.setattr(progress, "_is_terminal", lambda stream: True)
    meter.update(4)
    meter.finish(10)
    assert capsys.readouterr().err == "\rslow: 4/10 rows (1/s, ETA 4s) \rslow: 10/10 rows (2/s, ETA 0s) \n"


def test_phase_says_what_it_does_and_how_it_ended(capsys, slow_clock):
    with progress.phase("loading the index x.npz"):
        pass
    assert capsys.readouterr().err == "loading the index x.npz ... 3.0 s\n"
    with pytest.raises(KeyError), progress.phase("building FAISS"):
        raise KeyError("x")
    assert capsys.readouterr().err == "building FAISS ... failed\n"
    with progress.phase("writing", enabled=False):
        pass
    assert capsys.readouterr().err == ""


def test_ranking_reports_its_searches_and_gives_the_same_results(capsys, slow_clock):
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 4)).astype(np.float32)
    labels = rng.integers(0, 3, (50, 2))
    query_labels = rng.integers(0, 3, (7, 2))
    manips = metrics.enumerate_manipulations(query_labels, labels, [3, 3])
    vectors = rng.normal(size=(len(query_labels), 4)).astype(np.float32)

    def fn(idx):
        return vectors[manips.query_index[idx]]

    quiet = search.run_searches(fn, gallery, labels, manips, 5, chunk_size=4)
    assert capsys.readouterr().err == ""
    loud = search.run_searches(fn, gallery, labels, manips, 5, chunk_size=4, progress="ranking the gallery")
    err = capsys.readouterr().err
    s = len(manips)
    assert f"ranking the gallery: {s}/{s} searches" in err and err.endswith("\n") and err.count("\n") >= 2
    for a, b in zip(quiet, loud):
        np.testing.assert_array_equal(a, b)


def test_fingerprinting_reports_megabytes_and_hashes_the_same(tmp_path, capsys, slow_clock):
    (tmp_path / "train-0.tfrecord").write_bytes(bytes(range(256)) * 12_000)  # about 3 MB
    attrs = [schema.Attribute("color", ("red", "blue"))]
    shards = {"train": ["train-0.tfrecord"]}
    plain = schema.content_fingerprint(str(tmp_path), attrs, shards)
    assert capsys.readouterr().err == ""
    reported = schema.content_fingerprint(str(tmp_path), attrs, shards, progress=True)
    err = capsys.readouterr().err
    assert reported == plain and "fingerprinting: 2/2 MB" in err and err.endswith("\n")


def test_listing_a_folder_counts_what_it_found_and_lists_the_same(tmp_path, capsys, slow_clock):
    from fashionsearchnet_v2.serving import index as index_lib

    for i, sub in enumerate(["a", "b", "b/c"]):
        (tmp_path / sub).mkdir(parents=True, exist_ok=True)
        (tmp_path / sub / f"{i}.jpg").write_bytes(b"x")
        (tmp_path / sub / f"{i}.txt").write_bytes(b"x")  # not an image: not counted
    quiet = index_lib.list_images(str(tmp_path))
    assert capsys.readouterr().err == ""
    loud = index_lib.list_images(str(tmp_path), progress=True)
    err = capsys.readouterr().err
    assert loud == quiet == ["a/0.jpg", "b/1.jpg", "b/c/2.jpg"]
    # No total is known while walking: the count and its rate, no ETA; the last line ends the walk.
    assert f"listing {tmp_path}: 3 images (" in err and "ETA" not in err and err.endswith("\n")
