"""Shopping100k -> dataset directory: 12 attributes, 151 values, from the one-hot label lists.

    python -m data_prep.shopping100k --input_dir=SHOPPING100K --output_dir=data/shopping100k

Input, in the layout the label lists are distributed in (e.g. with ADDE's `splits/Shopping100k`):

    imgs_train.txt, imgs_test.txt       one relative image path per line,
                                        e.g. `Female/13_Tracksuit_Bottoms/0005901_8.jpg`
    labels_train.txt, labels_test.txt   line i: the space-separated one-hot blocks of image i
    attr_num.txt                        block sizes, `[16, 17, 19, ...]` or one number per line
    Images/... or the paths directly under input_dir

A block of zeros means the attribute is not labelled; a block with several ones is malformed. The
value names are not distributed, so values are named `<attribute>_<index>`. Train and test lists are
pooled and re-split by the paper's protocol (§4.2: 2,000 query, 18,000 gallery, the rest training).
"""

from __future__ import annotations

import os
import re

from data_prep import _parsing, common
from fashionsearchnet_v2.data import convert as engine
from fashionsearchnet_v2.data.schema import UNLABELLED, Attribute, DatasetError, DatasetInfo

NAME = "shopping100k"
# The order of the blocks in the label vectors (§4.2 and the attr_num.txt comment of ADDE).
ATTRIBUTE_NAMES = (
    "category",
    "collar",
    "color",
    "fabric",
    "fastening",
    "fit",
    "gender",
    "neckline",
    "pattern",
    "pocket",
    "sleeve",
    "sport",
)
SPLITS = ("train", "test")


def parse_attr_num(path: str) -> list[int]:
    """attr_num.txt -> block sizes. Accepts the bracketed list and the one-number-per-line form."""
    with open(path, encoding="utf-8-sig") as f:
        text = f.read()
    tokens = [t for t in re.split(r"[\s,\[\]]+", text) if t]
    if len(tokens) != len(ATTRIBUTE_NAMES) or not all(
        t.isascii() and t.isdigit() and int(t) > 0 for t in tokens
    ):
        raise DatasetError(
            f"{path}: expected {len(ATTRIBUTE_NAMES)} positive block sizes "
            f"(e.g. [16, 17, 19, 14, 10, 15, 2, 11, 16, 7, 9, 15]); got {text.strip()[:120]!r}"
        )
    return [int(t) for t in tokens]


def attributes(sizes: list[int]) -> list[Attribute]:
    return [Attribute(name, [f"{name}_{i}" for i in range(n)]) for name, n in zip(ATTRIBUTE_NAMES, sizes)]


def parse_label_line(text: str, sizes: list[int], path: str, lineno: int) -> list[int]:
    """One line of labels_*.txt -> one label per attribute; an all-zero block -> -1."""
    tokens = text.split()
    total = sum(sizes)
    if len(tokens) != total or any(t not in ("0", "1") for t in tokens):
        raise _parsing.malformed(path, lineno, f"{total} values of 0 or 1 (blocks {sizes})", text)
    labels, start = [], 0
    for name, n in zip(ATTRIBUTE_NAMES, sizes):
        ones = [i for i in range(n) if tokens[start + i] == "1"]
        if len(ones) > 1:
            raise DatasetError(
                f"{path}:{lineno}: malformed line: expected at most one 1 in the {name!r} block "
                f"(positions {start}..{start + n - 1}); got ones at block indices {ones}"
            )
        labels.append(ones[0] if ones else UNLABELLED)
        start += n
    return labels


def read_split(input_dir: str, split: str, sizes: list[int]) -> list[tuple[str, list[int], str]] | None:
    """imgs_<split>.txt + labels_<split>.txt -> [(relative path, labels, "file:line")], None if the
    split is not there."""
    imgs = os.path.join(input_dir, f"imgs_{split}.txt")
    labels = os.path.join(input_dir, f"labels_{split}.txt")
    if not os.path.isfile(imgs) and not os.path.isfile(labels):
        return None
    if not os.path.isfile(imgs) or not os.path.isfile(labels):
        have, lack = (imgs, labels) if os.path.isfile(imgs) else (labels, imgs)
        raise DatasetError(f"{have} has no partner file {lack}")
    paths = []
    for lineno, text in _parsing.read_lines(imgs):
        rel = text.strip()
        if not rel:
            continue
        if rel.startswith("/") or ".." in rel.split("/"):
            raise _parsing.malformed(imgs, lineno, "a relative image path", text)
        paths.append(rel)
    rows = []
    for lineno, text in _parsing.read_lines(labels):
        if not text.strip():
            continue
        rows.append((parse_label_line(text, sizes, labels, lineno), f"{labels}:{lineno}"))
    if len(rows) != len(paths):
        raise DatasetError(
            f"{imgs} lists {len(paths)} images but {labels} has {len(rows)} label lines; line i of one "
            "must describe line i of the other"
        )
    return [(p, lab, where) for p, (lab, where) in zip(paths, rows)]


def convert(
    input_dir: str,
    output_dir: str,
    **protocol,
) -> DatasetInfo:
    attr_num_path = _parsing.find_file(input_dir, ("attr_num.txt",), "Shopping100k block sizes")
    sizes = parse_attr_num(attr_num_path)
    rows, used = [], []
    for split in SPLITS:
        got = read_split(input_dir, split, sizes)
        if got is not None:
            rows.extend(got)
            used.append(split)
    if not used:
        raise DatasetError(
            f"{input_dir}: no imgs_train.txt/labels_train.txt or imgs_test.txt/labels_test.txt"
        )
    root = _parsing.find_image_root(input_dir, [r[0] for r in rows], ("Images", ""))

    examples, skipped = _parsing.drop_duplicates(
        [
            engine.Example(rel, labels, path=os.path.join(root, rel), where=where)
            for rel, labels, where in rows
        ]
    )
    attrs = attributes(sizes)
    extra = {
        "pooled_splits": used,
        "image_root": os.path.abspath(root),
        "value_names": "not distributed; named <attribute>_<block index>",
    }
    return _parsing.write_labelled(examples, attrs, output_dir=output_dir, name=NAME,
                                   source=os.path.abspath(input_dir), rows_read=len(rows), skipped=skipped,
                                   extra=extra, **protocol)  # fmt: skip


if __name__ == "__main__":
    common.run(convert)
