"""An honest progress line for sampling jobs: 'compiling' first, then an ETA from steady steps."""

import sys
import time


class SamplingProgress:
    """Reports ``progress(steps_done, num_steps)`` calls of the samplers as short lines.

    The first chunk of steps of every batch includes compilation (the first
    batch) or set-up, so it never enters the rate: the ETA comes from the
    later chunks only, and until one is measured the line says so
    (``compiling`` before the first chunk ends, ``ETA after the next step``
    after). On a terminal the line is rewritten in place; anywhere else (a
    log file, a pipe) every update is its own line, at most one per
    ``min_interval`` seconds plus the last step of each batch.

    Args:
        num_batches: int, batches in the job.
        stream: file to write to (default: ``sys.stderr``).
        interactive: bool, rewrite one line in place (default: whether
            ``stream`` is a terminal).
        min_interval: float, seconds between lines when not interactive.
        clock: callable returning seconds (for tests).
    """

    def __init__(self, num_batches, stream=None, interactive=None, min_interval=10.0,
                 clock=time.monotonic):
        self.num_batches = num_batches
        self.stream = stream
        self.interactive = interactive
        self.min_interval = min_interval
        self.clock = clock
        self.batch = 0
        self.start = clock()
        self._steady_steps = 0
        self._steady_seconds = 0.0
        self._last_done = 0
        self._last_time = self.start
        self._last_line = None
        self._width = 0

    def _out(self):
        return self.stream if self.stream is not None else sys.stderr

    def _is_interactive(self):
        if self.interactive is not None:
            return self.interactive
        return bool(getattr(self._out(), "isatty", lambda: False)())

    def _write(self, text, force=False):
        out, now = self._out(), self.clock()
        if self._is_interactive():
            out.write("\r" + text.ljust(self._width))
            self._width = len(text)
        elif force or self._last_line is None or now - self._last_line >= self.min_interval:
            out.write(text + "\n")
        else:
            return
        self._last_line = now
        out.flush()

    def start_batch(self, batch):
        """Marks the start of batch ``batch`` (0-based); the first one says 'compiling'."""
        self.batch = batch
        self._last_done = 0
        self._last_time = self.clock()
        if batch == 0:
            self._write(f"batch 1/{self.num_batches}: compiling the sampling loop ...",
                        force=True)

    def eta(self, done, total):
        """Seconds left from the steady-state rate, or None before it is measured."""
        if not self._steady_steps:
            return None
        left = self.num_batches * total - (self.batch * total + done)
        return left * self._steady_seconds / self._steady_steps

    def __call__(self, done, total):
        from t2t_image.training.progress import format_duration

        now = self.clock()
        if self._last_done:  # not the first chunk of this batch: a steady one
            self._steady_steps += done - self._last_done
            self._steady_seconds += now - self._last_time
        self._last_done, self._last_time = done, now
        left = self.eta(done, total)
        eta = "ETA after the next step" if left is None else f"ETA {format_duration(left)}"
        self._write(f"batch {self.batch + 1}/{self.num_batches}: step {done}/{total} "
                    f"({100 * done // total}%), {now - self.start:.1f} s, {eta}",
                    force=done == total)

    def end(self):
        """Ends the line on a terminal."""
        if self._is_interactive() and self._last_line is not None:
            self._out().write("\n")
            self._out().flush()
