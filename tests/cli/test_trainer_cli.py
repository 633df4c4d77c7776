"""End-to-end tests of t2t-image-trainer on real CIFAR-10 images (gin/tiny.gin)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import tensorflow as tf

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def trainer(model_dir, *args, steps=None):
    cmd = [sys.executable, "-m", "t2t_image.cli.trainer", "--gin_file=gin/tiny.gin",
           f"--model_dir={model_dir}", *args]
    if steps is not None:
        cmd.append(f"--gin_param=t2t_image.Trainer.num_train_steps={steps}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    return cmd, env


def run(model_dir, *args, steps=None, timeout=240):
    cmd, env = trainer(model_dir, *args, steps=steps)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


def event_tags(directory):
    tags = set()
    for name in os.listdir(directory):
        if "tfevents" in name:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
                tags.update(v.tag for v in event.summary.value)
    return tags


@pytest.fixture(autouse=True)
def _needs_shared_data(shared_data):
    return shared_data


def test_train_writes_everything_and_resumes(tmp_path):
    model_dir = tmp_path / "run"
    first = run(model_dir, "--gin_param=t2t_image.Trainer.sample_every=4", steps=4)
    assert first.returncode == 0, first.stderr[-3000:]
    assert (model_dir / "samples" / "step_4.png").stat().st_size > 100
    assert sorted(os.listdir(model_dir / "checkpoints"))[0].startswith("checkpoint")
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-4")
    config = (model_dir / "operative_config.gin").read_text()
    assert "ImageTransformer.hidden_size = 16" in config
    results = json.loads((model_dir / "eval_results.json").read_text())
    assert results["step"] == 4 and 0 < results["bits_per_dim"] < 12
    assert json.loads(first.stdout.strip().splitlines()[-1])["bits_per_dim"] == results["bits_per_dim"]
    train_tags = event_tags(model_dir / "train")
    assert {"loss", "bits_per_dim", "learning_rate", "gradient_norm", "steps_per_second",
            "examples_per_second", "operative_config"} <= train_tags
    assert {"bits_per_dim", "samples"} <= event_tags(model_dir / "eval")
    second = run(model_dir, steps=6)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "at step 4" in second.stderr  # "Restored ... at step 4."
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith("ckpt-6")
    evaluated = run(model_dir, "--mode=eval")
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert json.loads(evaluated.stdout.strip().splitlines()[-1])["step"] == 6


def test_killed_run_resumes_from_its_last_checkpoint(tmp_path):
    model_dir = tmp_path / "run"
    cmd, env = trainer(model_dir, "--gin_param=t2t_image.Trainer.checkpoint_every=2",
                       steps=100_000)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt_dir = str(model_dir / "checkpoints")
    deadline = time.time() + 180
    try:
        while time.time() < deadline:
            latest = tf.train.latest_checkpoint(ckpt_dir) if os.path.isdir(ckpt_dir) else None
            if latest and int(latest.rsplit("-", 1)[1]) >= 4:
                break
            time.sleep(0.5)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    killed_at = int(tf.train.latest_checkpoint(ckpt_dir).rsplit("-", 1)[1])
    assert killed_at >= 4
    resumed = run(model_dir, steps=killed_at + 2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {killed_at}" in resumed.stderr
    assert tf.train.latest_checkpoint(ckpt_dir).endswith(f"ckpt-{killed_at + 2}")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--gin_param=t2t_image.Trainer.num_train_stepz=3"], "num_train_stepz"),
        (["--gin_param=t2t_image.ImageTransformr.hidden_size=3"], "ImageTransformr"),
        (["--gin_file=gin/no_such_file.gin"], "no_such_file.gin"),
        (["--gin_param=t2t_image.ImageTransformer.hidden_size=30",
          "--gin_param=t2t_image.ImageTransformer.num_heads=4"], "hidden_size (30)"),
    ],
)
def test_bad_configuration_fails_before_training(tmp_path, args, message):
    model_dir = tmp_path / "run"
    result = run(model_dir, *args, timeout=120)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (model_dir / "checkpoints").exists()


def test_super_resolution_evaluation_mode(tmp_path):
    model_dir = tmp_path / "sr"
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    base = [sys.executable, "-m", "t2t_image.cli.trainer", "--gin_file=gin/tiny_sr.gin",
            f"--model_dir={model_dir}"]
    trained = subprocess.run(base, cwd=REPO, env=env, capture_output=True, text=True,
                             timeout=240)
    assert trained.returncode == 0, trained.stderr[-3000:]
    evaluated = subprocess.run(base + ["--mode=eval_sr"], cwd=REPO, env=env,
                               capture_output=True, text=True, timeout=240)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    results = json.loads((model_dir / "sr_eval_results.json").read_text())
    assert results["step"] == 4 and results["num_images"] == 8
    assert 0 < results["bits_per_dim"] < 12
    assert set(results["consistency"]) == {"1.0", "0.9", "0.8"}
    assert all(0 <= v < 1 for v in results["consistency"].values())
    assert (model_dir / "sr_samples.png").stat().st_size > 100
