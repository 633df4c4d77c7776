"""The multi-worker checks shared by the TF (tests/training) and JAX (tests/jax) tests.

Each runs tiny Trainers as local worker processes (``tests/multi_worker.py``).
"""

import os
import signal
import sys
import time

import numpy as np

from tests import multi_worker as mw

RTOL = 1e-5  # float32 sums over 2 workers run in another order than in one process


def _losses(runs):
    """{step: loss} of a worker's successive runs."""
    return {step: loss for record, _ in runs for step, loss in record["losses"]}


def _signal_at_step(worker, step, signum):
    sent = []

    def on_line(cluster, index, line):
        match = mw.STEP_LINE.search(line)
        if not sent and index == worker and match and int(match.group(1)) >= step:
            os.kill(cluster.procs[worker].pid, signum)
            sent.append(time.time())

    return on_line, sent


def check_two_workers_equal_one_process_and_survive_preemption(tmp_path, npz, uses_tf):
    """2 workers x half batch == 1 process x the global batch (loss at every step, weights
    after 20 steps, evaluation on a split of 9 images in batches of 4); SIGTERM to worker 1
    stops both at one step with exit 143; running again resumes there; only the chief
    writes into model_dir; a run goes on with another worker count (1 -> 2 and 2 -> 1).

    JAX keeps the data position across worker counts, so its 2-worker run starts from a
    1-process checkpoint of step 5 and still equals the 1-process run; under TF the data
    order restarts with another worker count, so its 2-worker run starts from scratch and
    the 1 -> 2 change is a separate short run."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert mw.run_in_process(tmp_path, npz, one, eval_every=10) == 0
    (reference, reference_weights), = mw.records(tmp_path)[0]
    mw.clear_records(tmp_path)
    if not uses_tf:  # 1 process to step 5, then 2 workers
        assert mw.run_in_process(tmp_path, npz, two, steps=5) == 0
        mw.clear_records(tmp_path)

    # SIGTERM to worker 1 at step >= 8: both save the same step and exit 143.
    on_line, sent = _signal_at_step(1, 8, signal.SIGTERM)
    cluster = mw.run_workers(tmp_path, npz, two, 2, eval_every=10, slow=0.3, on_line=on_line)
    assert sent and [p.returncode for p in cluster.procs] == [143, 143], (
        mw.log_text(cluster, 0)[-3000:], mw.log_text(cluster, 1)[-3000:])
    assert cluster.status == 143
    if not uses_tf:
        text = mw.log_text(cluster, 0)
        assert "with num_workers=2; its checkpoints were trained with 1" in text
        assert "data order restarts" not in text  # JAX keeps the global position
    stopped = {w: runs[0][0]["step"] for w, runs in mw.records(tmp_path).items()}
    step = stopped[0]
    assert stopped == {0: step, 1: step} and 8 <= step < mw.NUM_STEPS
    assert f"Stopped by SIGTERM at step {step}" in mw.log_text(cluster, 1)
    checkpoints = os.listdir(two / "checkpoints")
    assert any(name.startswith(f"ckpt-{step}.") for name in checkpoints), checkpoints

    # The same command again: every worker resumes at that step and ends as one process.
    cluster = mw.run_workers(tmp_path, npz, two, 2, eval_every=10)
    assert cluster.status == 0, mw.log_text(cluster, 0)[-3000:]
    runs = mw.records(tmp_path)
    first_step = 1 if uses_tf else 6
    for worker in (0, 1):
        (_, _), (second, weights) = runs[worker]
        assert second["losses"][0][0] == step + 1  # resumed at the saved step
        losses = _losses(runs[worker])
        assert sorted(losses) == list(range(first_step, mw.NUM_STEPS + 1))
        np.testing.assert_allclose([losses[s] for s in sorted(losses)],
                                   [loss for s, loss in reference["losses"] if s >= first_step],
                                   rtol=RTOL)
        # Weights: within RTOL of the largest weight (small weights carry absolute noise).
        assert np.abs(weights - reference_weights).max() <= RTOL * np.abs(reference_weights).max()
    np.testing.assert_array_equal(runs[0][1][1], runs[1][1][1])  # the workers agree exactly
    # Evaluation over 9 images (worker 1's slice of the last batch is empty): every image once.
    final = runs[0][1][0]["evals"][-1]
    expected = reference["evals"][-1]
    assert final["step"] == expected["step"] == mw.NUM_STEPS
    assert final["num_examples"] == expected["num_examples"] == 9
    np.testing.assert_allclose(final["bits_per_dim"], expected["bits_per_dim"], rtol=RTOL)
    assert runs[1][1][0]["evals"][-1]["num_examples"] == 9  # every worker has the result

    # Only the chief wrote into model_dir; the TF workers' throw-away checkpoints are gone.
    assert sorted(os.listdir(two)) == ["checkpoints", "eval", "eval_results.json",
                                       "model_config.json", "run_settings.json", "train"]
    assert os.listdir(tmp_path / "tmp") == []

    # 2 -> 1: the 2-worker run goes on in one process, 4 more steps (global batch still 4).
    mw.clear_records(tmp_path)
    assert mw.run_in_process(tmp_path, npz, two, steps=mw.NUM_STEPS + 4) == 0
    (on_one, _), = mw.records(tmp_path)[0]
    assert [s for s, _ in on_one["losses"]] == list(range(mw.NUM_STEPS + 1, mw.NUM_STEPS + 5))
    mw.clear_records(tmp_path)
    if uses_tf:  # 1 -> 2: the 1-process run goes on with 2 workers; its data order restarts
        cluster = mw.run_workers(tmp_path, npz, one, 2, steps=mw.NUM_STEPS + 4)
        assert cluster.status == 0, mw.log_text(cluster, 0)[-3000:]
        text = mw.log_text(cluster, 0)
        assert "with num_workers=2; its checkpoints were trained with 1" in text
        assert "data order restarts" in text
        (on_two, _), = mw.records(tmp_path)[0]
        assert [s for s, _ in on_two["losses"]] == list(range(mw.NUM_STEPS + 1,
                                                              mw.NUM_STEPS + 5))
    else:  # the same weights (to RTOL) at the same data position: the same losses
        assert mw.run_in_process(tmp_path, npz, one, steps=mw.NUM_STEPS + 4) == 0
        (continued, _), = mw.records(tmp_path)[0]
        np.testing.assert_allclose([loss for _, loss in on_one["losses"]],
                                   [loss for _, loss in continued["losses"]], rtol=1e-4)


def check_killed_worker_stops_the_others(tmp_path):
    """SIGKILL of worker 1: worker 0 stops with an error naming the lost worker within
    60 s; the launcher exits non-zero naming worker 1."""
    from t2t_image.training.local_launcher import LocalCluster

    model_dir = tmp_path / "run"
    command = [sys.executable, "-m", "t2t_image.cli.trainer", "--gin_file=gin/tiny.gin",
               f"--model_dir={model_dir}", "--gin_param=t2t_image.Trainer.eval_dataset_fn=None",
               "--gin_param=t2t_image.Trainer.num_train_steps=100000",
               "--gin_param=t2t_image.Trainer.checkpoint_every=2"]
    on_line, sent = _signal_at_step(1, 1, signal.SIGKILL)
    launcher_messages = tmp_path / "launcher.txt"
    with open(launcher_messages, "w") as err:
        cluster = LocalCluster(command, 2, log_dir=str(tmp_path / "logs"), kill_after=60,
                               out=open(os.devnull, "w"), err=err)
        cluster.start()
        watch = mw.threading.Thread(target=mw._watch, args=(cluster, on_line,
                                                            mw.threading.Event()), daemon=True)
        watch.start()
        try:
            status = cluster.wait()
        finally:
            for proc in cluster.procs:
                if proc.poll() is None:
                    proc.kill()
    ended = time.time()
    assert sent, mw.log_text(cluster, 1)[-3000:]
    assert cluster.procs[1].returncode == -signal.SIGKILL
    assert cluster.procs[0].returncode == 1, mw.log_text(cluster, 0)[-3000:]
    assert ended - sent[0] < 60
    text = mw.log_text(cluster, 0)
    assert "t2t-image-trainer: error: worker 0 of 2 stopped:" in text and "is gone" in text
    assert status == 128 + signal.SIGKILL
    assert "worker 1 failed: killed by SIGKILL" in launcher_messages.read_text()
