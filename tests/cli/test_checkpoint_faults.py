"""The command-line tools on damaged or unusual model_dirs (issue 16): a "[" in the name,
a truncated latest shard, no checkpoint at all, an unwritable --output, a read-only run.

Real files written by real trainer runs (gin/tiny.gin, real CIFAR-10 images), damaged the
way a disk or a person damages them; the tools run as subprocesses.
"""

import json
import os
import subprocess

import pytest

from tests.cli.test_sampler_cli import run_tool
from tests.cli.test_trainer_cli import run as run_trainer
from tests.cli.test_trainer_faults import mount_or_skip
from tests.cli.test_trainer_faults import umount

NO_EVAL = "--gin_param=t2t_image.Trainer.eval_dataset_fn=None"


@pytest.fixture(autouse=True)
def _needs_shared_data(shared_data):
    return shared_data


def _truncate(path):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)


def _one_line_error(proc):
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr


def test_bracket_model_dir_resumes_sweeps_and_a_truncated_latest_falls_back(tmp_path):
    """runs/lr[0.1]: TF globbed the name, so every checkpoint looked incomplete: the
    trainer restarted at step 0, never deleted old checkpoints, eval scored random
    weights and the sampler found nothing."""
    model_dir = tmp_path / "runs" / "lr[0.1]"
    ckpt_dir = model_dir / "checkpoints"
    keep = ["--gin_param=t2t_image.Trainer.keep_checkpoints=2"]
    first = run_trainer(model_dir, NO_EVAL, *keep, steps=4)
    assert first.returncode == 0, first.stderr[-3000:]
    resumed = run_trainer(model_dir, NO_EVAL, *keep, steps=6)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"Restored {ckpt_dir}/ckpt-4 at step 4." in resumed.stderr
    assert sorted(n for n in os.listdir(ckpt_dir) if n.endswith(".index")) == \
        ["ckpt-4.index", "ckpt-6.index"]  # ckpt-2 was swept
    # The newest checkpoint's data file is cut in half (a disk or copy that failed).
    bad = ckpt_dir / "ckpt-6.data-00000-of-00001"
    _truncate(bad)
    evaluated = run_trainer(model_dir, "--mode=eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    results = json.loads(evaluated.stdout.strip().splitlines()[-1])
    assert results["step"] == 4 and results["checkpoint"] == f"{ckpt_dir}/ckpt-4"
    assert str(bad) in evaluated.stderr
    sampled = run_tool("t2t-image-sampler", f"--model_dir={model_dir}", "--num_samples=1",
                       "--output=grid.png", "--noprogress", cwd=tmp_path)
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    assert f"from {ckpt_dir}/ckpt-4" in sampled.stderr and str(bad) in sampled.stderr
    assert (tmp_path / "grid.png").stat().st_size > 100


def test_tools_refuse_a_model_dir_without_checkpoints(tmp_path):
    """A misspelled model_dir: eval wrote random-init results and exited 0."""
    missing = tmp_path / "typo"
    evaluated = _one_line_error(run_trainer(missing, "--mode=eval"))
    assert "no checkpoint to evaluate" in evaluated and str(missing) in evaluated
    assert not (missing / "eval_results.json").exists()
    sampled = _one_line_error(run_tool("t2t-image-sampler", f"--model_dir={missing}",
                                       "--num_samples=1", "--output=grid.png", cwd=tmp_path))
    assert "no model.keras and no TF checkpoint" in sampled
    assert not (tmp_path / "grid.png").exists()


def test_exploding_weights_stop_the_cli_in_one_line_without_saving(tmp_path):
    """learning_rate=1e40, a checkpoint every step: ckpt-1 used to hold 15 NaN tensors and
    be named "last good"; the sampler then wrote all-255 images."""
    model_dir = tmp_path / "run"
    proc = run_trainer(model_dir, NO_EVAL, "--gin_param=t2t_image.Trainer.learning_rate=1e40",
                       "--gin_param=t2t_image.Trainer.checkpoint_every=1", steps=3)
    stderr = _one_line_error(proc)
    assert "weight tensors are NaN or infinite after step 1" in stderr
    assert f"No checkpoint was saved in {model_dir}/checkpoints yet" in stderr
    ckpt_dir = model_dir / "checkpoints"
    assert not ckpt_dir.exists() or not [n for n in os.listdir(ckpt_dir) if ".index" in n]


@pytest.mark.parametrize("flag", ["output", "npz"])
def test_sampler_unwritable_output_fails_before_sampling(tmp_path, flag):
    args = {"output": "/proc/nope/x.png", "npz": "/proc/nope/x.npz"}
    proc = run_tool("t2t-image-sampler", f"--model_dir={tmp_path}", "--num_samples=1",
                    f"--{flag}={args[flag]}", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert f"--{flag}={args[flag]}: cannot write there" in proc.stderr
    assert "Loaded" not in proc.stderr  # refused before the model was even loaded


def test_every_tool_on_a_read_only_model_dir(tmp_path):
    """An archived run (read-only bind mount) can be evaluated (nothing written, results
    printed), sampled and exported; training and averaging refuse in one line naming the
    model_dir (issue 24: each tool on a read-only model_dir)."""
    model_dir = tmp_path / "archived"
    first = run_trainer(model_dir, NO_EVAL, steps=2)
    assert first.returncode == 0, first.stderr[-3000:]
    before = sorted(os.listdir(model_dir))
    mount_or_skip("--bind", str(model_dir), str(model_dir))
    try:
        remount = subprocess.run(["mount", "-o", "remount,bind,ro", str(model_dir)],
                                 capture_output=True, text=True)
        if remount.returncode != 0:
            pytest.skip(f"cannot remount read-only here: {remount.stderr.strip()}")
        evaluated = run_trainer(model_dir, "--mode=eval")
        assert evaluated.returncode == 0, evaluated.stderr[-3000:]
        results = json.loads(evaluated.stdout.strip().splitlines()[-1])
        assert results["step"] == 2 and 0 < results["bits_per_dim"] < 12
        assert "cannot write operative_config_eval.gin" in evaluated.stderr
        refused = _one_line_error(run_trainer(model_dir, steps=3))  # (--mode=average alike)
        assert (f"--model_dir={model_dir} cannot be written (Read-only file system: "
                f"{model_dir}/.trainer.lock)") in refused
        sampled = run_tool("t2t-image-sampler", f"--model_dir={model_dir}", "--num_samples=1",
                           "--output=grid.png", "--noprogress", cwd=tmp_path)
        assert sampled.returncode == 0, sampled.stderr[-3000:]
        assert (tmp_path / "grid.png").stat().st_size > 100
        exported = run_tool("t2t-image-exporter", f"--model_dir={model_dir}",
                            f"--export_dir={tmp_path / 'export'}", "--nojit_compile", cwd=tmp_path)
        assert exported.returncode == 0, exported.stderr[-3000:]
        assert (tmp_path / "export" / "saved_model.pb").is_file()
        assert sorted(os.listdir(model_dir)) == before
    finally:
        umount(model_dir)
