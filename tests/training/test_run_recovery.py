"""A Trainer resuming, evaluating and failing under real checkpoint faults (issue 16).

Tiny models on real CIFAR-10 images (tests/training/test_trainer.py's ``_trainer``); the
faults are made on the checkpoint files the trainer itself wrote.
"""

import functools
import json
import logging
import os

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.storage import run_guard
from t2t_image.training.trainer import NonFiniteLossError
from tests.training.test_trainer import _dataset
from tests.training.test_trainer import _trainer


@pytest.fixture
def npz(shared_data):
    return shared_data / "cifar10" / "cifar10_train_exact.npz"


def _all_tensors_finite(prefix):
    reader = tf.train.load_checkpoint(prefix)
    return all(np.all(np.isfinite(reader.get_tensor(name)))
               for name, dtype in reader.get_variable_to_dtype_map().items()
               if dtype.is_floating)


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def test_exploding_weights_are_never_saved_and_the_stop_names_the_last_finite(tmp_path, npz):
    """learning_rate=1e40: the step's loss (computed before the update) is finite, the
    weights after it are not; the checkpoint of that step must not be written."""
    _trainer(tmp_path, npz, num_train_steps=2, checkpoint_every=2).train()
    ckpt_dir = tmp_path / "checkpoints"
    exploding = _trainer(tmp_path, npz, num_train_steps=6, checkpoint_every=1,
                         learning_rate=1e40)
    with pytest.raises((run_guard.NonFiniteWeightsError, NonFiniteLossError)) as err:
        exploding.train()
    assert f"{ckpt_dir}/ckpt-2" in str(err.value)
    assert run_guard.latest_complete_checkpoint(str(ckpt_dir)) == f"{ckpt_dir}/ckpt-2"
    saved = [n[:-6] for n in os.listdir(ckpt_dir) if n.endswith(".index")]
    assert saved == ["ckpt-2"]
    assert _all_tensors_finite(str(ckpt_dir / "ckpt-2"))


def test_truncated_latest_checkpoint_falls_back_for_resume_and_eval(tmp_path, npz, caplog):
    caplog.set_level(logging.INFO, logger="absl")
    _trainer(tmp_path, npz, num_train_steps=6, checkpoint_every=3).train()
    ckpt_dir = tmp_path / "checkpoints"
    _truncate(ckpt_dir / "ckpt-6.data-00000-of-00001")
    evaluator = _trainer(tmp_path, npz)
    results = evaluator.evaluate()
    assert results["step"] == 3 and results["checkpoint"] == f"{ckpt_dir}/ckpt-3"
    assert f"{ckpt_dir}/ckpt-6.data-00000-of-00001" in caplog.text
    resumed = _trainer(tmp_path, npz, num_train_steps=6, checkpoint_every=3)
    resumed.train()
    assert f"Restored {ckpt_dir}/ckpt-3 at step 3" in caplog.text
    assert int(resumed.step.numpy()) == 6
    assert _all_tensors_finite(str(ckpt_dir / "ckpt-6"))  # rewritten whole


def test_eval_of_a_model_dir_without_checkpoints_refuses(tmp_path, npz):
    empty = _trainer(tmp_path / "typo", npz)
    with pytest.raises(run_guard.CheckpointNotFoundError, match="no checkpoint to evaluate"):
        empty.evaluate()
    assert not (tmp_path / "typo" / "eval_results.json").exists()


def test_resume_after_the_state_file_is_lost_continues(tmp_path, npz, caplog):
    """Missing, empty or garbage state file: TF's manager started over (or raised)."""
    _trainer(tmp_path, npz, num_train_steps=4, checkpoint_every=2).train()
    state = tmp_path / "checkpoints" / "checkpoint"
    good = state.read_bytes()
    for damage in ("missing", "empty", "garbage"):
        if damage == "missing":
            state.unlink()
        else:
            state.write_text("" if damage == "empty" else "garbage {")
        resumed = _trainer(tmp_path, npz, num_train_steps=6, checkpoint_every=2)
        if damage == "garbage":  # the whole resume, up to the rewritten state
            resumed.train()
            assert int(resumed.step.numpy()) == 6
            assert run_guard.latest_complete_checkpoint(str(state.parent)).endswith("ckpt-6")
        else:
            assert resumed.restore() == f"{tmp_path}/checkpoints/ckpt-4"
            assert int(resumed.step.numpy()) == 4
            state.write_bytes(good)
        assert "recovered the checkpoint list from the files" in caplog.text
        caplog.clear()


def test_every_checkpoint_unreadable_refuses_to_start_over(tmp_path, npz):
    _trainer(tmp_path, npz, num_train_steps=4, checkpoint_every=2).train()
    for step in (2, 4):
        _truncate(tmp_path / "checkpoints" / f"ckpt-{step}.data-00000-of-00001")
    with pytest.raises(run_guard.CheckpointNotFoundError, match="ckpt-4.data.*ckpt-2.data"):
        _trainer(tmp_path, npz, num_train_steps=6).train()


def _with_batch_size(trainer, npz, batch_size, split="train[:64]"):
    trainer.train_dataset_fn = functools.partial(_dataset, npz, split, True,
                                                 batch_size=batch_size)
    return trainer


def test_resume_with_another_batch_size_precision_or_dataset(tmp_path, npz, caplog):
    _trainer(tmp_path, npz, num_train_steps=2, checkpoint_every=2).train()
    assert json.loads((tmp_path / run_guard.RUN_SETTINGS_NAME).read_text())["batch_size"] == 4
    # Batch size 4 -> 8 and another split: the data iterator is rebuilt (its saved state
    # holds 4-image batches of the other split), and the run says so; float32 ->
    # mixed_bfloat16: the float32 variables are restored as they are.
    changed = _with_batch_size(_trainer(tmp_path, npz, num_train_steps=3,
                                        precision="mixed_bfloat16"), npz, 8, "train[64:128]")
    changed.train()
    assert int(changed.step.numpy()) == 3
    assert "batch_size=8; its checkpoints were trained with 4" in caplog.text
    assert "precision='mixed_bfloat16'; its checkpoints were trained with 'float32'" \
        in caplog.text
    assert "dataset=" in caplog.text and "train[64:128]" in caplog.text
    # To mixed_float16 and back: Adam's state is carried into and out of the loss-scale
    # optimizer that wraps it (the loss scale starts afresh).
    reader = tf.train.load_checkpoint(str(tmp_path / "checkpoints" / "ckpt-3"))
    moments = sorted(n for n in reader.get_variable_to_shape_map()
                     if n.startswith("optimizer/_variables/"))
    f16 = _with_batch_size(_trainer(tmp_path, npz, num_train_steps=4,
                                    precision="mixed_float16"), npz, 8, "train[64:128]")
    f16.build()
    assert f16.restore(saved_optimizer=f16._resume_plan()[1]).endswith("ckpt-3")
    inner = f16.optimizer.inner_optimizer.variables
    assert len(moments) == len(inner) - 1  # + the iteration counter
    for name in moments:
        np.testing.assert_array_equal(np.asarray(inner[int(name.split("/")[2])]),
                                      reader.get_tensor(name))
    f16.train()
    assert int(f16.step.numpy()) == 4
    back = _with_batch_size(_trainer(tmp_path, npz, num_train_steps=5), npz, 8, "train[64:128]")
    back.train()
    assert int(back.step.numpy()) == 5 and "precision='float32'" in caplog.text
