"""model_dir guards: one live trainer, stale locks, architecture drift, unwritable disk."""

import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from t2t_image.storage import run_guard
from tests.training.test_trainer import _trainer

HOLD_LOCK = (
    "import sys, time\n"
    "from t2t_image.storage.run_guard import ModelDirLock\n"
    "lock = ModelDirLock(sys.argv[1]).acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(120)\n"
)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def npz(shared_data):
    return shared_data / "cifar10" / "cifar10_train_exact.npz"


def test_live_lock_refuses_and_killed_holder_does_not_block(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(tmp_path)],
                              stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=REPO))
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(run_guard.ModelDirLockedError, match=f"pid {holder.pid}"):
            run_guard.ModelDirLock(str(tmp_path)).acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    finally:
        holder.kill()
    lock = run_guard.ModelDirLock(str(tmp_path)).acquire()  # the stale lock file is fine
    assert f"pid {os.getpid()}" in open(lock.path).read()
    lock.release()


def test_second_trainer_on_a_held_model_dir_refuses(tmp_path, npz):
    first = _trainer(tmp_path, npz)
    first.acquire_lock()
    try:
        with pytest.raises(run_guard.ModelDirLockedError, match="another trainer"):
            _trainer(tmp_path, npz).train()
    finally:
        first.release_lock()


def test_architecture_drift_is_refused_and_harmless_changes_allowed(tmp_path, npz):
    _trainer(tmp_path, npz, num_train_steps=2).train()
    # More steps, another learning rate: fine.
    _trainer(tmp_path, npz, num_train_steps=3, learning_rate=0.1).train()
    drifted = _trainer(tmp_path, npz)
    base_fn = drifted.model_fn
    drifted.model_fn = lambda **kw: base_fn(**dict(kw, hidden_size=32, num_heads=4))
    with pytest.raises(ValueError, match=r"hidden_size: 16 in the model_dir, 32 now; "
                                         r"num_heads: 2 in the model_dir, 4 now"):
        drifted.build()
    dropout = _trainer(tmp_path, npz, num_train_steps=4)
    dropout.model_fn = lambda **kw: base_fn(**dict(kw, layer_prepostprocess_dropout=0.2))
    dropout.train()
    assert int(dropout.step.numpy()) == 4


def test_unwritable_checkpoint_dir_fails_clearly_and_keeps_earlier_checkpoints(tmp_path, npz,
                                                                              monkeypatch):
    trainer = _trainer(tmp_path, npz, num_train_steps=6, checkpoint_every=2)
    trainer.build()
    real_save = trainer.manager.save

    def failing_save(checkpoint_number=None):
        if checkpoint_number >= 4:
            raise tf.errors.PermissionDeniedError(None, None, "disk is read-only")
        return real_save(checkpoint_number=checkpoint_number)

    monkeypatch.setattr(trainer.manager, "save", failing_save)
    with pytest.raises(RuntimeError, match="checkpoint of step 4.*ckpt-2"):
        trainer.train()
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-2")
