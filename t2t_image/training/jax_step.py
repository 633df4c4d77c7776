"""The JAX backend's part of the trainer: jitted stateless steps, data parallelism, npz checkpoints.

``Trainer`` runs one loop for both backends (schedule, logging, checkpoint
cadence, evaluation, the NaN stop, summaries, preemption); under
``KERAS_BACKEND=jax`` it takes the few backend-specific objects from here,
which have the small interface of their TF counterparts that the loop uses:

* ``JaxStrategy``: ``num_replicas_in_sync``, ``scope()``, and
  ``experimental_distribute_dataset`` (NumPy batches placed on the devices,
  split along the batch by ``keras.distribution.DataParallel``);
* ``StepCounter``: the global step (``numpy()``);
* ``NpzCheckpoint``: ``restore(path)`` and ``data_iterator``, with
  ``npz_checkpoints.NpzCheckpointManager`` for saving;
* ``make_train_step``: one ``jax.jit``-compiled function of the model's and
  optimizer's variable values (``model.stateless_call``, ``jax.value_and_grad``,
  ``optimizer.stateless_apply``: Adam, the noam schedule and global-norm
  clipping of the same Keras optimizer the TF step uses), whose results are
  assigned back to the Keras variables after each step;
* ``make_eval_step``: the per-image NLL sum and count of a (masked) batch.

No TensorFlow is imported here.
"""

import contextlib

import jax
import jax.numpy as jnp
import keras
import numpy as np
from absl import logging

from t2t_image.storage import npz_checkpoints

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


class JaxStrategy:
    """Data parallelism over local (or, with ``multi_worker``, all) devices.

    Args:
        name: "default" (one device), "mirrored" / "tpu" (every local device,
            ``keras.distribution.DataParallel``), "multi_worker" (every device
            of every process after ``keras.distribution.initialize()``, i.e.
            ``jax.distributed.initialize`` from the environment: each process
            feeds its own slice of the global batch; tested with processes on
            one host, not on several hosts).
    """

    def __init__(self, name="default"):
        if name not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}.")
        if name == "multi_worker":
            keras.distribution.initialize()
        self.name = name
        self.distribution = None
        if name != "default":
            self.distribution = keras.distribution.DataParallel(
                devices=keras.distribution.list_devices())
        self.num_replicas_in_sync = 1 if self.distribution is None else len(jax.devices())

    @contextlib.contextmanager
    def scope(self):
        if self.distribution is None:
            yield
            return
        previous = keras.distribution.distribution()
        keras.distribution.set_distribution(self.distribution)
        try:
            yield
        finally:
            keras.distribution.set_distribution(previous)

    def shard(self, batch):
        """Places a NumPy batch on the devices, split along the batch axis.

        With several processes the batch is this process's slice of the global
        batch (``t2t_image.training.workers``); the processes' slices together
        make one global array.
        """
        if self.distribution is None:
            return {k: jnp.asarray(v) for k, v in batch.items()}
        out = {}
        for key, value in batch.items():
            global_shape = (value.shape[0] * jax.process_count(),) + value.shape[1:]
            sharding = self.distribution.get_data_layout(global_shape).backend_layout
            if jax.process_count() > 1:
                out[key] = jax.make_array_from_process_local_data(sharding, value, global_shape)
            else:
                out[key] = jax.device_put(value, sharding)
        return out

    def flags(self, value):
        """One int per process, as a global array split over the processes (``max`` = any set)."""
        num_devices = len(jax.devices())
        sharding = self.distribution.get_data_layout((num_devices,)).backend_layout
        local = np.full((jax.local_device_count(),), value, np.int32)
        return jax.make_array_from_process_local_data(sharding, local, (num_devices,))

    def experimental_distribute_dataset(self, dataset):
        return DistributedData(dataset, self)


def numpy_batches(dataset):
    """An iterator of NumPy feature dicts from a NumpyDataset or a tf.data.Dataset."""
    if hasattr(dataset, "as_numpy_iterator"):  # tf.data (stream sources, TF installed)
        return dataset.as_numpy_iterator()
    return iter(dataset)


class DistributedData:
    """Iterable of device batches; its iterators save their position when the data can."""

    def __init__(self, dataset, strategy):
        self.dataset, self.strategy = dataset, strategy

    def __iter__(self):
        return DeviceIterator(numpy_batches(self.dataset), self.strategy)


class DeviceIterator:
    def __init__(self, batches, strategy):
        self.batches, self.strategy = batches, strategy

    def __iter__(self):
        return self

    def __next__(self):
        return self.strategy.shard(next(self.batches))

    def get_state(self):
        return self.batches.get_state() if hasattr(self.batches, "get_state") else None

    def set_state(self, state):
        if state is None:
            return
        if not hasattr(self.batches, "set_state"):
            logging.warning("The checkpoint holds a data position but this dataset cannot "
                            "restore one; the data order restarts.")
            return
        self.batches.set_state(state)


class StepCounter:
    """The global step of a JAX run (the TF trainer's ``tf.Variable`` step)."""

    def __init__(self):
        self.value = 0

    def numpy(self):
        return np.int64(self.value)


class _Restored:
    def assert_existing_objects_matched(self):
        return self

    def expect_partial(self):
        return self


class NpzCheckpoint:
    """What a JAX checkpoint holds (model, optimizer, step, data position), read and written.

    Args:
        model: the Keras model.
        optimizer: its optimizer, or None (then only the model is restored).
        step: the ``StepCounter``.
    """

    def __init__(self, model, optimizer, step):
        self.model, self.optimizer, self.step = model, optimizer, step
        self.data_iterator = None

    def contents(self):
        data_state = None
        if self.data_iterator is not None:
            data_state = self.data_iterator.get_state()
        return ([np.asarray(w) for w in self.model.weights],
                [np.asarray(v) for v in self.optimizer.variables], data_state)

    def restore(self, path):
        model, optimizer, step, data_state = npz_checkpoints.read_checkpoint(path)
        npz_checkpoints.set_weights_checked(self.model.weights, model, "model weight", path)
        if self.optimizer is not None:
            npz_checkpoints.set_weights_checked(self.optimizer.variables, optimizer,
                                                "optimizer variable", path)
        if self.data_iterator is not None:
            try:
                self.data_iterator.set_state(data_state)
            except (ValueError, TypeError, KeyError, IndexError, AttributeError) as e:
                raise npz_checkpoints.UnreadableCheckpointError(
                    f"cannot read the checkpoint {path}: its data-iterator state does not fit "
                    f"the dataset ({type(e).__name__}: {e})") from e
        self.step.value = step
        return _Restored()


def restore_newest(checkpoint, manager, path=None, data_iterator=True):
    """Restores ``path``, else the newest readable checkpoint of ``manager``; returns its path.

    A checkpoint that cannot be used (empty, truncated, crafted, non-finite, a
    data position that does not fit) is skipped for the next newest with a
    warning naming it (``npz_checkpoints.restore_newest``); when none is left,
    ``CheckpointNotFoundError`` names them all: a run never starts over from
    fresh weights beside damaged checkpoints. ``data_iterator=False`` keeps
    the data position where it is.
    """
    iterator = checkpoint.data_iterator
    if not data_iterator:
        checkpoint.data_iterator = None
    try:
        restored, _ = npz_checkpoints.restore_newest(manager.directory, checkpoint.restore,
                                                     exact=path)
    finally:
        checkpoint.data_iterator = iterator
    if restored is not None and path is None:
        manager.use(restored)
    return restored


def _values(variables):
    return [v.value for v in variables]


def _assign(variables, values):
    for variable, value in zip(variables, values):
        variable.assign(value)


def make_gradient_fn(model, global_batch_size, num_dims):
    """``f(trainable, non_trainable, features) -> (loss, gradients, non_trainable)``.

    The loss of the TF step: the per-image NLL per dimension (nats) summed
    over the batch and divided by the GLOBAL batch size.
    """

    def loss_fn(trainable, non_trainable, features):
        logits, non_trainable = model.stateless_call(trainable, non_trainable, features,
                                                     training=True)
        # Per-image NLL in nats, float32 (the likelihood ops compute in float32).
        nll = -model.log_prob_from_logits(logits, features["targets"])
        return jnp.sum(nll.astype("float32") / num_dims) / global_batch_size, non_trainable

    def gradients(trainable, non_trainable, features):
        (loss, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            trainable, non_trainable, features)
        return loss, grads, non_trainable

    return gradients


def make_train_step(model, optimizer, step, global_batch_size, num_dims, strategy=None):
    """The jitted train step: ``train_step(iterator) -> {"loss", "gradient_norm"}``.

    The loss is the mean over the global batch of the per-image NLL per
    dimension (nats), as the TF step's ``compute_average_loss``; the gradient
    norm is the global norm before clipping. With several processes the step
    also returns ``"stop"``: the largest stop signal any process has received
    (0: none), so that all stop after the same step (``preemption.TrainingGuard``).
    """
    from t2t_image.training import preemption

    agree = jax.process_count() > 1
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError("Trainer.precision='mixed_float16' (loss scaling) is not supported "
                         "under the JAX backend; use 'mixed_bfloat16' or 'float32'.")
    trainable_vars = model.trainable_variables
    non_trainable_vars = model.non_trainable_variables
    optimizer_vars = optimizer.variables
    gradients = make_gradient_fn(model, global_batch_size, num_dims)

    def step_fn(trainable, non_trainable, optimizer_values, features, stop):
        loss, grads, non_trainable = gradients(trainable, non_trainable, features)
        # Dense gradients already (JAX has no IndexedSlices): Adam sees summed rows, as T2T's.
        norm = jnp.sqrt(sum(jnp.sum(jnp.square(g.astype("float32"))) for g in grads))
        trainable, optimizer_values = optimizer.stateless_apply(optimizer_values, grads,
                                                                trainable)
        metrics = {"loss": loss, "gradient_norm": norm}
        if stop is not None:  # the processes' stop flags, reduced inside the step's program
            metrics["stop"] = jnp.max(stop)
        return trainable, non_trainable, optimizer_values, metrics

    jitted = jax.jit(step_fn, donate_argnums=(0, 1, 2))

    def train_step(iterator):
        features = next(iterator)
        stop = strategy.flags(preemption.stop_requested() or 0) if agree else None
        trainable, non_trainable, optimizer_values, metrics = jitted(
            _values(trainable_vars), _values(non_trainable_vars), _values(optimizer_vars),
            features, stop)
        _assign(trainable_vars, trainable)
        _assign(non_trainable_vars, non_trainable)
        _assign(optimizer_vars, optimizer_values)
        step.value += 1
        return metrics

    return train_step


def make_eval_step(model, local=False):
    """``eval_step(features) -> (sum of per-image NLL, number of images)``, jitted.

    ``local``: score a NumPy batch of this process alone with its own copy of
    the (replicated) weights, without any collective (several processes hold
    different numbers of evaluation batches; ``sum_over_processes`` adds up).
    """

    def eval_fn(trainable, non_trainable, features):
        logits, _ = model.stateless_call(trainable, non_trainable, features, training=False)
        nll = -model.log_prob_from_logits(logits, features["targets"])
        return jnp.sum(nll.astype("float32")), jnp.asarray(nll.shape[0], "float32")

    jitted = jax.jit(eval_fn)
    values = _local_values if local else _values

    def eval_step(features):
        return jitted(values(model.trainable_variables), values(model.non_trainable_variables),
                      features)

    return eval_step


def _local_values(variables):
    """This process's copies of replicated variables (no cross-process computation)."""
    return [v.value.addressable_data(0) for v in variables]


def sum_over_processes(values):
    """The element-wise sum of a list of floats over all processes."""
    from jax.experimental import multihost_utils

    # float64 sent as its bits: without jax_enable_x64 a float64 array would become float32.
    bits = np.asarray(values, np.float64).view(np.uint32)
    gathered = np.asarray(multihost_utils.process_allgather(bits), np.uint32)
    return [float(v) for v in gathered.reshape(jax.process_count(), -1).view(np.float64).sum(0)]


def worker_of():
    """``(process index, process count)``."""
    return jax.process_index(), jax.process_count()


def check_dataset(dataset, role):
    """The ``{feature: (shape, dtype)}`` of a NumpyDataset or tf.data.Dataset for JAX."""
    spec = getattr(dataset, "element_spec", None)
    if isinstance(spec, dict) and all(isinstance(v, tuple) for v in spec.values()):
        return spec
    if spec is not None and hasattr(dataset, "as_numpy_iterator"):  # tf.data
        return {k: (tuple(v.shape), np.dtype(v.dtype.as_numpy_dtype)) for k, v in spec.items()}
    raise ValueError(f"the {role} dataset function returned {type(dataset).__name__}; the JAX "
                     "trainer reads t2t_image.data.make_numpy_dataset's NumpyDataset (or a "
                     "tf.data.Dataset where TensorFlow is installed).")


def is_chief():
    return jax.process_index() == 0


class SummaryWriter:
    """TensorBoard scalars and images without TensorFlow (the ``tensorboard`` package)."""

    def __init__(self, logdir):
        import tensorboard.summary

        self.logdir = logdir
        self._writer = tensorboard.summary.Writer(tensorboard.summary.DirectoryOutput(logdir))
        self._events = None

    def image(self, step, name, image):
        """One uint8 ``[h, w, 3]`` image, stored as ``tf.summary.image`` stores it."""
        import io
        import time

        from PIL import Image
        from tensorboard.compat.proto import event_pb2
        from tensorboard.compat.proto import summary_pb2
        from tensorboard.plugins.image import metadata
        from tensorboard.summary.writer.event_file_writer import EventFileWriter
        from tensorboard.util import tensor_util

        png = io.BytesIO()
        Image.fromarray(np.asarray(image, np.uint8)).save(png, format="PNG")
        height, width = image.shape[:2]
        value = summary_pb2.Summary.Value(
            tag=name, metadata=metadata.create_summary_metadata(display_name=name,
                                                                description=""),
            tensor=tensor_util.make_tensor_proto([str(width).encode(), str(height).encode(),
                                                  png.getvalue()]))
        if self._events is None:
            self._events = EventFileWriter(self.logdir)
        self._events.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                               summary=summary_pb2.Summary(value=[value])))
        self._events.flush()

    def scalars(self, step, values):
        for name, value in values.items():
            self._writer.add_scalar(name, float(value), step=int(step))
        self._writer.flush()

    def flush(self):
        self._writer.flush()
