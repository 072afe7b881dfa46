"""The search service (`serving/service.py`): its endpoints answer what the library computes, every bad
input gets its status and reason, concurrent requests get the answers they would get alone, and the
TensorFlow Serving path (`--model_url`, against a localhost stub answering from the same SavedModel)
gives the in-process answers."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import itertools
import json
import os
import shutil
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import commands
import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from service_fixture import free_port, live_server
from tf_serving_stub import running_stub

from fashionsearchnet_v2.data import images, pipeline
from fashionsearchnet_v2.serving import export, indexing, items, remote, service
from fashionsearchnet_v2.serving import index as index_lib


@pytest.fixture(scope="module")
def searcher(trained):
    return service.Searcher(trained.model, index_lib.SearchIndex.load(trained.index_path))


@pytest.fixture(scope="module")
def client(searcher):
    return TestClient(service.create_app(searcher, max_upload_bytes=200_000, max_pixels=1_000_000))


REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _png(h=50, w=40, seed=0) -> bytes:
    img = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return cv2.imencode(".png", img)[1].tobytes()


def _strip(answer: dict) -> dict:
    return {k: v for k, v in answer.items() if k != "took_ms"}


def test_health_vocabulary_and_items(client, searcher, trained):
    health = client.get("/healthz").json()
    assert health["status"] == "ok" and health["items"] == 200 and health["backend"] == "exact"
    assert health["model"] == "in-process" and health["item_images"] is True
    assert client.get("/vocabulary").json() == trained.model.vocabulary.to_json()
    page = client.get("/items", params={"offset": 198, "limit": 5}).json()
    index = searcher.index
    assert page["total"] == 200 and [i["id"] for i in page["items"]] == [str(x) for x in index.ids[198:]]
    item_id = str(index.ids[3])
    item = client.get(f"/items/{item_id}").json()
    version = bytes(index.content[3])[:12].decode()  # the image's digest: a changed image, a new URL
    assert item["attributes"] == index.attributes(3) and item["image_url"] == f"/images/{item_id}?v={version}"
    image = client.get(item["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    want = pipeline.read_split_images(trained.info, "gallery", [item_id])[item_id]
    np.testing.assert_array_equal(index_lib.decode_image(image.content, "x"), want)
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"></script>' in page.text
    assert client.get("/static/app.js").status_code == 200


def test_search_is_the_library_search(client, searcher, trained):
    """An item query with a colour change = embed, manipulate, exact ranking; the item itself left out."""
    index, vocab = searcher.index, trained.model.vocabulary
    row = 5
    item_id = str(index.ids[row])
    colour = vocab.attribute_index("color")
    current = int(index.known_values()[row, colour])
    new = (current + 3) % len(vocab.attributes[colour].values)
    new_name = vocab.attributes[colour].values[new]
    answer = client.post("/search", data={"item": item_id, "set": f"color={new_name}", "top_k": "7"}).json()

    image = pipeline.read_split_images(trained.info, "gallery", [item_id])[item_id]
    emb = trained.model.embed([image])
    query = trained.model.manipulate(emb["attribute_representations"], [[colour]], [[new]])
    rows, dist = index.search(query, 8)
    keep = rows[0] != row
    assert [r["id"] for r in answer["results"]] == [str(index.ids[r]) for r in rows[0][keep][:7]]
    np.testing.assert_allclose([r["distance"] for r in answer["results"]], dist[0][keep][:7], atol=1e-4)
    assert answer["changes"] == [
        {"attribute": "color", "from": vocab.attributes[colour].values[current], "to": new_name}
    ]
    assert answer["query"]["item"] == item_id and answer["query"]["target"]["color"] == new_name
    known = index.known_values()
    for r in answer["results"]:
        i = list(index.ids).index(r["id"])
        assert r["matches"]["color"] == (known[i, colour] == new) == r["changes_match"]
        assert r["all_match"] == all(r["matches"].values())
    # the query's predictions, boxes and maps are embed's
    for a, name in enumerate(vocab.names):
        pred = answer["query"]["predicted"][name]
        assert pred["value"] == vocab.attributes[a].values[emb["predicted_values"][0, a]]
        assert abs(pred["probability"] - emb["predicted_probabilities"][0, a]) < 1e-3
        np.testing.assert_allclose(answer["query"]["boxes"][name], emb["boxes"][0, a], atol=1e-3)
        np.testing.assert_allclose(answer["query"]["maps"][name], emb["maps"][0, a], atol=1e-3)

    # The same image uploaded (multipart, then JSON base64) ranks the same, with the item itself first.
    encoded = client.get(f"/images/{item_id}").content
    up = client.post("/search", files={"image": ("q.jpg", encoded, "image/jpeg")},
                     data={"set": [f"color={new_name}"], "top_k": "8"}).json()  # fmt: skip
    ids = [r["id"] for r in up["results"]]
    assert [i for i in ids if i != item_id][:7] == [r["id"] for r in answer["results"]]
    body = {"image_base64": base64.b64encode(encoded).decode(), "set": {"color": new_name}, "top_k": 8}
    as_json = client.post("/search", json=body).json()
    assert [r["id"] for r in as_json["results"]] == ids and as_json["query"]["item"] is None
    # ... and as a browser's data URL (FileReader.readAsDataURL), prefix and all
    body["image_base64"] = "data:image/jpeg;base64," + body["image_base64"]
    assert [r["id"] for r in client.post("/search", json=body).json()["results"]] == ids
    # no change: embed's global representation, the query item excluded
    plain = client.post("/search", json={"item": item_id, "top_k": 3}).json()
    rows, _ = index.search(emb["global_representation"], 4)
    assert [r["id"] for r in plain["results"]] == [str(index.ids[r]) for r in rows[0] if r != row][:3]
    assert plain["changes"] == [] and all(r["changes_match"] for r in plain["results"])


def test_where_keeps_the_results_to_the_items_with_those_values(client, searcher, trained):
    """ "This item, but black; only black items": the manipulated query ranked over the items whose colour
    (label, else prediction) is black, the library's search with `where_mask`; the item left out."""
    index, vocab = searcher.index, trained.model.vocabulary
    known = index.known_values()
    colour, row = vocab.attribute_index("color"), 5
    item_id = str(index.ids[row])
    new = (int(known[row, colour]) + 3) % len(vocab.attributes[colour].values)
    new_name = vocab.attributes[colour].values[new]
    answer = client.post(
        "/search",
        data={"item": item_id, "set": f"color={new_name}", "where": f"color={new_name}", "top_k": "7"},
    ).json()
    allowed = index.where_mask({colour: (new,)})
    assert 7 < allowed.sum() < len(index) and answer["candidates"] == allowed.sum()
    assert answer["where"] == {"color": [new_name]}
    image = pipeline.read_split_images(trained.info, "gallery", [item_id])[item_id]
    emb = trained.model.embed([image])
    query = trained.model.manipulate(emb["attribute_representations"], [[colour]], [[new]])
    rows, dist = index.search(query, 8, allowed=allowed)
    want = [r for r in rows[0] if r != row][:7]
    assert [r["id"] for r in answer["results"]] == [str(index.ids[r]) for r in want]
    np.testing.assert_allclose(
        [r["distance"] for r in answer["results"]], dist[0][rows[0] != row][:7], atol=1e-4
    )
    assert all(r["changes_match"] for r in answer["results"])
    # Without the filter the same search ranks other colours among its 7 (else the test shows nothing).
    unfiltered = client.post(
        "/search", data={"item": item_id, "set": f"color={new_name}", "top_k": "7"}
    ).json()
    assert not all(r["changes_match"] for r in unfiltered["results"])

    # JSON: several values of one attribute are alternatives, several attributes all hold.
    sleeve = vocab.attribute_index("sleeve_length")
    two = list(vocab.attributes[colour].values[:2])
    long_name = vocab.attributes[sleeve].values[int(known[row, sleeve])]
    body = {"item": item_id, "where": {"color": two, "sleeve_length": long_name}, "top_k": 50}
    answer = client.post("/search", json=body).json()
    allowed = index.where_mask({colour: (0, 1), sleeve: (int(known[row, sleeve]),)})
    assert answer["candidates"] == allowed.sum() and answer["where"] == {
        "color": two,
        "sleeve_length": [long_name],
    }
    assert len(answer["results"]) == min(50, allowed.sum() - allowed[row])
    assert all(r["attributes"]["color"]["value"] in two for r in answer["results"])
    assert all(r["attributes"]["sleeve_length"]["value"] == long_name for r in answer["results"])
    # A filter no item passes (a combination of every attribute's values that no item has): no results.
    have = {tuple(k) for k in known}
    empty = next(
        c for c in itertools.product(*(range(len(a.values)) for a in vocab.attributes)) if c not in have
    )
    where = [f"{a.name}={a.values[v]}" for a, v in zip(vocab.attributes, empty)]
    answer = client.post("/search", json={"item": item_id, "where": where}).json()
    assert answer["results"] == [] and answer["candidates"] == 0
    r = client.post("/search", json={"item": item_id, "where": {"colour": "red"}})
    assert r.status_code == 400 and r.json() == {
        "error": "unknown attribute 'colour' in 'where'",
        "valid": vocab.names,
    }
    r = client.post("/search", data={"item": item_id, "where": "color=teal"})
    assert (
        r.status_code == 400 and "unknown value 'teal' for attribute 'color' in 'where'" in r.json()["error"]
    )
    assert r.json()["valid"] == list(vocab.attributes[colour].values)


@pytest.mark.parametrize(
    "kwargs, status, reason",
    [
        (dict(files={"image": ("a.txt", b"just some text", "text/plain")}), 400, "not a decodable"),
        (dict(files={"image": ("a.png", b"", "image/png")}), 400, "empty"),
        (dict(data={"item": "no-such-item"}), 404, "no item 'no-such-item'"),
        (dict(json={"set": {"color": "red"}}), 400, "exactly one query"),
        (dict(data={"top_k": "3"}), 400, "exactly one query"),
        (dict(data={"item": "x"}, files={"image": ("a.png", b"\x89PNG", "image/png")}), 400, "exactly one"),
        (dict(json={"item": "x", "image_base64": "%%%"}), 400, "not valid base64"),
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 400, "not JSON"),
        (dict(json=["item"]), 400, "must be an object"),
        (dict(json={"item": "x", "colour": "red"}), 400, "unknown fields"),
        (dict(content=b"abc", headers={"content-type": "text/plain"}), 415, "multipart/form-data"),
        (dict(data={"item": "ID", "top_k": "many"}), 400, "top_k must be an integer"),
        (dict(data={"item": "ID", "top_k": "0"}), 400, "top_k must be in 1..200"),
        (dict(json={"item": "ID", "top_k": 2.5}), 400, "top_k must be an integer"),
        (dict(data={"item": "ID", "set": "color"}), 400, "is not ATTRIBUTE=VALUE"),
        (dict(data={"item": "ID", "set": ["color=red", "color=blue"]}), 400, "changed twice"),
        (dict(data={"item": "ID", "where": "color"}), 400, "filter 'color' is not ATTRIBUTE=VALUE"),
        (dict(json={"item": "ID", "where": {"color": []}}), 400, "must be a value or a non-empty list"),
        (dict(json={"item": "ID", "where": 3}), 400, "'where' must be an object"),
        (dict(data={"item": "ID", "top_k": "²"}), 400, "top_k must be an integer"),  # isdigit, no int
        (
            dict(content=b"[" * 200_000, headers={"content-type": "application/json"}),
            400,
            "nested too deeply",
        ),
        # Lists are bounded by the vocabulary before they are read (the audit of 2026-12-05).
        (
            dict(json={"item": "ID", "where": {"color": ["red"] * 50}}),
            400,
            "'where' lists 50 values for 'color', more than its",
        ),
        (dict(json={"item": "ID", "where": {"colour": ["red"] * 5000}}), 400, "more than any attribute has"),
        (
            dict(json={"item": "ID", "where": ["color=red"] * 5000}),
            400,
            "'where' lists 5,000 filters, more than",
        ),
        (
            dict(json={"item": "ID", "where": {f"a{i}": "x" for i in range(50)}}),
            400,
            "'where' names 50 attributes",
        ),
        (dict(json={"item": "ID", "set": ["color=red"] * 5000}), 400, "'set' lists 5,000 changes, more than"),
        (
            dict(json={"item": "ID", "set": {f"a{i}": "x" for i in range(50)}}),
            400,
            "'set' changes 50 attributes",
        ),
    ],
)
def test_bad_search_requests_get_a_status_and_a_reason(client, searcher, kwargs, status, reason):
    item_id = str(searcher.index.ids[0])
    for key in ("data", "json"):
        if isinstance(kwargs.get(key), dict) and kwargs[key].get("item") == "ID":
            kwargs = {**kwargs, key: {**kwargs[key], "item": item_id}}
    response = client.post("/search", **kwargs)
    assert response.status_code == status, response.text
    assert reason in response.json()["error"], response.json()


def test_unknown_names_are_refused_with_the_valid_ones(client, searcher, trained):
    item_id = str(searcher.index.ids[0])
    vocab = trained.model.vocabulary
    r = client.post("/search", data={"item": item_id, "set": "colour=red"})
    assert r.status_code == 400 and r.json() == {"error": "unknown attribute 'colour'", "valid": vocab.names}
    r = client.post("/search", json={"item": item_id, "set": {"color": "teal"}})
    want = list(vocab.attributes[vocab.attribute_index("color")].values)
    assert r.status_code == 400 and r.json()["valid"] == want and "unknown value 'teal'" in r.json()["error"]


def test_truncated_images_oversize_bodies_and_huge_images(client, searcher, trained):
    item_id = str(searcher.index.ids[0])
    jpeg = client.get(f"/images/{item_id}").content
    png = _png(64, 64)
    for name, data in (("t.jpg", jpeg[: len(jpeg) // 2]), ("t.png", png[: len(png) // 2])):
        r = client.post("/search", files={"image": (name, data, "image/x")})
        assert r.status_code == 400 and "not a decodable" in r.json()["error"], (name, r.text)
    big = _png(400, 400, seed=1)  # random pixels do not compress: > 200,000 bytes
    assert len(big) > 200_000
    r = client.post("/search", files={"image": ("big.png", big, "image/png")})
    assert r.status_code == 413 and "limit of 200,000" in r.json()["error"]

    def chunks():  # no Content-Length: the limit is enforced while reading
        for i in range(0, len(big), 65536):
            yield big[i : i + 65536]

    r = client.post("/search", content=chunks(), headers={"content-type": "application/octet-stream"})
    assert r.status_code == 413 and "larger than the limit" in r.json()["error"]
    # 2000 x 1000 pixels claimed by the header, more than the 1,000,000 allowed: refused undecoded
    huge = _png(8, 8)
    huge = huge[:16] + (2000).to_bytes(4, "big") + (1000).to_bytes(4, "big") + huge[24:]
    r = client.post("/search", files={"image": ("huge.png", huge, "image/png")})
    assert r.status_code == 413 and "2000 x 1000 pixels" in r.json()["error"]
    assert client.get("/healthz").status_code == 200  # and the service is still up


def test_unknown_items_are_404_and_listing_is_bounded(client):
    assert client.get("/items/nope").status_code == 404
    r = client.get("/images/nope/with/slashes")
    assert r.status_code == 404 and "no item 'nope/with/slashes'" in r.json()["error"]
    assert client.get("/items", params={"limit": 0}).status_code == 400
    r = client.get("/items", params={"offset": "x"})
    assert r.status_code == 400 and "offset" in r.json()["error"]


def test_image_dimensions_from_headers(trained):
    img = np.zeros((37, 53, 3), np.uint8)
    for ext in (".png", ".jpg", ".bmp"):
        assert images.dimensions(cv2.imencode(ext, img)[1].tobytes()) == (53, 37), ext
    assert images.dimensions(b"GIF89a" + (53).to_bytes(2, "little") + (37).to_bytes(2, "little")) == (
        53,
        37,
    )
    assert images.dimensions(b"not an image") is None


def test_concurrent_requests_get_the_answers_they_get_alone(searcher, trained):
    vocab = trained.model.vocabulary
    index = searcher.index
    image = cv2.imencode(
        ".png", pipeline.read_split_images(trained.info, "gallery", [str(index.ids[9])])[str(index.ids[9])]
    )[1].tobytes()
    requests = []
    for i in range(24):
        attr = vocab.attributes[i % len(vocab.attributes)]
        change = f"{attr.name}={attr.values[i % len(attr.values)]}"
        fields = {"set": change, "top_k": str(5 + i)}
        if i % 4 == 1:  # a filter: ranked in its own group of the batch
            fields["where"] = change if i % 8 == 1 else f"{attr.name}={attr.values[0]}"
        if i % 3 == 0:
            requests.append((fields, image))
        else:
            requests.append(({"item": str(index.ids[i * 7]), **fields}, None))

    app = service.create_app(searcher)
    with live_server(app) as url:

        def ask(req):
            fields, upload = req
            boundary = "xyzBOUNDARY"
            parts = []
            for k, v in fields.items():
                parts.append(
                    f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                )
            if upload is not None:
                parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n'
                             "Content-Type: image/png\r\n\r\n".encode() + upload + b"\r\n")  # fmt: skip
            body = b"".join(parts) + f"--{boundary}--\r\n".encode()
            r = urllib.request.Request(url + "/search", data=body,
                                       headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
            with urllib.request.urlopen(r, timeout=60) as response:
                return _strip(json.loads(response.read()))

        alone = [ask(r) for r in requests]
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            together = list(pool.map(ask, requests * 2))
    # Computed in batches of up to 8 they are the same answers (numbers to rounding: a batch may take
    # other kernels than one image).
    for got, want in zip(together, alone * 2):
        assert [r["id"] for r in got["results"]] == [r["id"] for r in want["results"]]
        assert [r["matches"] for r in got["results"]] == [r["matches"] for r in want["results"]]
        np.testing.assert_allclose([r["distance"] for r in got["results"]], [r["distance"] for r in want["results"]],
                                   atol=1e-3)  # fmt: skip
        assert {k: v["value"] for k, v in got["query"]["predicted"].items()} == {
            k: v["value"] for k, v in want["query"]["predicted"].items()
        }
        assert got["changes"] == want["changes"] and got["query"]["target"] == want["query"]["target"]
        assert got["where"] == want["where"] and got["candidates"] == want["candidates"]
    assert sum(bool(a["where"]) for a in alone) == 6


def test_batcher_batches_concurrent_calls_and_returns_each_its_result():
    sizes, gate = [], threading.Event()

    def fn(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            gate.wait(10)  # hold the first batch until every other call has queued
        if -1 in items:
            raise ValueError("bad item")
        return [x * x for x in items]

    batcher = service.Batcher(fn, max_batch=4)
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        first = pool.submit(batcher, 1)
        while not sizes:
            time.sleep(0.01)
        rest = [pool.submit(batcher, x) for x in range(2, 11)]
        while len(batcher._pending) < 9:
            time.sleep(0.01)
        gate.set()
        assert [first.result()] + [f.result() for f in rest] == [x * x for x in range(1, 11)]
    assert sizes == [1, 4, 4, 1]  # the calls that queued meanwhile ran in batches of at most 4
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        futures = [pool.submit(batcher, x) for x in (2, -1, 3)]
        outcomes = []
        for f in futures:
            try:
                outcomes.append(f.result())
            except ValueError as e:
                outcomes.append(str(e))
    assert "bad item" in outcomes and outcomes[0] in (4, "bad item")
    assert batcher(5) == 25 and not batcher._running  # and it still works


def test_batcher_gathers_as_many_as_the_previous_batch_and_never_delays_a_lone_call():
    sizes, gate = [], threading.Event()

    def fn(items):
        sizes.append(len(items))
        if len(sizes) == 1:
            gate.wait(10)
        return list(items)

    batcher = service.Batcher(fn, max_batch=8, gather_ms=5000)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        first = pool.submit(batcher, 0)
        while not sizes:
            time.sleep(0.01)
        queued = [pool.submit(batcher, x) for x in (1, 2, 3)]
        while len(batcher._pending) < 3:
            time.sleep(0.01)
        gate.set()
        assert first.result() == 0 and [f.result() for f in queued] == [1, 2, 3]
        assert sizes == [1, 3]
        # The three callers come back 0.2 s apart: the first one back waits for the other two (up to 5 s).
        start = time.perf_counter()
        back = []
        for x in (4, 5, 6):
            back.append(pool.submit(batcher, x))
            time.sleep(0.2)
        assert [f.result() for f in back] == [4, 5, 6] and sizes == [1, 3, 3]
        assert time.perf_counter() - start < 3
    # Only one comes back: it waits out gather_ms once, then a lone caller is never delayed again.
    batcher.gather_s = 0.3
    start = time.perf_counter()
    assert batcher(7) == 7 and sizes[-1] == 1 and time.perf_counter() - start >= 0.3
    start = time.perf_counter()
    assert batcher(8) == 8 and batcher(9) == 9 and time.perf_counter() - start < 0.25
    assert sizes == [1, 3, 3, 1, 1, 1]


def test_serve_command_passes_its_batching_flags(trained, tmp_path):
    """`experiments.serve --max_batch --gather_ms` reach the searcher (--max_batch once did not)."""
    port = free_port()
    argv = [sys.executable, "-m", "experiments.serve", f"--export_dir={trained.export_dir}",
            f"--index={trained.index_path}", f"--port={port}", "--max_batch=3", "--gather_ms=7.5",
            "--log_level=warning"]  # fmt: skip
    with open(tmp_path / "serve.log", "w") as log:
        proc = commands.start(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                    health = json.loads(r.read())
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, (tmp_path / "serve.log").read_text()[
                    -3000:
                ]
                time.sleep(0.3)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert health["max_batch"] == 3 and health["gather_ms"] == 7.5


def test_tf_serving_path_gives_the_in_process_answers(searcher, trained):
    index = searcher.index
    image = pipeline.read_split_images(trained.info, "gallery", [str(index.ids[11])])[str(index.ids[11])]
    with running_stub(trained.export_dir) as stub:
        model = remote.RemoteModel(stub.model_url + ":predict", trained.export_dir)  # either URL form works
        assert model.check_available() == ["1"]
        # the stub is TF Serving-like: row format gives what the columnar form gives
        emb = model.embed([image, image[::-1]])
        local = trained.model.embed([image, image[::-1]])
        for k in export.EMBED_OUTPUTS:
            np.testing.assert_allclose(emb[k], local[k], atol=1e-5)
        rows = stub.predict(export.rest_request("embed", {"images": np.stack([image])}, columnar=False))
        np.testing.assert_allclose(
            rows["predictions"][0]["global_representation"], local["global_representation"][0], atol=1e-5
        )

        remote_searcher = service.Searcher(model, index)
        client = TestClient(service.create_app(remote_searcher))
        assert client.get("/healthz").json()["model"] == stub.model_url + "/versions/1"
        for body in ({"item": str(index.ids[4]), "set": {"color": "black", "pattern": "dots"}, "top_k": 9},
                     {"item": str(index.ids[4]), "top_k": 9}):  # fmt: skip
            there = client.post("/search", json=body).json()
            here = searcher.search(item=body["item"], changes=list(body.get("set", {}).items()), top_k=9)
            assert [r["id"] for r in there["results"]] == [r["id"] for r in here["results"]]
            np.testing.assert_allclose([r["distance"] for r in there["results"]],
                                       [r["distance"] for r in here["results"]], atol=1e-4)  # fmt: skip
        assert any(c.endswith(":predict") for c in stub.calls)
        # TF Serving refusing a call -> 502 with its message
        stub.fail_next = "simulated failure"
        r = client.post("/search", json={"item": str(index.ids[4])})
        assert r.status_code == 502 and "simulated failure" in r.json()["error"]
        with pytest.raises(remote.RemoteModelError, match="answered 404"):
            remote.RemoteModel(stub.model_url.replace("/fsn", "/other"), trained.export_dir)
    # TF Serving gone -> 503
    r = client.post("/search", json={"item": str(index.ids[4])})
    assert r.status_code == 503 and "unreachable" in r.json()["error"]
    with pytest.raises(ValueError, match="must look like"):
        remote.RemoteModel("localhost:8501", trained.export_dir, check=False)


def test_tf_serving_is_asked_for_the_exports_version(searcher, trained, export_dir, tmp_path):
    """TensorFlow Serving answers a URL without /versions/N from its newest version: deploying
    exports/shop/2 beside exports/shop/1 changed the query vectors while the index's fingerprint check,
    made against the local .../1, passed. Requests now name the export directory's version, which must be
    AVAILABLE at start-up; a URL naming another version, or a label, is refused."""
    index = searcher.index
    image = pipeline.read_split_images(trained.info, "gallery", [str(index.ids[11])])[str(index.ids[11])]
    # version 2: another export (index_fixture's tiny random one), the newest
    with running_stub(versions={1: trained.export_dir, 2: export_dir}) as stub:
        for url in (stub.model_url, stub.model_url + "/versions/1", stub.model_url + "/versions/1:predict"):
            model = remote.RemoteModel(url, trained.export_dir)
            assert model.model_url == stub.model_url + "/versions/1" and model.check_available() == ["1", "2"]
        emb = model.embed([image])
        want = trained.model.embed([image])["global_representation"]
        np.testing.assert_allclose(emb["global_representation"], want, atol=1e-5)
        assert set(stub.calls) == {"/v1/models/fsn/versions/1:predict"}  # the start-up probes and embed
        with pytest.raises(ValueError, match=r"names version 2, but --export_dir=.*/1 is version 1"):
            remote.RemoteModel(stub.model_url + "/versions/2", trained.export_dir)
        with pytest.raises(ValueError, match="names the label 'stable'"):
            remote.RemoteModel(stub.model_url + "/labels/stable", trained.export_dir)
        # a local copy not named by its version: the URL must name it
        named = tmp_path / "shop-export"
        named.symlink_to(export_dir)
        with pytest.raises(ValueError, match="not named by a version number.*add /versions/N"):
            remote.RemoteModel(stub.model_url, str(named))
        assert remote.RemoteModel(stub.model_url + "/versions/2", str(named)).model_url.endswith(
            "/versions/2"
        )
    # only version 2 deployed, or version 1 not AVAILABLE: refused at start-up, naming both
    for versions, states in (
        ({2: export_dir}, None),
        ({1: trained.export_dir, 2: export_dir}, {1: "LOADING"}),
    ):
        with running_stub(versions=versions, states=states) as stub:
            with pytest.raises(remote.RemoteModelError, match="no AVAILABLE version 1, the version of") as e:
                remote.RemoteModel(stub.model_url, trained.export_dir)
            assert "2 AVAILABLE" in str(e.value) and stub.calls == []


def test_tf_serving_serving_another_model_as_the_exports_version_is_refused(trained, export_dir, tmp_path):
    """Version 1 on TensorFlow Serving holding another model than --export_dir (a redeploy that went
    wrong, another training): every check passed (the version is AVAILABLE, the index's fingerprint is the
    local copy's) and the service answered with other vectors. At start-up the served model now embeds
    export.json's probe image and must answer the vector recorded at export; an export written before the
    probe existed is not checked."""
    assert trained.model.metadata["probe"]["global_representation"]
    with running_stub(versions={1: export_dir}) as stub:  # the index fixture's tiny random export
        with pytest.raises(remote.RemoteModelError, match=r"version 1 at .* is not the export in") as e:
            remote.RemoteModel(stub.model_url, trained.export_dir)
        assert "its embed answers global representations of" in str(e.value)  # another size
        assert "deploy that export as version 1" in str(e.value)
        old = tmp_path / "old" / "1"  # the same export, its export.json without the probe
        shutil.copytree(trained.export_dir, old)
        meta = json.loads((old / export.EXPORT_JSON).read_text())
        del meta["probe"]
        (old / export.EXPORT_JSON).write_text(json.dumps(meta))
        assert remote.RemoteModel(stub.model_url, str(old)).check_probe() is None
    with running_stub(versions={1: trained.export_dir}) as stub:
        assert remote.RemoteModel(stub.model_url, trained.export_dir).check_probe() < 1e-5
        # The same size, other values: a recorded probe 10% off is refused, 0.1% off accepted.
        for scale, refused in ((1.1, True), (1.001, False)):
            other = tmp_path / f"scaled{scale}" / "1"
            shutil.copytree(trained.export_dir, other)
            meta = json.loads((other / export.EXPORT_JSON).read_text())
            meta["probe"]["global_representation"] = [
                scale * v for v in meta["probe"]["global_representation"]
            ]
            (other / export.EXPORT_JSON).write_text(json.dumps(meta))
            if refused:
                with pytest.raises(
                    remote.RemoteModelError, match=r"probe image differs by 0\.0909 \(relative"
                ):
                    remote.RemoteModel(stub.model_url, str(other))
            else:
                assert 0.0009 < remote.RemoteModel(stub.model_url, str(other)).check_probe() < 0.0011
    here = export.probe_image(64)
    assert here.shape == (64, 64, 3) and here.dtype == np.uint8 and len(np.unique(here)) > 200


def test_serve_refuses_a_tf_serving_without_the_exports_version_in_one_line(trained, export_dir, tmp_path):
    """`experiments.serve --model_url` against TensorFlow Serving that serves only version 2 while
    --export_dir is .../1: one error line naming both versions, before the service starts."""
    from test_cli import _cli, assert_one_error_line

    with running_stub(versions={2: export_dir}) as stub:
        result = _cli(["experiments.serve", f"--export_dir={trained.export_dir}",
                       f"--index={trained.index_path}", f"--model_url={stub.model_url}",
                       f"--port={free_port()}"], tmp_path)  # fmt: skip
    assert_one_error_line(result, "no AVAILABLE version 1", "its versions: 2 AVAILABLE")


def test_tf_serving_requests_are_compact_json(trained, monkeypatch):
    """An image goes to TensorFlow Serving as nested lists (its JSON takes "b64" only for string tensors,
    and resizing on the client would change the model's input): without the spaces json.dumps puts after
    every number, a 4 MP image's body is 42 MB less a fifth; the numbers are the same. The body is written
    by NumPy (`export.rest_request_body`), byte for byte the compact json.dumps of `rest_request`."""
    sent = []

    def urlopen(request, timeout):
        sent.append(request.data)
        return io.BytesIO(json.dumps({"outputs": {"global_representation": [[0.5]]}}).encode())

    monkeypatch.setattr(remote.urllib.request, "urlopen", urlopen)
    model = remote.RemoteModel("http://localhost:1/v1/models/fsn", trained.export_dir, check=False)
    batch = np.random.default_rng(0).integers(0, 256, (1, 20, 30, 3), dtype=np.uint8)
    want = export.rest_request("embed", {"images": batch})
    # written by export.rest_request_body, not through rest_request's Python lists (4.3 s for 4 MP)
    monkeypatch.setattr(export, "rest_request", None)
    assert model.predict("embed", {"images": batch})["global_representation"].tolist() == [[0.5]]
    assert sent[0] == json.dumps(want, separators=(",", ":")).encode()
    assert len(sent[0]) < 0.85 * len(json.dumps(want))


def test_searcher_refuses_an_index_of_another_export(trained, tmp_path):
    index = index_lib.SearchIndex.load(trained.index_path)
    index.metadata["export_fingerprint"] = "another"
    with pytest.raises(index_lib.IndexFileError, match="another export"):
        service.Searcher(trained.model, index)
    moved = index_lib.SearchIndex.load(trained.index_path)
    moved.metadata["source"]["data_dir"] = str(tmp_path / "gone")
    with pytest.raises(items.ItemImageError, match="pass the dataset's directory with --data_dir"):
        items.ItemImages(moved)
    assert items.ItemImages(moved, trained.data_dir).read(0)[:3] == b"\xff\xd8\xff"


def test_folder_index_items_are_served_from_their_files(trained, tmp_path):
    folder = tmp_path / "shop"
    (folder / "sub").mkdir(parents=True)
    for i in range(4):
        cv2.imwrite(str(folder / ("sub" if i else ".") / f"p{i}.png"), np.full((30, 30, 3), 60 * i, np.uint8))
    index, _ = indexing.index_folder(trained.model, str(folder), progress=False)
    client = TestClient(service.create_app(service.Searcher(trained.model, index)))
    item = client.get("/items/sub/p2.png").json()
    digest = index_lib.content_digest((folder / "sub" / "p2.png").read_bytes())[:12].decode()
    assert item["image_url"] == f"/images/sub%2Fp2.png?v={digest}"
    r = client.get(item["image_url"])
    assert r.status_code == 200 and r.headers["content-type"] == "image/png"
    assert r.content == (folder / "sub" / "p2.png").read_bytes()
    answer = client.post("/search", data={"item": "sub/p2.png", "set": "color=red", "top_k": "10"}).json()
    assert sorted(r["id"] for r in answer["results"]) == ["p0.png", "sub/p1.png", "sub/p3.png"]
    assert all(r["attributes"]["color"]["source"] == "predicted" for r in answer["results"])


def _gif(screen=(1, 1), frame=(1, 1), frames=1) -> bytes:
    """A GIF whose every frame is one pixel of LZW data, whatever size its descriptor claims."""
    out = bytearray(
        b"GIF89a" + struct.pack("<HH", *screen) + bytes([0x80, 0, 0]) + b"\x00\x00\x00\xff\xff\xff"
    )
    for _ in range(frames):
        out += b"\x2c" + struct.pack("<HHHH", 0, 0, *frame) + b"\x00"
        out += b"\x02\x02" + struct.pack("<H", 4 | (5 << 6)) + b"\x00"  # clear, index 0, end (3-bit codes)
    return bytes(out + b"\x3b")


def test_gif_frames_and_formats_without_a_size_check_are_refused_undecoded(client, monkeypatch):
    """The audit of 2026-12-05: a 48 KB GIF with a 1 x 1 screen and an 8000 x 8000 frame decoded to 378 MB
    before its 413 (TensorFlow sizes a GIF from its frames), and a 6 KB lossless WebP of 16383 x 10000 used
    957 MB (no header check: decode_image reads WebP). Both are now refused before any decoding."""

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded")

    monkeypatch.setattr(index_lib, "decode_image", no_decoding)
    monkeypatch.setattr(pipeline.records, "decode_image", no_decoding)
    bomb = _gif(frame=(8000, 8000))
    assert images.dimensions(bomb) == (8000, 8000) and images.gif_layout(bomb) == (8000, 8000, 1)
    r = client.post("/search", files={"image": ("g.gif", bomb, "image/gif")})
    assert r.status_code == 413 and "8000 x 8000 pixels" in r.json()["error"], r.text
    many = _gif(screen=(200, 200), frame=(200, 200), frames=30)  # 30 x 40,000 pixels, all decoded
    r = client.post("/search", files={"image": ("g.gif", many, "image/gif")})
    assert r.status_code == 413 and "the GIF has 30 frames of 200 x 200 pixels" in r.json()["error"], r.text
    webp = cv2.imencode(".webp", np.zeros((8, 8, 3), np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 101])[1].tobytes()
    assert webp[8:12] == b"WEBP"
    r = client.post("/search", files={"image": ("w.webp", webp, "image/webp")})
    assert r.status_code == 400 and r.json()["error"].startswith(
        "the uploaded image is not a decodable JPEG/PNG/BMP/GIF image (its first bytes"
    ), r.text


def test_a_gif_within_the_limit_still_decodes(trained):
    two = _gif(frames=2)  # 2 frames of 1 x 1: 2 pixels decoded
    assert service.decode_upload(two, max_pixels=2).shape == (1, 1, 3)
    with pytest.raises(service.RequestError, match="the GIF has 2 frames of 1 x 1 pixels"):
        service.decode_upload(two, max_pixels=1)


def test_a_file_name_that_is_not_utf8_is_skipped_and_the_rest_served(trained, tmp_path):
    """b'caf\\xe9.png' became the id 'caf\\udce9.png', which made /items and every search ranking it 500
    (UnicodeEncodeError in quote()); index_folder now lists it as skipped."""
    folder = tmp_path / "shop"
    folder.mkdir()
    png = cv2.imencode(".png", np.full((30, 30, 3), 90, np.uint8))[1].tobytes()
    (folder / "ok.png").write_bytes(png)
    try:
        with open(os.fsencode(folder) + b"/caf\xe9.png", "wb") as f:
            f.write(png)
    except OSError as e:
        pytest.skip(f"this file system refuses a name that is not UTF-8 ({e})")
    index, skipped = indexing.index_folder(trained.model, str(folder), progress=False)
    assert list(index.ids) == ["ok.png"]
    assert skipped == [("caf\\xe9.png", "its name is not UTF-8 text: rename the file to index it")]
    assert index.metadata["skipped"] == [{"path": "caf\\xe9.png", "reason": skipped[0][1]}]
    client = TestClient(service.create_app(service.Searcher(trained.model, index)))
    r = client.get("/items")
    assert r.status_code == 200 and [i["id"] for i in r.json()["items"]] == ["ok.png"]
    assert client.post("/search", json={"image_base64": base64.b64encode(png).decode()}).status_code == 200


def test_item_images_changed_or_gone_since_indexing_are_refused_without_server_paths(trained, tmp_path):
    """/images served whatever the path held now (symlinks followed) though the index stores each image's
    digest; errors named the absolute path and numpy's repr (np.str_('sp ace.png'))."""
    folder = tmp_path / "shop"
    folder.mkdir()
    for i, name in enumerate(["a.png", "sp ace.png", "c.png"]):
        cv2.imwrite(str(folder / name), np.full((30, 30, 3), 70 * i, np.uint8))
    other = tmp_path / "elsewhere.png"
    cv2.imwrite(str(other), np.full((30, 30, 3), 200, np.uint8))
    os.symlink(folder / "c.png", folder / "link.png")
    index, _ = indexing.index_folder(trained.model, str(folder), progress=False)
    client = TestClient(service.create_app(service.Searcher(trained.model, index)))
    assert (
        client.get("/images/a.png").status_code == 200 and client.get("/images/link.png").status_code == 200
    )
    cv2.imwrite(str(folder / "a.png"), np.full((30, 30, 3), 255, np.uint8))  # replaced since indexing
    os.remove(folder / "link.png")
    os.symlink(other, folder / "link.png")  # pointed elsewhere
    os.remove(folder / "sp ace.png")
    for item_id in ("a.png", "link.png"):
        r = client.get(f"/images/{item_id}")
        assert r.status_code == 500 and r.json() == {
            "error": f"the image of item '{item_id}' changed since the index was built; it is not served until "
            "the index is rebuilt"
        }
        r = client.post("/search", json={"item": item_id})
        assert r.status_code == 500 and "changed since the index was built" in r.json()["error"]
    r = client.get("/images/sp%20ace.png")
    assert r.status_code == 500 and r.json() == {
        "error": "the image of item 'sp ace.png' cannot be read (No such file or directory)"
    }
    assert str(tmp_path) not in client.post("/search", json={"item": "sp ace.png"}).text
    assert client.get("/images/c.png").status_code == 200  # unchanged: served


def test_an_unexpected_error_is_json_without_the_servers_state(searcher, monkeypatch):
    app = service.create_app(searcher)

    def broken(*args, **kwargs):
        raise KeyError("/srv/secret/path")

    monkeypatch.setattr(searcher, "list_items", broken)
    r = TestClient(app, raise_server_exceptions=False).get("/items")
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    assert r.json() == {"error": "internal error (KeyError); the server's log has the details"}


def test_health_answers_while_every_worker_thread_waits_for_the_batcher(searcher, trained):
    """/healthz took 2.2 s with 48 uploads in flight: a plain `def` handler waited for one of anyio's 40
    worker threads, all held by searches queued in the batcher. Now on the event loop."""
    held = service.Searcher(trained.model, searcher.index, searcher.item_images)
    gate, waiting = threading.Event(), []

    def blocked(job):
        waiting.append(job)
        gate.wait(60)
        raise service.RequestError(503, "released")

    held._batches = blocked
    app = service.create_app(held)
    with live_server(app) as url:

        def ask(_):
            body = json.dumps({"item": str(searcher.index.ids[0])}).encode()
            request = urllib.request.Request(url + "/search", body, {"Content-Type": "application/json"})
            try:
                urllib.request.urlopen(request, timeout=90).read()
            except urllib.error.HTTPError as e:
                return e.code

        with concurrent.futures.ThreadPoolExecutor(48) as pool:
            futures = [pool.submit(ask, i) for i in range(48)]
            try:
                deadline = time.time() + 60
                while len(waiting) < 40 and time.time() < deadline:  # every worker thread is held
                    time.sleep(0.05)
                assert len(waiting) == 40
                for path in ("/healthz", "/vocabulary"):
                    start = time.perf_counter()
                    with urllib.request.urlopen(url + path, timeout=30) as r:
                        assert r.status == 200
                    assert time.perf_counter() - start < 1.0, path
            finally:
                gate.set()
            assert {f.result() for f in futures} == {503}


def test_an_attribute_name_holding_an_equals_sign_is_split_after_it():
    """The page sends `set=NAME=VALUE` and the service split at the first "=": an attribute "fit=cut" could
    not be changed from the page."""
    vocabulary = {"fit=cut": ("slim", "wide=loose"), "fit": ("a=b",), "color": ("red",)}
    assert service.parse_set(["fit=cut=wide=loose", " fit=cut = slim", "color=red"], vocabulary) == [
        ("fit=cut", "wide=loose"),
        ("fit=cut", " slim"),
        ("color", "red"),
    ]
    assert service.parse_where("fit=a=b", vocabulary) == [("fit", "a=b")]
    assert service.parse_set(["color=red"]) == [("color", "red")]  # without a vocabulary: the first "="
