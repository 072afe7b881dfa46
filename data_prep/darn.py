"""DARN -> dataset directory: 9 clothing attributes from the sparse `imgIdx attr val ...` label lists.

    python -m data_prep.darn --input_dir=DARN --output_dir=data/darn

Input (the label lists used with DARN's crawled images, e.g. by ASEN):

    filenames_<split>.txt   one relative image path per line
    label_<split>.txt       lines `imgIdx attr val attr val ...` (also accepted: <split>_label.txt)
    the images, at those paths relative to input_dir or to an images/ or Images/ folder

for whichever splits of train, val, valid and test exist; they are pooled and re-split by the paper's
protocol (§4.2). `imgIdx` is the 0-based line index into the filenames file of the same split, `attr`
an index into `ATTRIBUTES`, `val` a value index; an attribute missing from a line is unlabelled, and a
listed image without a label line has nothing labelled (skipped as `no_labels`).

The value counts below add up to 185; §4.2 says 179. The lists index values up to these counts, so
all 185 are kept; the paper may have dropped values with no or few images.
"""

from __future__ import annotations

import os

from data_prep import _parsing, common
from fashionsearchnet_v2.data import convert as engine
from fashionsearchnet_v2.data.schema import UNLABELLED, Attribute, DatasetError, DatasetInfo

NAME = "darn"
# Index order of `attr` in the label lines, with the number of values of each.
ATTRIBUTES = (
    ("category", 20),
    ("button", 13),
    ("color", 55),
    ("length", 7),
    ("pattern", 28),
    ("shape", 11),
    ("collar", 26),
    ("sleeve_length", 8),
    ("sleeve_shape", 17),
)
SPLITS = ("train", "val", "valid", "test")


def attributes() -> list[Attribute]:
    return [Attribute(name, [f"{name}_{i}" for i in range(n)]) for name, n in ATTRIBUTES]


def parse_label_line(text: str, num_images: int, path: str, lineno: int) -> tuple[int, list[int]] | None:
    """`imgIdx attr val attr val ...` -> (imgIdx, one label per attribute); None for a blank line."""
    tokens = text.split()
    if not tokens:
        return None
    expected = (
        f"an image index 0..{num_images - 1} then pairs of attribute index 0..{len(ATTRIBUTES) - 1} "
        "and value index"
    )
    if len(tokens) % 2 != 1 or not all(t.isascii() and t.isdigit() for t in tokens):
        raise _parsing.malformed(path, lineno, expected, text)
    idx = int(tokens[0])
    if idx >= num_images:
        raise _parsing.malformed(path, lineno, expected, text)
    labels = [UNLABELLED] * len(ATTRIBUTES)
    for a, v in zip(tokens[1::2], tokens[2::2]):
        a, v = int(a), int(v)
        if a >= len(ATTRIBUTES):
            raise _parsing.malformed(path, lineno, expected, text)
        name, n = ATTRIBUTES[a]
        if v >= n:
            raise _parsing.malformed(
                path, lineno, f"a value index 0..{n - 1} for attribute {a} ({name})", text
            )
        if labels[a] not in (UNLABELLED, v):
            raise _parsing.malformed(path, lineno, f"one value for attribute {a} ({name})", text)
        labels[a] = v
    return idx, labels


def read_split(input_dir: str, split: str) -> list[tuple[str, list[int], str]] | None:
    """filenames_<split>.txt + its label file -> [(relative path, labels, "file:line")], None if the
    split is not there. Listed images without a label line get all -1."""
    names_path = os.path.join(input_dir, f"filenames_{split}.txt")
    label_candidates = (f"label_{split}.txt", f"{split}_label.txt")
    label_path = _parsing.find_file(input_dir, label_candidates, "label file", required=False)
    if not os.path.isfile(names_path):
        if label_path:
            raise DatasetError(f"{label_path} has no partner file {names_path}")
        return None
    if not label_path:
        raise DatasetError(f"{names_path} has no label file ({' or '.join(label_candidates)})")
    paths, where_listed = [], []
    for lineno, text in _parsing.read_lines(names_path):
        rel = text.strip()
        if not rel:
            continue
        paths.append(rel)
        where_listed.append(f"{names_path}:{lineno}")
    labels: list[list[int] | None] = [None] * len(paths)
    where = list(where_listed)
    for lineno, text in _parsing.read_lines(label_path):
        parsed = parse_label_line(text, len(paths), label_path, lineno)
        if parsed is None:
            continue
        idx, row = parsed
        if labels[idx] is not None:
            raise DatasetError(f"{label_path}:{lineno}: image index {idx} already labelled at {where[idx]}")
        labels[idx] = row
        where[idx] = f"{label_path}:{lineno}"
    empty = [UNLABELLED] * len(ATTRIBUTES)
    return [(p, lab if lab is not None else list(empty), w) for p, lab, w in zip(paths, labels, where)]


def convert(
    input_dir: str,
    output_dir: str,
    **protocol,
) -> DatasetInfo:
    if not os.path.isdir(input_dir):
        raise DatasetError(f"--input_dir {input_dir} does not exist")
    rows, used = [], []
    for split in SPLITS:
        got = read_split(input_dir, split)
        if got is not None:
            rows.extend(got)
            used.append(split)
    if not used:
        raise DatasetError(
            f"{input_dir}: no filenames_<split>.txt with label_<split>.txt for any split of {SPLITS}"
        )
    root = _parsing.find_image_root(input_dir, [r[0] for r in rows], ("", "images", "Images"))
    examples, skipped = _parsing.drop_duplicates(
        [
            engine.Example(rel, labels, path=os.path.join(root, rel), where=where)
            for rel, labels, where in rows
        ]
    )
    attrs = attributes()
    extra = {
        "pooled_splits": used,
        "image_root": os.path.abspath(root),
        "value_names": "not distributed; named <attribute>_<value index>",
        "total_values_note": "185 values as indexed by the label lists; the paper (§4.2) says 179",
    }
    return _parsing.write_labelled(examples, attrs, output_dir=output_dir, name=NAME,
                                   source=os.path.abspath(input_dir), rows_read=len(rows), skipped=skipped,
                                   extra=extra, **protocol)  # fmt: skip


if __name__ == "__main__":
    common.run(convert)
