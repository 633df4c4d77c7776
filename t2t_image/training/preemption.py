"""Stopping on SIGINT/SIGTERM without losing work: training, evaluation and sampling.

A long job is stopped by a person (Ctrl-C: SIGINT) or by a scheduler or cloud
preemption (SIGTERM, usually with a grace period of seconds to minutes).
Python's default reactions lose the run: SIGINT raises KeyboardInterrupt in
whatever the job is doing, SIGTERM kills the process. ``StopOnSignal``
replaces both while a job runs:

- the first signal only sets a flag; the job polls it at safe points (after a
  training step, between evaluation batches) and stops there: a trainer saves
  a checkpoint of the step it has just finished (``TrainingGuard``) and raises
  ``Preempted``; evaluation raises ``Interrupted`` and writes nothing;
- a second SIGINT (or SIGTERM) ends the process at once (``os._exit``) with the
  conventional status. Checkpoint writes are atomic (TF writes a temporary
  folder and renames it; ``run_guard.CheckpointManager`` records a checkpoint
  only once it is complete), so the latest complete checkpoint stays loadable.

Exit statuses are the shell's convention, 128 + the signal number: 130 for
SIGINT, 143 for SIGTERM. The command-line tools print the exception's one-line
message and exit with ``exit_status`` (``t2t_image.cli.errors``).

Multi-worker training: a signal reaches one worker (or all, at different
moments), but all must save the same step. Each train step reduces the
workers' stop flags together with the gradients, so every worker learns of a
stop after the same step and saves it (``TrainingGuard(agreed=True)``), under
TensorFlow and JAX alike. No T2T counterpart (tf.estimator saved only every
``save_checkpoints_steps``).
"""

import contextlib
import os
import signal
import threading

SIGNAL_NAMES = {signal.SIGINT: "SIGINT", signal.SIGTERM: "SIGTERM"}

_active = []  # the StopOnSignal contexts in force, innermost last


class Interrupted(Exception):
    """A job stopped at a safe point after SIGINT/SIGTERM.

    Args:
        signum: int, the signal received.
        message: str, one line for the person who sent it.

    Attributes:
        exit_status: int, 128 + signum (130 for SIGINT, 143 for SIGTERM).
    """

    def __init__(self, signum, message):
        super().__init__(message)
        self.signum = signum
        self.exit_status = 128 + int(signum)


class Preempted(Interrupted):
    """Training stopped after SIGINT/SIGTERM with a checkpoint of its last step.

    Args:
        signum: int, the signal received.
        step: int, the step the checkpoint holds.
        checkpoint: str, the checkpoint prefix written (or already there).
    """

    def __init__(self, signum, step, checkpoint):
        name = SIGNAL_NAMES.get(signum, f"signal {signum}")
        super().__init__(
            signum,
            f"Stopped by {name} at step {step}; saved checkpoint {checkpoint}. "
            "Run the same command again to resume from it.",
        )
        self.step = step
        self.checkpoint = checkpoint


class StopOnSignal:
    """Context manager: SIGINT/SIGTERM set a flag the job polls instead of killing it.

    Handlers can only be installed in the main thread; elsewhere the context
    does nothing (the signals keep their defaults). Nested contexts share the
    flag of the outermost one's signal. The previous handlers come back on exit.

    Args:
        what: str, what is running ("training", "evaluation", "sampling"),
            for the message printed on the first signal.
        on_stop: str, what the first signal's message promises the job will do.
        immediate: bool, end the process at the first signal (for jobs with
            nothing to save, e.g. sampling), except inside ``deferred()``.

    Example:
        >>> with StopOnSignal("evaluation", "stop after this batch") as stop:
        ...     for batch in batches:
        ...         stop.raise_if_requested("evaluation stopped; nothing written")
        ...         evaluate(batch)
    """

    def __init__(self, what="training", on_stop="stopping after the current step",
                 immediate=False):
        self.what = what
        self.on_stop = on_stop
        self.immediate = immediate
        self.signum = None
        self._previous = {}
        self._deferring = 0
        self._cleanups = []

    @property
    def requested(self):
        return self.signum is not None

    def at_exit(self, cleanup):
        """Runs ``cleanup()`` (e.g. removing a temporary file) if a signal ends the process.

        Returns ``cleanup``; ``forget(cleanup)`` unregisters it.
        """
        self._cleanups.append(cleanup)
        return cleanup

    def forget(self, cleanup):
        if cleanup in self._cleanups:
            self._cleanups.remove(cleanup)

    def _exit(self, status):
        for cleanup in self._cleanups:
            try:
                cleanup()
            except Exception:  # noqa: BLE001 - quitting anyway
                pass
        os._exit(status)

    def _handle(self, signum, frame):
        del frame
        name = SIGNAL_NAMES.get(signum, str(signum))
        if self.signum is not None:
            # Second signal: quit now. os._exit skips Python's clean-up, so no half-done
            # handler runs; a checkpoint being written is left as a temporary file that
            # the next run removes, and the latest complete checkpoint stays recorded.
            os.write(2, f"\n{name} again: quitting at once; the latest complete checkpoint "
                        "is kept.\n".encode())
            self._exit(128 + int(signum))
        self.signum = signum
        if self.immediate and not self._deferring:
            os.write(2, f"\n{name} received: {self.on_stop} ({self.what}).\n".encode())
            self._exit(128 + int(signum))
        os.write(2, f"\n{name} received: {self.on_stop} ({self.what}); send it again to quit "
                    "at once.\n".encode())

    @contextlib.contextmanager
    def deferred(self):
        """Inside, an ``immediate`` context only records a signal (e.g. while writing files)."""
        self._deferring += 1
        try:
            yield self
        finally:
            self._deferring -= 1

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in SIGNAL_NAMES:
                self._previous[signum] = signal.signal(signum, self._handle)
        _active.append(self)
        return self

    def __exit__(self, *exc):
        _active.remove(self)
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False

    def raise_if_requested(self, message):
        """Raises ``Interrupted(signum, message)`` if a signal arrived."""
        if self.signum is not None:
            raise Interrupted(self.signum, message)


def stop_requested():
    """The signal number a job in this process was asked to stop with, or None."""
    for context in _active:
        if context.signum is not None:
            return context.signum
    return None


def raise_if_stop_requested(message):
    """Raises ``Interrupted`` with ``message`` if any active context received a signal.

    For loops deep in library code (evaluation batches) that do not hold the
    context object.
    """
    signum = stop_requested()
    if signum is not None:
        raise Interrupted(signum, message)


class TrainingGuard:
    """Polled by a training loop after every step: saves and raises ``Preempted`` on a stop.

    Backend-neutral: it needs only the step number and a ``save(step)``
    callable that writes a checkpoint (model, optimizer, data iterator) and
    returns its path. Several workers must stop after the same step and save
    it together: their train step reduces every worker's stop flag with the
    gradients (one collective, both backends), and ``check`` acts on that
    agreed value (``agreed=True``) instead of this process's own flag.

    Args:
        signals: the ``StopOnSignal`` context of the run.
        save: callable ``save(step) -> checkpoint path``; skipped when the
            step is already saved (``saved_step``).
        agreed: bool, act on the ``stop`` the workers' step agreed on.
    """

    def __init__(self, signals, save, agreed=False):
        self.signals = signals
        self.save = save
        self.saved_step = None
        self.saved_path = None
        self.agreed = agreed

    def record_save(self, step, path):
        """Tells the guard that ``step`` is already checkpointed at ``path``."""
        self.saved_step, self.saved_path = step, path

    def check(self, step, stop=None):
        """Call after each step: on a stop request, checkpoint ``step`` and raise ``Preempted``.

        ``stop``: with ``agreed``, what the workers' step reduced their stop flags
        to (0: no worker was signalled; else a signal number or a sum of them).
        """
        signum = self.signals.signum
        if self.agreed and stop is not None:
            stop = int(stop)
            signum = (signum or (stop if stop in SIGNAL_NAMES else signal.SIGTERM)) if stop else None
        if signum is None:
            return
        if self.saved_step != step:
            self.record_save(step, self.save(step))
        raise Preempted(signum, step, self.saved_path)
