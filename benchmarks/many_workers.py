"""Training speed with 1, 2, 4 ... worker processes on this host (t2t-image-launch).

    python3 benchmarks/many_workers.py [--num_workers=1,2,4] [--steps=60] [--gin_file=...]
    KERAS_BACKEND=jax python3 benchmarks/many_workers.py ...
    python3 benchmarks/many_workers.py --equivalence   (2 workers against 1 process)

Runs the trainer as one plain process and through ``t2t-image-launch -n N`` for
each N, on the same gin file and global batch (each worker computes 1/N of it),
without evaluation, sample grids or checkpoints between the first and the last
step, and prints a table of the training examples/s: the median of worker 0's
logged ``examples_per_second`` (``MODEL_DIR/trainer.log``) after the first ``--skip`` log lines (which
include start-up and compilation). On one host the workers share its cores, so
this measures the overhead of the collectives and of the extra processes, not
the speed-up several machines give.
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

RATE = re.compile(r"step (\d+)/\d+ .*examples_per_second ([0-9.e+]+)")


def run(num_workers, args, model_dir):
    trainer = [sys.executable, "-m", "t2t_image.cli.trainer", f"--gin_file={args.gin_file}",
               f"--model_dir={model_dir}",
               "--gin_param=t2t_image.Trainer.eval_dataset_fn=None",
               f"--gin_param=t2t_image.Trainer.num_train_steps={args.steps}",
               f"--gin_param=t2t_image.Trainer.log_every={args.log_every}",
               f"--gin_param=t2t_image.Trainer.checkpoint_every={args.steps}",
               "--gin_param=t2t_image.Trainer.sample_every=0"]
    log_dir = os.path.join(model_dir, "logs")
    if num_workers == 0:  # one plain process, no cluster
        command = trainer
    else:
        command = [sys.executable, "-m", "t2t_image.cli.launch", "-n", str(num_workers),
                   f"--log_dir={log_dir}", "--"] + trainer
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    start = time.time()
    proc = subprocess.run(command, env=env, capture_output=True, text=True)
    wall = time.time() - start
    text = proc.stdout + proc.stderr
    if proc.returncode:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}):\n{text[-3000:]}")
    with open(os.path.join(model_dir, "trainer.log")) as f:  # the chief's full log lines
        rates = [float(r) for _, r in RATE.findall(f.read())][args.skip:]
    return statistics.median(rates), len(rates), wall


def equivalence():
    """2 workers x half batch against 1 process x the global batch: the tests' runs, numbers."""
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras
    from tests import multi_worker as mw

    npz = os.path.join("..", "shared", "data", "cifar10", "cifar10_train_exact.npz")
    root = tempfile.mkdtemp(prefix="equivalence_")
    try:
        tmp = __import__("pathlib").Path(root)
        assert mw.run_in_process(tmp, npz, tmp / "one", eval_every=mw.NUM_STEPS) == 0
        cluster = mw.run_workers(tmp, npz, tmp / "two", 2, eval_every=mw.NUM_STEPS)
        if cluster.status != 0:
            raise SystemExit(mw.log_text(cluster, 0)[-3000:])
        runs = mw.records(tmp)
        (one, one_w), (two, two_w) = runs[0]
        loss_one = np.array([loss for _, loss in one["losses"]])
        loss_two = np.array([loss for _, loss in two["losses"]])
        print(f"| {keras.backend.backend()} | {np.abs(loss_two / loss_one - 1).max():.1e} | "
              f"{np.abs(two_w - one_w).max():.1e} ({np.abs(one_w).max():.2f}) | "
              f"{one['evals'][-1]['bits_per_dim']:.7f} / {two['evals'][-1]['bits_per_dim']:.7f} | "
              f"{'yes' if np.array_equal(two_w, runs[1][0][1]) else 'no'} |")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--equivalence", action="store_true",
                        help="instead: the tests' tiny run as 2 workers and as 1 process "
                             "(20 steps), one table row of their differences")
    parser.add_argument("--num_workers", default="1,2,4",
                        help="comma-separated worker counts run through the launcher")
    parser.add_argument("--gin_file", default="gin/quickstart.gin")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--log_every", type=int, default=5)
    parser.add_argument("--skip", type=int, default=2,
                        help="first log lines left out (start-up, compilation)")
    args = parser.parse_args()
    if args.equivalence:
        return equivalence()
    counts = [int(n) for n in args.num_workers.split(",")]
    rows = []
    root = tempfile.mkdtemp(prefix="many_workers_")
    try:
        for n in [0] + counts:
            rate, lines, wall = run(n, args, os.path.join(root, f"run{n}"))
            rows.append((n, rate, lines, wall))
            print(f"done: {'1 process' if n == 0 else f'{n} workers'}: {rate:.1f} examples/s",
                  file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    import keras

    base = rows[0][1]
    print(f"\n{args.gin_file}, {args.steps} steps, backend {keras.backend.backend()}, "
          f"{os.cpu_count()} CPUs, 1-min load average at the end "
          f"{os.getloadavg()[0]:.2f}\n")
    print("| run | examples/s (median) | vs one process | log lines | wall time |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for n, rate, lines, wall in rows:
        name = "one process (no launcher)" if n == 0 else f"t2t-image-launch -n {n}"
        print(f"| {name} | {rate:.1f} | {rate / base:.2f}x | {lines} | {wall:.0f} s |")


if __name__ == "__main__":
    main()
