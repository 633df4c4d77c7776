"""The training and evaluation loop: tf.distribute, checkpoints, TensorBoard.

One custom loop serves every strategy (Keras 3 ``model.fit`` does not run
under MultiWorkerMirroredStrategy, keras-team/keras#20585): per-replica
gradients inside ``strategy.run``, the loss averaged over the GLOBAL batch with
``tf.nn.compute_average_loss``, Adam with T2T's settings and the noam
schedule, optional clipping by global norm and XLA compilation of the step.
"""

import inspect
import json
import math
import os
import time

import keras
import numpy as np
from absl import logging

from t2t_image.storage import backends
from t2t_image.storage import files
from t2t_image.storage import run_guard
from t2t_image.storage.files import tf  # imported on first use: never under JAX
from t2t_image.storage.model_loading import FIRST_STAGE_FILE
from t2t_image.training import compilation
from t2t_image.training import preemption
from t2t_image.training import strategy as strategy_lib
from t2t_image.training import workers
from t2t_image.training.progress import format_duration
from t2t_image.training.schedules import NoamSchedule

PRECISIONS = (None, "float32", "mixed_bfloat16", "mixed_float16")


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
        jit_compile: True, False or "auto" (default): XLA-compile the train step;
            "auto" uses XLA on GPUs and TPUs, not on a CPU, where the graph
            executor's oneDNN kernels are faster (bfloat16 matmuls ~5x)
            (t2t_image/training/compilation.py).
        precision: None/"float32", "mixed_bfloat16" or "mixed_float16".
        seed: int, seed of weight initialisation and dropout.
    """

    # The evaluation results also written as TensorBoard scalars.
    # (``bits_per_image_dim`` only for priors over code grids.)
    EVAL_SUMMARIES = ("bits_per_dim", "nats_per_dim", "bits_per_image_dim")
    # Whether the train and eval steps run on several workers (docs/many-workers.md).
    MULTI_WORKER = True

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
        jit_compile="auto",
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
        self.precision = precision
        self.seed = seed
        # Under KERAS_BACKEND=jax the loop below is the same; jax_step.py provides the
        # strategy, step, checkpoint and the jitted stateless steps.
        self._jax = None
        # "default" is "multi_worker" where TF_CONFIG (or Keras's JAX variables) name a cluster.
        strategy = workers.resolve_strategy(strategy, files.uses_tensorflow())
        if not files.uses_tensorflow():
            from t2t_image.training import jax_step

            self._jax = jax_step
            self.strategy = jax_step.JaxStrategy(strategy)
            self.is_chief = jax_step.is_chief()
            self.worker_index, self.num_workers = jax_step.worker_of()
        else:
            self.strategy = strategy_lib.make_strategy(strategy)
            self.is_chief = strategy_lib.is_chief(self.strategy)
            self.worker_index, self.num_workers = strategy_lib.worker_of(self.strategy)
        if self.num_workers > 1 and not self.MULTI_WORKER:
            raise ValueError(f"{type(self).__name__} trains in one process; the environment "
                             f"describes {self.num_workers} workers (TF_CONFIG or "
                             "KERAS_DISTRIBUTION_*): run it without t2t-image-launch.")
        # "auto" -> True/False for this precision and device (compilation.py); after the
        # strategy: jax.distributed must start before anything asks JAX for its devices.
        self.jit_compile = compilation.resolve_jit_compile(
            jit_compile, precision, compilation.accelerator_type(strategy))
        self._built = False
        self._other_backend = None  # a newer checkpoint of the other Keras backend (build)
        self._restored = False  # weights come from a checkpoint or from training
        self._settings_written = False  # run_guard.RUN_SETTINGS_NAME of this run
        self._lock = None
        self._saved = (None, None)  # (step, path) of the last checkpoint this trainer wrote
        self._guard = None  # preemption.TrainingGuard while train() runs
        self._initial_weights = None  # (weights, source) of use_weights_of(fresh_only=True)
        self._weights_source = None  # a preset whose weights are being evaluated

    # ------------------------------------------------------------------ setup
    def _dataset(self, fn, role, num_classes=None):
        # The model's num_classes goes to dataset functions that take it, so labels the
        # class table cannot hold are refused when the data is built (make_dataset).
        kwargs = {}
        parameters = inspect.signature(fn).parameters
        if num_classes is not None and "num_classes" in parameters:
            kwargs["num_classes"] = num_classes
        # Several workers: each reads its slices of the same global batches (workers.py).
        sliced_by_fn = self.num_workers > 1 and {"num_shards", "shard_index"} <= set(parameters)
        if sliced_by_fn:
            kwargs.update(num_shards=self.num_workers, shard_index=self.worker_index)
        result = fn(with_info=True, **kwargs)
        dataset, info = result if isinstance(result, tuple) else (result, None)
        if self.num_workers > 1 and not sliced_by_fn:
            logging.warning("The %s dataset function takes no num_shards/shard_index: each of the "
                            "%d workers reads the whole global batches and keeps its slice (they "
                            "must all draw the same order: set its seed).", role,
                            self.num_workers)
            batch = getattr(info, "batch_size", None) or self._batch_dim(dataset)
            dataset = workers.shard_batches(dataset, self.worker_index, self.num_workers, batch)
        if self._jax is not None:
            self._jax.check_dataset(dataset, role)
        elif not isinstance(dataset, tf.data.Dataset):
            raise ValueError(f"the {role} dataset function returned {type(dataset).__name__}, "
                             "not a tf.data.Dataset.")
        return dataset, info

    def build(self):
        """Builds data, model, optimizer and checkpoints; fails before any step runs."""
        if self._built:
            return
        keras.utils.set_random_seed(self.seed)
        policy = self.precision or "float32"
        with self.strategy.scope():
            self.model = self.model_fn(dtype=policy)
        num_classes = getattr(self.model, "num_classes", None)
        self.train_dataset, self.train_info = self._dataset(
            self.train_dataset_fn, "training", num_classes)
        spec = self.train_dataset.element_spec
        if self._jax is not None:  # {feature: (shape, dtype)}
            spec = self._jax.check_dataset(self.train_dataset, "training")
        per_worker_batch = self._shape(spec["targets"])[0]
        if per_worker_batch is None:
            raise ValueError("the training dataset must have a static batch size "
                             "(drop_remainder=True); got an unknown batch dimension.")
        self.global_batch_size = per_worker_batch * self.num_workers
        if self.num_workers > 1 and self.strategy.num_replicas_in_sync != self.num_workers:
            raise ValueError(
                f"{self.num_workers} workers hold {self.strategy.num_replicas_in_sync} devices: "
                "strategy='multi_worker' runs one device per worker process; start one worker "
                "per device (e.g. CUDA_VISIBLE_DEVICES=k for worker k).")
        if self.global_batch_size % self.strategy.num_replicas_in_sync:
            raise ValueError(
                f"the global batch size {self.global_batch_size} must be divisible by the "
                f"{self.strategy.num_replicas_in_sync} replicas of the strategy."
            )
        self.eval_dataset = None
        if self.eval_dataset_fn is not None:
            self.eval_dataset, self.eval_info = self._dataset(
                self.eval_dataset_fn, "evaluation", num_classes)
        with self.strategy.scope():
            if self._jax is not None:
                dummy = {k: np.zeros((1,) + tuple(v[0][1:]), v[1]) for k, v in spec.items()}
            else:
                dummy = {k: tf.zeros([1] + v.shape[1:].as_list(), v.dtype)
                         for k, v in spec.items()}
            self.model(dummy)  # builds the variables; raises on a data/model mismatch
            self._build_optimizers()
            if self._jax is None:
                self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.num_dims = int(np.prod(self._shape(spec["targets"])[1:]))
        # Every worker reads the chief's checkpoints (self.manager). Only the chief writes
        # them: under TF the others write theirs (TF's multi-worker saving needs every
        # worker) to a temporary folder outside model_dir, removed when training ends;
        # under JAX they write nothing.
        ckpt_dir = os.path.join(self.model_dir, "checkpoints")
        self._worker_ckpt_dir = None
        if self._jax is not None:  # one kill-safe .npz file per checkpoint, no TF needed
            from t2t_image.storage import npz_checkpoints

            self.step = self._jax.StepCounter()
            self.checkpoint = self._jax.NpzCheckpoint(self.model, self.optimizer, self.step)
            self.manager = npz_checkpoints.NpzCheckpointManager(
                ckpt_dir, self.keep_checkpoints, self.checkpoint.contents)
            self._writing_manager = self.manager if self.is_chief else None
        else:
            self.checkpoint = tf.train.Checkpoint(step=self.step, **self._checkpoint_objects())
            # run_guard's manager: its state file never names a half-deleted checkpoint.
            self.manager = self._writing_manager = run_guard.CheckpointManager(
                self.checkpoint, ckpt_dir, max_to_keep=self.keep_checkpoints,
                checkpoint_name="ckpt",
            )
            if not self.is_chief:
                import tempfile

                self._worker_ckpt_dir = tempfile.mkdtemp(
                    prefix=f"t2t_image_worker{self.worker_index}_")
                self._writing_manager = run_guard.CheckpointManager(
                    self.checkpoint, self._worker_ckpt_dir, max_to_keep=1,
                    checkpoint_name="ckpt")
        # Resuming with another architecture fails here, before any step runs.
        run_guard.check_model_config(self.model_dir, self.model)
        # ... and resuming another backend's checkpoints (train() holds the lock).
        self._other_backend = backends.other_backend_checkpoint(
            self.model_dir, ckpt_dir, training=self._lock is not None)
        self._built = True

    def _shape(self, spec):
        """The shape of a feature's spec (a TensorSpec, or (shape, dtype) under JAX)."""
        return tuple(spec[0]) if self._jax is not None else tuple(spec.shape.as_list())

    def _batch_dim(self, dataset):
        spec = dataset.element_spec["targets"]
        return spec[0][0] if isinstance(spec, tuple) else spec.shape[0]

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

    def restore(self, checkpoint_path=None, required=False, data_iterator=True,
                saved_optimizer=None):
        """Restores the given checkpoint, or the newest readable one in model_dir; returns its path.

        ``required``: raise ``run_guard.CheckpointNotFoundError`` when there is
        none (evaluation never scores freshly initialised weights).
        ``data_iterator=False`` restores everything but the data position.
        ``saved_optimizer``: the object to read the checkpoint's optimizer into,
        when it was saved by another kind of optimizer (precision changes).
        Unreadable or non-finite checkpoints are skipped (``run_guard.restore_run``).
        Outside training, a newer checkpoint of the other Keras backend is used
        (``_restore_other_backend``).
        """
        self.build()
        if self._weights_source is not None and checkpoint_path is None:
            return self._weights_source  # a preset's weights, taken by use_weights_of
        self._restored = True
        if checkpoint_path:  # a file of the other backend's format?
            foreign = checkpoint_path if checkpoint_path.endswith(".npz") == (
                self._jax is None) else None
        else:  # evaluation reads the newest checkpoint of either backend (training refused)
            foreign = self._other_backend if self._lock is None else None
        if foreign:
            path = self._restore_other_backend(foreign, exact=checkpoint_path)
        elif self._jax is not None:
            path = self._jax.restore_newest(self.checkpoint, self.manager, checkpoint_path,
                                            data_iterator)
        else:
            checkpoint = self.checkpoint
            # Evaluation has no data iterator to restore: the checkpoint's is expected unread.
            partial = (not data_iterator or saved_optimizer is not None
                       or not hasattr(self.checkpoint, "data_iterator"))
            if partial:
                objects = self._checkpoint_objects()
                if saved_optimizer is not None:
                    objects["optimizer"] = saved_optimizer
                if data_iterator and hasattr(self.checkpoint, "data_iterator"):
                    objects["data_iterator"] = self.checkpoint.data_iterator
                checkpoint = tf.train.Checkpoint(step=self.step, **objects)
            try:
                path = run_guard.restore_run(checkpoint, self.manager, self.model.weights,
                                             checkpoint_path, partial=partial)
            except run_guard.CheckpointMismatchError as e:
                if files.gfile().exists(os.path.join(self.model_dir,
                                                     run_guard.MODEL_CONFIG_NAME)):
                    raise
                raise run_guard.CheckpointMismatchError(
                    f"{str(e).rstrip('.')}. {self.model_dir} has no "
                    f"{run_guard.MODEL_CONFIG_NAME} to name the architecture it was trained "
                    "with: use the gin files of that run (e.g. "
                    f"{os.path.join(self.model_dir, 'operative_config.gin')}).") from e
        if path is None and required:
            raise run_guard.CheckpointNotFoundError(
                f"no checkpoint to evaluate in {self.manager.directory} "
                f"({run_guard.checkpoint_files.describe_found(self.manager.directory)}): train "
                "first, or pass --checkpoint.")
        if path:
            logging.info("Restored %s at step %d.", path, int(self.step.numpy()))
            self._saved = (int(self.step.numpy()), path)  # a stop right away saves nothing new
        return path

    def _restore_other_backend(self, newest, exact=None):
        """Reads the model weights and step of the other backend's checkpoint, for evaluation.

        Under TensorFlow the JAX trainer's ``.npz`` files load (the newest usable
        one, or ``exact``); under JAX, TF checkpoints cannot be read and are
        refused by name.
        """
        if self._jax is not None:
            raise run_guard.CheckpointMismatchError(
                f"the newest checkpoint of {self.model_dir}, {newest}, was written under "
                "KERAS_BACKEND=tensorflow, which the JAX backend cannot read: evaluate it with "
                "KERAS_BACKEND=tensorflow.")
        from t2t_image.storage import npz_checkpoints

        def restore(path):
            weights, _, step, _ = npz_checkpoints.read_checkpoint(path)
            npz_checkpoints.set_weights_checked(self.model.weights, weights, "model weight", path)
            self.step.assign(step)

        path, _ = npz_checkpoints.restore_newest(
            os.path.dirname(exact or newest), restore, exact=exact)
        logging.warning("Using %s, written under KERAS_BACKEND=jax (newer than any TensorFlow "
                        "checkpoint of %s): its model weights and step.", path, self.model_dir)
        return path

    def use_weights_of(self, model, source, fresh_only=False):
        """Takes the weights of ``model`` (a preset's), after checking its architecture.

        With ``fresh_only`` (fine-tuning) they initialise a training run that has
        no checkpoint to resume; a run with checkpoints resumes them instead.
        Otherwise they replace the model's weights now (evaluating a preset).

        Raises:
            CheckpointMismatchError: naming ``source`` and every differing setting.
        """
        self.build()
        run_guard.check_same_architecture(model, self.model, source)
        weights = model.get_weights()
        if fresh_only:
            self._initial_weights = (weights, source)
            return
        self.model.set_weights(weights)
        self._restored = True
        self._weights_source = source

    def _record_first_stage(self, first_stage_dir):
        """Writes first_stage.json: the exact first-stage checkpoint of the prior's codes.

        A resumed prior whose dataset now tokenizes with another first-stage
        checkpoint is refused (``model_loading.check_same_first_stage``).
        """
        from t2t_image.storage import model_loading

        record = getattr(self.train_info, "first_stage", None) or {
            "first_stage_dir": first_stage_dir}
        if int(self.step.numpy()) > 0:
            model_loading.check_same_first_stage(
                model_loading.first_stage_record_of(self.model_dir), record, self.model_dir)
        path = os.path.join(self.model_dir, FIRST_STAGE_FILE)
        with files.gfile().GFile(path + ".tmp", "w") as f:
            json.dump(record, f, indent=2)
        files.gfile().rename(path + ".tmp", path, overwrite=True)

    def _run_settings(self):
        """What a resume compares with the run that wrote the checkpoints."""
        info = self.train_info
        dataset = f"{info.source} [{info.split}]" if info is not None else None
        return {"batch_size": self.global_batch_size, "precision": self.precision or "float32",
                "dataset": dataset, "backend": keras.backend.backend(),
                "checkpoint_format": backends.checkpoint_format(),
                "num_workers": self.num_workers}

    def _resume_plan(self):
        """Compares this run's settings with the checkpoints': what ``restore`` must adapt.

        Returns:
            ``(keep the data position, the optimizer view to restore into or None)``.
        """
        changes = run_guard.run_settings_changes(self.model_dir, self._run_settings())
        # The NumPy pipeline's position is global (any worker count continues it); a
        # tf.data iterator's state belongs to its pipeline, which the worker count changes.
        restarts = {"batch_size", "dataset"} | ({"num_workers"} if self._jax is None else set())
        for name, (old, new) in changes.items():
            logging.warning("Resuming %s with %s=%r; its checkpoints were trained with %r.%s",
                            self.model_dir, name, new, old,
                            " The training data order restarts from the beginning."
                            if name in restarts else "")
        saved_optimizer = None
        old, new = changes.get("precision", (None, None))
        if "mixed_float16" in (old, new):  # a loss-scale optimizer wraps Adam on one side
            if self._jax is not None:
                raise run_guard.CheckpointMismatchError(
                    f"precision={new!r} cannot resume the checkpoints of {self.model_dir}, "
                    f"trained with precision={old!r}; use precision={old!r}.")
            # Adam's state carries over; the loss scale starts afresh.
            saved_optimizer = (self.optimizer.inner_optimizer if new == "mixed_float16"
                               else tf.train.Checkpoint(inner_optimizer=self.optimizer))
        return not (restarts & set(changes)), saved_optimizer

    # ------------------------------------------------------------------- steps
    def _per_example_nll(self, features, training):
        logits = self.model(features, training=training)
        # Per-image NLL in nats, float32 (the likelihood ops compute in float32).
        return -self.model.log_prob_from_logits(logits, features["targets"])

    def _make_train_step(self):
        if self._jax is not None:
            return self._jax.make_train_step(self.model, self.optimizer, self.step,
                                             self.global_batch_size, self.num_dims, self.strategy)
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

        def replica_step(features, stop):
            grads, loss = compute_gradients(features)
            # Sum the replicas' gradients here: the optimizer (and its global-norm
            # clipping) then sees the gradient of the global-batch loss. The workers'
            # stop flags ride along (preemption.TrainingGuard: all stop after one step).
            # (tf.identity: an input tensor has no device to reduce on under MultiWorker...)
            reduced = tf.distribute.get_replica_context().all_reduce(
                "sum", grads + [tf.identity(stop)])
            grads, stop = reduced[:-1], reduced[-1]
            norm = tf.linalg.global_norm(grads)
            if loss_scaled:
                norm = norm / tf.cast(optimizer.dynamic_scale, norm.dtype)
            return grads, loss, norm, stop

        @tf.function
        def compiled_step(iterator, stop):
            features = next(iterator)
            grads, loss, norm, stop = strategy.run(replica_step, args=(features, stop))
            # Gradients are already summed over replicas: take replica 0's copy.
            grads = [strategy.experimental_local_results(g)[0] for g in grads]
            optimizer.apply(grads, model.trainable_variables)
            self.step.assign_add(1)
            return {"loss": strategy.reduce("sum", loss, axis=None),
                    "gradient_norm": strategy.experimental_local_results(norm)[0],
                    "stop": strategy.experimental_local_results(stop)[0]}

        def train_step(iterator):
            # This worker's stop signal (0: none); summed over the workers in the step.
            return compiled_step(iterator, tf.constant(preemption.stop_requested() or 0,
                                                       tf.float32))

        return train_step

    def _make_eval_step(self):
        """``eval_step(batch) -> (NLL sum, images)``; over several workers, of this worker's batch."""
        if self._jax is not None:
            return self._jax.make_eval_step(self.model, local=self.num_workers > 1)

        def replica_step(features):
            nll = self._per_example_nll(features, training=False)
            return tf.reduce_sum(nll), tf.cast(tf.shape(nll)[0], tf.float32)

        if self.num_workers > 1:  # no collective per batch: workers hold different counts
            return tf.function(replica_step, reduce_retracing=True)

        @tf.function
        def eval_step(features):
            total, count = self.strategy.run(replica_step, args=(features,))
            return (self.strategy.reduce("sum", total, axis=None),
                    self.strategy.reduce("sum", count, axis=None))

        return eval_step

    # -------------------------------------------------------------- the loops
    def _sum_over_workers(self, values):
        """The element-wise sum of a list of floats over all workers (a collective)."""
        if self._jax is not None:
            return self._jax.sum_over_processes(values)
        per_worker = self.strategy.num_replicas_in_sync // self.num_workers
        local = tf.constant(values, tf.float64)

        def value_fn(context):  # one replica per worker contributes its worker's values
            first = context.replica_id_in_sync_group % per_worker == 0
            return local if first else tf.zeros_like(local)

        distributed = self.strategy.experimental_distribute_values_from_function(value_fn)
        return [float(v) for v in self.strategy.reduce("sum", distributed, axis=None).numpy()]

    def _summary_writers(self):
        """The (train, eval) summary writers, created once per trainer; None off the chief."""
        if getattr(self, "_writers", None) is None:
            if not self.is_chief:  # only the chief writes summaries
                self._writers = (None, None)
                return self._writers
            create = (self._jax.SummaryWriter if self._jax is not None
                      else tf.summary.create_file_writer)
            self._writers = (create(os.path.join(self.model_dir, "train")),
                             create(os.path.join(self.model_dir, "eval")))
        return self._writers

    def _write_scalars(self, writer, step, scalars):
        """Writes TensorBoard scalars of one step and flushes (nothing without a writer)."""
        if writer is None:
            return
        if self._jax is not None:
            writer.scalars(step, scalars)
            return
        with writer.as_default(step=step):  # flushes on exit
            for name, value in scalars.items():
                tf.summary.scalar(name, value)

    def _write_errors_named(self, what, step, directory):
        """Context: an I/O error in it becomes a ModelDirWriteError naming what, step, directory."""
        return run_guard.write_errors_named(what, step, directory, self.manager.directory)

    def _save(self, step):
        if self._saved[0] == step:  # e.g. a stop request right after a regular save
            return self._saved[1]
        run_guard.check_finite_weights(self.model.weights, step, self.manager.directory)
        if self.is_chief and not self._settings_written:  # what a resume compares against
            run_guard.write_run_settings(self.model_dir, self._run_settings())
            self._settings_written = True
        if self._writing_manager is None:  # a JAX worker other than the chief: one writer
            from t2t_image.storage import npz_checkpoints

            path = os.path.join(self.manager.directory, f"ckpt-{step}{npz_checkpoints.SUFFIX}")
        else:
            with self._write_errors_named("checkpoint", step, self._writing_manager.directory):
                path = self._writing_manager.save(checkpoint_number=step)
            if self._writing_manager is self.manager:
                logging.info("Saved checkpoint %s", path,
                             extra={"short": f"Saved checkpoint {os.path.basename(path)}"})
            else:  # TF's rule: the chief writes the real one, the others a throw-away copy
                path = os.path.join(self.manager.directory, os.path.basename(path))
        self._saved = (step, path)
        return path

    def _flush_summaries(self):
        for writer in getattr(self, "_writers", None) or ():
            if writer is not None:
                writer.flush()

    def train(self):
        """Trains to ``num_train_steps``, resuming from the latest checkpoint.

        Returns:
            The final evaluation results (a dict), or None without evaluation data.
        """
        self.acquire_lock()
        try:
            self.build()
            # SIGINT/SIGTERM: the loop stops after the current step with a checkpoint of it
            # and raises preemption.Preempted (the CLI exits 130/143); a second signal quits.
            with preemption.StopOnSignal(
                    "training", "saving a checkpoint after the current step") as signals:
                self._guard = preemption.TrainingGuard(signals, self._save,
                                                       agreed=self.num_workers > 1)
                try:
                    return self._train()
                except preemption.Preempted:
                    self._flush_summaries()
                    raise
                except preemption.Interrupted as e:  # in an evaluation or sample grid of the run
                    step = int(self.step.numpy())
                    path = self._save(step) if self._restored else None
                    self._flush_summaries()
                    raise preemption.Preempted(e.signum, step, path) from None
                except Exception as e:  # noqa: BLE001 - re-raised, renamed if a worker is gone
                    lost = workers.lost_worker_error(e, self.worker_index, self.num_workers,
                                                     self.manager.directory)
                    if lost is None:
                        raise
                    raise lost from e
                finally:
                    self._guard = None
        finally:
            self.release_lock()
            if getattr(self, "_worker_ckpt_dir", None):  # a TF worker's throw-away checkpoints
                import shutil

                shutil.rmtree(self._worker_ckpt_dir, ignore_errors=True)

    def acquire_lock(self):
        """Takes the model_dir lock (chief only; idempotent); fails if a live trainer holds it."""
        if self.is_chief and self._lock is None:
            self._lock = run_guard.ModelDirLock(self.model_dir).acquire()

    def release_lock(self):
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _train(self):
        if self._jax is None and self.num_workers > 1:
            # This worker's slices, fed to its one replica: a tf.data iterator checkpoints
            # its position (the distributed iterator of MultiWorkerMirroredStrategy cannot).
            # Every worker restores the chief's iterator state, so it must hold the position
            # only (symbolic), never prefetched batches, which are the chief's slices.
            options = tf.data.Options()
            options.experimental_symbolic_checkpoint = True
            iterator = iter(self.train_dataset.with_options(options))
        else:
            iterator = iter(self.strategy.experimental_distribute_dataset(self.train_dataset))
        # The data iterator's position is checkpointed too, so a resumed run
        # continues the data order instead of restarting it.
        self.checkpoint.data_iterator = iterator
        if self.is_chief:  # train() holds the model_dir lock: no save is in progress
            run_guard.remove_partial_checkpoints(self.manager.directory)
        keep_data_position, saved_optimizer = self._resume_plan()
        resumed = self.restore(data_iterator=keep_data_position, saved_optimizer=saved_optimizer)
        if self._initial_weights is not None:
            weights, source = self._initial_weights
            if resumed:
                logging.info("Resuming %s; --init_from_preset=%s only starts new runs.",
                             resumed, source)
            else:
                self.model.set_weights(weights)
                logging.info("Initialised the model from %s (fine-tuning).", source)
        train_step = self._make_train_step()
        train_writer, _ = self._summary_writers()
        if self.is_chief:
            run_guard.write_model_config(self.model_dir, self.model)
            first_stage = getattr(self.train_info, "first_stage_dir", None)
            if first_stage:  # a prior over code grids: samplers decode with this first stage
                self._record_first_stage(first_stage)
        step = int(self.step.numpy())
        if step >= self.num_train_steps:
            finished = self._finished_results(step)
            if finished is not False:
                return finished
        last_time, last_step = time.time(), step
        steady = None  # (time, step) after this process's first step: compiled from then on
        logging.info("step %d/%d: compiling the training step ...", step, self.num_train_steps)
        results = None
        while step < self.num_train_steps:
            metrics = {k: float(v) for k, v in train_step(iterator).items()}
            step = int(self.step.numpy())
            if steady is None:
                steady = (time.time(), step)
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
                self._log_progress(step, scalars, steady)
                with self._write_errors_named("TensorBoard summaries", step, self.model_dir):
                    self._write_scalars(train_writer, step, scalars)
            if step % self.checkpoint_every == 0 or step == self.num_train_steps:
                self._save(step)
            if self.sample_every and step % self.sample_every == 0:
                self.write_samples(step)
            if self.eval_every and step % self.eval_every == 0 and step != self.num_train_steps:
                self.evaluate()
            if self._guard is not None:  # a SIGINT/SIGTERM: checkpoint this step, stop
                self._guard.check(step, metrics.get("stop"))
        with self._write_errors_named("TensorBoard summaries", step, self.model_dir):
            self._flush_summaries()
        if self.eval_dataset is not None:
            results = self.evaluate()
        if self.sample_every and step % self.sample_every:
            self.write_samples(step)  # the loop has not sampled this final step yet
        return results

    def _finished_results(self, step):
        """A run already at num_train_steps: its saved results (not re-evaluated).

        None without evaluation data; False (evaluate now) when the run has
        evaluation data but no results of this step yet, e.g. a run stopped
        during its final evaluation.
        """
        path = os.path.join(self.model_dir, "eval_results.json")
        results = None
        if self.eval_dataset is not None and files.gfile().exists(path):
            with files.gfile().GFile(path) as f:
                results = json.load(f)
            if results.get("step") != step:
                results = None
        if self.eval_dataset is not None and results is None:
            logging.info("The run in %s is at step %d of num_train_steps=%d: evaluating it.",
                         self.model_dir, step, self.num_train_steps)
            return False
        logging.warning(
            "The run in %s is finished: step %d of num_train_steps=%d%s. Nothing to do; raise "
            "t2t_image.Trainer.num_train_steps to train on, or use --mode=eval to evaluate "
            "again.", self.model_dir, step, self.num_train_steps,
            f" (results of step {step} in {path})" if results else "")
        return results

    def _log_progress(self, step, scalars, steady):
        """One progress line: every scalar in the log file, a short form on the console.

        The ETA comes from the steps after this process's first one (``steady``:
        its time and step), which includes compiling the step.
        """
        now, (since, first_step) = time.time(), steady
        rate = (step - first_step) / (now - since) if step > first_step and now > since else None
        eta = ("ETA after the next log line" if rate is None
               else f"ETA {format_duration((self.num_train_steps - step) / rate)}")
        shown = [f"{k} {scalars[k]:.4g}" for k in ("loss", "bits_per_dim") if k in scalars]
        short = (f"step {step}/{self.num_train_steps}  {'  '.join(shown)}  "
                 f"{scalars['steps_per_second']:.3g} steps/s  {eta}")
        logging.info("step %d/%d  %s  %s", step, self.num_train_steps,
                     "  ".join(f"{k} {v:.4g}" for k, v in scalars.items()), eta,
                     extra={"short": short})

    def _train_scalars(self, step, metrics):
        """The scalars logged at a training step: loss (nats/dim), bits/dim, learning rate."""
        return {
            "loss": metrics["loss"],
            "bits_per_dim": metrics["loss"] / math.log(2.0),
            "learning_rate": float(self.schedule(step - 1)),
            "gradient_norm": metrics["gradient_norm"],
        }

    def evaluate(self, checkpoint_path=None, initial_weights=False):
        """Mean NLL (nats and bits/dim) over the whole evaluation split.

        Sums per-image NLL and counts images over every batch, so the result is
        the mean over the split, not a mean of batch means. Writes
        ``model_dir/eval_results.json`` and an ``eval/bits_per_dim`` summary.

        Args:
            checkpoint_path: evaluate this checkpoint (restored first); None
                evaluates the current weights of a trainer that has trained or
                restored, else the latest checkpoint in model_dir.
            initial_weights: bool, evaluate the freshly initialised weights when
                model_dir has no checkpoint (a baseline); otherwise that raises
                ``run_guard.CheckpointNotFoundError``, so a misspelled model_dir
                never yields random-weight results.
        """
        if self.eval_dataset_fn is None:
            raise ValueError("Trainer.eval_dataset_fn is not set: nothing to evaluate on.")
        if checkpoint_path or not self._restored:
            path = self.restore(checkpoint_path, required=not initial_weights)
        else:  # a preset's weights; off the chief, the latest checkpoint this trainer saved
            path = self._weights_source or self._saved[1] or self.manager.latest_checkpoint
        dataset = self.eval_dataset
        if self.eval_batches:
            dataset = dataset.take(self.eval_batches)
        step = int(self.step.numpy())
        results = {"step": step, "checkpoint": path}
        if self.num_workers > 1:  # each worker scores its slices; the sums are added up
            batches = self._jax.numpy_batches(dataset) if self._jax is not None else dataset
        else:
            batches = self.strategy.experimental_distribute_dataset(dataset)
        results.update(self._evaluate_split(batches))
        summaries = [k for k in self.EVAL_SUMMARIES if k in results]
        logging.info("eval at step %d: %s", step, "  ".join(
            f"{k} {results[k]:.4f}" for k in summaries))
        if self.is_chief:
            try:
                _, eval_writer = self._summary_writers()
                self._write_scalars(eval_writer, step, {name: results[name] for name in summaries})
                eval_writer.flush()
                with files.gfile().GFile(os.path.join(self.model_dir, "eval_results.json"),
                                         "w") as f:
                    json.dump(results, f, indent=2)
            except files.io_errors() as e:
                if self._lock is not None:  # a training run's model_dir must take writes
                    raise
                logging.warning("Cannot write the evaluation results into %s (%s); they are "
                                "only returned (the CLI prints them).", self.model_dir, e)
        return results

    def _evaluate_split(self, distributed_dataset):
        """Sums per-image NLL over every batch; returns the mean per image and per dim."""
        eval_step = self._make_eval_step()
        total, count = 0.0, 0.0
        for batch in distributed_dataset:
            if self.num_workers == 1:  # several workers finish it together, then stop
                preemption.raise_if_stop_requested(
                    "Stopped the evaluation; eval_results.json was not written.")
            if self.num_workers > 1 and not len(batch["targets"]):
                continue  # this worker's slice of the split's last partial batch is empty
            t, c = eval_step(batch)
            total += float(t)
            count += float(c)
        if self.num_workers > 1:
            total, count = self._sum_over_workers([total, count])
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
        if self._jax is not None:
            return self._average_npz_checkpoints(paths)
        total = None
        reader = tf.train.Checkpoint(model=self.model)
        safe = run_guard.checkpoint_files.glob_safe_prefix  # a model_dir name may hold "["
        for path in paths:
            with safe(path) as readable:
                reader.read(readable).expect_partial()
            weights = [np.asarray(w, np.float64) for w in self.model.get_weights()]
            total = weights if total is None else [t + w for t, w in zip(total, weights)]
        with safe(paths[-1]) as readable:
            self.checkpoint.restore(readable).expect_partial()
        self.model.set_weights([t / len(paths) for t in total])
        manager = tf.train.CheckpointManager(
            self.checkpoint, os.path.join(self.model_dir, "averaged"), max_to_keep=1,
            checkpoint_name="ckpt",
        )
        path = manager.save(checkpoint_number=int(self.step.numpy()))
        logging.info("Averaged %d checkpoints (%s .. %s) into %s", len(paths), paths[0],
                     paths[-1], path)
        return path

    def _average_npz_checkpoints(self, paths):
        from t2t_image.storage import npz_checkpoints

        try:  # a damaged file is named, never averaged in or silently left out
            read = [npz_checkpoints.read_checkpoint(p) for p in paths]
        except npz_checkpoints.UnreadableCheckpointError as e:
            raise run_guard.CheckpointNotFoundError(
                f"cannot average the last {len(paths)} checkpoints: {e}") from e
        average = [np.mean([r[0][i].astype(np.float64) for r in read], axis=0).astype(w.dtype)
                   for i, w in enumerate(read[-1][0])]
        _, optimizer, step, data_state = read[-1]
        path = os.path.join(self.model_dir, "averaged", f"ckpt-{step}{npz_checkpoints.SUFFIX}")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        npz_checkpoints.write_checkpoint(path, average, optimizer, step, data_state)
        logging.info("Averaged %d checkpoints (%s .. %s) into %s", len(paths), paths[0],
                     paths[-1], path)
        return path

    def write_samples(self, step):
        """Writes a grid of model samples to TensorBoard and model_dir/samples/step_N.png."""
        from t2t_image.sampling import sample_grid_for_summary  # sampling builds on models
        from t2t_image.sampling import write_image_grid

        if not self.is_chief:
            return
        if self._jax is not None and self.num_workers > 1:
            logging.info("No sample grid at step %d: the weights are spread over %d JAX "
                         "processes; sample a checkpoint with t2t-image-sampler.", step,
                         self.num_workers)
            return
        try:
            grid = sample_grid_for_summary(self.model, self.num_samples, seed=step,
                                           eval_dataset=self.eval_dataset,
                                           decode=getattr(self.train_info, "decode_codes", None))
        except (ImportError, NotImplementedError) as e:
            if self._jax is None:
                raise
            logging.info("No sample grid at step %d: the sampler does not run under JAX "
                         "here (%s).", step, e)
            return
        _, eval_writer = self._summary_writers()
        if self._jax is not None:  # the tensorboard package's TF-free event writer
            eval_writer.image(step, "samples", grid)
        else:
            with eval_writer.as_default(step=step):
                tf.summary.image("samples", grid[None], max_outputs=1)
            eval_writer.flush()
        path = os.path.join(self.model_dir, "samples", f"step_{step}.png")
        write_image_grid(path, grid[None], num_columns=1, padding=0)
        logging.info("Wrote samples to %s", path)
