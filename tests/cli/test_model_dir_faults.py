"""The command-line tools on model_dirs and folders they must not damage (issue 24): an
export pointed at a run or at someone's files, tampered run files, a read-only run.

One real run of gin/tiny.gin (2 steps) is copied for each case; the tools run as
subprocesses and must refuse in a few lines naming the file or setting, losing nothing.
"""

import importlib.util
import os
import shutil

import pytest

from tests.cli.test_user_errors import assert_user_error
from tests.cli.test_user_errors import tool


@pytest.fixture(autouse=True)
def _needs_shared_data(shared_data):
    return shared_data


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("model_dir_faults") / "tiny"
    result = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={model_dir}",
                  "--gin_param=t2t_image.Trainer.num_train_steps=2",
                  "--gin_param=t2t_image.Trainer.eval_batches=1")
    assert result.returncode == 0, result.stderr[-3000:]
    return model_dir


def tree(folder):
    """Every file under ``folder`` with its bytes (but the trainer's log of what it did)."""
    return {os.path.relpath(os.path.join(root, name), folder):
            open(os.path.join(root, name), "rb").read()
            for root, _, names in os.walk(folder) for name in names if name != "trainer.log"}


def test_exporter_overwrite_never_replaces_a_run_or_other_files(tmp_path, trained):
    """--overwrite replaced a run's checkpoints/ (every checkpoint and the state file lost)
    and a folder of the user's files with the export."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = tree(run)
    result = tool("exporter", f"--model_dir={run}", f"--export_dir={run / 'checkpoints'}",
                  "--overwrite")
    assert_user_error(result, "t2t-image-exporter", f"--export_dir={run / 'checkpoints'}",
                      f"lies in the model_dir {run}", "model_config.json")
    assert tree(run) == before
    mine = tmp_path / "mine"
    (mine / "thesis").mkdir(parents=True)
    (mine / "thesis" / "draft.tex").write_text("\\section{Results}")
    result = tool("exporter", f"--model_dir={run}", f"--export_dir={mine}", "--overwrite")
    assert_user_error(result, "t2t-image-exporter", f"--export_dir={mine}",
                      "not an export written by t2t_image", "thesis/draft.tex")
    assert tree(mine) == {"thesis/draft.tex": b"\\section{Results}"}
    assert sorted(os.listdir(tmp_path)) == ["mine", "run"]  # no staging folder left


def test_trainer_on_tampered_or_missing_run_files_names_them(tmp_path, trained):
    """model_config.json holding [1,2] gave an AttributeError traceback; --mode=eval without
    it under another architecture's gin a raw TF shape ValueError."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    (run / "model_config.json").write_text("[1, 2]")
    before = tree(run)
    result = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={run}",
                  "--gin_param=t2t_image.Trainer.num_train_steps=3")
    assert_user_error(result, "t2t-image-trainer",
                      f"{run}/model_config.json does not describe a Keras model")
    assert tree(run) == before
    (run / "model_config.json").unlink()
    result = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={run}", "--mode=eval",
                  "--gin_param=t2t_image.ImageTransformer.hidden_size=32")
    assert_user_error(result, "t2t-image-trainer",
                      f"checkpoint {run}/checkpoints/ckpt-2 does not fit the current model",
                      "shape (768, 16)", f"{run} has no model_config.json",
                      f"{run}/operative_config.gin")
    assert (run / "eval_results.json").read_bytes() == before["eval_results.json"]


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs JAX installed")
def test_jax_tools_on_a_tensorflow_run_refuse_by_name(tmp_path, trained):
    """The JAX trainer on a TF model_dir trained from step 0 beside its checkpoints."""
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    before = tree(run)
    jax = {"KERAS_BACKEND": "jax"}
    result = tool("trainer", "--gin_file=gin/tiny.gin", f"--model_dir={run}",
                  "--gin_param=t2t_image.Trainer.num_train_steps=3", env=jax)
    assert_user_error(result, "t2t-image-trainer", "written by the trainer under "
                      f"KERAS_BACKEND=tensorflow (newest {run}/checkpoints/ckpt-2, step 2; "
                      "run_settings.json records backend 'tensorflow')",
                      "a trainer under KERAS_BACKEND=jax cannot resume")
    result = tool("sampler", f"--model_dir={run}", "--num_samples=1",
                  f"--output={tmp_path / 'grid.png'}", env=jax)
    assert_user_error(result, "t2t-image-sampler", "holds TensorFlow checkpoints",
                      "the JAX backend cannot read", "KERAS_BACKEND=tensorflow")
    assert tree(run) == before and not (tmp_path / "grid.png").exists()
