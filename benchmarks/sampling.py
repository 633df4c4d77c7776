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
    python3 benchmarks/sampling.py --sliding    # sliding window at 2x the training size
    python3 benchmarks/sampling.py --paper [--paper_batches 1 16 64] [--paper_steps 96]

``--sliding``: a 2-layer d=256 local_1d model trained at 16x16 samples a 32x32 canvas
(``sample_sliding_window``): the uncached reference (extrapolated from a few chunks),
cached with the window moving every pixel (today's placement, same samples as the
reference), cached with ``--window_stride`` (a coarser placement), and ``sample`` at
16x16 for the cost per position of the plain cached sampler.

``--paper``: the paper-size models of ``gin/models/local1d_cat_12l_4h.gin``
(``imagetransformer_cifar10_base``: 12 layers, d 512) and ``gin/models/local1d_dmol.gin``
(the DMOL model), random weights: seconds per 32x32 image of the cached sampler, timed
over ``--paper_steps`` steps after a first chunk (compilation) and extrapolated to all
steps (a cached step costs the same at every position; a local_2d step also
gathers its query block's key window once per block, included pro rata or more).
``--paper_attention local_1d local_2d`` times the same models with 1D and 2D local
attention side by side.

Prints tables. Nothing is written.
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
from t2t_image.sampling import sample_sliding_window  # noqa: E402


class _Stop(Exception):
    pass


def seconds_per_step(call, chunks, measured_chunks):
    """Seconds per step of ``call(progress, chunks)``, timed over chunks 2 .. 1 + measured.

    The first chunk (tracing, compilation) is excluded; the run is stopped afterwards.
    """
    times, done = [], []

    def progress(steps_done, total):
        times.append(time.perf_counter())
        done.append(steps_done)
        if len(times) > measured_chunks:
            raise _Stop

    try:
        call(progress, chunks)
    except _Stop:
        pass
    return (times[-1] - times[0]) / (done[-1] - done[0])


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def measure_sliding(batch_size, window_stride, reference_chunks):
    model = ImageTransformer(
        image_height=16, image_width=16, hidden_size=256, filter_size=1024, num_heads=4,
        num_decoder_layers=2, dec_attention_type="local_1d", block_length=256,
        layer_prepostprocess_dropout=0.0,
    )
    model({"targets": np.zeros((1, 16, 16, 3), np.int32)})
    sample(model, batch_size, seed=1)  # compile
    _, plain = timed(lambda: sample(model, batch_size, seed=1))
    yield "sample, 16x16 (training size)", 16 * 16 * 3, plain
    for stride in ((1, 1), window_stride):
        run = lambda: sample_sliding_window(model, batch_size, 32, 32, seed=1,  # noqa: E731
                                            window_stride=stride)
        run()  # compile
        _, seconds = timed(run)
        yield f"sliding window 32x32, cached, window_stride={stride}", 32 * 32 * 3, seconds
    per_step = seconds_per_step(
        lambda progress, chunks: sample_sliding_window(
            model, batch_size, 32, 32, seed=1, cached=False, progress=progress,
            progress_chunks=chunks), 256, reference_chunks)
    yield ("sliding window 32x32, uncached reference (extrapolated)", 32 * 32 * 3,
           per_step * 32 * 32 * 3)


def paper_model(gin_file, attention=None):
    import gin

    import t2t_image.configurables as configurables

    bindings = ["t2t_image.ImageTransformer.layer_prepostprocess_dropout = 0.0"]
    if attention is not None:
        bindings.append(f"t2t_image.ImageTransformer.dec_attention_type = '{attention}'")
    gin.clear_config()
    gin.parse_config_files_and_bindings([str(REPO / "gin" / "models" / gin_file)], bindings)
    model = configurables.ImageTransformer()
    gin.clear_config()
    model({"targets": np.zeros((1, 32, 32, 3), np.int32)})
    return model


def measure_paper(gin_file, batch_sizes, steps, attention=None):
    model = paper_model(gin_file, attention)
    total = model.grid_shape[0] * model.grid_shape[1]
    chunks = max(2, total // steps)
    name = gin_file
    if model.dec_attention_type == "local_2d":
        name += (f", local_2d (query {model.query_shape[0]}x{model.query_shape[1]}, "
                 f"flange {model.memory_flange[0]}x{model.memory_flange[1]})")
    for batch_size in batch_sizes:
        per_step = seconds_per_step(
            lambda progress, chunks: sample(model, batch_size, seed=1, progress=progress,
                                            progress_chunks=chunks), chunks, 1)
        yield (name, model.num_decoder_layers, batch_size, per_step,
               per_step * total / batch_size, total)


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
    parser.add_argument("--sliding", action="store_true",
                        help="sliding-window rows (2x the training size) instead")
    parser.add_argument("--window_stride", type=int, nargs=2, default=[4, 4])
    parser.add_argument("--reference_chunks", type=int, default=2,
                        help="chunks of 12 steps timed for the uncached sliding window")
    parser.add_argument("--paper", action="store_true",
                        help="paper-size model rows instead")
    parser.add_argument("--paper_models", nargs="+",
                        default=["local1d_cat_12l_4h.gin", "local1d_dmol.gin"])
    parser.add_argument("--paper_batches", type=int, nargs="+", default=[1, 16, 64])
    parser.add_argument("--paper_steps", type=int, default=96)
    parser.add_argument("--paper_attention", nargs="+", default=["file"],
                        choices=["file", "local_1d", "local_2d"],
                        help="decoder attention of the --paper models: as in the gin file, "
                             "or bound to local_1d / local_2d (model defaults otherwise)")
    args = parser.parse_args()
    if args.sliding or args.paper:
        print(f"# {_cpu_model()}, {os.cpu_count()} logical CPUs, TensorFlow {tf.__version__}; "
              f"1-minute load average before: {os.getloadavg()[0]:.2f}")
    if args.sliding:
        print(f"# 2-layer d=256 local_1d (block 256) model trained at 16x16, batch "
              f"{args.batch_size}")
        print("| sampler | steps | batch (s) | s/image | ms per position and image |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for name, steps, seconds in measure_sliding(args.batch_size, tuple(args.window_stride),
                                                    args.reference_chunks):
            print(f"| {name} | {steps} | {seconds:.2f} | {seconds / args.batch_size:.3f} | "
                  f"{1e3 * seconds / args.batch_size / steps:.3f} |", flush=True)
    if args.paper:
        print("| model (gin/models) | layers | batch | s/step | s/image (extrapolated) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        rows = [(gin_file, None if attention == "file" else attention)
                for gin_file in args.paper_models for attention in args.paper_attention]
        for gin_file, attention in rows:
            for name, layers, batch, per_step, per_image, _ in measure_paper(
                    gin_file, args.paper_batches, args.paper_steps, attention):
                print(f"| {name} | {layers} | {batch} | {per_step:.4f} | {per_image:.2f} |",
                      flush=True)
    if args.sliding or args.paper:
        print(f"# 1-minute load average after: {os.getloadavg()[0]:.2f}")
        return

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
