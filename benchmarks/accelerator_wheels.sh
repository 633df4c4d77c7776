#!/usr/bin/env bash
# Downloads (here, with network) the wheels that benchmarks/accelerator.sh installs offline on a
# Python 3.12 x86-64 machine that has JAX and NumPy but no Keras: into .whl/ of the repository,
# which .git/info/exclude keeps out of git. See benchmarks/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d .whl keras==3.15.1 namex==0.1.0 optree==0.20.0 gin-config==0.5.0
