"""Batch embedding on Apache Beam against `experiments.index`, on the same images, in one run (issue 18).

Rows, each the command a user runs, in a fresh process, on one folder of `--count` generated garment
images (JPEG q95, drawn at `--image_size` px, each image once):

* index:   `python -m experiments.index --images=FOLDER` (one process: today's way)
* beam x1: `python -m experiments.embed_beam --images=FOLDER --direct_num_workers=1` (DirectRunner,
           one worker process)
* beam x2: the same with `--direct_num_workers=2` (two worker processes, each loads the model once)

A command's wall time includes its start-up (imports, loading the export, Beam's worker processes),
which a catalogue of millions does not notice; its rate once started is what it does see:
`experiments.index`'s own progress meter (from its first image read to its last embedded) and, for the
pipeline, Beam's metrics (from the first image embedded to the last, over every worker, the first batch
left out), both printed by the commands. Rows are interleaved, so they share the machine's load; with
`--repeats`, medians. The last column is 10 million images at the rate once started.

The export has random weights (speed does not depend on them, WORKSPACE.md decision 54) and the shapes of
the embedded default's network (128 px) or the paper's with DARN's attributes (227 px), as
`bench_extract.py` builds them.

    pip install -e ".[beam]"
    python benchmarks/bench_embed_beam.py                                # 128 px, 3,000 images
    python benchmarks/bench_embed_beam.py --image_size=227 --count=1000
    python benchmarks/bench_embed_beam.py --count=200                    # smoke run
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

import fashionsearchnet_v2  # noqa: F401  (oneDNN on before TensorFlow loads)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROWS = ("index", "beam x1", "beam x2")
CATALOGUE = 10_000_000


def write_images(folder: str, n: int, size: int, offset: int = 0) -> None:
    """n garments of the embedded dataset's kind as JPEG files (q95, as the converters store them)."""
    import cv2

    from fashionsearchnet_v2.data import synthetic

    os.makedirs(folder, exist_ok=True)
    for i in range(offset, offset + n):
        rgb = synthetic.render(synthetic.params_for(11, i), size)[0]
        cv2.imwrite(os.path.join(folder, f"{i:07d}.jpg"), rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])


def command(row: str, export_dir: str, folder: str, out: str, batch: int) -> list[str]:
    if row == "index":
        return [sys.executable, "-m", "experiments.index", f"--export_dir={export_dir}", f"--images={folder}",
                f"--index={out}.npz", f"--embed_batch={batch}", "--overwrite"]  # fmt: skip
    workers = row.split("x")[1]
    return [sys.executable, "-m", "experiments.embed_beam", f"--export_dir={export_dir}", f"--images={folder}",
            f"--output={out}", f"--embed_batch={batch}", f"--direct_num_workers={workers}", "--overwrite"]  # fmt: skip


def timed(argv: list[str], log: str) -> tuple[float, float]:
    """(wall seconds, images/s once started, as the command printed it)."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    start = time.perf_counter()
    with open(log, "w") as f:
        done = subprocess.run(argv, cwd=REPO, env=env, stdout=f, stderr=subprocess.STDOUT)
    seconds = time.perf_counter() - start
    with open(log) as f:
        text = f.read()
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}); its output: {log}")
    # experiments.index's progress meter ends "... N/N images (R/s, ETA 0s)"; embed_beam prints
    # "from the first image embedded to the last: S s, R images/s".
    found = re.findall(r"\((\d+)/s, ETA|to the last: [\d.]+ s, ([\d.]+) images/s", text)
    if not found:
        raise SystemExit(f"{' '.join(argv)} printed no rate; its output: {log}")
    return seconds, float(found[-1][0] or found[-1][1])


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--image_size", type=int, default=128, choices=(128, 227))
    parser.add_argument("--count", type=int, default=3000, help="images in the catalogue")
    parser.add_argument("--batch", type=int, default=32, help="images per embed call (both commands)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--keep", help="keep the folders, export and outputs here (default: a temporary one)")
    args = parser.parse_args()
    import tensorflow as tf
    from bench_extract import random_export

    print(
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or tmp
        export_dir, _ = random_export(args.image_size, root)
        folder = os.path.join(root, "catalogue")
        start = time.perf_counter()
        write_images(folder, args.count, args.image_size)
        print(f"{args.count:,} images of {args.image_size} px written in {time.perf_counter() - start:.0f} s",
              flush=True)  # fmt: skip
        wall, rate = {row: [] for row in ROWS}, {row: [] for row in ROWS}
        for r in range(args.repeats):
            for row in ROWS:
                out = os.path.join(root, "out", row.replace(" ", ""))
                os.makedirs(os.path.dirname(out), exist_ok=True)
                seconds, started = timed(command(row, export_dir, folder, out, args.batch), out + ".log")
                wall[row].append(seconds)
                rate[row].append(started)
                print(f"[{r + 1}/{args.repeats}] {row}: {args.count:,} images in {seconds:.1f} s, "
                      f"{started:.1f} images/s once started (load average {os.getloadavg()[0]:.1f})", flush=True)  # fmt: skip
    print(f"\nload average at the end {os.getloadavg()[0]:.1f}\n")
    print(f"| command ({args.image_size} px, {args.count:,} images) | wall, start-up included | images/s with "
          f"start-up | images/s once started | vs index | {CATALOGUE / 1e6:.0f} million images |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    base = statistics.median(rate["index"])
    for row in ROWS:
        w, r = statistics.median(wall[row]), statistics.median(rate[row])
        print(f"| {row} | {w:.1f} s | {args.count / w:.1f} | {r:.1f} | {r / base:.2f}x | "
              f"{CATALOGUE / r / 3600:.1f} h |")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
