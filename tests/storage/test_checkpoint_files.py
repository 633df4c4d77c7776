"""Finding and reading checkpoints under real faults: "[" in folder names, missing, empty or
garbage state files, truncated and corrupted shards, files deleted mid-read, NaN weights.

Every fault is made on real TF checkpoint files (tf.train.CheckpointManager's own saves).
"""

import os

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.storage import checkpoint_files
from t2t_image.storage import run_guard


def _save(directory, values, manager_cls=tf.train.CheckpointManager, keep=5):
    """Saves ckpt-1.. with a variable holding each value; returns (variable, prefixes)."""
    variable = tf.Variable(tf.zeros([64]))
    manager = manager_cls(tf.train.Checkpoint(v=variable), str(directory), max_to_keep=keep,
                          checkpoint_name="ckpt")
    prefixes = []
    for i, value in enumerate(values, start=1):
        variable.assign(tf.fill([64], float(value)))
        prefixes.append(manager.save(checkpoint_number=i))
    return variable, prefixes


def _restore_into(variable):
    def restore(path):
        tf.train.Checkpoint(v=variable).read(path).assert_existing_objects_matched()
    return restore


def _truncate(path):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def test_bracket_folder_is_found_restored_and_swept(tmp_path):
    """runs/r[1]: TF's own readers find nothing there (they glob the name)."""
    directory = tmp_path / "lr[0.1]" / "checkpoints"
    variable, prefixes = _save(directory, [1, 2, 3, 4], run_guard.CheckpointManager, keep=2)
    assert tf.train.latest_checkpoint(str(directory)) is None  # the bug this guards against
    # The sweep deleted ckpt-1 and ckpt-2 (by listing, not globbing).
    assert sorted(os.listdir(directory)) == sorted(
        ["checkpoint"] + [f"ckpt-{i}.{e}" for i in (3, 4) for e in ("index",
                                                                     "data-00000-of-00001")])
    assert run_guard.latest_complete_checkpoint(str(directory)) == prefixes[-1]
    variable.assign(tf.zeros([64]))
    restored, skipped = checkpoint_files.restore_newest(_restore_into(variable), str(directory))
    assert restored == prefixes[-1] and not skipped
    assert float(variable[0]) == 4.0
    # A new manager on the same folder keeps counting from the state (not from scratch).
    manager = run_guard.CheckpointManager(tf.train.Checkpoint(v=variable), str(directory), 2,
                                          checkpoint_name="ckpt")
    assert manager.latest_checkpoint == prefixes[-1]


@pytest.mark.parametrize("damage", ["missing", "empty", "garbage"])
def test_unusable_state_file_is_recovered_from_the_files(tmp_path, damage):
    variable, prefixes = _save(tmp_path, [1, 2, 3])
    state = tmp_path / "checkpoint"
    if damage == "missing":
        state.unlink()
    else:
        state.write_text("" if damage == "empty" else "\x00garbage {{{ not a proto")
    manager = run_guard.CheckpointManager(tf.train.Checkpoint(v=variable), str(tmp_path), 5,
                                          checkpoint_name="ckpt")
    assert manager.latest_checkpoint == prefixes[-1]
    assert manager.checkpoints == prefixes
    order, notes = checkpoint_files.candidates(str(tmp_path))
    assert order == prefixes[::-1] and str(state) in notes[0]
    manager.save(checkpoint_number=4)  # rewrites a valid state listing all of them
    assert tf.train.get_checkpoint_state(str(tmp_path)).all_model_checkpoint_paths[-1] \
        .endswith("ckpt-4")


def test_state_naming_a_missing_checkpoint_falls_back(tmp_path):
    variable, prefixes = _save(tmp_path, [1, 2])
    (tmp_path / "checkpoint").write_text(
        'model_checkpoint_path: "ckpt-99"\nall_model_checkpoint_paths: "ckpt-99"\n')
    restored, _ = checkpoint_files.restore_newest(_restore_into(variable), str(tmp_path))
    assert restored == prefixes[-1] and float(variable[0]) == 2.0


@pytest.mark.parametrize("fault", ["truncated data", "flipped bytes", "truncated index"])
def test_unreadable_latest_falls_back_naming_the_file(tmp_path, fault, caplog):
    variable, prefixes = _save(tmp_path, [1, 2, 3])
    latest = prefixes[-1]
    data = latest + ".data-00000-of-00001"
    if fault == "truncated data":
        _truncate(data)
        bad_file = data
    elif fault == "flipped bytes":
        raw = bytearray(open(data, "rb").read())
        raw[len(raw) // 2] ^= 0xFF
        open(data, "wb").write(raw)
        bad_file = data
    else:
        _truncate(latest + ".index")
        bad_file = latest + ".index"
    variable.assign(tf.zeros([64]))
    restored, skipped = checkpoint_files.restore_newest(_restore_into(variable), str(tmp_path))
    assert restored == prefixes[1] and float(variable[0]) == 2.0
    if fault != "truncated index":  # an unreadable index is not a candidate at all
        assert list(skipped) == [latest] and skipped[latest].startswith(bad_file)
        assert bad_file in caplog.text
    # Every file unreadable: one error naming them.
    for prefix in prefixes[:2]:
        _truncate(prefix + ".data-00000-of-00001")
    with pytest.raises(checkpoint_files.CheckpointNotFoundError,
                       match=r"no restorable checkpoint.*ckpt-2\.data-00000-of-00001.*Found:"):
        checkpoint_files.restore_newest(_restore_into(variable), str(tmp_path))


def test_non_finite_checkpoint_is_not_restored(tmp_path):
    variable, prefixes = _save(tmp_path, [1, 2, np.nan])
    restored, skipped = checkpoint_files.restore_newest(
        _restore_into(variable), str(tmp_path), variables=[variable])
    assert restored == prefixes[1] and float(variable[0]) == 2.0
    assert "NaN or infinite" in skipped[prefixes[2]]
    with pytest.raises(run_guard.NonFiniteWeightsError, match=r"after step 7.*ckpt-3"):
        run_guard.check_finite_weights([variable.assign(tf.fill([64], np.inf))], 7,
                                       str(tmp_path))


def test_checkpoint_deleted_mid_read_retries_with_the_next_latest(tmp_path):
    """A live trainer's sweep deletes the checkpoint being read and writes a newer one."""
    variable, prefixes = _save(tmp_path, [1, 2, 3], run_guard.CheckpointManager, keep=3)
    writer = run_guard.CheckpointManager(tf.train.Checkpoint(v=tf.Variable(tf.fill([64], 4.0))),
                                         str(tmp_path), 3, checkpoint_name="ckpt")
    reads = []

    def restore(path):
        reads.append(os.path.basename(path))
        if len(reads) == 1:  # the trainer saves ckpt-4 and sweeps ckpt-3 right now
            writer.save(checkpoint_number=4)
            for name in os.listdir(tmp_path):
                if name.startswith("ckpt-3."):
                    os.remove(tmp_path / name)
        tf.train.Checkpoint(v=variable).read(path).assert_existing_objects_matched()

    restored, skipped = checkpoint_files.restore_newest(restore, str(tmp_path))
    assert reads == ["ckpt-3", "ckpt-4"] and restored == str(tmp_path / "ckpt-4")
    assert float(variable[0]) == 4.0 and "deleted while being read" in skipped[prefixes[2]]


def test_empty_folder_restores_nothing_and_fingerprints_follow_content(tmp_path):
    assert checkpoint_files.restore_newest(lambda p: None, str(tmp_path / "none")) == (None, {})
    _, prefixes = _save(tmp_path / "a", [1, 2])
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in os.listdir(tmp_path / "a"):
        if name.startswith("ckpt-1."):
            (copy / name.replace("ckpt-1", "ckpt-7")).write_bytes((tmp_path / "a" / name)
                                                                  .read_bytes())
    assert checkpoint_files.fingerprint(str(copy / "ckpt-7")) == \
        checkpoint_files.fingerprint(prefixes[0])
    assert checkpoint_files.fingerprint(prefixes[0]) != checkpoint_files.fingerprint(prefixes[1])
