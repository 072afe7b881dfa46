"""Small parsing helpers shared by the dataset converters: finding files in the layouts datasets are
distributed in, reading label files line by line with `file:line` positions, and error messages
that say where a line is and what was expected.

Nothing here reads pixels; converters turn label files into `Example`s and the engine
(`fashionsearchnet_v2.data.convert.write_dataset`) streams the images.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

from fashionsearchnet_v2.data.convert import Example
from fashionsearchnet_v2.data.schema import UNLABELLED, DatasetError

# How many listed images to probe when deciding which folder the relative paths are relative to.
_PROBE = 200


def malformed(path: str, lineno: int, expected: str, line: str) -> DatasetError:
    """The error for a label line that does not parse: file, 1-based line number, expectation, text."""
    shown = line if len(line) <= 120 else line[:117] + "..."
    return DatasetError(f"{path}:{lineno}: malformed line: expected {expected}; got {shown!r}")


def read_lines(path: str) -> Iterator[tuple[int, str]]:
    """Yields (1-based line number, line without its line ending) for every line of a text file.

    Universal newlines make CRLF copies (CelebA's are) read like LF ones; `utf-8-sig` drops a BOM
    some editors add, which would otherwise glue itself to the first token.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            for lineno, line in enumerate(f, 1):
                yield lineno, line.rstrip("\n")
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file ({e})") from e


def find_file(input_dir: str, candidates: Sequence[str], what: str, required: bool = True) -> str | None:
    """The first of `candidates` (paths relative to `input_dir`) that is a file; a missing required
    file is an error listing every place looked at."""
    for rel in candidates:
        path = os.path.join(input_dir, rel)
        if os.path.isfile(path):
            return path
    if not required:
        return None
    if not os.path.isdir(input_dir):
        raise DatasetError(f"--input_dir {input_dir} does not exist")
    looked = ", ".join(os.path.join(input_dir, c) for c in candidates)
    raise DatasetError(f"no {what} found; looked for {looked}")


def find_image_root(input_dir: str, rel_paths: Sequence[str], subfolders: Sequence[str]) -> str:
    """Which folder the listed relative image paths are relative to: the first of `input_dir` joined
    with each of `subfolders` ("" = input_dir itself) holding any of the first listed images.

    Datasets are unpacked both ways (paths relative to the root, or to an `Images/` folder); probing
    a sample decides once instead of stat-ing several places per image. When none matches, the first
    candidate is used and every image is reported missing by the engine.
    """
    sample = list(rel_paths[:_PROBE])
    for sub in subfolders:
        root = os.path.join(input_dir, sub) if sub else input_dir
        if os.path.isdir(root) and any(os.path.isfile(os.path.join(root, p)) for p in sample):
            return root
    first = subfolders[0]
    return os.path.join(input_dir, first) if first else input_dir


def find_dir(input_dir: str, subfolders: Sequence[str]) -> str:
    """The first existing folder among `subfolders` of `input_dir` ("" = input_dir itself)."""
    for sub in subfolders:
        path = os.path.join(input_dir, sub) if sub else input_dir
        if os.path.isdir(path):
            return path
    first = subfolders[0]
    return os.path.join(input_dir, first) if first else input_dir


def parse_int(token: str, path: str, lineno: int, expected: str, line: str) -> int:
    try:
        return int(token)
    except ValueError:
        raise malformed(path, lineno, expected, line) from None


def drop_duplicates(examples: list[Example]) -> tuple[list[Example], list[tuple[str, str, str]]]:
    """Keeps each image's first row; a later one is skipped (reason `duplicate`, naming the row it
    repeats): the same file listed twice, say in the train and the test list, would otherwise land in
    two splits."""
    kept, skipped, first = [], [], {}
    for ex in examples:
        if ex.image_id in first:
            skipped.append(("duplicate", ex.image_id, f"{ex.where} repeats {first[ex.image_id]}"))
        else:
            first[ex.image_id] = ex.where
            kept.append(ex)
    return kept, skipped


def drop_unlabelled(examples: list[Example]) -> tuple[list[Example], list[tuple[str, str, str]]]:
    """Splits off rows with no attribute labelled at all (reason `no_labels`): they can be neither a
    classification target nor part of a manipulation triplet, so they only cost disk and time."""
    kept, skipped = [], []
    for ex in examples:
        if all(v == UNLABELLED for v in ex.labels):
            skipped.append(("no_labels", ex.image_id, ex.where))
        else:
            kept.append(ex)
    return kept, skipped


def label_counts(examples: Sequence[Example], attribute_names: Sequence[str]) -> dict[str, int]:
    """How many rows have each attribute labelled (kept in dataset.json's `extra`)."""
    counts = [0] * len(attribute_names)
    for ex in examples:
        for i, v in enumerate(ex.labels):
            counts[i] += v != UNLABELLED
    return dict(zip(attribute_names, counts))


def write_labelled(examples: list[Example], attributes, *, skipped=(), extra=None, **write_kwargs):
    """`convert.write_dataset` after every converter's last steps: rows with no attribute labelled are
    dropped and reported (`drop_unlabelled`), and `extra` records the labelled rows per attribute.
    `write_kwargs`: write_dataset's (output_dir, name, source, rows_read and the split's flags)."""
    from fashionsearchnet_v2.data import convert

    examples, unlabelled = drop_unlabelled(examples)
    counts = label_counts(examples, [a.name for a in attributes])
    extra = {**(extra or {}), "labelled_rows_per_attribute": counts}
    return convert.write_dataset(
        examples, attributes, skipped=[*skipped, *unlabelled], extra=extra, **write_kwargs
    )
