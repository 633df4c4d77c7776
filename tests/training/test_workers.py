"""t2t_image.training.workers: cluster size from the environment, slices, lost workers."""

import json

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.training import workers


def test_strategy_follows_the_environment(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    monkeypatch.delenv(workers.JAX_NUM_PROCESSES, raising=False)
    assert workers.resolve_strategy("default", True) == "default"
    cluster = {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]},
               "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(cluster))
    assert workers.environment_workers(True) == 2
    assert workers.resolve_strategy("default", True) == "multi_worker"
    assert workers.resolve_strategy("default", False) == "default"  # JAX reads its own
    monkeypatch.setenv(workers.JAX_NUM_PROCESSES, "3")
    assert workers.resolve_strategy("default", False) == "multi_worker"
    with pytest.raises(ValueError, match="strategy='mirrored' runs on one host"):
        workers.resolve_strategy("mirrored", True)
    monkeypatch.setenv("TF_CONFIG", "{not json")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        workers.environment_workers(True)


def test_slices_of_a_global_batch():
    batch = np.arange(10)
    assert [workers.slice_rows(batch[:8], k, 4, 8).tolist() for k in range(4)] == [
        [0, 1], [2, 3], [4, 5], [6, 7]]
    # A split's last partial batch (3 of 8) is sliced with the same bounds.
    assert [workers.slice_rows(batch[:3], k, 4, 8).tolist() for k in range(4)] == [
        [0, 1], [2], [], []]
    with pytest.raises(ValueError, match="batch_size=6 .* must divide by the 4 workers"):
        workers.shard_bounds(6, 0, 4)


def test_datasets_without_shard_arguments_are_sliced_after_batching():
    features = {"targets": np.arange(10)}
    dataset = tf.data.Dataset.from_tensor_slices(features).batch(4)
    sliced = workers.shard_batches(dataset, 1, 2, 4)
    assert [b["targets"].tolist() for b in sliced.as_numpy_iterator()] == [[2, 3], [6, 7], []]


def test_a_failed_collective_names_the_lost_worker():
    error = RuntimeError("Collective ops is aborted by: recvmsg:Connection reset by peer\n"
                         "Additional GRPC error information from remote target "
                         "/job:worker/replica:0/task:1 while calling RecvBuf")
    lost = workers.lost_worker_error(error, 0, 2, "/run/checkpoints")
    assert isinstance(lost, workers.WorkerLostError)
    assert str(lost).startswith("worker 0 of 2 stopped: worker 1 is gone (a collective failed:")
    assert "latest complete checkpoint in /run/checkpoints" in str(lost)
    gloo = RuntimeError("UNKNOWN: Gloo all-reduce failed: [pair.cc:538] Read error: "
                        "Connection reset by peer")
    assert "another worker is gone" in str(workers.lost_worker_error(gloo, 1, 2, "/c"))
    assert workers.lost_worker_error(ValueError("shapes differ"), 0, 2, "/c") is None
    assert workers.lost_worker_error(error, 0, 1, "/c") is None  # one process: not a peer
