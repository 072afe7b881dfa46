"""The image bytes of an index's items, for the search service (`GET /images/{id}`, queries by item id).

An index file stores no pixels: a folder index records each image's path, a dataset-split index the
dataset directory and split (`serving.index`). `ItemImages` serves both without copying the catalogue:

- folder index: the file at the recorded path, read per request;
- split index: the record in the split's TFRecord shards. Index row i is the split's i-th record in
  shard order (that is how `index_split` walked it; an index built from Beam's embedding shards names
  the records it left out, which are skipped here), so at start-up one pass over the shards reads only
  each record's 12-byte length header and keeps (shard, offset, length) per row; a request then seeks and
  reads one record. Each read checks the record's id against the index (a dataset rewritten since the
  index was built is refused, not served wrong).

Every request opens its own file handle: nothing mutable is shared between concurrent requests.
"""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError

from fashionsearchnet_v2.data import integrity, records, schema


class ItemImageError(RuntimeError):
    """An item's image cannot be served (its source is missing or changed); the message says why.

    `public` says it without the server's paths, for a client (the service logs the message itself)."""

    def __init__(self, message: str, public: str | None = None):
        super().__init__(message)
        self.public = public or message


def record_offsets(path: str) -> list[tuple[int, int]]:
    """(offset of the data, its length) of every record of a TFRecord file, from the length headers."""
    try:
        return [
            (offset + integrity.HEADER_BYTES, length) for _, offset, length in integrity.record_spans(path)
        ]
    except schema.DatasetError as e:
        raise ItemImageError(str(e)) from e


def parse_record(data: bytes) -> tuple[str, bytes]:
    """(id, encoded image bytes) of one serialized record."""
    import tensorflow as tf

    example = tf.train.Example.FromString(data)
    feature = example.features.feature
    return (
        feature[records.FEATURE_ID].bytes_list.value[0].decode("utf-8"),
        feature[records.FEATURE_ENCODED].bytes_list.value[0],
    )


class ItemImages:
    """Encoded image bytes of index rows, read from where the index says they are.

    Args:
        index: a `serving.index.SearchIndex`.
        data_dir: the dataset directory of a split index, when it moved since indexing (default: the one
            the index recorded).
    Raises ItemImageError when the recorded source cannot be opened (e.g. the dataset is not on this
    machine: pass its directory), or holds another number of records than the index.
    """

    def __init__(self, index, data_dir: str | None = None, with_images: bool = True):
        """`with_images=False`: the items as bare vectors, nothing looked up (a command that shows no item
        image; a split's records are otherwise located one by one here)."""
        source = index.metadata.get("source", {})
        self.kind = source.get("kind") if with_images else None
        self.ids = index.ids
        self.paths = index.paths
        self.content = index.content  # digests of the indexed images' bytes; None in older index files
        self._records: list[tuple[str, int, int]] = []
        if self.kind == "split":
            directory = data_dir or source.get("data_dir", "")
            try:
                info = schema.load_dataset_info(directory)
                shards = info.shards_of(source["split"])  # one split, or several in their order
            except (schema.DatasetError, KeyError) as e:
                raise ItemImageError(
                    f"the index's items are the {source.get('split')!r} split of {directory}, which cannot be "
                    f"read here ({e}); pass the dataset's directory with --data_dir"
                ) from e
            # An index built from Beam's embedding shards leaves out records that did not decode; their
            # (shard, record) numbers are in its metadata, and those records are no index row.
            left_out = {(s["shard"], s["record"]) for s in index.metadata.get("skipped", []) if "record" in s}
            for k, shard in enumerate(shards):
                self._records.extend(
                    (shard, offset, length)
                    for j, (offset, length) in enumerate(record_offsets(shard))
                    if (k, j) not in left_out
                )
            if len(self._records) != len(index):
                raise ItemImageError(
                    f"{directory} split {source['split']} holds {len(self._records)} records, the index "
                    f"{len(index)} items: it is not the dataset the index was built from"
                )
            self.source = f"{directory} ({source['split']} split{'s' if ',' in source['split'] else ''})"
        elif self.kind == "folder":
            self.source = source.get("folder", "")
        else:
            self.source = ""

    @property
    def available(self) -> bool:
        """Whether items have images at all (an index of bare vectors has none)."""
        return self.kind in ("split", "folder")

    def read(self, row: int) -> bytes:
        """The encoded bytes of index row `row`; ItemImageError when they cannot be read, or when they are
        not the bytes the index embedded (its content digest, where the index has digests): a file
        replaced since indexing (or a symlink pointed elsewhere) is refused, not served as the item."""
        row = int(row)
        item = str(self.ids[row])
        if self.kind == "folder":
            path = str(self.paths[row])
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError as e:
                raise ItemImageError(
                    f"image of item {item!r} at {path}: {e.strerror or e}",
                    f"the image of item {item!r} cannot be read ({e.strerror or type(e).__name__})",
                ) from e
            self._check_digest(row, data, path)
            return data
        if self.kind == "split":
            shard, offset, length = self._records[row]
            try:
                with open(shard, "rb") as f:
                    f.seek(offset)
                    data = f.read(length)
                image_id, encoded = parse_record(data)
            except (OSError, ValueError, IndexError, DecodeError) as e:
                raise ItemImageError(
                    f"record of item {item!r} in {shard}: {e}", f"the record of item {item!r} cannot be read"
                ) from e
            if image_id != item:
                raise ItemImageError(
                    f"{shard} holds {image_id!r} where the index has {item!r}: the dataset changed "
                    "since the index was built; rebuild the index",
                    f"the dataset holds another record where the index has item {item!r}: it changed since "
                    "the index was built",
                )
            self._check_digest(row, encoded, shard)
            return encoded
        raise ItemImageError("this index holds vectors only: its items have no images")

    def _check_digest(self, row: int, data: bytes, where: str) -> None:
        if self.content is None:
            return
        from fashionsearchnet_v2.serving.index import content_digest

        if content_digest(data) != bytes(self.content[row]):
            item = str(self.ids[row])
            raise ItemImageError(
                f"image of item {item!r} at {where} is not the image the index embedded (its bytes changed "
                "since indexing): rebuild the index (experiments.index, --reuse keeps the unchanged items)",
                f"the image of item {item!r} changed since the index was built; it is not served until the "
                "index is rebuilt",
            )

    def decode(self, row: int) -> np.ndarray:
        """uint8 RGB [H, W, 3] of index row `row`."""
        from fashionsearchnet_v2.serving import index as index_lib

        return index_lib.decode_image(self.read(row), f"item {str(self.ids[row])!r}")
