"""Hugging Face checkpoint directories: ``config.json``, ``model.safetensors`` (or shards listed
in ``model.safetensors.index.json``) and ``tokenizer.json``, read and written without pickle.

A model family describes its checkpoint as a list of :class:`Rule` s: each tfm_rs state-dict
entry and the Hugging Face tensor(s) it comes from (as is, transposed — GPT-2's ``Conv1D``
stores ``[in, out]`` — or several concatenated along rows, like BERT's separate q, k, v into one
``in_proj_weight``, or a vector stored as one row, like Marian's ``final_logits_bias``).
:func:`load_weights` checks the whole checkpoint against the rules — every
missing tensor, unexpected tensor and shape mismatch named, together — before it reads any data;
:func:`hf_tensors` applies the rules backwards, refusing a model they do not describe exactly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from tfm_rs.pretrained.errors import PretrainedFormatError, UnsupportedConfigError, WeightsMismatchError
from tfm_rs.pretrained.safetensors_io import SafetensorsFile, write_safetensors

__all__ = ["HF_ACTIVATIONS", "TFM_ACTIVATIONS", "Rule", "TensorIndex", "check_standard", "checkpoint_dir",
           "read_config", "config_value", "dropout_value", "expect_shapes", "hf_tensors", "linear_rules",
           "load_tokenizer", "load_weights", "write_checkpoint", "MAX_CONFIG_BYTES"]

PathLike = Union[str, os.PathLike]
MAX_CONFIG_BYTES = 16 * 1024 * 1024
_PICKLES = ("pytorch_model.bin", "pytorch_model.bin.index.json", "model.pt", "model.pth", "tf_model.h5",
            "flax_model.msgpack")
# Hugging Face's activation names (``hidden_act``, ``activation_function``) → tfm_rs's, and back.
HF_ACTIVATIONS = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
                  "swish": "silu", "silu": "silu"}
TFM_ACTIVATIONS = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu"}


@dataclass(frozen=True)
class Rule:
    """tfm_rs's ``target`` tensor from Hugging Face's ``sources``: ``kind`` is ``"copy"``,
    ``"transpose"`` (a 2-D matrix stored the other way round), ``"concat"`` (the sources
    stacked along the first axis, in equal parts) or ``"row"`` (the source is the target as one
    row, ``(1, n)``)."""

    target: str
    sources: Tuple[str, ...]
    kind: str = "copy"

    def source_shapes(self, target_shape: Tuple[int, ...]) -> List[Tuple[int, ...]]:
        if self.kind == "transpose":
            return [tuple(reversed(target_shape))]
        if self.kind == "concat":
            n = len(self.sources)
            return [(target_shape[0] // n, *target_shape[1:])] * n
        if self.kind == "row":
            return [(1, *target_shape)]
        return [tuple(target_shape)]

    def combine(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        if self.kind == "transpose":
            return np.ascontiguousarray(arrays[0].T)
        if self.kind == "concat":
            return np.concatenate(arrays, axis=0)
        if self.kind == "row":
            return arrays[0][0]
        return arrays[0]

    def split(self, array: np.ndarray) -> List[np.ndarray]:
        if self.kind == "transpose":
            return [np.ascontiguousarray(array.T)]
        if self.kind == "concat":
            return list(np.split(array, len(self.sources), axis=0))
        if self.kind == "row":
            return [array[None]]
        return [array]


def linear_rules(hf: str, ours: str, kind: str = "copy") -> List[Rule]:
    """The weight (``kind``) and bias of a ``Linear`` or ``LayerNorm`` named ``hf`` there, ``ours`` here."""
    return [Rule(f"{ours}.weight", (f"{hf}.weight",), kind), Rule(f"{ours}.bias", (f"{hf}.bias",))]


def checkpoint_dir(path: PathLike) -> Path:
    """``path`` as an existing directory (a ``config.json`` given directly means its directory)."""
    p = Path(path)
    if p.is_file() and p.name == "config.json":
        p = p.parent
    if not p.is_dir():
        raise PretrainedFormatError(f"{p}: not a directory (a Hugging Face checkpoint is a directory with "
                                    "config.json and model.safetensors)")
    return p


def read_json(path: Path, what: str) -> Dict[str, Any]:
    if not path.is_file():
        raise PretrainedFormatError(f"{path}: no {what}")
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise PretrainedFormatError(f"{path}: {path.stat().st_size} bytes, too large for a {what}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise PretrainedFormatError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(value, dict):
        raise PretrainedFormatError(f"{path}: the {what} is not a JSON object")
    return value


def read_config(path: PathLike) -> Dict[str, Any]:
    """The ``config.json`` of a checkpoint directory."""
    return read_json(checkpoint_dir(path) / "config.json", "config.json")


def config_value(config: Mapping[str, Any], key: str, kind: type, default: Any = None, *,
                 choices: Optional[Iterable[Any]] = None, owner: str = "config") -> Any:
    """``config[key]`` checked to be a ``kind`` (an int is accepted for a float), positive for
    numbers, and one of ``choices`` if given; ``default`` when absent (``None`` = required)."""
    if key not in config or config[key] is None:
        if default is None:
            raise UnsupportedConfigError(f"{owner}: config.json lacks {key!r}")
        return default
    value = config[key]
    ok = isinstance(value, kind) and not isinstance(value, bool) if kind is not bool else isinstance(value, bool)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value, ok = float(value), True
    if not ok:
        raise UnsupportedConfigError(f"{owner}: config {key}={value!r} should be of type {kind.__name__}")
    if kind in (int, float) and value <= 0 and choices is None:
        raise UnsupportedConfigError(f"{owner}: config {key}={value!r} should be positive")
    if choices is not None and value not in choices:
        allowed = repr(choices) if isinstance(choices, range) else ", ".join(repr(c) for c in choices)
        raise UnsupportedConfigError(f"{owner}: config {key}={value!r} is not supported (supported: {allowed})")
    return value


def dropout_value(config: Mapping[str, Any], key: str, owner: str) -> float:
    """A dropout probability ``config[key]`` in [0, 1): 0.1 (Hugging Face's usual default) when
    absent, 0 when null; it only matters for training."""
    value = config.get(key, 0.1)
    if value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise UnsupportedConfigError(f"{owner}: config {key}={value!r} is not a probability in [0, 1)")
    return float(value)


class TensorIndex:
    """The tensors of a checkpoint directory by name, over one or several safetensors files,
    every header validated on opening; data is read only by :meth:`get`."""

    def __init__(self, directory: PathLike) -> None:
        d = checkpoint_dir(directory)
        index, single = d / "model.safetensors.index.json", d / "model.safetensors"
        self._files: Dict[str, SafetensorsFile] = {}
        self._where: Dict[str, SafetensorsFile] = {}
        if single.is_file():
            f = SafetensorsFile(single)
            self._files[single.name] = f
            self._where = {name: f for name in f.names()}
        elif index.is_file():
            weight_map = read_json(index, "safetensors index").get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise PretrainedFormatError(f"{index}: no weight_map object")
            for name, shard in weight_map.items():
                if not isinstance(shard, str) or Path(shard).name != shard or not shard.endswith(".safetensors"):
                    raise PretrainedFormatError(f"{index}: tensor {name!r} maps to {shard!r}, not a .safetensors "
                                                "file in the checkpoint directory")
                if shard not in self._files:
                    if not (d / shard).is_file():
                        raise PretrainedFormatError(f"{index}: shard {shard} is missing")
                    self._files[shard] = SafetensorsFile(d / shard)
                if name not in self._files[shard].names():
                    raise PretrainedFormatError(f"{index}: tensor {name!r} is not in {shard}")
                self._where[name] = self._files[shard]
        else:
            pickled = [p for p in _PICKLES if (d / p).exists()]
            if pickled:
                raise PretrainedFormatError(
                    f"{d}: only {', '.join(pickled)} found; tfm_rs never unpickles (a pickle can run code). Convert "
                    "it to safetensors first, e.g. with transformers: AutoModel.from_pretrained(path)"
                    ".save_pretrained(path, safe_serialization=True)")
            raise PretrainedFormatError(f"{d}: no model.safetensors nor model.safetensors.index.json")

    def names(self) -> List[str]:
        return list(self._where)

    def shape(self, name: str) -> Tuple[int, ...]:
        return self._where[name].shape(name)

    def get(self, name: str) -> np.ndarray:
        return self._where[name].get(name)


def expect_shapes(index: TensorIndex, shapes: Mapping[str, Tuple[int, ...]], owner: str) -> None:
    """Checks a few tensors that the configuration's sizes determine (embeddings, the first and
    last layers) against the checkpoint *before* a model is built, so that a configuration that
    disagrees with its weights — or claims absurd sizes — is refused without allocating them."""
    present = set(index.names())
    problems = [f"{name}: {'absent' if name not in present else tuple(index.shape(name))} in the checkpoint, "
                f"{tuple(shape)} from config.json" for name, shape in shapes.items()
                if name not in present or tuple(index.shape(name)) != tuple(shape)]
    if problems:
        raise WeightsMismatchError(f"{owner}: config.json does not describe these weights: " + "; ".join(problems))


def load_weights(index: TensorIndex, rules: Sequence[Rule], target_shapes: Mapping[str, Tuple[int, ...]],
                 owner: str, ignore: Callable[[str], bool] = lambda name: False,
                 optional: Callable[[str], bool] = lambda name: False) -> Dict[str, np.ndarray]:
    """The tfm_rs state dict built from ``index`` by ``rules``. Checks first, and reports
    together: sources missing (unless ``optional(target)``), tensors no rule reads (unless
    ``ignore(name)``), shapes that differ from ``target_shapes``. Targets whose sources are all
    absent and optional are left out of the result."""
    present = set(index.names())
    missing, mismatched, used = [], [], set()
    active = []
    for rule in rules:
        have = [s in present for s in rule.sources]
        if not any(have) and optional(rule.target):
            continue
        active.append(rule)
        for src, want in zip(rule.sources, rule.source_shapes(tuple(target_shapes[rule.target]))):
            used.add(src)
            if src not in present:
                missing.append(src)
            elif tuple(index.shape(src)) != tuple(want):
                mismatched.append(f"{src}: shape {tuple(index.shape(src))} in the checkpoint, {tuple(want)} expected")
    unexpected = sorted(n for n in present - used if not ignore(n))
    if missing or unexpected or mismatched:
        lines = [f"{owner}: the checkpoint does not match the configuration:"]
        if missing:
            lines.append("  missing: " + ", ".join(missing))
        if unexpected:
            lines.append("  unexpected: " + ", ".join(unexpected))
        if mismatched:
            lines.append("  shape mismatch: " + "; ".join(mismatched))
        raise WeightsMismatchError("\n".join(lines))
    return {rule.target: rule.combine([index.get(s) for s in rule.sources]).astype(np.float32, copy=False)
            for rule in active}


def check_standard(config: Mapping[str, Any], owner: str, hf_class: str) -> None:
    """Refuses to save a model built with an option ``hf_class`` has no equivalent of — another
    norm (RMSNorm, batch norm), a factorized or hashed embedding, low-rank or pruned layers, an
    attention kind other than dense, a convolutional encoder — since ``transformers`` would read
    such a file as a different model (or fail on its shapes)."""
    problems = []
    if config.get("norm", "layer") != "layer":
        problems.append(f"norm={config['norm']!r} (it has LayerNorm)")
    problems += [f"{key}={config[key]!r}" for key in ("embedding_dim", "hash_buckets", "ffn_rank", "pruned_heads",
                                                       "ffn_dims", "attention", "encoder") if config.get(key)]
    if problems:
        raise UnsupportedConfigError(
            f"{owner}: transformers' {hf_class} has no equivalent of {', '.join(problems)}, so a checkpoint in its "
            "layout would be misread; save this model with tfm_rs.checkpoint.save_checkpoint instead")


def hf_tensors(state: Mapping[str, Any], rules: Sequence[Rule], owner: str,
               skip: Iterable[str] = ()) -> Dict[str, np.ndarray]:
    """The Hugging Face tensors of ``state`` (a tfm_rs state dict) by ``rules``, float32. The
    rules must describe ``state`` exactly — every rule's target present, every entry but those in
    ``skip`` (tied copies) read by a rule — else an :class:`UnsupportedConfigError` names the
    differences, so that nothing is silently dropped from a saved checkpoint."""
    targets = {rule.target for rule in rules}
    absent = [rule.target for rule in rules if rule.target not in state]
    skip = set(skip)
    unmapped = sorted(k for k in state if k not in targets and k not in skip)
    if absent or unmapped:
        raise UnsupportedConfigError(
            f"{owner}: the model's weights do not fit the Hugging Face layout"
            + (f"; absent: {', '.join(absent)}" if absent else "")
            + (f"; with no Hugging Face name: {', '.join(unmapped)}" if unmapped else ""))
    out: Dict[str, np.ndarray] = {}
    for rule in rules:
        value = state[rule.target]
        array = np.asarray(value.numpy() if hasattr(value, "numpy") else value, dtype=np.float32)
        for src, part in zip(rule.sources, rule.split(array)):
            out[src] = np.ascontiguousarray(part)
    return out


def write_checkpoint(directory: PathLike, config: Mapping[str, Any], tensors: Mapping[str, np.ndarray],
                     tokenizer: Any = None, tokenizer_config: Optional[Mapping[str, Any]] = None) -> Path:
    """Writes ``config.json``, ``model.safetensors`` and, given a tokenizer, ``tokenizer.json``
    (with ``tokenizer_config.json`` when given: what ``AutoTokenizer`` needs where the model
    type's own tokenizer class would look for other files)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(dict(config), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    write_safetensors(d / "model.safetensors", tensors, metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save(str(d / "tokenizer.json"))
        if tokenizer_config is not None:
            (d / "tokenizer_config.json").write_text(json.dumps(dict(tokenizer_config), indent=2, sort_keys=True)
                                                     + "\n", encoding="utf-8")
    return d


def load_tokenizer(path: PathLike, max_length: Optional[int] = None) -> Any:
    """The ``tokenizer.json`` of a checkpoint directory (a ``tokenizers.Tokenizer``), or ``None``
    if there is none. Padding baked into the file is turned off (callers pad each batch to its
    longest row), and truncation is capped at ``max_length`` (the model's positions), so no
    input is silently padded or cut to a length the file happens to name."""
    p = checkpoint_dir(path) / "tokenizer.json"
    if not p.is_file():
        return None
    from tokenizers import Tokenizer

    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # the tokenizers library raises its own exception types
        raise PretrainedFormatError(f"{p}: not a tokenizer the tokenizers library can read ({e})") from None
    baked = tok.truncation
    tok.no_padding()
    if max_length is not None:
        limit = min(int(baked["max_length"]), max_length) if baked else max_length
        tok.enable_truncation(max_length=limit)
    return tok
