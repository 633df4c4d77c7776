"""A sampling job: what ``t2t-image-sampler`` does, callable from Python.

    from t2t_image.sampling import job
    from t2t_image.storage.model_loading import load_model

    model, _ = load_model("runs/cifar10")
    samples, conditioning, seconds = job.run_sampler(model, num_samples=16, seed=0)
    job.write_grid("grid.png", model, samples)

``run_sampler`` checks its arguments against the model, then samples in
batches of ``batch_size``: batch ``b`` uses seed ``seed + b``, so with
``num_samples <= batch_size`` the images equal
``t2t_image.sampling.sample(model, num_samples, temperature, seed, ...)``.
Canvases larger than the training size use a sliding window
(``sample_sliding_window``); two-stage models (a prior over code grids and
its first stage) decode the sampled codes into images.

Grid layout (``write_grid``): the samples in order, row by row; with an image
to complete (``complete``) or a single low-resolution input, that image
(inputs upscaled to the output size) comes first; with several inputs, every
sample follows its upscaled input (pairs). Tiles are scaled up to at least
128 pixels; the line ``write_grid`` returns states the layout.
"""

import contextlib
import time

import numpy as np

from t2t_image.sampling.arguments import SamplingArgumentError
from t2t_image.sampling.arguments import check_against_model
from t2t_image.sampling.arguments import check_arguments
from t2t_image.sampling.grids import VIEWABLE_TILE
from t2t_image.sampling.grids import upscale_factor


# The most samples the PNG grid shows (1024 tiles of 128 px: 50 MB); more go to --npz only.
MAX_GRID_SAMPLES = 1024


def conditioning_arrays(num_samples, label=None, inputs=None, complete=None, rows=None, start=0):
    """The conditioning of samples ``start .. start + num_samples - 1``.

    Args:
        num_samples: int.
        label: None or int, the class of every sample.
        inputs: None or `[k, h, w, c]`; sample ``i`` uses ``inputs[i % k]``.
        complete: None or `[h, w, c]`, the image every sample completes.
        rows: None or int, rows of ``complete`` kept.
        start: int, the index of the first sample (a batch's offset).

    Returns:
        dict of NumPy arrays `[num_samples, ...]` (``num_prefix_rows``: int).
    """
    conditioning = {}
    if label is not None:
        conditioning["labels"] = np.full((num_samples,), label, np.int32)
    if inputs is not None:
        conditioning["inputs"] = inputs[(start + np.arange(num_samples)) % len(inputs)]
    if complete is not None:
        conditioning["prefix"] = np.repeat(complete[None], num_samples, axis=0)
        conditioning["num_prefix_rows"] = rows
    return conditioning


def sample_batches(model, num_samples, temperature, seed, batch_size=16, jit_compile=True,
                   progress=None, top_k=None, height=None, width=None, first_stage=None,
                   window_stride=1, label=None, inputs=None, complete=None, rows=None):
    """Samples batch by batch (batch ``b`` with seed ``seed + b``); arguments unchecked.

    The conditioning of each batch is built for that batch only, so memory does
    not grow with ``num_samples``.

    Args:
        model, num_samples, temperature, seed, batch_size, jit_compile, top_k,
            height, width, first_stage, window_stride, label, inputs, complete,
            rows: as in ``run_sampler``.
        progress: None or a ``SamplingProgress``.

    Yields:
        ``(images, codes)`` per batch: uint8 `[count, h, w, c]` and, for a
        two-stage model, int32 codes `[count, rows, cols]` (else None).
    """
    from t2t_image.sampling.sampler import sample
    from t2t_image.sampling.sliding_window import sample_sliding_window
    from t2t_image.two_stage.sampler import sample_two_stage

    larger = height is not None and (height, width) != (model.image_height, model.image_width)
    for b, start in enumerate(range(0, num_samples, batch_size)):
        if progress is not None:
            progress.start_batch(b)
        count = min(batch_size, num_samples - start)
        part = conditioning_arrays(count, label, inputs, complete, rows, start)
        common = dict(temperature=temperature, seed=seed + b, top_k=top_k,
                      jit_compile=jit_compile)
        if first_stage is not None:
            images, codes = sample_two_stage(model, first_stage, count, height, width,
                                             labels=part.get("labels"),
                                             window_stride=(window_stride,) * 2, **common)
            yield images.astype(np.uint8), codes
        elif larger:
            yield sample_sliding_window(model, count, height, width, labels=part.get("labels"),
                                        window_stride=(window_stride,) * 2, progress=progress,
                                        **common), None
        else:
            yield sample(model, count, progress=progress, **common, **part), None


def stream_sampler(model, num_samples, temperature=1.0, seed=0, label=None, inputs=None,
                   complete=None, rows=None, batch_size=16, jit_compile=True, progress=True,
                   top_k=None, height=None, width=None, first_stage=None, window_stride=1):
    """``run_sampler``'s batches as they are drawn: checked first, then ``(images, codes)``.

    Arguments as ``run_sampler``; nothing is kept, so any ``num_samples`` fits in
    memory (``t2t-image-sampler`` writes each batch to its ``--npz`` at once).

    Raises:
        SamplingArgumentError: for bad arguments, before sampling (at the first
            ``next``).
    """
    from t2t_image.sampling.progress import SamplingProgress

    check_arguments(num_samples, temperature, seed, label, complete is not None, rows, batch_size,
                    top_k=top_k, height=height, width=width, window_stride=window_stride)
    check_against_model(model, label, inputs, complete, rows, top_k, height, width, first_stage)
    if progress is True:
        progress = SamplingProgress(-(-num_samples // batch_size))
    report = progress or None
    yield from sample_batches(model, num_samples, temperature, seed, batch_size, jit_compile,
                              report, top_k, height, width, first_stage, window_stride, label,
                              inputs, complete, rows)
    if report is not None:
        report.end()


def run_sampler(model, num_samples, temperature=1.0, seed=0, label=None, inputs=None,
                complete=None, rows=None, batch_size=16, jit_compile=True, progress=True,
                top_k=None, height=None, width=None, first_stage=None, window_stride=1):
    """Samples like ``t2t-image-sampler`` does: checked, in batches, with progress.

    Parmar et al. 2018, Sec. 5 (unconditional, class-conditional and
    super-resolution samples, Table 2 completions); T2T ``t2t-decoder``;
    sliding-window and two-stage sampling: Esser et al. 2021, Sec. 3.2.

    Args:
        model: an ``ImageTransformer`` (or subclass); the prior of a two-stage model.
        num_samples: int.
        temperature: float >= 0 (0: argmax).
        seed: int; batch ``b`` uses ``seed + b``.
        label: int or None, the class of every sample.
        inputs: uint8 `[k, h, w, c]` or None; sample i uses ``inputs[i % k]``.
        complete: uint8 `[h, w, c]` or None, the image to complete.
        rows: int or None, rows of ``complete`` to keep.
        batch_size: int, images sampled together.
        jit_compile: bool.
        progress: bool (a line on stderr), or a ``SamplingProgress``.
        top_k: None or int, sample among the k most likely values.
        height, width: None (the training size) or the grid to sample (codes
            for a two-stage model); larger grids use a sliding window.
        first_stage: None, or the ``VQAutoencoder`` that decodes the prior's codes.
        window_stride: int, the sliding window's step (both axes) beyond the training size.

    Raises:
        SamplingArgumentError: for bad arguments, before sampling.

    Returns:
        ``(samples, conditioning, seconds)``: uint8 `[n, h, w, c]` images, the
        dict of conditioning arrays used (``labels``, ``inputs``, ``prefix``,
        ``num_prefix_rows``; ``codes`` for a two-stage model), and the wall time
        in seconds. (Every sample is kept in memory: for very many, use
        ``stream_sampler``.)
    """
    start_time = time.time()
    samples, codes = [], []
    for images, grids in stream_sampler(model, num_samples, temperature, seed, label, inputs,
                                        complete, rows, batch_size, jit_compile, progress,
                                        top_k, height, width, first_stage, window_stride):
        samples.append(images)
        if grids is not None:
            codes.append(grids)
    conditioning = conditioning_arrays(num_samples, label, inputs, complete, rows)
    if codes:
        conditioning["codes"] = np.concatenate(codes)
    return np.concatenate(samples), conditioning, time.time() - start_time


def sample_to_files(model, num_samples, output, npz=None, columns=None, seed=0,
                    temperature=1.0, label=None, inputs=None, complete=None, rows=None,
                    deferred=contextlib.nullcontext, at_exit=None, **sampling):
    """``t2t-image-sampler``'s job: samples streamed into ``npz``, then the PNG grid.

    Each batch goes into the ``.npz`` as it is drawn (``files.SamplesNpzWriter``),
    so memory is one batch whatever ``num_samples`` is; the grid comes last and
    shows at most the first ``MAX_GRID_SAMPLES``. Without ``npz`` no more than
    that may be asked for (nothing would hold them); with it, the file must fit
    in the free disk space (checked after the first batch, before the rest).

    Args:
        model, num_samples, seed, temperature, label, inputs, complete, rows:
            as in ``run_sampler``; ``sampling``: its other keyword arguments.
        output: the PNG grid's path.
        npz: None or the path of the raw samples' ``.npz``.
        columns: None or int, tiles per grid row.
        deferred: a context manager factory the outputs are finished inside
            (the CLI's: signals wait until the files are whole).
        at_exit: None, or a function registering a clean-up to run if a signal
            ends the process (the CLI's: the partial ``.npz`` is removed).

    Returns:
        ``(lines, seconds)``: what was written, in words, and the sampling time.

    Raises:
        SamplingArgumentError: bad arguments or too many samples for the output.
    """
    from t2t_image.sampling import files

    check_outputs(num_samples, npz)
    kept, lines = [], []
    start_time = time.time()
    with contextlib.ExitStack() as stack:
        writer = stack.enter_context(files.SamplesNpzWriter(npz, num_samples)) if npz else None
        if writer is not None and at_exit is not None:
            at_exit(writer.discard)
        for images, codes in stream_sampler(model, num_samples, temperature, seed, label,
                                            inputs, complete, rows, **sampling):
            if writer is not None:
                if not kept:  # the first batch tells the size of a sample
                    files.check_npz_space(npz, num_samples, _bytes_per_sample(
                        images, codes, label, inputs, complete, rows))
                writer.add(images, codes)
            room = MAX_GRID_SAMPLES - sum(len(k) for k in kept)
            kept.append(images[:max(room, 0)])
        seconds = time.time() - start_time
        with deferred():
            if writer is not None:
                path = writer.finish(
                    {"seed": seed, "temperature": temperature,
                     **({"num_prefix_rows": rows} if complete is not None else {})},
                    lambda start, count: {
                        k: v for k, v in conditioning_arrays(count, label, inputs, complete,
                                                             rows, start).items()
                        if isinstance(v, np.ndarray)})
                lines.append(f"Wrote the samples to {path} (uint8 [n, h, w, c] under "
                             "'samples')")
            lines.insert(0, write_grid(output, model, np.concatenate(kept), inputs, complete,
                                       columns, total=num_samples))
    return lines, seconds


def check_outputs(num_samples, npz):
    """Refuses more samples than the outputs can hold: without ``npz``, only the grid's."""
    if npz is None and num_samples > MAX_GRID_SAMPLES:
        raise SamplingArgumentError(
            f"--num_samples={num_samples}: the grid (--output) shows at most "
            f"{MAX_GRID_SAMPLES} samples; pass --npz=FILE to keep more (written as they are "
            "drawn).")


def _bytes_per_sample(images, codes, label, inputs, complete, rows):
    extra = conditioning_arrays(1, label, inputs, complete, rows)
    return (images[0].nbytes + (codes[0].nbytes if codes is not None else 0)
            + sum(v.nbytes for v in extra.values() if isinstance(v, np.ndarray)))


def grid_tiles(model, samples, inputs=None, complete=None):
    """The tiles of a job's grid, its default columns and its layout in words.

    Returns:
        ``(tiles, columns, layout)``: uint8 `[m, h, w, c]`, None (about
        square) or an int, and a short description of the order.
    """
    from t2t_image.evaluation import nearest_upsample

    n = len(samples)
    if complete is not None:
        return (np.concatenate([complete[None], samples]), None,
                f"first the image to complete, then {n} samples")
    if inputs is None:
        return samples, None, f"{n} samples in order"
    factor = model.image_height // model.input_height
    if factor * model.input_height != model.image_height or \
            factor * model.input_width != model.image_width:
        return samples, None, f"{n} samples in order (inputs not shown: no integer scale)"
    shown = nearest_upsample(inputs, factor)
    if len(inputs) == 1:
        return np.concatenate([shown, samples]), None, f"first the input, then {n} samples"
    pairs = np.stack([shown[np.arange(n) % len(inputs)], samples], axis=1)
    return (pairs.reshape((-1,) + samples.shape[1:]), 2 * int(np.ceil(np.sqrt(n))),
            "pairs: each input, then its sample")


def write_grid(path, model, samples, inputs=None, complete=None, columns=None, total=None):
    """Writes the job's PNG grid (tiles >= 128 px) and returns a line that says what it shows.

    Args:
        path: the PNG file (written whole or not at all).
        model: the sampled model (for the size of its inputs).
        samples: uint8 `[n, h, w, c]`.
        inputs, complete: the conditioning images given to ``run_sampler``.
        columns: None (the layout's default) or int, tiles per row.
        total: None, or the number of samples drawn when ``samples`` are the
            first of them (the line then says so).

    Returns:
        str, e.g. ``Wrote a grid of 4 samples to grid.png: 2x2 tiles of 128 px,
        row by row: 4 samples in order``.
    """
    from t2t_image.sampling.grids import write_image_grid

    tiles, default_columns, layout = grid_tiles(model, samples, inputs, complete)
    columns = min(columns or default_columns or int(np.ceil(np.sqrt(len(tiles)))), len(tiles))
    write_image_grid(path, tiles, num_columns=columns, min_tile_size=VIEWABLE_TILE)
    size = tiles.shape[1] * upscale_factor(tiles.shape[1], tiles.shape[2], VIEWABLE_TILE)
    rows = -(-len(tiles) // columns)
    shown = (f"the first {len(samples)} of {total} samples" if total and total > len(samples)
             else f"{len(samples)} samples")
    return (f"Wrote a grid of {shown} to {path}: {rows}x{columns} tiles of "
            f"{size} px, row by row: {layout}")
