"""The generic catalogue converter (`data_prep.catalog`): values are a column's distinct strings, empty
cells are unlabelled, rare values group into `other`, the split protocol, skip report and atomicity are
the other converters', and errors name the file, line or column."""

from __future__ import annotations

import csv
import os

import cv2
import numpy as np
import pytest
import tensorflow as tf

from data_prep import catalog
from fashionsearchnet_v2.data import records
from fashionsearchnet_v2.data.schema import DatasetError, load_dataset_info

SMALL = dict(num_query=2, num_gallery=3, seed=0, progress=False)


def _write(root, rows, header=("sku", "image", "colour", "sleeve"), images=True, delimiter=","):
    os.makedirs(root / "img", exist_ok=True)
    with open(root / "products.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=delimiter)
        w.writerow(header)
        for row in rows:
            w.writerow(row)
    if images:
        for i, row in enumerate(rows):
            path = root / row[1]
            if not path.exists() and row[1]:
                img = np.full((20 + i, 24, 3), 10 * i % 255, np.uint8)
                cv2.imwrite(str(path), img)
    return str(root / "products.csv")


def _labels(info, split):
    out = {}
    for s in tf.data.TFRecordDataset(info.shard_paths(split)):
        ex = records.parse_example(s, info.num_attributes)
        out[ex["id"].numpy().decode()] = ex["labels"].numpy().tolist()
    return out


def test_attribute_values_sorted_and_rare_values_grouped_last():
    cells = ["red"] * 3 + ["blue"] * 2 + ["teal"] + ["other"] + ["black"] * 5
    assert catalog.attribute_values(cells) == (
        ("black", "blue", "other", "red", "teal"),
        {v: v for v in ("red", "blue", "teal", "other", "black")},
        {"black": 5, "red": 3, "blue": 2, "teal": 1, "other": 1},
    )
    values, mapping, _ = catalog.attribute_values(cells, min_count=2, other_value="other")
    # teal (1) and the existing value "other" form the group, which comes last.
    assert values == ("black", "blue", "red", "other")
    assert mapping["teal"] == mapping["other"] == "other" and mapping["red"] == "red"


def test_catalog_converts_values_unlabelled_cells_and_skips(tmp_path):
    rows = [
        ["A1", "img/a1.jpg", "red", "long"],
        ["A2", "img/a2.png", "blue", " short "],  # spaces around a value are dropped
        ["A3", "img/a3.jpg", "", "long"],  # empty -> unlabelled
        ["A4", "img/a4.jpg", "NA", "short"],  # --unlabelled=NA
        ["A5", "img/a5.jpg", "red", "long"],
        ["A6", "img/a6.jpg", "Red", "long"],  # case is kept: another value
        ["A7", "img/missing.jpg", "blue", "long"],  # no such file
        ["A1", "img/a8.jpg", "blue", "long"],  # same id twice
        ["A9", "img/a9.jpg", "", ""],  # nothing labelled
        ["A10", "img/a10.jpg", "blue", "sleeveless, cap"],  # quoted comma
    ]
    path = _write(tmp_path, rows)
    os.remove(tmp_path / "img" / "missing.jpg")
    (tmp_path / "img" / "a4.jpg").write_bytes(b"")  # empty file
    info = catalog.convert(path, str(tmp_path / "out"), image_column="image", id_column="sku",
                           attributes=["colour", "sleeve"], unlabelled=["NA"], **SMALL)  # fmt: skip
    assert info.name == "out"
    assert [(a.name, a.values) for a in info.attributes] == [
        ("colour", ("Red", "blue", "red")),
        ("sleeve", ("long", "short", "sleeveless, cap")),
    ]
    assert info.report["skipped_by_reason"] == {"duplicate": 1, "empty": 1, "missing": 1, "no_labels": 1}
    assert info.splits == {"query": 2, "gallery": 3, "train": 1}
    labels = {}
    for split in ("train", "query", "gallery"):
        labels.update(_labels(info, split))
    assert labels == {"A1": [2, 0], "A2": [1, 1], "A3": [-1, 0], "A5": [2, 0], "A6": [0, 0], "A10": [1, 2]}
    assert load_dataset_info(str(tmp_path / "out")).extra["csv"]["id_column"] == "sku"
    report = (tmp_path / "out" / "conversion_report.txt").read_text()
    assert "duplicate\tA1\t" in report and "missing\tA7\t" in report


def test_catalog_groups_rare_values_and_takes_images_from_an_image_root(tmp_path):
    rows = [
        [f"P{i}", f"p{i}.jpg", c, "long"] for i, c in enumerate(["red"] * 4 + ["blue"] * 3 + ["teal", "gold"])
    ]
    images = tmp_path / "pictures"
    os.makedirs(images)
    for i in range(len(rows)):
        cv2.imwrite(str(images / f"p{i}.jpg"), np.full((16, 16, 3), 30 * i, np.uint8))
    path = _write(tmp_path, rows, images=False, delimiter="\t")
    # sleeve has one value only: refused with what to do
    with pytest.raises(DatasetError, match="'sleeve' has 1 value"):
        catalog.convert(path, str(tmp_path / "x"), image_column="image", attributes=["colour", "sleeve"],
                        image_root=str(images), delimiter="\t", **SMALL)  # fmt: skip
    info = catalog.convert(path, str(tmp_path / "out"), image_column="image", attributes=["colour"],
                           image_root=str(images), delimiter="\t", min_count=2, other_value="rare",
                           name="my_shop", **SMALL)  # fmt: skip
    assert info.name == "my_shop" and info.attributes[0].values == ("blue", "red", "rare")
    assert info.extra["grouped_into_other"] == {"colour": ["gold", "teal"]}
    assert sum(info.splits.values()) == 9
    labels = {}
    for split in ("train", "query", "gallery"):
        labels.update(_labels(info, split))
    assert labels["p7.jpg"] == [2] and labels["p0.jpg"] == [1] and labels["p4.jpg"] == [0]


def test_catalog_errors_name_the_file_line_and_columns(tmp_path):
    path = _write(tmp_path, [["A", "img/a.jpg", "red", "long"]] * 2)
    with pytest.raises(DatasetError, match=r"no column \['color'\]; the header has"):
        catalog.convert(path, str(tmp_path / "o"), image_column="image", attributes=["color"], **SMALL)
    with open(path, "a", encoding="utf-8") as f:
        f.write("B,img/b.jpg,red\n")
    with pytest.raises(
        DatasetError, match=r"products.csv:4: malformed line: expected 4 fields.*--malformed=skip"
    ):
        catalog.convert(path, str(tmp_path / "o"), image_column="image", attributes=["colour"], **SMALL)
    with pytest.raises(DatasetError, match=r"--malformed must be one of \['error', 'skip'\], got 'drop'"):
        catalog.convert(path, str(tmp_path / "o"), image_column="image", attributes=["colour"], malformed="drop",
                        **SMALL)  # fmt: skip
    with pytest.raises(DatasetError, match="must be letters"):
        catalog.convert(path, str(tmp_path / "o"), image_column="image", attributes=["colour"], name="a b",
                        **SMALL)  # fmt: skip
    assert not os.path.exists(tmp_path / "o")


def test_catalog_split_protocol_and_refusal_to_overwrite(tmp_path):
    colours = ["red", "blue", "black"]
    rows = [[f"S{i}", f"img/{i}.jpg", colours[i % 3], "long" if i % 2 else "short"] for i in range(12)]
    path = _write(tmp_path, rows)
    kwargs = dict(image_column="image", attributes=["colour", "sleeve"], progress=False)
    with pytest.raises(DatasetError, match="--num_query and --num_gallery"):
        catalog.convert(path, str(tmp_path / "out"), num_query=5, num_gallery=10, **kwargs)
    a = catalog.convert(path, str(tmp_path / "out"), num_query=3, num_gallery=4, seed=1, **kwargs)
    with pytest.raises(DatasetError, match="--overwrite"):
        catalog.convert(path, str(tmp_path / "out"), num_query=3, num_gallery=4, **kwargs)
    b = catalog.convert(path, str(tmp_path / "out2"), num_query=3, num_gallery=4, seed=1, **kwargs)
    assert a.splits == {"query": 3, "gallery": 4, "train": 5}
    assert _labels(a, "query") == _labels(b, "query")  # the same seed draws the same split


def test_catalog_makes_each_image_path_from_a_pattern_over_its_row(tmp_path):
    """Images named after a column, as Kaggle's `images/<id>.jpg`: --image_pattern fills each path from
    its row (with a format spec); a row whose cell for a field is empty is skipped as no_image; values are
    counted over the images present (a partial download), not the rows; a pattern that names no column,
    another column, a conversion or a spec text cannot take is refused, naming it."""
    rows = [(image_id, ["red", "blue"][i % 2], ["long", "short"][i // 2 % 2], True)
            for i, image_id in enumerate(["7", "12", "", "31", "40", "52", "68", "75"])]  # fmt: skip
    rows += [("90", "green", "long", False), ("91", "green", "long", False), ("93", "green", "short", True),
             ("95", "purple", "long", False)]  # fmt: skip
    os.makedirs(tmp_path / "img")
    with open(tmp_path / "styles.csv", "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["id", "colour", "sleeve"])
        for i, (image_id, colour, sleeve, has_image) in enumerate(rows):
            w.writerow([image_id, colour, sleeve])
            if image_id and has_image:
                cv2.imwrite(
                    str(tmp_path / "img" / f"{image_id:0>6}.jpg"), np.full((16, 16, 3), 20 * i, np.uint8)
                )
    path = str(tmp_path / "styles.csv")
    info = catalog.convert(path, str(tmp_path / "out"), image_pattern="img/{id:0>6}.jpg", id_column="id",
                           attributes=["colour", "sleeve"], **SMALL)  # fmt: skip
    assert info.report["skipped_by_reason"] == {"no_image": 1, "missing": 3}
    assert info.attributes[0].values == ("blue", "green", "red")  # purple: only rows without an image
    labels = {}
    for split in ("train", "query", "gallery"):
        labels.update(_labels(info, split))
    assert labels == {"7": [2, 0], "12": [0, 0], "31": [0, 1], "40": [2, 0], "52": [0, 0], "68": [2, 1],
                      "75": [0, 1], "93": [1, 1]}  # fmt: skip
    assert (
        info.extra["csv"]["image_pattern"] == "img/{id:0>6}.jpg" and info.extra["csv"]["image_column"] is None
    )
    # --min_count counts images: green has three rows but one image.
    grouped = catalog.convert(path, str(tmp_path / "out2"), image_pattern="img/{id:0>6}.jpg",
                              attributes=["colour"], min_count=2, **SMALL)  # fmt: skip
    assert grouped.attributes[0].values == ("blue", "red", "other")
    assert grouped.extra["value_counts"]["colour"] == {"blue": 4, "red": 3, "green": 1}
    # Without --id_column an item is named by its path, as with --image_column.
    ids = {**_labels(grouped, "train"), **_labels(grouped, "query"), **_labels(grouped, "gallery")}
    assert "img/000093.jpg" in ids and len(ids) == 8

    refused = {
        "img/x.jpg": "names no column",
        "img/{sku}.jpg": r"\{sku\} is not a column of the CSV; each \{...\} names one of \['id', 'colour', 'sleeve'\]",
        "img/{id!r}.jpg": r"\{id!r\} is not a column",
        "img/{id:d}.jpg": "cells are text, so Unknown format code 'd'",
        "img/{id.jpg": "is not a pattern like",
    }
    for pattern, message in refused.items():
        with pytest.raises(DatasetError, match=message):
            catalog.convert(
                path, str(tmp_path / "bad"), image_pattern=pattern, attributes=["colour"], **SMALL
            )
    with pytest.raises(DatasetError, match="exactly one of --image_column"):
        catalog.convert(path, str(tmp_path / "bad"), image_column="id", image_pattern="img/{id}.jpg",
                        attributes=["colour"], **SMALL)  # fmt: skip
    assert not os.path.exists(tmp_path / "bad")


def test_catalog_skips_and_lists_malformed_rows_when_asked(tmp_path):
    """An unquoted comma in a title (some copies of Kaggle's styles.csv have them): the conversion stops
    naming the line, or with malformed="skip" writes the other rows and lists the line as malformed."""
    rows = [[f"S{i}", f"img/{i}.jpg", ["red", "blue"][i % 2], "long"] for i in range(7)]
    path = _write(tmp_path, rows)
    with open(path, "a", encoding="utf-8") as f:
        f.write("S7,img/7.jpg,red,long,Shirt, slim\n")  # six fields, line 9
    kwargs = dict(image_column="image", attributes=["colour"], id_column="sku", **SMALL)
    with pytest.raises(DatasetError, match="products.csv:9: malformed line"):
        catalog.convert(path, str(tmp_path / "stopped"), **kwargs)
    assert not os.path.exists(tmp_path / "stopped")
    info = catalog.convert(path, str(tmp_path / "out"), malformed="skip", **kwargs)
    assert info.report["skipped_by_reason"] == {"malformed": 1} and info.report["rows_read"] == 8
    assert sum(info.splits.values()) == 7
    report = (tmp_path / "out" / "conversion_report.txt").read_text()
    assert "malformed\t\t" in report and "products.csv:9: malformed line: expected 4 fields" in report
    assert "(6 fields)" in report


def test_images_looked_for_in_the_wrong_folder_are_named_before_any_count(tmp_path):
    """Paths read against the wrong root: the error says the images were not found, where they were
    looked for and which flag moves it, not the value or split counts that follow from it."""
    rows = [[f"P{i}", f"p{i}.jpg", ["red", "blue"][i % 2], "long"] for i in range(8)]
    elsewhere = tmp_path / "pictures"
    os.makedirs(elsewhere)
    for i in range(8):
        cv2.imwrite(str(elsewhere / f"p{i}.jpg"), np.full((16, 16, 3), 30 * i, np.uint8))
    path = _write(tmp_path, rows, images=False)
    root = os.path.dirname(os.path.abspath(path))
    expected = rf"none of its 8 rows has a usable image \(8 missing\); 8 of 8 rows' images were not found or empty \(e\.g\. {root}/p0\.jpg\); paths are read relative to {root} \(--image_root"
    with pytest.raises(DatasetError, match=expected):
        catalog.convert(path, str(tmp_path / "o"), image_column="image", attributes=["colour"], **SMALL)
    # Two of eight found: the value count fails first, and says what to look at before it.
    for i in (0, 1):
        cv2.imwrite(str(tmp_path / f"p{i}.jpg"), np.full((16, 16, 3), 30 * i, np.uint8))
    with pytest.raises(
        DatasetError, match=r"'colour' has 1 value.*But first: 6 of 8 rows' images were not found"
    ):
        catalog.convert(path, str(tmp_path / "o"), image_column="image", attributes=["colour"], min_count=2,
                        **SMALL)  # fmt: skip
    assert not os.path.exists(tmp_path / "o")
