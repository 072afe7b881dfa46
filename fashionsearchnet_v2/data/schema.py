"""The one dataset format: `dataset.json` beside TFRecord shards, shared by every converter and stage.

A dataset directory holds

    dataset.json                 name, attributes (ordered), splits, seed, source, shards, report
    <split>-NNNNN-of-MMMMM.tfrecord
    conversion_report.txt        one line per skipped row: reason, id, path

Each record holds the encoded image bytes exactly as found, its id, and one int64 label per attribute
(-1 = not labelled); synthetic data adds the true region of each localized attribute.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

DATASET_JSON = "dataset.json"
REPORT_TXT = "conversion_report.txt"
SPLITS = ("train", "query", "gallery")
UNLABELLED = -1


class DatasetError(ValueError):
    """A dataset directory or source file is not what was expected; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class Attribute:
    """One attribute (e.g. `color`) and its values in label order."""

    name: str
    values: tuple[str, ...]

    def __post_init__(self):
        object.__setattr__(self, "values", tuple(self.values))
        if not self.values:
            raise DatasetError(f"attribute {self.name!r} has no values")
        if len(set(self.values)) != len(self.values):
            raise DatasetError(f"attribute {self.name!r} has repeated values: {self.values}")

    @property
    def num_values(self) -> int:
        return len(self.values)


@dataclasses.dataclass
class DatasetInfo:
    """Everything `dataset.json` says about a converted dataset."""

    name: str
    attributes: list[Attribute]
    splits: dict[str, int]
    seed: int
    source: str
    shards: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    report: dict = dataclasses.field(default_factory=dict)
    has_boxes: bool = False
    localized: dict[str, str] = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)
    data_dir: str = ""

    @property
    def num_attributes(self) -> int:
        return len(self.attributes)

    @property
    def num_values(self) -> list[int]:
        return [a.num_values for a in self.attributes]

    @property
    def attribute_names(self) -> list[str]:
        return [a.name for a in self.attributes]

    @property
    def total_values(self) -> int:
        """C, the number of rows of the memory block (§3.3)."""
        return sum(self.num_values)

    def value_offsets(self) -> list[int]:
        """Start row in the memory block of each attribute's values."""
        offsets, total = [], 0
        for n in self.num_values:
            offsets.append(total)
            total += n
        return offsets

    def shard_paths(self, split: str) -> list[str]:
        if split not in self.shards:
            raise DatasetError(f"{self.data_dir}: no split {split!r}; has {sorted(self.shards)}")
        return [os.path.join(self.data_dir, f) for f in self.shards[split]]

    def attribute_index(self, name: str) -> int:
        names = self.attribute_names
        if name not in names:
            raise DatasetError(f"unknown attribute {name!r}; valid attributes: {', '.join(names)}")
        return names.index(name)

    def value_index(self, attribute: str, value: str) -> int:
        attr = self.attributes[self.attribute_index(attribute)]
        if value not in attr.values:
            raise DatasetError(
                f"unknown value {value!r} for attribute {attribute!r}; valid values: {', '.join(attr.values)}"
            )
        return attr.values.index(value)

    def to_json(self) -> dict:
        return {
            "format_version": 1,
            "name": self.name,
            "attributes": [{"name": a.name, "values": list(a.values)} for a in self.attributes],
            "splits": dict(self.splits),
            "seed": self.seed,
            "source": self.source,
            "shards": {k: list(v) for k, v in self.shards.items()},
            "report": self.report,
            "has_boxes": self.has_boxes,
            "localized": dict(self.localized),
            "extra": self.extra,
        }

    @classmethod
    def from_json(cls, obj: dict, data_dir: str = "") -> DatasetInfo:
        where = os.path.join(data_dir, DATASET_JSON) if data_dir else DATASET_JSON
        try:
            attributes = [Attribute(a["name"], tuple(a["values"])) for a in obj["attributes"]]
            return cls(
                name=obj["name"],
                attributes=attributes,
                splits={k: int(v) for k, v in obj["splits"].items()},
                seed=int(obj["seed"]),
                source=obj["source"],
                shards={k: list(v) for k, v in obj.get("shards", {}).items()},
                report=obj.get("report", {}),
                has_boxes=bool(obj.get("has_boxes", False)),
                localized=dict(obj.get("localized", {})),
                extra=obj.get("extra", {}),
                data_dir=data_dir,
            )
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{where}: malformed dataset description ({type(e).__name__}: {e})") from e


def load_dataset_info(data_dir: str) -> DatasetInfo:
    """Reads `<data_dir>/dataset.json`; a missing file says what was found and what to run."""
    path = os.path.join(data_dir, DATASET_JSON)
    if not os.path.isfile(path):
        found = sorted(os.listdir(data_dir))[:10] if os.path.isdir(data_dir) else None
        what = "does not exist" if found is None else f"holds {found or 'nothing'} but no {DATASET_JSON}"
        raise DatasetError(
            f"{data_dir} {what}. Convert a dataset first, e.g. "
            f"`python -m data_prep.<name> --input_dir=RAW --output_dir={data_dir}` "
            f"(or `python -m data_prep.synthetic --output_dir={data_dir}` for the embedded default)."
        )
    with open(path, encoding="utf-8") as f:
        try:
            obj = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: not valid JSON ({e})") from e
    return DatasetInfo.from_json(obj, data_dir=data_dir)


def validate_labels(labels: Sequence[int], attributes: Sequence[Attribute], where: str) -> list[int]:
    """Checks one label row against the attribute list; `where` names the file and line for errors."""
    if len(labels) != len(attributes):
        raise DatasetError(f"{where}: expected {len(attributes)} labels, got {len(labels)}")
    out = []
    for value, attr in zip(labels, attributes):
        value = int(value)
        if not (value == UNLABELLED or 0 <= value < attr.num_values):
            raise DatasetError(
                f"{where}: label {value} for attribute {attr.name!r} is outside -1..{attr.num_values - 1}"
            )
        out.append(value)
    return out
