#!/usr/bin/env bash
# A wheel built from the repository installs into a fresh virtual environment and works there.
#
#   bash scripts/check_wheel.sh            (PYTHON=... to choose the interpreter; `make wheel-check`)
#
# Builds the wheel with `python -m build --wheel` (an isolated build: setuptools as
# [build-system] asks for it), checks that it holds every file of the package that git tracks (a
# config preset, a shipped recipe: package data that the wheel would otherwise lose silently)
# and the license, installs it with its dependencies from the package registry into a new virtual
# environment (no system site packages; pip's cache makes a second run quick), and from a
# directory outside the repository runs `vaegen --help`, `vaegen config`, `vaegen config tiny`,
# `import vaegen` (from the environment, at the version of vaegen/__init__.py) and a tiny
# `vaegen train` on the bundled digits data.  Prints the time of each step; exit 1 on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
PYTHON=${PYTHON:-python3}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/vaegen-wheel.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
START=$SECONDS
step() { echo "check_wheel: [$((SECONDS - START)) s] $*"; }

step "building the wheel"
"$PYTHON" -m build --wheel --outdir "$TMP/dist" . >"$TMP/build.log" 2>&1 || { cat "$TMP/build.log"; exit 1; }
if grep -i "deprecat" "$TMP/build.log"; then
  echo "check_wheel: the build printed a deprecation warning (above)"; exit 1
fi
WHEEL=$(ls "$TMP"/dist/vaegen-*.whl)
step "built $(basename "$WHEEL")"

# Every tracked file of the package is in the wheel (outside a git checkout: every file but
# bytecode), and the license with its SPDX expression.
{ git ls-files vaegen 2>/dev/null || find vaegen -type f ! -name "*.pyc" ! -path "*/__pycache__/*"; } | "$PYTHON" -c '
import sys, zipfile
wheel = zipfile.ZipFile(sys.argv[1])
names = set(wheel.namelist())
tracked = [line.strip() for line in sys.stdin if line.strip()]
missing = [f for f in tracked if f not in names]
if missing:
    sys.exit(f"check_wheel: the wheel lacks package files: {missing}")
meta = next(n for n in names if n.endswith(".dist-info/METADATA"))
text = wheel.read(meta).decode()
if "License-Expression: Apache-2.0" not in text:
    sys.exit("check_wheel: the wheel has no License-Expression: Apache-2.0")
if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
    sys.exit("check_wheel: the wheel has no LICENSE")
print(f"check_wheel: {len(tracked)} package files and the license are in the wheel")
' "$WHEEL"

step "installing it into a fresh virtual environment"
"$PYTHON" -m venv "$TMP/venv"
"$TMP/venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile "$WHEEL"
BIN=$TMP/venv/bin

step "running it outside the repository"
mkdir -p "$TMP/elsewhere"
cd "$TMP/elsewhere"
export JAX_PLATFORMS=${JAX_PLATFORMS:-cpu}
"$BIN/vaegen" --help >/dev/null
"$BIN/vaegen" config | tee "$TMP/presets.txt" >/dev/null
for preset in tiny vae_mlp_fmnist ae_mlp_fmnist; do
  grep -q "$preset" "$TMP/presets.txt" || { echo "check_wheel: vaegen config does not list the preset $preset"; exit 1; }
done
"$BIN/vaegen" config tiny >/dev/null
"$BIN/python" - "$REPO" "$TMP/venv" <<'EOF'
import pathlib, re, sys
import vaegen
repo, venv = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]).resolve()
where = pathlib.Path(vaegen.__file__).resolve()
if venv not in where.parents:
    sys.exit(f"check_wheel: vaegen was imported from {where}, not from the fresh environment")
source = re.search(r'^__version__ = "([^"]+)"', (repo / "vaegen" / "__init__.py").read_text(), re.M).group(1)
if vaegen.__version__ != source:
    sys.exit(f"check_wheel: installed version {vaegen.__version__} != {source} of vaegen/__init__.py")
print(f"check_wheel: import vaegen {vaegen.__version__} from {where.parent}")
EOF
"$BIN/vaegen" train --config tiny --workdir "$TMP/run" --config.train.num_epochs=1 >"$TMP/train.log" 2>&1 \
  || { cat "$TMP/train.log"; exit 1; }
test -s "$TMP/run/metrics.jsonl" && test -d "$TMP/run/checkpoints"
step "vaegen train --config tiny (digits) ran; the wheel check passed"
