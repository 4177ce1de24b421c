"""PyTorch as a test reference (never a dependency of tfm_rs).

``require_torch()`` imports it for the parity tests. Where torch is not installed the caller is
skipped with the reason, except where a run must not skip them: under CI (``CI`` set, as CI
services do) or ``TFM_RS_REQUIRE_TORCH=1`` a missing torch fails instead; ``scripts/test.sh``
installs it there. Called at module level it skips or fails the whole module.

The parity tests compare tfm_rs (float32) with torch computing in float64: torch's own float32
results can be further from the exact value than tfm_rs is, so only a float64 reference shows
tfm_rs's error.
"""

from __future__ import annotations

import os

import pytest


def torch_required() -> bool:
    """True where a missing torch must fail the parity tests rather than skip them."""
    ci = os.environ.get("CI", "").strip().lower()
    return os.environ.get("TFM_RS_REQUIRE_TORCH") == "1" or ci not in ("", "0", "false")


def require_torch():
    """Returns the ``torch`` module; skips the caller without it, or fails it where torch is required."""
    try:
        import torch
    except ImportError as e:
        reason = f"torch is not installed ({e}); it is the reference of the PyTorch-parity tests"
        if torch_required():
            pytest.fail(f"CI or TFM_RS_REQUIRE_TORCH=1 requires torch, but {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
    return torch
