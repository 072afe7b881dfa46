"""Your own catalogue -> dataset directory: one CSV row per image, one column per attribute.

    python -m data_prep.catalog --csv=shop/products.csv --image_column=image \\
        --attributes=colour,sleeve,pattern --output_dir=data/shop \\
        [--image_pattern='images/{sku}.jpg' instead of --image_column] \\
        [--image_root=DIR] [--id_column=COL] [--name=shop] [--min_count=N] [--other_value=other] \\
        [--unlabelled=NA,unknown] [--delimiter=,] [--malformed=error|skip] \\
        [--num_query=2000 --num_gallery=18000 --seed=0 --overwrite]

Input: a CSV (or, with --delimiter, any delimited text) with a header row. `--image_column` holds each
image's path, absolute or relative to `--image_root` (default: the CSV's folder); where no column holds
it, `--image_pattern` makes it from the row's cells (`images/{id}.jpg`: the `id` column's cell; a field
may carry a format spec, `{id:0>6}` pads it to six characters), and a row whose cell for a field is
empty is skipped as `no_image`. Each column named in
`--attributes` is one attribute, whose values are the distinct strings found in it (surrounding spaces
dropped, case kept), in alphabetical order. An empty cell, or one of `--unlabelled`, leaves the
attribute unlabelled (-1) for that image. With `--min_count=N`, the values of an attribute that fewer than
N images have are grouped into one value `--other_value` (listed last; an existing value of that name is
merged into it): a value seen a handful of times can be neither learnt nor searched for.

The split protocol, the skip report, the atomic output and `--overwrite` are the other converters'
(`fashionsearchnet_v2.data.convert`): missing, empty or corrupt images, rows with no attribute labelled
(`no_labels`) and images listed twice (`duplicate`) are skipped and listed by reason. A row with another
number of fields than the header (an unquoted comma in a title) stops the conversion, naming its line;
with `--malformed=skip` it is skipped and listed as `malformed` with its line instead. The dataset's name
(`--name`, default the output folder's name) is what every entry point calls it: given
`--data_dir=data/shop`, they read it from dataset.json and work in `work/<name>/`.
"""

from __future__ import annotations

import collections
import csv
import os
import re
import string
from collections.abc import Sequence

from absl import flags

from data_prep import _parsing, common
from fashionsearchnet_v2.data import convert as engine
from fashionsearchnet_v2.data.schema import UNLABELLED, Attribute, DatasetError, DatasetInfo
from fashionsearchnet_v2.progress import Progress

#: What a row with another number of fields than the header does: stop the conversion naming its line
#: (the default), or be skipped and listed in the report as `malformed`.
MALFORMED = ("error", "skip")

CSV = flags.DEFINE_string("csv", None, "The catalogue: a CSV with a header row, one row per image.")
IMAGE_COLUMN = flags.DEFINE_string("image_column", None, "Column holding each image's path.")
IMAGE_PATTERN = flags.DEFINE_string(
    "image_pattern",
    None,
    "Each image's path made from its row's cells, e.g. 'images/{id}.jpg' (instead of --image_column).",
)
ATTRIBUTES = flags.DEFINE_list("attributes", None, "Columns to use as attributes, in this order.")
IMAGE_ROOT = flags.DEFINE_string(
    "image_root", None, "Folder image paths are relative to (default: the CSV's)."
)
ID_COLUMN = flags.DEFINE_string("id_column", None, "Column holding item ids (default: the image path).")
NAME = flags.DEFINE_string("name", None, "Dataset name (default: the output folder's name).")
MIN_COUNT = flags.DEFINE_integer(
    "min_count", 1, "Values of fewer images (files present) join --other_value (1: keep all)."
)
OTHER_VALUE = flags.DEFINE_string("other_value", "other", "Name of the value rare values are grouped into.")
UNLABELLED_VALUES = flags.DEFINE_list(
    "unlabelled", [], "Cell values that mean 'not labelled' (besides empty)."
)
DELIMITER = flags.DEFINE_string("delimiter", ",", "Field delimiter (e.g. '\\t' for TSV).")
MALFORMED_ROWS = flags.DEFINE_enum(
    "malformed",
    "error",
    list(MALFORMED),
    "A row with another number of fields: stop (error) or skip and list it.",
)

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def dataset_name(name: str | None, output_dir: str) -> str:
    """`name`, or the output folder's name; it names the work directory, so it must be a plain file name."""
    name = name or os.path.basename(os.path.normpath(os.path.abspath(output_dir)))
    if not _NAME_PATTERN.match(name):
        raise DatasetError(
            f"dataset name {name!r} must be letters, digits, '_', '.' or '-' (it names work/<name>/); "
            "pass --name"
        )
    return name


def read_rows(path: str, delimiter: str = ",", malformed: str = "error") -> tuple[list[str], list, list]:
    """The header, [(line number, {column: cell})] and the malformed rows of a delimited file (quoted
    fields as in RFC 4180).

    A row with another number of fields than the header is an error naming its line, or with
    `malformed="skip"` one of the third list's (reason, id, detail) skips, its detail naming the line.
    """
    if malformed not in MALFORMED:
        raise DatasetError(f"--malformed must be one of {list(MALFORMED)}, got {malformed!r}")
    if len(delimiter) != 1:
        raise DatasetError(f"--delimiter must be one character, got {delimiter!r}")
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f, delimiter=delimiter)
            header = next(reader, None)
            if not header or not any(h.strip() for h in header):
                raise DatasetError(f"{path}:1: expected a header row naming the columns; the file is empty")
            header = [h.strip() for h in header]
            repeated = sorted({h for h in header if header.count(h) > 1})
            if repeated:
                raise DatasetError(f"{path}:1: columns named more than once: {repeated}")
            rows, bad = [], []
            for fields in reader:
                lineno = reader.line_num
                if not fields or not any(x.strip() for x in fields):
                    continue
                if len(fields) != len(header):
                    error = _parsing.malformed(
                        path,
                        lineno,
                        f"{len(header)} fields ({delimiter.join(header)})",
                        delimiter.join(fields),
                    )
                    if malformed == "error":
                        raise DatasetError(
                            f"{error}; --malformed=skip skips such rows and lists them in the report"
                        )
                    bad.append(("malformed", "", f"{error} ({len(fields)} fields)"))
                    continue
                rows.append((lineno, dict(zip(header, fields))))
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 text file ({e})") from e
    except csv.Error as e:
        raise DatasetError(f"{path}: not a readable CSV ({e})") from e
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from e
    return header, rows, bad


def pattern_columns(pattern: str, header: Sequence[str]) -> list[str]:
    """The columns `pattern` ('images/{id}.jpg') fills in; an error names what is wrong with it."""
    try:
        fields = [(name, conversion) for _, name, _, conversion in string.Formatter().parse(pattern)
                  if name is not None]  # fmt: skip
    except ValueError as e:
        raise DatasetError(
            f"--image_pattern={pattern!r} is not a pattern like 'images/{{id}}.jpg' ({e})"
        ) from e
    if not fields:
        raise DatasetError(f"--image_pattern={pattern!r} names no column; expected e.g. 'images/{{id}}.jpg'")
    for name, conversion in fields:
        if conversion is not None or not name or name not in header:
            raise DatasetError(
                f"--image_pattern={pattern!r}: {{{name}{'!' + conversion if conversion else ''}}} is not a "
                f"column of the CSV; each {{...}} names one of {list(header)}"
            )
    names = sorted({name for name, _ in fields})
    try:  # a format spec that a string cannot take ({id:d}) or that names another field
        pattern.format_map(dict.fromkeys(names, "1"))
    except (ValueError, KeyError, IndexError) as e:
        raise DatasetError(f"--image_pattern={pattern!r}: cells are text, so {e}") from e
    return names


def attribute_values(
    cells: Sequence[str], min_count: int = 1, other_value: str = "other"
) -> tuple[tuple[str, ...], dict[str, str], dict[str, int]]:
    """The values of one attribute from its labelled cells (already stripped, none empty).

    Returns (values in label order, raw value -> value, images per raw value). Values seen fewer than
    `min_count` times are mapped to `other_value`, which comes last; all others keep their own name and
    are sorted alphabetically.
    """
    counts = collections.Counter(cells)
    rare = {v for v, n in counts.items() if n < min_count}
    if not rare:  # nothing grouped: a value named like the group stays an ordinary value
        return tuple(sorted(counts)), {v: v for v in counts}, dict(counts.most_common())
    mapping = {v: other_value if v in rare or v == other_value else v for v in counts}
    values = tuple(sorted(set(mapping.values()) - {other_value})) + (other_value,)
    return values, mapping, dict(counts.most_common())


def convert(
    csv_path: str,
    output_dir: str,
    *,
    image_column: str | None = None,
    image_pattern: str | None = None,
    attributes: Sequence[str],
    image_root: str | None = None,
    id_column: str | None = None,
    name: str | None = None,
    min_count: int = 1,
    other_value: str = "other",
    unlabelled: Sequence[str] = (),
    delimiter: str = ",",
    malformed: str = "error",
    **protocol,
) -> DatasetInfo:
    name = dataset_name(name, output_dir)
    attributes = [a.strip() for a in attributes if a.strip()]
    if not attributes:
        raise DatasetError("--attributes must name at least one column")
    if len(set(attributes)) != len(attributes):
        raise DatasetError(f"--attributes names a column twice: {attributes}")
    if min_count < 1:
        raise DatasetError(f"--min_count must be >= 1, got {min_count}")
    if (image_column is None) == (image_pattern is None):
        raise DatasetError("give exactly one of --image_column (a column of image paths) or --image_pattern")
    header, rows, bad = read_rows(csv_path, delimiter, malformed)
    filled = pattern_columns(image_pattern, header) if image_pattern is not None else []
    wanted = ([image_column] if image_column else []) + [*attributes] + ([id_column] if id_column else [])
    unknown = [c for c in wanted if c not in header]
    if unknown:
        raise DatasetError(f"{csv_path}: no column {unknown}; the header has {header}")
    if image_column in attributes or (id_column and id_column in attributes):
        raise DatasetError("the image (or id) column cannot also be an attribute")
    root = image_root or os.path.dirname(os.path.abspath(csv_path))
    missing_marks = {""} | {u.strip() for u in unlabelled}

    held, skipped = _rows_with_images(rows, csv_path, root, image_column, image_pattern, filled, id_column,
                                      protocol.get("progress", True))  # fmt: skip
    missing = [path for reason, _, path in skipped if reason in ("missing", "empty")]
    # Most images not found: they were likely looked for under the wrong folder. Said first, since every
    # count after this (values, split sizes) would only be a symptom of it.
    not_found = (
        f"{len(missing)} of {len(rows)} rows' images were not found or empty (e.g. {missing[0]}); paths are "
        f"read relative to {root} (--image_root to change, or --image_pattern)"
        if missing and len(missing) >= len(held)
        else ""
    )
    if not held:
        reasons = ", ".join(
            f"{n} {r}" for r, n in collections.Counter(r for r, _, _ in skipped).most_common()
        )
        raise DatasetError(
            f"{csv_path}: none of its {len(rows)} rows has a usable image ({reasons or 'no rows'})"
            + (f"; {not_found}" if not_found else "")
        )
    skipped = bad + skipped
    cells = {a: [] for a in attributes}  # counted over the images the dataset will hold
    for *_, row in held:
        for a in attributes:
            value = row[a].strip()
            if value not in missing_marks:
                cells[a].append(value)
    attrs, mappings, extra_counts, grouped = [], {}, {}, {}
    for a in attributes:
        values, mapping, counts = attribute_values(cells[a], min_count, other_value)
        if len(values) < 2:
            raise DatasetError(
                f"attribute {a!r} has {len(values)} value(s) {list(values)} after grouping (--min_count={min_count}):"
                " nothing to classify or to change; drop it from --attributes or lower --min_count"
                + (f". But first: {not_found}" if not_found else "")
            )
        attrs.append(Attribute(a, values))
        mappings[a], extra_counts[a] = mapping, counts
        grouped[a] = sorted(v for v, m in mapping.items() if m != v)

    examples = []
    for image_id, path, where, row in held:
        labels = []
        for attr in attrs:
            value = row[attr.name].strip()
            labels.append(
                UNLABELLED if value in missing_marks else attr.values.index(mappings[attr.name][value])
            )
        examples.append(engine.Example(image_id, labels, path=path, where=where))
    extra = {
        "csv": {"image_column": image_column, "image_pattern": image_pattern, "id_column": id_column,
                "image_root": os.path.abspath(root), "attributes": attributes,
                "unlabelled": sorted(missing_marks - {""})},
        "min_count": min_count,
        "other_value": other_value,
        "grouped_into_other": grouped,
        "value_counts": extra_counts,
    }  # fmt: skip
    return _parsing.write_labelled(examples, attrs, output_dir=output_dir, name=name,
                                   source=os.path.abspath(csv_path), rows_read=len(rows) + len(bad), skipped=skipped,
                                   extra=extra, **protocol)  # fmt: skip


def _rows_with_images(rows, csv_path: str, root: str, column: str | None, pattern: str | None,
                      filled: Sequence[str], id_column: str | None,
                      progress: bool = False) -> tuple[list, list[tuple[str, str, str]]]:  # fmt: skip
    """The rows whose image the dataset will hold, [(id, path, "file:line", row)], as far as a file
    tells (an image that fails to decode is found when it is written), and the others as the converters'
    skips (reason, id, detail): no image path or id, an id seen before, a missing or empty file. Values
    are counted over the first list, so that --min_count counts images, not rows."""
    held, skipped, seen = [], [], {}
    meter = Progress(len(rows), f"finding the images of {csv_path}", "rows", enabled=progress)
    for done, (lineno, row) in enumerate(rows, 1):
        meter.update(done)
        where = f"{csv_path}:{lineno}"
        rel = _image_path(row, column, pattern, filled)
        image_id = row[id_column].strip() if id_column else rel
        if not rel or not image_id:
            skipped.append(("no_image" if not rel else "no_id", image_id or rel, where))
            continue
        if image_id in seen:
            skipped.append(("duplicate", image_id, f"{where} repeats {seen[image_id]}"))
            continue
        seen[image_id] = where
        path = rel if os.path.isabs(rel) else os.path.join(root, rel)
        if not os.path.isfile(path):
            skipped.append(("missing", image_id, path))
        elif os.path.getsize(path) == 0:
            skipped.append(("empty", image_id, path))
        else:
            held.append((image_id, path, where, row))
    meter.finish(len(rows))
    return held, skipped


def _image_path(row: dict[str, str], column: str | None, pattern: str | None, filled: Sequence[str]) -> str:
    """A row's image path: its `column` cell, or `pattern` filled from its cells ("" if one is empty)."""
    if column is not None:
        return row[column].strip()
    cells = {name: row[name].strip() for name in filled}
    return pattern.format_map(cells) if all(cells.values()) else ""


def _convert_from_flags(output_dir: str, **kwargs) -> DatasetInfo:
    for flag in (CSV, ATTRIBUTES):
        if not flag.value:
            raise DatasetError(f"--{flag.name} is required")
    delimiter = DELIMITER.value.encode().decode("unicode_escape")  # "\t" on a command line means a tab
    info = convert(CSV.value, output_dir, image_column=IMAGE_COLUMN.value, image_pattern=IMAGE_PATTERN.value,
                   attributes=ATTRIBUTES.value, image_root=IMAGE_ROOT.value, id_column=ID_COLUMN.value, name=NAME.value,
                   min_count=MIN_COUNT.value, other_value=OTHER_VALUE.value, unlabelled=UNLABELLED_VALUES.value,
                   delimiter=delimiter, malformed=MALFORMED_ROWS.value, **kwargs)  # fmt: skip
    print(f"{info.name}: {len(info.attributes)} attributes, {info.total_values} values")
    for attr in info.attributes:
        grouped = info.extra["grouped_into_other"].get(attr.name, [])
        note = f" ({len(grouped)} rare values grouped into {OTHER_VALUE.value!r})" if grouped else ""
        print(f"  {attr.name}: {', '.join(attr.values)}{note}")
    return info


if __name__ == "__main__":
    common.run(_convert_from_flags, needs_input=False)
