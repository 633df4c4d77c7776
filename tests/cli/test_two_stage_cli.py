"""The two-stage workflow through the command-line tools, on real CelebA faces.

t2t-image-trainer trains the first stage (gin/tiny_vq.gin) and then the prior
over its codes (gin/tiny_prior.gin); t2t-image-sampler samples a grid larger
than the training size through both stages; t2t-image-exporter writes the
two-stage SavedModel.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tool(name, *args, timeout=400):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    done = subprocess.run([sys.executable, "-m", f"t2t_image.cli.{name}", *args], cwd=REPO,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(autouse=True)
def _needs_shared_data(shared_data):
    return shared_data


def test_first_stage_prior_sampler_and_exporter(tmp_path):
    from t2t_image.storage.model_loading import load_model

    first, prior = tmp_path / "vq", tmp_path / "prior"
    tool("trainer", "--gin_file=gin/tiny_vq.gin", f"--model_dir={first}")
    results = json.loads((first / "eval_results.json").read_text())
    assert {"psnr", "bicubic_psnr", "codebook_usage", "perplexity"} <= set(results)
    tool("trainer", "--gin_file=gin/tiny_prior.gin", f"--model_dir={prior}",
         f"--gin_param=FIRST_STAGE_DIR = '{first}'")
    assert json.loads((prior / "first_stage.json").read_text())["first_stage_dir"] == str(first)
    assert len(list((first / "codes").glob("*.npz"))) == 2  # the train and eval splits
    evaluated = json.loads((prior / "eval_results.json").read_text())
    # Six steps already beat the uniform distribution over the 32 codes (5 bits per code).
    assert evaluated["bits_per_dim"] < 5.0
    # bits per image dimension = bits per code * 16 codes / (16 * 16 * 3) sub-pixels.
    assert evaluated["bits_per_image_dim"] == pytest.approx(
        evaluated["bits_per_dim"] * 16 / (16 * 16 * 3), rel=1e-6)
    assert (prior / "samples" / "step_6.png").is_file()  # decoded through the first stage

    out = tool("sampler", f"--model_dir={prior}", "--num_samples=2", "--height=32",
               "--width=32", "--size_units=pixels", "--top_k=8", "--seed=3",
               f"--output={tmp_path / 'big.png'}", f"--npz={tmp_path / 'big.npz'}",
               "--noprogress")
    assert "Wrote a grid of 2 samples" in out.stdout
    data = np.load(tmp_path / "big.npz")
    assert data["codes"].shape == (2, 8, 8) and data["samples"].shape == (2, 32, 32, 3)
    vq = load_model(str(first))[0]
    np.testing.assert_array_equal(data["samples"], np.asarray(vq.images_from_codes(data["codes"])))

    tool("exporter", f"--model_dir={prior}", f"--export_dir={tmp_path / 'export'}")
    assert (tmp_path / "export" / "saved_model.pb").is_file()

    # A two-stage preset carries its first stage: once written, it evaluates and samples
    # without the run directories (codes are cached in the evaluation's model_dir).
    from t2t_image.storage import presets
    from t2t_image.training.preset_export import rescore_check

    tool("trainer", "--mode=export_preset", f"--model_dir={prior}",
         f"--preset_dir={tmp_path / 'preset'}")
    os.rename(first, tmp_path / "vq_moved")
    loaded = presets.load(str(tmp_path / "preset"))
    assert sorted(os.listdir(tmp_path / "preset" / "first_stage")) == ["config.json",
                                                                       "model.weights.h5"]
    now, recorded = rescore_check(loaded)
    assert abs(now - recorded) < 1e-4
    files_before = sorted(os.listdir(tmp_path / "preset"))
    out = tool("trainer", "--mode=eval", f"--preset={tmp_path / 'preset'}",
               f"--model_dir={tmp_path / 'eval'}")
    evaluated = json.loads(out.stdout.strip().splitlines()[-1])
    assert evaluated["bits_per_dim"] < 5.0
    assert sorted(os.listdir(tmp_path / "preset")) == files_before  # nothing written there
    assert len(list((tmp_path / "eval" / "preset_codes").glob("*.npz"))) == 2
    tool("sampler", f"--preset={tmp_path / 'preset'}", "--num_samples=2", "--seed=3",
         f"--output={tmp_path / 'p.png'}", f"--npz={tmp_path / 'p.npz'}", "--noprogress")
    assert np.load(tmp_path / "p.npz")["samples"].shape == (2, 16, 16, 3)
