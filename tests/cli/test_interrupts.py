"""Real SIGINT/SIGTERM sent to real t2t-image-trainer and -sampler processes (gin/tiny.gin).

A stopped trainer must leave a complete checkpoint of the step it was on, exit 130
(SIGINT) or 143 (SIGTERM) with one line naming that checkpoint, remove its lock file,
and the same command must resume from that step to the weights of a run that was
never interrupted. The sampler stops with nothing written.
"""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.cli.test_trainer_cli import REPO
from tests.cli.test_trainer_faults import finish as stop
from tests.training.test_fault_injection import assert_listed_checkpoints_loadable
from tests.training.test_fault_injection import checkpoint_state
from tests.training.test_fault_injection import gin_params
from tests.training.test_fault_injection import read_checkpoint
from tests.training.test_fault_injection import restored_step
from tests.training.test_fault_injection import start
from tests.training.test_fault_injection import tempstate_files

STOPPED = re.compile(r"t2t-image-trainer: Stopped by (SIG\w+) at step (\d+); saved checkpoint "
                     r"(\S+)\. Run the same command again to resume from it\.")


@pytest.fixture(autouse=True)
def _needs_shared_data(shared_data):
    return shared_data


def wait_for(proc, log_path, pattern, timeout=120):
    """Waits until the log matches ``pattern``; returns the match."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        match = re.search(pattern, log_path.read_text())
        if match:
            return match
        if proc.poll() is not None:
            pytest.fail(f"exited (rc {proc.returncode}) early:\n{log_path.read_text()[-3000:]}")
        time.sleep(0.02)
    pytest.fail(f"{pattern!r} did not appear in time:\n{log_path.read_text()[-3000:]}")


def signal_when(cmd, log_path, pattern, sig, env=None):
    """Runs ``cmd``, sends ``sig`` once ``pattern`` is in its log; returns (proc, log)."""
    env = dict(os.environ, PYTHONPATH=REPO, **(env or {}))
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(proc, log_path, pattern)
        proc.send_signal(sig)
        return proc, stop(proc, log_path)
    finally:
        proc.kill()


def stopped_line(log, signal_name, ckpt_dir):
    """(step, checkpoint) of the trainer's one "Stopped by" line; checks the checkpoint."""
    matches = STOPPED.findall(log)
    assert len(matches) == 1, log[-3000:]
    name, step, path = matches[0]
    step = int(step)
    assert name == signal_name and path == f"{ckpt_dir}/ckpt-{step}", log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    values = read_checkpoint(path)  # complete: every tensor reads
    assert int(values["step/.ATTRIBUTES/VARIABLE_VALUE"]) == step
    assert checkpoint_state(ckpt_dir)[0] == path
    return step, path


def test_sigint_then_sigterm_checkpoint_the_current_step_and_resume_to_the_same_weights(
        tmp_path):
    model_dir = tmp_path / "run"
    ckpt_dir = str(model_dir / "checkpoints")
    # Checkpoints only every 1000 steps: what survives is the signal's checkpoint.
    args = gin_params(checkpoint_every=1000, log_every=1)
    proc = start(model_dir, tmp_path / "a.log", *args, steps=100_000)
    try:
        wait_for(proc, tmp_path / "a.log", r"step 5/")
        proc.send_signal(signal.SIGINT)
        started = time.time()
        log = stop(proc, tmp_path / "a.log")
    finally:
        proc.kill()
    assert proc.returncode == 130, log[-3000:]
    assert time.time() - started < 20
    first, _ = stopped_line(log, "SIGINT", ckpt_dir)
    assert first >= 5
    assert not (model_dir / ".trainer.lock").exists()  # released and removed
    # The same command resumes at that step; SIGTERM (a preemption) stops it again.
    proc = start(model_dir, tmp_path / "b.log", *args, steps=100_000)
    try:
        wait_for(proc, tmp_path / "b.log", rf"step {first + 3}/")
        proc.send_signal(signal.SIGTERM)
        log = stop(proc, tmp_path / "b.log")
    finally:
        proc.kill()
    assert proc.returncode == 143, log[-3000:]
    assert restored_step(log) == (f"{ckpt_dir}/ckpt-{first}", first)
    second, _ = stopped_line(log, "SIGTERM", ckpt_dir)
    assert second >= first + 3
    # Resumed to the end, the weights equal those of a run never interrupted.
    final = second + 4
    resumed = start(model_dir, tmp_path / "c.log", *args, steps=final)
    reference = start(tmp_path / "reference", tmp_path / "ref.log", *args, steps=final)
    log = stop(resumed, tmp_path / "c.log", timeout=180)
    ref_log = stop(reference, tmp_path / "ref.log", timeout=180)
    assert resumed.returncode == 0 and reference.returncode == 0, (log[-2000:], ref_log[-2000:])
    assert restored_step(log) == (f"{ckpt_dir}/ckpt-{second}", second)
    got = read_checkpoint(f"{ckpt_dir}/ckpt-{final}")
    want = read_checkpoint(str(tmp_path / "reference" / "checkpoints" / f"ckpt-{final}"))
    assert got.keys() == want.keys()
    del got["save_counter/.ATTRIBUTES/VARIABLE_VALUE"]  # counts saves, not training
    for name in got:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-7, err_msg=name)
    assert not (model_dir / ".trainer.lock").exists()


def test_sigterm_during_a_checkpoint_write_keeps_that_checkpoint_complete(tmp_path):
    """SIGTERM while TF writes a checkpoint (its .tempstate file exists): the write
    finishes, is the one named, and the re-run resumes from it."""
    model_dir = tmp_path / "run"
    ckpt_dir = str(model_dir / "checkpoints")
    args = gin_params(checkpoint_every=1, keep_checkpoints=3)
    proc = start(model_dir, tmp_path / "a.log", *args, steps=100_000)
    try:
        deadline = time.time() + 120
        while not tempstate_files(ckpt_dir):
            assert proc.poll() is None and time.time() < deadline, \
                (tmp_path / "a.log").read_text()[-3000:]
            time.sleep(0.0005)
        proc.send_signal(signal.SIGTERM)
        log = stop(proc, tmp_path / "a.log")
    finally:
        proc.kill()
    assert proc.returncode == 143, log[-3000:]
    step, path = stopped_line(log, "SIGTERM", ckpt_dir)
    assert_listed_checkpoints_loadable(ckpt_dir, "after SIGTERM during a write")
    resumed = start(model_dir, tmp_path / "b.log", *args, steps=step + 1)
    log = stop(resumed, tmp_path / "b.log", timeout=180)
    assert resumed.returncode == 0, log[-3000:]
    assert restored_step(log) == (path, step)


# A job that polls StopOnSignal like the trainer does, but never reaches its stop point:
# what the second signal does must not depend on how quickly the first one is handled.
SLOW_JOB = (
    "import sys, time\n"
    "from t2t_image.training.preemption import StopOnSignal\n"
    "with StopOnSignal('training', 'saving a checkpoint after the current step'):\n"
    "    print('ready', flush=True)\n"
    "    while True:\n"
    "        time.sleep(0.01)  # a step, or a checkpoint write, that takes long\n"
)


def test_second_signal_quits_at_once(tmp_path):
    log_path = tmp_path / "job.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", SLOW_JOB], cwd=REPO, stdout=log,
                                stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONPATH=REPO))
    try:
        wait_for(proc, log_path, "ready")
        proc.send_signal(signal.SIGINT)
        wait_for(proc, log_path, "SIGINT received: saving a checkpoint after the current step")
        assert proc.poll() is None  # the first signal only asks
        proc.send_signal(signal.SIGTERM)
        text = stop(proc, log_path, timeout=10)
    finally:
        proc.kill()
    assert proc.returncode == 143, text
    assert "SIGTERM again: quitting at once; the latest complete checkpoint is kept." in text
    assert "Traceback" not in text


@pytest.fixture(scope="module")
def trained_tiny(tmp_path_factory):
    from tests.conftest import SHARED_DATA

    if not SHARED_DATA.is_dir():
        pytest.skip(f"../shared/data not found at {SHARED_DATA}")
    model_dir = tmp_path_factory.mktemp("interrupts") / "tiny"
    log = model_dir.parent / "train.log"
    proc = start(model_dir, log, steps=2)
    assert stop(proc, log, timeout=180) is not None and proc.returncode == 0
    return model_dir


def test_sigint_during_sampling_writes_nothing(tmp_path, trained_tiny):
    output, npz = tmp_path / "grid.png", tmp_path / "samples.npz"
    log_path = tmp_path / "sampler.log"
    proc, text = signal_when(
        [sys.executable, "-m", "t2t_image.cli.sampler", f"--model_dir={trained_tiny}",
         "--num_samples=400", "--batch_size=4", "--nojit_compile", f"--output={output}",
         f"--npz={npz}"], log_path, r"batch 2/100", signal.SIGINT)
    assert proc.returncode == 130, text[-3000:]
    assert "Traceback" not in text and "nothing is written" in text
    assert sorted(os.listdir(tmp_path)) == ["sampler.log"]


def test_evaluation_stopped_by_a_signal_writes_no_results(tmp_path, trained_tiny):
    """--mode=eval over many batches, SIGTERM after the model is restored."""
    log_path = tmp_path / "eval.log"
    results = trained_tiny / "eval_results.json"
    before = results.read_bytes() if results.exists() else None
    proc, text = signal_when(
        [sys.executable, "-m", "t2t_image.cli.trainer", "--gin_file=gin/tiny.gin",
         f"--model_dir={trained_tiny}", "--mode=eval",
         "--gin_param=t2t_image.Trainer.eval_batches=None",
         "--gin_param=eval/t2t_image.make_dataset.batch_size=1"],
        log_path, r"Restored ", signal.SIGTERM)
    assert proc.returncode == 143, text[-3000:]
    assert "Stopped the evaluation; eval_results.json was not written." in text, text[-3000:]
    assert (results.read_bytes() if results.exists() else None) == before


def test_first_stage_trainer_stops_with_a_checkpoint_on_sigterm(tmp_path):
    """The VQGAN first stage (gin/tiny_vq.gin) shares the loop: SIGTERM saves its step."""
    model_dir = tmp_path / "vq"
    ckpt_dir = str(model_dir / "checkpoints")
    log_path = tmp_path / "vq.log"
    trainer = "t2t_image.FirstStageTrainer"
    proc, text = signal_when(
        [sys.executable, "-m", "t2t_image.cli.trainer", "--gin_file=gin/tiny_vq.gin",
         f"--model_dir={model_dir}", f"--gin_param={trainer}.num_train_steps=100000",
         f"--gin_param={trainer}.checkpoint_every=1000", f"--gin_param={trainer}.log_every=1",
         f"--gin_param={trainer}.eval_every=0", f"--gin_param={trainer}.sample_every=0"],
        log_path, r"step 3/", signal.SIGTERM)
    assert proc.returncode == 143, text[-3000:]
    step, _ = stopped_line(text, "SIGTERM", ckpt_dir)
    assert step >= 3


def test_multi_worker_sigterm_on_a_one_worker_cluster(tmp_path):
    """strategy="multi_worker" on a one-worker cluster (TF_CONFIG): SIGTERM saves the step
    and the trainer exits 143 (several workers: tests/training/test_multi_worker_training.py)."""
    import json
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    tf_config = {"cluster": {"worker": [f"localhost:{port}"]},
                 "task": {"type": "worker", "index": 0}}
    model_dir = tmp_path / "mw"
    log_path = tmp_path / "mw.log"
    cmd = [sys.executable, "-m", "t2t_image.cli.trainer", "--gin_file=gin/tiny.gin",
           f"--model_dir={model_dir}", "--gin_param=t2t_image.Trainer.eval_dataset_fn=None",
           "--gin_param=t2t_image.Trainer.strategy='multi_worker'",
           *gin_params(num_train_steps=100_000, checkpoint_every=1000, log_every=1)]
    proc, text = signal_when(cmd, log_path, r"step 5/", signal.SIGTERM,
                             env={"TF_CONFIG": json.dumps(tf_config)})
    assert proc.returncode == 143, text[-3000:]
    step, _ = stopped_line(text, "SIGTERM", str(model_dir / "checkpoints"))
    assert step >= 5
