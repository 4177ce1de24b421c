#!/usr/bin/env bash
# Builds and installs tfm_rs, then runs the main job, `tfm-rs demo`: a small encoder-decoder learns
# to write numbers out in words, then translates held-out numbers. Usage: bash scripts/demo.sh [demo args…]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${PYTHON:-python3}" -m tfm_rs demo "$@"
