"""t2t-image-trainer: train or evaluate a gin-configured Image Transformer.

    t2t-image-trainer --gin_file=gin/quickstart.gin --model_dir=/tmp/run
    t2t-image-trainer --gin_file=... --model_dir=D --mode=eval [--checkpoint=...]
    t2t-image-trainer --model_dir=D --mode=average --num_last=8
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
flags.DEFINE_enum("mode", "train", ["train", "eval", "eval_sr", "average"],
                  "train (and evaluate at the end), eval (bits/dim of a checkpoint), eval_sr "
                  "(super-resolution: bits/dim, consistency and a sample grid at temperatures "
                  "1.0/0.9/0.8), or average (write the average of the last --num_last "
                  "checkpoints).")
flags.DEFINE_string("checkpoint", None, "Checkpoint to evaluate (default: the latest).")
flags.DEFINE_integer("num_last", 5, "How many recent checkpoints --mode=average averages.")


def check_flags(model_dir, gin_files, argv=()):
    """The flag errors found before anything is imported or written (UsageError)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments (flags need --name=value): {argv[1:]}")
    if not model_dir:
        raise app.UsageError("--model_dir is required (the run's directory, e.g. "
                             "--model_dir=/tmp/run).")
    if os.path.exists(model_dir) and not os.path.isdir(model_dir):
        raise app.UsageError(f"--model_dir={model_dir} is a file, not a directory: pass a new "
                             "or existing run directory.")
    if not gin_files:
        raise app.UsageError("--gin_file is required: the run's configuration, e.g. "
                             "--gin_file=gin/tiny.gin (a trained run's own is in "
                             "MODEL_DIR/operative_config.gin).")


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

    check_flags(FLAGS.model_dir, FLAGS.gin_file, argv)
    errors.import_tensorflow_quietly()
    from t2t_image.cli.gin_utils import parse_gin
    from t2t_image.training import preemption
    from t2t_image.storage import run_guard
    from t2t_image.training.trainer import NonFiniteLossError

    with errors.user_errors():  # configuration, paths, data, lock, drift
        parse_gin(FLAGS.gin_file, FLAGS.gin_param)
        from t2t_image import configurables

        trainer = configurables.train_job(FLAGS.model_dir)
    # Kept until the process ends (errors.exit_now): freeing a trainer whose data
    # iterator was checkpointed takes TensorFlow seconds to minutes, for nothing.
    _KEEP_UNTIL_EXIT.append(trainer)
    try:
        with errors.user_errors():
            if FLAGS.mode not in ("eval", "eval_sr"):
                trainer.acquire_lock()  # before anything in model_dir is written
                if trainer.is_chief:  # the full record; the console gets short lines
                    console.log_to_file(os.path.join(FLAGS.model_dir, LOG_FILE))
            trainer.build()  # data, model and optimizer: configuration errors surface here
            if trainer.is_chief:
                name = ("operative_config_eval.gin" if FLAGS.mode.startswith("eval")
                        else "operative_config.gin")
                write_operative_config(FLAGS.model_dir, gin.operative_config_str(), name)
        # Errors from here on are internal (traceback) except these, which name what to do.
        stops = (NonFiniteLossError, run_guard.ModelDirWriteError,
                 run_guard.ModelDirLockedError,
                 # checkpoints missing, unreadable, not fitting; NaN weights
                 run_guard.CheckpointNotFoundError, run_guard.CheckpointMismatchError,
                 run_guard.NonFiniteWeightsError)
        with errors.user_errors_of(stops):
            if FLAGS.mode == "train":
                results = trainer.train()  # stops itself on SIGINT/SIGTERM (preemption)
            else:
                with preemption.StopOnSignal(FLAGS.mode, "stopping; nothing is written"):
                    if FLAGS.mode == "eval":
                        results = trainer.evaluate(FLAGS.checkpoint)
                    elif FLAGS.mode == "eval_sr":
                        results = evaluate_super_resolution(trainer, FLAGS.checkpoint)
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
    results["consistency"] = {str(k): v for k, v in results["consistency"].items()}
    with open(os.path.join(trainer.model_dir, "sr_eval_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


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
