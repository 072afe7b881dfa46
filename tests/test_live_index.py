"""A served index swapped without a restart (`serving.live`): a rewritten file is loaded and answers the
next requests; a broken file, one of another export, or a missing one is refused, reported by /healthz,
and the index served is kept; `experiments.serve --watch_index_s` picks a rewritten file up by itself."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

import commands
import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_fixture import free_port

from fashionsearchnet_v2.serving import index as index_lib
from fashionsearchnet_v2.serving import indexing, live, service

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def catalogues(model, folder, tmp_path):
    """The folder's index, and the index of a smaller catalogue: 2 of its images, one changed under the
    same name (img2.jpg), one new."""
    small = tmp_path / "small"
    small.mkdir()
    for name in ["img0.jpg", "img1.png"]:
        shutil.copy(os.path.join(folder, name), small / name)
    shutil.copy(os.path.join(folder, "img6.jpg"), small / "img2.jpg")
    shutil.copy(os.path.join(folder, "img5.png"), small / "new.png")
    full, _ = indexing.index_folder(model, folder, progress=False)
    smaller, _ = indexing.index_folder(model, str(small), progress=False)
    return full, smaller


def _replace(index: index_lib.SearchIndex, path) -> None:
    """Writes `index` over `path` as experiments.index --overwrite does (a complete file renamed in)."""
    index.save(str(path), overwrite=True)


def _served(model, index: index_lib.SearchIndex, path) -> live.LiveIndex:
    """`index` written to `path` and served through a LiveIndex of that file."""
    index.save(str(path))
    searcher = service.Searcher(model, index_lib.SearchIndex.load(str(path)))
    return live.LiveIndex(searcher, str(path), lambda new: service.Searcher(model, new))


def _ids(client, top_k=20) -> list[str]:
    query = {
        "item": client.get("/items?limit=1").json()["items"][0]["id"],
        "set": {"color": "black"},
        "top_k": top_k,
    }
    answer = client.post("/search", json=query)
    assert answer.status_code == 200, answer.text
    return [r["id"] for r in answer.json()["results"]]


def test_a_rewritten_index_answers_the_next_requests(model, folder, catalogues, tmp_path):
    full, smaller = catalogues
    path = tmp_path / "shop.npz"
    live_index = _served(model, full, path)
    client = TestClient(service.create_app(live_index))
    old_urls = {i["id"]: i["image_url"] for i in client.get("/items").json()["items"]}
    before = client.get("/healthz").json()
    assert (
        before["items"] == 9 and before["index"]["reloads"] == 0 and before["index"]["reload_error"] is None
    )
    assert live_index.check() is False  # unchanged: nothing loaded
    old_searcher = live_index.current

    _replace(smaller, path)
    assert live_index.check() is True and live_index.current is not old_searcher
    after = client.get("/healthz").json()
    assert after["items"] == 4 and after["index"]["reloads"] == 1
    assert sorted(i["id"] for i in client.get("/items").json()["items"]) == ["img0.jpg", "img1.png", "img2.jpg",
                                                                            "new.png"]  # fmt: skip
    assert set(_ids(client)) <= {"img0.jpg", "img1.png", "img2.jpg", "new.png"}
    # The same answers as a service started on the new file.
    fresh = TestClient(service.create_app(service.Searcher(model, index_lib.SearchIndex.load(str(path)))))
    assert _ids(client) == _ids(fresh)
    assert client.get("/images/new.png").status_code == 200
    # An image changed under the same id gets a new URL (a browser's cached picture is not reused); an
    # unchanged one keeps its URL (and the browser its cache).
    urls = {i["id"]: i["image_url"] for i in client.get("/items").json()["items"]}
    assert urls["img2.jpg"] != old_urls["img2.jpg"] and urls["img1.png"] == old_urls["img1.png"]
    assert client.get(urls["img2.jpg"]).content == open(os.path.join(folder, "img6.jpg"), "rb").read()


def test_a_file_that_does_not_load_or_fit_is_refused_and_the_index_kept(model, catalogues, tmp_path):
    full, smaller = catalogues
    path = tmp_path / "shop.npz"
    live_index = _served(model, full, path)
    client = TestClient(service.create_app(live_index))
    served = _ids(client)

    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 not a whole zip")
    os.replace(broken, path)
    assert live_index.check() is False
    error = client.get("/healthz").json()["index"]["reload_error"]
    assert (
        error.startswith(f"{path} changed but was not loaded (IndexFileError: ") and "still serving" in error
    )
    assert _ids(client) == served and client.get("/healthz").json()["items"] == 9
    assert live_index.check() is False  # the same broken file is not loaded again

    # Vectors of another export: the fingerprint differs, so they are not comparable with the model's.
    other = index_lib.SearchIndex(
        smaller.vectors, smaller.ids, smaller.paths, smaller.labels, smaller.predicted_values,
        smaller.predicted_probabilities, dict(smaller.metadata, export_fingerprint="another export"),
        content=smaller.content,
    )  # fmt: skip
    _replace(other, path)
    assert live_index.check() is False
    assert "embedded by another export" in client.get("/healthz").json()["index"]["reload_error"]
    os.remove(path)
    assert live_index.check() is False and "is gone" in client.get("/healthz").json()["index"]["reload_error"]
    assert _ids(client) == served

    _replace(smaller, path)  # a good file again: loaded, the error cleared
    assert live_index.check() is True
    health = client.get("/healthz").json()
    assert (
        health["items"] == 4 and health["index"]["reload_error"] is None and health["index"]["reloads"] == 1
    )


def test_the_watch_thread_picks_a_rewritten_file_up(model, catalogues, tmp_path):
    full, smaller = catalogues
    path = tmp_path / "shop.npz"
    live_index = _served(model, full, path)
    with pytest.raises(ValueError, match="every_s must be > 0"):
        live_index.start(0)
    live_index.start(0.05)
    try:
        _replace(smaller, path)
        deadline = time.time() + 30
        while live_index.reloads == 0 and time.time() < deadline:
            time.sleep(0.02)
    finally:
        live_index.stop()
    assert live_index.reloads == 1 and len(live_index.current.index) == 4


def test_serve_reloads_an_index_rewritten_by_experiments_index(export_dir, folder, catalogues, tmp_path):
    """The commands as a user runs them: serve, re-index the changed catalogue with --overwrite, and the
    running service answers from the new index within --watch_index_s; --watch_index_s=-1 is refused."""
    full, _ = catalogues
    path = tmp_path / "shop.npz"
    full.save(str(path))
    bad = commands.run([sys.executable, "-m", "experiments.serve", f"--export_dir={export_dir}", f"--index={path}",
                        "--watch_index_s=-1"], cwd=REPO, timeout=120)  # fmt: skip
    assert (
        bad.returncode == 2
        and "--watch_index_s must be a finite number of seconds >= 0, got -1" in bad.stderr
    )

    port = free_port()
    argv = [sys.executable, "-m", "experiments.serve", f"--export_dir={export_dir}", f"--index={path}",
            f"--port={port}", "--watch_index_s=0.2", "--log_level=warning"]  # fmt: skip
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        proc = commands.start(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def health() -> dict | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                return json.loads(r.read())
        except OSError:
            assert proc.poll() is None, log_path.read_text()[-3000:]
            return None

    try:
        deadline = time.time() + 120
        while (h := health()) is None:
            assert time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.3)
        assert h["items"] == 9 and h["index"]["watch_every_s"] == 0.2
        small = tmp_path / "changed"
        small.mkdir()
        for name in ["img0.jpg", "img2.jpg"]:
            shutil.copy(os.path.join(folder, name), small / name)
        done = commands.run([sys.executable, "-m", "experiments.index", f"--export_dir={export_dir}",
                             f"--images={small}", f"--index={path}", f"--reuse={path}", "--overwrite"],
                            cwd=REPO, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        deadline = time.time() + 60
        while (h := health()) is None or h["items"] != 2:
            assert time.time() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.2)
        assert h["index"]["reloads"] == 1 and h["index"]["reload_error"] is None
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    text = log_path.read_text()
    assert f"watching {path}" in text and f"reloaded {path}: 2 items (was 9)" in text
    assert np.isfinite(full.vectors).all()
