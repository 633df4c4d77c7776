"""Throughput of the training input pipelines (examples/second), on the shared offline data.

Measures ``t2t_image.data.make_dataset(..., training=True)`` (shuffled, repeated,
batched, prefetched) for:

* CIFAR-10 from ``cifar10/cifar10_train_exact.npz``: unconditional,
  class-conditional, and 8 -> 32 super-resolution pairs (area resize);
* CelebA super-resolution pairs: ``image_folder`` on the 1,000 JPEGs of
  ``celeba/img_align_celeba_89x109`` (decode, T2T face crop, two area resizes),
  and ``npz`` on ``celeba/celeba_train9000_32x32_8x8.npz`` (inputs area-resized
  from ``x32``, and with the precomputed ``x8``).

Usage (from the repository root)::

    python3 benchmarks/data_pipeline.py [--data_dir ../shared/data] [--seconds 4] [--batch_size 64]

Each row: build the pipeline, pull ``--warmup`` batches, then pull batches for
``--seconds`` and report examples/second. Nothing is written.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench_util import cpu_model as _cpu_model  # noqa: E402

import tensorflow as tf  # noqa: E402
from absl import logging  # noqa: E402

from t2t_image.data import ImageFolderSource, NpzSource, make_dataset  # noqa: E402


def _measure(ds, batch_size: int, warmup: int, seconds: float) -> tuple[float, int]:
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    n = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        batch = next(it)
        n += int(batch["targets"].shape[0])
    return n / (time.perf_counter() - start), n


def main(argv=None):
    """Runs the benchmark and prints a Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data_dir", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--batch_size", type=int, default=64)
    args = parser.parse_args(argv)
    logging.set_verbosity(logging.WARNING)
    data = pathlib.Path(args.data_dir)
    cifar = data / "cifar10" / "cifar10_train_exact.npz"
    celeba_jpegs = data / "celeba" / "img_align_celeba_89x109"
    celeba_pairs = data / "celeba" / "celeba_train9000_32x32_8x8.npz"
    for p in (cifar, celeba_jpegs, celeba_pairs):
        if not p.exists():
            raise SystemExit(f"missing {p}; pass --data_dir (the shared data folder)")

    cifar_src = NpzSource(cifar)
    rows = [
        ("CIFAR-10 unconditional", "npz", lambda: make_dataset(
            cifar_src, "train", args.batch_size, training=True, seed=0)),
        ("CIFAR-10 class-conditional", "npz", lambda: make_dataset(
            cifar_src, "train", args.batch_size, task="class_conditional", training=True, seed=0)),
        ("CIFAR-10 super-resolution 8->32", "npz", lambda: make_dataset(
            cifar_src, "train", args.batch_size, task="super_resolution", training=True, seed=0)),
        ("CelebA super-resolution 8->32", "image_folder (JPEG, crop, 2 area resizes)", lambda: make_dataset(
            ImageFolderSource(celeba_jpegs, crop_box="celeba"), "train", args.batch_size,
            task="super_resolution", training=True, seed=0)),
        ("CelebA super-resolution 8->32", "npz (x32, inputs area-resized)", lambda: make_dataset(
            NpzSource(celeba_pairs, image_key="x32"), "train", args.batch_size,
            task="super_resolution", training=True, seed=0)),
        ("CelebA super-resolution 8->32", "npz (x32, precomputed x8)", lambda: make_dataset(
            NpzSource(celeba_pairs, image_key="x32", inputs_key="x8"), "train", args.batch_size,
            task="super_resolution", training=True, seed=0)),
    ]
    print(f"machine: {_cpu_model()}, {os.cpu_count()} logical CPUs; python {platform.python_version()}, "
          f"tensorflow {tf.__version__}; batch_size {args.batch_size}, {args.seconds:g} s per row")
    print()
    print("| pipeline | source | examples/s | examples timed |")
    print("| --- | --- | ---: | ---: |")
    for name, source, build in rows:
        rate, n = _measure(build(), args.batch_size, args.warmup, args.seconds)
        print(f"| {name} | {source} | {rate:,.0f} | {n:,} |", flush=True)


if __name__ == "__main__":
    main()
