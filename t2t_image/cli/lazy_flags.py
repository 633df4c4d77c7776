"""absl flags that a tool defines when it runs, not at import.

The sampler and exporter modules can then be imported next to other tools that
define flags of the same names (``--model_dir``, ``--checkpoint``).
"""

import sys

from absl import flags

FLAGS = flags.FLAGS


class LazyFlags:
    """Collects one tool's flag definitions and runs the tool with them."""

    def __init__(self):
        self.names = []

    def define(self, kind, name, default, help_text):
        """Defines ``--name`` (``kind``: string, integer, float, boolean) unless defined."""
        self.names.append(name)
        if name not in FLAGS:
            getattr(flags, f"DEFINE_{kind}")(name, default, help_text)

    def define_model_source(self, checkpoint_help):
        """The --model_dir / --checkpoint / --first_stage_dir flags the model-loading tools share."""
        self.define("string", "model_dir", None, "Model directory (model.keras, or "
                    "model_config.json with TF checkpoints in checkpoints/).")
        self.define("string", "checkpoint", None, checkpoint_help)
        self.define("string", "first_stage_dir", None, "Model directory of the first stage of "
                    "a two-stage model (default: the one recorded in "
                    "--model_dir/first_stage.json).")
        self.define("string", "preset", None, "A preset (a name such as cifar10_32_uncond, "
                    "or a preset folder) to use instead of --model_dir.")

    def check_model_source(self):
        """UsageError unless exactly one model source is given (--model_dir/--checkpoint or --preset)."""
        from absl import app

        if FLAGS.preset and (FLAGS.model_dir or FLAGS.checkpoint or FLAGS.first_stage_dir):
            raise app.UsageError("--preset replaces --model_dir, --checkpoint and "
                                 "--first_stage_dir: pass one model source.")
        if not FLAGS.preset and FLAGS.model_dir is None and FLAGS.checkpoint is None:
            raise app.UsageError("--model_dir (or --checkpoint, or --preset) is required.")

    def load_model_source(self):
        """``(model, source, first_stage, first_stage_dir)`` of the flags; UsageError if unloadable."""
        from absl import app

        from t2t_image.storage import model_loading

        try:
            return model_loading.load_model_source(FLAGS.model_dir, FLAGS.checkpoint,
                                                   FLAGS.first_stage_dir, FLAGS.preset)
        except (FileNotFoundError, ValueError) as e:
            raise app.UsageError(str(e)) from e

    def run(self, main, doc):
        """Runs ``main`` under absl with ``doc`` as usage and these flags as key flags."""
        sys.modules["__main__"].__doc__ = doc  # absl prints it as the usage text
        from t2t_image.cli import errors  # one-line user errors, exit 130/143 on signals

        errors.define_verbose_flag()
        for name in self.names + ["verbose"]:
            FLAGS.register_key_flag_for_module(sys.argv[0], FLAGS[name])
        errors.run_tool(main, doc.strip().split(":", 1)[0])  # e.g. t2t-image-sampler
