"""Tests of the result tables and pictures: files exist, are PNGs of the expected size, frames are coloured."""

import os

import cv2
import numpy as np
import pytest

from fashionsearchnet_v2.retrieval import figures


def read_rgb(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} is not a readable image"
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def test_markdown_table_rows_and_bold_best():
    names = ["Category", "Color"]
    rows = {
        "Rank-LG": {"Category": 0.350, "Color": 0.611, "avg": 0.4805, "all": 0.9},
        "Full": {"Category": 0.336, "Color": 0.569, "avg": 0.4525},
        "Full w/ FF": {"Category": 0.3691, "Color": None, "avg": 0.41},
    }
    text = figures.markdown_table(rows, names, k=20)
    lines = text.strip().splitlines()
    assert lines[0] == "Top-20 retrieval accuracy for each attribute."
    body = [line for line in lines if line.startswith("| ") and not line.startswith("| Approach")]
    assert [line.split(" | ")[0] for line in body] == ["| Rank-LG", "| Full", "| Full w/ FF"]
    assert lines[2] == "| Approach | Category | Color | Avg. |"
    assert body[0] == "| Rank-LG | 0.350 | **0.611** | **0.480** |"
    assert body[1] == "| Full | 0.336 | 0.569 | 0.453 |"
    assert body[2] == "| Full w/ FF | **0.369** | - | 0.410 |"


def test_markdown_table_bolds_every_tie():
    text = figures.markdown_table({"a": {"x": 0.364, "avg": 0.1}, "b": {"x": 0.3641, "avg": 0.2}}, ["x"])
    assert text.count("**0.364**") == 2


def test_plot_topk_curves_writes_png(tmp_path):
    path = tmp_path / "fig5" / "topk.png"
    curves = {"Full": {"1": 0.1, "10": 0.4, "50": 0.7}, "Rank": {1: 0.05, 10: 0.2, 50: 0.5}}
    assert figures.plot_topk_curves(curves, path, title="Shopping100k", size=(640, 480)) == str(path)
    assert read_rgb(path).shape == (480, 640, 3)
    assert [p for p in os.listdir(path.parent)] == ["topk.png"]  # no temporary file left behind


def test_result_grid_frames_and_size(tmp_path):
    n, k, h, w, frame, gap, text_width = 2, 3, 32, 24, 4, 8, 100
    rng = np.random.default_rng(0)
    queries = rng.integers(0, 256, (n, h, w, 3), dtype=np.uint8)
    results = rng.integers(0, 256, (n, k, h, w, 3), dtype=np.uint8)
    matched = np.array([[True, False, True], [False, False, True]])
    path = tmp_path / "grid.png"
    canvas = figures.result_grid(
        queries,
        ["color: red → black", "sleeve: long → short"],
        results,
        matched,
        path,
        frame=frame,
        gap=gap,
        text_width=text_width,
    )
    image = read_rgb(path)
    tile_h, tile_w = h + 2 * frame, w + 2 * frame
    rows_h = gap + n * (tile_h + gap)
    assert image.shape == (rows_h + figures.KEY_HEIGHT, gap + (k + 1) * (tile_w + gap) + text_width + gap, 3)
    np.testing.assert_array_equal(image, canvas)
    # The key below the rows: a green and a red swatch, each with its words.
    key = image[rows_h:]
    assert (key == (0, 255, 0)).all(axis=-1).any() and (key == (255, 0, 0)).all(axis=-1).any()
    assert (key.max(axis=-1) < 128).sum() > 20  # dark pixels: the words (the swatches are not dark)
    for i in range(n):
        y = gap + i * (tile_h + gap)
        np.testing.assert_array_equal(
            image[y + frame : y + frame + h, gap + frame : gap + frame + w], queries[i]
        )
        for j in range(k):
            x = gap + tile_w + gap + text_width + gap + j * (tile_w + gap)
            colour = (0, 255, 0) if matched[i, j] else (255, 0, 0)
            for py, px in [(y, x), (y + tile_h - 1, x + tile_w - 1), (y + frame - 1, x + tile_w // 2)]:
                assert tuple(image[py, px]) == colour
            inner = image[y + frame : y + frame + h, x + frame : x + frame + w]
            np.testing.assert_array_equal(inner, results[i, j])
        text = image[y : y + tile_h, gap + tile_w + gap : gap + tile_w + gap + text_width]
        assert (text < 128).any()  # the manipulation text was drawn


def test_overlay_maps_grid_and_box(tmp_path):
    h, w, gap, title = 40, 50, 6, 22
    image = np.full((h, w, 3), 100, np.uint8)
    maps = np.random.default_rng(1).random((5, 7, 7)).astype(np.float32)
    # Box on the map grid cells 0..6 (crop_and_resize convention): (y1, x1, y2, x2) = (0, 0, 0.5, 1)
    # -> image rows 0..round(0.5 * 39) = 20 (rounds to even), columns 0..49.
    boxes = np.tile(np.array([0.0, 0.0, 0.5, 1.0], np.float32), (5, 1))
    path = tmp_path / "maps.png"
    out = figures.overlay_maps(
        image, maps, boxes, ["a", "b", "c", "d", "e"], cols=3, gap=gap, title_height=title, path=path
    )
    assert out.shape == (gap + 2 * (title + h + gap), gap + 3 * (w + gap), 3)
    np.testing.assert_array_equal(read_rgb(path), out)
    panel = out[gap + title : gap + title + h, gap : gap + w]
    assert tuple(panel[20, 25]) == figures.BOX_COLOR  # bottom edge of the box
    assert tuple(panel[10, 0]) == figures.BOX_COLOR  # left edge
    assert tuple(panel[30, 25]) != figures.BOX_COLOR  # below the box: heat overlay only
    # The sixth grid cell is empty (white).
    assert (out[gap + title + h + gap :, gap + 2 * (w + gap) : -gap] == 255).all()


def test_upsample_aligned_puts_map_corners_on_image_corners():
    values = np.array([[0.0, 1.0], [2.0, 3.0]], np.float32)
    up = figures._upsample_aligned(values, 5, 3)
    np.testing.assert_allclose(up[[0, 0, -1, -1], [0, -1, 0, -1]], [0, 1, 2, 3])
    np.testing.assert_allclose(up[2, 1], 1.5)


def test_markdown_table_seed_cells_and_gain_column():
    rows = {
        "Full": {"x": [0.40, 0.42, 0.44], "avg": [0.5, 0.5]},
        "Rank": {"x": [0.30, None], "avg": None},
    }
    text = figures.markdown_table(rows, ["x"], gain={"Full": [0.1, 0.3], "Rank": -0.05})
    lines = text.strip().splitlines()
    assert lines[2] == "| Approach | x | Avg. | Gain |"
    # mean ± sample std (ddof 1): std(0.40, 0.42, 0.44) = 0.02; None seeds are left out.
    assert lines[4] == "| Full | **0.420 ± 0.020** | **0.500 ± 0.000** | **+0.200 ± 0.141** |"
    assert lines[5] == "| Rank | 0.300 | - | -0.050 |"


def test_seed_stats():
    assert figures.seed_stats([1.0, 3.0]) == (2.0, pytest.approx(2**0.5), 2)
    assert figures.seed_stats(0.5) == (0.5, 0.0, 1)
    assert figures.seed_stats([None, float("nan")]) is None


def test_plot_data_size_curve_writes_png(tmp_path):
    path = tmp_path / "size" / "curve.png"
    points = {"Full": {6679: [0.5, 0.52], 13358: [0.6], 26715: [0.65, 0.7]}, "w/o Rank": {6679: [0.3]}}
    out = figures.plot_data_size_curve(points, path, fits={"Full": (-0.5, 0.11)},
                                       reference=("paper, Full", 0.775, 182599), size=(500, 400))  # fmt: skip
    assert out == str(path) and read_rgb(path).shape == (400, 500, 3)
    assert [p for p in os.listdir(path.parent)] == ["curve.png"]


def test_plot_topk_curves_draws_the_marks(tmp_path):
    """A mark (the paper's Top-20) changes the picture; a mark for a label without a curve does not."""
    curves = {"Full": {k: 0.1 + 0.01 * k for k in range(1, 51)}}  # > 10 Ks: markers only at some Ks
    plain = read_rgb(figures.plot_topk_curves(curves, tmp_path / "a.png"))
    other = read_rgb(figures.plot_topk_curves(curves, tmp_path / "b.png", marks={"Rank": (20, 0.9)}))
    marked = read_rgb(figures.plot_topk_curves(curves, tmp_path / "c.png", marks={"Full": (20, 0.9)}))
    assert np.array_equal(plain, other)
    assert not np.array_equal(plain, marked)


def test_plot_bars_heights_follow_the_means_and_a_missing_cell_draws_nothing(tmp_path):
    """Matplotlib's first two colours (C0 blue, C1 orange): the taller row's bars cover more pixels, and
    a row whose every cell is None draws no bar at all."""

    def pixels(image, rgb):
        return int(np.all(np.abs(image.astype(int) - rgb) <= 10, axis=-1).sum())

    blue, orange = (31, 119, 180), (255, 127, 14)
    rows = {"tall": {"color": [0.8, 0.9], "avg": [0.85]}, "short": {"color": [0.1, 0.2], "avg": [0.15]}}
    image = read_rgb(figures.plot_bars(rows, tmp_path / "bars.png", size=(600, 400)))
    assert image.shape == (400, 600, 3)
    assert pixels(image, blue) > 4 * pixels(image, orange) > 0
    empty = {"tall": rows["tall"], "short": {"color": [None], "avg": [None]}}
    image = read_rgb(figures.plot_bars(empty, tmp_path / "empty.png", size=(600, 400)))
    assert pixels(image, orange) == 0 and pixels(image, blue) > 0
