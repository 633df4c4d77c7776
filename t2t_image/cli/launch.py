"""t2t-image-launch: run a command as N workers of a local multi-worker cluster.

    t2t-image-launch -n 2 -- t2t-image-trainer --gin_file=gin/tiny.gin --model_dir=/tmp/run

Each worker gets TF_CONFIG (TensorFlow) and the coordinator address, process
count and id (JAX) of a cluster on localhost ports; worker 0's output is shown
here, every worker's goes to LOG_DIR/worker_K.log (default MODEL_DIR/logs).
Ctrl-C/SIGTERM go to every worker (a training run saves one agreed step and
exits 130/143). The exit status is non-zero when any worker failed, and each
failed worker is named. See docs/many-workers.md.
"""

import argparse
import sys


def parse(argv):
    parser = argparse.ArgumentParser(
        prog="t2t-image-launch",
        description="Run a command as N worker processes of a local multi-worker cluster.",
        epilog="Example: t2t-image-launch -n 2 -- t2t-image-trainer --gin_file=gin/tiny.gin "
               "--model_dir=/tmp/run")
    parser.add_argument("-n", "--num_workers", type=int, required=True,
                        help="number of worker processes (>= 1)")
    parser.add_argument("--log_dir", default=None,
                        help="where worker_K.log go (default: MODEL_DIR/logs from the "
                             "command's --model_dir=, else ./launch_logs)")
    parser.add_argument("--kill_after", type=float, default=30.0,
                        help="seconds the other workers get to stop by themselves after one "
                             "failed, before SIGTERM (and SIGKILL 10 s later)")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="the worker command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no worker command: put it after --, e.g. -n 2 -- t2t-image-trainer ...")
    if args.num_workers < 1:
        parser.error(f"-n/--num_workers must be >= 1, got {args.num_workers}")
    if args.kill_after <= 0:
        parser.error(f"--kill_after must be positive, got {args.kill_after}")
    return args, command


def run(argv=None):
    """Console-script entry point; exits with the workers' status."""
    from t2t_image.training.local_launcher import LocalCluster

    args, command = parse(sys.argv[1:] if argv is None else argv)
    cluster = LocalCluster(command, args.num_workers, log_dir=args.log_dir,
                           kill_after=args.kill_after)
    try:
        status = cluster.run()
    except OSError as e:  # the command cannot be started (not found, not executable)
        print(f"t2t-image-launch: error: cannot start {command[0]!r}: {e.strerror or e}",
              file=sys.stderr)
        status = 1
    sys.exit(status)


if __name__ == "__main__":
    run()
