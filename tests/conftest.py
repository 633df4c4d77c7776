"""Shared pytest configuration: quiet TF logs, fixed seeds, the shared data dir."""

import os
import pathlib

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

SHARED_DATA = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    keras.utils.set_random_seed(0)
    np.random.seed(0)


@pytest.fixture(autouse=True)
def _absl_verbosity():
    # Tests that run a CLI's main() in-process parse (and unparse) absl flags, which
    # sets the "absl" logger to WARNING for the rest of the worker; restore its level
    # so that later tests that check INFO log lines see them whatever ran before.
    import logging

    logger = logging.getLogger("absl")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.fixture
def shared_data():
    if not SHARED_DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"../shared/data must exist beside the checkout in CI: {SHARED_DATA}")
        pytest.skip(f"../shared/data not found at {SHARED_DATA}")
    return SHARED_DATA
