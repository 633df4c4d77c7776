"""Each worker's share of a pipeline (num_shards/shard_index), tf.data and NumPy alike."""

import numpy as np
import pytest

from t2t_image.data import make_dataset
from t2t_image.data import make_numpy_dataset

N = 21  # images; image k is filled with the value k, so a batch names its examples


@pytest.fixture
def npz(tmp_path):
    path = tmp_path / "ids.npz"
    images = np.broadcast_to(np.arange(N, dtype=np.uint8)[:, None, None, None], (N, 8, 8, 3))
    np.savez(path, x=np.ascontiguousarray(images))
    return str(path)


def _ids(batch):
    targets = np.asarray(batch["targets"])
    return targets[:, 0, 0, 0].tolist()


def _batches(make, npz, training, num_shards=1, shard_index=0, batch_size=6, count=None):
    dataset = make("npz", "train", batch_size=batch_size, image_size=8, training=training,
                   seed=3, source_kwargs={"path": npz}, num_shards=num_shards,
                   shard_index=shard_index)
    batches = dataset.as_numpy_iterator() if hasattr(dataset, "as_numpy_iterator") else dataset
    out = []
    for batch in batches:
        out.append(_ids(batch))
        if count is not None and len(out) == count:
            break
    return out


@pytest.mark.parametrize("make", [make_dataset, make_numpy_dataset], ids=["tf", "numpy"])
@pytest.mark.parametrize("num_shards", [2, 3])
def test_workers_split_every_global_batch_and_see_each_example_once_per_epoch(make, npz,
                                                                              num_shards):
    # Training, global batches of 6: the workers' slices of a step make one process's batch.
    whole = _batches(make, npz, True, count=7)
    shards = [_batches(make, npz, True, num_shards, k, count=7) for k in range(num_shards)]
    for step, batch in enumerate(whole):
        assert sum((shard[step] for shard in shards), []) == batch  # the same global batch
        assert all(len(shard[step]) == 6 // num_shards for shard in shards)
    # So no example twice in an epoch across workers: tf.data batches the repeated stream
    # (an epoch is its next 21 examples), the NumPy pipeline drops each epoch's remainder.
    stream = [i for step in range(7) for shard in shards for i in shard[step]]
    epochs = [stream[:21], stream[21:42]] if make is make_dataset else [stream[:18],
                                                                         stream[18:36]]
    for epoch in epochs:
        assert len(set(epoch)) == len(epoch)
    # Evaluation: 21 = 6 + 6 + 6 + 3 keeps the partial batch; every image exactly once,
    # whatever the worker count (worker 2 of 3 gets 1 image of the last batch, 2 of 2 none).
    for k in range(num_shards):
        assert len(_batches(make, npz, False, num_shards, k)) == 4
    seen = sum((ids for k in range(num_shards) for ids in _batches(make, npz, False,
                                                                     num_shards, k)), [])
    assert sorted(seen) == list(range(N))


@pytest.mark.parametrize("make", [make_dataset, make_numpy_dataset], ids=["tf", "numpy"])
def test_shard_settings_are_checked(make, npz):
    def build(**kwargs):
        args = dict(batch_size=6, image_size=8, training=True, seed=3,
                    source_kwargs={"path": npz})
        args.update(kwargs)
        return make("npz", "train", **args)

    with pytest.raises(ValueError, match="batch_size=6 .* must divide by the 4 workers"):
        build(num_shards=4, shard_index=0)
    with pytest.raises(ValueError, match="shard_index must be < num_shards=2"):
        build(num_shards=2, shard_index=2)
    with pytest.raises(ValueError, match="seed must be set"):
        build(num_shards=2, shard_index=1, seed=None)
    build(num_shards=2, shard_index=1, seed=None, training=False)  # unshuffled: no seed needed


def test_numpy_position_is_global_whatever_the_worker_count(npz):
    # The iterator position (epoch, example) is that of the global batches: a position
    # saved by worker 1 of 3 continues one process's order.
    one = iter(make_numpy_dataset("npz", "train", batch_size=6, image_size=8, training=True,
                                  seed=3, source_kwargs={"path": npz}))
    third = iter(make_numpy_dataset("npz", "train", batch_size=6, image_size=8, training=True,
                                    seed=3, source_kwargs={"path": npz}, num_shards=3,
                                    shard_index=1))
    for _ in range(4):
        next(one), next(third)
    assert third.get_state() == one.get_state() == {"epoch": 1, "position": 6}
    resumed = iter(make_numpy_dataset("npz", "train", batch_size=6, image_size=8,
                                      training=True, seed=3, source_kwargs={"path": npz}))
    resumed.set_state(third.get_state())
    assert _ids(next(resumed)) == _ids(next(one))
