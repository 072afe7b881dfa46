"""README's commands, run as a reader would (with `--quick` added to the training and export steps):

* "Your own catalogue": a CSV and a folder of images this project has never seen are converted, trained,
  exported, indexed and served with the README's commands alone;
* "Serving": the main job's export and index are served by the README's command, and the README's `curl`
  examples get the answers they describe;
* "Catalogues of millions": a folder embedded on Apache Beam (two DirectRunner workers), indexed from
  the shards and served (needs the beam extra; fails under CI=true without it).

The commands are read from README.md, so the README cannot drift from what works. Slowest test of the
suite after the localization floor (about 1.5 min on 2 cores: each command is a fresh Python process).
"""

from __future__ import annotations

import csv
import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request

import commands
import cv2
import numpy as np
import pytest
from optional import BEAM_INSTALL, BEAM_MISSING, require

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING = ("experiments.main", "experiments.export", "experiments.index", "experiments.search")


def readme_block(after: str, nth: int = 0) -> list[str]:
    """The commands of the nth ```bash block after the line containing `after`, continuations joined."""
    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as f:
        text = f.read()
    start = text.index(after)
    blocks = re.findall(r"```bash\n(.*?)```", text[start:], flags=re.S)
    lines = blocks[nth].replace("\\\n", " ").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


def _env(**extra) -> dict:
    return dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra)


def _argv(command: str) -> list[str]:
    argv = shlex.split(command.split("   #")[0])
    if argv[0] == "python":
        argv[0] = sys.executable
    if len(argv) > 2 and argv[1] == "-m" and argv[2] in TRAINING:
        argv.append("--quick")
    return argv


def run(command: str, cwd, **env) -> str:
    done = commands.run(_argv(command), cwd=cwd, env=_env(**env), timeout=600)
    assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


class Served:
    """A README `experiments.serve` command running in the background on a free port."""

    def __init__(self, command: str, cwd):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = open(os.path.join(cwd, "serve.log"), "w")
        self.proc = commands.start(_argv(command) + [f"--port={self.port}"], cwd=cwd, env=_env(),
                                   stdout=self.log, stderr=subprocess.STDOUT)  # fmt: skip
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while True:
            try:
                self.health = self.get("/healthz")
                return
            except OSError:
                if self.proc.poll() is not None or time.time() > deadline:
                    self.stop()
                    raise AssertionError(open(os.path.join(cwd, "serve.log")).read()[-3000:]) from None
                time.sleep(0.3)

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as r:
            return json.loads(r.read())

    def post(self, path: str, body: dict) -> dict:
        request = urllib.request.Request(self.url + path, data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=60) as r:
            return json.loads(r.read())

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


def write_catalogue(root, n: int = 1600) -> None:
    """shop/products.csv + shop/images/: coloured shapes with sleeves of stripes; README's columns."""
    rng = np.random.default_rng(5)
    colours = {"navy": (120, 30, 20), "red": (30, 30, 210), "green": (40, 170, 40), "yellow": (40, 210, 220)}
    os.makedirs(root / "shop" / "images")
    with open(root / "shop" / "products.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["sku", "image", "colour", "sleeve", "pattern", "title"])
        for i in range(n):
            colour = list(colours)[rng.integers(4)] if i % 400 else "teal"  # 4 teal rows: grouped into other
            sleeve, pattern = ["long", "short"][rng.integers(2)], ["plain", "striped"][rng.integers(2)]
            img = np.full((64, 64, 3), 235, np.uint8)
            bgr = colours.get(colour, (120, 120, 0))
            cv2.rectangle(img, (20, 12), (44, 56), bgr, -1)
            cv2.rectangle(img, (6, 12), (20, 30 if sleeve == "short" else 54), bgr, -1)
            if pattern == "striped":
                img[12:56:6, 20:44] = 255
            name = f"images/a{i}.jpg"
            if i != 7:  # one listed image is missing
                cv2.imwrite(str(root / "shop" / name), img)
            w.writerow(
                [f"A-{1000 + i}", name, colour, "" if i % 10 == 3 else sleeve, pattern, f"Item {i}, size M"]
            )


def test_readme_catalogue_commands_convert_train_export_index_and_serve(tmp_path):
    write_catalogue(tmp_path)
    commands = readme_block("## Your own catalogue")
    assert [c.split()[2] for c in commands] == [
        "data_prep.catalog", "experiments.main", "experiments.export", "experiments.index", "experiments.serve",
    ]  # fmt: skip
    out = run(commands[0], tmp_path)
    assert "colour: green, navy, red, yellow, other (1 rare values grouped into 'other')" in out
    info = json.loads((tmp_path / "data" / "shop" / "dataset.json").read_text())
    assert info["name"] == "shop" and info["splits"] == {"train": 99, "query": 300, "gallery": 1200}
    assert info["report"]["skipped_by_reason"] == {"missing": 1}
    for command in commands[1:4]:
        run(command, tmp_path)
    assert [p for p in (tmp_path / "work").glob("shop*/**/stage2_rank_l/ckpt") if p.is_dir()]
    assert list((tmp_path / "work").glob("shop*/**/table.md"))  # the main job's evaluation ran
    server = Served(commands[4], tmp_path)
    try:
        assert server.health["items"] == 1599 and server.health["dataset"] == "shop"  # --split=all
        item = server.get("/items?limit=1")["items"][0]
        answer = server.post("/search", {"item": item["id"], "set": {"colour": "other"}, "top_k": 5})
        assert len(answer["results"]) == 5 and answer["query"]["target"]["colour"] == "other"
    finally:
        server.stop()


def run_block(commands: list[str], cwd, **env) -> str:
    """Runs a README block's commands but `pip` (the extras are there for the tests) and the one
    `experiments.serve`, which it returns; `env`: variables added to the environment."""
    serve = [c for c in commands if "experiments.serve" in c]
    assert len(serve) == 1
    for command in commands:
        if not command.startswith("pip ") and command is not serve[0]:
            run(command, cwd, **env)
    return serve[0]


@pytest.fixture(scope="module")
def served_main_job(tmp_path_factory):
    """The quick start (--quick) and README's serving commands but the service, run once in a directory
    the serving and Beam tests share; (directory, the serve command)."""
    root = tmp_path_factory.mktemp("readme_serving")
    run("python -m experiments.main", root)
    serve = run_block(readme_block("## Serving: export, index, search, service, page"), root)
    return root, serve


def test_readme_serving_commands_and_curl_examples(served_main_job):
    tmp_path, serve = served_main_job
    assert (tmp_path / "result.png").exists()
    server = Served(serve, tmp_path)
    try:
        curl = readme_block("The API, with `curl`")
        assert sum(c.startswith("curl") for c in curl) >= 5
        script = "set -euo pipefail\n" + "\n".join(
            c.replace("127.0.0.1:8000", f"127.0.0.1:{server.port}")
            + ("\necho" if c.startswith("curl") else "")
            for c in curl
        )
        done = subprocess.run(
            ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        answers = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        health, vocabulary, upload, items, by_item = answers
        assert health["status"] == "ok" and health["items"] == server.health["items"]
        assert [a["name"] for a in vocabulary["attributes"]][:2] == ["color", "pattern"]
        assert [c["to"] for c in upload["changes"]] == ["black", "long"] and len(upload["results"]) == 5
        assert upload["query"]["target"]["color"] == "black" and upload["query"]["item"] is None
        assert len(items["items"]) == 3
        assert by_item["query"]["item"] == items["items"][0]["id"] and len(by_item["results"]) == 5
        assert by_item["changes"][0]["to"] == "black" and by_item["where"] == {"color": ["black"]}
        assert all(r["attributes"]["color"]["value"] == "black" for r in by_item["results"])
        assert 5 < by_item["candidates"] < health["items"]
        assert (tmp_path / "item.jpg").read_bytes()[:3] == b"\xff\xd8\xff"
    finally:
        server.stop()


def test_readme_beam_commands_from_a_folder_to_a_running_service(served_main_job):
    """README's "Catalogues of millions" block: a folder embedded on Beam's DirectRunner with two worker
    processes, indexed from the shards and served (the main job's quick export); the commands leave
    nothing in the temporary directory (Beam's DirectRunner leaves three directories there on its own)."""
    require(not BEAM_MISSING, f"README's Beam commands need the beam extra: {BEAM_INSTALL}")
    cwd, _ = served_main_job
    commands = readme_block("### Catalogues of millions")
    assert [c.split()[2] for c in commands if c.startswith("python -m")] == [
        "experiments.embed_beam", "experiments.index", "experiments.serve",
    ]  # fmt: skip
    temp = cwd / "beam-tmp"
    temp.mkdir()
    serve = run_block(commands, cwd, TMPDIR=str(temp))
    assert os.listdir(temp) == []
    manifest = json.loads((cwd / "embeddings" / "catalogue" / "embeddings.json").read_text())
    assert manifest["count"] == 200 and manifest["skipped"] == 0
    assert manifest["pipeline"]["runner"] == "DirectRunner" and manifest["pipeline"]["workers"] == 2
    server = Served(serve, cwd)
    try:
        assert server.health["items"] == 200
        item = server.get("/items?limit=1")["items"][0]
        assert item["id"] == "0000.jpg"  # experiments.index's order: the folder's files by path
        answer = server.post("/search", {"item": item["id"], "set": {"color": "black"}, "top_k": 5})
        assert len(answer["results"]) == 5 and answer["query"]["target"]["color"] == "black"
    finally:
        server.stop()
