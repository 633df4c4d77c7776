"""t2t-image-compress and t2t-image-decompress end to end, in separate processes."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from t2t_image.models import ImageTransformer

BIN = pathlib.Path(__file__).resolve().parents[2] / "bin"


def run_tool(name, *args, cwd):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, str(BIN / name), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


@pytest.fixture
def model_dir(tmp_path):
    model = ImageTransformer(image_height=4, image_width=4, hidden_size=16, filter_size=16,
                             num_heads=2, num_decoder_layers=1, block_length=4, num_classes=3)
    model({"targets": np.zeros((1, 4, 4, 3), np.int32), "labels": np.zeros(1, np.int32)})
    model.output_layer.kernel.assign(model.output_layer.kernel * 3.0)
    folder = tmp_path / "model"
    folder.mkdir()
    model.save(folder / "model.keras")
    return folder


def _one_line_error(proc):
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_per_image_files_round_trip_across_processes(tmp_path, model_dir):
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    images[1] = 255
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"im{i}.png")
    proc = run_tool("t2t-image-compress", f"--model_dir={model_dir}", "--label=2",
                    "--output=packed/", "im0.png", "im1.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Compressed 2 images into 2 files in packed/" in proc.stdout
    files = sorted((tmp_path / "packed").iterdir())
    assert [f.name for f in files] == ["im0.t2tc", "im1.t2tc"]
    # Decoded in another process, one file at a time (each was coded alone).
    proc = run_tool("t2t-image-decompress", f"--model_dir={model_dir}", "--output=out/",
                    "packed/im1.t2tc", "packed/im0.t2tc", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for i, image in enumerate(images):
        np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "out" / f"im{i}.png")),
                                      image)

    # A corrupted file among good ones: one line naming it, nothing written, no decoding.
    bad = tmp_path / "packed" / "bad.t2tc"
    data = bytearray(files[0].read_bytes())
    data[len(data) // 2] ^= 1
    bad.write_bytes(bytes(data))
    proc = run_tool("t2t-image-decompress", f"--model_dir={model_dir}", "--output=all.npz",
                    "packed/im0.t2tc", "packed/bad.t2tc", cwd=tmp_path)
    assert "packed/bad.t2tc is corrupted or truncated" in _one_line_error(proc)
    assert not (tmp_path / "all.npz").exists()
