"""t2t-image-sampler: sample images from a trained Image Transformer into a PNG grid.

    t2t-image-sampler --model_dir=D --num_samples=16 --temperature=1.0 --seed=0 \\
        --output=grid.png [--npz=samples.npz]
    ... --label=3                                   # class-conditional model
    ... --inputs=low_res.png | --inputs=low_res.npz  # super-resolution (Img2Img) model
    ... --complete=image.png --rows=16               # keep the top 16 rows, sample the rest
    ... --height=64 --width=64                       # larger than the training size
                                                     # (sliding-window sampling)
    t2t-image-sampler --model_dir=PRIOR [--first_stage_dir=FIRST] --height=16 --width=16 \
        --size_units=codes --top_k=100                # two-stage model: codes -> images

The model comes from ``--model_dir`` (``D/model.keras``, or the trainer's
``D/model_config.json`` with the latest TF checkpoint in ``D/checkpoints``;
``--checkpoint`` picks another ``.keras`` file or checkpoint prefix): see
``t2t_image.training.model_loading``. Sampling uses the cached sampler
(``t2t_image.sampling.sample``) in batches of ``--batch_size``; batch ``b``
uses seed ``--seed + b``, so with ``--num_samples <= --batch_size`` the images
equal ``sample(model, num_samples, temperature, seed, ...)``.

A two-stage model (a prior over code grids, Esser et al. 2021) is recognised
by the ``first_stage.json`` its trainer writes into the prior's model_dir, or
by ``--first_stage_dir``: its code grids are decoded by the first stage, and
``--height/--width`` count codes or pixels (``--size_units``). Grids or images
larger than the training size are sampled with a sliding window
(``t2t_image.sampling.sample_sliding_window``).

Grid layout: the samples in order, ``--columns`` per row; with ``--complete``
or a single ``--inputs`` image, that image (upsampled for inputs) comes
first; with an ``.npz`` of several inputs, every sample follows its upsampled
input. ``--npz`` stores ``samples`` (uint8 [n, h, w, c]) and the conditioning
used (``labels``, ``inputs``, ``prefix``, ``num_prefix_rows``), plus ``seed``,
``temperature`` and, for two-stage models, the sampled ``codes``.

Bad flags stop the tool with a usage error naming the flag and the value (exit
status 1, no traceback): flag values and the files given are checked before
the model is loaded, and the label, image sizes and ``--rows`` against the
model right after loading it, before any sampling.
"""

import math
import os
import sys
import time
import zipfile

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
    define("integer", "top_k", None, "Sample only among the k most likely values (categorical "
           "models; default: all).")
    define("integer", "height", None, "Rows to sample (default: the training size); larger "
           "than the training size uses a sliding window.")
    define("integer", "width", None, "Columns to sample (default: the training size).")
    define("integer", "window_stride", 1, "Beyond the training size: the sliding window moves in "
           "steps of this many pixels (codes) along both axes. 1 follows every pixel; 4 is "
           "about 2.5x faster (another, equally valid window placement).")
    define("string", "size_units", "pixels", "Units of --height/--width for two-stage models: "
           "pixels or codes.")
    define("boolean", "jit_compile", True, "Compile the sampling loop with XLA.")
    define("boolean", "progress", True, "Show the progress of every batch on stderr.")


_INT64_MIN, _INT64_MAX = -2 ** 63, 2 ** 63 - 1


def read_png(path, flag="complete"):
    """Reads an image file as uint8 RGB `[h, w, 3]`.

    Args:
        path: str, a PNG (or any format Pillow reads).
        flag: str, the flag that named the file (for error messages).

    Returns:
        uint8 NumPy array `[h, w, 3]`.

    Raises:
        app.UsageError: if the file is missing or not an image.
    """
    from PIL import Image

    if not os.path.isfile(path):
        raise app.UsageError(f"--{flag}={path}: no such image file.")
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), np.uint8)
    except (OSError, ValueError, SyntaxError) as e:  # PIL's errors for unreadable files
        raise app.UsageError(f"--{flag}={path}: not a readable image ({e}).") from e


def read_inputs(path):
    """Low-resolution inputs `[k, h, w, c]` from a PNG or an .npz file.

    Args:
        path: str; a ``.npz`` holds an array named ``inputs``, ``x8`` or
            ``low_res`` (or a single array) of integer values in 0..255
            (floats must be whole numbers); anything else is read as an image.

    Returns:
        uint8 NumPy array `[k, h, w, c]` (k = 1 for an image file).

    Raises:
        app.UsageError: naming ``--inputs`` and what is wrong with the file.
    """
    if not path.endswith(".npz"):
        return read_png(path, "inputs")[None]
    if not os.path.isfile(path):
        raise app.UsageError(f"--inputs={path}: no such file.")
    try:
        with np.load(path) as data:
            keys = list(data.keys())
            key = next((k for k in ("inputs", "x8", "low_res") if k in keys),
                       keys[0] if len(keys) == 1 else None)
            if key is None:
                raise app.UsageError(f"--inputs={path}: name the array 'inputs' (found {keys}).")
            array = data[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise app.UsageError(f"--inputs={path}: not a readable .npz file ({e}).") from e
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[0] == 0:
        raise app.UsageError(f"--inputs={path}: '{key}' must be images [k, h, w, c] with k >= 1, "
                             f"got shape {array.shape}.")
    integral = np.issubdtype(array.dtype, np.integer) or (
        np.issubdtype(array.dtype, np.floating) and bool(np.all(np.isfinite(array)))
        and bool(np.all(array == np.round(array))))
    if array.dtype == bool or not integral:
        raise app.UsageError(f"--inputs={path}: '{key}' must hold whole numbers 0..255, got "
                             f"dtype {array.dtype}.")
    if array.min() < 0 or array.max() > 255:
        raise app.UsageError(f"--inputs={path}: '{key}' values must be in 0..255, got values in "
                             f"[{int(array.min())}, {int(array.max())}].")
    return array.astype(np.uint8)


def check_writable(flag, path):
    """Checks that a file can be written at ``path`` (its folder is created if missing).

    Raises:
        app.UsageError: naming the flag, the path and the reason.
    """
    import tempfile

    if os.path.isdir(path):
        raise app.UsageError(f"--{flag}={path} is a directory; give a file name.")
    folder = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".t2t_image-probe-"):
            pass
    except OSError as e:
        raise app.UsageError(f"--{flag}={path}: cannot write there ({e.strerror or e}); "
                             "nothing was sampled.") from e


def check_flags(num_samples, temperature, seed, label=None, complete=False, rows=None,
                batch_size=16, columns=None, top_k=None, height=None, width=None,
                size_units="pixels", window_stride=1):
    """Checks the sampling flags that need no model (the CLI runs this first).

    Not a T2T function (fail early, naming the flag).

    Args:
        num_samples: int > 0.
        temperature: finite number >= 0 (0: argmax).
        seed: int; ``seed + b`` must fit in int64 for every batch ``b``.
        label: None or int >= 0 (the upper bound needs the model).
        complete: bool, whether ``--complete`` was given.
        rows: None or int >= 1, only with ``complete``.
        batch_size: int > 0.
        columns: None or int > 0.
        top_k: None or int > 0 (the upper bound needs the model).
        height, width: None or ints > 0, both or neither.
        size_units: "pixels" or "codes".
        window_stride: int > 0.

    Raises:
        app.UsageError: naming the flag and the value received.
    """
    def positive(name, value):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
            raise app.UsageError(f"--{name} must be a positive integer, got {value!r}.")

    positive("num_samples", num_samples)
    positive("batch_size", batch_size)
    for name, value in (("columns", columns), ("top_k", top_k), ("height", height),
                        ("width", width), ("window_stride", window_stride)):
        if value is not None:
            positive(name, value)
    if (height is None) != (width is None):
        raise app.UsageError(f"give both --height and --width or neither, got --height={height} "
                             f"--width={width}.")
    if size_units not in ("pixels", "codes"):
        raise app.UsageError(f"--size_units must be 'pixels' or 'codes', got {size_units!r}.")
    try:
        valid = math.isfinite(float(temperature)) and float(temperature) >= 0
    except (TypeError, ValueError):
        valid = False
    if isinstance(temperature, bool) or not valid:
        raise app.UsageError(f"--temperature must be a finite number >= 0 (0: argmax), got "
                             f"{temperature!r}.")
    last_batch = (num_samples - 1) // batch_size
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not _INT64_MIN <= seed <= _INT64_MAX - last_batch:
        raise app.UsageError(f"--seed must be an integer in [{_INT64_MIN}, "
                             f"{_INT64_MAX - last_batch}] (batch b uses --seed + b), got {seed!r}.")
    if label is not None and (isinstance(label, bool) or not isinstance(label, (int, np.integer))
                              or label < 0):
        raise app.UsageError(f"--label must be a class id >= 0, got {label!r}.")
    if rows is not None and not complete:
        raise app.UsageError("--rows needs --complete.")
    if complete and rows is None:
        raise app.UsageError("--complete needs --rows (how many top rows to keep).")
    if rows is not None and (isinstance(rows, bool) or not isinstance(rows, (int, np.integer))
                             or rows < 1):
        raise app.UsageError(f"--rows must be >= 1 (top rows of --complete to keep), got "
                             f"{rows!r}.")


def _check_size(flag, images, height, width, channels):
    if images.shape[-3:] != (height, width, channels):
        raise app.UsageError(
            f"--{flag} images are {'x'.join(map(str, images.shape[-3:]))} (height x width x "
            f"channels), the model expects {height}x{width}x{channels}."
        )


def check_against_model(model, label=None, inputs=None, complete=None, rows=None, top_k=None,
                        height=None, width=None, first_stage=None):
    """Checks the conditioning flags against the loaded model, before sampling.

    Not a T2T function (fail early, naming the flag).

    Args:
        model: an ``ImageTransformer`` (or subclass).
        label: None or int, ``--label``.
        inputs: None or uint8 `[k, h, w, c]`, the images of ``--inputs``.
        complete: None or uint8 `[h, w, c]`, the image of ``--complete``.
        rows: None or int, ``--rows``.
        top_k: None or int, ``--top_k``.
        height, width: None or ints, the grid to sample (codes for a
            two-stage model).
        first_stage: None or the ``VQAutoencoder`` of a two-stage model.

    Raises:
        app.UsageError: naming the flag, the value received and what the
            model expects.
    """
    if first_stage is not None:
        from t2t_image.two_stage.sampler import check_two_stage

        try:
            check_two_stage(model, first_stage)
        except ValueError as e:
            raise app.UsageError(f"--first_stage_dir does not fit --model_dir: {e}") from e
        if inputs is not None or complete is not None:
            raise app.UsageError("--inputs and --complete are not supported for two-stage models.")
    if top_k is not None:
        vocab_size = int(getattr(model, "vocab_size", 256))
        if getattr(model, "likelihood", "cat") != "cat":
            raise app.UsageError(f"--top_k={top_k} needs a categorical model, got "
                                 f"likelihood={model.likelihood!r}.")
        if top_k > vocab_size:
            raise app.UsageError(f"--top_k={top_k} is larger than the model's vocab_size="
                                 f"{vocab_size}.")
    if height is not None:
        if height < model.image_height or width < model.image_width:
            raise app.UsageError(
                f"--height/--width ask for a {height}x{width} grid, smaller than the model's "
                f"{model.image_height}x{model.image_width} training grid.")
        if (height, width) != (model.image_height, model.image_width) and (
                inputs is not None or complete is not None):
            raise app.UsageError("--inputs and --complete sample the training size only; drop "
                                 "--height/--width.")
    from t2t_image.sampling.common import needs_inputs

    name = type(model).__name__
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None and label is not None:
        raise app.UsageError(f"--label={label} was given but {name} is unconditional "
                             "(num_classes=None).")
    if num_classes is not None:
        if label is None:
            raise app.UsageError(f"{name} is class-conditional (num_classes={num_classes}): pass "
                                 f"--label in 0..{num_classes - 1}.")
        if not 0 <= label < num_classes:
            raise app.UsageError(f"--label={label} is out of range: the model has "
                                 f"num_classes={num_classes} (labels 0..{num_classes - 1}).")
    if needs_inputs(model):
        if inputs is None:
            raise app.UsageError(
                f"{name} is conditioned on low-resolution images: pass --inputs (images "
                f"{model.input_height}x{model.input_width}x{model.num_channels}).")
        _check_size("inputs", inputs, model.input_height, model.input_width, model.num_channels)
    elif inputs is not None:
        raise app.UsageError(f"--inputs was given but {name} has no encoder.")
    if complete is not None:
        _check_size("complete", complete, model.image_height, model.image_width,
                    model.num_channels)
        vocab_size = int(getattr(model, "vocab_size", 256))
        if complete.max() >= vocab_size:
            raise app.UsageError(
                f"--complete values must be in 0..{vocab_size - 1} (the model's vocab_size="
                f"{vocab_size}), got values up to {complete.max()}.")
    if rows is not None and not 1 <= rows <= model.image_height:
        raise app.UsageError(f"--rows={rows} is out of range: the model's images have "
                             f"{model.image_height} rows (--rows in 1..{model.image_height}).")


class _Progress:
    """One status line on stderr: batch, steps done, elapsed seconds."""

    def __init__(self, num_batches, enabled):
        self.num_batches, self.enabled, self.batch = num_batches, enabled, 0
        self.start = time.time()

    def __call__(self, done, total):
        if self.enabled:
            from t2t_image.training.progress import format_duration

            elapsed = time.time() - self.start
            work = self.batch * total + done  # positions sampled so far, all batches
            left = elapsed * (self.num_batches * total - work) / max(work, 1)
            sys.stderr.write(f"\rbatch {self.batch + 1}/{self.num_batches}: step {done}/{total} "
                             f"({100 * done // total}%), {elapsed:.1f} s, ETA "
                             f"{format_duration(left)}  ")
            sys.stderr.flush()

    def end(self):
        if self.enabled:
            sys.stderr.write("\n")


def run_sampler(model, num_samples, temperature, seed, label=None, inputs=None, complete=None,
                rows=None, batch_size=16, jit_compile=True, progress=True, top_k=None,
                height=None, width=None, first_stage=None, window_stride=1):
    """Samples like the CLI does: in batches, batch ``b`` with seed ``seed + b``.

    Parmar et al. 2018, Sec. 5 (unconditional, class-conditional and
    super-resolution samples, Table 2 completions); T2T ``t2t-decoder``;
    sliding-window and two-stage sampling: Esser et al. 2021, Sec. 3.2.

    Args:
        model: an ``ImageTransformer`` (or subclass); the prior of a two-stage model.
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
        top_k: None or int, sample among the k most likely values.
        height, width: None (the training size) or the grid to sample (codes
            for a two-stage model); larger grids use a sliding window.
        first_stage: None, or the ``VQAutoencoder`` that decodes the prior's codes.
        window_stride: int, the sliding window's step (both axes) beyond the training size.

    Raises:
        app.UsageError: for bad arguments (``check_flags``,
            ``check_against_model``), before sampling.

    Returns:
        ``(samples, conditioning, seconds)``: uint8 `[n, h, w, c]` images, the
        dict of conditioning arrays used (``labels``, ``inputs``, ``prefix``,
        ``num_prefix_rows``; ``codes`` for a two-stage model), and the wall time
        in seconds.
    """
    from t2t_image.sampling import sample, sample_sliding_window
    from t2t_image.two_stage.sampler import sample_two_stage

    check_flags(num_samples, temperature, seed, label, complete is not None, rows, batch_size,
                top_k=top_k, height=height, width=width, window_stride=window_stride)
    check_against_model(model, label, inputs, complete, rows, top_k, height, width, first_stage)
    n = num_samples
    conditioning = {}
    if label is not None:
        conditioning["labels"] = np.full((n,), label, np.int32)
    if inputs is not None:
        conditioning["inputs"] = inputs[np.arange(n) % len(inputs)]
    if complete is not None:
        conditioning["prefix"] = np.repeat(complete[None], n, axis=0)
        conditioning["num_prefix_rows"] = rows
    larger = height is not None and (height, width) != (model.image_height, model.image_width)
    starts = list(range(0, n, batch_size))
    report = _Progress(len(starts), progress)
    samples, codes = [], []
    start_time = time.time()
    for b, start in enumerate(starts):
        report.batch = b
        part = {k: (v[start:start + batch_size] if isinstance(v, np.ndarray) else v)
                for k, v in conditioning.items()}
        count = min(batch_size, n - start)
        common = dict(temperature=temperature, seed=seed + b, top_k=top_k,
                      jit_compile=jit_compile)
        if first_stage is not None:
            images, grids = sample_two_stage(model, first_stage, count, height, width,
                                             labels=part.get("labels"),
                                             window_stride=(window_stride,) * 2, **common)
            samples.append(images.astype(np.uint8))
            codes.append(grids)
        elif larger:
            samples.append(sample_sliding_window(model, count, height, width,
                                                 labels=part.get("labels"),
                                                 window_stride=(window_stride,) * 2,
                                                 progress=report if progress else None, **common))
        else:
            samples.append(sample(model, count, progress=report if progress else None,
                                  **common, **part))
    report.end()
    if codes:
        conditioning["codes"] = np.concatenate(codes)
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
    """Checks the flags, loads the model, samples, writes the grid (and .npz), prints the timing."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments (flags need --name=value): {argv[1:]}")
    if FLAGS.model_dir is None and FLAGS.checkpoint is None:
        raise app.UsageError("--model_dir (or --checkpoint) is required.")
    check_flags(FLAGS.num_samples, FLAGS.temperature, FLAGS.seed, FLAGS.label,
                FLAGS.complete is not None, FLAGS.rows, FLAGS.batch_size, FLAGS.columns,
                FLAGS.top_k, FLAGS.height, FLAGS.width, FLAGS.size_units, FLAGS.window_stride)
    check_writable("output", FLAGS.output)  # before minutes of sampling, not after
    if FLAGS.npz:  # written as NAME.npz when the name lacks the suffix (see _write_outputs)
        check_writable("npz", FLAGS.npz if FLAGS.npz.endswith(".npz") else FLAGS.npz + ".npz")
    inputs = read_inputs(FLAGS.inputs) if FLAGS.inputs else None
    complete = read_png(FLAGS.complete, "complete") if FLAGS.complete else None

    # TensorFlow is imported from here on (without its start-up log lines).
    from t2t_image.cli import errors

    errors.import_tensorflow_quietly()
    from t2t_image.training import preemption

    # SIGINT/SIGTERM end the tool at once with status 130/143 and nothing written;
    # while the outputs are written they wait, so no file is left half-written.
    with preemption.StopOnSignal("sampling", "stopping; nothing is written",
                                 immediate=True) as stop:
        samples, conditioning, seconds, model = _sample(inputs, complete)
        with stop.deferred():
            _write_outputs(model, samples, conditioning, inputs, complete)
        print(f"Sampled {len(samples)} images in {seconds:.1f} s: "
              f"{seconds / len(samples):.3f} s/image (including compilation)")
        stop.raise_if_requested("Stopped after writing the outputs.")


def _sample(inputs, complete):
    """Loads the model from the flags and samples: (samples, conditioning, seconds, model)."""
    from t2t_image.training.model_loading import load_model_and_first_stage
    from t2t_image.two_stage.sampler import grid_size

    try:
        model, source, first_stage, first_stage_dir = load_model_and_first_stage(
            FLAGS.model_dir, FLAGS.checkpoint, FLAGS.first_stage_dir)
    except (FileNotFoundError, ValueError) as e:
        raise app.UsageError(str(e)) from e
    print(f"Loaded {type(model).__name__} from {source}", file=sys.stderr)
    height, width = FLAGS.height, FLAGS.width
    if first_stage is not None:
        print(f"Loaded the first stage {type(first_stage).__name__} from {first_stage_dir}",
              file=sys.stderr)
        if height is not None:
            try:
                height, width = grid_size(first_stage, height, width, FLAGS.size_units)
            except ValueError as e:
                raise app.UsageError(f"--height/--width: {e}") from e
    elif FLAGS.size_units == "codes" and height is not None:
        raise app.UsageError("--size_units=codes needs a two-stage model (a prior with a first "
                             "stage; see --first_stage_dir).")
    check_against_model(model, FLAGS.label, inputs, complete, FLAGS.rows, FLAGS.top_k, height,
                        width, first_stage)
    try:
        samples, conditioning, seconds = run_sampler(
            model, FLAGS.num_samples, FLAGS.temperature, FLAGS.seed, FLAGS.label, inputs,
            complete, FLAGS.rows, FLAGS.batch_size, FLAGS.jit_compile, FLAGS.progress,
            FLAGS.top_k, height, width, first_stage, FLAGS.window_stride)
    except ValueError as e:  # the sampler's own argument checks (should not fire)
        raise app.UsageError(str(e)) from e
    return samples, conditioning, seconds, model


def _write_outputs(model, samples, conditioning, inputs, complete):
    """The PNG grid (tiles scaled up to >= 128 px) and the raw samples (--npz), each whole."""
    from t2t_image.sampling import write_image_grid
    from t2t_image.sampling.grids import VIEWABLE_TILE

    tiles, columns = _grid_tiles(model, samples, inputs, complete)
    write_image_grid(FLAGS.output, tiles, num_columns=FLAGS.columns or columns,
                     min_tile_size=VIEWABLE_TILE)
    print(f"Wrote a grid of {len(samples)} samples to {FLAGS.output} (scaled up to >= "
          f"{VIEWABLE_TILE} px per image; raw images: --npz)")
    if FLAGS.npz:
        folder = os.path.dirname(FLAGS.npz)
        if folder:
            os.makedirs(folder, exist_ok=True)
        path = FLAGS.npz if FLAGS.npz.endswith(".npz") else FLAGS.npz + ".npz"
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            with open(tmp, "wb") as f:
                np.savez(f, samples=samples, seed=FLAGS.seed, temperature=FLAGS.temperature,
                         **conditioning)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        print(f"Wrote the samples to {path}")


def run():
    """Console-script entry point."""
    define_flags()
    _FLAGS.run(main, __doc__)


if __name__ == "__main__":
    run()
