"""The trainer under the JAX backend: no TensorFlow needed, same numbers as the TF backend.

Cross-backend checks run ``cross_backend.py`` with ``KERAS_BACKEND=tensorflow``
in a subprocess (skipped where TensorFlow is not installed) and exchange npz
files with it.
"""

import importlib.util
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.jax import cross_backend

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HAVE_TF = importlib.util.find_spec("tensorflow") is not None
needs_tf = pytest.mark.skipif(not HAVE_TF, reason="the cross-backend check needs TensorFlow")

# A subprocess in which `import tensorflow` fails: what runs there runs without TF.
BLOCK_TF = """
import sys
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("TensorFlow is blocked in this test: " + name)
sys.meta_path.insert(0, _NoTensorFlow())
"""
TINY = [f"--gin_param={p}" for p in (
    "t2t_image.ImageTransformer.hidden_size = 32", "t2t_image.ImageTransformer.filter_size = 64",
    "t2t_image.Trainer.num_train_steps = 12", "t2t_image.Trainer.checkpoint_every = 1",
    "t2t_image.Trainer.keep_checkpoints = 20", "t2t_image.Trainer.eval_batches = 2",
    "t2t_image.Trainer.log_every = 4")]


def _env(backend="jax"):
    return dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
                PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))


def _trainer_cli(model_dir, *extra, block_tf=True):
    code = (BLOCK_TF if block_tf else "") + (
        "import sys; from t2t_image.cli.trainer import run; "
        "sys.argv = ['t2t-image-trainer'] + sys.argv[1:]; run()")
    return [sys.executable, "-c", code, "--gin_file=gin/tiny.gin", f"--model_dir={model_dir}",
            *TINY, *extra]


def _run_tf(*args):
    out = subprocess.run([sys.executable, os.path.join(REPO, "tests", "jax", "cross_backend.py"),
                          *map(str, args)], cwd=REPO, env=_env("tensorflow"),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def _weights(path):
    with np.load(path) as f:
        return [f[k] for k in f.files if k.startswith("arr_")]


@pytest.fixture(scope="module")
def jax_run(tmp_path_factory):
    """The tiny config trained 12 steps by the CLI in a process where TensorFlow cannot load."""
    model_dir = tmp_path_factory.mktemp("jax_run") / "run"
    out = subprocess.run(_trainer_cli(model_dir), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return model_dir


@pytest.fixture
def work(tmp_path, shared_data):
    """Initial weights, a batch and the data file shared by both backends."""
    npz = shared_data / "cifar10" / "cifar10_train_exact.npz"
    os.symlink(npz, tmp_path / "data.npz")
    t = cross_backend.trainer(tmp_path / "init", npz)
    t.build()
    np.savez(tmp_path / "weights.npz", *t.model.get_weights())
    batch = next(iter(cross_backend.dataset(npz, "train[:64]", True)))
    np.savez(tmp_path / "batch.npz", **batch)
    return tmp_path


def test_jax_trainer_runs_without_tensorflow(jax_run):
    names = os.listdir(jax_run / "checkpoints")
    assert sorted(names, key=lambda n: int(n[5:-4]))[-1] == "ckpt-12.npz"
    with open(jax_run / "eval_results.json") as f:
        results = json.load(f)
    assert results["step"] == 12 and results["num_examples"] == 8
    assert math.isfinite(results["bits_per_dim"])
    events = [n for n in os.listdir(jax_run / "train") if n.startswith("events.out")]
    assert events and os.path.getsize(jax_run / "train" / events[0]) > 100


def test_importing_the_jax_training_path_does_not_import_tensorflow():
    code = BLOCK_TF + (
        "import t2t_image.configurables, t2t_image.cli.trainer, t2t_image.data.numpy_pipeline\n"
        "import t2t_image.storage.model_loading, t2t_image.training.jax_step\n"
        "assert not [m for m in sys.modules if m.split('.')[0] == 'tensorflow']\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]


@needs_tf
def test_jax_trained_weights_give_the_same_bits_per_dim_under_tf(jax_run, shared_data):
    npz = shared_data / "cifar10" / "cifar10_train_exact.npz"
    tf_result = json.loads(_run_tf("bits_per_dim", jax_run, npz).strip().splitlines()[-1])
    assert tf_result["source"].endswith("ckpt-12.npz")
    jax_result = json.loads(subprocess.run(
        [sys.executable, "tests/jax/cross_backend.py", "bits_per_dim", str(jax_run), str(npz)],
        cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600,
        check=True).stdout.strip().splitlines()[-1])
    # float32 noise of two backends' kernels on the same weights.
    assert abs(tf_result["bits_per_dim"] - jax_result["bits_per_dim"]) < 1e-5


@needs_tf
def test_loss_and_gradients_equal_the_tf_step(work):
    cross_backend.gradients(str(work))
    _run_tf("gradients", work)
    with np.load(work / "gradients_jax.npz") as j, np.load(work / "gradients_tensorflow.npz") as t:
        assert j.files == t.files and len(j.files) > 10
        np.testing.assert_allclose(j["loss"], t["loss"], rtol=1e-6)
        for key in j.files[1:]:
            # float32 noise: max difference within 1e-4 of the tensor's largest entry.
            scale = np.abs(t[key]).max()
            assert scale > 0 and np.abs(j[key] - t[key]).max() / scale < 1e-4, key


@needs_tf
def test_fifty_steps_end_where_the_tf_run_ends(work):
    cross_backend.train(str(work), 50)
    _run_tf("train", work, 50)
    jax_w, tf_w = _weights(work / "trained_jax.npz"), _weights(work / "trained_tensorflow.npz")
    init = _weights(work / "weights.npz")
    for j, t, w0 in zip(jax_w, tf_w, init):
        # The CHANGE of every weight tensor over 50 Adam steps agrees within 1% (L2 norm of
        # the difference over that of the change; measured <= 1e-3 with TF's XLA step,
        # 2e-5 without). Weights move by up to 0.06-0.26 per tensor.
        change = np.linalg.norm(t - w0)
        assert np.abs(t - w0).max() > 1e-2
        assert np.linalg.norm(j - t) / change < 1e-2
    with np.load(work / "trained_jax.npz") as j, np.load(work / "trained_tensorflow.npz") as t:
        # Held-out bits/dim after 50 steps (measured differences: 6e-7 to 2.2e-6).
        assert abs(float(j["bits_per_dim"]) - float(t["bits_per_dim"])) < 1e-4
    # TF-trained weights load under JAX: TF saves the model as model.keras, JAX loads it.
    _run_tf("save_keras", work / "run_tensorflow")
    from t2t_image.storage.model_loading import load_model

    model, source = load_model(str(work / "run_tensorflow"))
    assert source.endswith("model.keras")
    for a, b in zip(model.get_weights(), tf_w):
        np.testing.assert_array_equal(a, b)


def test_resume_after_sigkill_gives_the_weights_of_an_uninterrupted_run(tmp_path, jax_run):
    killed = tmp_path / "killed"
    # Evaluating after every step slows the run down so that the kill lands mid-run;
    # evaluation does not change what training computes.
    slow = ("--gin_param=t2t_image.Trainer.eval_every = 1",
            "--gin_param=t2t_image.Trainer.eval_batches = 40")
    proc = subprocess.Popen(_trainer_cli(killed, *slow), cwd=REPO, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "checkpoints" / "ckpt-5.npz").exists() and proc.poll() is None:
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    left = sorted(os.listdir(killed / "checkpoints"))
    assert "ckpt-12.npz" not in left, "the run finished before the kill: nothing was tested"
    out = subprocess.run(_trainer_cli(killed), cwd=REPO, env=_env(), capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    from t2t_image.storage import npz_checkpoints

    resumed = npz_checkpoints.read_checkpoint(killed / "checkpoints" / "ckpt-12.npz")
    straight = npz_checkpoints.read_checkpoint(jax_run / "checkpoints" / "ckpt-12.npz")
    for a, b in zip(resumed[0] + resumed[1], straight[0] + straight[1]):
        np.testing.assert_array_equal(a, b)
    assert resumed[3] == straight[3]  # the data iterator's position too


@pytest.mark.parametrize("variant", ["dmol_2d", "class_conditional", "img2img"])
def test_model_variants_train_and_resume(tmp_path, variant):
    import functools

    from t2t_image.data.numpy_pipeline import make_numpy_dataset
    from t2t_image.models import Img2ImgTransformer
    from t2t_image.models import ImageTransformer
    from t2t_image.training.trainer import Trainer

    task = {"class_conditional": "class_conditional", "img2img": "super_resolution"}.get(
        variant, "unconditional")
    model_args = dict(image_height=8, image_width=8, hidden_size=16, filter_size=32,
                      num_heads=2, num_decoder_layers=1, layer_prepostprocess_dropout=0.0)
    cls = ImageTransformer
    if variant == "dmol_2d":
        model_args.update(likelihood="dmol", num_mixtures=2, dec_attention_type="local_2d",
                          query_shape=(4, 4), memory_flange=(2, 4))
    elif variant == "class_conditional":
        model_args.update(num_classes=10, block_length=16)
    else:
        cls = Img2ImgTransformer
        model_args.update(input_height=4, input_width=4, num_encoder_layers=1, block_length=16)

    def data(split, training, with_info=False):
        return make_numpy_dataset("random", split, batch_size=2, task=task, image_size=8,
                                  input_size=4, training=training, seed=0,
                                  source_kwargs={"num_examples": 8, "image_size": 8},
                                  with_info=with_info)

    def trainer(steps):
        return Trainer(str(tmp_path), functools.partial(cls, **model_args),
                       functools.partial(data, "train", True),
                       functools.partial(data, "test", False), num_train_steps=steps,
                       checkpoint_every=2, log_every=1, learning_rate=0.05, warmup_steps=4,
                       sample_every=3, num_samples=2)

    first = trainer(2)
    results = first.train()
    assert math.isfinite(results["bits_per_dim"]) and results["num_examples"] == 8
    resumed = trainer(3)
    resumed.train()
    assert int(resumed.step.numpy()) == 3
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["ckpt-2.npz", "ckpt-3.npz"]
    # Sample grids: PNGs and TensorBoard images (written without TF).
    assert (tmp_path / "samples" / "step_3.png").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "eval"))
    events.Reload()
    assert "samples" in events.Tags()["tensors"]
    # (the first run's grid at its last step 2, the resumed run's at step 3)
    assert [e.step for e in events.Tensors("samples")] == [2, 3]
    train = EventAccumulator(str(tmp_path / "train"))
    train.Reload()
    assert [e.step for e in train.Tensors("loss")] == [1, 2, 3]


def test_a_truncated_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, jax_run):
    import shutil

    from t2t_image.storage import npz_checkpoints

    run = tmp_path / "run"
    shutil.copytree(jax_run, run)
    newest = run / "checkpoints" / "ckpt-12.npz"
    newest.write_bytes(newest.read_bytes()[:1000])
    out = subprocess.run(_trainer_cli(run, "--mode=eval"), cwd=REPO, env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    with open(run / "eval_results.json") as f:
        assert json.load(f)["step"] == 11
    assert npz_checkpoints.latest_checkpoint(str(run / "checkpoints")).endswith("ckpt-12.npz")


def test_damaged_newest_checkpoints_are_skipped_and_the_resumed_run_matches(tmp_path, jax_run):
    """Issue 24: a NaN-filled newest ckpt-N.npz was "the last good checkpoint" of every restart;
    0-byte and crafted ones (bad data position, deep JSON, non-scalar step) crashed."""
    import shutil

    from t2t_image.storage import npz_checkpoints

    run = tmp_path / "run"
    shutil.copytree(jax_run, run)
    folder = run / "checkpoints"

    def rewrite(number, **changes):
        path = folder / f"ckpt-{number}.npz"
        with np.load(path) as f:
            arrays = {k: f[k] for k in f.files}
        arrays.update(changes)
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    with np.load(folder / "ckpt-12.npz") as f:
        rewrite(12, **{"model/000000": np.full_like(f["model/000000"], np.nan)})
    (folder / "ckpt-11.npz").write_bytes(b"")
    rewrite(10, data_iterator=np.asarray('{"epoch": 0, "position": 99999999}'))
    rewrite(9, data_iterator=np.asarray("[" * 50_000 + "]" * 50_000))
    rewrite(8, step=np.arange(2))
    out = subprocess.run(_trainer_cli(run, "--gin_param=t2t_image.Trainer.eval_batches=1"),
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    for step, reason in ((12, "NaN or infinite"), (11, "empty (0 bytes)"),
                         (10, "data position epoch=0, position=99999999 is outside"),
                         (9, "nested too deeply"), (8, "'step' must be a scalar")):
        assert f"{folder}/ckpt-{step}.npz" in out.stderr and reason in out.stderr, reason
    assert f"Restored {folder}/ckpt-7.npz at step 7." in out.stderr
    resumed = npz_checkpoints.read_checkpoint(folder / "ckpt-12.npz")
    straight = npz_checkpoints.read_checkpoint(jax_run / "checkpoints" / "ckpt-12.npz")
    for a, b in zip(resumed[0] + resumed[1], straight[0] + straight[1]):
        np.testing.assert_array_equal(a, b)


@needs_tf
def test_tensorflow_tools_on_a_jax_run_refuse_training_and_evaluate_its_newest(tmp_path, jax_run):
    """Issue 24: the TF trainer on a JAX model_dir trained from step 0 beside its checkpoints,
    overwrote eval_results.json and exited 0."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(jax_run, run)
    with open(run / "run_settings.json") as f:
        assert json.load(f)["backend"] == "jax"

    def tree():
        return {os.path.relpath(os.path.join(r, n), run): os.path.getmtime(os.path.join(r, n))
                for r, _, names in os.walk(run) for n in names if n != "trainer.log"}

    before = tree()
    trained = subprocess.run(_trainer_cli(run, block_tf=False), cwd=REPO,
                             env=_env("tensorflow"), capture_output=True, text=True, timeout=600)
    assert trained.returncode == 1, trained.stderr[-3000:]
    assert "Traceback" not in trained.stderr
    assert (f"holds checkpoints written by the trainer under KERAS_BACKEND=jax (newest "
            f"{run}/checkpoints/ckpt-12.npz, step 12; run_settings.json records backend 'jax'), "
            "which a trainer under KERAS_BACKEND=tensorflow cannot resume") in trained.stderr
    assert tree() == before  # nothing written, nothing started over
    evaluated = subprocess.run(_trainer_cli(run, "--mode=eval", block_tf=False), cwd=REPO,
                               env=_env("tensorflow"), capture_output=True, text=True,
                               timeout=600)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    assert f"Using {run}/checkpoints/ckpt-12.npz, written under KERAS_BACKEND=jax" in \
        evaluated.stderr
    results = json.loads(evaluated.stdout.strip().splitlines()[-1])
    with open(jax_run / "eval_results.json") as f:
        jax_results = json.load(f)
    assert results["step"] == 12 and results["checkpoint"].endswith("ckpt-12.npz")
    assert abs(results["bits_per_dim"] - jax_results["bits_per_dim"]) < 1e-5
