"""The one dataset format: `dataset.json` beside TFRecord shards, shared by every converter and stage.

A dataset directory holds

    dataset.json                 format_version, name, attributes (ordered), splits, seed, source, shards,
                                 report, fingerprint (sha256 of the content), quick (a smoke-check dataset)
    <split>-NNNNN-of-MMMMM.tfrecord
    conversion_report.txt        one line per skipped row: reason, id, path

Each record holds the encoded image bytes exactly as found, its id, and one int64 label per attribute
(-1 = not labelled); synthetic data adds the true region of each localized attribute.

The fingerprint identifies the dataset's content: caches and trained stages record it, so that a dataset
converted again into the same directory is never mistaken for the one they were made from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence

from fashionsearchnet_v2.progress import Progress

DATASET_JSON = "dataset.json"
REPORT_TXT = "conversion_report.txt"
SPLITS = ("train", "query", "gallery")
UNLABELLED = -1
FORMAT_VERSION = 1  # what converters write
READABLE_VERSIONS = (1,)  # what this code reads
LEGACY_PREFIX = "legacy-"


def split_list(spec: str) -> tuple[str, ...]:
    """The splits a spec names: one split ("gallery"), several ("query,gallery", kept in that order) or
    "all" (train, query, gallery: a whole catalogue). A DatasetError names what else is expected."""
    names = list(SPLITS) if spec.strip() == "all" else [n.strip() for n in spec.split(",") if n.strip()]
    unknown = [n for n in names if n not in SPLITS]
    if not names or unknown or len(set(names)) != len(names):
        raise DatasetError(
            f"split {spec!r}: expected one of {list(SPLITS)}, several of them separated by commas (each once), "
            "or 'all'"
        )
    return tuple(names)


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
    fingerprint: str = ""  # "sha256:<hex>" of the content (see content_fingerprint); legacy- when computed
    quick: bool = False  # written by a --quick smoke check: a real run refuses it

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

    def shard_paths(self, split: str) -> list[str]:
        if split not in self.shards:
            raise DatasetError(f"{self.data_dir}: no split {split!r}; has {sorted(self.shards)}")
        return [os.path.join(self.data_dir, f) for f in self.shards[split]]

    def shards_of(self, spec: str) -> list[str]:
        """The shard paths of the splits `spec` names (`split_list`), split after split."""
        return [path for split in split_list(spec) for path in self.shard_paths(split)]

    def size_of(self, spec: str) -> int:
        """The records of the splits `spec` names."""
        return sum(self.splits.get(split, 0) for split in split_list(spec))

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
            "format_version": FORMAT_VERSION,
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
            "fingerprint": "" if self.fingerprint.startswith(LEGACY_PREFIX) else self.fingerprint,
            "quick": self.quick,
        }

    @classmethod
    def from_json(cls, obj: dict, data_dir: str = "") -> DatasetInfo:
        where = os.path.join(data_dir, DATASET_JSON) if data_dir else DATASET_JSON
        version = obj.get("format_version") if isinstance(obj, dict) else None
        if version not in READABLE_VERSIONS:
            readable = ", ".join(str(v) for v in READABLE_VERSIONS)
            raise DatasetError(
                f"{where}: format_version {version!r} is not one this code reads ({readable}); it was not "
                "written by this version's data_prep. Convert the dataset again with "
                "`python -m data_prep.<name> ... --overwrite`, or use the fashionsearchnet_v2 that wrote it."
            )
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
                fingerprint=str(obj.get("fingerprint") or ""),
                quick=bool(obj.get("quick", False)),
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
    info = DatasetInfo.from_json(obj, data_dir=data_dir)
    if not info.fingerprint:
        info.fingerprint = legacy_fingerprint(data_dir, info)
    return info


def content_fingerprint(
    directory: str, attributes: Sequence[Attribute], shards: dict[str, list[str]], progress: bool = False
) -> str:
    """ "sha256:<hex>" over the attribute vocabulary and every shard's name and bytes, split by split.

    Hashing the files (not the records) makes it checkable with standard tools and costs one read of
    what was just written (about 0.2 s per 100 MB; minutes for a catalogue of a million images, so
    `progress` reports MB/s and the ETA). The vocabulary is included because the records store labels
    as numbers: the same bytes under other value names are another dataset.
    """
    h = hashlib.sha256()
    vocabulary = [{"name": a.name, "values": list(a.values)} for a in attributes]
    h.update(json.dumps(vocabulary, sort_keys=True).encode("utf-8"))
    paths = [
        (split, name, os.path.join(directory, name)) for split in sorted(shards) for name in shards[split]
    ]
    meter = Progress(
        sum(os.path.getsize(p) for *_, p in paths) >> 20, "fingerprinting", "MB", enabled=progress
    )
    done = 0
    for split, name, path in paths:
        h.update(f"\n{split}/{name}\n".encode())
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
                done += len(block)
                meter.update(done >> 20)
    meter.finish(done >> 20)
    return "sha256:" + h.hexdigest()


def legacy_fingerprint(data_dir: str, info: DatasetInfo) -> str:
    """For a dataset converted before fingerprints existed: a hash of dataset.json and each shard's name,
    size and modification time. Cheap (no read of the shards) and it changes when the dataset is
    converted again; copying the files without their times changes it too (convert again to get a
    content fingerprint)."""
    h = hashlib.sha256()
    with open(os.path.join(data_dir, DATASET_JSON), "rb") as f:
        h.update(f.read())
    for split in sorted(info.shards):
        for name in info.shards[split]:
            try:
                st = os.stat(os.path.join(data_dir, name))
                h.update(f"{split}/{name} {st.st_size} {st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{split}/{name} missing\n".encode())
    return LEGACY_PREFIX + h.hexdigest()[:32]


def short(fingerprint: str) -> str:
    """A fingerprint shortened for messages: "sha256:1a2b3c4d5e6f"."""
    return fingerprint[: fingerprint.index(":") + 13] if ":" in fingerprint else fingerprint[:19]


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
