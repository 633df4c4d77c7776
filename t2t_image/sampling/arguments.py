"""Checks of a sampling job's arguments, before anything is sampled.

``check_arguments`` needs no model (run it before loading one);
``check_against_model`` checks the conditioning and sizes against the loaded
model. Both raise ``SamplingArgumentError`` (a ``ValueError``) whose message
names the argument as the command-line flag of the same name
(``--label=3 is out of range ...``): ``t2t-image-sampler`` prints it as is.
"""

import math

import numpy as np

_INT64_MIN, _INT64_MAX = -2 ** 63, 2 ** 63 - 1


class SamplingArgumentError(ValueError):
    """A sampling argument (a ``t2t-image-sampler`` flag) the user can fix."""


def _is_int(value):
    return not isinstance(value, bool) and isinstance(value, (int, np.integer))


def check_arguments(num_samples, temperature, seed, label=None, complete=False, rows=None,
                    batch_size=16, columns=None, top_k=None, height=None, width=None,
                    size_units="pixels", window_stride=1):
    """Checks the sampling arguments that need no model.

    Not a T2T function (fail early, naming the flag).

    Args:
        num_samples: int > 0.
        temperature: finite number >= 0 (0: argmax).
        seed: int; ``seed + b`` must fit in int64 for every batch ``b``.
        label: None or int >= 0 (the upper bound needs the model).
        complete: bool, whether an image to complete was given.
        rows: None or int >= 1, only with ``complete``.
        batch_size: int > 0.
        columns: None or int > 0.
        top_k: None or int > 0 (the upper bound needs the model).
        height, width: None or ints > 0, both or neither.
        size_units: "pixels" or "codes".
        window_stride: int > 0.

    Raises:
        SamplingArgumentError: naming the flag and the value received.
    """
    def positive(name, value):
        if not _is_int(value) or value <= 0:
            raise SamplingArgumentError(f"--{name} must be a positive integer, got {value!r}.")

    positive("num_samples", num_samples)
    positive("batch_size", batch_size)
    for name, value in (("columns", columns), ("top_k", top_k), ("height", height),
                        ("width", width), ("window_stride", window_stride)):
        if value is not None:
            positive(name, value)
    if (height is None) != (width is None):
        raise SamplingArgumentError(f"give both --height and --width or neither, got --height="
                                    f"{height} --width={width}.")
    if size_units not in ("pixels", "codes"):
        raise SamplingArgumentError(f"--size_units must be 'pixels' or 'codes', got "
                                    f"{size_units!r}.")
    try:
        valid = math.isfinite(float(temperature)) and float(temperature) >= 0
    except (TypeError, ValueError):
        valid = False
    if isinstance(temperature, bool) or not valid:
        raise SamplingArgumentError(f"--temperature must be a finite number >= 0 (0: argmax), "
                                    f"got {temperature!r}.")
    last_batch = (num_samples - 1) // batch_size
    if not _is_int(seed) or not _INT64_MIN <= seed <= _INT64_MAX - last_batch:
        raise SamplingArgumentError(
            f"--seed must be an integer in [{_INT64_MIN}, {_INT64_MAX - last_batch}] (batch b "
            f"uses --seed + b), got {seed!r}.")
    if label is not None and (not _is_int(label) or label < 0):
        raise SamplingArgumentError(f"--label must be a class id >= 0, got {label!r}.")
    if rows is not None and not complete:
        raise SamplingArgumentError("--rows needs --complete.")
    if complete and rows is None:
        raise SamplingArgumentError("--complete needs --rows (how many top rows to keep).")
    if rows is not None and (not _is_int(rows) or rows < 1):
        raise SamplingArgumentError(f"--rows must be >= 1 (top rows of --complete to keep), "
                                    f"got {rows!r}.")


def _check_size(flag, images, height, width, channels):
    if images.shape[-3:] != (height, width, channels):
        raise SamplingArgumentError(
            f"--{flag} images are {'x'.join(map(str, images.shape[-3:]))} (height x width x "
            f"channels), the model expects {height}x{width}x{channels}.")


def _check_two_stage(model, first_stage, inputs, complete):
    from t2t_image.two_stage.sampler import check_two_stage

    try:
        check_two_stage(model, first_stage)
    except ValueError as e:
        raise SamplingArgumentError(f"--first_stage_dir does not fit --model_dir: {e}") from e
    if inputs is not None or complete is not None:
        raise SamplingArgumentError("--inputs and --complete are not supported for two-stage "
                                    "models.")


def _check_top_k(model, top_k):
    vocab_size = int(getattr(model, "vocab_size", 256))
    if getattr(model, "likelihood", "cat") != "cat":
        raise SamplingArgumentError(f"--top_k={top_k} needs a categorical model, got "
                                    f"likelihood={model.likelihood!r}.")
    if top_k > vocab_size:
        raise SamplingArgumentError(f"--top_k={top_k} is larger than the model's vocab_size="
                                    f"{vocab_size}.")


def _check_label(model, label):
    name = type(model).__name__
    num_classes = getattr(model, "num_classes", None)
    if num_classes is None and label is not None:
        raise SamplingArgumentError(f"--label={label} was given but {name} is unconditional "
                                    "(num_classes=None).")
    if num_classes is not None:
        if label is None:
            raise SamplingArgumentError(f"{name} is class-conditional (num_classes="
                                        f"{num_classes}): pass --label in 0..{num_classes - 1}.")
        if not 0 <= label < num_classes:
            raise SamplingArgumentError(
                f"--label={label} is out of range: the model has num_classes={num_classes} "
                f"(labels 0..{num_classes - 1}).")


def check_against_model(model, label=None, inputs=None, complete=None, rows=None, top_k=None,
                        height=None, width=None, first_stage=None):
    """Checks the conditioning and sizes against the loaded model, before sampling.

    Not a T2T function (fail early, naming the flag).

    Args:
        model: an ``ImageTransformer`` (or subclass).
        label: None or int, the class of every sample.
        inputs: None or uint8 `[k, h, w, c]`, low-resolution inputs.
        complete: None or uint8 `[h, w, c]`, the image to complete.
        rows: None or int, rows of ``complete`` to keep.
        top_k: None or int.
        height, width: None or ints, the grid to sample (codes for a
            two-stage model).
        first_stage: None or the ``VQAutoencoder`` of a two-stage model.

    Raises:
        SamplingArgumentError: naming the flag, the value received and what
            the model expects.
    """
    from t2t_image.sampling.common import needs_inputs

    if first_stage is not None:
        _check_two_stage(model, first_stage, inputs, complete)
    if top_k is not None:
        _check_top_k(model, top_k)
    if height is not None:
        if height < model.image_height or width < model.image_width:
            raise SamplingArgumentError(
                f"--height/--width ask for a {height}x{width} grid, smaller than the model's "
                f"{model.image_height}x{model.image_width} training grid.")
        if (height, width) != (model.image_height, model.image_width) and (
                inputs is not None or complete is not None):
            raise SamplingArgumentError("--inputs and --complete sample the training size only; "
                                        "drop --height/--width.")
    _check_label(model, label)
    name = type(model).__name__
    if needs_inputs(model):
        if inputs is None:
            raise SamplingArgumentError(
                f"{name} is conditioned on low-resolution images: pass --inputs (images "
                f"{model.input_height}x{model.input_width}x{model.num_channels}).")
        _check_size("inputs", inputs, model.input_height, model.input_width, model.num_channels)
    elif inputs is not None:
        raise SamplingArgumentError(f"--inputs was given but {name} has no encoder.")
    if complete is not None:
        _check_size("complete", complete, model.image_height, model.image_width,
                    model.num_channels)
        vocab_size = int(getattr(model, "vocab_size", 256))
        if complete.max() >= vocab_size:
            raise SamplingArgumentError(
                f"--complete values must be in 0..{vocab_size - 1} (the model's vocab_size="
                f"{vocab_size}), got values up to {complete.max()}.")
    if rows is not None and not 1 <= rows <= model.image_height:
        raise SamplingArgumentError(
            f"--rows={rows} is out of range: the model's images have {model.image_height} rows "
            f"(--rows in 1..{model.image_height}).")


def code_grid_size(first_stage, height, width, size_units):
    """The grid to sample for ``height x width`` in ``size_units`` (None, None: training size).

    Args:
        first_stage: None, or the ``VQAutoencoder`` of a two-stage model.
        height, width: None or ints.
        size_units: "pixels" or "codes" (codes only for two-stage models).

    Raises:
        SamplingArgumentError: for a size that is no whole code grid, or codes
            asked of a one-stage model.
    """
    if height is None:
        return None, None
    if first_stage is None:
        if size_units == "codes":
            raise SamplingArgumentError("--size_units=codes needs a two-stage model (a prior "
                                        "with a first stage; see --first_stage_dir).")
        return height, width
    from t2t_image.two_stage.sampler import grid_size

    try:
        return grid_size(first_stage, height, width, size_units)
    except ValueError as e:
        raise SamplingArgumentError(f"--height/--width: {e}") from e
