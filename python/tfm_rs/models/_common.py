"""Input checks shared by the models: token ids are validated before any compute, so a bad
batch fails with a message naming the model, the argument and the offending value."""

from __future__ import annotations

from typing import Any, Mapping, Optional

import numpy as np

from tfm_rs._core import IndexOutOfRangeError, InvalidArgumentError, ShapeError, Tensor
from tfm_rs.nn.attention_kind import attention_kinds, config_value


def as_ids(ids: Any, name: str, vocab_size: int, max_len: Optional[int], owner: str) -> np.ndarray:
    """``ids`` as an int64 array ``(B, T)`` (a 1-D sequence becomes one row), checked: non-empty,
    integer, every id in ``[0, vocab_size)``, ``T <= max_len``."""
    if isinstance(ids, Tensor):
        ids = ids.numpy()
    try:
        arr = np.asarray(ids)
    except ValueError:  # ragged nested lists
        arr = np.empty(0, dtype=object)
    if arr.dtype == object:
        raise InvalidArgumentError(f"{owner}: {name} must be a rectangular integer array (pad the sequences), "
                                   "got ragged or non-numeric input")
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ShapeError(f"{owner}: {name} must be 2-D (batch, seq), got shape {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise ShapeError(f"{owner}: {name} is an empty batch (shape {tuple(arr.shape)})")
    if arr.shape[1] == 0:
        raise ShapeError(f"{owner}: {name} has empty sequences (shape {tuple(arr.shape)}); every sequence needs "
                         "at least one token")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise InvalidArgumentError(f"{owner}: {name} must hold integer token ids, got non-integer floats")
    elif arr.dtype.kind not in "iub":
        raise InvalidArgumentError(f"{owner}: {name} must hold integer token ids, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if max_len is not None and arr.shape[1] > max_len:
        raise ShapeError(f"{owner}: {name} has length {arr.shape[1]}, longer than max_len={max_len}; truncate the "
                         f"input or build the model with max_len >= {arr.shape[1]}")
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0 or hi >= vocab_size:
        bad = lo if lo < 0 else hi
        pos = tuple(int(i) for i in np.argwhere(arr == bad)[0])
        raise IndexOutOfRangeError(f"{owner}: {name} holds token id {bad} at position {pos}, outside the "
                                   f"vocabulary [0, {vocab_size})")
    return arr


def right_padded(mask: np.ndarray) -> bool:
    """Whether every row of a padding mask (True = pad) is pads only after its last token."""
    if mask.shape[1] < 2:
        return True
    return not bool(np.any(mask[:, :-1] & ~mask[:, 1:]))


def check_config_arch(config: Mapping[str, Any], arch: str) -> dict:
    cfg = dict(config)
    got = cfg.pop("arch", arch)
    if got != arch:
        raise InvalidArgumentError(f"from_config: this configuration is for {got!r}, not {arch!r}")
    return cfg


def set_attention(layers: Any, attention: Any, owner: str, config: dict, shared: bool) -> None:
    """Gives each layer's self-attention its kind (one for all layers, or one per layer; see
    :mod:`tfm_rs.nn.attention_kind`) and records it in ``config`` unless every layer is dense, so
    that configurations written before attention kinds existed still match. ``shared``: the
    layers will be one layer (ALBERT's sharing), so they take one kind."""
    kinds = attention_kinds(attention, len(layers), owner)
    if shared and len({str(k) for k in kinds}) > 1:
        raise InvalidArgumentError(f"{owner}: shared layers (share_layers=True) have one attention kind, got "
                                   f"{[str(k) for k in kinds]}")
    for layer, kind in zip(layers, kinds):
        layer.self_attn.attention = kind
    if any(k.name != "dense" for k in kinds):
        config["attention"] = config_value(kinds)
