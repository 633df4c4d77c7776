"""What the command-line tools show when something goes wrong: a few lines, not a traceback.

One handler serves t2t-image-trainer, -sampler and -exporter (``run_tool``):

- a user error (a flag, a gin setting, a path, the data, the model_dir lock,
  architecture drift, an image of the wrong size) prints ``<tool>: error:``
  and a message naming the setting, the value and what to do, and exits with
  status 1; the full ``--help`` is never printed;
- SIGINT/SIGTERM that stopped a job at a safe point
  (``t2t_image.training.preemption``) print its one line and exit 130/143;
- anything else is an internal error and keeps its traceback.

``--verbose`` or ``T2T_IMAGE_VERBOSE=1`` adds the traceback to user errors
(and shows TensorFlow's start-up log). Code marks what counts as a user error
by raising ``UserError``/``app.UsageError`` or by running a set-up phase
inside ``user_errors()``.
"""

import contextlib
import difflib
import inspect
import os
import re
import sys
import tempfile
import traceback

from absl import app
from absl import flags

FLAGS = flags.FLAGS
VERBOSE_ENV = "T2T_IMAGE_VERBOSE"
# Lines TensorFlow and its libraries print while being imported (stderr, C++).
_STARTUP_NOISE = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations are on|"
    r"cpu_feature_guard|This TensorFlow binary is optimized|To enable the following "
    r"instructions|Unable to register cu(DNN|FFT|BLAS) factory|computation placer already "
    r"registered|TF-TRT Warning|Could not find cuda drivers")


class UserError(Exception):
    """An error the user can fix; the tools print its message without a traceback.

    Args:
        message: str, names the setting, the value and what to do.
        exit_status: int, the process exit status (1).
    """

    def __init__(self, message, exit_status=1):
        super().__init__(message)
        self.exit_status = exit_status


def define_verbose_flag():
    """Defines ``--verbose`` once (every tool has it)."""
    if "verbose" not in FLAGS:
        flags.DEFINE_boolean("verbose", False, "Show the traceback of user errors and "
                             f"TensorFlow's start-up log (also: {VERBOSE_ENV}=1).")


def verbose():
    """Whether --verbose or T2T_IMAGE_VERBOSE=1 asked for tracebacks."""
    if os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
        return True
    try:
        return bool(FLAGS.verbose)
    except (AttributeError, flags.UnparsedFlagAccessError):
        return False


def import_tensorflow_quietly():
    """Imports TensorFlow and Keras without their start-up lines on stderr.

    TF 2.21 prints them through C++ logging before ``TF_CPP_MIN_LOG_LEVEL``
    applies (oneDNN, CPU instructions, absl::InitializeLog), so stderr is sent
    to a temporary file during the import and every other line is replayed.
    Overridable: ``--verbose``, ``T2T_IMAGE_VERBOSE=1`` or
    ``TF_CPP_MIN_LOG_LEVEL=0`` keep everything.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if "tensorflow" in sys.modules or verbose() or os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0":
        import keras  # noqa: F401
        if keras.backend.backend() == "tensorflow":  # KERAS_BACKEND=jax runs without TF
            import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import keras  # noqa: F401
            if keras.backend.backend() == "tensorflow":  # KERAS_BACKEND=jax runs without TF
                import tensorflow  # noqa: F401
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", "replace")
    kept = [line for line in text.splitlines() if line.strip() and not _STARTUP_NOISE.search(line)]
    if kept:
        sys.stderr.write("\n".join(kept) + "\n")
    import logging

    # One INFO line per checkpoint save ("Sharding callback duration: 30 microseconds").
    for name in ("absl", "tensorflow"):
        logging.getLogger(name).addFilter(
            lambda record: "Sharding callback duration" not in str(record.msg))


# ------------------------------------------------------------- user errors
def _user_error_types():
    from t2t_image.storage import run_guard

    types = [ValueError, OSError, run_guard.ModelDirLockedError]
    for name in ("ModelDirWriteError",):
        if hasattr(run_guard, name):
            types.append(getattr(run_guard, name))
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        types += [tf.errors.NotFoundError, tf.errors.PermissionDeniedError]
    return tuple(types)


@contextlib.contextmanager
def user_errors(extra=()):
    """Inside: configuration, path and data errors become ``UserError`` with a clear message.

    For set-up phases (gin parsing, building the data and the model, locking
    and checking the model_dir), where a ValueError or an OSError comes from
    what the user asked for; a missing constructor argument (a TypeError
    "missing ... required") means a setting gin did not bind.

    Args:
        extra: more exception types to treat as user errors.
    """
    try:
        yield
    except (UserError, app.UsageError):
        raise
    except TypeError as e:
        if "required" not in str(e) or "missing" not in str(e):
            raise
        raise UserError(_missing_argument_message(e)) from e
    except _user_error_types() + tuple(extra) as e:
        raise UserError(describe(e)) from e


@contextlib.contextmanager
def user_errors_of(types):
    """Inside: exceptions of ``types`` (already clear messages) become ``UserError``."""
    try:
        yield
    except tuple(types) as e:
        raise UserError(describe(e)) from e


def _missing_argument_message(error):
    match = re.search(r"(\w+)\.__init__\(\) missing \d+ required (?:positional |keyword-only )?"
                      r"arguments?: (.*)", str(error))
    if not match:
        return f"a setting is missing: {error}."
    names = re.findall(r"'(\w+)'", match.group(2))
    bindings = ", ".join(f"t2t_image.{match.group(1)}.{n}" for n in names)
    return (f"the configuration does not set {bindings}: pass the gin files of a run "
            "(e.g. --gin_file=gin/tiny.gin) or bind them with --gin_param.")


def describe(error):
    """A short message for a user error: its text, a "did you mean", a relative path's base."""
    message = str(error).strip() or type(error).__name__
    if isinstance(error, OSError) and error.filename and error.strerror:
        message = f"{error.filename}: {error.strerror}"
        if isinstance(error, FileExistsError) or isinstance(error, NotADirectoryError):
            message += " (a file is in the way of a directory)"
    message = _compact_gin_context(message)
    suggestion = gin_suggestion(message)
    if suggestion:
        # Gin's "In bindings string line 1" context adds nothing to the binding itself.
        lines = [line for line in message.splitlines()
                 if not re.match(r"\s*In bindings string line \d+$", line)]
        return "\n".join(lines) + "\n" + suggestion.strip()
    if isinstance(error, OSError) or re.search(r"no such|not found|does not exist|not exist",
                                                message, re.I):
        for path in re.findall(r"(?:^|[\s'\"=(\[])((?:\.\.?/|(?![/~])[\w.-]+/)[^\s'\",)\]]*)",
                               message):
            path = path.rstrip(".:;")
            message += (f"\nRelative paths are resolved from the working directory "
                        f"{os.getcwd()}: {path} is {os.path.abspath(path)}.")
            break
    return message


def _compact_gin_context(message):
    """Gin's "In call to configurable 'X' (<class ...>) in scope 's'" lines -> one short line."""
    calls = []

    def keep(line):
        match = re.match(r"\s*In call to configurable '([\w.]+)' \(<.*?>\)(?: in scope '(\w+)')?",
                         line)
        if match:
            calls.append(match.group(1) + (f" (scope {match.group(2)})" if match.group(2) else ""))
        return not match

    lines = [line for line in message.splitlines() if keep(line)]
    if calls:
        lines.append("(raised while gin built " + " <- ".join(calls) + ")")
    return "\n".join(lines)


def _configurables():
    """{selector: Configurable} of everything registered with gin."""
    from gin import config as gin_config

    return dict(gin_config._REGISTRY.items())  # gin has no public listing


def _parameters(configurable):
    try:
        signature = inspect.signature(configurable.wrapped)
    except (TypeError, ValueError):
        return []
    names = [p.name for p in signature.parameters.values()
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD) and p.name != "self"]
    if configurable.denylist:
        names = [n for n in names if n not in configurable.denylist]
    if configurable.allowlist:
        names = [n for n in names if n in configurable.allowlist]
    return names


def gin_suggestion(message):
    """' Did you mean ...?' for a gin error naming an unknown configurable or parameter."""
    try:
        registry = _configurables()
    except Exception:  # noqa: BLE001 - a suggestion is optional
        return ""
    match = re.search(r"Configurable '([\w.]+)' doesn't have a parameter named '(\w+)'",
                      message)
    if match:
        configurable = registry.get(match.group(1))
        if configurable is None:
            configurable = next((c for s, c in registry.items()
                                 if s.endswith("." + match.group(1))), None)
        names = _parameters(configurable) if configurable is not None else []
        close = difflib.get_close_matches(match.group(2), names, n=1, cutoff=0.6)
        if close:
            return f" Did you mean {match.group(1)}.{close[0]}?"
        return f" Its parameters: {', '.join(names)}." if names else ""
    match = re.search(r"No configurable matching '([\w.]+)'", message)
    if match:
        wanted = match.group(1)
        candidates = list(registry)
        short = [s.rsplit(".", 1)[-1] for s in candidates]
        close = difflib.get_close_matches(wanted, candidates, n=1, cutoff=0.6)
        if not close:
            hit = difflib.get_close_matches(wanted.rsplit(".", 1)[-1], short, n=1, cutoff=0.6)
            close = [candidates[short.index(hit[0])]] if hit else []
        if close:
            return f" Did you mean {close[0]}?"
    return ""


# --------------------------------------------------------------- the handler
def _shorten(message, max_lines=6):
    lines = [line.rstrip() for line in str(message).strip().splitlines() if line.strip()]
    if len(lines) > max_lines:
        lines = lines[:max_lines - 1] + [f"... ({len(lines) - max_lines + 1} more lines; "
                                         "--verbose shows everything)"]
    return "\n".join(lines)


def handle(error, prog):
    """Prints ``error`` the way a person needs it and returns the exit status, or None.

    None means "not a user error": the caller re-raises it (traceback).
    """
    from t2t_image.training import preemption

    if isinstance(error, preemption.Interrupted):
        print(f"{prog}: {error}", file=sys.stderr)
        return error.exit_status
    if isinstance(error, KeyboardInterrupt):
        print(f"\n{prog}: interrupted (nothing was saved at this point).", file=sys.stderr)
        return 130
    if isinstance(error, app.UsageError):
        status, text = getattr(error, "exitcode", 1), str(error)
        hint = f" (see {prog} --help)" if "--" in text else ""
    elif isinstance(error, UserError):
        status, text, hint = error.exit_status, str(error), ""
    else:
        return None
    if verbose():
        traceback.print_exception(error)
    print(f"{prog}: error: {_shorten(text)}{hint}", file=sys.stderr)
    return status


def exit_now(status):
    """Ends the process with ``status`` at once, after flushing stdout, stderr and the logs.

    For a tool whose work is done and written: TensorFlow's own teardown then
    only frees memory, and after a training run it waits in the destructor of
    the checkpointed ``tf.data`` iterator (each checkpoint of the iterator
    makes it slower: measured 12 s after 300 steps of gin/tiny.gin with 150
    checkpoints, up to 50 s on longer runs).
    """
    import logging

    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing more can be written anyway
            pass
    logging.shutdown()
    os._exit(status)


def _status(result):
    """The exit status for what ``main`` returned (as ``sys.exit`` would use it)."""
    if result is None:
        return 0
    if isinstance(result, int) and not isinstance(result, bool):
        return result
    print(result, file=sys.stderr)
    return 1


def run_tool(main, prog=None):
    """Runs ``main`` under absl's ``app.run`` with this module's error handling.

    Log lines are short and t2t_image's own (``console.quiet_console``). A
    run that ends (done, a user error or a stop by signal) leaves through
    ``exit_now``; an internal error keeps Python's traceback and teardown.

    Args:
        main: the tool's ``main(argv)``.
        prog: the tool's name for messages (default: from sys.argv[0]).
    """
    define_verbose_flag()
    prog = prog or os.path.basename(sys.argv[0] or "t2t-image")
    if prog in ("__main__.py", "-c", "-m") or prog.endswith(".py"):
        prog = "t2t-image-" + main.__module__.rsplit(".", 1)[-1]

    def guarded_main(argv):
        from t2t_image.cli import console

        console.quiet_console(verbose())  # after absl parsed the flags (--verbose)
        try:
            status = _status(main(argv))
        except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - re-raised unless handled
            status = handle(e, prog)
            if status is None:
                raise
        exit_now(status)

    app.run(guarded_main)
