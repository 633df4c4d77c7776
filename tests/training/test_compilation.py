"""The train step's compilation per precision and device (Trainer.jit_compile="auto")."""

import pytest

from t2t_image.training import compilation


@pytest.mark.parametrize("precision, device, expected", [
    (None, "CPU", False),  # the graph executor's oneDNN kernels are faster on a CPU
    ("float32", "CPU", False),
    ("mixed_bfloat16", "CPU", False),  # XLA:CPU has no oneDNN bfloat16 matmuls
    ("mixed_float16", "CPU", False),
    ("mixed_bfloat16", "GPU", True),
    ("mixed_bfloat16", "TPU", True),
    ("float32", "GPU", True),
])
def test_auto_picks_per_precision_and_device(precision, device, expected):
    assert compilation.resolve_jit_compile("auto", precision, device) is expected


@pytest.mark.parametrize("value", [True, False])
def test_explicit_setting_wins(value):
    for precision in (None, "mixed_bfloat16"):
        assert compilation.resolve_jit_compile(value, precision, "CPU") is value


@pytest.mark.parametrize("bad", ["yes", 1, 0, None, "xla"])
def test_bad_value_names_the_setting(bad):
    with pytest.raises(ValueError, match="Trainer.jit_compile"):
        compilation.resolve_jit_compile(bad, None, "CPU")


def test_this_machine_is_a_cpu_under_tensorflow():
    assert compilation.accelerator_type("tpu") == "TPU"
    assert compilation.accelerator_type() in ("CPU", "GPU")


def test_bfloat16_trainer_runs_without_xla_and_learns_like_float32(tmp_path, shared_data):
    # Same seed, weights (float32 variables) and batches; mixed_bfloat16 computes the
    # matmuls in bfloat16 and keeps softmax, loss, layer norm and Adam in float32, so
    # after 6 steps its held-out bits/dim is within 0.03 of the float32 run's.
    from tests.training.test_trainer import _trainer

    npz = shared_data / "cifar10" / "cifar10_train_exact.npz"
    results = {}
    for precision in ("float32", "mixed_bfloat16"):
        trainer = _trainer(tmp_path / precision, npz, precision=precision)
        assert trainer.jit_compile is False  # "auto" on a CPU
        results[precision] = trainer.train()["bits_per_dim"]
    assert results["float32"] < 8.0  # below a uniform model: it learned something
    assert abs(results["mixed_bfloat16"] - results["float32"]) < 0.03, results


def test_every_gin_file_leaves_the_choice_to_auto():
    # A gin file that forced True/False would undo "auto" for the other precision.
    import pathlib
    import re

    gin_dir = pathlib.Path(__file__).resolve().parents[2] / "gin"
    files = sorted(gin_dir.rglob("*.gin"))
    assert len(files) > 10
    for path in files:
        for line in path.read_text().splitlines():
            m = re.match(r"\s*[\w./]*Trainer\.jit_compile\s*=\s*(\S+)", line)
            if m:
                assert m.group(1) == '"auto"', f"{path.name}: {line}"
