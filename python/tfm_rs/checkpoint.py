"""Training checkpoints: safetensors for arrays, JSON for everything else, never pickle; atomic.

A checkpoint is a directory::

    ckpt/
      checkpoint.json        manifest: format, version, every file's size and SHA-256, key order
      config.json            the model configuration (JSON)
      model.safetensors      model weights (``safetensors.numpy``)
      optimizer.safetensors  optimizer moments (exp_avg, …), if an optimizer state was given
      optimizer.json         the rest of the optimizer state (step counts, param_groups)
      scheduler.json         the LR scheduler's state_dict, if given
      extra.json             anything else (step, RNG state, data position); arrays in it go to
      extra.safetensors      extra.safetensors

Nothing is unpickled on load, so a checkpoint from elsewhere cannot run code.

**Atomicity.** Everything is written (and fsynced) into a temporary sibling directory; then the
old ``ckpt`` is renamed to ``ckpt.prev`` and the new one renamed to ``ckpt``. A crash at any
point leaves a loadable checkpoint: before the renames ``ckpt`` is untouched; between them only
``ckpt.prev`` exists and :func:`load_checkpoint` falls back to it (with a warning). A failed save
(an exception) rolls back. ``ckpt.prev`` is kept as the previous checkpoint (``keep_previous``).

**Integrity.** The manifest's sizes and SHA-256 digests are checked on load, so a truncated or
bit-flipped file raises :class:`CorruptCheckpointError` naming it, before any parsing.

Nested containers in the optimizer state, scheduler state and ``extra`` are encoded in JSON with
small tags so they round-trip exactly: arrays (and tfm_rs Tensors) become ``{"__ndarray__": key}``
pointing into the .safetensors file, tuples ``{"__tuple__": [...]}``, dicts with int keys (the
optimizer's per-parameter ``state``) ``{"__intkeys__": {...}}``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple, Union

import numpy as np

from tfm_rs import _core

__all__ = [
    "Checkpoint",
    "CheckpointError",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "IncompatibleCheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "check_compatible",
    "check_state_dict_compatible",
    "rng_state",
    "rng_from_state",
    "set_rng_state",
]

FORMAT = "tfm_rs.checkpoint"
VERSION = 1
MANIFEST = "checkpoint.json"
PathLike = Union[str, os.PathLike]


class CheckpointError(_core.TfmError):
    """Base class of checkpoint errors."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """No checkpoint (nor a ``.prev`` fallback) at the path."""


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file is missing, truncated, altered, or not parseable; the message names it."""


class IncompatibleCheckpointError(CheckpointError, ValueError):
    """The checkpoint does not fit the model (configuration or weight names/shapes differ)."""


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns. ``path`` is the directory actually read (the
    ``.prev`` one after a fallback)."""

    model_state: "OrderedDict[str, np.ndarray]"
    config: Dict[str, Any]
    optimizer_state: Optional[Dict[str, Any]] = None
    scheduler_state: Optional[Dict[str, Any]] = None
    extra: Dict[str, Any] = field(default_factory=dict)
    path: Optional[Path] = None


# ----------------------------------------------------------------------------------------------
# encoding of nested state into JSON + arrays
# ----------------------------------------------------------------------------------------------

_TAGS = ("__ndarray__", "__tuple__", "__intkeys__")


def _as_array(v: Any) -> Optional[np.ndarray]:
    if isinstance(v, np.ndarray):
        return v
    if isinstance(v, _core.Tensor):
        return v.numpy()
    return None


def _contiguous(arr: np.ndarray) -> np.ndarray:
    # Not np.ascontiguousarray: it turns a 0-d array into shape (1,).
    return arr if arr.flags.c_contiguous else np.array(arr, order="C")


def _encode(obj: Any, arrays: Dict[str, np.ndarray], path: str) -> Any:
    arr = _as_array(obj)
    if arr is not None:
        if arr.dtype == object:
            raise TypeError(f"checkpoint: {path or 'value'} is an object array; only numeric arrays can be saved")
        key = path or "value"
        n = 1
        while key in arrays:  # "a.b" as a key vs nested a→b could collide: keep names unique
            key, n = f"{path}#{n}", n + 1
        arrays[key] = _contiguous(arr)
        return {"__ndarray__": key}
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, arrays, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, arrays, f"{path}.{i}") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        keys = list(obj.keys())
        if all(isinstance(k, str) for k in keys):
            if len(keys) == 1 and keys[0] in _TAGS:
                raise TypeError(f"checkpoint: {path or 'value'} is a dict whose only key is the reserved {keys[0]!r}")
            return {k: _encode(v, arrays, f"{path}.{k}" if path else k) for k, v in obj.items()}
        if all(isinstance(k, (int, np.integer)) and not isinstance(k, bool) for k in keys):
            return {"__intkeys__": {str(int(k)): _encode(v, arrays, f"{path}.{k}" if path else str(k))
                                    for k, v in obj.items()}}
        types = sorted({type(k).__name__ for k in keys})
        raise TypeError(f"checkpoint: {path or 'value'} has keys of mixed or unsupported types {types}")
    raise TypeError(f"checkpoint: {path or 'value'} is a {type(obj).__name__}, which is neither JSON nor an array "
                    "(no pickle: convert it to plain types first)")


def _decode(obj: Any, arrays: Mapping[str, np.ndarray], file: Path) -> Any:
    if isinstance(obj, list):
        return [_decode(v, arrays, file) for v in obj]
    if isinstance(obj, dict):
        if len(obj) == 1:
            (tag, v), = obj.items()
            if tag == "__ndarray__":
                if v not in arrays:
                    raise CorruptCheckpointError(f"{file}: refers to array {v!r}, which its .safetensors file lacks")
                return arrays[v]
            if tag == "__tuple__":
                return tuple(_decode(x, arrays, file) for x in v)
            if tag == "__intkeys__":
                return {int(k): _decode(x, arrays, file) for k, x in v.items()}
        return {k: _decode(v, arrays, file) for k, v in obj.items()}
    return obj


# ----------------------------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------------------------

def _write_bytes(path: Path, data: bytes) -> Dict[str, Any]:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # the rename must not overtake the data on its way to disk
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def _safetensors_bytes(arrays: Mapping[str, np.ndarray], what: str) -> bytes:
    from safetensors.numpy import save

    bad = [k for k, v in arrays.items() if not isinstance(v, np.ndarray)]
    if bad:
        raise TypeError(f"checkpoint: {what} entries {bad[:5]} are not arrays")
    return save({k: _contiguous(v) for k, v in arrays.items()}, metadata={"format": "np"})


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # e.g. Windows: directories cannot be opened; rename durability is the OS's
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _prev_path(target: Path) -> Path:
    return target.with_name(target.name + ".prev")


def save_checkpoint(path_dir: PathLike, model_state: Mapping[str, Any], config: Mapping[str, Any],
                    optimizer_state: Optional[Mapping[str, Any]] = None,
                    scheduler_state: Optional[Mapping[str, Any]] = None,
                    extra: Optional[Mapping[str, Any]] = None, keep_previous: bool = True) -> Path:
    """Write a checkpoint directory at ``path_dir`` atomically (see the module docstring).

    Args:
        model_state: ``name → array`` (``module.state_dict()``; Tensors are accepted too).
        config: the model configuration; must be JSON (ints, floats, strings, lists, dicts).
        optimizer_state: ``optimizer.state_dict()`` (moments go to ``optimizer.safetensors``).
        scheduler_state: ``scheduler.state_dict()``.
        extra: anything else: step, epoch, ``rng_state(gen)``, ``sampler.state_dict()``, metrics.
        keep_previous: keep the checkpoint this one replaces as ``<path_dir>.prev``.
    Returns the checkpoint directory.
    """
    target = Path(path_dir).absolute()
    parent = target.parent
    parent.mkdir(parents=True, exist_ok=True)

    # Encode everything first: a bad value fails before anything on disk is touched.
    weights: "OrderedDict[str, np.ndarray]" = OrderedDict()
    for k, v in model_state.items():
        arr = _as_array(v)
        if not isinstance(k, str) or arr is None:
            raise TypeError(f"save_checkpoint: model_state must map str → array, got {k!r} → {type(v).__name__}")
        weights[k] = arr
    payload: Dict[str, bytes] = {"model.safetensors": _safetensors_bytes(weights, "model_state")}
    try:
        payload["config.json"] = _json_bytes(dict(config))
    except (TypeError, ValueError) as e:
        raise TypeError(f"save_checkpoint: config must be JSON-serializable ({e})") from e
    for name, state in (("optimizer", optimizer_state), ("scheduler", scheduler_state), ("extra", extra)):
        if state is None:
            continue
        arrays: Dict[str, np.ndarray] = {}
        encoded = _encode(state, arrays, "")
        payload[f"{name}.json"] = _json_bytes(encoded)
        if arrays:
            payload[f"{name}.safetensors"] = _safetensors_bytes(arrays, name)

    # Leftovers of saves that crashed before their rename are never a valid checkpoint.
    for stale in parent.glob(f".{target.name}.tmp-*"):
        shutil.rmtree(stale, ignore_errors=True)
    tmp = parent / f".{target.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        files = {name: _write_bytes(tmp / name, data) for name, data in payload.items()}
        manifest = {"format": FORMAT, "version": VERSION, "files": files, "model_keys": list(weights)}
        _write_bytes(tmp / MANIFEST, _json_bytes(manifest))  # last: its presence means complete
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    prev = _prev_path(target)
    moved_old = False
    try:
        if target.exists():
            if prev.exists():
                shutil.rmtree(prev)
            os.replace(target, prev)
            moved_old = True
        os.replace(tmp, target)
    except BaseException:
        # Roll back so that `target` is the previous checkpoint again, then re-raise.
        if moved_old and not target.exists() and prev.exists():
            os.replace(prev, target)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _fsync_dir(parent)
    if not keep_previous and prev.exists():
        shutil.rmtree(prev, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------------------------
# loading
# ----------------------------------------------------------------------------------------------

def _read_verified(dir_: Path, name: str, meta: Optional[Mapping[str, Any]], verify: bool) -> bytes:
    path = dir_ / name
    if not path.is_file():
        raise CorruptCheckpointError(f"{path}: missing (the checkpoint's manifest lists it)")
    data = path.read_bytes()
    if meta is not None:
        if len(data) != meta.get("bytes"):
            raise CorruptCheckpointError(
                f"{path}: {len(data)} bytes, the manifest says {meta.get('bytes')} (truncated?)")
        if verify and hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise CorruptCheckpointError(f"{path}: SHA-256 does not match the manifest (file altered or corrupted)")
    return data


def _parse_json(path: Path, data: bytes) -> Any:
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CorruptCheckpointError(f"{path}: not valid JSON ({e})") from e


def _parse_safetensors(path: Path, data: bytes) -> Dict[str, np.ndarray]:
    from safetensors.numpy import load

    try:
        return load(data)
    except Exception as e:  # SafetensorError (header), or a numpy error from an inconsistent header
        raise CorruptCheckpointError(f"{path}: not a valid safetensors file ({e})") from e


def load_checkpoint(path_dir: PathLike, verify: bool = True) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    If ``path_dir`` is absent but ``<path_dir>.prev`` exists (a crash between the two renames
    of a save), that previous checkpoint is loaded, with a warning. ``verify=False`` skips the
    SHA-256 check (sizes are still checked). Raises :class:`CheckpointNotFoundError` or
    :class:`CorruptCheckpointError` (naming the file)."""
    target = Path(path_dir)
    dir_ = target
    if not target.exists():
        prev = _prev_path(target)
        if (prev / MANIFEST).is_file():
            warnings.warn(f"load_checkpoint: {target} does not exist (a save was interrupted?); loading the "
                          f"previous checkpoint {prev}", RuntimeWarning, stacklevel=2)
            dir_ = prev
        else:
            raise CheckpointNotFoundError(f"no checkpoint at {target}")
    elif not target.is_dir():
        raise CheckpointNotFoundError(f"{target} is not a checkpoint directory")

    manifest_path = dir_ / MANIFEST
    if not manifest_path.is_file():
        raise CorruptCheckpointError(f"{manifest_path}: missing; {dir_} is not a complete tfm_rs checkpoint")
    manifest = _parse_json(manifest_path, manifest_path.read_bytes())
    if (not isinstance(manifest, dict) or manifest.get("format") != FORMAT
            or not isinstance(manifest.get("files"), dict)):
        raise CorruptCheckpointError(f"{manifest_path}: not a {FORMAT} manifest")
    if manifest.get("version", 0) > VERSION:
        raise CheckpointError(f"{manifest_path}: format version {manifest['version']} is newer than this "
                              f"tfm_rs reads ({VERSION}); upgrade tfm_rs")
    files: Dict[str, Any] = manifest["files"]
    for required in ("model.safetensors", "config.json"):
        if required not in files:
            raise CorruptCheckpointError(f"{manifest_path}: lists no {required}")

    def read(name: str) -> bytes:
        return _read_verified(dir_, name, files[name], verify)

    weights = _parse_safetensors(dir_ / "model.safetensors", read("model.safetensors"))
    order = manifest.get("model_keys") or sorted(weights)
    if set(order) != set(weights):
        raise CorruptCheckpointError(f"{dir_ / 'model.safetensors'}: its tensors differ from the manifest's key list")
    model_state = OrderedDict((k, weights[k]) for k in order)
    config = _parse_json(dir_ / "config.json", read("config.json"))

    def part(name: str) -> Any:
        if f"{name}.json" not in files:
            return None
        arrays: Dict[str, np.ndarray] = {}
        if f"{name}.safetensors" in files:
            arrays = _parse_safetensors(dir_ / f"{name}.safetensors", read(f"{name}.safetensors"))
        encoded = _parse_json(dir_ / f"{name}.json", read(f"{name}.json"))
        return _decode(encoded, arrays, dir_ / f"{name}.json")

    extra = part("extra")
    return Checkpoint(model_state=model_state, config=config, optimizer_state=part("optimizer"),
                      scheduler_state=part("scheduler"), extra=extra if extra is not None else {}, path=dir_)


# ----------------------------------------------------------------------------------------------
# compatibility
# ----------------------------------------------------------------------------------------------

def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 60 else s[:57] + "..."


def check_compatible(config_a: Mapping[str, Any], config_b: Mapping[str, Any], ignore: Iterable[str] = (),
                     names: Tuple[str, str] = ("checkpoint", "model")) -> None:
    """Raise :class:`IncompatibleCheckpointError` listing every key whose value differs between the
    two configurations (or that only one has), except those in ``ignore`` (e.g. ``"dropout"``)."""
    ignore = set(ignore)
    a, b = dict(config_a), dict(config_b)
    missing = object()
    lines = []
    for k in sorted(set(a) | set(b), key=str):
        if k in ignore:
            continue
        va, vb = a.get(k, missing), b.get(k, missing)
        # JSON turns tuples into lists; compare through JSON so (1, 2) == [1, 2].
        if (va is not missing and vb is not missing
                and json.dumps(va, sort_keys=True, default=str) == json.dumps(vb, sort_keys=True, default=str)):
            continue
        fa = "(absent)" if va is missing else _short(va)
        fb = "(absent)" if vb is missing else _short(vb)
        lines.append(f"  {k}: {names[0]} {fa} vs {names[1]} {fb}")
    if lines:
        raise IncompatibleCheckpointError(f"configurations differ in {len(lines)} key(s):\n" + "\n".join(lines))


def check_state_dict_compatible(saved: Mapping[str, Any], expected: Mapping[str, Any],
                                names: Tuple[str, str] = ("checkpoint", "model")) -> None:
    """Raise :class:`IncompatibleCheckpointError` listing missing keys, unexpected keys and shape
    mismatches between two state dicts (values: arrays, Tensors, or shapes)."""

    def shape(v: Any) -> Tuple[int, ...]:
        arr = _as_array(v)
        return tuple(arr.shape) if arr is not None else tuple(v)

    only_saved = [k for k in saved if k not in expected]
    only_expected = [k for k in expected if k not in saved]
    shapes = [(k, shape(saved[k]), shape(expected[k])) for k in saved
              if k in expected and shape(saved[k]) != shape(expected[k])]
    lines = []
    if only_expected:
        lines.append(f"  missing in {names[0]}: {only_expected[:20]}{' …' if len(only_expected) > 20 else ''}")
    if only_saved:
        lines.append(f"  not in {names[1]}: {only_saved[:20]}{' …' if len(only_saved) > 20 else ''}")
    for k, sa, sb in shapes[:20]:
        lines.append(f"  {k}: shape {sa} in {names[0]} vs {sb} in {names[1]}")
    if lines:
        raise IncompatibleCheckpointError("state dicts do not match:\n" + "\n".join(lines))


# ----------------------------------------------------------------------------------------------
# RNG state
# ----------------------------------------------------------------------------------------------

def rng_state(generator: np.random.Generator) -> Dict[str, Any]:
    """A NumPy Generator's state as JSON-ready plain types (``bit_generator.state``)."""
    state = generator.bit_generator.state
    # PCG64's state is ints (arbitrary precision, fine in JSON); MT19937's holds an array.
    return json.loads(json.dumps(state, default=lambda v: v.tolist()))


def set_rng_state(generator: np.random.Generator, state: Mapping[str, Any]) -> None:
    """Restore :func:`rng_state` into ``generator`` (its bit generator must be the same kind)."""
    kind = type(generator.bit_generator).__name__
    if state.get("bit_generator") != kind:
        raise CheckpointError(f"set_rng_state: state is for {state.get('bit_generator')}, the generator is {kind}")
    st = dict(state)
    if kind == "MT19937":
        st["state"] = {**st["state"], "key": np.asarray(st["state"]["key"], dtype=np.uint32)}
    generator.bit_generator.state = st


def rng_from_state(state: Mapping[str, Any]) -> np.random.Generator:
    """A new Generator in the state :func:`rng_state` recorded."""
    kind = state.get("bit_generator")
    bitgen_cls = getattr(np.random, str(kind), None)
    if bitgen_cls is None or not isinstance(bitgen_cls, type):
        raise CheckpointError(f"rng_from_state: unknown bit generator {kind!r}")
    gen = np.random.Generator(bitgen_cls())
    set_rng_state(gen, state)
    return gen
