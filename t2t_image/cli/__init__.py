"""Command-line tools. TensorFlow's C++ log is quiet unless asked for (set before TF loads)."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
