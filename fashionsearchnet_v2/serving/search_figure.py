"""The picture of a search from the command line (`experiments.search --figure`): the query, its changes
and the ranked results, with their images read from where the index says they are."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

import cv2
import numpy as np

from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.data.pipeline import read_split_images
from fashionsearchnet_v2.retrieval import figures
from fashionsearchnet_v2.serving.index import IndexFileError, SearchIndex, read_image


def result_images(index: SearchIndex, rows: Sequence[int], data_dir: str | None = None) -> list[np.ndarray]:
    """uint8 RGB images of the given index rows: read from their paths (folder index) or from the
    dataset records by id (split index; `data_dir` overrides the one recorded)."""
    source = index.metadata["source"]
    if source["kind"] == "folder":
        return [read_image(str(index.paths[r])) for r in rows]
    info = schema.load_dataset_info(data_dir or source["data_dir"])
    found = {}
    for split in schema.split_list(source["split"]):  # an index of several splits: each in turn
        wanted = [str(index.ids[r]) for r in rows if str(index.ids[r]) not in found]
        if wanted:
            found.update(read_split_images(info, split, wanted))
    missing = [str(index.ids[r]) for r in rows if str(index.ids[r]) not in found]
    if missing:
        raise IndexFileError(f"{info.data_dir} split {source['split']} has no records with ids {missing[:5]}")
    return [found[str(index.ids[r])] for r in rows]


def search_figure(
    query_image: np.ndarray,
    text: str,
    results: Sequence[np.ndarray],
    matched,
    path: str,
    maps: np.ndarray | None = None,
    boxes: np.ndarray | None = None,
    names: Sequence[str] | None = None,
    size: int = 128,
) -> np.ndarray:
    """A PNG of one search: query, manipulation text and ranked results framed green where every
    requested value matches (`figures.result_grid`), and below it the query's attribute activation maps
    with their boxes (`figures.overlay_maps`) when `maps` [A, h, w] and `boxes` [A, 4] are given.
    Images of any size are squashed to `size` x `size` for the grid. Returns the canvas written."""

    def square(img):
        return cv2.resize(np.asarray(img, np.uint8), (size, size), interpolation=cv2.INTER_AREA)

    query = square(query_image)
    grid_results = np.stack([square(r) for r in results])[None] if len(results) else None
    if grid_results is None:
        grid_results = np.zeros((1, 0, size, size, 3), np.uint8)
    with tempfile.TemporaryDirectory() as tmp:
        canvas = figures.result_grid(
            query[None],
            [text],
            grid_results,
            np.asarray(matched, bool).reshape(1, -1),
            os.path.join(tmp, "g.png"),
        )
    if maps is not None and boxes is not None:
        overlays = figures.overlay_maps(query, maps, boxes, list(names or []), cols=max(1, len(maps)))
        width = max(canvas.shape[1], overlays.shape[1])
        canvas = np.concatenate([_pad_width(canvas, width), _pad_width(overlays, width)], axis=0)
    figures.write_png(path, canvas)
    return canvas


def _pad_width(image: np.ndarray, width: int) -> np.ndarray:
    pad = width - image.shape[1]
    return np.pad(image, ((0, 0), (0, pad), (0, 0)), constant_values=figures.WHITE) if pad > 0 else image
