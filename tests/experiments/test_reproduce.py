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


def test_scale32_reuse_reads_a_finished_run_and_trains_nothing(tmp_path, shared_data):
    pytest.importorskip("matplotlib")
    sys.path.insert(0, os.path.join(REPO, "experiments"))
    import reproduce
    import reproduce32

    # A finished 4-step smoke run of the preset's setting (evaluations at steps 2 and 4).
    done = tmp_path / "done_run"
    reproduce.run_trainer(str(done), [reproduce32.PRESET], reproduce32.cifar_bindings(True))
    curve = reproduce.read_scalars(str(done), "eval", "bits_per_dim")
    assert [step for step, _ in curve] == [2, 4]
    out, work = tmp_path / "docs", tmp_path / "runs"
    cmd = [sys.executable, os.path.join(REPO, "experiments", "reproduce.py"), "--scale=32",
           "--study=block_length", "--smoke", f"--work_dir={work}", f"--out={out}",
           "--reuse", f"block256={done}", "--reuse", f"block64={done}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    # block64 reuses a block-256 run: one warning line names the difference; block256 none.
    warnings = [line for line in proc.stdout.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1 and "block64=" in warnings[0]
    assert "ImageTransformer.block_length = 256 (intended 64)" in warnings[0]
    assert not os.path.exists(work / "smoke32" / "block_length")  # nothing was trained
    with open(out / "reproduction32" / "block_length.json") as f:
        result = json.load(f)
    seconds, _ = reproduce32.train_wall_time(str(done))
    command = (done / "command.txt").read_text().strip()
    for run in result["runs"]:
        assert run["reused"] and run["run_dir"] == str(done)
        assert run["curve"] == [list(point) for point in curve]
        assert run["command"] == command and "--model_dir=" in command
        assert run["seconds"] == pytest.approx(seconds) and 0 < seconds < 600
    assert result["shared_step"] == 4
    group = result["groups"]["block256"]
    assert group["mean"] == pytest.approx(curve[-1][1])
    assert group["slope_per_1000"] == pytest.approx(1000 * (curve[1][1] - curve[0][1]) / 2)
    report = (out / "reproduction32.md").read_text()
    assert "| block256 | yes |" in report and "bits/dim at step 4" in report
    assert "## two_stage" in report and "**Not run yet.**" in report
    assert not (out / "reproduction.md").exists()  # the 16x16 report is left alone
