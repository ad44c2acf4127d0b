#!/usr/bin/env bash
# Downloads into .whl/ the wheels that a bare GPU image (CPython 3.12, x86-64, with jax, flax, optax,
# chex, orbax-checkpoint, tqdm, matplotlib, scikit-learn) lacks to import vaegen: distrax and its
# TensorFlow Probability, decorator, gast, dm-tree, and ml-collections.  TFDS is not needed there:
# the benchmarks time random binary images when no prepared dataset exists.
#
#   bash scripts/device_wheels.sh          # here, with PyPI access; .whl/ is git-ignored
#   python scripts/device_data.py --out .device-data   # Fashion-MNIST for the comparison study (git-ignored)
#   # there, before the command:
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site && python3 scripts/device_check.py --out "$OUT"
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=${1:-.whl}
mkdir -p "$DEST"
download() {
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any -d "$DEST" "$@"
}
download "distrax==0.1.9" "tfp-nightly==0.26.0.dev20261027" "decorator>=5" "gast>=0.6" "dm-tree>=0.1.8" "ml-collections>=1.0"
ls -l "$DEST"
