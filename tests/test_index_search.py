"""Index files and search: a folder or a dataset split embedded through an export, exact search equal to
brute force, FAISS against exact, refusal to overwrite, and the search command's answers and errors."""

import dataclasses
import json
import os
import shutil
import sys

import commands
import cv2
import numpy as np
import pytest
import tensorflow as tf
from index_fixture import VOCAB, write_tiny_dataset
from optional import FAISS_AVAILABLE, FAISS_INSTALL, require

from fashionsearchnet_v2.data import records, schema
from fashionsearchnet_v2.retrieval import metrics
from fashionsearchnet_v2.serving import index as index_lib
from fashionsearchnet_v2.serving import indexing, items, search_figure

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _brute_force(vectors, queries, k):
    d = np.linalg.norm(queries[:, None, :] - vectors[None], axis=-1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(d, order, axis=1)


def test_folder_index_embeds_each_image_and_exact_search_is_brute_force(model, folder, tmp_path):
    index, skipped = indexing.index_folder(model, folder, batch_size=2, chunk=4, progress=False)
    assert [p for p, _ in skipped] == ["broken.png"] and "not a decodable" in skipped[0][1]
    assert list(index.ids) == sorted(index.ids) and len(index) == 9 and "sub/img4.jpg" in list(index.ids)
    assert (index.labels == -1).all() and index.vectors.shape == (9, 32)
    # Grouping images by size inside a batch must not change any vector: compare with one call each.
    for i in (0, 4, 8):
        one = model.embed([index_lib.read_image(str(index.paths[i]))])
        np.testing.assert_allclose(index.vectors[i], one["global_representation"][0], atol=1e-5)
        np.testing.assert_array_equal(index.predicted_values[i], one["predicted_values"][0])
    path = index.save(str(tmp_path / "idx.npz"))
    loaded = index_lib.SearchIndex.load(path)
    np.testing.assert_array_equal(loaded.vectors, index.vectors)
    assert (
        loaded.metadata["source"]["kind"] == "folder"
        and loaded.metadata["skipped"][0]["path"] == "broken.png"
    )
    assert loaded.vocabulary == VOCAB.to_json() and loaded.backend == "exact"
    emb = model.embed([index_lib.read_image(str(index.paths[1]))] * 2)
    queries = np.concatenate(
        [
            emb["global_representation"][:1],
            model.manipulate(emb["attribute_representations"][1:], [[0, 1]], [[2, 0]]),
        ]
    )
    rows, dist = loaded.search(queries, k=5)
    want_rows, want_dist = _brute_force(index.vectors, queries, 5)
    np.testing.assert_array_equal(rows, want_rows)
    np.testing.assert_allclose(dist, want_dist, rtol=1e-5, atol=1e-4)
    assert rows[0, 0] == 1 and dist[0, 0] < 1e-2  # an indexed image finds itself first
    assert loaded.search(queries, k=50)[0].shape == (2, 9)  # k is clipped to the catalogue


def test_index_file_is_not_replaced_without_consent(model, folder, tmp_path):
    index, _ = indexing.index_folder(model, folder, progress=False)
    path = index.save(str(tmp_path / "idx.npz"))
    with pytest.raises(index_lib.IndexFileError, match="pass --overwrite"):
        index.save(path)
    index.save(path, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["idx.npz"]


def test_split_index_keeps_ids_labels_and_checks_the_vocabulary(model, tmp_path):
    info = write_tiny_dataset(tmp_path)
    index = indexing.index_split(model, info, "gallery", batch_size=4, chunk=5, progress=False)
    want = {}
    for s in tf.data.TFRecordDataset(info.shard_paths("gallery")):
        ex = records.parse_example(s, 2)
        want[ex["id"].numpy().decode()] = ex["labels"].numpy().tolist()
    assert list(index.ids) == list(want) and index.labels.tolist() == list(want.values())
    assert index.metadata["source"] == {"kind": "split", "data_dir": info.data_dir, "split": "gallery",
                                        "dataset": "t"}  # fmt: skip
    unlabelled = np.flatnonzero(index.labels[:, 1] == -1)
    assert unlabelled.size, "the tiny dataset leaves every fourth sleeve_length unlabelled"
    row = int(unlabelled[0])
    attrs = index.attributes(row)
    assert attrs["color"] == {"value": VOCAB.attributes[0].values[index.labels[row, 0]], "source": "label"}
    # An unlabelled attribute reports the model's prediction, with its probability.
    predicted = int(index.predicted_values[row, 1])
    assert attrs["sleeve_length"] == {
        "value": VOCAB.attributes[1].values[predicted],
        "source": "predicted",
        "probability": round(float(index.predicted_probabilities[row, 1]), 4),
    }
    path = index.save(str(tmp_path / "g.npz"))
    images = search_figure.result_images(index_lib.SearchIndex.load(path), [2, 0])
    one = search_figure.result_images(index_lib.SearchIndex.load(path), [2])[0]
    np.testing.assert_array_equal(images[0], one)
    np.testing.assert_allclose(index.vectors[2], model.embed([one])["global_representation"][0], atol=1e-5)
    other = dict(info.__dict__)
    other["attributes"] = [schema.Attribute("colour", ("red", "blue", "black")), VOCAB.attributes[1]]
    with pytest.raises(index_lib.IndexFileError, match="differ from the export's"):
        indexing.index_split(model, schema.DatasetInfo(**other), "gallery", progress=False)


def _records(info, split):
    """[(id, labels, encoded bytes)] of a split's records, in file order."""
    out = []
    for s in tf.data.TFRecordDataset(info.shard_paths(split)):
        ex = records.parse_example(s, 2)
        out.append((ex["id"].numpy().decode(), ex["labels"].numpy().tolist(), ex["encoded"].numpy()))
    return out


def test_an_index_of_every_split_holds_the_whole_catalogue_and_serves_each_items_image(model, tmp_path):
    """--split=all (a catalogue's every item, as a service serves it): train, query and gallery records in
    that order with their labels and the vectors a one-split index gives them; each item's image is read
    from its own split's shards (ItemImages, the result figure). A list keeps its order; anything else is
    refused naming what is expected."""
    info = write_tiny_dataset(tmp_path, n=14, num_gallery=5, per_shard=3)  # 7 train, 2 query, 5 gallery
    want = [r for split in ("train", "query", "gallery") for r in _records(info, split)]
    index = indexing.index_split(model, info, "all", batch_size=4, chunk=5, progress=False)
    assert list(index.ids) == [r[0] for r in want] and index.labels.tolist() == [r[1] for r in want]
    assert index.metadata["source"]["split"] == "train,query,gallery" and len(index) == 14
    gallery = indexing.index_split(model, info, "gallery", batch_size=4, chunk=5, progress=False)
    np.testing.assert_allclose(index.vectors[-5:], gallery.vectors, atol=1e-5)
    loaded = index_lib.SearchIndex.load(index.save(str(tmp_path / "all.npz")))
    images = items.ItemImages(loaded)
    assert images.source.endswith("(train,query,gallery splits)")
    for row in (0, 6, 7, 8, 13):  # the first and last train item, both query items, the last gallery item
        assert images.read(row) == want[row][2]
    first, last = search_figure.result_images(loaded, [0, 13])
    np.testing.assert_array_equal(first, tf.io.decode_image(want[0][2], channels=3).numpy())
    np.testing.assert_array_equal(last, tf.io.decode_image(want[13][2], channels=3).numpy())

    both = indexing.index_split(model, info, "gallery, query", progress=False)
    assert list(both.ids) == [r[0] for r in want[9:] + want[7:9]]
    assert both.metadata["source"]["split"] == "gallery,query"
    for spec in ("test", "gallery,gallery", " , "):
        with pytest.raises(
            schema.DatasetError, match=r"expected one of \['train', 'query', 'gallery'\].*or 'all'"
        ):
            schema.split_list(spec)


def test_reuse_takes_the_unchanged_items_of_an_earlier_index_and_embeds_the_rest(
    model, folder, tmp_path, monkeypatch
):
    """--reuse: a folder with one image changed, one added (the bytes of another, under a new name) and one
    removed is re-indexed by embedding the two new ones only, into the index a full rebuild gives; a
    split index takes every record from an index of all splits; an index without digests, or of another
    export, is refused."""
    shop = tmp_path / "shop"
    shutil.copytree(folder, shop)
    old = index_lib.SearchIndex.load(indexing.index_folder(model, str(shop), progress=False)[0].save(
        str(tmp_path / "old.npz")))  # fmt: skip
    assert old.content is not None and len(set(old.content.tolist())) == 9
    cv2.imwrite(str(shop / "img0.jpg"), 255 - cv2.imread(str(shop / "img0.jpg")))
    shutil.copy(shop / "img2.jpg", shop / "new.jpg")
    os.remove(shop / "img8.jpg")
    embedded, embed = [], model.embed
    monkeypatch.setattr(
        model, "embed", lambda images, *a, **k: embedded.append(len(images)) or embed(images, *a, **k)
    )
    again, skipped = indexing.index_folder(
        model, str(shop), batch_size=2, chunk=4, progress=False, previous=old
    )
    assert sum(embedded) == 2 and [p for p, _ in skipped] == ["broken.png"]
    assert again.metadata["reused"] == {"index": old.path, "items": 7}
    rebuilt, _ = indexing.index_folder(model, str(shop), progress=False)
    assert list(again.ids) == list(rebuilt.ids) and list(again.paths) == list(rebuilt.paths)
    np.testing.assert_allclose(again.vectors, rebuilt.vectors, atol=1e-5)
    np.testing.assert_array_equal(again.predicted_values, rebuilt.predicted_values)
    np.testing.assert_array_equal(again.content, rebuilt.content)
    kept = list(old.ids).index("img1.png")  # a reused row is the earlier one, bit for bit
    np.testing.assert_array_equal(again.vectors[list(again.ids).index("img1.png")], old.vectors[kept])

    (tmp_path / "d").mkdir()
    info = write_tiny_dataset(tmp_path / "d")
    every = indexing.index_split(model, info, "all", progress=False)
    embedded.clear()
    gallery = indexing.index_split(model, info, "gallery", progress=False, previous=every)
    assert sum(embedded) == 0 and gallery.metadata["reused"]["items"] == 6
    np.testing.assert_array_equal(gallery.vectors, every.vectors[-6:])
    assert gallery.labels.tolist() == every.labels[-6:].tolist()

    with pytest.raises(index_lib.IndexFileError, match="holds no digests of its images.*without --reuse"):
        indexing.index_folder(
            model, str(shop), progress=False, previous=dataclasses.replace(old, content=None)
        )
    other = dataclasses.replace(old, metadata=dict(old.metadata, export_fingerprint="another"))
    with pytest.raises(index_lib.IndexFileError, match="embedded by another export"):
        indexing.index_folder(model, str(shop), progress=False, previous=other)


def test_faiss_recall_is_measured_on_the_catalogues_own_vectors():
    """`experiments.index --backend=faiss` reports recall@k against exact search on the user's vectors
    (only the synthetic benchmark measured it): 1 where IVF scans every cell, below 1 with one cell of 16,
    and a query's own row never counts (each vector would find itself)."""
    require(FAISS_AVAILABLE, f"faiss is not installed: {FAISS_INSTALL}")
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 16)).astype(np.float32)
    ivf = index_lib.build_faiss(vectors, "ivf_flat", nlist=16)
    every = index_lib.faiss_recall(ivf, vectors, k=10, queries=50, nprobe=16)
    assert every == {"k": 10, "queries": 50, "recall": 1.0}
    one = index_lib.faiss_recall(ivf, vectors, k=10, queries=50, nprobe=1)
    assert 0.0 < one["recall"] < 0.9
    # Own rows left out: recall over the k true neighbours, not k - 1 of them plus the query itself.
    exact, _ = metrics.ExactIndex(vectors).search(vectors[:3], 11)
    assert [int(r[0]) for r in exact] == [0, 1, 2]
    assert index_lib.recall_at_k(np.array([[1, 2, -1]]), np.array([[1, 2, 3]])) == pytest.approx(2 / 3)


def test_faiss_matches_exact_where_it_scans_everything(tmp_path, model):
    require(FAISS_AVAILABLE, f"faiss is not installed: {FAISS_INSTALL}")
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 32)).astype(np.float32) * 4
    vectors = (centers[rng.integers(0, 8, 800)] + rng.normal(size=(800, 32))).astype(np.float32)
    queries = (centers[rng.integers(0, 8, 20)] + rng.normal(size=(20, 32))).astype(np.float32)
    want_rows, want_dist = _brute_force(vectors, queries, 10)
    ivf = index_lib.build_faiss(vectors, "ivf_flat", nlist=8)
    rows, dist = index_lib.faiss_search(ivf, queries, 10, nprobe=8)  # every cell: exact
    np.testing.assert_array_equal(np.sort(rows, 1), np.sort(want_rows, 1))
    np.testing.assert_allclose(dist, want_dist, rtol=1e-4, atol=1e-3)
    hnsw = index_lib.build_faiss(vectors, "hnsw", hnsw_m=16)
    rows, _ = index_lib.faiss_search(hnsw, queries, 10, ef_search=400)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(rows, want_rows)])
    assert recall > 0.95
    n = 800
    index = index_lib.SearchIndex(vectors, np.arange(n).astype(str), np.full(n, ""), np.full((n, 2), -1),
                                  np.zeros((n, 2)), np.zeros((n, 2)),
                                  {"vocabulary": VOCAB.to_json(), "source": {"kind": "folder"},
                                   "faiss": {"kind": "ivf_flat", "nlist": 8, "nprobe": 8}})  # fmt: skip
    path = index.save(str(tmp_path / "f.npz"), faiss_index=ivf)
    loaded = index_lib.SearchIndex.load(path)
    partner = os.path.join(tmp_path, loaded.metadata["faiss"]["file"])
    assert loaded.backend == "faiss" and index_lib.faiss_partners(path) == [partner]
    np.testing.assert_array_equal(np.sort(loaded.search(queries, 10)[0], 1), np.sort(want_rows, 1))
    np.testing.assert_array_equal(loaded.search(queries, 10, backend="exact")[0], want_rows)
    index.save(path, overwrite=True, faiss_index=ivf)  # a rebuild replaces the partner, leaves no stale one
    partner = index_lib.faiss_partners(path)
    assert (
        len(partner) == 1
        and os.path.basename(partner[0]) == index_lib.SearchIndex.load(path).metadata["faiss"]["file"]
    )
    index_lib.import_faiss().write_index(index_lib.build_faiss(vectors[:100], "hnsw"), partner[0])
    with pytest.raises(index_lib.IndexFileError, match="does not belong|holds 100 vectors"):
        index_lib.SearchIndex.load(path).search(queries, 10)


def test_where_keeps_the_rows_with_those_values_in_exact_search():
    """`where_mask`: an item's label where known, else its prediction; one attribute's values are
    alternatives, several attributes all hold. Exact search with the mask is brute force over those rows."""
    labels = np.array([[0, 1], [2, -1], [-1, 0], [1, 1], [2, 0]])
    predicted = np.array([[1, 0], [2, 1], [2, 1], [0, 0], [0, 1]])
    known = np.where(labels >= 0, labels, predicted)  # [[0, 1], [2, 1], [2, 0], [1, 1], [2, 0]]
    np.testing.assert_array_equal(index_lib.where_mask(known, {0: (2,)}), [0, 1, 1, 0, 1])
    np.testing.assert_array_equal(index_lib.where_mask(known, {0: (2, 1)}), [0, 1, 1, 1, 1])
    np.testing.assert_array_equal(index_lib.where_mask(known, {0: (2, 1), 1: (1,)}), [0, 1, 0, 1, 0])
    np.testing.assert_array_equal(index_lib.where_mask(known, {}), [1, 1, 1, 1, 1])

    vectors, queries, index, allowed = _where_case()
    rows, dist = index.search(queries, 10, allowed=allowed)
    sub_rows, sub_dist = _brute_force(vectors[allowed], queries, 10)
    np.testing.assert_array_equal(rows, np.flatnonzero(allowed)[sub_rows])
    np.testing.assert_allclose(dist, sub_dist, rtol=1e-4, atol=1e-3)


def _where_case():
    """800 clustered vectors with random known values, 20 queries, and the rows `where` allows."""
    n = 800
    rng = np.random.default_rng(1)
    centers = rng.normal(size=(8, 32)).astype(np.float32) * 4
    vectors = (centers[rng.integers(0, 8, n)] + rng.normal(size=(n, 32))).astype(np.float32)
    queries = (centers[rng.integers(0, 8, 20)] + rng.normal(size=(20, 32))).astype(np.float32)
    known = rng.integers(0, 3, (n, 2))
    index = index_lib.SearchIndex(vectors, np.arange(n).astype(str), np.full(n, ""), known, known,
                                  np.zeros((n, 2)), {"vocabulary": VOCAB.to_json(), "source": {"kind": "folder"}})  # fmt: skip
    allowed = index.where_mask({0: (1,), 1: (0, 2)})
    assert 100 < allowed.sum() < 300
    return vectors, queries, index, allowed


def test_where_in_faiss_returns_only_allowed_rows():
    """FAISS (its own ID selector) returns only allowed rows, all of them found where it scans everything."""
    require(FAISS_AVAILABLE, f"faiss is not installed: {FAISS_INSTALL}")
    vectors, queries, index, allowed = _where_case()
    n = len(vectors)
    rows, dist = index.search(queries, 10, allowed=allowed)
    ivf = index_lib.build_faiss(vectors, "ivf_flat", nlist=8)
    got, got_dist = index_lib.faiss_search(ivf, queries, 10, nprobe=8, allowed=allowed)  # every cell: exact
    np.testing.assert_array_equal(np.sort(got, 1), np.sort(rows, 1))
    np.testing.assert_allclose(got_dist, dist, rtol=1e-4, atol=1e-3)
    # With fewer cells scanned, the filter searches the index's own nprobe (FAISS's parameters would
    # default to 1): the allowed rows of everything those 2 cells hold, nearest first, -1 after them.
    scanned, _ = index_lib.faiss_search(ivf, queries, n, nprobe=2)
    got, _ = index_lib.faiss_search(ivf, queries, 10, allowed=allowed)
    for row, want in zip(got, scanned):
        want = [r for r in want if r >= 0 and allowed[r]][:10]
        np.testing.assert_array_equal(row, want + [-1] * (10 - len(want)))
    hnsw = index_lib.build_faiss(vectors, "hnsw", hnsw_m=16)
    got, _ = index_lib.faiss_search(hnsw, queries, 10, ef_search=400, allowed=allowed)
    assert allowed[got[got >= 0]].all()
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, rows)]) > 0.9
    few = np.zeros(n, bool)
    few[[3, 500]] = True
    got, _ = index_lib.faiss_search(
        index_lib.build_faiss(vectors, "ivf_flat", nlist=1), queries, 10, allowed=few
    )
    assert (np.sort(got, 1)[:, -2:] == [3, 500]).all() and (got[:, 2:] == -1).all()  # fewer than k: -1


def test_a_filtered_faiss_search_returns_what_the_exact_one_does_where_faiss_alone_comes_short(monkeypatch):
    """A `where` filter on a FAISS index returned fewer than k results where few items pass (1% of queries
    under a 0.5% filter, an audit found): now at most EXACT_BELOW passing items are ranked exactly among
    them, and a query FAISS still leaves short is ranked exactly, so the answer is the exact backend's."""
    require(FAISS_AVAILABLE, f"faiss is not installed: {FAISS_INSTALL}")
    vectors, queries, index, allowed = _where_case()
    exact_rows, exact_dist = index.search(queries, 10, backend="exact", allowed=allowed)
    ivf = index_lib.build_faiss(vectors, "ivf_flat", nlist=8)
    short, _ = index_lib.faiss_search(ivf, queries, 10, nprobe=1, allowed=allowed)
    assert (short < 0).any()  # what FAISS alone gives with one cell of 8
    for below in (index_lib.EXACT_BELOW, 10):  # exact among few; FAISS, then exact where it came short
        monkeypatch.setattr(index_lib, "EXACT_BELOW", below)
        rows, dist = index_lib.faiss_filtered_search(ivf, vectors, queries, 10, allowed, nprobe=1)
        assert (rows >= 0).all() and allowed[rows].all()
        complete = ~(short < 0).any(axis=1) if below == 10 else np.zeros(len(rows), bool)
        np.testing.assert_array_equal(rows[~complete], exact_rows[~complete])
        np.testing.assert_allclose(dist[~complete], exact_dist[~complete], rtol=1e-5, atol=1e-5)
    few = np.zeros(len(vectors), bool)
    few[[3, 500]] = True  # fewer than k pass: both, as the exact backend answers (k' = 2)
    rows, _ = index_lib.faiss_filtered_search(ivf, vectors, queries, 10, few, nprobe=1)
    assert rows.shape == (len(queries), 2) and (np.sort(rows, 1) == [3, 500]).all()


def test_missing_faiss_fails_with_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)
    with pytest.raises(index_lib.FaissUnavailable, match=r"pip install -e \.\[faiss\].*--backend=exact"):
        index_lib.import_faiss()


def test_unreadable_images_name_path_and_reason(tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    cases = {str(tmp_path / "missing.jpg"): "No such file", str(empty): "empty", str(tmp_path): "directory"}
    for path, reason in cases.items():
        with pytest.raises(index_lib.ImageReadError, match=reason) as e:
            index_lib.read_image(path)
        assert str(e.value).startswith(f"cannot read image {path}: ")


# experiments.search runs in a process of its own: its absl flags (via experiments.common) would collide
# with those other test modules define in this one (data_prep's --seed). One process runs every case.
SEARCH_DRIVER = """
import contextlib, io, json, sys
from absl import flags
from experiments import search
results = []
for argv in json.loads(sys.argv[1]):
    out, err, code = io.StringIO(), io.StringIO(), 0
    flags.FLAGS.unparse_flags()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            flags.FLAGS(["search", *argv])
            search.main([])
        except SystemExit as e:
            code = e.code
    results.append([code, out.getvalue(), err.getvalue()])
with open(sys.argv[2], "w") as f:
    json.dump(results, f)
"""


def test_index_and_search_commands(export_dir, model, folder, tmp_path):
    path = str(tmp_path / "cli.npz")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = commands.run(
        [sys.executable, "-m", "experiments.index", f"--export_dir={export_dir}", f"--images={folder}",
         f"--index={path}"], cwd=REPO, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert "skipped broken.png" in done.stderr and "9 vectors of dimension 32" in done.stdout
    bad = commands.run(
        [sys.executable, "-m", "experiments.index", f"--export_dir={export_dir}", "--split=test",
         f"--index={tmp_path / 'x.npz'}"], cwd=REPO, env=env, timeout=120,
    )  # fmt: skip
    assert (
        bad.returncode == 2
        and "--split: split 'test': expected one of ['train', 'query', 'gallery']" in bad.stderr
    )
    assert not os.path.exists(tmp_path / "x.npz")
    again = commands.run(
        [sys.executable, "-m", "experiments.index", f"--export_dir={export_dir}", f"--images={folder}",
         f"--index={path}", f"--reuse={path}", "--overwrite"], cwd=REPO, env=env, timeout=120,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"took 9 of 9 vectors from {path}" in again.stdout and "embedded 0" in again.stdout
    if FAISS_AVAILABLE:  # the catalogue's own recall, said and kept in the index's metadata
        approx = str(tmp_path / "faiss.npz")
        built = commands.run(
            [sys.executable, "-m", "experiments.index", f"--export_dir={export_dir}", f"--images={folder}",
             f"--index={approx}", f"--reuse={path}", "--backend=faiss", "--faiss_kind=hnsw"], cwd=REPO, env=env,
            timeout=120,
        )  # fmt: skip
        assert built.returncode == 0, built.stderr[-2000:]
        assert "FAISS hnsw: recall@8 1.000 against exact search, 9 of its own vectors" in built.stdout
        assert index_lib.SearchIndex.load(approx).metadata["faiss"]["recall"] == {
            "k": 8,
            "queries": 9,
            "recall": 1.0,
        }

    query = os.path.join(folder, "img3.png")
    broken, missing = os.path.join(folder, "broken.png"), str(tmp_path / "nope.jpg")
    base = [f"--export_dir={export_dir}", f"--index={path}"]
    cases = [
        [*base, f"--image={query}", "--set=color=black", "--set=sleeve_length=long", "--top_k=4", "--format=json",
         f"--grid={tmp_path / 'grid.png'}"],
        [*base, f"--image={query}", "--top_k=3"],
        [*base, f"--image={query}", "--set=colour=black"],
        [*base, f"--image={query}", "--set=color=green"],
        [*base, f"--image={broken}"],
        [*base, f"--image={missing}"],
        [*base, f"--image={query}", "--where=color=red", "--where=color=black", "--top_k=9", "--format=json"],
        [*base, f"--image={query}", "--where=color=black", "--top_k=9"],
        [*base, f"--image={query}", "--where=color"],
    ]  # fmt: skip
    # An export without its export.json (it records the global dimension): searched as the index says.
    bare = str(tmp_path / "bare_export")
    shutil.copytree(export_dir, bare)
    os.remove(os.path.join(bare, "export.json"))
    cases.append([f"--export_dir={bare}", f"--index={path}", f"--image={query}", "--top_k=3"])
    done = commands.run([sys.executable, "-c", SEARCH_DRIVER, json.dumps(cases), str(tmp_path / "runs.json")],
                        cwd=REPO, env=env, timeout=180)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    with open(tmp_path / "runs.json") as f:
        runs = json.load(f)

    code, out, err = runs[0]
    assert code == 0, err
    result = json.loads(out)
    # The service's answer (one search code path): the changes from the predicted values, the target.
    assert [(c["attribute"], c["to"]) for c in result["changes"]] == [
        ("color", "black"),
        ("sleeve_length", "long"),
    ]
    assert result["query"]["image"] == query and result["query"]["item"] is None
    assert {c["attribute"]: c["to"] for c in result["changes"]}.items() <= result["query"]["target"].items()
    emb = model.embed([index_lib.read_image(query)])
    q = model.manipulate(emb["attribute_representations"], [[0, 1]], [[2, 1]])
    index = index_lib.SearchIndex.load(path)
    want_rows, want_dist = _brute_force(index.vectors, q, 4)
    assert [r["id"] for r in result["results"]] == [str(index.ids[i]) for i in want_rows[0]]
    np.testing.assert_allclose([r["distance"] for r in result["results"]], want_dist[0], rtol=1e-5, atol=1e-4)
    assert result["results"][0]["attributes"]["color"]["source"] == "predicted"
    grid = cv2.imread(str(tmp_path / "grid.png"))
    assert grid is not None and grid.shape[0] > 128

    code, out, _ = runs[1]
    assert code == 0 and out.splitlines()[3].split()[:3] == ["rank", "id", "distance"]
    assert out.splitlines()[4].split()[1] == "img3.png"  # unmanipulated: the image itself comes first

    code, _, err = runs[2]
    assert code == 2 and "unknown attribute 'colour'; valid attributes: color, sleeve_length" in err
    code, _, err = runs[3]
    assert code == 2 and "unknown value 'green' for attribute 'color'; valid values: red, blue, black" in err
    code, _, err = runs[4]
    assert code == 2 and f"cannot read image {broken}: not a decodable" in err
    code, _, err = runs[5]
    assert code == 2 and f"cannot read image {missing}: No such file or directory" in err

    # --where: the unmanipulated query ranked over the red or black items only, as brute force over them.
    code, out, err = runs[6]
    assert code == 0, err
    result = json.loads(out)
    allowed = index.where_mask({0: (0, 2)})
    assert 0 < allowed.sum() < len(index) and result["candidates"] == allowed.sum()
    assert result["where"] == {"color": ["red", "black"]}
    sub_rows, _ = _brute_force(index.vectors[allowed], emb["global_representation"], 9)
    assert [r["id"] for r in result["results"]] == [
        str(index.ids[i]) for i in np.flatnonzero(allowed)[sub_rows[0]]
    ]
    assert {r["attributes"]["color"]["value"] for r in result["results"]} <= {"red", "black"}
    code, out, err = runs[-1]
    assert code == 0 and out.splitlines()[3:] == runs[1][1].splitlines()[3:], err
    code, out, err = runs[7]
    black = index.where_mask({0: (2,)}).sum()
    assert code == 0 and f"only items with color = black: {black} of 9" in out, (out, err)
    assert len(out.split("\n\n")[1].splitlines()) == 1 + black  # the header and one line per black item
    code, _, err = runs[8]
    assert (
        code == 2 and "filter 'color' is not ATTRIBUTE=VALUE; valid attributes: color, sleeve_length" in err
    )


def test_a_damaged_index_file_is_refused_naming_it(tmp_path):
    """Empty, cut in half, a plain .npy, or metadata that is not JSON: IndexFileError naming the file (one
    `error:` line in the commands), not numpy's EOFError, BadZipFile or TypeError."""
    _, _, index, _ = _where_case()
    path = index.save(str(tmp_path / "good.npz"))
    assert index_lib.SearchIndex.load(path).vectors.shape == (800, 32)
    data = open(path, "rb").read()
    cases = {"empty.npz": b"", "half.npz": data[: len(data) // 2]}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    np.save(tmp_path / "plain.npy", np.zeros(3))
    arrays = dict(np.load(path, allow_pickle=False))
    arrays["metadata"] = np.array("{not json")
    np.savez(tmp_path / "meta.npz", **arrays)
    expected = {
        "empty.npz": r"empty.npz: not a readable index file \(EOFError",
        "half.npz": r"half.npz: not a readable index file \(BadZipFile",
        "plain.npy": r"plain.npy: not a readable index file \(ValueError: a single float64 array \(3,\)",
        "meta.npz": r"meta.npz: its metadata is not JSON",
    }
    for name, message in expected.items():
        with pytest.raises(index_lib.IndexFileError, match=message):
            index_lib.SearchIndex.load(str(tmp_path / name))
