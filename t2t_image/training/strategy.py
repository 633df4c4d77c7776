"""tf.distribute strategies chosen by one setting."""

import json
import os

from t2t_image.storage.files import tf  # imported on first use: never under JAX

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def make_strategy(name="default", tpu_address=""):
    """Returns the tf.distribute strategy named by ``name``.

    Args:
        name: "default" (one device), "mirrored" (all local devices of one
            host), "multi_worker" (several hosts, from the TF_CONFIG environment
            variable; collective all-reduce) or "tpu".
        tpu_address: the TPU to connect to for "tpu" ("" for a local TPU VM).

    Returns:
        A `tf.distribute.Strategy`.
    """
    if name not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}, got {name!r}.")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy='multi_worker' needs the TF_CONFIG environment variable "
                "(cluster and task of this worker); it is not set."
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address)
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """True on the worker that writes summaries, configs and the real checkpoints."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type in (None, "chief"):
        return True
    cluster = json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "worker" and task_id == 0 and "chief" not in cluster


def worker_of(strategy):
    """``(index, count)`` of this worker in the cluster (``(0, 1)`` without one).

    Worker 0 is the chief (the "chief" task if the cluster has one, else worker 0).
    """
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return 0, 1
    cluster = resolver.cluster_spec().as_dict()
    chiefs = len(cluster.get("chief", ()))
    count = chiefs + len(cluster.get("worker", ()))
    if count == 0:
        return 0, 1
    index = resolver.task_id + (chiefs if resolver.task_type == "worker" else 0)
    return index, count
