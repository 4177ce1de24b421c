#!/usr/bin/env bash
# Runs every test: the Rust unit tests, then the Python suite (quick and slow) against a fresh
# build. Installs what the tests need first. Usage: bash scripts/test.sh [pytest args…]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

bash scripts/install.sh "pytest>=7" "hypothesis>=6" "matplotlib>=3.5"
echo "== cargo test"
cargo test --release --quiet
echo "== pytest"
# Run from tests/ so `import tfm_rs` finds the installed package, not the source folder.
"$PY" -m pytest -q -ra --rootdir=. tests "$@"
