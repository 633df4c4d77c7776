"""Presets: written atomically, loaded by name or path, refused by name when damaged;
every shipped preset reproduces its recorded held-out bits/dim on its check slice."""

import json
import os

import numpy as np
import pytest

import t2t_image
from t2t_image.sampling.sampler import ensure_built
from t2t_image.storage import presets
from tests.tiny_models import H, W, tiny

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SHIPPED = presets.available() if os.path.isdir(presets.BUILTIN_DIR) else []


def _model():
    model = tiny()
    ensure_built(model)
    return model


@pytest.fixture
def preset_dir(tmp_path):
    model = _model()
    presets.write(str(tmp_path / "p"), model, {"note": "test"},
                  extra_files={"README.md": b"card"})
    return tmp_path / "p", model


def test_round_trip_reproduces_outputs(preset_dir):
    folder, model = preset_dir
    loaded = t2t_image.from_preset(str(folder))
    features = {"targets": np.random.RandomState(0).randint(0, 256, (2, H, W, 3))}
    np.testing.assert_array_equal(np.asarray(loaded(features)), np.asarray(model(features)))
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["files"] == ["config.json", "model.weights.h5"]
    assert metadata["fingerprint"] == presets.fingerprint(str(folder))
    assert metadata["note"] == "test"
    assert (folder / "README.md").read_bytes() == b"card"
    assert not [n for n in os.listdir(folder.parent) if n.startswith(".preset-")]


def test_name_lookup_uses_the_search_path(preset_dir, monkeypatch):
    folder, _ = preset_dir
    monkeypatch.setenv(presets.ENV_VAR, str(folder.parent))
    assert presets.resolve("p") == str(folder)
    assert "p" in presets.available()
    with pytest.raises(presets.PresetError, match=r"no preset named 'nope'; available: .*\bp\b"):
        presets.resolve("nope")


@pytest.mark.parametrize("damage", ["flip_weights", "truncate_config", "drop_weights",
                                    "garbage_metadata", "other_fingerprint", "escape_path"])
def test_damaged_preset_is_refused_by_name(preset_dir, damage):
    folder, _ = preset_dir
    weights, meta = folder / "model.weights.h5", folder / "metadata.json"
    if damage == "flip_weights":
        data = bytearray(weights.read_bytes())
        data[len(data) // 2] ^= 0x01
        weights.write_bytes(bytes(data))
        match = r"do not match the fingerprint"
    elif damage == "truncate_config":
        path = folder / "config.json"
        path.write_bytes(path.read_bytes()[:40])
        match = r"do not match the fingerprint"
    elif damage == "drop_weights":
        weights.unlink()
        match = r"model file 'model.weights.h5' .* is missing"
    elif damage == "garbage_metadata":
        meta.write_bytes(b"\xff\x00 not json")
        match = r"metadata.json is damaged"
    elif damage == "other_fingerprint":
        record = json.loads(meta.read_text())
        record["fingerprint"] = "sha256:" + "0" * 64
        meta.write_text(json.dumps(record))
        match = r"do not match the fingerprint"
    else:
        record = json.loads(meta.read_text())
        record["files"] = ["../../etc/passwd"]
        meta.write_text(json.dumps(record))
        match = r"is missing"
    with pytest.raises(presets.PresetError, match=match) as error:
        t2t_image.from_preset(str(folder))
    assert str(folder) in str(error.value)


def test_write_never_replaces_a_folder_that_is_not_a_preset(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(presets.PresetError, match="is not a preset folder"):
        presets.write(str(tmp_path / "mine"), _model(), {})
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_preset_reproduces_its_heldout_check(name, shared_data, monkeypatch):
    """Loads the preset, re-reads its first held-out images from ../shared/data and
    scores them: the bits/dim equal the recorded ones within 0.01."""
    from t2t_image.training import preset_export

    monkeypatch.chdir(REPO)  # the recorded data paths are relative to the repository root
    preset = t2t_image.load_preset(name)
    bits, recorded = preset_export.rescore_check(preset)
    assert abs(bits - recorded) < 0.01, (name, bits, recorded)
    size = sum(os.path.getsize(os.path.join(root, f))
               for root, _, names in os.walk(preset.folder) for f in names)
    assert size < 8 * 2**20  # each preset under 8 MB


def test_shipped_presets_fit_the_repository_budget():
    """Every shipped preset verifies against its fingerprint; all together stay under 30 MB."""
    total = 0
    for name in SHIPPED:
        folder = presets.resolve(name)
        presets.verify(folder)
        total += sum(os.path.getsize(os.path.join(root, f))
                     for root, _, names in os.walk(folder) for f in names)
    assert total < 30 * 2**20
