"""Runs every benchmark with short settings and prints one summary table.

Parts (issue 7): the float32 matmul peak and the training step of the three
issue configurations with model FLOP utilization (``training.py``, imported),
the scaling of time and memory per position (``training.py``, one subprocess
per point), the training input pipelines (``data_pipeline.py``, subprocess),
sampling speed (``sampling.py``, subprocess, when present) and two-stage
against pixel-level sampling (``two_stage.py``, subprocess, when present). Each part's
own table is printed as it finishes, then one combined table with the input
pipelines beside the training consumption (images/s of the cat 1D-local step).

Usage (from the repository root; 6 min 45 s on 2 idle CPU cores, all parts;
about 15 minutes plus 4 for ``two_stage.py`` when other jobs shared them)::

    python3 benchmarks/run_all.py [--quick] [--skip data,sampling,scaling,two_stage]

``--quick``: 2 timed steps, scaling at 16x16 and 32x32 only, 1 s per
pipeline, 2 reference sampling steps, ``two_stage.py --quick``. Nothing is
written.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import training  # noqa: E402


def _run(script, args):
    """Runs a benchmark script; returns (its stdout, the Markdown rows it printed)."""
    proc = subprocess.run([sys.executable, str(HERE / script)] + args, capture_output=True,
                          text=True, check=False)
    if proc.returncode:
        return proc.stdout + proc.stderr[-2000:], None
    rows = []
    for line in proc.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and not set(cells[0]) <= set("-: ") and cells[0] not in (
                "pipeline", "attention", "model"):
            rows.append(cells)
    return proc.stdout, rows


def main(argv=None):
    """Runs all benchmarks and prints their tables and one summary table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", default="",
                        help="comma list of: configs,scaling,data,sampling,two_stage")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    steps = 2 if args.quick else 3
    sizes = [16, 32] if args.quick else [16, 32, 64]
    summary = []  # (part, case, value, unit)

    print(f"# load average (1 min) at start: {os.getloadavg()[0]:.2f}")
    peak = training.measure_peak(repeats=3)
    summary.append(("peak", "float32 2048x2048 matmul", f"{peak / 1e9:.1f}", "GFLOP/s"))
    print(f"# peak {peak / 1e9:.1f} GFLOP/s\n", flush=True)

    consumption = None
    if "configs" not in skip:
        rows = training.run_configs(peak, steps, (True,))
        training.print_configs(rows, peak)
        print(flush=True)
        for r in rows:
            summary.append(("training", f"{r['name']} (XLA) steps/s", f"{1 / r['seconds']:.3f}",
                            "steps/s"))
            summary.append(("training", f"{r['name']} (XLA) images/s",
                            f"{4 / r['seconds']:.2f}", "images/s"))
            summary.append(("training", f"{r['name']} (XLA) MFU",
                            f"{100 * r['mfu']:.0f}", f"% (target {100 * r['target']:.0f}%)"))
            if r["name"] == "cat 1D-local":
                consumption = 4 / r["seconds"]
    if "scaling" not in skip:
        results = training.run_scaling(["local_1d", "local_2d", "global"], sizes, steps, False)
        training.print_scaling(results, peak)
        print(flush=True)
        for r in results:
            if "seconds" in r:
                summary.append(("scaling", f"{r['attention']} {r['size']}x{r['size']}x3",
                                f"{1e6 * r['seconds'] / r['positions']:.1f} us, "
                                f"{r['peak_bytes'] / r['positions'] / 1024:.1f} KB",
                                "per position (time, peak memory)"))
            else:
                summary.append(("scaling", f"{r['attention']} {r['size']}x{r['size']}x3",
                                "skipped" if r.get("skipped") else "failed", ""))
    if "data" not in skip:
        seconds = "1" if args.quick else "2"
        out, rows = _run("data_pipeline.py", ["--seconds", seconds, "--warmup", "2"])
        print(out, flush=True)
        for cells in rows or []:
            rate = float(cells[2].replace(",", ""))
            note = "examples/s"
            if consumption:
                note += f" ({rate / consumption:,.0f}x the cat 1D-local training step's use)"
            summary.append(("input pipeline", f"{cells[0]} [{cells[1]}]", cells[2], note))
        if rows is None:
            summary.append(("input pipeline", "data_pipeline.py", "failed", ""))
    if "sampling" not in skip and (HERE / "sampling.py").exists():
        ref = "2" if args.quick else "4"
        out, rows = _run("sampling.py", ["--batch_size", "4", "--reference_steps", ref])
        print(out, flush=True)
        for cells in rows or []:
            summary.append(("sampling", f"{cells[0]} cached, batch 4", cells[3], "s/image"))
            summary.append(("sampling", f"{cells[0]} reference (extrapolated)", cells[6],
                            "s/image"))
        if rows is None:
            summary.append(("sampling", "sampling.py", "failed", ""))
    if "two_stage" not in skip and (HERE / "two_stage.py").exists():
        out, rows = _run("two_stage.py", ["--quick"] if args.quick else [])
        print(out, flush=True)
        for cells in rows or []:
            summary.append(("two-stage sampling", f"{cells[0]}, {cells[1]}, batch {cells[3]}",
                            cells[8], f"s/image ({cells[9]} the pixel model's)"))
        if rows is None:
            summary.append(("two-stage sampling", "two_stage.py", "failed", ""))

    print("## Summary")
    print()
    print("| part | case | value | unit |")
    print("| --- | --- | ---: | --- |")
    for part, case, value, unit in summary:
        print(f"| {part} | {case} | {value} | {unit} |")
    print(f"\n# load average (1 min) at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
