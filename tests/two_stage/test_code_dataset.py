"""make_code_dataset tests: a tiny first stage trained on CelebA faces tokenizes real images.

The expected code grids come from the trained first stage's own ``encode_to_codes`` on the
images of ``make_dataset`` (or the raw npz labels), never from the code dataset's cache.
"""

import collections
import functools
import os
import re
import shutil

import numpy as np
import pytest

from t2t_image.data import make_dataset
from t2t_image.models.vq_autoencoder import VQAutoencoder
from t2t_image.training.first_stage_trainer import FirstStageTrainer
from t2t_image.two_stage import code_dataset
from t2t_image.two_stage.code_dataset import make_code_dataset
from tests.conftest import SHARED_DATA

CELEBA = SHARED_DATA / "celeba" / "celeba_train9000_32x32_8x8.npz"
CIFAR = SHARED_DATA / "cifar10" / "cifar10_train_exact.npz"
SPLIT = "train[:5%]"  # 450 CelebA faces


def _images(npz, split, batch_size=16, image_size=8, with_info=False, **kwargs):
    key = {"image_key": "x32"} if npz == CELEBA else {}
    return make_dataset("npz", split, batch_size=batch_size, image_size=image_size,
                        source_kwargs={"path": str(npz), **key}, with_info=with_info, **kwargs)


def _first_stage_trainer(model_dir, num_train_steps):
    model_fn = functools.partial(
        VQAutoencoder, image_height=8, image_width=8, base_channels=8, channel_multipliers=(1, 2),
        num_res_blocks=0, codebook_size=32, code_dim=4, dead_code_threshold=0.5)
    return FirstStageTrainer(
        str(model_dir), model_fn,
        functools.partial(_images, CELEBA, "train[:64]", 8, training=True, seed=0),
        num_train_steps=num_train_steps, learning_rate=3e-3, log_every=100, checkpoint_every=2)


@pytest.fixture(scope="module")
def first_stage(tmp_path_factory):
    """A first stage trained for 2 steps: (model_dir, its trainer)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA}")
    model_dir = tmp_path_factory.mktemp("first_stage")
    trainer = _first_stage_trainer(model_dir, 2)
    trainer.train()
    return str(model_dir), trainer


def _encode(model, npz, split, **kwargs):
    """Codes (and labels) of the split in order, from the model's encode_to_codes."""
    codes, labels = [], []
    for batch in _images(npz, split, batch_size=64, **kwargs):
        codes.append(np.asarray(model.encode_to_codes(batch["targets"])))
        if "labels" in batch:
            labels.append(batch["labels"].numpy())
    return np.concatenate(codes), (np.concatenate(labels) if labels else None)


def _served(dataset):
    """All targets (and labels) of one pass."""
    targets, labels = [], []
    for batch in dataset:
        assert batch["targets"].dtype == "int32"
        targets.append(batch["targets"].numpy())
        if "labels" in batch:
            labels.append(batch["labels"].numpy())
    return np.concatenate(targets), (np.concatenate(labels) if labels else None)


def _cache_files(model_dir):
    folder = os.path.join(model_dir, "codes")
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def test_codes_are_the_first_stage_encodings_and_come_from_the_cache(first_stage, monkeypatch):
    model_dir, trainer = first_stage
    model = trainer.model
    expected, _ = _encode(model, CELEBA, SPLIT)
    assert expected.shape == (450, 4, 4)
    # The codes are diverse enough to tell grids apart (and so images and orders).
    assert len({g.tobytes() for g in expected}) > 400
    image_fn = functools.partial(_images, CELEBA, SPLIT)
    before = set(_cache_files(model_dir))
    ds, info = make_code_dataset(model_dir, image_fn, batch_size=32, with_info=True)
    targets, labels = _served(ds)
    assert labels is None and targets.shape == (450, 4, 4, 1)
    np.testing.assert_array_equal(targets[..., 0], expected)
    assert (info.num_examples, info.image_size, info.task) == (450, 4, "unconditional")
    assert info.image_num_dims == 8 * 8 * 3
    assert info.first_stage_dir == os.path.abspath(model_dir)
    np.testing.assert_array_equal(info.decode_codes(targets[:6]),
                                  np.asarray(model.images_from_codes(expected[:6])))
    files = _cache_files(model_dir)
    written = sorted(set(files) - before)
    assert len(written) == 1 and written[0].endswith(".npz")
    with np.load(os.path.join(model_dir, "codes", written[0])) as cached:
        np.testing.assert_array_equal(cached["codes"], expected)

    # A second call reads the cache: tokenizing again would fail.
    def no_tokenizing(*args, **kwargs):
        raise AssertionError("tokenize_dataset called although the cache is valid")

    monkeypatch.setattr(code_dataset, "tokenize_dataset", no_tokenizing)
    again, _ = _served(make_code_dataset(model_dir, image_fn, batch_size=32))
    np.testing.assert_array_equal(again, targets)
    # Training order: a seeded shuffle of the same grids, full batches only.
    shuffled, _ = _served(make_code_dataset(model_dir, image_fn, batch_size=32, training=True,
                                            repeat=False, seed=3))
    assert shuffled.shape == (448, 4, 4, 1)
    assert not np.array_equal(shuffled[..., 0], expected[:448])
    served = collections.Counter(g.tobytes() for g in shuffled[..., 0])
    assert not served - collections.Counter(g.tobytes() for g in expected)
    assert _cache_files(model_dir) == files


def test_a_new_checkpoint_is_tokenized_into_a_new_cache_file(first_stage, tmp_path):
    model_dir = str(tmp_path / "first_stage")
    shutil.copytree(first_stage[0], model_dir)
    image_fn = functools.partial(_images, CELEBA, SPLIT)
    old, _ = _served(make_code_dataset(model_dir, image_fn, batch_size=64))
    old_files = _cache_files(model_dir)
    trainer = _first_stage_trainer(model_dir, 4)  # resumes at step 2, trains 2 more
    trainer.train()
    new, _ = _served(make_code_dataset(model_dir, image_fn, batch_size=64))
    new_files = _cache_files(model_dir)
    assert len(new_files) == len(old_files) + 1 and set(old_files) < set(new_files)
    expected, _ = _encode(trainer.model, CELEBA, SPLIT)
    np.testing.assert_array_equal(new[..., 0], expected)
    assert np.mean(new != old) > 0.05  # the new weights assign other codes
    # An explicit older checkpoint still serves its own (cached) codes.
    ckpt2 = os.path.join(model_dir, "checkpoints", "ckpt-2")
    pinned, _ = _served(make_code_dataset(model_dir, image_fn, batch_size=64, checkpoint=ckpt2))
    np.testing.assert_array_equal(pinned, old)


def test_class_conditional_codes_keep_their_labels(first_stage):
    model_dir, trainer = first_stage
    # CIFAR-10 images through the CelebA first stage: any RGB image has a code grid.
    image_fn = functools.partial(_images, CIFAR, "train[:64]", task="class_conditional")
    expected, _ = _encode(trainer.model, CIFAR, "train[:64]", task="class_conditional")
    with np.load(CIFAR) as raw:
        labels = raw["y"][:64].astype(np.int32)
    assert len(set(labels)) > 5
    ds, info = make_code_dataset(model_dir, image_fn, batch_size=16, with_info=True)
    targets, served_labels = _served(ds)
    np.testing.assert_array_equal(targets[..., 0], expected)
    np.testing.assert_array_equal(served_labels, labels)
    assert info.task == "class_conditional" and info.num_classes == 10
    # Shuffled for training: every grid still carries its own image's label.
    targets, served_labels = _served(make_code_dataset(
        model_dir, image_fn, batch_size=16, training=True, repeat=False, seed=5))
    assert not np.array_equal(served_labels, labels)
    pairs = collections.Counter((g.tobytes(), int(y)) for g, y in zip(targets[..., 0],
                                                                       served_labels))
    assert pairs == collections.Counter((g.tobytes(), int(y)) for g, y in zip(expected, labels))


def test_missing_first_stage_dir_is_named(tmp_path):
    missing = str(tmp_path / "no_first_stage")
    with pytest.raises(FileNotFoundError, match=re.escape(missing)):
        make_code_dataset(missing, functools.partial(_images, CELEBA, SPLIT))
