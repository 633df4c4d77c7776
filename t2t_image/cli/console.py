"""What the tools print while they work: short lines a person caused, the full record in a file.

On the console (stderr), ``quiet_console()`` makes absl's handler print

- every line of t2t_image without absl's prefix (``I1207 09:14:47.316 ... file.py:50]``),
  in its short form when the code gave one (``extra={"short": ...}``): lines
  of at most ``MAX_LINE`` characters besides the paths the user chose;
- warnings and errors of any library whole, as ``warning: ...``;
- no INFO line of another library (TensorFlow's SavedModel writer, gin's file
  lookups): those are what nobody asked for.

``--verbose`` (or ``T2T_IMAGE_VERBOSE=1``) keeps absl's full output.
``log_to_file(path)`` adds the full record (absl's prefix, every INFO line of
every library, the long forms) to a file, e.g. the trainer's
``MODEL_DIR/trainer.log``.
"""

import logging
import os

MAX_LINE = 100  # what the tests hold t2t_image's console lines to
_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep


def ours(record):
    """Whether a log record comes from t2t_image's code."""
    return os.path.abspath(record.pathname).startswith(_PACKAGE)


class ConsoleFilter(logging.Filter):
    """Keeps t2t_image's lines and every warning or error; drops other libraries' INFO."""

    def filter(self, record):
        return record.levelno >= logging.WARNING or ours(record)


class ConsoleFormatter(logging.Formatter):
    """The message alone (its short form if given); ``warning: `` before warnings."""

    def format(self, record):
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {record.getMessage()}"
        return getattr(record, "short", None) or record.getMessage()


def quiet_console(verbose=False):
    """Sets up absl's stderr handler as described in the module docstring (unless verbose)."""
    from absl import logging as absl_logging

    handler = absl_logging.get_absl_handler()
    if verbose or any(isinstance(f, ConsoleFilter) for f in handler.filters):
        return
    handler.setFormatter(ConsoleFormatter())
    handler.addFilter(ConsoleFilter())


def log_to_file(path):
    """Appends the full log record (absl's format, all libraries, INFO and up) to ``path``.

    Returns:
        The handler, or None when the file cannot be opened (e.g. a read-only
        model_dir: the run goes on without it).
    """
    from absl import logging as absl_logging

    try:
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        return None
    handler.setFormatter(absl_logging.PythonFormatter())
    handler.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    return handler
