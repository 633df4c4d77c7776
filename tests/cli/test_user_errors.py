"""User errors of the three command-line tools: a few lines naming the setting, no traceback.

Each case runs the real tool in a subprocess and checks what a person sees on stderr:
no "Traceback", the setting (flag or gin binding) named, at most a few lines of the
error itself, exit status 1, and never the full --help.
"""

import os
import subprocess
import sys

import pytest

from t2t_image.storage import run_guard
from tests.cli.test_trainer_cli import REPO

TIMEOUT = 180


@pytest.fixture(autouse=True)
def _needs_shared_data(shared_data):
    return shared_data


def tool(name, *args, cwd=REPO, env=None):
    extra, env = env or {}, dict(os.environ, PYTHONPATH=REPO)
    env.pop("T2T_IMAGE_VERBOSE", None)
    env.update(extra)
    return subprocess.run([sys.executable, "-m", f"t2t_image.cli.{name}", *args], cwd=cwd,
                          env=env, capture_output=True, text=True, timeout=TIMEOUT)


def error_lines(stderr, prog):
    """The lines from the tool's "<prog>: error:" line on (its message)."""
    lines = stderr.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith(f"{prog}: error: ")]
    assert len(starts) == 1, stderr[-3000:]
    return lines[starts[0]:]


def assert_user_error(result, prog, *names, max_lines=4):
    assert result.returncode == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = error_lines(result.stderr, prog)
    assert len(lines) <= max_lines, "\n".join(lines)
    text = "\n".join(lines)
    for name in names:
        assert name in text, text
    assert "--helpfull" not in result.stderr and "flags:" not in result.stderr  # no --help dump
    return text


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("user_errors") / "tiny"
    result = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={model_dir}",
                  "--gin_param=t2t_image.Trainer.num_train_steps=2")
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


TRAINER = "t2t-image-trainer"


@pytest.mark.parametrize("args,names", [
    (["--gin_param=t2t_image.Trainer.num_train_stepz=3"],
     ["num_train_stepz", "Did you mean t2t_image.Trainer.num_train_steps?"]),
    (["--gin_param=t2t_image.ImageTransformr.hidden_size=3"],
     ["ImageTransformr", "Did you mean t2t_image.ImageTransformer?"]),
    (["--gin_param=t2t_image.Trainer.num_train_steps=-1"], ["num_train_steps", "-1"]),
    (["--gin_file=gin/no_such_file.gin"], ["--gin_file=gin/no_such_file.gin"]),
])
def test_trainer_configuration_errors(tmp_path, args, names):
    gin_file = [] if any(a.startswith("--gin_file") for a in args) else ["--gin_file=gin/tiny.gin"]
    result = tool("trainer", *gin_file, f"--model_dir={tmp_path / 'run'}", *args)
    assert_user_error(result, TRAINER, *names)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_missing_gin_file_and_model_dir_that_is_a_file(tmp_path):
    result = tool("trainer", f"--model_dir={tmp_path / 'run'}")
    assert_user_error(result, TRAINER, "--gin_file is required", "gin/tiny.gin")
    (tmp_path / "file").write_text("x")
    result = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={tmp_path / 'file'}")
    assert_user_error(result, TRAINER, f"--model_dir={tmp_path / 'file'} is a file")


def test_relative_data_path_names_its_base_folder(tmp_path):
    """Run from another folder: the dataset's relative path names the working directory."""
    result = tool("trainer", f"--gin_file={REPO}/gin/tiny.gin", f"--model_dir={tmp_path / 'r'}",
                  cwd=tmp_path)
    text = assert_user_error(result, TRAINER, "../shared/data/cifar10/cifar10_train_exact.npz",
                             f"working directory {tmp_path}")
    assert str(tmp_path.parent / "shared" / "data") in text


def test_lock_and_drift(trained):
    lock = run_guard.ModelDirLock(str(trained)).acquire()  # a live holder
    try:
        result = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={trained}",
                      "--gin_param=t2t_image.Trainer.num_train_steps=4")
        assert_user_error(result, TRAINER, "another trainer is running", str(trained),
                          f"pid {os.getpid()}")
    finally:
        lock.release()
    result = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={trained}",
                  "--gin_param=t2t_image.ImageTransformer.hidden_size=32")
    assert_user_error(result, TRAINER, "hidden_size: 16 in the model_dir, 32 now")


def test_verbose_shows_the_traceback_and_internal_errors_keep_theirs(tmp_path):
    args = ["--gin_file=gin/tiny.gin", f"--model_dir={tmp_path / 'run'}",
            "--gin_param=t2t_image.Trainer.num_train_stepz=3"]
    verbose = tool("trainer", *args, "--verbose")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr
    assert "Did you mean t2t_image.Trainer.num_train_steps?" in verbose.stderr
    # A model_fn that is not a model: not a user error the tools know, so a traceback.
    internal = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={tmp_path / 'run2'}",
                    "--gin_param=t2t_image.Trainer.model_fn=@t2t_image.NpzSource")
    assert internal.returncode != 0 and "Traceback" in internal.stderr


def test_sampler_and_exporter_usage_errors(tmp_path, trained):
    from PIL import Image
    import numpy as np

    prog = "t2t-image-sampler"
    result = tool("sampler", f"--model_dir={trained}", "--num_samples=0")
    assert_user_error(result, prog, "--num_samples", "0")
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(small)
    result = tool("sampler", f"--model_dir={trained}", f"--complete={small}", "--rows=2")
    assert_user_error(result, prog, "--complete", "5x5x3", "8x8x3")
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    (export_dir / "something").write_text("x")
    result = tool("exporter", f"--model_dir={trained}", f"--export_dir={export_dir}")
    assert_user_error(result, "t2t-image-exporter", f"--export_dir={export_dir}", "--overwrite")


def test_no_tensorflow_start_up_noise_and_no_lock_left(tmp_path, trained):
    result = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={trained}", "--mode=eval")
    assert result.returncode == 0, result.stderr[-3000:]
    for noise in ("oneDNN custom operations", "absl::InitializeLog", "cpu_feature_guard",
                  "Sharding callback duration"):
        assert noise not in result.stderr
    assert not (trained / run_guard.LOCK_NAME).exists()
    # Re-running the finished run says so and does not evaluate again.
    again = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={trained}",
                 "--gin_param=t2t_image.Trainer.num_train_steps=2")
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"The run in {trained} is finished: step 2 of num_train_steps=2" in again.stderr
    assert "eval at step" not in again.stderr
