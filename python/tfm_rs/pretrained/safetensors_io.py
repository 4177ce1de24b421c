"""A checked reader and a writer for the safetensors format, in NumPy.

Layout: an 8-byte little-endian header length ``N``, ``N`` bytes of JSON mapping each tensor
name to ``{"dtype", "shape", "data_offsets": [begin, end]}`` (offsets relative to the end of the
header; an optional ``"__metadata__"`` of strings), then the data. The whole header is validated
against the file's size before any tensor is read — lengths, dtypes, shapes, that each tensor's
byte count equals its shape times its item size, that no two tensors overlap — so a header that
claims terabytes, or offsets past the end of a truncated file, is refused without allocating.
Tensors are read through a memory map and converted (floats to float32) one by one.
"""

from __future__ import annotations

import json
import os
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np

from tfm_rs.pretrained.errors import PretrainedFormatError

__all__ = ["MAX_HEADER_BYTES", "SafetensorsFile", "read_safetensors", "write_safetensors"]

PathLike = Union[str, os.PathLike]

# The reference implementation's limit: a real header is a few hundred bytes per tensor.
MAX_HEADER_BYTES = 100 * 1024 * 1024

_DTYPES: Dict[str, Tuple[str, int]] = {
    "F64": ("<f8", 8), "F32": ("<f4", 4), "F16": ("<f2", 2), "BF16": ("<u2", 2),
    "I64": ("<i8", 8), "I32": ("<i4", 4), "I16": ("<i2", 2), "I8": ("i1", 1), "U8": ("u1", 1), "BOOL": ("?", 1),
}
# What the writer stores each NumPy dtype as (bfloat16 has no NumPy dtype: write float32).
_WRITE_CODES = {"float64": "F64", "float32": "F32", "float16": "F16", "int64": "I64", "int32": "I32",
                "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}


class SafetensorsFile:
    """One ``.safetensors`` file with its header validated: ``names()``, ``shape(name)``,
    ``dtype(name)``, ``metadata`` and ``get(name)`` (a NumPy array; floating types as float32)."""

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise PretrainedFormatError(f"{self.path}: {size} bytes, too short for a safetensors file "
                                                "(truncated?)")
                n = int.from_bytes(head, "little")
                if n > MAX_HEADER_BYTES:
                    raise PretrainedFormatError(f"{self.path}: the header claims {n} bytes (limit {MAX_HEADER_BYTES});"
                                                " not a safetensors file, or corrupt")
                if 8 + n > size:
                    raise PretrainedFormatError(f"{self.path}: the header claims {n} bytes but the file has "
                                                f"{size - 8} after the length (truncated?)")
                raw = f.read(n)
        except OSError as e:
            raise PretrainedFormatError(f"{self.path}: cannot read: {e}") from None
        self._data_start, self._data_size = 8 + n, size - 8 - n
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise PretrainedFormatError(f"{self.path}: the header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise PretrainedFormatError(f"{self.path}: the header is not a JSON object")
        meta = header.pop("__metadata__", None) or {}
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise PretrainedFormatError(f"{self.path}: __metadata__ must map strings to strings")
        self.metadata: Dict[str, str] = meta
        self._entries: Dict[str, Tuple[str, Tuple[int, ...], int, int]] = {}
        spans = []
        for name, info in header.items():
            entry = self._check_entry(name, info)
            self._entries[name] = entry
            if entry[3] > entry[2]:
                spans.append((entry[2], entry[3], name))
        spans.sort()
        for (_, end0, a), (begin1, _, b) in zip(spans, spans[1:]):
            if begin1 < end0:
                raise PretrainedFormatError(f"{self.path}: tensors {a!r} and {b!r} overlap")

    def _check_entry(self, name: str, info: object) -> Tuple[str, Tuple[int, ...], int, int]:
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(info, dict):
            raise PretrainedFormatError(f"{where}: its header entry is not an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPES:
            raise PretrainedFormatError(f"{where}: unsupported dtype {dtype!r} (supported: {sorted(_DTYPES)})")
        if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
            raise PretrainedFormatError(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(type(o) is int for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise PretrainedFormatError(f"{where}: data_offsets {offsets!r} are not [begin, end] with begin ≤ end")
        begin, end = offsets
        if end > self._data_size:
            raise PretrainedFormatError(f"{where}: its data ends at byte {end} but the file holds {self._data_size}"
                                        " bytes of data (truncated?)")
        count = 1
        for s in shape:  # Python ints: a hostile shape cannot overflow
            count *= s
        if count * _DTYPES[dtype][1] != end - begin:
            raise PretrainedFormatError(f"{where}: shape {shape} of {dtype} needs {count * _DTYPES[dtype][1]} bytes,"
                                        f" its offsets span {end - begin}")
        return dtype, tuple(shape), begin, end

    def names(self):
        return list(self._entries)

    def shape(self, name: str) -> Tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> str:
        return self._entries[name][0]

    def get(self, name: str) -> np.ndarray:
        """The tensor ``name``: floating types (F16, BF16, F32, F64) as float32, integers as they are."""
        if name not in self._entries:
            raise PretrainedFormatError(f"{self.path}: no tensor {name!r}")
        dtype, shape, begin, end = self._entries[name]
        np_dtype, item = _DTYPES[dtype]
        count = (end - begin) // item
        if count == 0:
            return np.zeros(shape, np.float32 if dtype in ("F64", "F32", "F16", "BF16") else np_dtype)
        raw = np.memmap(self.path, dtype=np_dtype, mode="r", offset=self._data_start + begin, shape=(count,))
        if dtype == "BF16":
            out = (raw.astype(np.uint32) << 16).view(np.float32)
        elif dtype in ("F64", "F32", "F16"):
            out = raw.astype(np.float32)
        else:
            out = np.array(raw)
        del raw
        return out.reshape(shape)


def read_safetensors(path: PathLike) -> Dict[str, np.ndarray]:
    """Every tensor of a safetensors file (floating types as float32)."""
    f = SafetensorsFile(path)
    return {name: f.get(name) for name in f.names()}


def write_safetensors(path: PathLike, tensors: Mapping[str, np.ndarray],
                      metadata: Optional[Mapping[str, str]] = None) -> None:
    """Writes ``tensors`` (float32, float16, int64, … arrays) to ``path`` (names sorted, header
    padded to 8 bytes as the reference writer does), via a temporary file renamed into place."""
    header: Dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    arrays = []
    offset = 0
    for name in sorted(tensors):
        arr = np.ascontiguousarray(np.asarray(tensors[name]))
        code = _WRITE_CODES.get(arr.dtype.newbyteorder("=").name if arr.dtype.kind != "b" else "bool")
        if code is None:
            raise PretrainedFormatError(f"write_safetensors: tensor {name!r} has dtype {arr.dtype}, which "
                                        "safetensors cannot store here")
        arr = arr.astype(arr.dtype.newbyteorder("<"), copy=False)
        header[name] = {"dtype": code, "shape": list(arr.shape), "data_offsets": [offset, offset + arr.nbytes]}
        arrays.append(arr)
        offset += arr.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    tmp = f"{os.fspath(path)}.tmp"
    with open(tmp, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for arr in arrays:
            f.write(arr.tobytes())
    os.replace(tmp, path)
