"""Seconds per sampled image: a two-stage model (VQ first stage + code prior) against a pixel model.

Three rows, all with random (untrained) weights, a fixed batch and the same
transformer size (default: 2 layers, d=256, filter 1024, 4 heads, categorical
output):

* (a) two-stage, cached: ``t2t_image.two_stage.sample_two_stage`` at the
  prior's training grid. The first stage is the architecture of
  ``gin/models/vqgan_f4.gin`` (base 64 channels, multipliers (1, 2, 2), 2
  residual blocks, code_dim 64) with K=1024 codes; f=4, so a 64x64 image is a
  16x16 code grid. The code prior is an ImageTransformer with
  ``num_channels=1``, ``vocab_size=1024`` on the 16x16 grid (256 steps),
  local 2D attention with query (8, 8) and flange (8, 8) (``--prior_attention
  local_1d``: block length 128 instead), sampled with the cached sampler
  (``t2t_image.sampling.sample``); then the codes are decoded.
* (b) two-stage, sliding window: the same model sampling a 2x larger image
  (128x128 pixels, 32x32 codes = 1,024 steps) with
  ``sample_sliding_window`` (one full forward pass of the 16x16 window per
  code, no cache), then decoded. For information: a different cost model.
* (c) pixel model, cached: an ImageTransformer on 64x64x3 sub-pixels
  (12,288 steps), local 1D attention with block length 256, cached sampler.

Each row runs its sampler twice on the same batch and seed: the first call
includes tracing and XLA compilation; the second call is the steady-state
time. "compile" is their difference. For the two-stage rows the decoder's
share of the steady-state call is timed separately (``images_from_codes`` on
the sampled codes, after one warm-up call). The last column divides each
row's seconds per image by that of (c).

Usage (from the repository root)::

    python3 benchmarks/two_stage.py [--quick] [--batch_size 4] [--prior_attention local_2d]
                                    [--no_sliding]

``--quick``: 32x32 images (8x8 codes, sliding window on 16x16 codes), d=128,
filter 512, batch 2; under a minute. Prints a Markdown table on stdout and
progress on stderr. Nothing is written.
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
from t2t_image.models.vq_autoencoder import VQAutoencoder  # noqa: E402
from t2t_image.sampling import sample  # noqa: E402
from t2t_image.two_stage.sampler import sample_two_stage  # noqa: E402

_START = time.perf_counter()


def log(message: str) -> None:
    """Progress line on stderr, with the seconds since the script started."""
    print(f"[two_stage {time.perf_counter() - _START:6.1f}s] {message}", file=sys.stderr,
          flush=True)


def make_first_stage(image_size: int, codebook_size: int) -> VQAutoencoder:
    """The VQGAN f=4 first stage of gin/models/vqgan_f4.gin, built on ``image_size`` images."""
    model = VQAutoencoder(
        image_height=image_size, image_width=image_size, num_channels=3, base_channels=64,
        channel_multipliers=(1, 2, 2), num_res_blocks=2, codebook_size=codebook_size,
        code_dim=64, commitment_cost=0.25, codebook_update="ema", ema_decay=0.99,
        dead_code_threshold=0.01,
    )
    model({"targets": np.zeros((1, image_size, image_size, 3), np.uint8)})
    return model


def make_transformer(size: int, channels: int, vocab_size: int, attention: str, args,
                     block_length: int = 256) -> ImageTransformer:
    """A randomly initialised categorical ImageTransformer on a ``size x size x channels`` grid."""
    model = ImageTransformer(
        image_height=size, image_width=size, num_channels=channels, vocab_size=vocab_size,
        hidden_size=args.hidden_size, filter_size=args.filter_size, num_heads=args.num_heads,
        num_decoder_layers=args.num_layers, dec_attention_type=attention,
        block_length=block_length, query_shape=(8, 8), memory_flange=(8, 8),
        likelihood="cat", layer_prepostprocess_dropout=0.0,
    )
    model({"targets": np.zeros((1, size, size, channels), np.int32)})
    return model


def time_twice(name: str, fn, expected: str = ""):
    """Runs ``fn`` twice; returns (first-call seconds, second-call seconds, second result)."""
    log(f"{name}: first call (tracing + XLA compilation + sampling){expected}")
    start = time.perf_counter()
    first = fn()
    first_s = time.perf_counter() - start
    log(f"{name}: first call took {first_s:.1f} s; second (timed) call")
    start = time.perf_counter()
    second = fn()
    second_s = time.perf_counter() - start
    log(f"{name}: second call took {second_s:.1f} s")
    return first_s, second_s, first, second


def time_decode(first_stage: VQAutoencoder, codes: np.ndarray) -> float:
    """Seconds of one ``images_from_codes`` call on ``codes`` (after one warm-up call)."""
    np.asarray(first_stage.images_from_codes(codes))
    start = time.perf_counter()
    np.asarray(first_stage.images_from_codes(codes))
    return time.perf_counter() - start


def run(args) -> list[dict]:
    """Measures the rows (a), (b) and (c); returns one dict per row."""
    n = args.batch_size
    image = args.image_size
    f = 4
    grid = image // f
    rows = []

    log(f"building the first stage (vqgan_f4, K={args.codebook_size}) and the code prior "
        f"({grid}x{grid} codes, {args.prior_attention})")
    first_stage = make_first_stage(image, args.codebook_size)
    prior_block = min(256, grid * grid // 2) if args.prior_attention == "local_1d" else 256
    prior = make_transformer(grid, 1, args.codebook_size, args.prior_attention, args,
                             block_length=prior_block)

    # (a) two-stage at the training grid: cached sampler + decoder.
    first_s, second_s, (img1, codes1), (img2, codes2) = time_twice(
        "(a) two-stage cached",
        lambda: sample_two_stage(prior, first_stage, n, seed=1))
    assert np.array_equal(codes1, codes2) and img2.shape == (n, image, image, 3)
    decode_s = time_decode(first_stage, codes2)
    rows.append(dict(
        case="(a) two-stage, cached prior + decode", image=f"{image}x{image}",
        steps=f"{grid * grid:,} codes ({grid}x{grid})", first_s=first_s, seconds=second_s,
        decode_s=decode_s))

    # (b) two-stage, 2x larger canvas by sliding window.
    if not args.no_sliding:
        big = 2 * grid
        steps = big * big
        first_s, second_s, (img1, codes1), (img2, codes2) = time_twice(
            "(b) two-stage sliding window",
            lambda: sample_two_stage(prior, first_stage, args.sliding_batch_size, height=big,
                                     width=big, seed=1),
            f"; {steps} full {grid}x{grid} forward passes per call")
        assert np.array_equal(codes1, codes2) and img2.shape[1:3] == (big * f, big * f)
        decode_s = time_decode(first_stage, codes2)
        rows.append(dict(
            case="(b) two-stage, sliding-window prior + decode", image=f"{big * f}x{big * f}",
            steps=f"{steps:,} codes ({big}x{big})", first_s=first_s, seconds=second_s,
            decode_s=decode_s, batch=args.sliding_batch_size))

    # (c) pixel-level ImageTransformer, cached sampler.
    log(f"building the pixel model ({image}x{image}x3, local_1d block 256)")
    pixel = make_transformer(image, 3, 256, "local_1d", args)
    steps = image * image * 3
    first_s, second_s, first, second = time_twice(
        "(c) pixel model cached", lambda: sample(pixel, n, seed=1),
        f"; {steps} steps per call")
    assert np.array_equal(first, second)
    rows.append(dict(
        case="(c) pixel model, cached (local_1d, block 256)", image=f"{image}x{image}",
        steps=f"{steps:,} sub-pixels", first_s=first_s, seconds=second_s, decode_s=None))
    return rows


def main(argv=None) -> None:
    """Parses the arguments, runs the rows and prints the Markdown table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="32x32 images, d=128, filter 512, batch 2 (under a minute)")
    parser.add_argument("--batch_size", type=int, default=None, help="default 4 (quick: 2)")
    parser.add_argument("--sliding_batch_size", type=int, default=None,
                        help="batch of row (b); default: --batch_size")
    parser.add_argument("--image_size", type=int, default=None, help="default 64 (quick: 32)")
    parser.add_argument("--hidden_size", type=int, default=None, help="default 256 (quick: 128)")
    parser.add_argument("--filter_size", type=int, default=None,
                        help="default 1024 (quick: 512)")
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--num_layers", type=int, default=2)
    parser.add_argument("--codebook_size", type=int, default=1024)
    parser.add_argument("--prior_attention", default="local_2d", choices=["local_1d", "local_2d"])
    parser.add_argument("--no_sliding", action="store_true", help="skip row (b)")
    args = parser.parse_args(argv)
    quick = args.quick
    for name, full, small in (("batch_size", 4, 2), ("image_size", 64, 32),
                              ("hidden_size", 256, 128), ("filter_size", 1024, 512)):
        if getattr(args, name) is None:
            setattr(args, name, small if quick else full)
    if args.sliding_batch_size is None:
        args.sliding_batch_size = args.batch_size
    for name in ("batch_size", "sliding_batch_size", "image_size", "hidden_size",
                 "filter_size", "num_heads", "num_layers", "codebook_size"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(args, name)}.")
    if args.image_size % 32:
        raise ValueError(f"--image_size must be a multiple of 32 (f=4 codes in 8x8 query "
                         f"blocks), got {args.image_size}.")

    prior_attn = ("local_2d, query (8, 8), flange (8, 8)" if args.prior_attention == "local_2d"
                  else "local_1d")
    print(f"# {_cpu_model()}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}, "
          f"TensorFlow {tf.__version__}; 1-minute load average before: {os.getloadavg()[0]:.2f}")
    print(f"# transformers: {args.num_layers} layers, d={args.hidden_size}, filter "
          f"{args.filter_size}, {args.num_heads} heads, cat, random weights; prior {prior_attn}, "
          f"K={args.codebook_size}; first stage vqgan_f4 (f=4); batch {args.batch_size} "
          f"(row (b): {args.sliding_batch_size})")
    rows = run(args)
    pixel_per_image = rows[-1]["seconds"] / args.batch_size
    print("| model | image | steps | batch | first call incl. compile (s) | compile (s) | "
          "batch, steady (s) | of which decode (s) | s/image | s/image vs (c) |")
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        batch = r.get("batch", args.batch_size)
        per_image = r["seconds"] / batch
        decode = "" if r["decode_s"] is None else f"{r['decode_s']:.2f}"
        print(f"| {r['case']} | {r['image']} | {r['steps']} | {batch} | {r['first_s']:.1f} | "
              f"{r['first_s'] - r['seconds']:.1f} | {r['seconds']:.2f} | {decode} | "
              f"{per_image:.3f} | {per_image / pixel_per_image:.3f}x |")
    ratio = (rows[0]["seconds"] / args.batch_size) / pixel_per_image
    print(f"# speed ratio (a)/(c), s/image: {ratio:.4f} (the two-stage model samples a "
          f"{args.image_size}x{args.image_size} image {1 / ratio:.0f}x faster)")
    print(f"# 1-minute load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
