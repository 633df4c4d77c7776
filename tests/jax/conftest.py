"""Tests of the JAX backend: collected only when keras runs on JAX.

Keras fixes its backend at import, so these run in their own pytest process:

    KERAS_BACKEND=jax python3 -m pytest -q tests/jax

Under any other backend (the default TensorFlow run of ``tests``) every test
here is skipped. Nothing here imports TensorFlow.
"""

import keras
import pytest


def pytest_collection_modifyitems(config, items):
    if keras.backend.backend() == "jax":
        return
    skip = pytest.mark.skip(reason="JAX-backend test: run with KERAS_BACKEND=jax")
    for item in items:
        if "tests/jax/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(skip)
