#!/usr/bin/env bash
# Runs benchmarks/accelerator.py where there is no network and no TensorFlow (e.g. the H200
# machine): first installs the wheels carried in .whl/ (keras, namex, optree, gin-config;
# fetched with benchmarks/accelerator_wheels.sh) into /tmp/site, then runs the benchmark
# under the JAX backend. Arguments go to accelerator.py. See benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
# One process owns the GPU: let XLA take most of its memory (JAX's default is 75%).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true
exec python3 benchmarks/accelerator.py "$@"
