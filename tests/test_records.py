"""The dataset format: schema checks, record round trip (eager and inside tf.data), preprocessing,
and the conversion engine's split protocol, skip report, refusal to overwrite and atomic output."""

import json
import os
import re

import cv2
import numpy as np
import pytest
import tensorflow as tf

from fashionsearchnet_v2.data import convert, pipeline, records, schema

ATTRS = [schema.Attribute("color", ("red", "blue")), schema.Attribute("size", ("s", "m", "l"))]


def _images(tmp_path, n):
    out = []
    for i in range(n):
        p = str(tmp_path / f"{i}.png")
        img = np.zeros((10, 12, 3), np.uint8)
        img[..., 2] = i  # red channel (cv2 writes BGR) carries the index, lossless in PNG
        cv2.imwrite(p, img)
        out.append(
            convert.Example(str(i), [i % 2, i % 3 if i % 5 else -1], path=p, where=f"rows.txt:{i + 1}")
        )
    return out


def test_serialize_parse_round_trip_eager_and_in_dataset():
    ok, png = cv2.imencode(".png", np.full((5, 7, 3), (10, 20, 30), np.uint8))  # BGR
    boxes = [[0.1, 0.2, 0.3, 0.4], [-1, -1, -1, -1]]
    s = records.serialize_example(png.tobytes(), "id-7", [1, -1], boxes)
    ex = records.parse_example(tf.constant(s), 2, with_boxes=True)
    assert ex["id"].numpy() == b"id-7"
    assert ex["labels"].numpy().tolist() == [1, -1]
    np.testing.assert_allclose(ex["boxes"].numpy(), boxes)
    rgb = records.decode_image(ex["encoded"]).numpy()
    assert rgb.shape == (5, 7, 3) and rgb[0, 0].tolist() == [30, 20, 10]
    ds = tf.data.Dataset.from_tensors(s).map(
        lambda x: records.decode_and_preprocess(records.parse_example(x, 2), 4)
    )
    out = next(iter(ds))
    # BGR order minus the ImageNet BGR mean, on a constant image.
    np.testing.assert_allclose(out["image"].numpy()[0, 0], [10 - 104, 20 - 117, 30 - 123], atol=1e-4)
    assert out["image"].shape == (4, 4, 3)
    np.testing.assert_array_equal(records.undo_preprocess(out["image"].numpy())[0, 0], [30, 20, 10])


def test_write_dataset_split_protocol_and_report(tmp_path):
    exs = _images(tmp_path, 30)
    exs.append(convert.Example("gone", [0, 0], path=str(tmp_path / "gone.png")))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xffnot a jpeg")
    exs.append(convert.Example("bad", [0, 0], path=str(tmp_path / "bad.jpg")))
    (tmp_path / "empty.jpg").write_bytes(b"")
    exs.append(convert.Example("empty", [0, 0], path=str(tmp_path / "empty.jpg")))
    info = convert.write_dataset(
        exs, ATTRS, output_dir=str(tmp_path / "out"), name="t", source="fixture", num_query=4, num_gallery=6,
        seed=3, progress=False,
    )  # fmt: skip
    assert info.splits == {"query": 4, "gallery": 6, "train": 20}
    assert info.report["skipped_by_reason"] == {"empty": 1, "missing": 1, "undecodable": 1}
    report = (tmp_path / "out" / schema.REPORT_TXT).read_text().splitlines()
    assert sorted(line.split("\t")[1] for line in report[1:]) == ["bad", "empty", "gone"]
    loaded = schema.load_dataset_info(str(tmp_path / "out"))
    assert loaded.attribute_names == ["color", "size"] and loaded.total_values == 5
    seen = {}
    for split in schema.SPLITS:
        for s in tf.data.TFRecordDataset(loaded.shard_paths(split)):
            ex = records.parse_example(s, 2)
            i = int(ex["id"].numpy())
            seen[i] = split
            assert ex["labels"].numpy().tolist() == [i % 2, i % 3 if i % 5 else -1]
            assert records.decode_image(ex["encoded"]).numpy()[0, 0, 0] == i
    assert sorted(seen) == list(range(30))
    # Same seed, same split; another seed, another split.
    again = convert.write_dataset(_images(tmp_path, 30), ATTRS, output_dir=str(tmp_path / "o2"), name="t",
                                  source="f", num_query=4, num_gallery=6, seed=3, progress=False)  # fmt: skip
    other = convert.write_dataset(_images(tmp_path, 30), ATTRS, output_dir=str(tmp_path / "o3"), name="t",
                                  source="f", num_query=4, num_gallery=6, seed=4, progress=False)  # fmt: skip

    def ids(i, split):
        return [
            records.parse_example(s, 2)["id"].numpy() for s in tf.data.TFRecordDataset(i.shard_paths(split))
        ]

    first = convert.write_dataset(_images(tmp_path, 30), ATTRS, output_dir=str(tmp_path / "o4"), name="t",
                                  source="f", num_query=4, num_gallery=6, seed=3, progress=False)  # fmt: skip
    assert ids(again, "query") == ids(first, "query")
    assert ids(other, "query") != ids(first, "query")


def test_too_small_dataset_names_sizes_and_flags(tmp_path):
    with pytest.raises(schema.DatasetError, match=r"10 usable images.*4 query \+ 6 gallery.*--num_query"):
        convert.write_dataset(_images(tmp_path, 10), ATTRS, output_dir=str(tmp_path / "o"), name="t", source="f",
                              num_query=4, num_gallery=6, progress=False)  # fmt: skip
    assert not os.path.exists(tmp_path / "o")
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


def test_refuses_overwrite_and_keeps_old_output_on_failure(tmp_path):
    out = str(tmp_path / "out")
    convert.write_dataset(_images(tmp_path, 12), ATTRS, output_dir=out, name="first", source="f",
                          num_query=1, num_gallery=1, progress=False)  # fmt: skip
    with pytest.raises(schema.DatasetError, match="--overwrite"):
        convert.write_dataset(_images(tmp_path, 12), ATTRS, output_dir=out, name="second", source="f",
                              num_query=1, num_gallery=1, progress=False)  # fmt: skip
    bad = _images(tmp_path, 12)
    bad[5].labels = [0, 7]  # outside 0..2
    with pytest.raises(schema.DatasetError, match=r"rows.txt:6: label 7 for attribute 'size'"):
        convert.write_dataset(bad, ATTRS, output_dir=out, name="second", source="f", num_query=1,
                              num_gallery=1, overwrite=True, progress=False)  # fmt: skip
    assert json.load(open(os.path.join(out, "dataset.json")))["name"] == "first"
    convert.write_dataset(_images(tmp_path, 12), ATTRS, output_dir=out, name="second", source="f",
                          num_query=1, num_gallery=1, overwrite=True, progress=False)  # fmt: skip
    assert json.load(open(os.path.join(out, "dataset.json")))["name"] == "second"


def test_a_split_of_mostly_missing_images_says_why_they_were_skipped(tmp_path):
    """Every listed image missing (a converter pointed at the wrong folder): the error leads with the
    skip reason, its count and one path looked for, instead of asking for smaller splits."""
    examples = _images(tmp_path, 12)
    for ex in examples:
        ex.path = ex.path.replace(".png", ".jpg")  # none of these exists
    gone = examples[0].path
    with pytest.raises(
        schema.DatasetError,
        match=rf"0 usable images of 12 listed; skipped: 12 missing \(e\.g\. {re.escape(gone)}\)",
    ):
        convert.write_dataset(examples, ATTRS, output_dir=str(tmp_path / "o"), name="t", source="f",
                              num_query=1, num_gallery=1, progress=False)  # fmt: skip
    # A few skipped among many usable: the split sizes are the advice, as before.
    few = _images(tmp_path, 3)
    few[0].path += ".gone"
    with pytest.raises(
        schema.DatasetError, match=r"2 usable images, but the split asks.*Set smaller --num_query"
    ):
        convert.write_dataset(few, ATTRS, output_dir=str(tmp_path / "p"), name="t", source="f",
                              num_query=1, num_gallery=1, progress=False)  # fmt: skip
    assert not os.path.exists(tmp_path / "o") and not os.path.exists(tmp_path / "p")


def test_missing_dataset_json_says_what_to_run(tmp_path):
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(schema.DatasetError, match=r"holds \['x.txt'\] but no dataset.json.*data_prep"):
        schema.load_dataset_info(str(tmp_path))


def test_pipeline_batches_and_is_deterministic_for_eval(tmp_path):
    info = convert.write_dataset(_images(tmp_path, 20), ATTRS, output_dir=str(tmp_path / "o"), name="t",
                                 source="f", num_query=2, num_gallery=5, progress=False, per_shard=3)  # fmt: skip
    assert len(info.shards["gallery"]) == 2
    b1 = [b["id"].numpy().tolist() for b in pipeline.make_dataset(info, "gallery", 8, 2)]
    b2 = [b["id"].numpy().tolist() for b in pipeline.make_dataset(info, "gallery", 8, 2)]
    assert b1 == b2 and [len(b) for b in b1] == [2, 2, 1]
    train = next(iter(pipeline.make_dataset(info, "train", 8, 4, training=True)))
    assert train["image"].shape == (4, 8, 8, 3) and train["labels"].shape == (4, 2)


def test_figure_images_are_the_extracted_rows_records_when_a_split_has_several_shards(tmp_path):
    # Extraction interleaves shards, so row i is not the i-th record of the files: the result grid once
    # drew other records' images beside the searched rows' labels. Each image's red value is its id.
    from fashionsearchnet_v2.retrieval import evaluation

    info = convert.write_dataset(_images(tmp_path, 20), ATTRS, output_dir=str(tmp_path / "o"), name="t",
                                 source="f", num_query=2, num_gallery=5, progress=False, per_shard=3)  # fmt: skip
    rows = [i.decode() for b in pipeline.make_dataset(info, "gallery", 8, 2) for i in b["id"].numpy()]
    files = [records.parse_example(s, 2)["id"].numpy().decode() for s in tf.data.TFRecordDataset(info.shard_paths("gallery"))]  # fmt: skip
    assert rows != files and sorted(rows) == sorted(files)  # the case that went wrong
    wanted = [rows[4], rows[1], rows[4]]
    images = evaluation.read_images(info, "gallery", wanted, 8)
    assert images.shape == (3, 8, 8, 3)
    assert [int(round(img[..., 0].mean())) for img in images] == [int(i) for i in wanted]
    with pytest.raises(ValueError, match="no record with id"):
        evaluation.read_images(info, "gallery", ["nope"], 8)


def _stream(info, decoded, skip, steps, seed):
    ds = pipeline.make_dataset(info, "train", 8, 4, training=True, seed=seed, shuffle_buffer=5, skip=skip,
                               decoded=decoded)  # fmt: skip
    return [{k: v.numpy() for k, v in b.items()} for b, _ in zip(ds, range(steps))]


@pytest.mark.parametrize("seed,skip", [(0, 0), (3, 7)])
def test_training_from_the_split_decoded_once_gives_the_same_batches(tmp_path, seed, skip):
    """Issue 26: several shards, shuffled files, a shuffle buffer smaller than the split, three epochs,
    and a resume's skip: element for element the same ids, labels and pixels as decoding the files."""
    info = convert.write_dataset(_images(tmp_path, 30), ATTRS, output_dir=str(tmp_path / "o"), name="t",
                                 source="f", num_query=2, num_gallery=5, progress=False, per_shard=4)  # fmt: skip
    assert len(info.shard_paths("train")) >= 4
    decoded = pipeline.decode_split(info, "train", max_bytes=10**6)
    assert decoded is not None and len(decoded) == info.splits["train"]
    files = _stream(info, None, skip, 20, seed)  # 20 x 4 = 80 images: more than 3 epochs of 23
    cached = _stream(info, decoded, skip, 20, seed)
    assert [b["id"].tolist() for b in files] == [b["id"].tolist() for b in cached]
    for a, b in zip(files, cached):
        np.testing.assert_array_equal(a["labels"], b["labels"])
        np.testing.assert_array_equal(a["image"], b["image"])
    assert len({i for b in files for i in b["id"].tolist()}) == info.splits["train"]  # every image, 3 epochs


def test_a_split_too_large_or_of_mixed_sizes_is_not_held(tmp_path):
    info = convert.write_dataset(_images(tmp_path, 30), ATTRS, output_dir=str(tmp_path / "o"), name="t",
                                 source="f", num_query=2, num_gallery=5, progress=False, per_shard=4)  # fmt: skip
    pixels = info.splits["train"] * 10 * 12 * 3
    assert pipeline.decode_split(info, "train", max_bytes=pixels) is not None
    assert pipeline.decode_split(info, "train", max_bytes=pixels - 1) is None
    (tmp_path / "mixed").mkdir()
    examples = _images(tmp_path / "mixed", 30)
    for i in range(0, 30, 2):  # every other image one row taller: the training split holds both sizes
        cv2.imwrite(examples[i].path, np.zeros((11, 12, 3), np.uint8))
    mixed = convert.write_dataset(examples, ATTRS, output_dir=str(tmp_path / "m"), name="t", source="f",
                                  num_query=2, num_gallery=5, progress=False, per_shard=4)  # fmt: skip
    assert pipeline.decode_split(mixed, "train", max_bytes=10**6) is None


def test_input_streams_without_the_autotuner_keep_every_batch(tmp_path):
    """Decision P7: the streams run without tf.data's autotuner unless asked, and give the same batches
    (evaluation and a shuffled training stream) as with it."""
    info = convert.write_dataset(_images(tmp_path, 30), ATTRS, output_dir=str(tmp_path / "o"), name="t",
                                 source="f", num_query=2, num_gallery=5, progress=False, per_shard=4)  # fmt: skip
    one = pipeline.make_dataset(info, "train", 8, 4)
    default = pipeline.make_dataset(info, "train", 8, 4, autotune=True)
    assert one.options().autotune.enabled is False
    assert default.options().autotune.enabled is not False
    for a, b in zip(one, default, strict=True):
        assert a["id"].numpy().tolist() == b["id"].numpy().tolist()
        np.testing.assert_array_equal(a["image"].numpy(), b["image"].numpy())
    for a, b in zip(_stream(info, None, 0, 12, 1), _stream_default(info, 12, 1), strict=True):
        assert a["id"].tolist() == b["id"].tolist()
        np.testing.assert_array_equal(a["image"], b["image"])


def _stream_default(info, steps, seed):
    ds = pipeline.make_dataset(info, "train", 8, 4, training=True, seed=seed, shuffle_buffer=5, autotune=True)
    return [{k: v.numpy() for k, v in b.items()} for b, _ in zip(ds, range(steps))]
