"""Smoke test of benchmarks/accelerator.py: a tiny CPU run under JAX with TensorFlow blocked."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

pytest.importorskip("jax")

REPO = pathlib.Path(__file__).resolve().parents[2]
# Runs the script with every "tensorflow" import failing, as on a machine without TF.
NO_TF = """
import importlib.abc, runpy, sys
class NoTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError("TensorFlow is blocked in this test")
sys.meta_path.insert(0, NoTensorFlow())
sys.argv = ["benchmarks/accelerator.py"] + sys.argv[1:]
runpy.run_path("benchmarks/accelerator.py", run_name="__main__")
assert not any(m == "tensorflow" or m.startswith("tensorflow.") for m in sys.modules)
"""


def run_benchmark(tmp_path, *args):
    out = tmp_path / "out.json"
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-c", NO_TF, "--tiny", "--json", str(out), *args],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout, json.loads(out.read_text())


def test_tiny_run_measures_every_part_without_tensorflow(tmp_path):
    stdout, result = run_benchmark(tmp_path, "--precisions", "bf16")
    rows = result["rows"]
    assert not [r for r in rows if "error" in r or "skipped" in r]
    peaks = {r["precision"]: r["flops"] for r in rows if r["part"] == "peak"}
    assert set(peaks) == {"bf16", "f32"} and min(peaks.values()) > 0
    train = [r for r in rows if r["part"] == "train"]
    assert {r["model"] for r in train} == {"cat 12l (cifar10_base)", "DMOL 14l (paper best)"}
    assert {r["image"] for r in train} == {8, 16}  # time per position at two sizes
    for r in train:
        assert r["seconds"] > 0 and r["images_per_s"] > 0 and r["model_flops"] > 0
        assert r["mfu"] == pytest.approx(r["model_flops"] / r["seconds"] / peaks["bf16"])
    samples = [r for r in rows if r["part"] == "sample"]
    assert {r["image"] for r in samples} == {8, 16}
    assert all(r["images_per_s"] > 0 for r in samples)
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert len(table) == 2 + len(rows)  # header, rule, one line per row


def test_failed_rows_and_the_time_budget_leave_notes_not_crashes(tmp_path):
    # Negative batch sizes fail inside their rows; the run goes on and says why.
    _, result = run_benchmark(tmp_path, "--precisions", "bf16", "--batches", "-1",
                              "--sample_batches", "-1", "--peak_sizes", "16")
    rows = result["rows"]
    assert all("flops" in r for r in rows if r["part"] == "peak")
    failed = [r for r in rows if r["part"] != "peak"]
    assert failed and all("error" in r for r in failed)
    # No budget: every row is skipped with a note.
    stdout, result = run_benchmark(tmp_path, "--budget_s", "0")
    assert all("time budget" in r["skipped"] for r in result["rows"])
    assert "time budget" in stdout
