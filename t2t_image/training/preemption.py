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

Multi-worker training (``MultiWorkerMirroredStrategy`` with a cluster) uses
TensorFlow's ``tf.distribute.experimental.PreemptionCheckpointHandler``: a
preempted worker announces a step through the coordination service and every
worker saves at that same step, which a per-worker flag cannot promise. No T2T
counterpart (tf.estimator saved only every ``save_checkpoints_steps``).
"""

import contextlib
import os
import signal
import sys
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
    returns its path. With a multi-worker TF strategy it defers to TF's
    ``PreemptionCheckpointHandler`` so that every worker saves the same step.

    Args:
        signals: the ``StopOnSignal`` context of the run.
        save: callable ``save(step) -> checkpoint path``; skipped when the
            step is already saved (``saved_step``).
        strategy: optional ``tf.distribute`` strategy (multi-worker support).
        manager: the ``tf.train.CheckpointManager`` (multi-worker support).
        agreed: bool, the workers agree on stopping themselves (JAX processes:
            each step returns the largest signal any of them received), so
            ``check`` acts on the ``stop`` it is given, not on this process's flag.
    """

    def __init__(self, signals, save, strategy=None, manager=None, agreed=False):
        self.signals = signals
        self.save = save
        self.saved_step = None
        self.saved_path = None
        self.agreed = agreed
        self._handler = _multi_worker_handler(strategy, manager, self)

    def record_save(self, step, path):
        """Tells the guard that ``step`` is already checkpointed at ``path``."""
        self.saved_step, self.saved_path = step, path

    def check(self, step, stop=None):
        """Call after each step: on a stop request, checkpoint ``step`` and raise ``Preempted``.

        ``stop``: with ``agreed``, the signal number all workers agreed on (0: none).
        """
        if self._handler is not None:
            # Every worker polls; the handler saves at the step all workers agreed on and
            # then calls _exit_fn, which raises Preempted.
            self._step = step  # named by exit_fn's Preempted
            self._handler.save_checkpoint_if_preempted(checkpoint_number=step)
            return
        signum = (int(stop) or None) if self.agreed and stop is not None else self.signals.signum
        if signum is None:
            return
        if self.saved_step != step:
            self.record_save(step, self.save(step))
        raise Preempted(signum, step, self.saved_path)


def _multi_worker_handler(strategy, manager, guard):
    """TF's PreemptionCheckpointHandler for a multi-worker strategy with a cluster, else None."""
    tf = sys.modules.get("tensorflow")  # never imported here: the JAX loop may run without it
    if strategy is None or manager is None or tf is None:
        return None

    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return None
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().jobs:
        return None

    def exit_fn():
        step = getattr(guard, "_step", None)
        raise Preempted(guard.signals.signum or signal.SIGTERM, step, manager.latest_checkpoint)

    # Ctrl-C on one worker: treated as that worker's preemption (TF's handler watches
    # SIGTERM), so the whole cluster saves one agreed step and stops.
    def forward_sigint(signum, frame):
        del frame
        guard.signals.signum = guard.signals.signum or signum
        os.kill(os.getpid(), signal.SIGTERM)

    config = tf.distribute.experimental.TerminationConfig(exit_fn=exit_fn)
    handler = tf.distribute.experimental.PreemptionCheckpointHandler(
        resolver, manager, termination_config=config)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, forward_sigint)
    print("Multi-worker run: SIGTERM/SIGINT go through TF's PreemptionCheckpointHandler "
          "(all workers save the same step).", file=sys.stderr)
    return handler
