"""t2t-image-exporter: write a trained model as a TF SavedModel with serving signatures.

    t2t-image-exporter --model_dir=D --export_dir=E [--checkpoint=...] [--nojit_compile]

The model comes from ``--model_dir`` as for t2t-image-sampler (see
``t2t_image.storage.model_loading``). The SavedModel has the endpoints (and
signatures) ``sample``, ``complete``, ``log_prob`` and ``serving_default``
(= ``sample``), described in ``t2t_image.export.export_saved_model``; it
loads with ``tf.saved_model.load(E)`` where t2t_image is not installed.

A two-stage model (a prior whose model_dir records its first stage in
``first_stage.json``, or ``--first_stage_dir``) is exported as one SavedModel
with ``sample`` (codes and decoded images), ``decode``, ``encode`` and
``log_prob``: see ``t2t_image.two_stage.export_two_stage_saved_model``.
"""

import os

from absl import app
from absl import flags

from t2t_image.cli.lazy_flags import LazyFlags

FLAGS = flags.FLAGS
_FLAGS = LazyFlags()


def define_flags():
    """Defines the exporter's absl flags (at most once; shared names are reused).

    Flags are defined when the tool runs, not at import, so this module can be
    imported next to other CLIs that define ``--model_dir`` / ``--checkpoint``.
    """
    define = _FLAGS.define
    _FLAGS.define_model_source(
        "A .keras file or TF checkpoint prefix to export "
        "instead of the model directory's latest.")
    define("string", "export_dir", None, "Directory of the SavedModel to write.")
    define("boolean", "jit_compile", True, "Compile the exported sampling loop with XLA.")
    define("boolean", "overwrite", False, "Replace an existing export in --export_dir "
           "(atomically: the new export is written beside it and swapped in). Only a folder "
           "holding an export this tool wrote (its t2t_image_export.json lists every file) "
           "is replaced; a folder with other files or inside a model_dir is refused.")
    define("integer", "max_num_samples", None, "Most images one SavedModel request may "
           "sample, complete or score (more is refused by name); default 64.")


def main(argv):
    """Loads the model and writes the SavedModel (T2T's ``t2t-exporter``).

    Bad flags or a model directory with nothing loadable end in a usage error
    naming the flag (exit status 1, no traceback).
    """
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments (flags need --name=value): {argv[1:]}")
    _FLAGS.check_model_source()
    if not FLAGS.export_dir:
        raise app.UsageError("--export_dir is required.")
    if os.path.exists(FLAGS.export_dir) and not os.path.isdir(FLAGS.export_dir):
        raise app.UsageError(f"--export_dir={FLAGS.export_dir} is a file, not a directory.")
    if os.path.isdir(FLAGS.export_dir) and os.listdir(FLAGS.export_dir) and not FLAGS.overwrite:
        raise app.UsageError(f"--export_dir={FLAGS.export_dir} is not empty (pass --overwrite "
                             "to replace an export written by this tool).")
    if FLAGS.max_num_samples is not None and FLAGS.max_num_samples < 1:
        raise app.UsageError(f"--max_num_samples must be >= 1, got {FLAGS.max_num_samples}.")
    limits = {} if FLAGS.max_num_samples is None else {"max_num_samples": FLAGS.max_num_samples}

    from t2t_image.cli import errors

    errors.import_tensorflow_quietly()  # TF's start-up log lines stay hidden
    from t2t_image.export import atomic

    try:  # --overwrite replaces only an export this tool wrote, never a run's or other files
        atomic.check_replaceable(FLAGS.export_dir)
    except atomic.ExportDirError as e:
        raise app.UsageError(f"--{e}") from e
    from t2t_image.export import export_saved_model
    from t2t_image.two_stage import export_two_stage_saved_model

    model, source, first_stage, first_stage_dir = _FLAGS.load_model_source()
    if first_stage is not None:
        try:
            export_two_stage_saved_model(model, first_stage, FLAGS.export_dir,
                                         jit_compile=FLAGS.jit_compile, **limits)
        except ValueError as e:  # the two stages do not fit together
            where = f"--first_stage_dir={first_stage_dir}" if first_stage_dir else source
            raise app.UsageError(f"{where}: {e}") from e
        print(f"Exported the two-stage model {source} + {first_stage_dir or 'its first stage'} to "
              f"{FLAGS.export_dir} (endpoints: sample, decode, encode, log_prob, "
              "serving_default)")
        return
    export_saved_model(model, FLAGS.export_dir, jit_compile=FLAGS.jit_compile, **limits)
    print(f"Exported {type(model).__name__} from {source} to {FLAGS.export_dir} "
          "(endpoints: sample, complete, log_prob, serving_default)")


def run():
    """Console-script entry point."""
    define_flags()
    _FLAGS.run(main, __doc__)


if __name__ == "__main__":
    run()
