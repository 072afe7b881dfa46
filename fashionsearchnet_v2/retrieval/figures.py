"""Tables and pictures of the paper's results: Table 1 (markdown), Figure 5 (Top-K curves), Figure 6
(query, manipulation and Top-k results framed green/red), attribute activation maps with their boxes,
accuracy against training-set size, and grouped bars per attribute (the filter baseline).

Images are RGB uint8 arrays `[H, W, 3]`. Every file is written atomically (a temporary file in the same
directory, then os.replace) so a reader never sees half a PNG. Matplotlib is used through its Agg canvas
only, never pyplot, so importing this module changes no global backend state; it also renders the text
(Hershey fonts of cv2 cannot write "→").
"""

from __future__ import annotations

import io
import math
import os
import tempfile
import textwrap
from collections.abc import Mapping, Sequence

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

GREEN = (0, 255, 0)  # RGB: every target attribute matches
RED = (255, 0, 0)  # RGB: at least one target attribute differs
WHITE = 255
BOX_COLOR = (255, 255, 255)


def write_atomic(path: str | os.PathLike, data: bytes) -> str:
    """Write bytes to `path` through a temporary file in the same directory and os.replace."""
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


def write_png(path: str | os.PathLike, image: np.ndarray) -> str:
    """Write an RGB uint8 image [H, W, 3] as PNG, atomically; returns the path."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"PNG encoding failed for an image of shape {image.shape}")
    return write_atomic(path, buf.tobytes())


Cell = float | None | Sequence[float | None]  # one value, or one per seed


def seed_stats(value: Cell) -> tuple[float, float, int] | None:
    """(mean, sample std, n) of a cell's finite values (std 0 for one value); None when it has none."""
    values = value if isinstance(value, (list, tuple, np.ndarray)) else [value]
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return None
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return float(np.mean(finite)), std, len(finite)


def _format(value: Cell, signed: bool = False) -> tuple[str, float | None]:
    """The printed cell and the rounded mean it is compared by: "0.449", "+0.312" or "0.449 ± 0.012"."""
    stats = seed_stats(value)
    if stats is None:
        return "-", None
    mean, std, n = stats
    text = f"{mean:+.3f}" if signed else f"{mean:.3f}"
    if n > 1:
        text += f" ± {std:.3f}"
    return text, round(mean, 3)


def markdown_table(
    rows: Mapping[str, Mapping[str, Cell]],
    attribute_names: Sequence[str],
    k: int = 20,
    title: str | None = None,
    gain: Mapping[str, Cell] | None = None,
    signed: bool = False,
) -> str:
    """A Table-1-style markdown table: one row per variant, one column per attribute plus Avg.

    Args:
        rows: variant -> {attribute name: accuracy, "avg": accuracy}, e.g. `results["topk"]["20"]` of
            `search.evaluate` per variant. A cell may hold one value per seed: it prints as
            "mean ± std" (sample std). Missing or None values print as "-".
        attribute_names: the column order.
        k: the K of the Top-K accuracy, for the default title.
        title: the caption line; default "Top-{k} retrieval accuracy for each attribute."
        gain: variant -> average manipulation gain (or one per seed), printed as a last "Gain" column.
        signed: print the attribute columns with a sign (tables of gains).
    Returns:
        markdown text; the best (mean) value of each column is bold (every variant that ties with it after
        rounding to the printed 3 decimals, as the paper bolds both 0.364 of Fastening).
    """
    columns = list(attribute_names) + ["avg"]
    header = ["Approach"] + list(attribute_names) + ["Avg."] + (["Gain"] if gain is not None else [])
    cells = {}
    for variant, values in rows.items():
        cells[variant] = [_format(values.get(c), signed) for c in columns]
        if gain is not None:
            cells[variant].append(_format(gain.get(variant), signed=True))
    best = []
    for j in range(len(header) - 1):
        printed = [cells[v][j][1] for v in cells if cells[v][j][1] is not None]
        best.append(max(printed) if printed else None)
    lines = [title if title is not None else f"Top-{k} retrieval accuracy for each attribute.", ""]
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" + "---:|" * (len(header) - 1))
    for variant, texts in cells.items():
        shown = [f"**{t}**" if m is not None and m == best[j] else t for j, (t, m) in enumerate(texts)]
        lines.append("| " + " | ".join([variant] + shown) + " |")
    return "\n".join(lines) + "\n"


def results_tables(
    per_variant: Mapping[str, Sequence[Mapping]],
    attribute_names: Sequence[str],
    k: int = 20,
    where: str = "",
) -> str:
    """Table 1 with its "Gain" column, then the manipulation gain of every attribute, in markdown.

    Args:
        per_variant: row label -> the results dicts of `search.evaluate` (with "gain"), one per seed; cells
            print as mean ± std over seeds when there are several.
        attribute_names: the column order.
        k: the K reported.
        where: appended to the captions (dataset, search count, seeds).
    """

    names = list(attribute_names) + ["avg"]

    def cells(block) -> dict:  # label -> {column: one value per seed}
        tables = {label: [block(r)["topk"][str(k)] for r in runs] for label, runs in per_variant.items()}
        return {label: {n: [t.get(n) for t in ts] for n in names} for label, ts in tables.items()}

    accuracy = cells(lambda r: r)
    has_gain = all("gain" in r for runs in per_variant.values() for r in runs)
    gain = cells(lambda r: r["gain"]) if has_gain else None
    text = markdown_table(
        accuracy, attribute_names, k, title=f"Top-{k} retrieval accuracy{where}.",
        gain={label: g["avg"] for label, g in gain.items()} if gain else None,
    )  # fmt: skip
    if gain:
        text += "\n" + markdown_table(
            gain, attribute_names, k, signed=True,
            title=f"Manipulation gain at Top-{k}: the same searches minus their score with the query "
            f"not manipulated{where}.",
        )  # fmt: skip
    return text


_DPI = 100


def _axes(size: tuple[int, int]):
    """(figure, axes) of `size` (w, h) px on an Agg canvas of its own (no pyplot state)."""
    fig = Figure(figsize=(size[0] / _DPI, size[1] / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save_png(fig, path: str | os.PathLike) -> str:
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return write_atomic(path, buf.getvalue())


def plot_topk_curves(
    curves: Mapping[str, Mapping[int | str, float]],
    path: str | os.PathLike,
    title: str = "Top-K retrieval accuracy",
    size: tuple[int, int] = (640, 480),
    baselines: Mapping[str, Mapping[int | str, float]] | None = None,
    ylabel: str = "Top-K retrieval accuracy",
    marks: Mapping[str, tuple[int, float]] | None = None,
    marks_label: str = "paper",
) -> str:
    """Figure 5: Top-K accuracy against K, one line per variant, written as a PNG of `size` (w, h) px.

    Args:
        curves: label -> {K: accuracy}; K may be int or str (as in the JSON results).
        baselines: label -> {K: accuracy} of the same searches with the query not manipulated, drawn
            dashed in the colour of the label's curve (the gap between the two is the manipulation gain).
        marks: label -> (K, accuracy), e.g. the paper's Table 1 cell, drawn as a star in the colour of the
            label's curve; `marks_label` names them in the legend.
    Returns:
        the path.
    """
    fig, ax = _axes(size)
    for label, curve in curves.items():
        points = sorted((int(k), v) for k, v in curve.items() if v is not None)
        ks = [p[0] for p in points]
        # Every K is drawn; markers only at the Ks the paper's Figure 5 ticks, so 50 points stay legible.
        ticks = [i for i, k in enumerate(ks) if k in (1, 10, 20, 30, 40, 50)] if len(ks) > 10 else None
        (line,) = ax.plot(ks, [p[1] for p in points], marker="o", markevery=ticks, markersize=4, label=label)
        if baselines and label in baselines:
            base = sorted((int(k), v) for k, v in baselines[label].items() if v is not None)
            ax.plot([p[0] for p in base], [p[1] for p in base], linestyle="--", linewidth=1,
                    color=line.get_color(), label=f"{label}, not manipulated")  # fmt: skip
        if marks and label in marks:
            k, value = marks[label]
            ax.plot([k], [value], marker="*", markersize=12, linestyle="none", color=line.get_color(),
                    markeredgecolor="black", label=f"{label}, {marks_label}")  # fmt: skip
    ax.set_xlabel("K")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(bottom=min(0.0, ax.get_ylim()[0]))
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="lower right", fontsize="small")
    return _save_png(fig, path)


def plot_data_size_curve(
    points: Mapping[str, Mapping[int, Sequence[float]]],
    path: str | os.PathLike,
    fits: Mapping[str, tuple[float, float]] | None = None,
    reference: tuple[str, float, int | None] | None = None,
    title: str = "Top-20 against training-set size",
    ylabel: str = "Top-20 retrieval accuracy",
    size: tuple[int, int] = (640, 480),
) -> str:
    """Accuracy against the number of training images (log axis), one line per row of Table 1.

    Args:
        points: label -> {training images: [value per seed]}; a point is drawn at the seeds' mean with
            their range as an error bar.
        fits: label -> (a, b) of y = a + b·ln(n), drawn dashed from the smallest size to the largest of
            the data and of `reference`'s size (an extrapolation beyond the data: say so beside the figure).
        reference: (label, value, training images or None), e.g. the paper's number: a dotted horizontal
            line, and a star at its training-set size when given.
    Returns:
        the path.
    """
    fig, ax = _axes(size)
    sizes = sorted({int(n) for curve in points.values() for n in curve})
    right = max([*sizes, reference[2] if reference and reference[2] else 0] or [1])
    for label, curve in points.items():
        ns = sorted(int(n) for n in curve if len(curve[n]))
        means = np.array([np.mean(curve[n]) for n in ns])
        lo = means - np.array([np.min(curve[n]) for n in ns])
        hi = np.array([np.max(curve[n]) for n in ns]) - means
        line = ax.errorbar(ns, means, yerr=[lo, hi], marker="o", capsize=3, label=label)
        if fits and label in fits and sizes:
            a, b = fits[label]
            xs = np.geomspace(min(sizes), right, 50)
            ax.plot(xs, a + b * np.log(xs), linestyle="--", linewidth=1, color=line[0].get_color(),
                    label=f"{label}: a + b·ln(n) fit")  # fmt: skip
    if reference is not None:
        name, value, n = reference
        ax.axhline(value, linestyle=":", color="black", linewidth=1, label=name)
        if n:
            ax.plot([n], [value], marker="*", markersize=12, color="black", linestyle="none")
    ax.set_xscale("log")
    ax.set_xlabel("training images")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if points:
        ax.legend(loc="lower right", fontsize="small")
    return _save_png(fig, path)


def plot_bars(
    rows: Mapping[str, Mapping[str, Sequence[float | None]]],
    path: str | os.PathLike,
    title: str = "Top-20 retrieval accuracy",
    ylabel: str = "Top-20 retrieval accuracy",
    size: tuple[int, int] = (800, 520),
) -> str:
    """Grouped bars: one group per column (attribute), one bar per row, written as a PNG of `size` px.

    Args:
        rows: row label -> {column: one value per seed}; the columns are the first row's, in its order. A
            bar is the seeds' mean; with several seeds a black line spans their minimum to maximum. A
            column without a finite value draws no bar.
    Returns:
        the path.
    """
    fig, ax = _axes(size)
    columns = list(next(iter(rows.values()))) if rows else []
    width = 0.8 / max(1, len(rows))
    for i, (label, row) in enumerate(rows.items()):
        xs, means, lo, hi = [], [], [], []
        for j, column in enumerate(columns):
            values = [float(v) for v in row.get(column) or [] if v is not None and math.isfinite(float(v))]
            if not values:
                continue
            xs.append(j - 0.4 + (i + 0.5) * width)
            means.append(float(np.mean(values)))
            lo.append(means[-1] - min(values))
            hi.append(max(values) - means[-1])
        spread = [lo, hi] if any(len(row.get(c) or []) > 1 for c in columns) else None
        ax.bar(xs, means, width=width * 0.95, yerr=spread, capsize=2, ecolor="black", label=label)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, fontsize="small")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0.0, 1.0)
    ax.grid(True, axis="y", alpha=0.3)
    if rows:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.08), fontsize="small", frameon=False)
    return _save_png(fig, path)


def _text_image(text: str, width: int, height: int, fontsize: float = 10.0) -> np.ndarray:
    """`text` rendered black on white, wrapped to `width`, as an RGB uint8 image [height, width, 3]."""
    dpi = 100
    fig = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, facecolor="white")
    canvas = FigureCanvasAgg(fig)
    chars_per_line = max(4, int(width / (0.62 * fontsize * dpi / 72)))
    wrapped = "\n".join(textwrap.wrap(text, chars_per_line)) if text else ""
    fig.text(0.5, 0.5, wrapped, ha="center", va="center", fontsize=fontsize, wrap=False)
    canvas.draw()
    rgb = np.asarray(canvas.buffer_rgba())[..., :3]
    out = np.full((height, width, 3), WHITE, np.uint8)  # the canvas can be a pixel off after rounding
    h, w = min(height, rgb.shape[0]), min(width, rgb.shape[1])
    out[:h, :w] = rgb[:h, :w]
    return out


def result_grid(
    query_images,
    manipulation_texts: Sequence[str],
    result_images,
    matched,
    path: str | os.PathLike,
    frame: int = 4,
    gap: int = 8,
    text_width: int | None = None,
) -> np.ndarray:
    """Figure 6: per row the query, the manipulation as text (e.g. "color: red → black") and the Top-k
    results, each framed green where every target attribute matches and red otherwise.

    Layout (pixels): rows of height H + 2*frame separated and surrounded by `gap`; a row is
    [query (white frame) | text (text_width) | k results (coloured frame)]; below them a key of the frames'
    colours, KEY_HEIGHT high. The canvas is
    (gap + n*(H + 2*frame + gap) + KEY_HEIGHT) x (gap + (k + 1)*(W + 2*frame + gap) + text_width + gap).

    Args:
        query_images: [n, H, W, 3] uint8 RGB.
        manipulation_texts: n strings.
        result_images: [n, k, H, W, 3] uint8 RGB, nearest first.
        matched: [n, k] bool.
        path: the PNG to write (atomically).
        text_width: width of the text column; default max(2*W, 160).
    Returns:
        the canvas, [height, width, 3] uint8 RGB, as written.
    """
    query_images = np.asarray(query_images)
    result_images = np.asarray(result_images)
    matched = np.asarray(matched, bool)
    if query_images.ndim != 4 or query_images.shape[-1] != 3 or query_images.dtype != np.uint8:
        raise ValueError(
            f"query_images must be uint8 [n, H, W, 3], got {query_images.dtype} {query_images.shape}"
        )
    n, h, w, _ = query_images.shape
    if result_images.dtype != np.uint8 or result_images.ndim != 5 or result_images.shape[0] != n:
        raise ValueError(f"result_images must be uint8 [n, k, H, W, 3], got {result_images.shape}")
    k = result_images.shape[1]
    if result_images.shape[2:] != (h, w, 3) or matched.shape != (n, k) or len(manipulation_texts) != n:
        raise ValueError(
            f"shapes disagree: queries {query_images.shape}, results {result_images.shape}, "
            f"matched {matched.shape}, {len(manipulation_texts)} texts"
        )
    text_width = max(2 * w, 160) if text_width is None else text_width
    tile_h, tile_w = h + 2 * frame, w + 2 * frame
    height = gap + n * (tile_h + gap) + KEY_HEIGHT
    width = gap + (k + 1) * (tile_w + gap) + text_width + gap
    canvas = np.full((height, width, 3), WHITE, np.uint8)
    canvas[height - KEY_HEIGHT :] = _key(width)
    for i in range(n):
        y = gap + i * (tile_h + gap)
        x = gap
        canvas[y + frame : y + frame + h, x + frame : x + frame + w] = query_images[i]
        x += tile_w + gap
        canvas[y : y + tile_h, x : x + text_width] = _text_image(manipulation_texts[i], text_width, tile_h)
        x += text_width + gap
        for j in range(k):
            canvas[y : y + tile_h, x : x + tile_w] = GREEN if matched[i, j] else RED
            canvas[y + frame : y + frame + h, x + frame : x + frame + w] = result_images[i, j]
            x += tile_w + gap
    write_png(path, canvas)
    return canvas


KEY_HEIGHT = 22


def _key(width: int) -> np.ndarray:
    """The result grid's key, [KEY_HEIGHT, width, 3]: a green and a red swatch with what each frame means."""
    key = np.full((KEY_HEIGHT, width, 3), WHITE, np.uint8)
    half = width // 2
    for x0, colour, text in ((0, GREEN, "has every target attribute"), (half, RED, "misses one or more")):
        key[5:17, x0 + 8 : x0 + 20] = colour
        words = min(half - 24, 8 * len(text) + 8)  # about the words' width: they sit beside the swatch
        key[:, x0 + 24 : x0 + 24 + words] = _text_image(text, words, KEY_HEIGHT, 9.0)
    return key


def _upsample_aligned(values: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize [h, w] -> [height, width] with corners aligned: map cell r sits at image row
    r*(height-1)/(h-1), the grid convention of tf.image.crop_and_resize boxes."""
    h, w = values.shape
    xs = np.linspace(0, w - 1, width, dtype=np.float32)
    ys = np.linspace(0, h - 1, height, dtype=np.float32)
    map_x, map_y = np.meshgrid(xs, ys)
    return cv2.remap(
        values.astype(np.float32), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
    )


def overlay_maps(
    image,
    maps,
    boxes,
    names: Sequence[str],
    cols: int = 4,
    alpha: float = 0.5,
    gap: int = 6,
    title_height: int = 22,
    path: str | os.PathLike | None = None,
) -> np.ndarray:
    """Attribute activation maps as heat overlays on the image, each with its box, in a grid of panels.

    Args:
        image: [H, W, 3] uint8 RGB.
        maps: [A, h, w] float, one activation map per attribute (each min-max scaled on its own).
        boxes: [A, 4] (y1, x1, y2, x2) normalised on the map grid as in tf.image.crop_and_resize: map
            cell r is at r/(h-1), so a coordinate c is image pixel c*(H-1).
        names: A panel titles.
        cols: panels per grid row.
        path: if given, the grid is also written there as PNG.
    Returns:
        [rows*(title_height + H + gap) + gap, cols'*(W + gap) + gap, 3] uint8 RGB, cols' = min(cols, A).
    """
    image = np.asarray(image)
    maps = np.asarray(maps, np.float32)
    boxes = np.asarray(boxes, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {image.dtype} {image.shape}")
    if maps.ndim != 3 or boxes.shape != (len(maps), 4) or len(names) != len(maps):
        raise ValueError(f"maps {maps.shape}, boxes {boxes.shape} and {len(names)} names disagree")
    big_h, big_w = image.shape[:2]
    a = len(maps)
    ncols = max(1, min(cols, a))
    nrows = max(1, math.ceil(a / ncols))
    panel_h = title_height + big_h
    canvas = np.full((gap + nrows * (panel_h + gap), gap + ncols * (big_w + gap), 3), WHITE, np.uint8)
    for i in range(a):
        heat = _upsample_aligned(maps[i], big_h, big_w)
        lo, hi = float(heat.min()), float(heat.max())
        heat = (heat - lo) / (hi - lo) if hi > lo else np.zeros_like(heat)
        colored = cv2.cvtColor(
            cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB
        )
        panel = cv2.addWeighted(image, 1.0 - alpha, colored, alpha, 0.0)
        y1, x1, y2, x2 = np.clip(boxes[i], 0.0, 1.0)
        p1 = (round(float(x1) * (big_w - 1)), round(float(y1) * (big_h - 1)))
        p2 = (round(float(x2) * (big_w - 1)), round(float(y2) * (big_h - 1)))
        cv2.rectangle(panel, p1, p2, BOX_COLOR, 2)
        y = gap + (i // ncols) * (panel_h + gap)
        x = gap + (i % ncols) * (big_w + gap)
        canvas[y : y + title_height, x : x + big_w] = _text_image(str(names[i]), big_w, title_height, 9.0)
        canvas[y + title_height : y + panel_h, x : x + big_w] = panel
    if path is not None:
        write_png(path, canvas)
    return canvas
