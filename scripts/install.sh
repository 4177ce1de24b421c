#!/usr/bin/env bash
# Builds the Rust extension and installs tfm_rs (and what it needs) into the current Python.
# Usage: bash scripts/install.sh [extra pip packages…]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

if ! command -v cargo >/dev/null 2>&1; then
    echo "tfm_rs needs a Rust toolchain (cargo); install it from your package manager or rustup." >&2
    exit 1
fi
"$PY" -m pip install --quiet --disable-pip-version-check "maturin>=1.5,<2" "numpy>=1.22" "$@"
rm -rf dist
"$PY" -m maturin build --release --quiet --out dist
WHEEL=$(ls dist/tfm_rs-*.whl)
# The first install brings the runtime dependencies; the second replaces an installed tfm_rs of
# the same version with this build.
"$PY" -m pip install --quiet --disable-pip-version-check "$WHEEL"
"$PY" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$WHEEL"
