"""Runs of a tiny Trainer as 1 process or as N local workers, for the TF and JAX tests.

``run_workers`` starts ``WORKER_SCRIPT`` through ``LocalCluster`` (the launcher
of ``t2t-image-launch``); each worker records, at full precision, the loss of
every step, its final weights and its evaluation results in ``out``. The
backend is the test process's (``KERAS_BACKEND`` is inherited).
"""

import json
import os
import re
import sys
import threading
import time

import numpy as np

from t2t_image.training.local_launcher import LocalCluster

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 20
GLOBAL_BATCH = 4
# train[:64] in global batches of 4; evaluation on 9 images: batches 4, 4, 1, so the last
# batch's slice is empty on worker 1 of 2.
TRAIN_SPLIT, EVAL_SPLIT = "train[:64]", "train[64:73]"

LEARNING_RATE = 0.05  # at 0.2, float32 noise grows to ~1e-4 in 20 steps (Adam, tiny gradients)
WORKER_SCRIPT = "import sys\nfrom tests.multi_worker import script_main\nsys.exit(script_main())\n"


def train_and_record(model_dir, out, npz, steps=NUM_STEPS, eval_every=0, slow=0.0, worker=0):
    """Trains the tiny model in this process, recording losses, weights and evaluations.

    Returns the exit status: 0, or 130/143 when stopped by a signal.
    """
    import functools

    import keras

    from t2t_image.models import ImageTransformer
    from t2t_image.training import preemption
    from t2t_image.training.trainer import Trainer

    if keras.backend.backend() == "jax":
        from t2t_image.data import make_numpy_dataset as make
    else:
        from t2t_image.data import make_dataset as make
    data = functools.partial(make, "npz", batch_size=GLOBAL_BATCH, image_size=8, seed=1,
                             source_kwargs={"path": str(npz)})
    model_fn = functools.partial(
        ImageTransformer, image_height=8, image_width=8, hidden_size=16, filter_size=32,
        num_heads=2, num_decoder_layers=1, block_length=16, layer_prepostprocess_dropout=0.0)
    losses, evals = [], []

    class Recording(Trainer):
        def _train_scalars(self, step, metrics):  # log_every=1: called after every step
            losses.append([step, metrics["loss"]])
            if slow and step >= 2:
                time.sleep(slow)
            return super()._train_scalars(step, metrics)

        def evaluate(self, *args, **kwargs):
            results = super().evaluate(*args, **kwargs)
            evals.append(results)
            return results

    trainer = Recording(str(model_dir), model_fn,
                        functools.partial(data, TRAIN_SPLIT, training=True),
                        functools.partial(data, EVAL_SPLIT, training=False),
                        num_train_steps=steps, log_every=1, checkpoint_every=5,
                        eval_every=eval_every, learning_rate=LEARNING_RATE, warmup_steps=10)
    status = 0
    try:
        trainer.train()
    except preemption.Preempted as e:
        print(e, file=sys.stderr)
        status = e.exit_status
    finally:
        tag = f"{out}/w{worker}_{time.time_ns()}"
        with open(tag + "_record.json", "w") as f:
            json.dump({"losses": losses, "evals": evals, "status": status,
                       "step": int(trainer.step.numpy())}, f)
        np.save(tag + "_weights.npy",
                np.concatenate([np.asarray(w).ravel() for w in trainer.model.get_weights()]))
    return status


def script_main():
    """A worker process: ``worker_script.py MODEL_DIR OUT NPZ`` with the settings in env."""
    from absl import logging

    logging.set_verbosity(logging.INFO)  # the step lines the tests watch
    model_dir, out, npz = sys.argv[1:4]
    return train_and_record(model_dir, out, npz, steps=int(os.environ["NUM_STEPS"]),
                            eval_every=int(os.environ["EVAL_EVERY"]),
                            slow=float(os.environ["SLOW_STEPS"]),
                            worker=int(os.environ.get("KERAS_DISTRIBUTION_PROCESS_ID", "0")))


def run_in_process(tmp_path, npz, model_dir, steps=NUM_STEPS, eval_every=0):
    """The one-process reference run, in the test process (no start-up cost)."""
    out = tmp_path / "records"
    out.mkdir(exist_ok=True)
    return train_and_record(model_dir, out, npz, steps=steps, eval_every=eval_every)


def run_workers(tmp_path, npz, model_dir, num_workers, steps=NUM_STEPS, eval_every=0,
                slow=0.0, on_line=None, timeout=240):
    """Runs the script as ``num_workers`` workers (1: a plain process); returns the cluster.

    ``on_line(cluster, worker, line)`` is called for each new line of a worker's log
    (polled), e.g. to send a signal when a step is reached.
    """
    script = tmp_path / "worker_script.py"
    script.write_text(WORKER_SCRIPT)
    out = tmp_path / "records"
    out.mkdir(exist_ok=True)
    env = {"NUM_STEPS": str(steps), "EVAL_EVERY": str(eval_every), "SLOW_STEPS": str(slow),
           "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]),
           "TF_CPP_MIN_LOG_LEVEL": "2", "TMPDIR": str(tmp_path / "tmp")}
    os.makedirs(env["TMPDIR"], exist_ok=True)
    command = [sys.executable, str(script), str(model_dir), str(out), str(npz)]
    if num_workers == 1:  # a one-process run: no cluster environment at all
        command = ["env", "-u", "TF_CONFIG", "-u", "KERAS_DISTRIBUTION_NUM_PROCESSES"] + command
    log_dir = tmp_path / f"logs_{time.time_ns()}"
    cluster = LocalCluster(command, num_workers, log_dir=str(log_dir), kill_after=20,
                           out=open(os.devnull, "w"))
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        cluster.start()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    done = threading.Event()
    if on_line is not None:
        threading.Thread(target=_watch, args=(cluster, on_line, done), daemon=True).start()
    deadline = time.time() + timeout
    try:
        while any(p.poll() is None for p in cluster.procs) and time.time() < deadline:
            time.sleep(0.2)
        cluster.status = cluster.wait() if time.time() < deadline else None
    finally:
        done.set()
        for p in cluster.procs:
            if p.poll() is None:
                p.kill()
    cluster.elapsed = time.time() - (deadline - timeout)
    return cluster


def _watch(cluster, on_line, done):
    seen = [0] * cluster.num_workers
    while not done.is_set():
        for index in range(cluster.num_workers):
            try:
                with open(cluster.log_path(index), errors="replace") as f:
                    lines = f.read().splitlines()
            except FileNotFoundError:
                continue
            for line in lines[seen[index]:]:
                on_line(cluster, index, line)
            seen[index] = len(lines)
        time.sleep(0.1)


def records(tmp_path):
    """``{worker: [(record dict, weights), ...]}`` in the order the runs ended."""
    out = tmp_path / "records"
    found = {}
    for path in sorted(out.glob("*_record.json"), key=lambda p: int(p.name.split("_")[1])):
        worker = int(path.name.split("_")[0][1:])
        with open(path) as f:
            record = json.load(f)
        weights = np.load(str(path).replace("_record.json", "_weights.npy"))
        found.setdefault(worker, []).append((record, weights))
    return found


def clear_records(tmp_path):
    for path in (tmp_path / "records").glob("*"):
        path.unlink()


def log_text(cluster, index):
    with open(cluster.log_path(index), errors="replace") as f:
        return f.read()


STEP_LINE = re.compile(r"step (\d+)/")
