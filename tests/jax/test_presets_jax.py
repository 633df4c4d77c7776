"""Presets under the JAX backend: a preset written by TensorFlow code loads, and every
shipped preset reproduces its recorded held-out bits/dim on its check slice."""

import os

import numpy as np
import pytest

import t2t_image
from t2t_image.sampling.sampler import ensure_built
from t2t_image.storage import presets
from t2t_image.training import preset_export
from tests.tiny_models import H, W, tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = presets.available() if os.path.isdir(presets.BUILTIN_DIR) else []


def test_round_trip_under_jax(tmp_path):
    model = tiny()
    ensure_built(model)
    presets.write(str(tmp_path / "p"), model, {})
    loaded = t2t_image.from_preset(str(tmp_path / "p"))
    features = {"targets": np.random.RandomState(0).randint(0, 256, (2, H, W, 3))}
    np.testing.assert_array_equal(np.asarray(loaded(features)), np.asarray(model(features)))


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_preset_reproduces_its_heldout_check(name, shared_data, monkeypatch):
    monkeypatch.chdir(REPO)  # the recorded data paths are relative to the repository root
    bits, recorded = preset_export.rescore_check(t2t_image.load_preset(name))
    assert abs(bits - recorded) < 0.01, (name, bits, recorded)
