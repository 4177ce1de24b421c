#!/usr/bin/env bash
# Checks formatting and lints (cargo fmt, clippy, ruff), then runs every test: the Rust unit
# tests, then the Python suite (quick and slow) against a fresh build. Installs what the tests
# need first. Usage: bash scripts/test.sh [pytest args…]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# ---- static checks: formatting and lints (fast, so they run first) ----
if ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1 && command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy
fi
echo "== cargo fmt --check"
cargo fmt --check
# The wheel's features, and the bindings without the GPU backend (that also checks they compile).
echo "== cargo clippy --all-targets --features wgpu,python -- -D warnings"
cargo clippy --quiet --all-targets --features wgpu,python -- -D warnings
echo "== cargo clippy --all-targets --features python -- -D warnings"
cargo clippy --quiet --all-targets --features python -- -D warnings
echo "== ruff check (rules in pyproject.toml)"
"$PY" -m pip install --quiet --disable-pip-version-check "ruff>=0.5"
"$PY" -m ruff check .

# The GPU tests need a Vulkan driver. On a machine without a GPU, Mesa's lavapipe (software
# Vulkan) is one; install it when no Vulkan driver is registered and apt-get can (CI machines
# are fresh Debian/Ubuntu with root).
vulkan_icds() { ls /usr/share/vulkan/icd.d/*.json /etc/vulkan/icd.d/*.json 2>/dev/null || true; }
if [ -z "$(vulkan_icds)" ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        echo "== no Vulkan driver found: installing Mesa's lavapipe (mesa-vulkan-drivers, libvulkan1) for the GPU tests"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null \
            || echo "== could not install lavapipe; the GPU tests will skip"
    else
        echo "== no Vulkan driver found and no root apt-get to install one: the GPU tests will skip"
    fi
fi
# Where a driver is registered the GPU tests must run, not skip.
if [ -n "$(vulkan_icds)" ]; then
    export TFM_RS_REQUIRE_GPU=1
fi

bash scripts/install.sh "pytest>=7" "hypothesis>=6" "matplotlib>=3.5"

# ---- PyTorch, the reference of the parity tests (never a dependency of tfm_rs) ----
# CI installs it (the PyPI build, ~3 GB) and fails those tests if it is missing; elsewhere
# TFM_RS_REQUIRE_TORCH=1 does the same, and without it they skip, saying why (tests/torch_ref.py).
case "$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')" in
    "" | 0 | false) ;;
    *) export TFM_RS_REQUIRE_TORCH=1 ;;
esac
if [ "${TFM_RS_REQUIRE_TORCH:-}" = 1 ] && ! "$PY" -c "import torch" 2>/dev/null; then
    echo "== installing torch into $PY (the PyTorch-parity tests' reference)"
    "$PY" -m pip install --quiet --disable-pip-version-check "torch>=2.1"
fi
# The pretrained-model tests' references (tests/hf_ref.py): transformers, llama.cpp's gguf writer,
# scikit-learn (its digits for the ViT example) and sentencepiece (opus-mt's tokenizers, which
# transformers' MarianTokenizer reads too); required where torch is.
if [ "${TFM_RS_REQUIRE_TORCH:-}" = 1 ] && ! "$PY" -c "import transformers, gguf, sklearn, sentencepiece" 2>/dev/null; then
    echo "== installing transformers, gguf, scikit-learn and sentencepiece into $PY (the pretrained-model tests' references)"
    "$PY" -m pip install --quiet --disable-pip-version-check "transformers>=4.45" "gguf>=0.10" "scikit-learn>=1.0" \
        "sentencepiece>=0.1.91"
fi
# CTranslate2: the baseline of benches/bench_ctranslate2.py (its --smoke converts a tiny model).
if [ "${TFM_RS_REQUIRE_TORCH:-}" = 1 ] && ! "$PY" -c "import ctranslate2" 2>/dev/null; then
    echo "== installing ctranslate2 into $PY (a benchmark baseline)"
    "$PY" -m pip install --quiet --disable-pip-version-check "ctranslate2>=4.0"
fi

# ---- Open MPI and mpi4py, for the data-parallel tests (tests/test_distributed.py, mpirun -n 2) ----
# CI installs both and those tests must run (TFM_RS_REQUIRE_MPI=1); elsewhere they skip, saying
# why, when either is missing.
case "$(printf '%s' "${CI:-}" | tr '[:upper:]' '[:lower:]')" in
    "" | 0 | false) ;;
    *) export TFM_RS_REQUIRE_MPI=1 ;;
esac
if [ "${TFM_RS_REQUIRE_MPI:-}" = 1 ]; then
    if ! command -v mpirun >/dev/null 2>&1; then
        echo "== installing Open MPI (openmpi-bin, libopenmpi-dev) for the data-parallel tests"
        if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
        $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openmpi-bin libopenmpi-dev >/dev/null
    fi
    if ! "$PY" -c "import mpi4py" 2>/dev/null; then
        echo "== installing mpi4py into $PY"
        "$PY" -m pip install --quiet --disable-pip-version-check "mpi4py>=3.1"
    fi
fi

echo "== cargo test (with the GPU backend, feature wgpu)"
cargo test --release --quiet --features wgpu
echo "== pytest"
# Run from tests/ so `import tfm_rs` finds the installed package, not the source folder.
"$PY" -m pytest -q -ra --rootdir=. tests "$@"
echo "== benches/*.py --smoke (every benchmark command runs against the installed package)"
for bench in benches/*.py; do
    echo "-- python $bench --smoke"
    "$PY" "$bench" --smoke
done
