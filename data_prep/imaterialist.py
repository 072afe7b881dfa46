"""iMaterialist-Fashion 2018 -> dataset directory: 8 attributes, 147 values (categories grouped to 24).

    python -m data_prep.imaterialist --input_dir=IMAT --output_dir=data/imaterialist

Input, as distributed plus the images fetched from their urls, named by id:

    train.json, validation.json           at least one; {"images": [...], "annotations":
                                          [{"imageId": "1", "labelId": ["62", ...]}, ...]}
    iMat_fashion_2018_label_map_228.csv   labelId,taskId,labelName,taskName
    train/<imageId>.jpg, validation/<imageId>.jpg

The two files number their images from 1 each, so the ids overlap: images of `<split>.json` are looked
up in `<split>/`, and records are named `<split>/<imageId>`. With a single annotation file and no
`<split>/` folder, `images/` or input_dir itself is used instead.

Tasks kept, in the paper's order (Table 1c): 1 category, 2 color, 3 gender, 4 material, 5 neckline,
6 pattern, 8 sleeve, 9 style (task 7 is dropped). The 105 category labels are grouped into 24 by
`imaterialist_category_groups.csv` (labelName -> group), giving 24+21+3+34+11+28+5+21 = 147 values.
Several labels in one task: when they fall in one value (after grouping) it is kept, otherwise the
attribute is unlabelled (-1) for that image, since either value would be an arbitrary guess and the
paper drops noisy labels. Train and validation are pooled and re-split by the paper's protocol; the
paper's 250,000-image subset is not published, so every annotated image is converted.
"""

from __future__ import annotations

import collections
import csv
import json
import os

from data_prep import _parsing, common
from fashionsearchnet_v2.data import convert as engine
from fashionsearchnet_v2.data.schema import UNLABELLED, Attribute, DatasetError, DatasetInfo

NAME = "imaterialist"
LABEL_MAP = "iMat_fashion_2018_label_map_228.csv"
LABEL_MAP_HEADER = ["labelId", "taskId", "labelName", "taskName"]
GROUPS_CSV = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imaterialist_category_groups.csv")
# taskId -> attribute name, in the order of the paper's table.
TASKS = {
    1: "category",
    2: "color",
    3: "gender",
    4: "material",
    5: "neckline",
    6: "pattern",
    8: "sleeve",
    9: "style",
}
DROPPED_TASKS = (7,)
CATEGORY_TASK = 1
SPLITS = ("train", "validation")


def parse_label_map(path: str) -> dict[str, tuple[int, str]]:
    """The label map -> {labelId: (taskId, labelName)}. Uses the csv module: one name
    ("Hosiery, Stockings, Tights") is quoted because it holds commas."""
    out = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header != LABEL_MAP_HEADER:
            raise DatasetError(f"{path}:1: expected the header {','.join(LABEL_MAP_HEADER)}; got {header}")
        for row in reader:
            if not row:
                continue
            line = reader.line_num
            expected = "labelId,taskId,labelName,taskName with integer ids and taskId 1..9"
            if (
                len(row) != 4
                or not (row[0].isascii() and row[0].isdigit())
                or row[1] not in {str(t) for t in range(1, 10)}
            ):
                raise _parsing.malformed(path, line, expected, ",".join(row))
            if row[0] in out:
                raise DatasetError(f"{path}:{line}: labelId {row[0]} is listed twice")
            out[row[0]] = (int(row[1]), row[2])
    return out


def load_category_groups(path: str = GROUPS_CSV) -> dict[str, str]:
    """imaterialist_category_groups.csv -> {category labelName: group}, groups in first-seen order."""
    out = {}
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        if next(reader, None) != ["labelName", "group"]:
            raise DatasetError(f"{path}:1: expected the header labelName,group")
        for row in reader:
            if not row:
                continue
            if len(row) != 2 or not row[0] or not row[1]:
                raise _parsing.malformed(path, reader.line_num, "labelName,group", ",".join(row))
            if row[0] in out:
                raise DatasetError(f"{path}:{reader.line_num}: {row[0]!r} is grouped twice")
            out[row[0]] = row[1]
    return out


def build_attributes(
    label_map: dict[str, tuple[int, str]], groups: dict[str, str], groups_path: str = GROUPS_CSV
) -> tuple[list[Attribute], dict[str, tuple[int, int]]]:
    """-> (attributes, {labelId: (attribute index, value index)}). Labels of dropped tasks are absent
    from the lookup; every category label must have a group and every grouped name must exist."""
    names = {name for task, name in label_map.values() if task == CATEGORY_TASK}
    if names - set(groups):
        raise DatasetError(f"{groups_path}: no group for category labels {sorted(names - set(groups))}")
    if set(groups) - names:
        raise DatasetError(
            f"{groups_path}: {sorted(set(groups) - names)} are not category labels of the label map"
        )
    group_order = list(dict.fromkeys(groups.values()))
    attrs, lookup = [], {}
    for a, (task, attr_name) in enumerate(TASKS.items()):
        ids = sorted((int(i) for i, (t, _) in label_map.items() if t == task))
        if not ids:
            raise DatasetError(f"the label map has no labels of task {task} ({attr_name})")
        if task == CATEGORY_TASK:
            values = group_order
            for i in ids:
                lookup[str(i)] = (a, group_order.index(groups[label_map[str(i)][1]]))
        else:
            values = [label_map[str(i)][1] for i in ids]
            for v, i in enumerate(ids):
                lookup[str(i)] = (a, v)
        attrs.append(Attribute(attr_name, values))
    return attrs, lookup


def labels_for(label_ids, lookup: dict[str, tuple[int, int]]) -> tuple[list[int], list[int]]:
    """An image's labelIds -> (one label per attribute, indices of attributes left unlabelled because
    their labels disagree). Unknown labelIds must be rejected by the caller first."""
    seen = [set() for _ in TASKS]
    for label_id in label_ids:
        if label_id in lookup:  # absent: a dropped task
            a, v = lookup[label_id]
            seen[a].add(v)
    labels, ambiguous = [], []
    for a, values in enumerate(seen):
        if len(values) == 1:
            labels.append(next(iter(values)))
        else:
            labels.append(UNLABELLED)
            if values:
                ambiguous.append(a)
    return labels, ambiguous


def load_annotations(path: str, label_map: dict) -> tuple[list[tuple[str, list[str]]], int]:
    """<split>.json -> ([(imageId, labelIds)], number of entries in "images"). Errors name the file
    and the annotation's position."""
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except json.JSONDecodeError as e:
        raise DatasetError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg})") from e
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path}: not a UTF-8 JSON file ({e})") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("annotations"), list):
        raise DatasetError(f'{path}: expected an object with an "annotations" list')
    num_images = len(obj.get("images") or [])
    out = []
    for i, ann in enumerate(obj["annotations"]):
        where = f"{path}: annotations[{i}]"
        if not isinstance(ann, dict) or not isinstance(ann.get("labelId"), list) or "imageId" not in ann:
            raise DatasetError(
                f'{where}: expected {{"imageId": "...", "labelId": [...]}}; got {str(ann)[:120]}'
            )
        image_id = str(ann["imageId"])
        label_ids = [str(x) for x in ann["labelId"]]
        unknown = [x for x in label_ids if x not in label_map]
        if unknown:
            raise DatasetError(f"{where} (imageId {image_id!r}): labelIds {unknown} are not in {LABEL_MAP}")
        out.append((image_id, label_ids))
    del obj  # the parsed json of the 1M-image train.json is large; keep only the compact rows
    return out, num_images


def image_dir(input_dir: str, split: str, single: bool) -> str:
    """Where `<split>.json`'s images are: `<split>/`, else (one annotation file only) `images/` or
    input_dir. With both files a shared folder would confuse the overlapping ids, so it is not used."""
    own = os.path.join(input_dir, split)
    if os.path.isdir(own) or not single:
        return own
    shared = os.path.join(input_dir, "images")
    return shared if os.path.isdir(shared) else input_dir


def convert(
    input_dir: str,
    output_dir: str,
    **protocol,
) -> DatasetInfo:
    map_path = _parsing.find_file(input_dir, (LABEL_MAP,), "iMaterialist label map")
    label_map = parse_label_map(map_path)
    attrs, lookup = build_attributes(label_map, load_category_groups())
    present = [s for s in SPLITS if os.path.isfile(os.path.join(input_dir, f"{s}.json"))]
    if not present:
        raise DatasetError(f"{input_dir}: neither train.json nor validation.json")

    examples, skipped, ambiguous, rows_read, listed = [], [], collections.Counter(), 0, {}
    for split in present:
        path = os.path.join(input_dir, f"{split}.json")
        rows, listed[split] = load_annotations(path, label_map)
        folder = image_dir(input_dir, split, single=len(present) == 1)
        seen = set()
        for i, (image_id, label_ids) in enumerate(rows):
            rows_read += 1
            record_id = f"{split}/{image_id}"
            if image_id in seen:
                skipped.append(("duplicate", record_id, f"{path}: annotations[{i}]"))
                continue
            seen.add(image_id)
            labels, amb = labels_for(label_ids, lookup)
            ambiguous.update(attrs[a].name for a in amb)
            examples.append(
                engine.Example(
                    record_id,
                    labels,
                    path=os.path.join(folder, f"{image_id}.jpg"),
                    where=f"{path}: annotations[{i}]",
                )
            )
        del rows
    extra = {
        "pooled_splits": present,
        "images_listed": listed,
        "category_groups_file": os.path.basename(GROUPS_CSV),
        "category_groups": load_category_groups(),
        "dropped_tasks": list(DROPPED_TASKS),
        "multi_label_rule": "several labels of one task mapping to different values -> -1",
        "unlabelled_by_disagreement": dict(sorted(ambiguous.items())),
    }
    return _parsing.write_labelled(examples, attrs, output_dir=output_dir, name=NAME,
                                   source=os.path.abspath(input_dir), rows_read=rows_read, skipped=skipped,
                                   extra=extra, **protocol)  # fmt: skip


if __name__ == "__main__":
    common.run(convert)
