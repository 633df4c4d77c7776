"""Loading a model directory: model.keras, or model_config.json + TF checkpoints."""

import json
import os
import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from t2t_image.storage.model_loading import load_model
from t2t_image.models import ImageTransformer
from t2t_image.sampling.common import dummy_features


def tiny(**overrides):
    args = dict(image_height=4, image_width=4, hidden_size=8, filter_size=8, num_heads=2,
                num_decoder_layers=1, block_length=4)
    args.update(overrides)
    model = ImageTransformer(**args)
    model(dummy_features(model))
    return model


def outputs(model):
    images = np.random.RandomState(0).randint(0, 256, (1, 4, 4, 3))
    return np.asarray(model({"targets": images}))


def trainer_dir(tmp_path, model, steps=(10, 20)):
    """A directory laid out like the trainer's: model_config.json + checkpoints/ckpt-N."""
    (tmp_path / "model_config.json").write_text(
        json.dumps(keras.saving.serialize_keras_object(model)))
    checkpoint = tf.train.Checkpoint(model=model, step=tf.Variable(0, dtype=tf.int64))
    manager = tf.train.CheckpointManager(checkpoint, str(tmp_path / "checkpoints"), 5,
                                         checkpoint_name="ckpt")
    saved = {}
    for step in steps:
        for w in model.weights:
            w.assign(w + 0.01)
        saved[step] = (manager.save(checkpoint_number=step), outputs(model))
    return saved


def test_model_keras_is_preferred(tmp_path):
    model = tiny(num_classes=3)
    model.save(tmp_path / "model.keras")
    loaded, source = load_model(str(tmp_path))
    assert source.endswith("model.keras") and loaded.num_classes == 3
    images = np.zeros((1, 4, 4, 3), np.int32)
    features = {"targets": images, "labels": np.array([1])}
    np.testing.assert_allclose(np.asarray(loaded(features)), np.asarray(model(features)),
                               atol=1e-6)


def test_trainer_layout_loads_the_latest_or_the_given_checkpoint(tmp_path):
    model = tiny()
    saved = trainer_dir(tmp_path, model)
    loaded, source = load_model(str(tmp_path))
    assert source == saved[20][0]
    np.testing.assert_allclose(outputs(loaded), saved[20][1], atol=1e-6)
    loaded, source = load_model(str(tmp_path), checkpoint=saved[10][0])
    assert source == saved[10][0]
    np.testing.assert_allclose(outputs(loaded), saved[10][1], atol=1e-6)


def test_missing_or_mismatched_files_are_reported(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.keras"):
        load_model(str(tmp_path))
    model = tiny()
    trainer_dir(tmp_path, model, steps=(1,))
    with pytest.raises(FileNotFoundError, match="ckpt-5"):
        load_model(str(tmp_path), checkpoint=str(tmp_path / "checkpoints" / "ckpt-5"))
    # A checkpoint of another architecture does not match model_config.json.
    other = tmp_path / "other"
    other.mkdir()
    saved = trainer_dir(other, tiny(hidden_size=16, filter_size=16), steps=(1,))
    with pytest.raises(ValueError, match="does not match"):
        load_model(str(tmp_path), checkpoint=saved[1][0])


@pytest.mark.parametrize("encoder", [False, True])
def test_tf_checkpoints_hold_every_weight(tmp_path, encoder):
    # Layers kept in lists (decoder/encoder blocks, layer norms) must reach
    # tf.train.Checkpoint, which the trainer's checkpoints and this loader use.
    from t2t_image.models import Img2ImgTransformer

    args = dict(image_height=4, image_width=4, hidden_size=8, filter_size=8, num_heads=2,
                num_decoder_layers=2, block_length=4, layer_preprocess_sequence="n",
                layer_postprocess_sequence="da")
    model = (Img2ImgTransformer(input_height=2, input_width=2, num_encoder_layers=2, **args)
             if encoder else ImageTransformer(**args))
    model(dummy_features(model))
    path = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt"))
    saved = [n for n, _ in tf.train.list_variables(path) if n.startswith("model/")]
    assert len(saved) == len(model.weights)


@pytest.mark.parametrize("folder", ["plain", "lr[0.1]"])
def test_damaged_checkpoints_fall_back_for_the_sampler_and_exporter(tmp_path, folder):
    """The loader the sampler and exporter share (issue 16): a "[" in the folder name, no
    state file, a truncated newest shard, NaN weights, nothing readable at all."""
    from t2t_image.storage.checkpoint_files import CheckpointNotFoundError

    model_dir = tmp_path / folder
    model_dir.mkdir()
    model = tiny()
    saved = trainer_dir(model_dir, model, steps=(10, 20, 30))
    ckpt_dir = model_dir / "checkpoints"
    (ckpt_dir / "checkpoint").unlink()  # the state file is gone: found by listing
    loaded, source = load_model(str(model_dir))
    assert source == saved[30][0]
    np.testing.assert_allclose(outputs(loaded), saved[30][1], atol=1e-6)
    data = ckpt_dir / "ckpt-30.data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(data.stat().st_size // 2)
    loaded, source = load_model(str(model_dir))
    assert source == saved[20][0]
    np.testing.assert_allclose(outputs(loaded), saved[20][1], atol=1e-6)
    # ckpt-20 made to hold NaN weights (as a diverged run wrote before issue 16).
    for w in model.weights:
        w.assign(w * np.nan)
    tf.train.Checkpoint(model=model, step=tf.Variable(0, dtype=tf.int64)).write(
        saved[20][0].replace("ckpt-20", "nan-tmp"))
    for ext in ("index", "data-00000-of-00001"):
        os.replace(ckpt_dir / f"nan-tmp.{ext}", ckpt_dir / f"ckpt-20.{ext}")
    loaded, source = load_model(str(model_dir))
    assert source == saved[10][0]
    np.testing.assert_allclose(outputs(loaded), saved[10][1], atol=1e-6)
    os.remove(ckpt_dir / "ckpt-10.data-00000-of-00001")
    with pytest.raises(CheckpointNotFoundError,
                       match=r"ckpt-30\.data-00000-of-00001: .*ckpt-20: .*NaN"):
        load_model(str(model_dir))


@pytest.mark.parametrize("content,reason", [
    (b"[1, 2]", "does not describe a Keras model (it holds [1, 2]"),
    (b"{}", "does not describe a Keras model (it holds {}"),
    (b"\x89\xfe garbage \x00", "is damaged (UnicodeDecodeError"),
    (b'{"class_name": "ImageTransformer"', "is damaged (JSONDecodeError"),
    (b"[" * 100_000, "is damaged (RecursionError"),
    (b'{"class_name": "Dense", "config": {"units": 3}}', "does not build a model (TypeError"),
], ids=["list", "empty_object", "garbage", "truncated", "deep", "not_a_model"])
def test_a_tampered_model_config_is_named_by_every_reader(tmp_path, content, reason):
    """Issue 24: [1,2] gave "'list' object has no attribute 'built'" in the sampler and an
    AttributeError traceback in the trainer; garbage a decode error not naming the file."""
    from t2t_image.storage import run_guard

    model = tiny()
    trainer_dir(tmp_path, model, steps=(1,))
    path = tmp_path / "model_config.json"
    path.write_bytes(content)
    with pytest.raises(ValueError) as error:  # the sampler's and the exporter's reader
        load_model(str(tmp_path))
    assert f"{path} {reason}" in str(error.value), str(error.value)
    if b"Dense" not in content:  # the trainer's check before it resumes
        with pytest.raises(ValueError, match=re.escape(f"{path} {reason}")):
            run_guard.check_model_config(str(tmp_path), model)


def test_a_model_dir_with_both_backends_checkpoints_loads_the_newest_of_either(tmp_path, caplog):
    """Issue 24: the sampler loaded the older TF checkpoint instead of the newest .npz one."""
    import logging

    from t2t_image.storage import npz_checkpoints

    model = tiny()
    saved = trainer_dir(tmp_path, model, steps=(10, 20))
    newer = [np.asarray(w) + 1.0 for w in model.weights]
    npz_path = str(tmp_path / "checkpoints" / "ckpt-30.npz")
    npz_checkpoints.write_checkpoint(npz_path, newer, [], 30)
    with caplog.at_level(logging.WARNING):
        loaded, source = load_model(str(tmp_path))
    assert source == npz_path and "holds checkpoints of both backends" in caplog.text
    for got, want in zip(loaded.weights, newer):
        np.testing.assert_array_equal(np.asarray(got), want)
    os.rename(npz_path, tmp_path / "checkpoints" / "ckpt-5.npz")  # now the older kind
    loaded, source = load_model(str(tmp_path))
    assert source == saved[20][0]
    np.testing.assert_allclose(outputs(loaded), saved[20][1], atol=1e-6)
