"""t2t-image-launch's local cluster: environment, logs, exit status, signals (no TensorFlow)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from t2t_image.cli import launch
from t2t_image.training import local_launcher
from t2t_image.training.local_launcher import LocalCluster

# A worker that prints its cluster environment and exits with the status named by
# EXIT_<its index> (default 0).
REPORT = ("import json, os, sys; i = os.environ['KERAS_DISTRIBUTION_PROCESS_ID']; "
          "print(json.dumps({k: os.environ[k] for k in ('TF_CONFIG', "
          "'KERAS_DISTRIBUTION_JOB_ADDRESSES', 'KERAS_DISTRIBUTION_NUM_PROCESSES', "
          "'KERAS_DISTRIBUTION_PROCESS_ID')})); sys.exit(int(os.environ.get('EXIT_' + i, 0)))")


def _cluster(tmp_path, code, n, **kwargs):
    out, err = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out, "w") as o, open(err, "w") as e:
        cluster = LocalCluster([sys.executable, "-c", code], n, log_dir=str(tmp_path / "logs"),
                               out=o, err=e, **kwargs)
        status = cluster.run()
    return cluster, status, out.read_text(), err.read_text()


def test_workers_get_one_cluster_of_free_localhost_ports_and_one_log_each(tmp_path):
    cluster, status, out, _ = _cluster(tmp_path, REPORT, 3)
    assert status == 0
    envs = [json.loads((tmp_path / "logs" / f"worker_{k}.log").read_text()) for k in range(3)]
    assert json.loads(out) == envs[0]  # worker 0's output is also on the terminal
    configs = [json.loads(env["TF_CONFIG"]) for env in envs]
    workers = configs[0]["cluster"]["worker"]
    assert len(set(workers)) == 3 and all(w.startswith("127.0.0.1:") for w in workers)
    for k, (env, config) in enumerate(zip(envs, configs)):
        assert config == {"cluster": {"worker": workers}, "task": {"type": "worker", "index": k}}
        assert env["KERAS_DISTRIBUTION_PROCESS_ID"] == str(k)
        assert env["KERAS_DISTRIBUTION_NUM_PROCESSES"] == "3"
        # The JAX coordinator is worker 0's host, on a port of its own.
        assert env["KERAS_DISTRIBUTION_JOB_ADDRESSES"] == envs[0][
            "KERAS_DISTRIBUTION_JOB_ADDRESSES"]
        assert env["KERAS_DISTRIBUTION_JOB_ADDRESSES"] not in workers


def test_exit_status_names_the_failed_workers(tmp_path, monkeypatch):
    monkeypatch.setenv("EXIT_1", "3")
    monkeypatch.setenv("EXIT_2", "5")
    _, status, _, err = _cluster(tmp_path, REPORT, 3, kill_after=5)
    assert status in (3, 5)  # the first failed worker's
    assert "worker 1 failed: exit status 3" in err and "worker 2 failed: exit status 5" in err
    assert "worker 0 failed" not in err
    assert str(tmp_path / "logs" / "worker_1.log") in err
    # All stopped alike after a signal: that status, named as a stop, not a failure.
    for k in range(3):
        monkeypatch.setenv(f"EXIT_{k}", "143")
    _, status, _, err = _cluster(tmp_path, REPORT, 3)
    assert status == 143 and "all 3 workers stopped (exit status 143, SIGTERM)" in err


def test_a_failed_worker_stops_the_others_after_kill_after(tmp_path):
    code = ("import os, sys, time\n"
            "if os.environ['KERAS_DISTRIBUTION_PROCESS_ID'] == '1': sys.exit(7)\n"
            "time.sleep(120)\n")
    start = time.time()
    cluster, status, _, err = _cluster(tmp_path, code, 2, kill_after=1)
    assert time.time() - start < 30
    assert status == 7 and "worker 1 failed (exit status 7); the others get 1 s" in err
    assert cluster.procs[0].returncode == -signal.SIGTERM
    assert "stopping the remaining workers (SIGTERM)" in err


def test_sigterm_to_the_launcher_reaches_every_worker_once(tmp_path):
    # Each worker counts the SIGTERMs it gets for 3 s, then exits 143 if it got exactly one.
    code = ("import signal, sys, time\n"
            "got = []\n"
            "signal.signal(signal.SIGTERM, lambda *a: got.append(1))\n"
            "print('ready', flush=True)\n"
            "end = time.time() + 3\n"
            "while time.time() < end: time.sleep(0.05)\n"
            "sys.exit(143 if len(got) == 1 else 1)\n")
    proc = subprocess.Popen([sys.executable, "-m", "t2t_image.cli.launch", "-n", "2",
                             f"--log_dir={tmp_path}", "--", sys.executable, "-c", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"  # worker 0 started
    deadline = time.time() + 30
    while "ready" not in (tmp_path / "worker_1.log").read_text() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "all 2 workers stopped" in err


def test_launcher_arguments():
    args, command = launch.parse(["-n", "2", "--", "t2t-image-trainer", "--model_dir=/x/run"])
    assert args.num_workers == 2 and command == ["t2t-image-trainer", "--model_dir=/x/run"]
    assert local_launcher.default_log_dir(command) == "/x/run/logs"
    assert local_launcher.default_log_dir(["cmd"]) == "launch_logs"
    for argv in (["-n", "2"], ["-n", "0", "--", "cmd"], ["--", "cmd"]):
        with pytest.raises(SystemExit) as raised:
            launch.parse(argv)
        assert raised.value.code == 2


def test_a_command_that_does_not_exist_is_named(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "t2t_image.cli.launch", "-n", "2",
                           f"--log_dir={tmp_path}", "--", "no-such-command-t2t"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "cannot start 'no-such-command-t2t'" in proc.stderr
    assert "Traceback" not in proc.stderr
