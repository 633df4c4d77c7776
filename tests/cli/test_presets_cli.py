"""Presets through the tools: --mode=export_preset writes one from a run, --preset serves
it to evaluation, the sampler and the exporter, --init_from_preset fine-tunes from it,
and a damaged preset is refused by name in one line."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.cli.test_trainer_cli import REPO
from tests.cli.test_user_errors import assert_user_error

TRAINER = "t2t-image-trainer"
STEPS = 30  # enough for the tiny model to be clearly better than its initialisation


def tool(name, *args):
    env = dict(os.environ, PYTHONPATH=REPO, TF_CPP_MIN_LOG_LEVEL="2")
    env.pop("T2T_IMAGE_VERBOSE", None)
    return subprocess.run([sys.executable, "-m", f"t2t_image.cli.{name}", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(autouse=True)
def _needs_shared_data(shared_data):
    return shared_data


@pytest.fixture(scope="module")
def preset(tmp_path_factory):
    root = tmp_path_factory.mktemp("presets")
    run = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={root / 'run'}",
               f"--gin_param=t2t_image.Trainer.num_train_steps={STEPS}",
               "--gin_param=t2t_image.Trainer.checkpoint_every=30")
    assert run.returncode == 0, run.stderr[-3000:]
    made = tool("trainer", "--mode=export_preset", f"--model_dir={root / 'run'}",
                f"--preset_dir={root / 'tiny_preset'}", "--preset_description=A test.")
    assert made.returncode == 0, made.stderr[-3000:]
    return root


def _metadata(folder):
    with open(folder / "metadata.json") as f:
        return json.load(f)


def test_export_preset_records_the_run(preset):
    folder = preset / "tiny_preset"
    metadata = _metadata(folder)
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "metadata.json",
                                         "model.weights.h5", "samples.png"]
    assert metadata["command"].startswith("t2t-image-trainer --gin_file=gin/tiny.gin")
    assert metadata["training"]["steps"] == STEPS
    assert metadata["heldout"]["num_images"] == 509  # the whole held-out split
    check = metadata["heldout"]["check"]
    assert check["num_images"] == 16 and check["data"]["split"] == "train[90%:]"
    # The float32 preset scores its first 16 held-out images as the float32 trainer did
    # (tiny.gin evaluates 4 batches of 4).
    assert abs(check["bits_per_dim"] - metadata["training"]["trainer_eval"]["bits_per_dim"]) < 1e-4
    assert "A test." in (folder / "README.md").read_text()


def test_eval_with_preset_needs_no_gin_file_and_no_model_dir(preset):
    result = tool("trainer", "--mode=eval", f"--preset={preset / 'tiny_preset'}")
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    expected = _metadata(preset / "tiny_preset")["heldout"]["check"]["bits_per_dim"]
    assert abs(results["bits_per_dim"] - expected) < 1e-4


def test_sampler_and_exporter_take_a_preset(preset, tmp_path):
    folder = preset / "tiny_preset"
    sampled = tool("sampler", f"--preset={folder}", "--num_samples=2", "--seed=3",
                   f"--output={tmp_path / 's.png'}", f"--npz={tmp_path / 's.npz'}")
    assert sampled.returncode == 0, sampled.stderr[-3000:]
    again = tool("sampler", f"--model_dir={preset / 'run'}", "--num_samples=2", "--seed=3",
                 f"--output={tmp_path / 'r.png'}", f"--npz={tmp_path / 'r.npz'}")
    assert again.returncode == 0, again.stderr[-3000:]
    # The preset holds the run's last checkpoint: the same seed draws the same images.
    np.testing.assert_array_equal(np.load(tmp_path / "s.npz")["samples"],
                                  np.load(tmp_path / "r.npz")["samples"])
    exported = tool("exporter", f"--preset={folder}", f"--export_dir={tmp_path / 'export'}",
                    "--nojit_compile")
    assert exported.returncode == 0, exported.stderr[-3000:]
    assert os.path.isfile(tmp_path / "export" / "saved_model.pb")


def test_init_from_preset_keeps_learning(preset, tmp_path):
    # Fine-tuning restarts the learning-rate schedule: a tenth of the training rate.
    result = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={tmp_path / 'tuned'}",
                  f"--init_from_preset={preset / 'tiny_preset'}",
                  "--gin_param=t2t_image.Trainer.num_train_steps=10",
                  "--gin_param=t2t_image.Trainer.learning_rate=0.02")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Initialised the model from preset" in result.stderr
    tuned = json.loads(result.stdout.strip().splitlines()[-1])["bits_per_dim"]
    start = _metadata(preset / "tiny_preset")["heldout"]["check"]["bits_per_dim"]
    fresh = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={tmp_path / 'fresh'}",
                 "--gin_param=t2t_image.Trainer.num_train_steps=10")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    scratch = json.loads(fresh.stdout.strip().splitlines()[-1])["bits_per_dim"]
    # Same 16 held-out images: 10 more steps improve on the preset, which is itself far
    # ahead of 10 steps from scratch.
    assert tuned < start < scratch, (tuned, start, scratch)


def test_init_from_preset_of_another_architecture_is_refused(preset, tmp_path):
    result = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={tmp_path / 'other'}",
                  f"--init_from_preset={preset / 'tiny_preset'}",
                  "--gin_param=t2t_image.ImageTransformer.hidden_size=32")
    assert_user_error(result, TRAINER, "hidden_size: 16 in preset")
    assert not os.path.exists(tmp_path / "other" / "checkpoints")


def test_damaged_preset_is_refused_by_name(preset, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(preset / "tiny_preset", broken)
    with open(broken / "model.weights.h5", "r+b") as f:
        f.seek(-100, os.SEEK_END)
        byte = f.read(1)
        f.seek(-100, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    for name, args in (("trainer", ["--mode=eval"]), ("sampler", ["--num_samples=1"]),
                       ("exporter", [f"--export_dir={tmp_path / 'e'}"])):
        result = tool(name, f"--preset={broken}", *args)
        assert_user_error(result, f"t2t-image-{name}", "do not match the fingerprint")
        assert str(broken) in result.stderr
    assert not os.path.exists(tmp_path / "e")
