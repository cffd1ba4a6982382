"""Input throughput: images/s of the 224×224 train transform over a folder of JPEGs, and the
time per batch of in-memory digits.

Generates ``--images`` random 500×375 JPEGs (the size of Office photos) in 4 classes, then times
(a) a plain single-process Python loop (decode → resize 256 → random crop 224 → flip →
normalise) and (b) :class:`~uda_jax.data.pipeline.PairStream` with 0, 1, 2 worker processes
(each batch decodes ``batch_size`` source + ``batch_size`` target images). Worker start-up is
timed separately (first batch) and excluded from the rate. Then (c) the same stream over the
embedded digits (mnist5k → ucidigits, 32×32×1 in memory, no decode), in µs per batch.

    PYTHONPATH=. python benchmarks/input_pipeline.py [--images 512] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from uda_jax.data.domains import load_domain
from uda_jax.data.image_files import read_image_folder
from uda_jax.data.pipeline import PairStream
from uda_jax.data.transforms import decode_rgb, train_transform


def make_folder(root: Path, count: int) -> None:
    """``count`` random-ish 500×375 JPEGs (smooth noise, so they compress like photos)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((500, 375), Image.Resampling.BICUBIC)
        path = root / f"class{i % 4}" / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, quality=90)


def plain_loop(paths, transform) -> float:
    """Images/s of a single-process loop."""
    start = time.perf_counter()
    for i, path in enumerate(paths):
        transform(decode_rgb(path), np.random.default_rng(i))
    return len(paths) / (time.perf_counter() - start)


def grain_rate(domain, transform, batch_size, workers, batches) -> tuple[float, float]:
    """``(images/s, first-batch seconds)`` of the pair stream."""
    start = time.perf_counter()
    with PairStream(domain, domain, batch_size, 0, transform, num_workers=workers) as s:
        next(s)
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(batches):
            next(s)
        elapsed = time.perf_counter() - start
    return 2 * batch_size * batches / elapsed, first


def in_memory_batch_us(batch_size: int, batches: int) -> float:
    """Median over 3 runs of the µs per batch of the stream over the embedded digits."""
    source, target = load_domain("mnist5k"), load_domain("ucidigits")
    times = []
    for _ in range(3):
        with PairStream(source, target, batch_size, 0) as stream:
            next(stream)
            start = time.perf_counter()
            for _ in range(batches):
                next(stream)
            times.append((time.perf_counter() - start) / batches * 1e6)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--digits-batches", type=int, default=500)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results/input_pipeline.md"))
    args = parser.parse_args()
    transform = train_transform(256, 224)
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(Path(tmp), args.images)
        domain = read_image_folder(tmp)
        rows = [("plain Python loop", plain_loop(domain.paths, transform), float("nan"))]
        for workers in args.workers:
            rate, first = grain_rate(domain, transform, args.batch_size, workers, args.batches)
            rows.append((f"grain, num_workers={workers}", rate, first))
    digits_us = in_memory_batch_us(args.batch_size, args.digits_batches)
    table = [
        "| loader | images/s | first batch (s) |",
        "|---|---:|---:|",
        *(
            f"| {name} | {rate:.0f} | {'' if first != first else f'{first:.1f}'} |"
            for name, rate, first in rows
        ),
    ]
    header = [
        "# Input pipeline throughput",
        "",
        f"Command: `PYTHONPATH=. python {' '.join(sys.argv)}`",
        f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores "
        "(shared with other jobs), Python " + platform.python_version(),
        f"Data: {args.images} JPEGs of 500×375, transform resize 256 → random crop 224 → flip →"
        f" normalise (float32); batch {args.batch_size} source + {args.batch_size} target, "
        f"{args.batches} timed batches after the first; 2 reader threads per process.",
        "",
    ]
    digits = [
        "",
        f"In-memory digits (mnist5k → ucidigits, 32×32×1, batch {args.batch_size} + "
        f"{args.batch_size}, no decode): {digits_us:.0f} µs per batch (median of 3 runs of "
        f"{args.digits_batches} batches).",
    ]
    text = "\n".join(header + table + digits) + "\n"
    print(text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
