"""t2t-image-trainer: train or evaluate a gin-configured Image Transformer.

    t2t-image-trainer --gin_file=gin/quickstart.gin --model_dir=/tmp/run
    t2t-image-trainer --gin_file=... --model_dir=D --mode=eval [--checkpoint=...]
    t2t-image-trainer --model_dir=D --mode=average --num_last=8
"""

import json
import os

import gin
from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
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


def main(argv):
    del argv
    from t2t_image.cli.gin_utils import parse_gin

    if not FLAGS.model_dir:
        raise app.UsageError("--model_dir is required.")
    parse_gin(FLAGS.gin_file, FLAGS.gin_param)
    from t2t_image import configurables

    trainer = configurables.train_job(FLAGS.model_dir)
    if FLAGS.mode not in ("eval", "eval_sr"):
        trainer.acquire_lock()  # before anything in model_dir is written
    trainer.build()  # data, model and optimizer: configuration errors surface here
    if trainer.is_chief:
        name = ("operative_config_eval.gin" if FLAGS.mode.startswith("eval")
                else "operative_config.gin")
        write_operative_config(FLAGS.model_dir, gin.operative_config_str(), name)
    if FLAGS.mode == "train":
        results = trainer.train()
    elif FLAGS.mode == "eval":
        results = trainer.evaluate(FLAGS.checkpoint)
    elif FLAGS.mode == "eval_sr":
        results = evaluate_super_resolution(trainer, FLAGS.checkpoint)
    else:
        results = {"averaged_checkpoint": trainer.average_checkpoints(FLAGS.num_last)}
    if results is not None:
        print(json.dumps(results))


def evaluate_super_resolution(trainer, checkpoint):
    """Section 5.3 evaluation of a super-resolution checkpoint on the eval split."""
    from t2t_image import evaluation

    if trainer.eval_dataset is None:
        raise app.UsageError("--mode=eval_sr needs t2t_image.Trainer.eval_dataset_fn.")
    trainer.restore(checkpoint)
    results = evaluation.evaluate_super_resolution(
        trainer.model, trainer.eval_dataset,
        sample_fn=evaluation.make_sample_fn(trainer.model, "fast"),
        max_batches=trainer.eval_batches,
        grid_path=os.path.join(trainer.model_dir, "sr_samples.png"),
    )
    results["step"] = int(trainer.step.numpy())
    results["consistency"] = {str(k): v for k, v in results["consistency"].items()}
    with open(os.path.join(trainer.model_dir, "sr_eval_results.json"), "w") as f:
        json.dump(results, f, indent=2)
    return results


def write_operative_config(model_dir, config, name):
    """Writes the operative gin config to model_dir and to TensorBoard as text."""
    import tensorflow as tf

    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, name), "w") as f:
        f.write(config)
    writer = tf.summary.create_file_writer(os.path.join(model_dir, "train"))
    with writer.as_default(step=0):
        # Markdown code block so TensorBoard keeps the line breaks.
        tf.summary.text("operative_config", "```\n" + config + "\n```")
    writer.flush()


def run():
    """Console-script entry point."""
    logging.set_verbosity(logging.INFO)
    app.run(main)


if __name__ == "__main__":
    run()
