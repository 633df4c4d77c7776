"""The .npz checkpoints of the JAX trainer, read by every tool: damaged, crafted and
non-finite files are refused by name and readers fall back to the next newest (issue 24).

The files are real ``write_checkpoint`` output, then damaged the way a disk, a NaN step or
an attacker would: emptied, truncated, NaN-filled, or rewritten with a non-scalar step, a
deeply nested or huge data-iterator state, stray or object arrays.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from t2t_image.storage import npz_checkpoints
from t2t_image.storage.checkpoint_files import CheckpointMismatchError
from t2t_image.storage.checkpoint_files import CheckpointNotFoundError
from t2t_image.storage.model_loading import load_model
from t2t_image.storage.npz_checkpoints import UnreadableCheckpointError
from tests.storage.test_model_loading import tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _arrays(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def _rewrite(path, **changes):
    arrays = _arrays(path)
    arrays.update(changes)
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def _run(tmp_path, steps=8):
    """model_config.json and checkpoints/ckpt-1..N.npz of a tiny model, weights + step."""
    model = tiny()
    (tmp_path / "model_config.json").write_text(
        json.dumps(keras.saving.serialize_keras_object(model)))
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    weights = {}
    for step in range(1, steps + 1):
        values = [np.asarray(w) + 0.01 * step for w in model.weights]
        npz_checkpoints.write_checkpoint(str(folder / f"ckpt-{step}.npz"), values, values[:2],
                                         step, {"epoch": 0, "position": 4 * step})
        weights[step] = values
    return model, folder, weights


DAMAGE = {  # what is done to a file -> what the refusal names
    "nan": ("NaN or infinite values in 1 of its arrays",
            lambda p: _rewrite(p, **{"model/000001": np.full_like(_arrays(p)["model/000001"],
                                                                  np.nan)})),
    "inf_optimizer": ("NaN or infinite values in 1 of its arrays",
                      lambda p: _rewrite(p, **{"optimizer/000000": np.full_like(
                          _arrays(p)["optimizer/000000"], np.inf)})),
    "empty": ("the file is empty (0 bytes)", lambda p: open(p, "wb").close()),
    "truncated": ("cannot read the checkpoint",
                  lambda p: open(p, "r+b").truncate(os.path.getsize(p) // 2)),
    "step_vector": ("'step' must be a scalar", lambda p: _rewrite(p, step=np.arange(3))),
    "step_float": ("'step' must be a scalar", lambda p: _rewrite(p, step=np.float64(3.5))),
    "negative_step": ("its step is -4", lambda p: _rewrite(p, step=np.int64(-4))),
    "deep_state": ("nested too deeply",
                   lambda p: _rewrite(p, data_iterator=np.asarray("[" * 100_000 + "]" * 100_000))),
    "huge_state": ("characters (at most 1048576)",
                   lambda p: _rewrite(p, data_iterator=np.asarray(json.dumps("x" * 2_000_000)))),
    "bad_json": ("data-iterator state is not JSON",
                 lambda p: _rewrite(p, data_iterator=np.asarray("{epoch"))),
    "stray_array": ("unexpected arrays ['extra']", lambda p: _rewrite(p, extra=np.zeros(2))),
    "gap": ("its model arrays are not numbered 0..",
            lambda p: _rewrite(p, **{"model/000099": np.zeros(2)})),
    "strings": ("it holds arrays of dtype <U1",
                lambda p: _rewrite(p, **{"model/000000": np.asarray(["a"])})),
    "object": ("Object arrays cannot be loaded",
               lambda p: _rewrite(p, **{"model/000000": np.asarray([{}, 1], dtype=object)})),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_every_damaged_or_crafted_file_is_refused_naming_it(tmp_path, damage):
    _, folder, _ = _run(tmp_path, steps=1)
    path = str(folder / "ckpt-1.npz")
    reason, apply = DAMAGE[damage]
    apply(path)
    with pytest.raises(UnreadableCheckpointError) as error:
        npz_checkpoints.read_checkpoint(path)
    assert path in str(error.value) and reason in str(error.value), str(error.value)[:500]


def test_readers_fall_back_past_damaged_newest_files_and_never_start_over(tmp_path, caplog):
    """Issue 24: a NaN-filled newest ckpt-N.npz gave all-zero samples, NaN bits/dim and a NaN
    export; a 0-byte one a raw EOFError; crafted ones ValueError/RecursionError/TypeError."""
    model, folder, weights = _run(tmp_path)
    damaged = ["nan", "empty", "deep_state", "step_vector", "truncated", "stray_array"]
    for step, damage in zip(range(8, 2, -1), damaged):  # ckpt-8 .. ckpt-3
        DAMAGE[damage][1](str(folder / f"ckpt-{step}.npz"))
    with caplog.at_level(logging.WARNING):
        loaded, source = load_model(str(tmp_path))  # the sampler's and exporter's reader
    assert source == str(folder / "ckpt-2.npz")
    for got, want in zip(loaded.weights, weights[2]):
        np.testing.assert_array_equal(np.asarray(got), want)
    for step in range(3, 9):
        assert f"{folder}/ckpt-{step}.npz" in caplog.text
    # What a restart or an error message calls the latest: the newest usable one.
    manager = npz_checkpoints.NpzCheckpointManager(str(folder), 5, None)
    assert manager.latest_checkpoint == str(folder / "ckpt-2.npz")
    # With every file damaged: a named error listing each, never fresh weights.
    for step in (1, 2):
        DAMAGE["nan"][1](str(folder / f"ckpt-{step}.npz"))
    with pytest.raises(CheckpointNotFoundError, match=f"no restorable checkpoint in {folder}: "):
        load_model(str(tmp_path))
    assert manager.latest_checkpoint is None
    # An explicit --checkpoint is read exactly, or refused: no fallback to another step.
    with pytest.raises(CheckpointNotFoundError, match="ckpt-7.npz: the file is empty"):
        load_model(str(tmp_path), str(folder / "ckpt-7.npz"))


def test_a_checkpoint_of_another_architecture_is_not_skipped(tmp_path):
    _, folder, _ = _run(tmp_path, steps=2)
    wide = tiny(hidden_size=16)
    (tmp_path / "model_config.json").write_text(
        json.dumps(keras.saving.serialize_keras_object(wide)))
    with pytest.raises(CheckpointMismatchError, match=f"{folder}/ckpt-2.npz holds model weight"):
        load_model(str(tmp_path))


KILLED_SAVE = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    from t2t_image.storage import npz_checkpoints

    folder, when = sys.argv[1], sys.argv[2]
    replace = os.replace

    def killed_at_the_rename(src, dst):  # the injected fault: SIGKILL at the rename
        if when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        replace(src, dst)
        os.kill(os.getpid(), signal.SIGKILL)

    for step in (1, 2, 3):
        weights = [np.full((3, 2), step, np.float32)]
        manager = npz_checkpoints.NpzCheckpointManager(folder, 2, lambda: (weights, [], None))
        if step == 3:
            os.replace = killed_at_the_rename
        manager.save(step)
""")


@pytest.mark.parametrize("when", ["before", "after"])
def test_sigkill_at_the_rename_of_a_save_leaves_only_complete_checkpoints(tmp_path, when):
    folder = tmp_path / "checkpoints"
    # (the numpy backend: the child needs no TensorFlow to write these files)
    env = dict(os.environ, PYTHONPATH=REPO, KERAS_BACKEND="numpy")
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(folder), when], env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr[-2000:]
    names = sorted(os.listdir(folder))
    if when == "before":  # the new file under its temporary name only
        assert names[:2] == ["ckpt-1.npz", "ckpt-2.npz"] and len(names) == 3
        assert ".npz.tmp-" in names[2]
        assert npz_checkpoints.newest_readable(str(folder)) == str(folder / "ckpt-2.npz")
    else:  # renamed whole, the sweep of ckpt-1 not reached
        assert names == ["ckpt-1.npz", "ckpt-2.npz", "ckpt-3.npz"]
    for name in names:
        if name.endswith(".npz"):
            weights, _, step, _ = npz_checkpoints.read_checkpoint(str(folder / name))
            np.testing.assert_array_equal(weights[0], np.full((3, 2), step, np.float32))
    # The next start removes the leftover, and the next save sweeps as usual.
    npz_checkpoints.remove_partial_checkpoints(str(folder))
    weights = [np.full((3, 2), 4, np.float32)]
    npz_checkpoints.NpzCheckpointManager(str(folder), 2, lambda: (weights, [], None)).save(4)
    assert sorted(os.listdir(folder)) == (["ckpt-2.npz", "ckpt-4.npz"] if when == "before"
                                          else ["ckpt-3.npz", "ckpt-4.npz"])
