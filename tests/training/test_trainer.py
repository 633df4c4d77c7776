"""Trainer tests on real CIFAR-10 images (8x8 area-downsampled), tiny models."""

import functools
import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf

from t2t_image.data import make_dataset
from t2t_image.models import ImageTransformer
from t2t_image.training.trainer import NonFiniteLossError
from t2t_image.training.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _dataset(npz, split, training, batch_size=4, with_info=False):
    return make_dataset("npz", split, batch_size=batch_size, image_size=8, training=training,
                        seed=1, source_kwargs={"path": str(npz)}, with_info=with_info)


def _trainer(model_dir, npz, **kwargs):
    model_fn = functools.partial(
        ImageTransformer, image_height=8, image_width=8, hidden_size=16, filter_size=32,
        num_heads=2, num_decoder_layers=1, block_length=16, layer_prepostprocess_dropout=0.0)
    args = dict(num_train_steps=6, log_every=2, checkpoint_every=3, learning_rate=0.2,
                warmup_steps=10)
    args.update(kwargs)
    return Trainer(str(model_dir), model_fn,
                   functools.partial(_dataset, npz, "train[:64]", True),
                   functools.partial(_dataset, npz, "train[64:74]", False), **args)


@pytest.fixture
def npz(shared_data):
    return shared_data / "cifar10" / "cifar10_train_exact.npz"


def test_train_checkpoints_resume_and_eval_over_the_whole_split(tmp_path, npz):
    trainer = _trainer(tmp_path, npz)
    results = trainer.train()
    ckpts = sorted(os.listdir(tmp_path / "checkpoints"))
    assert "ckpt-3.index" in ckpts and "ckpt-6.index" in ckpts
    assert int(trainer.step.numpy()) == 6
    # Evaluation: 10 images in batches of 4, 4, 2: the mean is over images.
    features = next(iter(_dataset(npz, "train[64:74]", False, batch_size=10)))
    nll = -np.asarray(trainer.model.log_prob(features))
    assert results["num_examples"] == 10
    np.testing.assert_allclose(results["nats_per_image"], nll.mean(), rtol=1e-5)
    np.testing.assert_allclose(results["bits_per_dim"], nll.mean() / (192 * math.log(2)),
                               rtol=1e-5)
    with open(tmp_path / "eval_results.json") as f:
        assert json.load(f)["bits_per_dim"] == pytest.approx(results["bits_per_dim"])
    weights = trainer.model.get_weights()
    # A second trainer on the same directory resumes at step 6 and trains to 8.
    resumed = _trainer(tmp_path, npz, num_train_steps=8)
    resumed.build()
    resumed.restore()
    assert int(resumed.step.numpy()) == 6
    for a, b in zip(weights, resumed.model.get_weights()):
        np.testing.assert_array_equal(a, b)
    resumed.train()
    assert int(resumed.step.numpy()) == 8
    assert "ckpt-8.index" in os.listdir(tmp_path / "checkpoints")


def test_interrupted_training_matches_uninterrupted(tmp_path, npz):
    straight = _trainer(tmp_path / "a", npz, num_train_steps=6)
    straight.train()
    first = _trainer(tmp_path / "b", npz, num_train_steps=3)
    first.train()
    second = _trainer(tmp_path / "b", npz, num_train_steps=6)
    second.train()
    for a, b in zip(straight.model.get_weights(), second.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, npz):
    trainer = _trainer(tmp_path, npz, num_train_steps=10, checkpoint_every=2)
    trainer.build()
    nll_fn = trainer._per_example_nll

    def poisoned(features, training):
        # From the 5th step on, the loss is NaN (a factor, so earlier gradients stay finite).
        factor = tf.where(trainer.step >= 4, float("nan"), 1.0)
        return nll_fn(features, training) * factor

    trainer._per_example_nll = poisoned
    with pytest.raises(NonFiniteLossError, match="at step 5") as err:
        trainer.train()
    assert "ckpt-4" in str(err.value)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-4")


def test_average_checkpoints(tmp_path, npz):
    trainer = _trainer(tmp_path, npz, num_train_steps=6, checkpoint_every=2)
    trainer.train()
    paths = trainer.manager.checkpoints[-2:]
    expected = []
    for path in paths:
        tf.train.Checkpoint(model=trainer.model).read(path).expect_partial()
        expected.append(trainer.model.get_weights())
    averaged = trainer.average_checkpoints(2)
    assert "averaged" in averaged
    fresh = _trainer(tmp_path, npz)
    fresh.restore(averaged)
    for got, a, b in zip(fresh.model.get_weights(), *expected):
        np.testing.assert_allclose(got, (a.astype(np.float64) + b) / 2, rtol=1e-6, atol=1e-7)


def test_bad_settings_fail_before_training(tmp_path, npz):
    with pytest.raises(ValueError, match="num_train_steps"):
        _trainer(tmp_path, npz, num_train_steps=-1)
    with pytest.raises(ValueError, match="precision"):
        _trainer(tmp_path, npz, precision="float8")
    with pytest.raises(ValueError, match="strategy"):
        _trainer(tmp_path, npz, strategy="horovod")
    # A model whose image size does not match the data fails in build(), before any step.
    trainer = Trainer(str(tmp_path), functools.partial(ImageTransformer, image_height=16,
                                                       image_width=16, hidden_size=16,
                                                       filter_size=16, num_heads=2,
                                                       num_decoder_layers=1),
                      functools.partial(_dataset, npz, "train[:8]", True))
    with pytest.raises(ValueError, match="image_height=16"):
        trainer.build()
    assert not os.path.exists(tmp_path / "checkpoints")


_DISTRIBUTED_SCRIPT = textwrap.dedent("""
    import functools, json, os, sys
    import numpy as np
    import tensorflow as tf
    strategy, out = sys.argv[1], sys.argv[2]
    if strategy == "mirrored":
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    sys.path.insert(0, {repo!r})
    from tests.training.test_trainer import _trainer
    import pathlib
    trainer = _trainer(out + "/model", pathlib.Path({npz!r}), num_train_steps=3,
                       strategy=strategy)
    trainer.eval_dataset_fn = None
    trainer.train()
    weights = np.concatenate([w.ravel() for w in trainer.model.get_weights()])
    np.save(out + "/weights_" + os.environ.get("WORKER", "0") + ".npy", weights)
""")


def test_labels_beyond_the_models_classes_fail_when_the_data_is_built(tmp_path, npz):
    def dataset(split, training, num_classes=None, with_info=False):
        return make_dataset("npz", split, batch_size=4, image_size=8, training=training,
                            task="class_conditional", source_kwargs={"path": str(npz)},
                            num_classes=num_classes, with_info=with_info)

    def trainer(num_classes):
        model_fn = functools.partial(
            ImageTransformer, image_height=8, image_width=8, hidden_size=16, filter_size=32,
            num_heads=2, num_decoder_layers=1, block_length=16, num_classes=num_classes)
        return Trainer(str(tmp_path / str(num_classes)), model_fn,
                       functools.partial(dataset, "train[:64]", True),
                       functools.partial(dataset, "train[64:74]", False), num_train_steps=1)

    # The trainer passes the model's num_classes on: 10 CIFAR-10 classes do not fit 5.
    with pytest.raises(ValueError, match=r"outside \[0, num_classes=5\)"):
        trainer(5).build()
    trainer(10).build()


def _run_script(tmp_path, npz, strategy, env=None, name="run"):
    script = tmp_path / "train_script.py"
    script.write_text(_DISTRIBUTED_SCRIPT.format(repo=REPO, npz=str(npz)))
    out = tmp_path / name
    out.mkdir()
    full_env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", **(env or {}))
    return subprocess.Popen([sys.executable, str(script), strategy, str(out)], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT), out


def test_mirrored_strategy_matches_single_device(tmp_path, npz):
    proc_a, out_a = _run_script(tmp_path, npz, "default", name="default")
    log_a = proc_a.communicate(timeout=240)[0].decode()
    assert proc_a.returncode == 0, log_a[-3000:]
    proc_b, out_b = _run_script(tmp_path, npz, "mirrored", name="mirrored")
    log_b = proc_b.communicate(timeout=240)[0].decode()
    assert proc_b.returncode == 0, log_b[-3000:]
    np.testing.assert_allclose(np.load(out_a / "weights_0.npy"), np.load(out_b / "weights_0.npy"),
                               rtol=1e-4, atol=1e-5)


