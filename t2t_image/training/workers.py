"""Data parallelism over several worker processes, for both backends (no TensorFlow here).

Every worker builds the same sequence of GLOBAL batches (the gin batch size,
one data order from one seed) and keeps its own contiguous slice of each:
worker ``k`` of ``n`` takes examples ``[k * b / n, (k + 1) * b / n)`` of a
batch of ``b``. So the workers of a step together see exactly the global batch
a one-process run sees at that step, no example twice in an epoch, and the
data position (epoch, global batch) is the same on every worker and for any
worker count. The last partial batch of an evaluation split is sliced the
same way (some workers may get fewer examples or none), so every held-out
image is counted exactly once.

The input pipelines slice the example indices before reading the images
(``make_dataset(..., num_shards=n, shard_index=k)``); a dataset function
without these arguments is sliced here, after its batches are made
(``shard_batches``).
"""

import json
import os
import re
import sys

from absl import logging

# The environment a launcher or scheduler sets per backend: how many workers it describes.
JAX_NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"
# What TF's gRPC collectives and JAX's Gloo collectives say when a peer process is gone.
_PEER_FAILURE = re.compile(r"Collective ops is aborted|Gloo [\w-]+ failed|Connection reset by peer|"
                           r"Connection refused|Socket closed|failed to connect to all addresses|"
                           r"heartbeat", re.IGNORECASE)


class WorkerLostError(RuntimeError):
    """A collective of a multi-worker run failed because another worker is gone."""


def lost_worker_error(error, worker_index, num_workers, checkpoint_dir):
    """A ``WorkerLostError`` for ``error`` if it says a peer is gone, else None."""
    text = str(error)
    match = _PEER_FAILURE.search(text)
    if num_workers < 2 or match is None:
        return None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    cause = next((line for line in lines if _PEER_FAILURE.search(line)), match.group(0))
    task = re.search(r"/job:\w+/replica:\d+/task:(\d+)", text)
    who = f"worker {task.group(1)}" if task else "another worker"
    return WorkerLostError(
        f"worker {worker_index} of {num_workers} stopped: {who} is gone (a collective failed: "
        f"{cause[:200]}). Start all {num_workers} workers again to resume from the latest "
        f"complete checkpoint in {checkpoint_dir}.")


def environment_workers(uses_tensorflow):
    """The number of workers the environment describes (TF_CONFIG or Keras's JAX variables)."""
    if uses_tensorflow:
        try:
            cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
        except ValueError as e:
            raise ValueError(f"the TF_CONFIG environment variable is not JSON: {e}") from None
        return sum(len(cluster.get(job, ())) for job in ("chief", "worker"))
    value = os.environ.get(JAX_NUM_PROCESSES, "")
    try:
        return int(value) if value else 0
    except ValueError:
        raise ValueError(f"{JAX_NUM_PROCESSES}={value!r} is not an int.") from None


def resolve_strategy(name, uses_tensorflow):
    """``"default"`` becomes ``"multi_worker"`` when the environment describes several workers."""
    count = environment_workers(uses_tensorflow)
    if name == "default" and count > 1:
        logging.info("The environment describes a cluster of %d workers (%s): strategy "
                     "'multi_worker'.", count, "TF_CONFIG" if uses_tensorflow
                     else JAX_NUM_PROCESSES)
        return "multi_worker"
    if name in ("mirrored", "tpu") and count > 1:
        raise ValueError(f"Trainer.strategy={name!r} runs on one host, but the environment "
                         f"describes {count} workers; use strategy='multi_worker' (or "
                         "'default', which becomes it).")
    return name


def shard_bounds(batch_size, shard_index, num_shards, setting="batch_size"):
    """``(start, stop)`` of worker ``shard_index``'s slice of a global batch of ``batch_size``.

    Raises:
      ValueError: naming ``setting`` when the batch does not divide by the workers.
    """
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, num_shards={num_shards}), got "
                         f"{shard_index!r}.")
    if batch_size % num_shards:
        raise ValueError(f"{setting}={batch_size} (the global batch) must divide by the "
                         f"{num_shards} workers.")
    per = batch_size // num_shards
    return shard_index * per, (shard_index + 1) * per


def slice_rows(values, shard_index, num_shards, batch_size):
    """Worker ``shard_index``'s rows of ``values`` (a global batch of up to ``batch_size``
    rows: the last partial batch of a split is sliced with the same bounds)."""
    start, stop = shard_bounds(batch_size, shard_index, num_shards)
    return values[start:stop]


def shard_batches(dataset, shard_index, num_shards, batch_size):
    """A batched dataset (tf.data or NumPy) whose batches are worker ``shard_index``'s slices."""
    tf = sys.modules.get("tensorflow")  # never imported here: JAX runs may go without it
    if tf is not None and isinstance(dataset, tf.data.Dataset):
        return dataset.map(lambda features: {
            k: slice_rows(v, shard_index, num_shards, batch_size) for k, v in features.items()})
    return ShardedNumpyBatches(dataset, shard_index, num_shards, batch_size)


class ShardedNumpyBatches:
    """A NumPy dataset of global batches seen through one worker's slices."""

    def __init__(self, dataset, shard_index, num_shards, batch_size):
        self.dataset = dataset
        self.shard = (shard_index, num_shards, batch_size)
        start, stop = shard_bounds(batch_size, shard_index, num_shards)
        self.element_spec = {
            k: ((None if shape[0] is None else stop - start,) + tuple(shape[1:]), dtype)
            for k, (shape, dtype) in dataset.element_spec.items()}

    def __iter__(self):
        return _ShardedIterator(iter(self.dataset), self.shard)

    def take(self, count):
        return ShardedNumpyBatches(self.dataset.take(count), *self.shard)


class _ShardedIterator:
    def __init__(self, batches, shard):
        self.batches, self.shard = batches, shard

    def __iter__(self):
        return self

    def __next__(self):
        return {k: slice_rows(v, *self.shard) for k, v in next(self.batches).items()}

    def get_state(self):
        return self.batches.get_state() if hasattr(self.batches, "get_state") else None

    def set_state(self, state):
        if hasattr(self.batches, "set_state"):
            self.batches.set_state(state)
