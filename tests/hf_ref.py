"""Hugging Face ``transformers`` (with torch) and ``gguf`` as test references for the
pretrained-model loaders, never dependencies of tfm_rs. Like :mod:`torch_ref`: skipped with the
reason where absent, a failure where they are required (CI, ``TFM_RS_REQUIRE_TORCH=1``;
``scripts/test.sh`` installs them there)."""

from __future__ import annotations

import importlib

import pytest

from torch_ref import torch_required


def require(module: str, purpose: str):
    """Imports ``module`` or skips (fails where references are required) saying why."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        reason = f"{module} is not installed ({e}); it is the reference of {purpose}"
        if torch_required():
            pytest.fail(f"CI or TFM_RS_REQUIRE_TORCH=1 requires {module}, but {reason}", pytrace=False)
        pytest.skip(reason, allow_module_level=True)
