"""t2t-image-trainer under real OS-level faults: a full disk, a read-only checkpoint
directory, a file-size limit, and a SIGKILL at the exact system call that deletes an
old checkpoint. Each fault hits a running trainer (gin/tiny.gin, real CIFAR-10 images)."""

import os
import re
import resource
import shutil
import signal
import subprocess
import time

import pytest

from t2t_image.storage import run_guard
from tests.training.test_fault_injection import assert_listed_checkpoints_loadable
from tests.training.test_fault_injection import checkpoint_state
from tests.training.test_fault_injection import gin_params
from tests.training.test_fault_injection import restored_step
from tests.training.test_fault_injection import start
from tests.training.test_fault_injection import step_of


@pytest.fixture(autouse=True)
def _needs_shared_data(shared_data):
    return shared_data


def wait_for_checkpoint(proc, ckpt_dir, log_path, timeout=120):
    """Waits until the trainer has recorded its first checkpoint in the state file."""
    deadline = time.time() + timeout
    while checkpoint_state(ckpt_dir)[0] is None:
        if proc.poll() is not None:
            pytest.fail(f"the trainer exited early:\n{log_path.read_text()[-3000:]}")
        if time.time() > deadline:
            pytest.fail("no checkpoint was written in time")
        time.sleep(0.01)


def finish(proc, log_path, timeout=120):
    """Waits for the trainer to stop; returns its log."""
    try:
        proc.wait(timeout=timeout)
    finally:
        proc.kill()
        proc.wait()
    return log_path.read_text()


def write_error(log, what):
    """(step, directory, latest checkpoint named) of the trainer's "cannot write" error."""
    match = re.search(rf"cannot write the {what} of step (\d+) to (\S+): (.*?)the latest "
                      r"complete one is (\S+?)(?:,|\.\s)", log, re.S)
    assert match, log[-3000:]
    return int(match.group(1)), match.group(2), match.group(3), match.group(4)


def mount_or_skip(*args):
    if shutil.which("mount") is None:
        pytest.skip("no mount command here; this fault needs its own file system")
    result = subprocess.run(["mount", *args], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"mounting is not permitted here (mount {' '.join(args)}: "
                    f"{result.stderr.strip()}); this fault needs its own file system")


def umount(path):
    subprocess.run(["umount", str(path)], capture_output=True)


def test_file_size_limit_mid_run_fails_clearly_keeps_checkpoints_and_resumes(tmp_path):
    """RLIMIT_FSIZE lowered on the running trainer: its next checkpoint write gets EFBIG."""
    model_dir, log_path = tmp_path / "run", tmp_path / "run.log"
    ckpt_dir = str(model_dir / "checkpoints")
    proc = start(model_dir, log_path, *gin_params(checkpoint_every=2), steps=100_000)
    try:
        wait_for_checkpoint(proc, ckpt_dir, log_path)
        # 256 KiB: a checkpoint (~1.3 MB with the data iterator) no longer fits; the
        # log and the event files stay below it. Python ignores SIGXFSZ, so the write
        # fails with EFBIG instead of the process being killed.
        resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))
    finally:
        log = finish(proc, log_path)
    assert proc.returncode == 1, log[-3000:]  # an error exit, not a signal
    step, directory, cause, latest = write_error(log, "checkpoint")
    assert directory == ckpt_dir and "File too large" in cause
    assert latest == f"{ckpt_dir}/ckpt-{step - 2}"
    assert checkpoint_state(ckpt_dir)[0] == latest
    assert_listed_checkpoints_loadable(ckpt_dir, "after EFBIG")
    # Without the limit, the same command resumes from that checkpoint.
    resumed = start(model_dir, tmp_path / "resumed.log", *gin_params(checkpoint_every=2),
                    steps=step)
    log = finish(resumed, tmp_path / "resumed.log", timeout=180)
    assert resumed.returncode == 0, log[-3000:]
    assert restored_step(log) == (latest, step - 2)
    assert checkpoint_state(ckpt_dir)[0] == f"{ckpt_dir}/ckpt-{step}"
    # The partial file of the failed save (TF's ckpt-N_temp/) was removed on restart.
    assert not [n for n in os.listdir(ckpt_dir) if n.endswith("_temp")]


def test_full_disk_mid_run_fails_clearly_at_the_summary_write(tmp_path):
    """A small tmpfs filled up after the first checkpoint: the next TensorBoard flush
    (every step; checkpoints every 20) gets ENOSPC and must be reported as such."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount_or_skip("-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk))
    try:
        model_dir, log_path = disk / "run", tmp_path / "run.log"
        ckpt_dir = str(model_dir / "checkpoints")
        proc = start(model_dir, log_path, *gin_params(checkpoint_every=20), steps=100_000)
        try:
            wait_for_checkpoint(proc, ckpt_dir, log_path)
            fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while True:
                    os.write(fd, b"\0" * 65536)
            except OSError as e:
                assert e.errno == 28  # ENOSPC: the disk is full
            finally:
                os.close(fd)
        finally:
            log = finish(proc, log_path)
        assert proc.returncode == 1, log[-3000:]
        step, directory, cause, latest = write_error(log, "TensorBoard summaries")
        assert directory == str(model_dir) and "No space left on device" in cause
        assert 20 < step < 40 and latest == f"{ckpt_dir}/ckpt-20"
        assert_listed_checkpoints_loadable(ckpt_dir, "after ENOSPC")
    finally:
        umount(disk)


def test_read_only_checkpoint_dir_mid_run_fails_clearly(tmp_path):
    """The checkpoint directory (a bind mount) remounted read-only mid-run: EROFS."""
    model_dir, log_path = tmp_path / "run", tmp_path / "run.log"
    ckpt_dir = model_dir / "checkpoints"
    ckpt_dir.mkdir(parents=True)
    mount_or_skip("--bind", str(ckpt_dir), str(ckpt_dir))
    try:
        proc = start(model_dir, log_path, *gin_params(checkpoint_every=2), steps=100_000)
        try:
            wait_for_checkpoint(proc, str(ckpt_dir), log_path)
            deadline = time.time() + 30
            while subprocess.run(["mount", "-o", "remount,bind,ro", str(ckpt_dir)],
                                 capture_output=True).returncode != 0:
                assert time.time() < deadline, "could not remount read-only"
                time.sleep(0.005)  # busy while a checkpoint file is open for writing
        finally:
            log = finish(proc, log_path)
        assert proc.returncode == 1, log[-3000:]
        step, directory, cause, latest = write_error(log, "checkpoint")
        assert directory == str(ckpt_dir) and "Read-only file system" in cause
        # Usually the save of `step` fails outright; if the remount lands after its state
        # was recorded (while old checkpoints are being deleted), that save is the latest.
        assert checkpoint_state(str(ckpt_dir))[0] == latest
        assert latest in (f"{ckpt_dir}/ckpt-{step - 2}", f"{ckpt_dir}/ckpt-{step}")
        assert_listed_checkpoints_loadable(str(ckpt_dir), "after EROFS")
    finally:
        umount(ckpt_dir)


def test_kill_while_an_old_checkpoint_is_deleted_leaves_only_complete_ones_listed(tmp_path):
    """SIGKILL injected by strace at the unlink of ckpt-1's data file, i.e. after its
    index is gone: the state file must not name ckpt-1 (TF's own manager still did)."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed: it injects the SIGKILL at the exact unlink")
    probe = subprocess.run(["strace", "-f", "-qq", "-e", "trace=none", "true"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"strace cannot trace here (no ptrace): {probe.stderr.strip()}")
    model_dir, log_path = tmp_path.resolve() / "run", tmp_path / "run.log"
    ckpt_dir = str(model_dir / "checkpoints")
    doomed = f"{ckpt_dir}/ckpt-1.data-00000-of-00001"
    strace = ["strace", "-f", "-qq", "-o", str(tmp_path / "strace.log"), "-e", "signal=none",
              "-e", "trace=unlink", "-e", "inject=unlink:signal=KILL", "-P", doomed]
    proc = start(model_dir, log_path, *gin_params(checkpoint_every=1, keep_checkpoints=2),
                 steps=10, wrapper=strace)
    log = finish(proc, log_path, timeout=180)
    assert proc.returncode in (-signal.SIGKILL, 128 + signal.SIGKILL), log[-3000:]
    # Killed mid-deletion of ckpt-1 (its index is gone, its data is not), at the save of step 3.
    assert os.path.exists(doomed) and not os.path.exists(f"{ckpt_dir}/ckpt-1.index")
    latest, listed = assert_listed_checkpoints_loadable(ckpt_dir, "killed while deleting ckpt-1")
    assert step_of(latest) == 3 and [step_of(p) for p in listed] == [2, 3]
    # What the next trainer does first (holding the lock): the orphaned data file goes.
    assert doomed in run_guard.remove_partial_checkpoints(ckpt_dir)
    kept = [f"ckpt-{s}.{e}" for s in (2, 3) for e in ("index", "data-00000-of-00001")]
    assert sorted(os.listdir(ckpt_dir)) == sorted(kept + ["checkpoint"])


def test_file_size_limit_before_the_first_checkpoint_says_there_is_none(tmp_path):
    """Issue 24: the error said "the latest complete one is None, which a restart resumes
    from". A 256 KiB file-size limit from the start: the first checkpoint cannot be written."""
    from tests.cli.test_trainer_cli import REPO
    from tests.cli.test_trainer_cli import trainer

    model_dir = tmp_path / "run"
    cmd, env = trainer(model_dir, *gin_params(checkpoint_every=2), steps=4)

    def limit():  # (Python ignores SIGXFSZ: the write fails with EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))

    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240,
                          preexec_fn=limit)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "is None" not in proc.stderr
    ckpt_dir = model_dir / "checkpoints"
    assert re.search(rf"cannot write the checkpoint of step 2 to {ckpt_dir}: .*File too large.*"
                     rf"No checkpoint of this run is complete yet in {ckpt_dir}: a restart "
                     "starts from step 0", proc.stderr), proc.stderr[-3000:]
