"""Parsing gin files and bindings for the command-line tools."""

import logging
import pathlib

import gin

# The repository's gin/ folder: experiment files include model and dataset files
# relative to it (e.g. ``include 'models/cifar10_local1d_cat.gin'``).
GIN_DIR = pathlib.Path(__file__).resolve().parents[2] / "gin"


def _hide_resource_reader_misses(record):
    # Gin probes every include as a Python package resource before its search
    # path and logs each miss as an error; the include is then found in GIN_DIR.
    return not str(record.msg).startswith("Path not found")


def _guard_package_probe():
    # Gin also probes an include such as 'experiments/x.gin' as a file of a Python package
    # named 'experiments'. A plain folder on sys.path with that name (the repository's own
    # experiments/, a namespace package) has no origin, and gin's probe raises TypeError
    # instead of reporting a miss; treat that as a miss so the search path is tried.
    from gin import config
    from gin import resource_reader

    def package_file_exists(path):
        try:
            return resource_reader.system_path_file_exists(path)
        except TypeError:
            return False

    config._FILE_READERS[:] = [  # gin has no public way to replace a registered reader
        (reader, package_file_exists if exists is resource_reader.system_path_file_exists
         else exists) for reader, exists in config._FILE_READERS]


def parse_gin(gin_files, gin_params):
    """Parses gin files then bindings (later ones override earlier ones).

    Fails before anything runs: a missing file, an unknown configurable or a
    parameter it does not have raises with the file or binding named.
    """
    from t2t_image import configurables  # noqa: F401  (registers everything)

    logging.getLogger().addFilter(_hide_resource_reader_misses)
    _guard_package_probe()
    if GIN_DIR.is_dir():
        gin.add_config_file_search_path(str(GIN_DIR))
    files = []
    for path in gin_files or []:
        found = [c for c in (pathlib.Path(path), GIN_DIR / path) if c.is_file()]
        if not found:
            raise FileNotFoundError(f"--gin_file={path}: no such file (also looked in {GIN_DIR}).")
        files.append(str(found[0]))
    try:
        gin.parse_config_files_and_bindings(files, gin_params or [], finalize_config=False)
    except NameError as e:  # gin's dynamic_registration mode: a name no import provided
        raise ValueError(
            f"gin configuration error: {e}\nA gin file with `from __gin__ import "
            "dynamic_registration` names configurables through its imports (e.g. `from "
            "t2t_image.training import trainer` then `trainer.Trainer.num_train_steps = 3`); "
            "the registered names such as t2t_image.Trainer work in files without that line."
        ) from e
    except (ValueError, KeyError, SyntaxError, IOError) as e:
        raise ValueError(f"gin configuration error: {e}") from e
