"""The Llama family: a decoder-only language model with RMSNorm, rotary position embeddings,
a SwiGLU feed-forward network and grouped-query attention (Llama 2/3, Mistral-style configs,
TinyLlama, SmolLM, …), trainable, with Hugging Face's module names so that its state dict is a
``LlamaForCausalLM`` checkpoint without the ``model.`` prefix.

Block (pre-norm, nanoGPT-shaped)::

    x = x + o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))   n = input_layernorm(x)
    x = x + down_proj(silu(gate_proj(n)) * up_proj(n))                        n = post_attention_layernorm(x)

Grouped-query attention without copying keys and values per head: the ``g = H / H_kv`` query
heads that share a key/value head are laid out as ``g·T`` query rows of that head, ``(B, H_kv,
g·T, Dh)``, against keys ``(B, H_kv, T, Dh)``, with the causal mask repeated ``g`` times.
:meth:`Llama.generate` decodes in the native engine (:meth:`Llama.decoder_weights`), whose
key/value cache likewise stores ``H_kv`` heads.

Shapes: ``forward(ids (B, T))`` → logits ``(B, T, V)``; ``loss(ids)`` → mean next-token
cross-entropy.
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import numpy as np

import tfm_rs.functional as F
from tfm_rs import cat, nn, tensor
from tfm_rs import decode as decoding
from tfm_rs._core import DecoderWeights, InvalidArgumentError, QuantizedWeight, ShapeError, Tensor
from tfm_rs.decode import GenerationOutput
from tfm_rs.models._common import as_ids, check_config_arch
from tfm_rs.pretrained.llama import load_llama, save_llama

__all__ = ["Llama", "rope_frequencies"]

def _float_weight(m: Any) -> np.ndarray:
    w = m.weight
    return w.dequantize() if isinstance(w, QuantizedWeight) else w.numpy()


def rope_frequencies(head_dim: int, theta: float, scaling: Optional[Mapping[str, Any]] = None) -> np.ndarray:
    """The rotary inverse frequencies ``θ^(-2i/Dh)`` ``(Dh/2,)`` in float64, rescaled as
    ``scaling`` says: ``None``/``"default"``, ``"linear"`` (``factor``) or ``"llama3"``
    (``factor``, ``low_freq_factor``, ``high_freq_factor``,
    ``original_max_position_embeddings``)."""
    inv = theta ** (-np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "linear":
        inv = inv / float(scaling["factor"])
    elif kind == "llama3":
        factor, lo, hi = float(scaling["factor"]), float(scaling["low_freq_factor"]), float(
            scaling["high_freq_factor"])
        old = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * np.pi / inv
        smooth = (old / wavelen - lo) / (hi - lo)
        mid = (1 - smooth) * inv / factor + smooth * inv
        inv = np.where(wavelen > old / lo, inv / factor, np.where(wavelen < old / hi, inv, mid))
    elif kind != "default":
        raise InvalidArgumentError(f"rope_frequencies: rope_type {kind!r} is not supported")
    return inv


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotates ``x (B, H, T, Dh)`` by the angles of its positions (``cos``/``sin`` ``(T, Dh)``,
    each half repeated): Hugging Face's "rotate half" layout, pairs ``(i, i + Dh/2)``."""
    half = x.shape[-1] // 2
    rotated = cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class LlamaAttention(nn.Module):
    def __init__(self, d_model: int, nhead: int, num_kv_heads: int, head_dim: int, bias: bool) -> None:
        super().__init__()
        self.nhead, self.num_kv_heads, self.head_dim = nhead, num_kv_heads, head_dim
        self.q_proj = nn.Linear(d_model, nhead * head_dim, bias=bias)
        self.k_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=bias)
        self.v_proj = nn.Linear(d_model, num_kv_heads * head_dim, bias=bias)
        self.o_proj = nn.Linear(nhead * head_dim, d_model, bias=bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: np.ndarray) -> Tensor:
        """``x (B, T, d)``, ``mask (B or 1, 1, g·T, T)`` (True = may attend) → ``(B, T, d)``."""
        B, T, _ = x.shape
        hk, g, dh = self.num_kv_heads, self.nhead // self.num_kv_heads, self.head_dim
        q = self.q_proj(x).reshape(B, T, self.nhead, dh).transpose(1, 2)   # (B, H, T, Dh)
        k = self.k_proj(x).reshape(B, T, hk, dh).transpose(1, 2)           # (B, Hk, T, Dh)
        v = self.v_proj(x).reshape(B, T, hk, dh).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        q = q.reshape(B, hk, g * T, dh)                                    # a group's heads as rows
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)       # (B, Hk, g·T, Dh)
        y = y.reshape(B, self.nhead, T, dh).transpose(1, 2).reshape(B, T, self.nhead * dh)
        return self.o_proj(y)


class LlamaMLP(nn.Module):
    def __init__(self, d_model: int, hidden: int, bias: bool) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(d_model, hidden, bias=bias)
        self.up_proj = nn.Linear(d_model, hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class LlamaBlock(nn.Module):
    def __init__(self, d_model: int, nhead: int, num_kv_heads: int, head_dim: int, hidden: int, eps: float,
                 attention_bias: bool, mlp_bias: bool) -> None:
        super().__init__()
        self.input_layernorm = nn.RMSNorm(d_model, eps)
        self.self_attn = LlamaAttention(d_model, nhead, num_kv_heads, head_dim, attention_bias)
        self.post_attention_layernorm = nn.RMSNorm(d_model, eps)
        self.mlp = LlamaMLP(d_model, hidden, mlp_bias)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor, mask: np.ndarray) -> Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class Llama(nn.Module):
    """Llama-family causal language model.

    Args:
        vocab_size, d_model, nhead, num_layers: as usual; ``dim_feedforward``: the SwiGLU width.
        num_kv_heads: key/value heads (``nhead`` = multi-head, 1 = multi-query; divides ``nhead``).
        head_dim: per-head width (default ``d_model // nhead``).
        max_len: longest sequence; rope_theta, rope_scaling: the rotary frequencies
            (:func:`rope_frequencies`); rms_norm_eps; tie_weights: head shares the embedding.
        attention_bias, mlp_bias: biases on the projections (Llama: none).
        pad_id, bos_id, eos_id: special ids (optional).
    """

    arch = "Llama"

    def __init__(self, vocab_size: int, d_model: int = 512, nhead: int = 8, num_layers: int = 8,
                 dim_feedforward: int = 1376, num_kv_heads: Optional[int] = None, head_dim: Optional[int] = None,
                 max_len: int = 2048, rope_theta: float = 10000.0, rope_scaling: Optional[Mapping[str, Any]] = None,
                 rms_norm_eps: float = 1e-6, tie_weights: bool = False, attention_bias: bool = False,
                 mlp_bias: bool = False, pad_id: Optional[int] = None, bos_id: Optional[int] = None,
                 eos_id: Optional[int] = None) -> None:
        super().__init__()
        num_kv_heads = nhead if num_kv_heads is None else int(num_kv_heads)
        head_dim = d_model // nhead if head_dim is None and nhead > 0 else head_dim
        if min(vocab_size, d_model, nhead, num_layers, dim_feedforward, num_kv_heads, max_len) < 1:
            raise InvalidArgumentError("Llama: sizes must be positive")
        if nhead % num_kv_heads != 0:
            raise InvalidArgumentError(f"Llama: nhead ({nhead}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if head_dim is None or head_dim < 2 or head_dim % 2:
            raise InvalidArgumentError(f"Llama: head_dim must be an even number ≥ 2, got {head_dim}")
        inv_freq = rope_frequencies(head_dim, float(rope_theta), rope_scaling)
        self._config: Dict[str, Any] = dict(
            vocab_size=int(vocab_size), d_model=int(d_model), nhead=int(nhead), num_layers=int(num_layers),
            dim_feedforward=int(dim_feedforward), num_kv_heads=num_kv_heads, head_dim=int(head_dim),
            max_len=int(max_len), rope_theta=float(rope_theta),
            rope_scaling=None if rope_scaling is None else dict(rope_scaling), rms_norm_eps=float(rms_norm_eps),
            tie_weights=bool(tie_weights), attention_bias=bool(attention_bias), mlp_bias=bool(mlp_bias),
            pad_id=pad_id, bos_id=bos_id, eos_id=eos_id)
        self.vocab_size, self.d_model, self.max_len = int(vocab_size), int(d_model), int(max_len)
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self._inv_freq = inv_freq

        self.embed_tokens = nn.Embedding(vocab_size, d_model)
        nn.init.normal_(self.embed_tokens.weight, 0.0, 0.02)
        self.layers = nn.ModuleList([
            LlamaBlock(d_model, nhead, num_kv_heads, head_dim, dim_feedforward, rms_norm_eps, attention_bias,
                       mlp_bias) for _ in range(num_layers)])
        for layer in self.layers:
            for lin in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj,
                        layer.self_attn.o_proj, layer.mlp.gate_proj, layer.mlp.up_proj, layer.mlp.down_proj):
                nn.init.normal_(lin.weight, 0.0, 0.02)
        self.norm = nn.RMSNorm(d_model, rms_norm_eps)
        self.lm_head = nn.Linear(d_model, vocab_size, bias=False)
        nn.init.normal_(self.lm_head.weight, 0.0, 0.02)
        if tie_weights:
            self.lm_head.weight = self.embed_tokens.weight
        self.tokenizer: Any = None

    @property
    def config(self) -> Dict[str, Any]:
        return {"arch": self.arch, **self._config}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Llama":
        return cls(**check_config_arch(config, cls.arch))

    @classmethod
    def from_pretrained(cls, path: Any) -> "Llama":
        """A Hugging Face ``LlamaForCausalLM`` checkpoint directory, or a ``.gguf`` file (see
        :mod:`tfm_rs.pretrained.llama`), in eval mode, with its tokenizer as ``.tokenizer``."""
        return load_llama(cls, path)

    def save_pretrained(self, path: Any) -> None:
        """Writes a ``LlamaForCausalLM`` checkpoint directory that ``transformers`` loads."""
        save_llama(self, path)

    def num_parameters(self) -> int:
        """Distinct trainable values (a tied matrix counts once)."""
        return int(sum(int(np.prod(p.shape)) for p in self.parameters()))

    def _mask(self, T: int) -> np.ndarray:
        """``(1, 1, g·T, T)``: query ``t`` sees keys ``≤ t``, repeated for the ``g`` heads of a group."""
        g = self._config["nhead"] // self._config["num_kv_heads"]
        causal = np.arange(T)[None, :] <= np.arange(T)[:, None]                          # (T, T)
        return np.tile(causal, (g, 1))[None, None]                                         # (1, 1, g·T, T)

    def _rotary(self, length: int) -> Tuple[Tensor, Tensor]:
        """``cos``/``sin`` ``(length, Dh)`` of positions ``0 …``, each half repeated (computed in
        float64 per call: a table for ``max_len`` positions could be large)."""
        angles = np.arange(length, dtype=np.float64)[:, None] * self._inv_freq[None, :]
        angles = np.concatenate([angles, angles], axis=1)
        return tensor(np.cos(angles).astype(np.float32)), tensor(np.sin(angles).astype(np.float32))

    def _run(self, ids: np.ndarray) -> Tensor:
        """Hidden states after the final norm ``(B, T, d)``."""
        T = ids.shape[1]
        if T > self.max_len:
            raise ShapeError(f"Llama: {T} positions, more than max_len={self.max_len}")
        cos, sin = self._rotary(T)
        mask = self._mask(T)
        x = self.embed_tokens(ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)

    def forward(self, ids: Any) -> Tensor:
        """ids ``(B, T)`` → logits ``(B, T, V)``; position ``t`` depends on ``ids[:, :t+1]`` only
        (right padding therefore changes nothing before it)."""
        ids = as_ids(ids, "ids", self.vocab_size, self.max_len, "Llama")
        return self.lm_head(self._run(ids))

    def loss(self, ids: Any, ignore_pad: bool = True) -> Tensor:
        """Mean next-token cross-entropy over ``ids (B, T)``, ``T ≥ 2`` (targets equal to
        ``pad_id`` ignored when ``ignore_pad``)."""
        ids = as_ids(ids, "ids", self.vocab_size, self.max_len, "Llama")
        if ids.shape[1] < 2:
            raise ShapeError(f"Llama.loss: sequences need at least 2 tokens, got T={ids.shape[1]}")
        logits = self.forward(ids[:, :-1])
        ignore = self.pad_id if (ignore_pad and self.pad_id is not None) else -100
        return F.cross_entropy(logits.reshape(-1, self.vocab_size), ids[:, 1:].reshape(-1), ignore_index=ignore)

    def decoder_weights(self) -> DecoderWeights:
        """The model for the native decoding engine (:class:`tfm_rs._core.DecoderWeights`): rotary
        positions, grouped-query attention and SwiGLU. Each layer's q/k/v and gate/up matrices are
        stacked into one (a copy, made once per call); the rest is shared with the model. A model
        quantized with :func:`tfm_rs.quantization.quantize_dynamic` decodes with its int8 weights."""
        return DecoderWeights(self._native_spec())

    def _native_spec(self) -> Dict[str, Any]:
        def stacked(*lins: Any) -> Tuple[Any, Optional[Tensor]]:
            # int8 layers (quantize_dynamic) keep one scale per output row, so their rows stack
            # exactly: the engine then multiplies in int8 too.
            if all(isinstance(m.weight, QuantizedWeight) for m in lins):
                weight: Any = QuantizedWeight(np.concatenate([m.weight.int8() for m in lins]),
                                              np.concatenate([m.weight.scales() for m in lins]))
            else:
                weight = tensor(np.concatenate([_float_weight(m) for m in lins]))
            bias = None if lins[0].bias is None else tensor(np.concatenate([m.bias.numpy() for m in lins]))
            return weight, bias

        def norm(m: nn.RMSNorm) -> Tuple[Tensor, None]:
            return m.weight, None

        c = self._config
        layers = [dict(self_heads=c["nhead"], cross_heads=None, cross_in=None, cross_out=None, norm_cross=None,
                       self_in=stacked(b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj),
                       self_out=(b.self_attn.o_proj.weight, b.self_attn.o_proj.bias),
                       norm_self=norm(b.input_layernorm), norm_ff=norm(b.post_attention_layernorm),
                       ff1=stacked(b.mlp.gate_proj, b.mlp.up_proj), ff2=(b.mlp.down_proj.weight, b.mlp.down_proj.bias))
                  for b in self.layers]
        eps = self.norm.eps
        return dict(
            head_dim=c["head_dim"], norm_first=True, activation="relu",  # unused: SwiGLU
            eps=float(np.finfo(np.float32).eps) if eps is None else float(eps), norm="rms",
            embed=self.embed_tokens.weight, embed_scale=1.0, positions=None, final_norm=norm(self.norm),
            head=(self.lm_head.weight, self.lm_head.bias), layers=layers,
            llama=dict(inv_freq=[float(f) for f in self._inv_freq], max_len=self.max_len, kv_heads=c["num_kv_heads"]))

    def prompt_ids(self, prompt: Any, name: str = "prompt_ids") -> np.ndarray:
        """One prompt checked (ids in the vocabulary, at most ``max_len`` long, not empty) as an
        int64 array ``(1, T)``."""
        return as_ids(prompt, name, self.vocab_size, self.max_len, "Llama.generate")

    def generate(self, prompt_ids: Any, max_new_tokens: int = 20, **search: Any) -> GenerationOutput:
        """Continues ``prompt_ids`` (one 1-D prompt, a 2-D array, or a list of prompts of any
        lengths, decoded together) by up to ``max_new_tokens`` tokens with the native engine's
        key/value cache of the ``H_kv`` grouped heads (:meth:`decoder_weights`), the search in
        Rust: greedy by default; ``do_sample=True`` with ``temperature``/``top_k``/``top_p``/
        ``seed``; ``num_beams > 1`` (with ``length_penalty``, ``num_return_sequences``); the other
        settings of :mod:`tfm_rs.decode.generate`. Stops at ``eos_token_id`` (default: the
        model's ``eos_id``). ``sequences`` hold prompt + continuation."""
        search.setdefault("eos_token_id", self.eos_id)
        return decoding.generate_lm(self, prompt_ids, max_new_tokens, **search)

    def stream(self, prompt_ids: Any, max_new_tokens: int = 20, **search: Any) -> Iterator[int]:
        """Like :meth:`generate` for one prompt, yielding each new token id as it is produced."""
        search.setdefault("eos_token_id", self.eos_id)
        return decoding.stream(self, prompt_ids, max_new_tokens, **search)
