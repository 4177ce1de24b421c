"""GGUF (version 2 and 3), the llama.cpp file format: a reader, block dequantizers, and the
Llama loader.

Layout (little-endian): ``"GGUF"``, ``u32`` version, ``u64`` tensor count, ``u64`` metadata count;
the metadata as ``(string key, u32 type, value)`` (scalars, strings ``u64 length + UTF-8``,
arrays ``u32 type + u64 count + items``); per tensor ``(string name, u32 n_dims, u64 dims[n_dims]
— innermost first —, u32 ggml type, u64 offset)``; padding to ``general.alignment`` (32); then
the data, each tensor at its offset. Every length, count and offset is checked against the bytes
that remain before it is used, so a truncated or hostile file raises
:class:`~tfm_rs.pretrained.PretrainedFormatError` without allocating what it claims.

Tensor types read (dequantized to float32 on load; blocks of 32 values): F32, F16, BF16,
Q8_0 (``f16 d, i8 q[32]``: ``d·q``), Q4_0 (``f16 d, 16 bytes``: ``d·(nibble − 8)``, low nibbles
are values 0–15 of the block, high nibbles 16–31), Q4_1 (``f16 d, f16 m, 16 bytes``:
``d·nibble + m``).
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass
from typing import Any, Dict, Tuple, Union

import numpy as np

from tfm_rs.pretrained.errors import PretrainedFormatError, UnsupportedConfigError, WeightsMismatchError
from tfm_rs.pretrained.llama import llama_shapes

__all__ = ["GGUFFile", "GGUFTensor", "dequantize", "load_llama_gguf", "TENSOR_TYPES"]

PathLike = Union[str, os.PathLike]
MAX_DIMS = 4

# ggml type id → (name, values per block, bytes per block)
TENSOR_TYPES: Dict[int, Tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 30: ("BF16", 1, 2), 8: ("Q8_0", 32, 34), 2: ("Q4_0", 32, 18),
    3: ("Q4_1", 32, 20),
}
_KNOWN_TYPES = {6: "Q5_0", 7: "Q5_1", 9: "Q8_1", 10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K",
                15: "Q8_K", 16: "IQ2_XXS", 17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S",
                22: "IQ2_S", 23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M"}
# metadata value type → struct format (8 = string, 9 = array are handled apart)
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    shape: Tuple[int, ...]   # NumPy order (outermost first)
    type_id: int
    offset: int              # absolute, in the file
    nbytes: int

    @property
    def type_name(self) -> str:
        return TENSOR_TYPES[self.type_id][0]


class _Cursor:
    def __init__(self, buf: Any, path: str) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.buf):
            raise PretrainedFormatError(f"{self.path}: {what} needs {n} bytes at offset {self.pos}, the file has "
                                        f"{len(self.buf)} (truncated or corrupt)")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        n = self.unpack("<Q", what)
        try:
            return bytes(self.take(n, what)).decode("utf-8")
        except UnicodeDecodeError:
            raise PretrainedFormatError(f"{self.path}: {what} is not UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0) -> Any:
        if vtype == 6:  # float32 → the shortest decimal that rounds to it (1e-05, not 9.99999974e-06)
            return float(str(np.float32(self.unpack("<f", what))))
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype], what)
        if vtype == 8:
            return self.string(what)
        if vtype == 9 and depth == 0:
            itype, count = self.unpack("<I", what), self.unpack("<Q", what)
            if itype in _SCALARS:  # a numeric array: one read, bounded by the bytes left
                size = struct.calcsize(_SCALARS[itype])
                raw = self.take(count * size, what)
                return np.frombuffer(raw, dtype=np.dtype(_SCALARS[itype])).tolist()
            if itype != 8:
                raise PretrainedFormatError(f"{self.path}: {what}: arrays of type {itype} are not supported")
            if count * 8 > len(self.buf) - self.pos:  # every string needs at least its length
                raise PretrainedFormatError(f"{self.path}: {what} claims {count} strings, more than the file holds")
            return [self.string(what) for _ in range(count)]
        raise PretrainedFormatError(f"{self.path}: {what} has an unknown value type {vtype}")


class GGUFFile:
    """A GGUF file with its header parsed and checked: ``metadata`` (a dict), ``tensors`` (name →
    :class:`GGUFTensor`), ``get(name)`` → float32 array, dequantized."""

    def __init__(self, path: PathLike) -> None:
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 24:
                    raise PretrainedFormatError(f"{self.path}: {size} bytes, too short for a GGUF file")
                self._buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except OSError as e:
            raise PretrainedFormatError(f"{self.path}: cannot read: {e}") from None
        c = _Cursor(self._buf, self.path)
        if bytes(c.take(4, "the magic")) != b"GGUF":
            raise PretrainedFormatError(f"{self.path}: not a GGUF file (no GGUF magic)")
        self.version = c.unpack("<I", "the version")
        if self.version not in (2, 3):
            raise PretrainedFormatError(f"{self.path}: GGUF version {self.version} is not supported (2, 3)")
        n_tensors, n_kv = c.unpack("<Q", "the tensor count"), c.unpack("<Q", "the metadata count")
        # each metadata entry takes ≥ 13 bytes, each tensor entry ≥ 24: bound the counts by the size
        if n_kv * 13 + n_tensors * 24 > size:
            raise PretrainedFormatError(f"{self.path}: claims {n_kv} metadata entries and {n_tensors} tensors, more "
                                        f"than {size} bytes can hold")
        self.metadata: Dict[str, Any] = {}
        for i in range(n_kv):
            key = c.string(f"metadata key {i}")
            self.metadata[key] = c.value(c.unpack("<I", f"metadata {key!r}"), f"metadata {key!r}")
        infos = []
        for i in range(n_tensors):
            name = c.string(f"tensor name {i}")
            ndim = c.unpack("<I", f"tensor {name!r}")
            if not 1 <= ndim <= MAX_DIMS:
                raise PretrainedFormatError(f"{self.path}: tensor {name!r} has {ndim} dimensions (1 to {MAX_DIMS})")
            dims = [c.unpack("<Q", f"tensor {name!r}") for _ in range(ndim)]
            infos.append((name, dims, c.unpack("<I", f"tensor {name!r}"), c.unpack("<Q", f"tensor {name!r}")))
        align = self.metadata.get("general.alignment", 32)
        if not isinstance(align, int) or align <= 0 or align & (align - 1):
            raise PretrainedFormatError(f"{self.path}: general.alignment={align!r} is not a power of two")
        data_start = -(-c.pos // align) * align
        self.tensors: Dict[str, GGUFTensor] = {}
        for name, dims, type_id, offset in infos:
            if type_id not in TENSOR_TYPES:
                kind = _KNOWN_TYPES.get(type_id, f"unknown type {type_id}")
                raise UnsupportedConfigError(
                    f"{self.path}: tensor {name!r} is {kind}; supported: "
                    f"{', '.join(t[0] for t in TENSOR_TYPES.values())}")
            tname, block, block_bytes = TENSOR_TYPES[type_id]
            count = 1
            for d in dims:
                count *= d
            if dims[0] % block:
                raise PretrainedFormatError(f"{self.path}: tensor {name!r} ({tname}) has rows of {dims[0]} values, not "
                                            f"a multiple of the block size {block}")
            nbytes = count // block * block_bytes
            start = data_start + offset
            if offset % align or start + nbytes > size:
                raise PretrainedFormatError(
                    f"{self.path}: tensor {name!r} ({nbytes} bytes at data offset {offset}) lies past the end of the "
                    f"file ({size} bytes) or off the {align}-byte alignment (truncated or corrupt)")
            if name in self.tensors:
                raise PretrainedFormatError(f"{self.path}: tensor {name!r} appears twice")
            self.tensors[name] = GGUFTensor(name, tuple(reversed(dims)), type_id, start, nbytes)

    def get(self, name: str) -> np.ndarray:
        """The tensor ``name`` as float32, dequantized, in NumPy order (rows = outer dimensions)."""
        t = self.tensors.get(name)
        if t is None:
            raise PretrainedFormatError(f"{self.path}: no tensor {name!r}")
        raw = np.frombuffer(self._buf, dtype=np.uint8, count=t.nbytes, offset=t.offset)
        return dequantize(raw, t.type_id, t.shape)


def _f16(raw: np.ndarray) -> np.ndarray:
    return raw.view("<f2").astype(np.float32)


def dequantize(raw: np.ndarray, type_id: int, shape: Tuple[int, ...]) -> np.ndarray:
    """The float32 values of ``raw`` (bytes, uint8) holding a tensor of ggml type ``type_id``."""
    name, block, block_bytes = TENSOR_TYPES[type_id]
    count = int(np.prod(shape, dtype=np.int64))
    if name == "F32":
        return raw.view("<f4").astype(np.float32).reshape(shape)
    if name == "F16":
        return _f16(raw).reshape(shape)
    if name == "BF16":
        return (raw.view("<u2").astype(np.uint32) << 16).view(np.float32).reshape(shape)
    blocks = raw.reshape(count // block, block_bytes)
    d = _f16(np.ascontiguousarray(blocks[:, :2])).reshape(-1, 1)
    if name == "Q8_0":
        q = blocks[:, 2:].view(np.int8).astype(np.float32)
        return (d * q).reshape(shape)
    qs = blocks[:, -16:]
    nibbles = np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)  # values 0–15, then 16–31
    if name == "Q4_0":
        return (d * (nibbles - 8.0)).reshape(shape)
    m = _f16(np.ascontiguousarray(blocks[:, 2:4])).reshape(-1, 1)  # Q4_1
    return (d * nibbles + m).reshape(shape)


# --- Llama from GGUF -------------------------------------------------------------------------

_LAYER_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
                "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
                "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Undoes llama.cpp's converter, which reorders each head's q/k rows from Hugging Face's
    "rotate half" pairs ``(i, i + Dh/2)`` to adjacent pairs ``(2i, 2i + 1)``."""
    out, inp = w.shape
    return w.reshape(heads, out // heads // 2, 2, inp).swapaxes(1, 2).reshape(out, inp)


def llama_gguf_kwargs(meta: Dict[str, Any], path: str) -> Dict[str, Any]:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise UnsupportedConfigError(f"{path}: general.architecture={arch!r}; only 'llama' is supported")

    def get(key: str, kind: type, default: Any = None) -> Any:
        v = meta.get(f"llama.{key}", default)
        if kind is float and isinstance(v, int):
            v = float(v)
        if v is None or isinstance(v, bool) or not isinstance(v, kind) or v <= 0:
            raise UnsupportedConfigError(f"{path}: metadata llama.{key}={v!r} is missing or not a positive "
                                         f"{kind.__name__}")
        return v

    scaling = meta.get("llama.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise UnsupportedConfigError(f"{path}: llama.rope.scaling.type={scaling!r} is not supported (none, linear)")
    d, heads = get("embedding_length", int), get("attention.head_count", int)
    kv = get("attention.head_count_kv", int, heads)
    if heads % kv:
        raise UnsupportedConfigError(f"{path}: head_count={heads} is not a multiple of head_count_kv={kv}")
    head_dim = get("rope.dimension_count", int, d // heads)
    if head_dim * heads != d and "llama.attention.key_length" not in meta:
        raise UnsupportedConfigError(f"{path}: rope.dimension_count={head_dim} is not embedding_length/head_count")
    ids = {k: meta.get(f"tokenizer.ggml.{k}_token_id") for k in ("bos", "eos", "padding")}
    return dict(d_model=d, nhead=heads, num_kv_heads=kv, num_layers=get("block_count", int),
                dim_feedforward=get("feed_forward_length", int), head_dim=head_dim,
                max_len=get("context_length", int), rope_theta=get("rope.freq_base", float, 10000.0),
                rope_scaling=None if scaling == "none" else {"rope_type": "linear",
                                                             "factor": float(get("rope.scaling.factor", float))},
                rms_norm_eps=get("attention.layer_norm_rms_epsilon", float, 1e-5),
                bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["padding"])


def gguf_tokenizer(meta: Dict[str, Any], path: str) -> Any:
    """The byte-level BPE tokenizer (``tokenizer.ggml.model = "gpt2"``) of a GGUF file as a
    ``tokenizers.Tokenizer``; ``None`` when the file has another kind (SentencePiece ``"llama"``)."""
    if meta.get("tokenizer.ggml.model") != "gpt2":
        return None
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    tokens, merges = meta.get("tokenizer.ggml.tokens"), meta.get("tokenizer.ggml.merges", [])
    if not isinstance(tokens, list) or not all(isinstance(t, str) for t in tokens):
        raise PretrainedFormatError(f"{path}: tokenizer.ggml.tokens is not a list of strings")
    pairs = []
    for m in merges:
        parts = m.split(" ") if isinstance(m, str) else []
        if len(parts) != 2:
            raise PretrainedFormatError(f"{path}: tokenizer.ggml.merges entry {m!r} is not 'a b'")
        pairs.append((parts[0], parts[1]))
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab, pairs, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return tok


def load_llama_gguf(cls: Any, path: PathLike) -> Any:
    """A ``cls`` (:class:`~tfm_rs.models.Llama`) from a GGUF file: configuration from the
    metadata, weights dequantized to float32, q/k rows restored to Hugging Face's order."""
    f = GGUFFile(path)
    p = f.path
    kwargs = llama_gguf_kwargs(f.metadata, p)
    if "token_embd.weight" not in f.tensors:
        raise WeightsMismatchError(f"{p}: no token_embd.weight")
    vocab = f.tensors["token_embd.weight"].shape[0]
    tied = "output.weight" not in f.tensors
    if kwargs["num_layers"] * len(_LAYER_NAMES) > len(f.tensors):
        raise WeightsMismatchError(f"{p}: llama.block_count={kwargs['num_layers']} blocks, but the file holds only "
                                   f"{len(f.tensors)} tensors")
    kwargs = dict(vocab_size=vocab, tie_weights=tied, **kwargs)
    # the file's names for the model's tensors, and their shapes from the metadata: all checked
    # before the model is built, so absurd metadata allocates nothing
    names = {"token_embd.weight": "embed_tokens.weight", "output_norm.weight": "norm.weight"}
    if not tied:
        names["output.weight"] = "lm_head.weight"
    for i in range(kwargs["num_layers"]):
        names.update({f"blk.{i}.{g}.weight": f"layers.{i}.{ours}.weight" for g, ours in _LAYER_NAMES.items()})
    shapes = llama_shapes(kwargs, range(kwargs["num_layers"]))
    missing = [n for n in names if n not in f.tensors]
    unexpected = [n for n in f.tensors if n not in names]
    wrong = [f"{n}: {f.tensors[n].shape} in the file, {shapes[t]} expected" for n, t in names.items()
             if n in f.tensors and f.tensors[n].shape != shapes[t]]
    if missing or unexpected or wrong:
        raise WeightsMismatchError(f"{p}: the tensors do not match the metadata: missing {missing}, unexpected "
                                   f"{unexpected}, shape mismatch {wrong}")
    model = cls(**kwargs)
    state: Dict[str, np.ndarray] = {}
    for n, target in names.items():
        w = f.get(n)
        if n.endswith("attn_q.weight"):
            w = _unpermute(w, kwargs["nhead"])
        elif n.endswith("attn_k.weight"):
            w = _unpermute(w, kwargs["num_kv_heads"])
        state[target] = w
    model.load_state_dict(state, strict=False)
    model.tokenizer = gguf_tokenizer(f.metadata, p)
    return model.eval()
