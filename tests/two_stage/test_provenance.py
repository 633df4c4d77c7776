"""Two-stage provenance (issue 16.4): a prior decodes with exactly the first-stage checkpoint
its codes came from, and the code cache is keyed on the data's content.

A tiny first stage and prior really trained on CelebA faces; the first stage then trains on
(new weights under the same directory), its old checkpoint is deleted, the data file is
overwritten in place: each is a fault the tools used to miss silently.
"""

import functools
import json
import os

import numpy as np
import pytest

from t2t_image.data import make_dataset
from t2t_image.models import ImageTransformer
from t2t_image.storage import run_guard
from t2t_image.storage.model_loading import load_model
from t2t_image.storage.model_loading import load_model_and_first_stage
from t2t_image.training.trainer import Trainer
from t2t_image.two_stage import make_code_dataset
from tests.conftest import SHARED_DATA
from tests.two_stage.test_code_dataset import CELEBA
from tests.two_stage.test_code_dataset import _cache_files
from tests.two_stage.test_code_dataset import _first_stage_trainer
from tests.two_stage.test_code_dataset import _images


@pytest.fixture(autouse=True)
def _needs_shared_data(shared_data):
    return shared_data


def _prior_trainer(model_dir, first_stage_dir, num_train_steps):
    model_fn = functools.partial(
        ImageTransformer, image_height=4, image_width=4, num_channels=1, vocab_size=32,
        hidden_size=16, filter_size=16, num_heads=2, num_decoder_layers=1, block_length=8,
        layer_prepostprocess_dropout=0.0)
    data_fn = functools.partial(make_code_dataset, str(first_stage_dir),
                                functools.partial(_images, CELEBA, "train[:64]"),
                                batch_size=8, training=True, seed=0)
    return Trainer(str(model_dir), model_fn, data_fn, num_train_steps=num_train_steps,
                   learning_rate=0.2, warmup_steps=10, log_every=100, checkpoint_every=2)


def _weights_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(a.get_weights(), b.get_weights()))


def test_prior_uses_exactly_its_first_stage_checkpoint(tmp_path):
    first_dir, prior_dir = tmp_path / "first", tmp_path / "prior"
    _first_stage_trainer(first_dir, 2).train()
    _prior_trainer(prior_dir, first_dir, 2).train()
    record = json.loads((prior_dir / "first_stage.json").read_text())
    ckpt2 = str(first_dir / "checkpoints" / "ckpt-2")
    assert record["checkpoint"] == ckpt2 and record["step"] == 2
    assert record["fingerprint"].startswith("sha256:")
    # The first stage trains on: its latest is now ckpt-4, with other weights.
    _first_stage_trainer(first_dir, 4).train()
    _, _, first_stage, _ = load_model_and_first_stage(str(prior_dir))
    assert _weights_equal(first_stage, load_model(str(first_dir), ckpt2)[0])
    assert not _weights_equal(first_stage, load_model(str(first_dir))[0])
    # Resuming the prior would re-tokenize with ckpt-4: refused, naming both checkpoints.
    with pytest.raises(run_guard.CheckpointMismatchError,
                       match=r"codes of the first stage .*ckpt-2 \(step 2.*tokenizes with "
                             r".*ckpt-4 \(step 4"):
        _prior_trainer(prior_dir, first_dir, 4).train()
    # ckpt-2 deleted (or replaced): the sampler and exporter refuse, naming both.
    for name in os.listdir(first_dir / "checkpoints"):
        if name.startswith("ckpt-2."):
            os.remove(first_dir / "checkpoints" / name)
    with pytest.raises(run_guard.CheckpointMismatchError,
                       match=r"ckpt-2 \(step 2, sha256:\w+\), which .* no longer holds; the "
                             r"latest there is .*ckpt-4 \(step 4"):
        load_model_and_first_stage(str(prior_dir))


def test_code_cache_is_keyed_on_the_data_content(tmp_path):
    """The npz is overwritten in place (same path, same split): the old cache must not serve."""
    first_dir = tmp_path / "first"
    _first_stage_trainer(first_dir, 2).train()
    data = tmp_path / "faces.npz"
    with np.load(CELEBA) as raw:
        faces = raw["x32"][:64]
    np.savez(data, x=faces)

    def codes():
        fn = functools.partial(make_dataset, "npz", "train", batch_size=16, image_size=8,
                               source_kwargs={"path": str(data)})
        return np.concatenate([b["targets"].numpy() for b in make_code_dataset(
            str(first_dir), fn, batch_size=64)])

    old = codes()
    assert codes().tobytes() == old.tobytes() and len(_cache_files(first_dir)) == 1
    np.savez(data, x=255 - faces)  # other images at the same path
    new = codes()
    assert len(_cache_files(first_dir)) == 2
    assert np.mean(new != old) > 0.05
