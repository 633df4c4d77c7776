"""Smoke test of the reproduction study script: tiny settings, real trainer subprocesses."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_block_length_smoke_writes_curves_plot_and_report(tmp_path, shared_data):
    pytest.importorskip("matplotlib")
    out = tmp_path / "docs"
    cmd = [sys.executable, os.path.join(REPO, "experiments", "reproduce.py"),
           "--study=block_length", "--smoke", f"--work_dir={tmp_path / 'runs'}", f"--out={out}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    with open(out / "reproduction" / "block_length.json") as f:
        result = json.load(f)
    assert [r["name"] for r in result["runs"]] == ["block8", "block16"]
    for run in result["runs"]:
        # Evaluations at steps 2 and 4 of a 4-step run, read from the trainer's TensorBoard
        # events; an untrained 8x8 model is near uniform (8 bits/dim).
        assert [step for step, _ in run["curve"]] == [2, 4]
        assert 6.0 < run["final_bits_per_dim"] < 9.0
        assert run["command"].startswith("bin/t2t-image-trainer ")
    assert (out / "reproduction" / "block_length.png").stat().st_size > 1000
    report = (out / "reproduction.md").read_text()
    assert "## block_length" in report and "| block8 |" in report
    assert "**Not run yet.**" in report  # the other studies are listed as not run
