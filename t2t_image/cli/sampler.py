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
``D/model_config.json`` with the latest checkpoint; ``--checkpoint`` picks
another): see ``t2t_image.storage.model_loading``. A two-stage model is
recognised by the ``first_stage.json`` in the prior's model_dir (or
``--first_stage_dir``); ``--height/--width`` then count ``--size_units``.

This tool parses flags; the work is ``t2t_image.sampling.job`` (checks,
batches with seed ``--seed + b``, progress, the grid and its layout) and
``t2t_image.sampling.files`` (reading ``--inputs``/``--complete``, writing
``--npz``). Bad flags stop the tool with one line naming the flag and the
value (exit status 1): flag values and files before the model is loaded, the
rest against the model before any sampling. docs/sampling.md has the details.
"""

import sys

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
    define("integer", "num_samples", 16, "Number of images to sample (more than 1024 need "
           "--npz: the grid shows the first 1024).")
    define("float", "temperature", 1.0, "Sampling temperature (0: argmax).")
    define("integer", "seed", 0, "Sampling seed (batch b uses seed + b).")
    define("integer", "label", None, "Class of every sample (class-conditional models).")
    define("string", "inputs", None, "Low-resolution input: a PNG (used for every sample) or an "
           ".npz of images [k, h, w, c] (sample i uses image i % k).")
    define("string", "complete", None, "PNG image to complete: its top --rows rows are kept.")
    define("integer", "rows", None, "Rows of --complete to keep.")
    define("string", "output", "samples.png", "PNG grid to write.")
    define("string", "npz", None, "Also write the raw uint8 samples to this .npz file (a "
           "batch at a time, as they are drawn; it must fit in the free disk space).")
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


def main(argv):
    """Checks the flags, loads the model, samples, writes the grid (and .npz), prints the timing."""
    from t2t_image.sampling.arguments import SamplingArgumentError

    try:
        _main(argv)
    except SamplingArgumentError as e:
        raise app.UsageError(str(e)) from e


def _main(argv):
    from t2t_image.sampling import files
    from t2t_image.sampling.arguments import check_arguments
    from t2t_image.sampling.job import check_outputs

    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments (flags need --name=value): {argv[1:]}")
    _FLAGS.check_model_source()
    check_arguments(FLAGS.num_samples, FLAGS.temperature, FLAGS.seed, FLAGS.label,
                    FLAGS.complete is not None, FLAGS.rows, FLAGS.batch_size, FLAGS.columns,
                    FLAGS.top_k, FLAGS.height, FLAGS.width, FLAGS.size_units, FLAGS.window_stride)
    check_outputs(FLAGS.num_samples, FLAGS.npz)
    files.check_writable("output", FLAGS.output)  # before minutes of sampling, not after
    if FLAGS.npz:
        files.check_writable("npz", files.npz_path(FLAGS.npz))
    inputs = files.read_inputs(FLAGS.inputs) if FLAGS.inputs else None
    if FLAGS.complete:  # its header now (an image bomb is refused undecoded), pixels later
        files.check_image(FLAGS.complete, "complete")

    # TensorFlow is imported from here on (without its start-up log lines).
    from t2t_image.cli import errors

    errors.import_tensorflow_quietly()
    from t2t_image.training import preemption

    # SIGINT/SIGTERM end the tool at once with status 130/143 and nothing written;
    # while the outputs are written they wait, so no file is left half-written.
    with preemption.StopOnSignal("sampling", "stopping; nothing is written",
                                 immediate=True) as stop:
        model, first_stage = _load()
        complete = None
        if FLAGS.complete:  # the model's size, checked from the header before decoding
            complete = files.read_image(FLAGS.complete, "complete", None if first_stage else (
                model.image_height, model.image_width))
        lines, seconds = _sample(model, first_stage, inputs, complete, stop)
        print("\n".join(lines))
        print(f"Sampled {FLAGS.num_samples} images in {seconds:.1f} s: "
              f"{seconds / FLAGS.num_samples:.3f} s/image (including compilation)")
        stop.raise_if_requested("Stopped after writing the outputs.")


def _load():
    """The model (and the first stage of a two-stage model) the flags name."""
    model, source, first_stage, first_stage_dir = _FLAGS.load_model_source()
    print(f"Loaded {type(model).__name__} from {source}", file=sys.stderr)
    if first_stage is not None:
        print(f"Loaded the first stage {type(first_stage).__name__} from {first_stage_dir}",
              file=sys.stderr)
    return model, first_stage


def _sample(model, first_stage, inputs, complete, stop):
    """Samples into --npz as it goes, then writes the grid: (lines written, seconds)."""
    from t2t_image.sampling.arguments import code_grid_size
    from t2t_image.sampling.job import sample_to_files

    height, width = code_grid_size(first_stage, FLAGS.height, FLAGS.width, FLAGS.size_units)
    return sample_to_files(
        model, FLAGS.num_samples, FLAGS.output, FLAGS.npz, FLAGS.columns, FLAGS.seed,
        FLAGS.temperature, FLAGS.label, inputs, complete, FLAGS.rows, deferred=stop.deferred,
        at_exit=stop.at_exit, batch_size=FLAGS.batch_size, jit_compile=FLAGS.jit_compile,
        progress=FLAGS.progress, top_k=FLAGS.top_k, height=height, width=width,
        first_stage=first_stage, window_stride=FLAGS.window_stride)


def run():
    """Console-script entry point."""
    define_flags()
    _FLAGS.run(main, __doc__)


if __name__ == "__main__":
    run()
