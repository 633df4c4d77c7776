"""The training and evaluation loop: tf.distribute, checkpoints, TensorBoard.

One custom loop serves every strategy (Keras 3 ``model.fit`` does not run
under MultiWorkerMirroredStrategy, keras-team/keras#20585): per-replica
gradients inside ``strategy.run``, the loss averaged over the GLOBAL batch with
``tf.nn.compute_average_loss``, Adam with T2T's settings and the noam
schedule, optional clipping by global norm and XLA compilation of the step.
"""

import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from t2t_image.training import run_guard
from t2t_image.training import strategy as strategy_lib
from t2t_image.training.schedules import NoamSchedule

PRECISIONS = (None, "float32", "mixed_bfloat16", "mixed_float16")
# Written into the model_dir of a prior over code grids: where its first stage is.
FIRST_STAGE_FILE = "first_stage.json"


class NonFiniteLossError(RuntimeError):
    """Raised when the training loss becomes NaN or Inf."""


class Trainer:
    """Trains and evaluates an Image Transformer model in ``model_dir``.

    Args:
        model_dir: str, where checkpoints, TensorBoard events, the operative
            gin config and evaluation results go.
        model_fn: callable returning a new (unbuilt) model; called inside the
            strategy scope with ``dtype=`` the precision policy. In gin:
            ``@t2t_image.ImageTransformer`` (a reference, not a call).
        train_dataset_fn: callable returning ``(dataset, info)`` of batched
            training feature dicts when called with ``with_info=True`` (e.g.
            ``@train/t2t_image.make_dataset``); its batch size is the GLOBAL
            batch size.
        eval_dataset_fn: like ``train_dataset_fn`` for the evaluation split
            (one pass), or None.
        num_train_steps: int, total optimizer steps of the run.
        learning_rate: float, T2T's learning_rate hparam (noam schedule).
        warmup_steps: int, noam warm-up steps.
        adam_beta1, adam_beta2, adam_epsilon: Adam settings (T2T: 0.9, 0.98, 1e-9).
        clip_gradient_norm: float, clip gradients by global norm (0: off).
        checkpoint_every: int, steps between checkpoints (one also at the end).
        keep_checkpoints: int, how many recent checkpoints to keep.
        eval_every: int, steps between evaluations (0: only at the end).
        eval_batches: int or None, limit evaluation to this many batches.
        log_every: int, steps between console log lines and train summaries.
        sample_every: int, steps between sample grids in TensorBoard (0: off).
        num_samples: int, images per sample grid.
        strategy: "default", "mirrored", "multi_worker" or "tpu".
        jit_compile: bool, XLA-compile the train step.
        precision: None/"float32", "mixed_bfloat16" or "mixed_float16".
        seed: int, seed of weight initialisation and dropout.
    """

    # The evaluation results also written as TensorBoard scalars.
    # (``bits_per_image_dim`` only for priors over code grids.)
    EVAL_SUMMARIES = ("bits_per_dim", "nats_per_dim", "bits_per_image_dim")

    def __init__(
        self,
        model_dir,
        model_fn,
        train_dataset_fn,
        eval_dataset_fn=None,
        num_train_steps=1000,
        learning_rate=0.1,
        warmup_steps=4000,
        adam_beta1=0.9,
        adam_beta2=0.98,
        adam_epsilon=1e-9,
        clip_gradient_norm=0.0,
        checkpoint_every=1000,
        keep_checkpoints=5,
        eval_every=0,
        eval_batches=None,
        log_every=100,
        sample_every=0,
        num_samples=4,
        strategy="default",
        jit_compile=False,
        precision=None,
        seed=0,
    ):
        for name, value, minimum in (
            ("num_train_steps", num_train_steps, 0),
            ("warmup_steps", warmup_steps, 1),
            ("checkpoint_every", checkpoint_every, 1),
            ("keep_checkpoints", keep_checkpoints, 1),
            ("eval_every", eval_every, 0),
            ("log_every", log_every, 1),
            ("sample_every", sample_every, 0),
            ("num_samples", num_samples, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise ValueError(f"Trainer.{name} must be an int >= {minimum}, got {value!r}.")
        if not learning_rate > 0:
            raise ValueError(f"Trainer.learning_rate must be positive, got {learning_rate!r}.")
        if clip_gradient_norm < 0:
            raise ValueError(
                f"Trainer.clip_gradient_norm must be >= 0, got {clip_gradient_norm!r}."
            )
        if precision not in PRECISIONS:
            raise ValueError(f"Trainer.precision must be one of {PRECISIONS}, got {precision!r}.")
        if eval_batches is not None and (not isinstance(eval_batches, int) or eval_batches < 1):
            raise ValueError(f"Trainer.eval_batches must be None or an int >= 1, got {eval_batches!r}.")
        self.model_dir = model_dir
        self.model_fn = model_fn
        self.train_dataset_fn = train_dataset_fn
        self.eval_dataset_fn = eval_dataset_fn
        self.num_train_steps = num_train_steps
        self.learning_rate = learning_rate
        self.warmup_steps = warmup_steps
        self.adam_beta1 = adam_beta1
        self.adam_beta2 = adam_beta2
        self.adam_epsilon = adam_epsilon
        self.clip_gradient_norm = clip_gradient_norm
        self.checkpoint_every = checkpoint_every
        self.keep_checkpoints = keep_checkpoints
        self.eval_every = eval_every
        self.eval_batches = eval_batches
        self.log_every = log_every
        self.sample_every = sample_every
        self.num_samples = num_samples
        self.jit_compile = jit_compile
        self.precision = precision
        self.seed = seed
        self.strategy = strategy_lib.make_strategy(strategy)
        self.is_chief = strategy_lib.is_chief(self.strategy)
        self._built = False
        self._restored = False  # weights come from a checkpoint or from training
        self._lock = None

    # ------------------------------------------------------------------ setup
    def _dataset(self, fn, role):
        result = fn(with_info=True)
        dataset, info = result if isinstance(result, tuple) else (result, None)
        if not isinstance(dataset, tf.data.Dataset):
            raise ValueError(f"the {role} dataset function returned {type(dataset).__name__}, "
                             "not a tf.data.Dataset.")
        return dataset, info

    def build(self):
        """Builds data, model, optimizer and checkpoints; fails before any step runs."""
        if self._built:
            return
        keras.utils.set_random_seed(self.seed)
        self.train_dataset, self.train_info = self._dataset(self.train_dataset_fn, "training")
        spec = self.train_dataset.element_spec
        self.global_batch_size = spec["targets"].shape[0]
        if self.global_batch_size is None:
            raise ValueError("the training dataset must have a static batch size "
                             "(drop_remainder=True); got an unknown batch dimension.")
        if self.global_batch_size % self.strategy.num_replicas_in_sync:
            raise ValueError(
                f"the global batch size {self.global_batch_size} must be divisible by the "
                f"{self.strategy.num_replicas_in_sync} replicas of the strategy."
            )
        self.eval_dataset = None
        if self.eval_dataset_fn is not None:
            self.eval_dataset, self.eval_info = self._dataset(self.eval_dataset_fn, "evaluation")
        policy = self.precision or "float32"
        with self.strategy.scope():
            self.model = self.model_fn(dtype=policy)
            dummy = {k: tf.zeros([1] + v.shape[1:].as_list(), v.dtype) for k, v in spec.items()}
            self.model(dummy)  # builds the variables; raises on a data/model mismatch
            self._build_optimizers()
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.num_dims = int(np.prod(spec["targets"].shape[1:]))
        self.checkpoint = tf.train.Checkpoint(step=self.step, **self._checkpoint_objects())
        ckpt_dir = os.path.join(self.model_dir, "checkpoints")
        if not self.is_chief:  # other workers write to a throw-away directory
            ckpt_dir = os.path.join(self.model_dir, "tmp_workers", str(id(self)))
        # run_guard's manager: its state file never names a half-deleted checkpoint.
        self.manager = run_guard.CheckpointManager(
            self.checkpoint, ckpt_dir, max_to_keep=self.keep_checkpoints,
            checkpoint_name="ckpt",
        )
        # Resuming with another architecture fails here, before any step runs.
        run_guard.check_model_config(self.model_dir, self.model)
        self._built = True

    def _build_optimizers(self):
        """Creates ``self.optimizer`` (and, in subclasses, more); inside the strategy scope."""
        hidden_size = getattr(self.model, "hidden_size", 512)
        self.schedule = NoamSchedule(self.learning_rate, hidden_size, self.warmup_steps)
        optimizer = keras.optimizers.Adam(
            learning_rate=self.schedule,
            beta_1=self.adam_beta1,
            beta_2=self.adam_beta2,
            epsilon=self.adam_epsilon,
            global_clipnorm=self.clip_gradient_norm or None,
        )
        if (self.precision or "float32") == "mixed_float16":
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        self.optimizer = optimizer
        self.optimizer.build(self.model.trainable_variables)

    def _checkpoint_objects(self):
        """What a checkpoint holds besides the step (subclasses add their objects)."""
        return {"model": self.model, "optimizer": self.optimizer}

    def restore(self, checkpoint_path=None):
        """Restores the given checkpoint, or the latest in model_dir; returns its path."""
        self.build()
        path = checkpoint_path or self.manager.latest_checkpoint
        self._restored = True
        if path:
            self.checkpoint.restore(path).assert_existing_objects_matched()
            logging.info("Restored %s at step %d.", path, int(self.step.numpy()))
        return path

    # ------------------------------------------------------------------- steps
    def _per_example_nll(self, features, training):
        logits = self.model(features, training=training)
        # Per-image NLL in nats, float32 (the likelihood ops compute in float32).
        return -self.model.log_prob_from_logits(logits, features["targets"])

    def _make_train_step(self):
        model, optimizer, strategy = self.model, self.optimizer, self.strategy
        global_batch, num_dims = self.global_batch_size, self.num_dims
        loss_scaled = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)

        def compute_gradients(features):
            with tf.GradientTape() as tape:
                nll = self._per_example_nll(features, training=True)
                loss = tf.nn.compute_average_loss(nll / num_dims, global_batch_size=global_batch)
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_variables)
            # Dense gradients: an embedding's gradient arrives as IndexedSlices with
            # repeated rows, and Keras's Adam would square each row before summing
            # them (a wrong second moment); TF1's Adam, T2T's, summed them first.
            return [tf.convert_to_tensor(g) for g in grads], loss

        if self.jit_compile:  # XLA for the model's forward and backward pass
            compute_gradients = tf.function(compute_gradients, jit_compile=True)

        def replica_step(features):
            grads, loss = compute_gradients(features)
            # Sum the replicas' gradients here: the optimizer (and its global-norm
            # clipping) then sees the gradient of the global-batch loss.
            grads = tf.distribute.get_replica_context().all_reduce("sum", grads)
            norm = tf.linalg.global_norm(grads)
            if loss_scaled:
                norm = norm / tf.cast(optimizer.dynamic_scale, norm.dtype)
            return grads, loss, norm

        @tf.function
        def train_step(iterator):
            features = next(iterator)
            grads, loss, norm = strategy.run(replica_step, args=(features,))
            # Gradients are already summed over replicas: take replica 0's copy.
            grads = [strategy.experimental_local_results(g)[0] for g in grads]
            optimizer.apply(grads, model.trainable_variables)
            self.step.assign_add(1)
            return {"loss": strategy.reduce("sum", loss, axis=None),
                    "gradient_norm": strategy.experimental_local_results(norm)[0]}

        return train_step

    def _make_eval_step(self):
        def replica_step(features):
            nll = self._per_example_nll(features, training=False)
            return tf.reduce_sum(nll), tf.cast(tf.shape(nll)[0], tf.float32)

        @tf.function
        def eval_step(features):
            total, count = self.strategy.run(replica_step, args=(features,))
            return (self.strategy.reduce("sum", total, axis=None),
                    self.strategy.reduce("sum", count, axis=None))

        return eval_step

    # -------------------------------------------------------------- the loops
    def _summary_writers(self):
        """The (train, eval) summary writers, created once per trainer."""
        if getattr(self, "_writers", None) is None:
            root = self.model_dir if self.is_chief else os.path.join(self.model_dir, "tmp_workers")
            self._writers = (tf.summary.create_file_writer(os.path.join(root, "train")),
                             tf.summary.create_file_writer(os.path.join(root, "eval")))
        return self._writers

    def _write_errors_named(self, what, step, directory):
        """Context: an I/O error in it becomes a ModelDirWriteError naming what, step, directory."""
        return run_guard.write_errors_named(what, step, directory, self.manager.directory)

    def _save(self, step):
        with self._write_errors_named("checkpoint", step, self.manager.directory):
            path = self.manager.save(checkpoint_number=step)
        logging.info("Saved checkpoint %s", path)
        return path

    def train(self):
        """Trains to ``num_train_steps``, resuming from the latest checkpoint.

        Returns:
            The final evaluation results (a dict), or None without evaluation data.
        """
        self.acquire_lock()
        try:
            self.build()
            return self._train()
        finally:
            self.release_lock()

    def acquire_lock(self):
        """Takes the model_dir lock (chief only; idempotent); fails if a live trainer holds it."""
        if self.is_chief and self._lock is None:
            self._lock = run_guard.ModelDirLock(self.model_dir).acquire()

    def release_lock(self):
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _train(self):
        distributed = self.strategy.experimental_distribute_dataset(self.train_dataset)
        iterator = iter(distributed)
        # The data iterator's position is checkpointed too, so a resumed run
        # continues the data order instead of restarting it.
        self.checkpoint.data_iterator = iterator
        if self.is_chief:  # train() holds the model_dir lock: no save is in progress
            run_guard.remove_partial_checkpoints(self.manager.directory)
        self.restore()
        train_step = self._make_train_step()
        train_writer, _ = self._summary_writers()
        if self.is_chief:
            run_guard.write_model_config(self.model_dir, self.model)
            first_stage = getattr(self.train_info, "first_stage_dir", None)
            if first_stage:  # a prior over code grids: samplers decode with this first stage
                with tf.io.gfile.GFile(os.path.join(self.model_dir, FIRST_STAGE_FILE), "w") as f:
                    json.dump({"first_stage_dir": first_stage}, f, indent=2)
        step = int(self.step.numpy())
        if step >= self.num_train_steps:
            logging.info("Step %d >= num_train_steps=%d: nothing to train.", step, self.num_train_steps)
        last_time, last_step = time.time(), step
        results = None
        while step < self.num_train_steps:
            metrics = {k: float(v) for k, v in train_step(iterator).items()}
            step = int(self.step.numpy())
            loss = metrics["loss"]
            if not math.isfinite(loss):
                raise NonFiniteLossError(
                    f"the training loss is {loss} at step {step}; stopping. The last good "
                    f"checkpoint is kept as latest: {self.manager.latest_checkpoint}."
                )
            if step % self.log_every == 0 or step == self.num_train_steps:
                now = time.time()
                steps_per_sec = (step - last_step) / max(now - last_time, 1e-9)
                last_time, last_step = now, step
                scalars = self._train_scalars(step, metrics)
                scalars["steps_per_second"] = steps_per_sec
                scalars["examples_per_second"] = steps_per_sec * self.global_batch_size
                logging.info("step %d/%d  %s", step, self.num_train_steps,
                             "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()))
                with self._write_errors_named("TensorBoard summaries", step, self.model_dir):
                    with train_writer.as_default(step=step):  # flushes on exit
                        for name, value in scalars.items():
                            tf.summary.scalar(name, value)
            if step % self.checkpoint_every == 0 or step == self.num_train_steps:
                self._save(step)
            if self.sample_every and step % self.sample_every == 0:
                self.write_samples(step)
            if self.eval_every and step % self.eval_every == 0 and step != self.num_train_steps:
                self.evaluate()
        with self._write_errors_named("TensorBoard summaries", step, self.model_dir):
            train_writer.flush()
        if self.eval_dataset is not None:
            results = self.evaluate()
        if self.sample_every and step % self.sample_every:
            self.write_samples(step)  # the loop has not sampled this final step yet
        return results

    def _train_scalars(self, step, metrics):
        """The scalars logged at a training step: loss (nats/dim), bits/dim, learning rate."""
        return {
            "loss": metrics["loss"],
            "bits_per_dim": metrics["loss"] / math.log(2.0),
            "learning_rate": float(self.schedule(step - 1)),
            "gradient_norm": metrics["gradient_norm"],
        }

    def evaluate(self, checkpoint_path=None):
        """Mean NLL (nats and bits/dim) over the whole evaluation split.

        Sums per-image NLL and counts images over every batch, so the result is
        the mean over the split, not a mean of batch means. Writes
        ``model_dir/eval_results.json`` and an ``eval/bits_per_dim`` summary.

        Args:
            checkpoint_path: evaluate this checkpoint (restored first); None
                evaluates the current weights of a trainer that has trained or
                restored, else the latest checkpoint in model_dir.
        """
        if self.eval_dataset_fn is None:
            raise ValueError("Trainer.eval_dataset_fn is not set: nothing to evaluate on.")
        if checkpoint_path or not self._restored:
            path = self.restore(checkpoint_path)
        else:
            path = self.manager.latest_checkpoint
        dataset = self.eval_dataset
        if self.eval_batches:
            dataset = dataset.take(self.eval_batches)
        step = int(self.step.numpy())
        results = {"step": step, "checkpoint": path}
        results.update(self._evaluate_split(self.strategy.experimental_distribute_dataset(dataset)))
        summaries = [k for k in self.EVAL_SUMMARIES if k in results]
        logging.info("eval at step %d: %s", step, "  ".join(
            f"{k} {results[k]:.4f}" for k in summaries))
        if self.is_chief:
            _, eval_writer = self._summary_writers()
            with eval_writer.as_default(step=step):
                for name in summaries:
                    tf.summary.scalar(name, results[name])
            eval_writer.flush()
            with tf.io.gfile.GFile(os.path.join(self.model_dir, "eval_results.json"), "w") as f:
                json.dump(results, f, indent=2)
        return results

    def _evaluate_split(self, distributed_dataset):
        """Sums per-image NLL over every batch; returns the mean per image and per dim."""
        eval_step = self._make_eval_step()
        total, count = 0.0, 0.0
        for batch in distributed_dataset:
            t, c = eval_step(batch)
            total += float(t)
            count += float(c)
        if count == 0:
            raise ValueError("the evaluation dataset is empty.")
        nats_per_dim = total / (count * self.num_dims)
        results = {
            "num_examples": int(count),
            "nats_per_image": total / count,
            "nats_per_dim": nats_per_dim,
            "bits_per_dim": nats_per_dim / math.log(2.0),
        }
        image_dims = getattr(self.train_info, "image_num_dims", None)
        if image_dims:  # a prior over code grids: bits_per_dim is bits per code
            results["bits_per_image_dim"] = total / (count * image_dims * math.log(2.0))
        return results

    def average_checkpoints(self, num_last):
        """Averages the model weights of the last ``num_last`` checkpoints.

        The average (with the latest checkpoint's optimizer state and step) is
        saved under ``model_dir/averaged/`` and its path returned; evaluate it
        with ``evaluate(path)``. The paper's ImageNet 3.77 bits/dim used this.
        """
        if not isinstance(num_last, int) or num_last < 1:
            raise ValueError(f"num_last must be an int >= 1, got {num_last!r}.")
        self.build()
        paths = self.manager.checkpoints[-num_last:]
        if not paths:
            raise ValueError(f"no checkpoints to average in {self.manager.directory}.")
        total = None
        reader = tf.train.Checkpoint(model=self.model)
        for path in paths:
            reader.read(path).expect_partial()
            weights = [np.asarray(w, np.float64) for w in self.model.get_weights()]
            total = weights if total is None else [t + w for t, w in zip(total, weights)]
        self.checkpoint.restore(paths[-1]).expect_partial()
        self.model.set_weights([t / len(paths) for t in total])
        manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(self.model_dir, "averaged"), max_to_keep=1,
            checkpoint_name="ckpt",
        )
        path = manager.save(checkpoint_number=int(self.step.numpy()))
        logging.info("Averaged %d checkpoints (%s .. %s) into %s", len(paths), paths[0],
                     paths[-1], path)
        return path

    def write_samples(self, step):
        """Writes a grid of model samples to TensorBoard and model_dir/samples/step_N.png."""
        from t2t_image.sampling import sample_grid_for_summary  # sampling builds on models
        from t2t_image.sampling import write_image_grid

        if not self.is_chief:
            return
        grid = sample_grid_for_summary(self.model, self.num_samples, seed=step,
                                       eval_dataset=self.eval_dataset,
                                       decode=getattr(self.train_info, "decode_codes", None))
        _, eval_writer = self._summary_writers()
        with eval_writer.as_default(step=step):
            tf.summary.image("samples", grid[None], max_outputs=1)
        eval_writer.flush()
        path = os.path.join(self.model_dir, "samples", f"step_{step}.png")
        write_image_grid(path, grid[None], num_columns=1, padding=0)
        logging.info("Wrote samples to %s", path)
