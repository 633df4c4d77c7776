"""t2t-image-compress and t2t-image-decompress end to end, in separate processes."""

import numpy as np
from PIL import Image

# The sampler's CLI tests' launcher and model (4x4, 3 classes, saved as model.keras).
from tests.cli.test_sampler_cli import model_dir, run_tool  # noqa: F401 (a fixture)


def _one_line_error(proc):
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stderr.strip().splitlines()[-1]


def test_per_image_files_round_trip_across_processes(tmp_path, model_dir):
    folder = model_dir[1]
    rng = np.random.RandomState(0)
    images = rng.randint(0, 256, (2, 4, 4, 3)).astype(np.uint8)
    images[1] = 255
    for i, image in enumerate(images):
        Image.fromarray(image).save(tmp_path / f"im{i}.png")
    proc = run_tool("t2t-image-compress", f"--model_dir={folder}", "--label=2",
                    "--output=packed/", "im0.png", "im1.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Compressed 2 images into 2 files in packed/" in proc.stdout
    files = sorted((tmp_path / "packed").iterdir())
    assert [f.name for f in files] == ["im0.t2tc", "im1.t2tc"]
    # Decoded in another process, one file at a time (each was coded alone).
    proc = run_tool("t2t-image-decompress", f"--model_dir={folder}", "--output=out/",
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
    proc = run_tool("t2t-image-decompress", f"--model_dir={folder}", "--output=all.npz",
                    "packed/im0.t2tc", "packed/bad.t2tc", cwd=tmp_path)
    assert "packed/bad.t2tc is corrupted or truncated" in _one_line_error(proc)
    assert not (tmp_path / "all.npz").exists()
