"""CelebA -> dataset directory: the 40 binary face flags grouped into the paper's 8 attributes.

    python -m data_prep.celeba --input_dir=CELEBA --output_dir=data/celeba

Input, as distributed (either the flat layout or the official Google Drive folders):

    list_attr_celeba.txt          (or Anno/list_attr_celeba.txt)
    list_eval_partition.txt       optional (or Eval/list_eval_partition.txt)
    img_align_celeba/000001.jpg   (or Img/img_align_celeba/, or img_align_celeba/img_align_celeba/)

`list_attr_celeba.txt`: line 1 the image count, line 2 the 40 flag names, then one row per image,
`000001.jpg -1  1  1 -1 ...` (values +-1 padded to width 2, CRLF line endings in distributed copies).

§4.2 groups the flags into hair colour, beard, hair type, smiling, eyeglasses, gender, hat and age,
8 attributes with 21 values; the paper does not print the table, so `GROUPS` below is ours. The split
is the paper's protocol (2,000 query, 18,000 gallery, the rest training, from a seeded permutation),
not CelebA's official train/val/test partition: the partition file is only checked and its counts kept.
"""

from __future__ import annotations

import collections
import os

from data_prep import _parsing, common
from fashionsearchnet_v2.data import convert as engine
from fashionsearchnet_v2.data.schema import UNLABELLED, Attribute, DatasetError, DatasetInfo

NAME = "celeba"
NUM_FLAGS = 40

# (attribute, rule, ((value, flag), ...)). A value is on when its flag is +1.
# - "binary": one flag; the first value is the flag at -1, the second at +1 (every image labelled).
# - "exclusive": exactly one flag on -> that value; none or several on -> unlabelled (-1). Several
#   hair colours (blond + brown) or hair types (bald + straight) contradict each other, and there is
#   no "other" value (the 21 values are all taken), so the attribute is left out for that image.
# - "priority": several on -> the first listed. Beard flags nest: a goatee is usually also flagged as
#   a mustache, and stubble (5 o'clock shadow) often comes with No_Beard, so the most specific wins.
#   None on -> unlabelled.
# 4 + 4 + 3 + 2 * 5 = 21 values. Bald is a hair type (a bald head has no hair colour); Sideburns,
# Bangs and Receding_Hairline are not used.
GROUPS = (
    ("hair_color", "exclusive", (("black", "Black_Hair"), ("blond", "Blond_Hair"), ("brown", "Brown_Hair"), ("gray", "Gray_Hair"))),
    ("beard", "priority", (("goatee", "Goatee"), ("mustache", "Mustache"), ("stubble", "5_o_Clock_Shadow"), ("no_beard", "No_Beard"))),
    ("hair_type", "exclusive", (("straight", "Straight_Hair"), ("wavy", "Wavy_Hair"), ("bald", "Bald"))),
    ("smiling", "binary", (("not_smiling", "Smiling"), ("smiling", "Smiling"))),
    ("eyeglasses", "binary", (("no_eyeglasses", "Eyeglasses"), ("eyeglasses", "Eyeglasses"))),
    ("gender", "binary", (("female", "Male"), ("male", "Male"))),
    ("hat", "binary", (("no_hat", "Wearing_Hat"), ("hat", "Wearing_Hat"))),
    ("age", "binary", (("old", "Young"), ("young", "Young"))),
)  # fmt: skip


def attributes() -> list[Attribute]:
    return [Attribute(name, tuple(v for v, _ in values)) for name, _, values in GROUPS]


def group_flags(flags: dict[str, int]) -> list[int]:
    """{flag name: +1/-1} -> one label per attribute of `GROUPS` (-1 = unlabelled)."""
    labels = []
    for _, rule, values in GROUPS:
        if rule == "binary":
            labels.append(1 if flags[values[0][1]] == 1 else 0)
            continue
        on = [i for i, (_, flag) in enumerate(values) if flags[flag] == 1]
        if not on:
            labels.append(UNLABELLED)
        elif rule == "priority" or len(on) == 1:
            labels.append(on[0])
        else:
            labels.append(UNLABELLED)
    return labels


def parse_attr_file(path: str) -> tuple[list[str], list[tuple[str, list[int], int]]]:
    """list_attr_celeba.txt -> (flag names, [(image name, [40 x +-1], line number)]).

    Checks the header count against the rows, so a truncated or concatenated file is caught.
    """
    lines = _parsing.read_lines(path)
    header = next(lines, None)
    if header is None:
        raise DatasetError(f"{path}: empty file; expected the image count on line 1")
    lineno, text = header
    count = _parsing.parse_int(text.strip(), path, lineno, "the number of images (e.g. 202599)", text)
    second = next(lines, None)
    if second is None:
        raise DatasetError(f"{path}:2: missing line: expected the {NUM_FLAGS} attribute names")
    lineno, text = second
    names = text.split()
    if len(names) != NUM_FLAGS:
        raise _parsing.malformed(path, lineno, f"{NUM_FLAGS} attribute names", text)
    needed = {flag for _, _, values in GROUPS for _, flag in values}
    if needed - set(names):
        raise DatasetError(f"{path}:{lineno}: attribute names lack {sorted(needed - set(names))}")
    rows = []
    expected = f"an image name and {NUM_FLAGS} values of 1 or -1"
    for lineno, text in lines:
        tokens = text.split()
        if not tokens:
            continue  # a final blank line
        if len(tokens) != NUM_FLAGS + 1 or any(t not in ("1", "-1") for t in tokens[1:]):
            raise _parsing.malformed(path, lineno, expected, text)
        rows.append((tokens[0], [int(t) for t in tokens[1:]], lineno))
    if len(rows) != count:
        raise DatasetError(
            f"{path}: line 1 says {count} images but the file has {len(rows)} rows; "
            "the file is truncated or not the distributed list_attr_celeba.txt"
        )
    return names, rows


def parse_partition_file(path: str, image_names: set[str]) -> dict[str, int]:
    """list_eval_partition.txt -> counts per official partition (0 train, 1 val, 2 test), checked
    against the attribute file: every row names an image of it, each image exactly once."""
    counts = collections.Counter()
    seen = set()
    for lineno, text in _parsing.read_lines(path):
        tokens = text.split()
        if not tokens:
            continue
        if len(tokens) != 2 or tokens[1] not in ("0", "1", "2"):
            raise _parsing.malformed(path, lineno, "an image name and a partition 0, 1 or 2", text)
        if tokens[0] not in image_names:
            raise DatasetError(f"{path}:{lineno}: image {tokens[0]!r} is not in list_attr_celeba.txt")
        if tokens[0] in seen:
            raise DatasetError(f"{path}:{lineno}: image {tokens[0]!r} is listed twice")
        seen.add(tokens[0])
        counts[("train", "val", "test")[int(tokens[1])]] += 1
    if len(seen) != len(image_names):
        raise DatasetError(
            f"{path}: lists {len(seen)} images but list_attr_celeba.txt has {len(image_names)}"
        )
    return dict(counts)


def image_dir(input_dir: str) -> str:
    """The image folder: `img_align_celeba/` as the archive unpacks, `Img/img_align_celeba/` in the
    official Drive layout; Kaggle's copy nests `img_align_celeba/img_align_celeba/`."""
    for sub in ("img_align_celeba", "Img/img_align_celeba"):
        path = os.path.join(input_dir, sub)
        if os.path.isdir(path):
            nested = os.path.join(path, "img_align_celeba")
            return nested if os.path.isdir(nested) else path
    return os.path.join(input_dir, "img_align_celeba")


def describe_groups() -> dict:
    """The grouping table as kept in dataset.json: per attribute its rule and value <- flag."""
    out = {}
    for name, rule, values in GROUPS:
        if rule == "binary":
            flag = values[0][1]
            out[name] = {"rule": rule, "values": {values[0][0]: f"{flag}=-1", values[1][0]: f"{flag}=1"}}
        else:
            out[name] = {"rule": rule, "values": {v: f"{flag}=1" for v, flag in values}}
    return out


def convert(
    input_dir: str,
    output_dir: str,
    **protocol,
) -> DatasetInfo:
    attr_path = _parsing.find_file(
        input_dir, ("list_attr_celeba.txt", "Anno/list_attr_celeba.txt"), "CelebA attribute file"
    )
    names, rows = parse_attr_file(attr_path)
    part_path = _parsing.find_file(
        input_dir,
        ("list_eval_partition.txt", "Eval/list_eval_partition.txt"),
        "partition file",
        required=False,
    )
    partition = parse_partition_file(part_path, {r[0] for r in rows}) if part_path else None
    images = image_dir(input_dir)
    examples = []
    for image_name, values, lineno in rows:
        labels = group_flags(dict(zip(names, values)))
        examples.append(
            engine.Example(
                image_id=image_name,
                labels=labels,
                path=os.path.join(images, image_name),
                where=f"{attr_path}:{lineno}",
            )
        )
    del rows
    attrs = attributes()
    extra = {
        "grouping": describe_groups(),
        "official_partition": partition,
        "split_protocol": "paper §4.2 (query/gallery/train from a seeded permutation); "
        "the official partition is not used",
    }
    return _parsing.write_labelled(examples, attrs, output_dir=output_dir, name=NAME,
                                   source=os.path.abspath(attr_path), rows_read=len(examples), extra=extra,
                                   **protocol)  # fmt: skip


if __name__ == "__main__":
    common.run(convert)
