"""The dataset converters on tiny fixture copies written in each dataset's distributed format: labels
read back from the TFRecords, grouping rules, split counts, skip reports by reason, and errors that
name the file and line of a malformed row."""

from __future__ import annotations

import os

import fixtures_formats as fx
import pytest

from data_prep import _parsing, celeba, darn, fashion_product, imaterialist, shopping100k
from fashionsearchnet_v2.data.convert import Example
from fashionsearchnet_v2.data.schema import DatasetError, load_dataset_info

SMALL = dict(num_query=1, num_gallery=2, seed=0, progress=False)


# ---------------------------------------------------------------------------------------- CelebA


def celeba_labels(*on):
    return celeba.group_flags({flag: 1 if flag in on else -1 for flag in fx.CELEBA_FLAGS})


def test_celeba_table_has_paper_shape():
    attrs = celeba.attributes()
    assert [a.name for a in attrs] == [
        "hair_color", "beard", "hair_type", "smiling", "eyeglasses", "gender", "hat", "age"
    ]  # fmt: skip
    assert sum(a.num_values for a in attrs) == 21
    flags = {flag for _, _, values in celeba.GROUPS for _, flag in values}
    assert flags <= set(fx.CELEBA_FLAGS)


def test_celeba_grouping_rules():
    # hair_color, beard, hair_type, smiling, eyeglasses, gender, hat, age
    assert celeba_labels() == [-1, -1, -1, 0, 0, 0, 0, 0]
    assert celeba_labels("Blond_Hair", "No_Beard", "Wavy_Hair", "Smiling", "Young") == [
        1,
        3,
        1,
        1,
        0,
        0,
        0,
        1,
    ]
    # several hair colours / types contradict each other -> unlabelled
    assert celeba_labels("Blond_Hair", "Brown_Hair", "Bald", "Straight_Hair")[:3] == [-1, -1, -1]
    # beard: most specific first (goatee > mustache > stubble > no beard)
    assert celeba_labels("Goatee", "Mustache", "Male")[1] == 0
    assert celeba_labels("Mustache", "5_o_Clock_Shadow")[1] == 1
    assert celeba_labels("5_o_Clock_Shadow", "No_Beard")[1] == 2
    assert celeba_labels("Gray_Hair", "Bald", "Eyeglasses", "Male", "Wearing_Hat") == [
        3,
        -1,
        2,
        0,
        1,
        1,
        1,
        0,
    ]


def test_celeba_convert(tmp_path):
    src, out = str(tmp_path / "celeba"), str(tmp_path / "out")
    rows = [
        ("000001.jpg", ("Black_Hair", "Smiling", "Young", "Straight_Hair", "No_Beard")),
        ("000002.jpg", ("Gray_Hair", "Male", "Goatee", "Mustache", "Eyeglasses")),
        ("000003.jpg", ("Blond_Hair", "Brown_Hair", "Wavy_Hair", "Wearing_Hat")),
        ("000004.jpg", ("Brown_Hair",)),
        ("000005.jpg", ()),
        ("000006.jpg", ("Male",)),  # no image file
        ("000007.jpg", ("Young",)),  # corrupt image file
    ]
    partition = {name: i % 3 for i, (name, _) in enumerate(rows)}
    fx.write_celeba(src, rows, partition=partition, images=[r[0] for r in rows[:5]], corrupt=["000007.jpg"])
    info = celeba.convert(src, out, **SMALL)
    assert info.splits == {"query": 1, "gallery": 2, "train": 2}
    got = fx.read_records(info)
    assert got["000001.jpg"]["labels"] == [0, 3, 0, 1, 0, 0, 0, 1]
    assert got["000002.jpg"]["labels"] == [3, 0, -1, 0, 1, 1, 0, 0]
    assert got["000003.jpg"]["labels"] == [-1, -1, 1, 0, 0, 0, 1, 0]
    assert info.report["rows_read"] == 7
    assert info.report["skipped_by_reason"] == {"missing": 1, "undecodable": 1}
    assert sorted(fx.read_report(info)) == [("missing", "000006.jpg"), ("undecodable", "000007.jpg")]
    assert info.extra["official_partition"] == {"train": 3, "val": 2, "test": 2}
    reloaded = load_dataset_info(out)
    assert reloaded.total_values == 21 and reloaded.attribute_names[0] == "hair_color"

    # an existing output is refused, then replaced with overwrite=True
    with pytest.raises(DatasetError, match="already exists"):
        celeba.convert(src, out, **SMALL)
    info2 = celeba.convert(src, out, **{**SMALL, "seed": 1}, overwrite=True)
    assert info2.seed == 1 and load_dataset_info(out).seed == 1


def test_celeba_full_list_few_images(tmp_path):
    """The whole official list with most images absent: absent ones are reported, not fatal."""
    src = str(tmp_path / "celeba")
    rows = [(f"{i:06d}.jpg", ("Smiling",) if i % 2 else ()) for i in range(1, 20001)]
    present = [f"{i:06d}.jpg" for i in (3, 500, 9999, 12345, 20000)]
    fx.write_celeba(src, rows, images=present)
    info = celeba.convert(src, str(tmp_path / "out"), **SMALL)
    assert sum(info.splits.values()) == 5
    assert info.report["rows_read"] == 20000
    assert info.report["skipped_by_reason"] == {"missing": 19995}
    assert set(fx.read_records(info)) == set(present)


def test_celeba_header_count_mismatch(tmp_path):
    src = str(tmp_path / "celeba")
    fx.write_celeba(src, [("000001.jpg", ()), ("000002.jpg", ())], count=202599)
    with pytest.raises(DatasetError, match=r"line 1 says 202599 images but the file has 2 rows"):
        celeba.convert(src, str(tmp_path / "out"), **SMALL)


def test_celeba_malformed_line(tmp_path):
    src = str(tmp_path / "celeba")
    fx.write_celeba(src, [("000001.jpg", ()), ("000002.jpg", ())])
    path = os.path.join(src, "list_attr_celeba.txt")
    with open(path, encoding="utf-8", newline="") as f:
        lines = f.read().split("\r\n")
    lines[3] = lines[3].rsplit(" ", 1)[0] + " 0"  # a value that is neither 1 nor -1
    with open(path, "w", encoding="utf-8", newline="") as f:
        f.write("\r\n".join(lines))
    with pytest.raises(DatasetError) as e:
        celeba.convert(src, str(tmp_path / "out"), **SMALL)
    assert f"{path}:4:" in str(e.value) and "40 values of 1 or -1" in str(e.value)


def test_celeba_bad_partition(tmp_path):
    src = str(tmp_path / "celeba")
    fx.write_celeba(
        src, [("000001.jpg", ()), ("000002.jpg", ())], partition={"000001.jpg": 0, "000009.jpg": 1}
    )
    with pytest.raises(DatasetError, match=r"list_eval_partition.txt:2: image '000009.jpg' is not in"):
        celeba.convert(src, str(tmp_path / "out"), **SMALL)


# ----------------------------------------------------------------------------------- Shopping100k


def test_shopping100k_label_line():
    labels = [None] * 12
    labels[0], labels[2], labels[6] = 15, 3, 1
    assert shopping100k.parse_label_line(fx.one_hot_line(labels), fx.SHOPPING_SIZES, "f", 1) == [
        15, -1, 3, -1, -1, -1, 1, -1, -1, -1, -1, -1
    ]  # fmt: skip
    bits = fx.one_hot_line([0] * 12).split()
    bits[16 + 5] = "1"  # a second 1 in the collar block
    with pytest.raises(DatasetError, match=r"labels_train.txt:7: .*at most one 1 in the 'collar' block"):
        shopping100k.parse_label_line(" ".join(bits), fx.SHOPPING_SIZES, "labels_train.txt", 7)


def shopping_rows(prefix, n, start=0):
    return [
        (f"{prefix}/{start + i:07d}_1.jpg", [(start + i + a) % s for a, s in enumerate(fx.SHOPPING_SIZES)])
        for i in range(n)
    ]


@pytest.mark.parametrize("image_folder,attr_num_style", [("Images", "list"), ("", "lines")])
def test_shopping100k_convert(tmp_path, image_folder, attr_num_style):
    src = str(tmp_path / "s100k")
    train = shopping_rows("Female/13_Tracksuit_Bottoms", 4)
    test = shopping_rows("Male/2_Shirts", 3, start=10)
    test.append(("Male/2_Shirts/unlabelled.jpg", [None] * 12))  # all-zero blocks
    test.append((train[0][0], train[0][1]))  # listed in both lists
    root = fx.write_shopping100k(
        src, {"train": train, "test": test}, image_folder=image_folder, attr_num_style=attr_num_style
    )
    for i, (rel, _) in enumerate(train + test[:4]):
        if rel.endswith("0000002_1.jpg"):
            continue  # missing
        if rel.endswith("0000011_1.jpg"):
            fx.write_corrupt(os.path.join(root, rel))
        else:
            fx.write_image(os.path.join(root, rel), i)
    info = shopping100k.convert(src, str(tmp_path / "out"), **SMALL)
    assert info.total_values == 151 and info.attribute_names[-1] == "sport"
    assert info.attributes[2].values[:2] == ("color_0", "color_1")
    assert info.extra["pooled_splits"] == ["train", "test"]
    assert info.report["rows_read"] == 9
    assert info.report["skipped_by_reason"] == {
        "duplicate": 1,
        "missing": 1,
        "no_labels": 1,
        "undecodable": 1,
    }
    got = fx.read_records(info)
    assert sorted(info.splits.items()) == [("gallery", 2), ("query", 1), ("train", 2)]
    assert got["Male/2_Shirts/0000012_1.jpg"]["labels"] == [
        (12 + a) % s for a, s in enumerate(fx.SHOPPING_SIZES)
    ]
    assert "Female/13_Tracksuit_Bottoms/0000002_1.jpg" not in got


def test_shopping100k_errors(tmp_path):
    src = str(tmp_path / "s100k")
    rows = shopping_rows("Female/x", 2)
    fx.write_shopping100k(src, {"train": rows + [("Female/x/extra.jpg", "0 1 0")]})
    with pytest.raises(
        DatasetError, match=r"labels_train.txt:3: malformed line: expected 151 values of 0 or 1"
    ):
        shopping100k.convert(src, str(tmp_path / "out"), **SMALL)
    fx.write_text(os.path.join(src, "labels_train.txt"), [fx.one_hot_line(lab) for _, lab in rows])
    with pytest.raises(DatasetError, match=r"imgs_train.txt lists 3 images but .*labels_train.txt has 2"):
        shopping100k.convert(src, str(tmp_path / "out"), **SMALL)


# ------------------------------------------------------------------------------------------- DARN


def test_darn_label_line():
    assert darn.parse_label_line("2 0 19 2 54 8 16", 3, "f", 1) == (2, [19, -1, 54, -1, -1, -1, -1, -1, 16])
    assert darn.parse_label_line("0", 3, "f", 1) == (0, [-1] * 9)
    with pytest.raises(DatasetError, match=r"label_train.txt:5: malformed line: expected an image index"):
        darn.parse_label_line("1 0", 3, "label_train.txt", 5)  # attribute without value
    with pytest.raises(DatasetError, match=r"x:2: .*value index 0..6 for attribute 3 \(length\)"):
        darn.parse_label_line("0 3 7", 3, "x", 2)
    with pytest.raises(DatasetError, match="image index 0..2"):
        darn.parse_label_line("3 0 1", 3, "x", 2)


def test_a_file_listed_twice_keeps_its_first_row():
    """DARN's and Shopping100k's lists may name one file in two splits: the first row is kept and every
    later one is reported with the row it repeats, so one image never lands in two splits."""
    rows = [Example("a.jpg", [0], where="train:1"), Example("b.jpg", [1], where="train:2"),
            Example("a.jpg", [2], where="test:7"), Example("a.jpg", [3], where="test:9")]  # fmt: skip
    kept, skipped = _parsing.drop_duplicates(rows)
    assert [(ex.image_id, ex.labels) for ex in kept] == [("a.jpg", [0]), ("b.jpg", [1])]
    assert skipped == [("duplicate", "a.jpg", "test:7 repeats train:1"),
                       ("duplicate", "a.jpg", "test:9 repeats train:1")]  # fmt: skip


def test_darn_convert(tmp_path):
    src = str(tmp_path / "darn")
    train = [f"imgs/train_{i}.jpg" for i in range(5)]
    fx.write_darn(src, "train", train, ["0 0 1 2 3", "1 0 2", "2 7 7 8 16", "3 4 27", "4 1 12"])
    val = ["imgs/val_0.jpg", "imgs/val_1.jpg", "imgs/val_2.jpg"]
    # ASEN names the label file <split>_label.txt; val_2 has no label line at all
    fx.write_darn(src, "val", val, ["1 5 10 6 25", "0 0 19"], label_name="val_label.txt")
    for i, rel in enumerate(train + val):
        if rel == "imgs/train_3.jpg":
            continue
        if rel == "imgs/train_4.jpg":
            fx.write_corrupt(os.path.join(src, "images", rel))
        else:
            fx.write_image(os.path.join(src, "images", rel), i)
    info = darn.convert(src, str(tmp_path / "out"), **SMALL)
    assert info.total_values == 185 and info.num_attributes == 9
    assert info.extra["pooled_splits"] == ["train", "val"]
    assert info.report["skipped_by_reason"] == {"missing": 1, "no_labels": 1, "undecodable": 1}
    got = fx.read_records(info)
    assert got["imgs/train_0.jpg"]["labels"] == [1, -1, 3, -1, -1, -1, -1, -1, -1]
    assert got["imgs/train_2.jpg"]["labels"] == [-1] * 7 + [7, 16]
    assert got["imgs/val_0.jpg"]["labels"] == [19, -1, -1, -1, -1, -1, -1, -1, -1]
    assert got["imgs/val_1.jpg"]["labels"] == [-1] * 5 + [10, 25, -1, -1]
    assert sum(info.splits.values()) == 5


def test_darn_malformed_file(tmp_path):
    src = str(tmp_path / "darn")
    fx.write_darn(src, "test", ["a.jpg", "b.jpg"], ["0 0 1", "1 zero 1"])
    with pytest.raises(DatasetError) as e:
        darn.convert(src, str(tmp_path / "out"), **SMALL)
    assert f"{os.path.join(src, 'label_test.txt')}:2: malformed line" in str(e.value)


# ----------------------------------------------------------------------------------- iMaterialist


def imat_fixture(root):
    groups = imaterialist.load_category_groups()
    ids = fx.write_imat_label_map(root, list(groups))
    return groups, ids


def test_imaterialist_grouping_file():
    groups = imaterialist.load_category_groups()
    assert len(groups) == 105 and len(set(groups.values())) == 24
    assert groups["Hosiery, Stockings, Tights"] == "leggings_hosiery"
    assert groups["Skinny Jeans"] == groups["Baggy Jeans"] == "jeans"


def test_imaterialist_convert(tmp_path):
    src = str(tmp_path / "imat")
    groups, ids = imat_fixture(src)
    cat = lambda name: ids[(1, name)]  # noqa: E731
    lab = lambda task, i: ids[(task, f"{fx.IMAT_TASK_NAMES[task]} {i}")]  # noqa: E731
    train = [
        ("1", [cat("Dresses"), cat("Party Dresses"), lab(2, 3), lab(3, 0), lab(7, 0)]),
        ("2", [cat("Jeans"), cat("T-Shirts"), lab(2, 1), lab(2, 4), lab(8, 2), lab(9, 20)]),
        ("3", [cat("Sneakers")]),  # no image
        ("4", [cat("Boots")]),  # corrupt image
        ("5", [lab(7, 0)]),  # only a dropped task
    ]
    validation = [("1", [cat("Sandals"), lab(4, 33)]), ("2", [cat("Heels"), lab(6, 27), lab(5, 10)])]
    fx.write_imat_json(src, "train", train)
    fx.write_imat_json(src, "validation", validation)
    for i in ("1", "2", "5"):
        fx.write_image(os.path.join(src, "train", f"{i}.jpg"), int(i))
    fx.write_corrupt(os.path.join(src, "train", "4.jpg"))
    for i in ("1", "2"):
        fx.write_image(os.path.join(src, "validation", f"{i}.jpg"), 50 + int(i))
    info = imaterialist.convert(src, str(tmp_path / "out"), **SMALL)

    assert info.attribute_names == [
        "category",
        "color",
        "gender",
        "material",
        "neckline",
        "pattern",
        "sleeve",
        "style",
    ]
    assert info.num_values == [24, 21, 3, 34, 11, 28, 5, 21] and info.total_values == 147
    g = list(info.attributes[0].values)
    got = fx.read_records(info)
    assert got["train/1"]["labels"] == [g.index("dresses"), 3, 0, -1, -1, -1, -1, -1]
    # jeans + t-shirt and two colours disagree -> unlabelled; one sleeve and one style are kept
    assert got["train/2"]["labels"] == [-1, -1, -1, -1, -1, -1, 2, 20]
    assert got["validation/1"]["labels"] == [g.index("sandals_slippers"), -1, -1, 33, -1, -1, -1, -1]
    assert got["validation/2"]["labels"] == [g.index("heels"), -1, -1, -1, 10, 27, -1, -1]
    assert info.report["skipped_by_reason"] == {"missing": 1, "no_labels": 1, "undecodable": 1}
    assert sorted(fx.read_report(info)) == [
        ("missing", "train/3"),
        ("no_labels", "train/5"),
        ("undecodable", "train/4"),
    ]
    assert info.extra["unlabelled_by_disagreement"] == {"category": 1, "color": 1}
    assert info.splits == {"query": 1, "gallery": 2, "train": 1}


def test_imaterialist_single_file_images_folder(tmp_path):
    src = str(tmp_path / "imat")
    _, ids = imat_fixture(src)
    rows = [(str(i), [ids[(1, "Skirts")], ids[(3, "gender 1")]]) for i in range(1, 5)]
    fx.write_imat_json(src, "validation", rows)
    for i in range(1, 5):
        fx.write_image(os.path.join(src, "images", f"{i}.jpg"), i)
    info = imaterialist.convert(src, str(tmp_path / "out"), **SMALL)
    assert sum(info.splits.values()) == 4 and "validation/3" in fx.read_records(info)


def test_imaterialist_errors(tmp_path):
    src = str(tmp_path / "imat")
    imat_fixture(src)
    path = fx.write_imat_json(src, "train", [("1", ["9999"])])
    with pytest.raises(
        DatasetError, match=r"train.json: annotations\[0\] \(imageId '1'\): labelIds \['9999'\]"
    ):
        imaterialist.convert(src, str(tmp_path / "out"), **SMALL)
    with open(path, "w") as f:
        f.write('{"annotations": [\n{"imageId": "1", "labelId": ["1"]},,\n]}')
    with pytest.raises(DatasetError, match=r"train.json:2:\d+: not valid JSON"):
        imaterialist.convert(src, str(tmp_path / "out"), **SMALL)


# -------------------------------------------------------------------------------- Fashion Product


def test_fashion_product_rows():
    fields = fashion_product.split_row(
        "1855,Women,Apparel,Topwear,Tops,Pink,Summer,2012,Casual,Inkfruit Women, Pink, Top", "s", 2
    )
    assert fields[-1] == "Inkfruit Women, Pink, Top" and len(fields) == 10
    assert fashion_product.map_row(fields) == [1, 2, 6, 1, 0]
    # empty fields and NA -> unlabelled; an articleType without a group -> other; Girls -> kids
    fields = fashion_product.split_row("7,Girls,Accessories,Jewellery,Earrings,NA,,2011,NA,Ring", "s", 3)
    assert fashion_product.map_row(fields) == [3, 24, -1, -1, -1]
    with pytest.raises(DatasetError, match=r"styles.csv:9: malformed line: expected 10 comma-separated"):
        fashion_product.split_row("12,Men,Apparel", "styles.csv", 9)


def test_fashion_product_attribute_sizes():
    # category: 24 groups + other
    assert [a.num_values for a in fashion_product.attributes()] == [4, 25, 14, 4, 4]


def test_fashion_product_convert(tmp_path):
    src = str(tmp_path / "fpi")
    fx.write_styles(
        src,
        [
            "15970,Men,Apparel,Topwear,Shirts,Navy Blue,Fall,2011,Casual,Turtle Check Men Navy Blue Shirt",
            "39386,Men,Apparel,Bottomwear,Jeans,Blue,Summer,2012,Casual,Peter England Men Party Blue Jeans",
            "59263,Women,Accessories,Watches,Watches,Silver,Winter,2016,Casual,Titan Women Silver Watch",
            "21379,Men,Apparel,Bottomwear,Track Pants,Black,Fall,2011,Casual,Manchester United Men, Black Track Pants",
            "53759,Boys,Apparel,Topwear,Tshirts,Grey,Summer,2012,Casual,Puma Boys Grey T-shirt",
            "1855,Women,Apparel,Topwear,Tops,Grey Melange,Summer,2011,Casual,Inkfruit Women Top",
            "30805,Men,Footwear,Shoes,Sports Shoes,White,Fall,2011,Sports,Nike Men White Shoes",
        ],
    )
    for i, image_id in enumerate(["15970", "39386", "59263", "21379", "53759"]):
        fx.write_image(os.path.join(src, "images", f"{image_id}.jpg"), i)
    fx.write_corrupt(os.path.join(src, "images", "1855.jpg"))
    info = fashion_product.convert(src, str(tmp_path / "out"), **SMALL)
    got = fx.read_records(info)
    assert info.attribute_names == ["gender", "category", "color", "season", "usage"]
    cat, col = info.attributes[1].values, info.attributes[2].values
    assert got["21379"]["labels"] == [0, cat.index("trousers"), col.index("black"), 2, 0]
    assert got["59263"]["labels"] == [1, cat.index("watches"), col.index("metallic"), 3, 0]
    assert got["53759"]["labels"][:3] == [3, cat.index("tshirts"), col.index("grey")]
    assert info.report["skipped_by_reason"] == {"missing": 1, "undecodable": 1}
    assert ("missing", "30805") in fx.read_report(info)

    # too few images for the asked split: a clear message saying what to change
    with pytest.raises(DatasetError, match=r"6 usable images, but the split asks for 2000 query"):
        fashion_product.convert(
            src, str(tmp_path / "out2"), num_query=2000, num_gallery=18000, progress=False
        )
    assert not os.path.exists(tmp_path / "out2")


def test_fashion_product_bad_header(tmp_path):
    src = str(tmp_path / "fpi")
    fx.write_text(os.path.join(src, "styles.csv"), ["id;gender;masterCategory", "1;Men;Apparel"])
    with pytest.raises(DatasetError, match=r"styles.csv:1: expected the header"):
        fashion_product.convert(src, str(tmp_path / "out"), **SMALL)


def test_subset_keeps_query_and_gallery_and_nests_its_training_images(info, tmp_path):
    """data_prep.subset (the training-set-size curve): query and gallery byte for byte, training images
    chosen by id hash so that a smaller subset lies inside a larger one, in the source's order."""
    from data_prep import subset

    def train_ids(part):
        return [i for i, r in fx.read_records(part).items() if r["split"] == "train"]

    small = subset.subset(info.data_dir, str(tmp_path / "small"), 18)
    large = subset.subset(info.data_dir, str(tmp_path / "large"), 36)
    for part in (small, large):
        for split in ("query", "gallery"):
            assert [open(p, "rb").read() for p in part.shard_paths(split)] == [
                open(p, "rb").read() for p in info.shard_paths(split)
            ]
        assert part.extra["subset_of"] == info.fingerprint and part.fingerprint != info.fingerprint
    everything, a, b = train_ids(info), train_ids(small), train_ids(large)
    assert (len(a), len(b), small.splits["train"], large.splits["train"]) == (18, 36, 18, 36)
    assert set(a) < set(b) < set(everything)
    assert b == [i for i in everything if i in set(b)]  # the source's order
    with pytest.raises(DatasetError, match=r"--train_images must be in 1\.\.72"):
        subset.subset(info.data_dir, str(tmp_path / "none"), 73)
