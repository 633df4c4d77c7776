"""A local multi-worker cluster: N processes of one command on this host (``t2t-image-launch``).

Each worker gets the environment a cluster scheduler would set, for both
backends, on localhost ports that were free a moment before:

* TensorFlow: ``TF_CONFIG`` (the cluster's worker addresses and this task);
* JAX: ``KERAS_DISTRIBUTION_JOB_ADDRESSES`` (the coordinator, worker 0),
  ``KERAS_DISTRIBUTION_NUM_PROCESSES`` and ``KERAS_DISTRIBUTION_PROCESS_ID``,
  read by ``keras.distribution.initialize()``.

The trainer turns ``strategy="default"`` into ``"multi_worker"`` when these
describe more than one worker (``t2t_image.training.strategy``). Every worker
writes its output to ``LOG_DIR/worker_K.log``; worker 0's is also copied to
the terminal. SIGINT/SIGTERM to the launcher go to every worker (each runs in
its own session, so a terminal's Ctrl-C reaches the workers only once,
through here). When a worker fails while the others run on, they get
``kill_after`` seconds to stop on their own (a collective with a dead peer
fails), then SIGTERM, then SIGKILL; a worker that stopped after a signal
(130/143) starts no countdown: the others are saving the same step. The exit
status is 0 when every worker succeeded, the common status when all failed
alike (143 after a preemption), else the first failed worker's; each failed
worker is named on stderr.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

HOST = "127.0.0.1"


def free_ports(count):
    """``count`` distinct TCP ports of localhost that were free when asked."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind((HOST, 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def worker_environment(index, num_workers, ports, base=None):
    """The environment of worker ``index`` of ``num_workers`` (ports: num_workers + 1).

    ``ports[:num_workers]`` are the TensorFlow workers' addresses, the last one
    is the JAX coordinator's.
    """
    env = dict(os.environ if base is None else base)
    workers = [f"{HOST}:{port}" for port in ports[:num_workers]]
    env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                   "task": {"type": "worker", "index": index}})
    env["KERAS_DISTRIBUTION_JOB_ADDRESSES"] = f"{HOST}:{ports[num_workers]}"
    env["KERAS_DISTRIBUTION_NUM_PROCESSES"] = str(num_workers)
    env["KERAS_DISTRIBUTION_PROCESS_ID"] = str(index)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def default_log_dir(command):
    """``MODEL_DIR/logs`` when the command has ``--model_dir=``, else ``./launch_logs``."""
    for arg in command:
        if arg.startswith("--model_dir="):
            return os.path.join(arg.split("=", 1)[1], "logs")
    return "launch_logs"


def describe_status(status):
    """'exit status 1', 'killed by SIGKILL' ... for a Popen return code."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exit status {status}"


# Exit statuses of a trainer that stopped at a safe point after a signal (preemption.py).
STOPPED = {130: "SIGINT", 143: "SIGTERM"}


def verb(status):
    """'stopped' for a worker that stopped after a signal, else 'failed'."""
    return "stopped" if shell_status(status) in STOPPED and status > 0 else "failed"


def shell_status(status):
    """A Popen return code as a shell exit status (128 + signal for a killed process)."""
    return 128 - status if status < 0 else status


class LocalCluster:
    """Runs ``command`` as ``num_workers`` workers; ``run()`` returns the exit status.

    Args:
        command: list of str, the worker command (e.g. ``["t2t-image-trainer", ...]``).
        num_workers: int >= 1.
        log_dir: where ``worker_K.log`` go (default ``default_log_dir(command)``).
        kill_after: seconds the others get to stop after one worker failed.
        out: the stream worker 0's output is copied to.
        err: the stream of the launcher's own messages.
    """

    def __init__(self, command, num_workers, log_dir=None, kill_after=30.0, out=None,
                 err=None):
        if not command:
            raise ValueError("no worker command given (put it after --).")
        if not isinstance(num_workers, int) or num_workers < 1:
            raise ValueError(f"the number of workers must be an int >= 1, got {num_workers!r}.")
        self.command = list(command)
        self.num_workers = num_workers
        self.log_dir = log_dir or default_log_dir(command)
        self.kill_after = kill_after
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.procs = []
        self.failures = []  # (worker index, return code), in the order they were seen
        self._signalled = 0

    def log_path(self, index):
        return os.path.join(self.log_dir, f"worker_{index}.log")

    def _say(self, message):
        print(f"t2t-image-launch: {message}", file=self.err, flush=True)

    def start(self):
        os.makedirs(self.log_dir, exist_ok=True)
        ports = free_ports(self.num_workers + 1)
        self._say(f"{self.num_workers} worker(s) on {HOST}, logs in {self.log_dir}/worker_K.log "
                  "(worker 0's also here).")
        self._copiers = []
        for index in range(self.num_workers):
            log = open(self.log_path(index), "wb")
            env = worker_environment(index, self.num_workers, ports)
            # Own session: a terminal's Ctrl-C reaches the workers once, forwarded by us.
            proc = subprocess.Popen(
                self.command, env=env, start_new_session=True, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE if index == 0 else log, stderr=subprocess.STDOUT)
            if index == 0:
                copier = threading.Thread(target=self._tee, args=(proc.stdout, log), daemon=True)
                copier.start()
                self._copiers.append(copier)
            else:
                log.close()
            self.procs.append(proc)
        self._say("worker pids: " + ", ".join(f"{k}: {p.pid}" for k, p in enumerate(self.procs)))

    def _tee(self, stream, log):
        with log:
            for line in iter(stream.readline, b""):
                log.write(line)
                log.flush()
                text = line.decode(errors="replace")
                try:
                    self.out.write(text)
                    self.out.flush()
                except (OSError, ValueError):
                    pass

    def forward(self, signum, frame=None):
        """Sends ``signum`` to every worker still running (a signal handler)."""
        del frame
        self._signalled += 1
        for proc in self.procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signum)
                except ProcessLookupError:
                    pass

    def wait(self, poll_interval=0.2):
        """Waits for every worker; stops the rest of a cluster with a failed worker."""
        first_failure = None
        terminated = False
        while True:
            running = False
            exited = []
            for index, proc in enumerate(self.procs):
                status = proc.poll()
                if status is None:
                    running = True
                elif status != 0 and index not in (i for i, _ in self.failures):
                    exited.append((index, status))
            # Several found in one pass: a death by signal (e.g. a SIGKILLed worker) is the
            # cause, the others' errors its consequence, so it counts as the first failure.
            for index, status in sorted(exited, key=lambda failure: failure[1] >= 0):
                self.failures.append((index, status))
                # A worker that stopped after a signal: the others are saving the same
                # step (however long that takes); only a failure starts the countdown.
                if first_failure is None and verb(status) == "failed":
                    first_failure = time.time()
                    if not self._signalled:
                        self._say(f"worker {index} failed ({describe_status(status)}); "
                                  f"the others get {self.kill_after:g} s to stop.")
            if not running:
                break
            if first_failure is not None and time.time() - first_failure > self.kill_after:
                self._say("stopping the remaining workers " +
                          ("(SIGKILL)." if terminated else "(SIGTERM)."))
                for proc in self.procs:
                    if proc.poll() is None:
                        try:
                            os.killpg(proc.pid, signal.SIGKILL if terminated else signal.SIGTERM)
                        except ProcessLookupError:
                            pass
                first_failure, terminated = time.time() - self.kill_after + 10.0, True
            time.sleep(poll_interval)
        for copier in self._copiers:
            copier.join(timeout=5)
        return self.exit_status()

    def exit_status(self):
        """0, the common status of all failed workers, or the first failed worker's."""
        statuses = [proc.returncode for proc in self.procs]
        if all(s == 0 for s in statuses):
            return 0
        if len(set(statuses)) == 1 and shell_status(statuses[0]) in STOPPED:
            self._say(f"all {self.num_workers} workers stopped ({describe_status(statuses[0])}, "
                      f"{STOPPED[shell_status(statuses[0])]}); run the same command again to "
                      "resume.")
            return shell_status(statuses[0])
        for index, status in self.failures:
            self._say(f"worker {index} {verb(status)}: {describe_status(status)}; log: "
                      f"{self.log_path(index)}")
        if len(set(statuses)) == 1:
            return shell_status(statuses[0])
        return shell_status(self.failures[0][1])

    def run(self):
        """Starts the workers, forwards SIGINT/SIGTERM to them, returns the exit status."""
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                previous[signum] = signal.signal(signum, self.forward)
        try:
            self.start()
            return self.wait()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            for proc in self.procs:  # the launcher itself failed: no orphans
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
