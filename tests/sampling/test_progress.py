"""The sampling progress line: 'compiling' first, an ETA from steady chunks only, short lines."""

import io

from t2t_image.sampling.progress import SamplingProgress


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_eta_ignores_the_compiling_chunk_and_log_files_get_one_line_per_update():
    clock, out = Clock(), io.StringIO()
    progress = SamplingProgress(2, stream=out, interactive=False, min_interval=0.0, clock=clock)
    progress.start_batch(0)
    clock.now = 30.0  # the first chunk: compilation + 10 steps
    progress(10, 40)
    clock.now = 33.0  # steady: 10 steps in 3 s
    progress(20, 40)
    assert progress.eta(20, 40) == 60 * 0.3  # 60 steps left at 0.3 s/step, not 30/20 s/step
    clock.now = 39.0
    progress(40, 40)
    progress.start_batch(1)
    clock.now = 45.0  # the first chunk of the next batch (set-up): left out of the rate
    progress(10, 40)
    assert progress.eta(10, 40) == 30 * (9.0 / 30)
    progress.end()
    lines = out.getvalue().splitlines()
    assert lines == [
        "batch 1/2: compiling the sampling loop ...",
        "batch 1/2: step 10/40 (25%), 30.0 s, ETA after the next step",
        "batch 1/2: step 20/40 (50%), 33.0 s, ETA 18s",
        "batch 1/2: step 40/40 (100%), 39.0 s, ETA 12s",
        "batch 2/2: step 10/40 (25%), 45.0 s, ETA 9s",
    ]
    assert "\r" not in out.getvalue() and max(map(len, lines)) <= 100


def test_log_files_get_at_most_one_line_per_interval_plus_the_end_of_each_batch():
    clock, out = Clock(), io.StringIO()
    progress = SamplingProgress(1, stream=out, interactive=False, min_interval=10.0, clock=clock)
    progress.start_batch(0)
    for step in range(1, 33):
        clock.now = step * 1.0
        progress(step, 32)
    lines = out.getvalue().splitlines()
    assert [line.split(":")[1].split(",")[0] for line in lines] == [
        " compiling the sampling loop ...", " step 10/32 (31%)", " step 20/32 (62%)",
        " step 30/32 (93%)", " step 32/32 (100%)"]


def test_a_terminal_gets_one_line_rewritten_in_place():
    clock, out = Clock(), io.StringIO()
    progress = SamplingProgress(1, stream=out, interactive=True, clock=clock)
    progress.start_batch(0)
    clock.now = 2.0
    progress(1, 2)
    clock.now = 3.0
    progress(2, 2)
    progress.end()
    text = out.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n") and text.count("\r") == 3
    assert text.split("\r")[-1].rstrip() == "batch 1/1: step 2/2 (100%), 3.0 s, ETA 0s"
