"""Fault injection: a trainer SIGKILLed at random points, checkpoint writes included.

Real faults on real processes: ``t2t-image-trainer`` (gin/tiny.gin, real CIFAR-10
images) is SIGKILLed again and again, sometimes the moment a checkpoint write
starts (TF's ``.tempstate`` file appears), sometimes after a random delay; each
time the same command is started again. The disk faults are in
tests/cli/test_trainer_faults.py, which reuses the helpers here.

To keep the test short, each run is the bin launcher's code
(``from t2t_image.cli.trainer import run; run()``, the same flags) in a process
that imported TensorFlow while the previous run was still going and starts
when told to ("warm"); nothing of a run is shared with the next but model_dir.
"""

import os
import random
import re
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.storage import run_guard
from tests.cli.test_trainer_cli import REPO
from tests.cli.test_trainer_cli import trainer as trainer_command
from tests.training.test_trainer import _trainer

NO_EVAL = "--gin_param=t2t_image.Trainer.eval_dataset_fn=None"


def gin_params(**bindings):
    """``--gin_param`` flags binding ``t2t_image.Trainer.<name> = <value>``."""
    return [f"--gin_param=t2t_image.Trainer.{k}={v}" for k, v in bindings.items()]


def start(model_dir, log_path, *args, steps, wrapper=()):
    """Starts the trainer CLI (gin/tiny.gin, no evaluation) on model_dir, output to log_path.

    ``wrapper``: a command prefix (e.g. strace and its options).
    """
    cmd, env = trainer_command(model_dir, NO_EVAL, *args, steps=steps)
    log = open(log_path, "w")
    try:
        return subprocess.Popen([*wrapper, *cmd], cwd=REPO, env=env, stdout=log,
                                stderr=subprocess.STDOUT)
    finally:
        log.close()  # the child keeps its own descriptor


# bin/t2t-image-trainer's code, run when "go" arrives on stdin (the imports come first).
WARM_LAUNCHER = (
    "import sys\n"
    "import tensorflow, keras, t2t_image.configurables\n"
    "if sys.stdin.readline() != 'go\\n':\n"
    "    sys.exit('not started')\n"
    "from t2t_image.cli.trainer import run\n"
    "run()\n"
)


def start_warm(model_dir, log_path, *args, steps):
    """Like ``start``, but the process waits (TF imported) until ``go(process)``."""
    cmd, env = trainer_command(model_dir, NO_EVAL, *args, steps=steps)
    assert cmd[1:3] == ["-m", "t2t_image.cli.trainer"]
    log = open(log_path, "w")
    try:
        return subprocess.Popen([sys.executable, "-c", WARM_LAUNCHER, *cmd[3:]], cwd=REPO,
                                env=env, stdin=subprocess.PIPE, stdout=log,
                                stderr=subprocess.STDOUT)
    finally:
        log.close()


def go(proc):
    proc.stdin.write(b"go\n")
    proc.stdin.close()


def checkpoint_state(ckpt_dir):
    """(latest prefix, listed prefixes) from ckpt_dir's ``checkpoint`` state file, or (None, [])."""
    state = tf.train.get_checkpoint_state(str(ckpt_dir))
    if state is None:
        return None, []
    return state.model_checkpoint_path, list(state.all_model_checkpoint_paths)


def step_of(prefix):
    return None if prefix is None else int(prefix.rsplit("-", 1)[1])


def read_checkpoint(prefix):
    """Reads every tensor of a checkpoint (data included); returns the numeric ones by name.

    Raises if the index or any value cannot be read, so it is also the
    "is this checkpoint loadable" check.
    """
    reader = tf.train.load_checkpoint(prefix)
    values = {}
    for name, dtype in reader.get_variable_to_dtype_map().items():
        if dtype == tf.variant:  # the data iterator's state: read it, keep nothing
            tf.raw_ops.RestoreV2(prefix=prefix, tensor_names=[name], shape_and_slices=[""],
                                 dtypes=[dtype])
        elif dtype != tf.string:
            values[name] = reader.get_tensor(name)
    return values


def assert_listed_checkpoints_loadable(ckpt_dir, context):
    """Every checkpoint the state file names (latest included) reads whole; returns the state."""
    latest, listed = checkpoint_state(ckpt_dir)
    for prefix in listed + ([latest] if latest else []):
        try:
            read_checkpoint(prefix)
        except (tf.errors.OpError, ValueError) as e:
            pytest.fail(f"{context}: the state file names {prefix}, which cannot be read: {e}")
    return latest, listed


def restored_step(log_text):
    """The step a run says it restored (``Restored <path> at step N.``), or None."""
    match = re.search(r"Restored (\S+) at step (\d+)\.", log_text)
    return None if match is None else (match.group(1), int(match.group(2)))


def tempstate_files(ckpt_dir):
    """Names of the ``.tempstate`` files TF writes a checkpoint's data into (then renames)."""
    names = set()
    try:
        entries = os.listdir(ckpt_dir)
    except FileNotFoundError:
        return names
    for entry in entries:
        if entry.endswith("_temp"):
            try:
                names.update(f"{entry}/{n}" for n in os.listdir(os.path.join(ckpt_dir, entry))
                             if ".tempstate" in n)
            except FileNotFoundError:
                pass
    return names


def kill_during_run(proc, ckpt_dir, kind, value, deadline):
    """SIGKILLs proc: at its ``value``-th checkpoint write ("write"), or ``value`` seconds
    after its first one starts ("random"). Returns a description of the kill."""
    seen = tempstate_files(ckpt_dir)  # leftovers of earlier killed runs
    writes, first_write = 0, None
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"the trainer exited (rc {proc.returncode}) before the {kind} kill; "
                        "raise num_train_steps")
        now_names = tempstate_files(ckpt_dir)
        if now_names - seen:  # a checkpoint file is being written right now
            writes += 1
            first_write = first_write or time.time()
            if kind == "write" and writes == value:
                proc.send_signal(signal.SIGKILL)
                return f"during checkpoint write {writes}"
        seen |= now_names
        if kind == "random" and first_write and time.time() - first_write >= value:
            proc.send_signal(signal.SIGKILL)
            return f"{value:.2f} s after the first checkpoint write"
        time.sleep(0.001)
    pytest.fail(f"no kill point ({kind}, {value}) was reached in time")


@pytest.fixture
def npz(shared_data):
    return shared_data / "cifar10" / "cifar10_train_exact.npz"


def test_repeated_kills_resume_from_the_latest_complete_checkpoint_and_match(tmp_path,
                                                                             shared_data):
    """SIGKILL 4 times (2 during checkpoint writes, 2 at random times), restart each time:
    each restart resumes from the state file's latest checkpoint, every listed checkpoint
    stays loadable, and after 24 steps every variable equals an uninterrupted run's."""
    steps, rng = 24, random.Random(8)
    kills = ([("write", rng.randint(1, 3)) for _ in range(2)]
             + [("random", rng.uniform(0.0, 0.6)) for _ in range(2)])
    rng.shuffle(kills)
    # The uninterrupted reference runs beside the killed runs (checkpointing only at the end).
    reference = start(tmp_path / "reference", tmp_path / "reference.log",
                      *gin_params(checkpoint_every=steps), steps=steps)
    model_dir = tmp_path / "killed"
    ckpt_dir = str(model_dir / "checkpoints")
    args = gin_params(checkpoint_every=1, keep_checkpoints=3)  # many writes and deletions
    latest_step, history, procs = None, [], []
    try:
        procs.append(start_warm(model_dir, tmp_path / "run0.log", *args, steps=steps))
        go(procs[0])
        for i, (kind, value) in enumerate(kills):
            proc = procs[-1]
            name = "final" if i == len(kills) - 1 else f"run{i + 1}"
            procs.append(start_warm(model_dir, tmp_path / f"{name}.log", *args, steps=steps))
            try:
                how = kill_during_run(proc, ckpt_dir, kind, value, time.time() + 120)
            finally:
                proc.kill()
                proc.wait()
            log = (tmp_path / f"run{i}.log").read_text()
            # This run resumed from the latest checkpoint the previous kill left, if any.
            expected = None if latest_step is None else (f"{ckpt_dir}/ckpt-{latest_step}",
                                                         latest_step)
            assert restored_step(log) == expected, (i, how, log[-2000:])
            latest, listed = assert_listed_checkpoints_loadable(ckpt_dir, f"kill {i} ({how})")
            assert latest is None or latest == listed[-1]
            assert latest is None or step_of(latest) >= (latest_step or 0)
            latest_step = step_of(latest)
            leftovers = sorted(n for n in os.listdir(ckpt_dir) if n.endswith("_temp"))
            history.append((how, latest_step, [step_of(p) for p in listed], leftovers))
            go(procs[-1])  # the same command again
        assert procs[-1].wait(timeout=180) == 0, (tmp_path / "final.log").read_text()[-3000:]
        assert reference.wait(timeout=180) == 0, (tmp_path / "reference.log").read_text()[-3000:]
    finally:
        for proc in procs + [reference]:
            proc.kill()
            proc.wait()
    log = (tmp_path / "final.log").read_text()
    assert restored_step(log) == (f"{ckpt_dir}/ckpt-{latest_step}", latest_step), history
    assert 0 < latest_step < steps, history  # the kills did interrupt the run
    # Only the kept checkpoints remain: the partial files of killed saves were removed.
    kept = [f"ckpt-{s}{ext}" for s in range(steps - 2, steps + 1)
            for ext in (".index", ".data-00000-of-00001")]
    assert sorted(os.listdir(ckpt_dir)) == sorted(kept + ["checkpoint"]), history
    resumed = read_checkpoint(f"{ckpt_dir}/ckpt-{steps}")
    straight = read_checkpoint(str(tmp_path / "reference" / "checkpoints" / f"ckpt-{steps}"))
    assert resumed.keys() == straight.keys()
    assert int(resumed["step/.ATTRIBUTES/VARIABLE_VALUE"]) == steps
    del resumed["save_counter/.ATTRIBUTES/VARIABLE_VALUE"]  # counts saves, not training
    for name in resumed:
        np.testing.assert_allclose(resumed[name], straight[name], rtol=1e-5, atol=1e-7,
                                   err_msg=f"{name} after kills {history}")


def test_model_config_write_that_fails_midway_keeps_the_previous_config(tmp_path, npz):
    """A file-size limit (RLIMIT_FSIZE, a real EFBIG) hits write_model_config halfway:
    the old model_config.json must stay whole, or no later run could resume."""
    trainer = _trainer(tmp_path, npz)
    trainer.build()
    run_guard.write_model_config(str(tmp_path), trainer.model)
    path = tmp_path / run_guard.MODEL_CONFIG_NAME
    before = path.read_bytes()
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (len(before) // 2, hard))  # Python ignores SIGXFSZ
    try:
        with pytest.raises((OSError, tf.errors.OpError), match="File too large"):
            run_guard.write_model_config(str(tmp_path), trainer.model)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path).count(run_guard.MODEL_CONFIG_NAME) == 1
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]  # no temporary file left
    assert run_guard.check_model_config(str(tmp_path), trainer.model) == str(path)


def test_checkpoint_manager_ignores_listed_checkpoints_with_missing_files(tmp_path):
    """A state file written by TF's own manager can name a checkpoint a killed sweep
    half-deleted (reproduced in tests/cli/test_trainer_faults.py): run_guard's manager
    drops it when opened, and falls back from a broken latest to the newest complete one."""
    variable = tf.Variable(0.0)
    ckpt = tf.train.Checkpoint(v=variable)
    tf_manager = tf.train.CheckpointManager(ckpt, str(tmp_path), max_to_keep=3)
    for i in (1, 2, 3):
        variable.assign(float(i))
        tf_manager.save(checkpoint_number=i)
    prefix = str(tmp_path / "ckpt")
    os.remove(f"{prefix}-1.index")  # what a kill between TF's two unlinks leaves
    manager = run_guard.CheckpointManager(ckpt, str(tmp_path), max_to_keep=3)
    assert manager.checkpoints == [f"{prefix}-2", f"{prefix}-3"]
    assert manager.latest_checkpoint == f"{prefix}-3"
    os.remove(f"{prefix}-3.data-00000-of-00001")
    manager = run_guard.CheckpointManager(ckpt, str(tmp_path), max_to_keep=3)
    assert manager.checkpoints == [f"{prefix}-2"]
    assert manager.latest_checkpoint == f"{prefix}-2"
    ckpt.restore(manager.latest_checkpoint)
    assert float(variable.numpy()) == 2.0
    manager.save(checkpoint_number=4)
    assert checkpoint_state(str(tmp_path)) == (f"{prefix}-4", [f"{prefix}-2", f"{prefix}-4"])
