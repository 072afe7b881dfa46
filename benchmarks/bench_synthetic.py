"""Times `write_synthetic` end to end (draw, encode, validate, split, write shards) into a temp dir.

The requirement it checks: 20,000 images at 128 px in under 60 s on the 2-core development machine.

    python benchmarks/bench_synthetic.py [--num_images=20000] [--image_size=128]

CPU time is this process's; the load average (1 min) shows how much else was running.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from fashionsearchnet_v2.data import synthetic


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_images", type=int, default=20000)
    parser.add_argument("--image_size", type=int, default=128)
    args = parser.parse_args()
    n = args.num_images
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "synthetic")
        wall, cpu = time.perf_counter(), time.process_time()
        info = synthetic.write_synthetic(
            out,
            num_images=n,
            image_size=args.image_size,
            num_query=min(500, n // 10),
            num_gallery=min(3000, n // 5),
            progress=False,
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        size = sum(os.path.getsize(p) for s in info.shards for p in info.shard_paths(s))
    print(
        f"write_synthetic: {n} images at {args.image_size} px in {wall:.1f} s wall "
        f"({n / wall:.0f} images/s; {cpu:.1f} s CPU); "
        f"{size / n / 1024:.1f} KiB/image; splits {info.splits}; {os.cpu_count()} CPUs, "
        f"load average {os.getloadavg()[0]:.1f}"
    )


if __name__ == "__main__":
    main()
