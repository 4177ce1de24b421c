"""The errors of the pretrained-model loaders, all :class:`tfm_rs.TfmError`: each names the
file, the tensor or the configuration key at fault."""

from __future__ import annotations

from tfm_rs._core import TfmError

__all__ = ["PretrainedFormatError", "UnsupportedConfigError", "WeightsMismatchError"]


class PretrainedFormatError(TfmError, ValueError):
    """A file is missing, truncated, or not what its format says (a hostile or corrupt header,
    a pickle where safetensors was expected, unreadable JSON)."""


class UnsupportedConfigError(TfmError, ValueError):
    """The configuration asks for something this loader does not implement (an activation, a
    rotary scaling type, a quantization type); raised before any tensor is read."""


class WeightsMismatchError(TfmError, ValueError):
    """The checkpoint's tensors do not match the model: missing, unexpected, or of the wrong
    shape, every one listed."""
