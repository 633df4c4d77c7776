"""Seconds per sampled image: the cached sampler against the slow reference.

Model: a randomly initialised 2-layer ImageTransformer, d=256 (filter 1024,
4 heads), categorical output, 32x32x3 images (3,072 sub-pixel steps); batch 16.

* cached: ``t2t_image.sampling.sample`` (key/value caches, one XLA-compiled
  ``tf.while_loop``): a first call (tracing + XLA compilation + sampling) and a
  second, timed call of the same batch.
* reference: ``t2t_image.sampling.reference_sample`` (a full forward pass per
  generated sub-pixel, as T2T does), timed over its first ``--reference_steps``
  steps after one warm-up step and extrapolated to all 3,072 steps.

Usage (from the repository root)::

    python3 benchmarks/sampling.py [--attention local_1d] [--batch_size 16] [--reference_steps 6]

Prints one table row per attention type. Nothing is written.
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

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from t2t_image.models import ImageTransformer  # noqa: E402
from t2t_image.sampling import reference_sample, sample  # noqa: E402


def make_model(attention: str) -> ImageTransformer:
    model = ImageTransformer(
        image_height=32, image_width=32, hidden_size=256, filter_size=1024, num_heads=4,
        num_decoder_layers=2, dec_attention_type=attention, block_length=256,
        query_shape=(8, 16), memory_flange=(8, 16), layer_prepostprocess_dropout=0.0,
    )
    model({"targets": np.zeros((1, 32, 32, 3), np.int32)})
    return model


def measure(attention: str, batch_size: int, reference_steps: int) -> dict:
    model = make_model(attention)
    num_steps = 32 * 32 * 3
    start = time.perf_counter()
    first = sample(model, batch_size, seed=1)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    second = sample(model, batch_size, seed=1)
    cached_s = time.perf_counter() - start
    assert np.array_equal(first, second)

    times = []

    def tick(step, total):
        times.append(time.perf_counter())

    reference_sample(model, batch_size, seed=1, max_steps=reference_steps + 1, callback=tick)
    per_step = (times[-1] - times[0]) / reference_steps  # step 1 (tracing) excluded
    reference_s = per_step * num_steps
    return dict(
        attention=attention, first_s=first_s, cached_s=cached_s,
        cached_per_image=cached_s / batch_size, reference_per_step=per_step,
        reference_s=reference_s, reference_per_image=reference_s / batch_size,
        speedup=reference_s / cached_s,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--attention", nargs="+", default=["local_1d"],
                        choices=["local_1d", "local_2d", "global"])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--reference_steps", type=int, default=6)
    args = parser.parse_args()

    print(f"# {_cpu_model()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
          f"TensorFlow {tf.__version__}; 1-minute load average before: {os.getloadavg()[0]:.2f}")
    print(f"# 2-layer d=256 ImageTransformer, cat, 32x32x3 (3,072 steps), batch {args.batch_size}")
    print("| attention | cached: first call incl. compile (s) | cached: batch (s) | "
          "cached s/image | reference s/step | reference batch, extrapolated (s) | "
          "reference s/image | speedup |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for attention in args.attention:
        r = measure(attention, args.batch_size, args.reference_steps)
        print(f"| {r['attention']} | {r['first_s']:.1f} | {r['cached_s']:.1f} | "
              f"{r['cached_per_image']:.2f} | {r['reference_per_step']:.3f} | "
              f"{r['reference_s']:.0f} | {r['reference_per_image']:.1f} | "
              f"{r['speedup']:.0f}x |", flush=True)
    print(f"# 1-minute load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
