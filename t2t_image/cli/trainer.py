"""t2t-image-trainer: train or evaluate a gin-configured Image Transformer.

    t2t-image-trainer --gin_file=gin/quickstart.gin --model_dir=/tmp/run
    t2t-image-trainer --gin_file=... --model_dir=D --mode=eval [--checkpoint=...]
    t2t-image-trainer --model_dir=D --mode=average --num_last=8
    t2t-image-trainer --mode=eval --preset=cifar10_32_uncond
    t2t-image-trainer --gin_file=... --model_dir=D --init_from_preset=NAME   # fine-tune
    t2t-image-trainer --mode=export_preset --model_dir=D --preset_dir=presets/my_model
"""

import json
import os
import sys

import gin
from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
_KEEP_UNTIL_EXIT = []
LOG_FILE = "trainer.log"  # in --model_dir: every log line in full (absl's format)
flags.DEFINE_multi_string("gin_file", [], "Gin files, applied in order.")
flags.DEFINE_multi_string("gin_param", [], "Gin bindings, applied after the files.")
flags.DEFINE_string("model_dir", None, "Directory of checkpoints, logs and results.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "eval_sr", "average", "export_preset"],
                  "train (and evaluate at the end), eval (bits/dim of a checkpoint), eval_sr "
                  "(super-resolution: bits/dim, consistency and a sample grid at temperatures "
                  "1.0/0.9/0.8), average (write the average of the last --num_last "
                  "checkpoints), or export_preset (write the run as a preset to --preset_dir).")
flags.DEFINE_string("checkpoint", None, "Checkpoint to evaluate (default: the latest).")
flags.DEFINE_integer("num_last", 5, "How many recent checkpoints --mode=average averages.")
flags.DEFINE_string("preset", None, "--mode=eval/eval_sr: evaluate this preset (a name or a "
                    "folder) instead of a checkpoint; without --gin_file, on the preset's own "
                    "data, and without --model_dir, only printing the results.")
flags.DEFINE_string("init_from_preset", None, "Training: start a new run from this preset's "
                    "weights (fine-tuning); the gin config must build the same architecture.")
flags.DEFINE_string("preset_dir", None, "--mode=export_preset: the preset folder to write.")
flags.DEFINE_string("preset_description", None, "--mode=export_preset: one sentence for the "
                    "preset's model card.")


def check_flags(model_dir, gin_files, argv=(), mode="train", preset=None,
                init_from_preset=None, preset_dir=None):
    """The flag errors found before anything is imported or written (UsageError)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments (flags need --name=value): {argv[1:]}")
    if preset and mode not in ("eval", "eval_sr"):
        raise app.UsageError(f"--preset is for --mode=eval or eval_sr, not --mode={mode}; to "
                             "train from a preset use --init_from_preset.")
    if init_from_preset and mode != "train":
        raise app.UsageError(f"--init_from_preset is for --mode=train, not --mode={mode}.")
    if (preset_dir is not None) != (mode == "export_preset"):
        raise app.UsageError("--mode=export_preset needs --preset_dir (the folder to write), "
                             "and --preset_dir is only for --mode=export_preset.")
    if not model_dir and not preset:
        raise app.UsageError("--model_dir is required (the run's directory, e.g. "
                             "--model_dir=/tmp/run).")
    if model_dir and os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise app.UsageError(f"--model_dir={model_dir} is a file, not a directory: pass a new "
                             "or existing run directory.")
    if not gin_files and not preset and mode != "export_preset":
        raise app.UsageError("--gin_file is required: the run's configuration, e.g. "
                             "--gin_file=gin/tiny.gin (a trained run's own is in "
                             "MODEL_DIR/operative_config.gin).")


def _gin_config(model_dir, preset):
    """The run's gin configuration as (files, config text): --gin_file, else the preset's
    recorded config (parsed as text, no file written), else the model_dir's own."""
    if FLAGS.gin_file:
        return FLAGS.gin_file, []
    if preset is not None:
        text = preset.metadata.get("gin_config")
        if not text:
            raise app.UsageError(f"preset {preset.folder} records no gin config: pass --gin_file.")
        if preset.first_stage is None:
            return [], [text]
        # A two-stage prior: its codes come from the preset's own first stage, cached in
        # the run directory (never in the preset folder).
        first_stage = repr(os.path.join(preset.folder, "first_stage"))
        cache = repr(os.path.join(model_dir, "preset_codes"))
        return [], [text] + [f"{scope}/t2t_image.make_code_dataset.{key} = {value}"
                             for scope in ("train", "eval")
                             for key, value in (("first_stage_dir", first_stage),
                                                ("cache_dir", cache))]
    path = os.path.join(model_dir, "operative_config.gin")
    if not os.path.isfile(path):
        raise app.UsageError(f"--model_dir={model_dir} has no operative_config.gin: pass the "
                             "run's --gin_file.")
    return [path], []


def main(argv):
    from t2t_image.training import workers

    try:
        run_job(argv)
    except workers.WorkerLostError as e:
        print(f"t2t-image-trainer: error: {e}", file=sys.stderr, flush=True)
        # The cluster's runtime is broken: a normal exit would wait for the lost worker
        # (JAX's distributed shutdown), so leave at once.
        os._exit(1)


def run_job(argv):
    from t2t_image.cli import console
    from t2t_image.cli import errors

    check_flags(FLAGS.model_dir, FLAGS.gin_file, argv, FLAGS.mode, FLAGS.preset,
                FLAGS.init_from_preset, FLAGS.preset_dir)
    errors.import_tensorflow_quietly()
    from t2t_image.cli.gin_utils import parse_gin
    from t2t_image.storage import presets
    from t2t_image.storage import run_guard
    from t2t_image.training import preemption
    from t2t_image.training.preset_export import PresetExportError
    from t2t_image.training.trainer import NonFiniteLossError

    with errors.user_errors(extra=(presets.PresetError,)):  # configuration, paths, data, lock
        name = FLAGS.preset or FLAGS.init_from_preset
        preset = presets.load(name) if name else None
        model_dir = FLAGS.model_dir
        if model_dir is None:  # --preset without a run directory: results are only printed
            import tempfile

            model_dir = tempfile.mkdtemp(prefix="t2t_image_eval_")
        files, config_text = _gin_config(model_dir, preset if FLAGS.preset else None)
        parse_gin(files, config_text + list(FLAGS.gin_param or []))
        from t2t_image import configurables

        trainer = configurables.train_job(model_dir)
    # Kept until the process ends (errors.exit_now): freeing a trainer whose data
    # iterator was checkpointed takes TensorFlow seconds to minutes, for nothing.
    _KEEP_UNTIL_EXIT.append(trainer)
    try:
        with errors.user_errors(extra=(presets.PresetError,)):
            if FLAGS.mode not in ("eval", "eval_sr"):
                trainer.acquire_lock()  # before anything in model_dir is written
                if trainer.is_chief:  # the full record; the console gets short lines
                    console.log_to_file(os.path.join(model_dir, LOG_FILE))
            trainer.build()  # data, model and optimizer: configuration errors surface here
            if preset is not None:  # its architecture must be the gin config's
                trainer.use_weights_of(preset.model, f"preset {preset.folder}",
                                       fresh_only=bool(FLAGS.init_from_preset))
            if trainer.is_chief and FLAGS.mode == "train":
                write_command(model_dir)
            if trainer.is_chief and FLAGS.mode != "export_preset":
                name = ("operative_config_eval.gin" if FLAGS.mode.startswith("eval")
                        else "operative_config.gin")
                write_operative_config(model_dir, gin.operative_config_str(), name)
        # Errors from here on are internal (traceback) except these, which name what to do.
        stops = (NonFiniteLossError, run_guard.ModelDirWriteError,
                 run_guard.ModelDirLockedError,
                 # checkpoints missing, unreadable, not fitting; NaN weights
                 run_guard.CheckpointNotFoundError, run_guard.CheckpointMismatchError,
                 run_guard.NonFiniteWeightsError, PresetExportError)
        with errors.user_errors_of(stops):
            if FLAGS.mode == "train":
                results = trainer.train()  # stops itself on SIGINT/SIGTERM (preemption)
            else:
                with preemption.StopOnSignal(FLAGS.mode, "stopping; nothing is written"):
                    if FLAGS.mode == "eval":
                        results = trainer.evaluate(FLAGS.checkpoint)
                    elif FLAGS.mode == "eval_sr":
                        results = evaluate_super_resolution(trainer, FLAGS.checkpoint)
                    elif FLAGS.mode == "export_preset":
                        results = export_preset(trainer)
                    else:
                        results = {"averaged_checkpoint":
                                   trainer.average_checkpoints(FLAGS.num_last)}
    finally:
        trainer.release_lock()  # also removes the lock file
    if results is not None:
        print(json.dumps(results))
    if FLAGS.mode == "train":
        step = int(trainer.step.numpy())
        print(f"Training is finished at step {step} of {trainer.num_train_steps}; checkpoints "
              f"in {trainer.manager.directory}", file=sys.stderr)


def export_preset(trainer):
    """Writes the run's preset to --preset_dir; returns what it recorded."""
    from t2t_image.training.preset_export import export_preset as export

    command = " ".join(["t2t-image-trainer"] + [f"--gin_file={f}" for f in FLAGS.gin_file]
                       + [f"--gin_param={p}" for p in FLAGS.gin_param]
                       + [f"--model_dir={FLAGS.model_dir}"])
    recorded = os.path.join(FLAGS.model_dir, "command.txt")
    if os.path.isfile(recorded):  # the training command, as its author recorded it
        with open(recorded) as f:
            command = f.read().strip()
    metadata = export(trainer, FLAGS.preset_dir, command=command,
                      description=FLAGS.preset_description)
    print(f"Wrote preset {FLAGS.preset_dir}: held-out {metadata['heldout']['bits_per_dim']:.4f} "
          f"bits/dim on {metadata['heldout']['num_images']} images, "
          f"{metadata['fingerprint']}.", file=sys.stderr)
    return {"preset_dir": FLAGS.preset_dir, "heldout": metadata["heldout"],
            "fingerprint": metadata["fingerprint"]}


def evaluate_super_resolution(trainer, checkpoint):
    """Section 5.3 evaluation of a super-resolution checkpoint on the eval split."""
    from t2t_image import evaluation
    from t2t_image.sampling.grids import VIEWABLE_TILE

    if trainer.eval_dataset is None:
        raise app.UsageError("--mode=eval_sr needs t2t_image.Trainer.eval_dataset_fn.")
    trainer.restore(checkpoint, required=True)  # never scores freshly initialised weights
    results = evaluation.evaluate_super_resolution(
        trainer.model, trainer.eval_dataset,
        sample_fn=evaluation.make_sample_fn(trainer.model, "fast"),
        max_batches=trainer.eval_batches,
        grid_path=os.path.join(trainer.model_dir, "sr_samples.png"),
        min_tile_size=VIEWABLE_TILE,
    )
    if results.get("grid_path"):
        temperatures = "/".join(str(t) for t in evaluation.DEFAULT_TEMPERATURES)
        logging.info("Wrote %s: a row per example, tiles of >= %d px: the input (upscaled), "
                     "samples at temperatures %s, the original", results["grid_path"],
                     VIEWABLE_TILE, temperatures,
                     extra={"short": f"Wrote sr_samples.png: per row the input, samples at "
                                     f"temperatures {temperatures}, the original"})
    results["step"] = int(trainer.step.numpy())
    for key in ("consistency", "psnr"):  # per temperature
        results[key] = {str(k): v for k, v in results[key].items()}
    with open(os.path.join(trainer.model_dir, "sr_eval_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def write_command(model_dir):
    """Records the command that started the run (command.txt; a preset export copies it)."""
    import shlex

    path = os.path.join(model_dir, "command.txt")
    if not os.path.exists(path):
        with open(path, "w") as f:
            f.write(shlex.join(["t2t-image-trainer"] + sys.argv[1:]) + "\n")


def write_operative_config(model_dir, config, name):
    """Writes the operative gin config to model_dir and (TF backend) to TensorBoard as text."""
    import keras

    try:
        os.makedirs(model_dir, exist_ok=True)
        with open(os.path.join(model_dir, name), "w") as f:
            f.write(config)
    except OSError as e:
        if not name.startswith("operative_config_eval"):
            raise
        # An archived (read-only) run can still be evaluated; only this record is skipped.
        print(f"Note: cannot write {name} into --model_dir={model_dir} ({e.strerror}); "
              "evaluating without it.", file=sys.stderr)
        return
    if keras.backend.backend() != "tensorflow":  # TensorBoard text summaries need tf.summary
        return
    import tensorflow as tf

    writer = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
    with writer.as_default(step=0):
        # Markdown code block so TensorBoard keeps the line breaks.
        tf.summary.text("operative_config", "```\n" + config + "\n```")
    writer.flush()


def run():
    """Console-script entry point."""
    from t2t_image.cli import errors

    logging.set_verbosity(logging.INFO)
    errors.run_tool(main, "t2t-image-trainer")


if __name__ == "__main__":
    run()
