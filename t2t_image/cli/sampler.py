"""t2t-image-sampler: sample images from a trained Image Transformer into a PNG grid.

    t2t-image-sampler --model_dir=D --num_samples=16 --temperature=1.0 --seed=0 \\
        --output=grid.png [--npz=samples.npz]
    ... --label=3                                   # class-conditional model
    ... --inputs=low_res.png | --inputs=low_res.npz  # super-resolution (Img2Img) model
    ... --complete=image.png --rows=16               # keep the top 16 rows, sample the rest

The model comes from ``--model_dir`` (``D/model.keras``, or the trainer's
``D/model_config.json`` with the latest TF checkpoint in ``D/checkpoints``;
``--checkpoint`` picks another ``.keras`` file or checkpoint prefix): see
``t2t_image.cli.model_loading``. Sampling uses the cached sampler
(``t2t_image.sampling.sample``) in batches of ``--batch_size``; batch ``b``
uses seed ``--seed + b``, so with ``--num_samples <= --batch_size`` the images
equal ``sample(model, num_samples, temperature, seed, ...)``.

Grid layout: the samples in order, ``--columns`` per row; with ``--complete``
or a single ``--inputs`` image, that image (upsampled for inputs) comes
first; with an ``.npz`` of several inputs, every sample follows its upsampled
input. ``--npz`` stores ``samples`` (uint8 [n, h, w, c]) and the conditioning
used (``labels``, ``inputs``, ``prefix``, ``num_prefix_rows``), plus ``seed``
and ``temperature``.
"""

import os
import sys
import time

import numpy as np
from absl import app
from absl import flags

from t2t_image.cli.lazy_flags import LazyFlags

FLAGS = flags.FLAGS
_FLAGS = LazyFlags()


def define_flags():
    """Defines the sampler's absl flags (at most once; shared names are reused).

    Flags are defined when the tool runs, not at import, so this module can be
    imported next to other CLIs that define ``--model_dir`` / ``--checkpoint``.
    """
    define = _FLAGS.define
    _FLAGS.define_model_source(
        "A .keras file or TF checkpoint prefix to use instead "
        "of the model directory's latest.")
    define("integer", "num_samples", 16, "Number of images to sample.")
    define("float", "temperature", 1.0, "Sampling temperature (0: argmax).")
    define("integer", "seed", 0, "Sampling seed (batch b uses seed + b).")
    define("integer", "label", None, "Class of every sample (class-conditional models).")
    define("string", "inputs", None, "Low-resolution input: a PNG (used for every sample) or an "
           ".npz of images [k, h, w, c] (sample i uses image i % k).")
    define("string", "complete", None, "PNG image to complete: its top --rows rows are kept.")
    define("integer", "rows", None, "Rows of --complete to keep.")
    define("string", "output", "samples.png", "PNG grid to write.")
    define("string", "npz", None, "Also write the raw uint8 samples to this .npz file.")
    define("integer", "batch_size", 16, "Images sampled together (memory grows with it).")
    define("integer", "columns", None, "Grid columns (default: about square).")
    define("boolean", "jit_compile", True, "Compile the sampling loop with XLA.")
    define("boolean", "progress", True, "Show the progress of every batch on stderr.")


def read_png(path):
    """Reads an image file as uint8 RGB `[h, w, 3]`.

    Args:
        path: str, a PNG (or any format Pillow reads).

    Returns:
        uint8 NumPy array `[h, w, 3]`.
    """
    from PIL import Image

    if not os.path.isfile(path):
        raise app.UsageError(f"no such image file: {path}")
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), np.uint8)


def read_inputs(path):
    """Low-resolution inputs `[k, h, w, c]` from a PNG or an .npz file.

    Args:
        path: str; a ``.npz`` holds an array named ``inputs``, ``x8`` or
            ``low_res`` (or a single array); anything else is read as an image.

    Returns:
        uint8 NumPy array `[k, h, w, c]` (k = 1 for an image file).
    """
    if not path.endswith(".npz"):
        return read_png(path)[None]
    if not os.path.isfile(path):
        raise app.UsageError(f"--inputs={path}: no such file.")
    with np.load(path) as data:
        keys = list(data.keys())
        key = next((k for k in ("inputs", "x8", "low_res") if k in keys),
                   keys[0] if len(keys) == 1 else None)
        if key is None:
            raise app.UsageError(f"--inputs={path}: name the array 'inputs' (found {keys}).")
        array = data[key]
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.min() < 0 or array.max() > 255:
        raise app.UsageError(f"--inputs={path}: '{key}' must be images [k, h, w, c] in 0..255, "
                             f"got shape {array.shape}.")
    return array.astype(np.uint8)


def _check_size(flag, image, height, width):
    if image.shape[-3:-1] != (height, width):
        raise app.UsageError(
            f"--{flag} images are {image.shape[-3]}x{image.shape[-2]}, the model expects "
            f"{height}x{width}."
        )


class _Progress:
    """One status line on stderr: batch, steps done, elapsed seconds."""

    def __init__(self, num_batches, enabled):
        self.num_batches, self.enabled, self.batch = num_batches, enabled, 0
        self.start = time.time()

    def __call__(self, done, total):
        if self.enabled:
            sys.stderr.write(f"\rbatch {self.batch + 1}/{self.num_batches}: step {done}/{total} "
                             f"({100 * done // total}%), {time.time() - self.start:.1f} s")
            sys.stderr.flush()

    def end(self):
        if self.enabled:
            sys.stderr.write("\n")


def run_sampler(model, num_samples, temperature, seed, label=None, inputs=None, complete=None,
                rows=None, batch_size=16, jit_compile=True, progress=True):
    """Samples like the CLI does: in batches, batch ``b`` with seed ``seed + b``.

    Parmar et al. 2018, Sec. 5 (unconditional, class-conditional and
    super-resolution samples, Table 2 completions); T2T ``t2t-decoder``.

    Args:
        model: an ``ImageTransformer`` (or subclass).
        num_samples: int.
        temperature: float >= 0.
        seed: int.
        label: int or None, the class of every sample.
        inputs: uint8 `[k, h, w, c]` or None; sample i uses ``inputs[i % k]``.
        complete: uint8 `[h, w, c]` or None, the image to complete.
        rows: int or None, rows of ``complete`` to keep.
        batch_size: int, images sampled together.
        jit_compile: bool.
        progress: bool, report progress on stderr.

    Returns:
        ``(samples, conditioning, seconds)``: uint8 `[n, h, w, c]`, the dict of
        conditioning arrays used (``labels``, ``inputs``, ``prefix``,
        ``num_prefix_rows``), and the wall time in seconds.
    """
    from t2t_image.sampling import sample
    from t2t_image.sampling.common import needs_inputs

    n = num_samples
    conditioning = {}
    if label is not None:
        conditioning["labels"] = np.full((n,), label, np.int32)
    if inputs is not None:
        if not needs_inputs(model):
            raise app.UsageError(f"--inputs was given but {type(model).__name__} has no encoder.")
        _check_size("inputs", inputs, model.input_height, model.input_width)
        conditioning["inputs"] = inputs[np.arange(n) % len(inputs)]
    if complete is not None:
        if rows is None:
            raise app.UsageError("--complete needs --rows (how many top rows to keep).")
        _check_size("complete", complete, model.image_height, model.image_width)
        conditioning["prefix"] = np.repeat(complete[None], n, axis=0)
        conditioning["num_prefix_rows"] = rows
    elif rows is not None:
        raise app.UsageError("--rows needs --complete.")
    starts = list(range(0, n, batch_size))
    report = _Progress(len(starts), progress)
    samples = []
    start_time = time.time()
    for b, start in enumerate(starts):
        report.batch = b
        part = {k: (v[start:start + batch_size] if isinstance(v, np.ndarray) else v)
                for k, v in conditioning.items()}
        count = min(batch_size, n - start)
        samples.append(sample(model, count, temperature=temperature, seed=seed + b,
                              jit_compile=jit_compile, progress=report if progress else None,
                              **part))
    report.end()
    return np.concatenate(samples), conditioning, time.time() - start_time


def _grid_tiles(model, samples, inputs, complete):
    from t2t_image.evaluation import nearest_upsample

    if complete is not None:
        return np.concatenate([complete[None], samples]), None
    if inputs is None:
        return samples, None
    factor = model.image_height // model.input_height
    if factor * model.input_height != model.image_height or \
            factor * model.input_width != model.image_width:
        return samples, None  # no integer upsampling: samples only
    shown = nearest_upsample(inputs, factor)
    if len(inputs) == 1:
        return np.concatenate([shown, samples]), None
    pairs = np.stack([shown[np.arange(len(samples)) % len(inputs)], samples], axis=1)
    return pairs.reshape((-1,) + samples.shape[1:]), 2 * int(np.ceil(np.sqrt(len(samples))))


def main(argv):
    """Loads the model, samples, writes the grid (and .npz) and prints the timing."""
    del argv
    from t2t_image.cli.model_loading import load_model
    from t2t_image.sampling import write_image_grid

    if FLAGS.num_samples <= 0:
        raise app.UsageError(f"--num_samples must be positive, got {FLAGS.num_samples}.")
    if FLAGS.batch_size <= 0:
        raise app.UsageError(f"--batch_size must be positive, got {FLAGS.batch_size}.")
    model, source = load_model(FLAGS.model_dir, FLAGS.checkpoint)
    print(f"Loaded {type(model).__name__} from {source}", file=sys.stderr)
    inputs = read_inputs(FLAGS.inputs) if FLAGS.inputs else None
    complete = read_png(FLAGS.complete) if FLAGS.complete else None
    try:
        samples, conditioning, seconds = run_sampler(
            model, FLAGS.num_samples, FLAGS.temperature, FLAGS.seed, FLAGS.label, inputs,
            complete, FLAGS.rows, FLAGS.batch_size, FLAGS.jit_compile, FLAGS.progress)
    except ValueError as e:
        raise app.UsageError(str(e)) from e
    tiles, columns = _grid_tiles(model, samples, inputs, complete)
    write_image_grid(FLAGS.output, tiles, num_columns=FLAGS.columns or columns)
    print(f"Wrote a grid of {len(samples)} samples to {FLAGS.output}")
    if FLAGS.npz:
        folder = os.path.dirname(FLAGS.npz)
        if folder:
            os.makedirs(folder, exist_ok=True)
        np.savez(FLAGS.npz, samples=samples, seed=FLAGS.seed, temperature=FLAGS.temperature,
                 **conditioning)
        print(f"Wrote the samples to {FLAGS.npz}")
    print(f"Sampled {len(samples)} images in {seconds:.1f} s: {seconds / len(samples):.3f} "
          "s/image (including compilation)")


def run():
    """Console-script entry point."""
    define_flags()
    _FLAGS.run(main, __doc__)


if __name__ == "__main__":
    run()
