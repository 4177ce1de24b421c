"""``ReLU``, ``SiLU``, ``GELU``, ``Sigmoid``, ``Tanh`` and ``MultiheadAttention``, as ``torch.nn``.

Mask conventions differ between the two APIs this module bridges, exactly as in PyTorch:

* ``MultiheadAttention`` (and the Transformer layers) take *torch.nn* masks: in a boolean
  ``attn_mask`` or ``key_padding_mask``, ``True`` means "may NOT attend" (the position is
  masked out); float masks are added to the scores.
* ``F.scaled_dot_product_attention`` takes boolean masks where ``True`` means "takes part".

:func:`merge_masks` converts the former into the latter. Unlike PyTorch, a query row whose keys
are all masked out yields zeros rather than NaN.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Tuple

import numpy as np

import tfm_rs.functional as F
from tfm_rs.masks import Mask, causal, key_padding
from tfm_rs._core import InvalidArgumentError, ShapeError, Tensor
from tfm_rs.nn import init
from tfm_rs.nn.attention_kind import AttentionKind
from tfm_rs.nn.linear import Linear
from tfm_rs.nn.module import Module
from tfm_rs.nn.parameter import Parameter, as_tensor

__all__ = ["GELU", "MultiheadAttention", "ReLU", "SiLU", "Sigmoid", "Tanh", "merge_masks"]


class ReLU(Module):
    """``max(x, 0)`` elementwise. Any shape → same shape."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = False

    def forward(self, input: Tensor) -> Tensor:
        return F.relu(input)


class SiLU(Module):
    """``x·σ(x)`` elementwise ("swish"). Any shape → same shape."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = False

    def forward(self, input: Tensor) -> Tensor:
        return F.silu(input)


class Sigmoid(Module):
    """``1 / (1 + e^{-x})`` elementwise. Any shape → same shape."""

    def forward(self, input: Tensor) -> Tensor:
        return F.sigmoid(input)


class Tanh(Module):
    """``tanh x`` elementwise. Any shape → same shape."""

    def forward(self, input: Tensor) -> Tensor:
        return F.tanh(input)


class GELU(Module):
    """``x·Φ(x)`` elementwise (``approximate="tanh"``: the tanh approximation). Any shape → same
    shape."""

    def __init__(self, approximate: str = "none") -> None:
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise InvalidArgumentError(f"GELU: approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, input: Tensor) -> Tensor:
        return F.gelu(input, self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


# ---------------------------------------------------------------------------------------- masks

def _to_numpy(mask: Any) -> np.ndarray:
    return mask.numpy() if isinstance(mask, Tensor) else np.asarray(mask)


def _as_tensors(query: Any, key: Any, value: Any) -> Tuple[Tensor, Tensor, Tensor]:
    """NumPy inputs become Tensors, keeping ``query is key is value`` aliasing."""
    q = as_tensor(query)
    k = q if key is query else as_tensor(key)
    v = k if value is key else (q if value is query else as_tensor(value))
    return q, k, v


def merge_masks(attn_mask: Any, key_padding_mask: Any, is_causal: bool, batch: int, num_heads: int,
                tgt_len: int, src_len: int) -> Tuple[Optional[np.ndarray], bool]:
    """Converts torch.nn-convention masks into one ``scaled_dot_product_attention`` mask.

    ``attn_mask``: ``(L, S)`` or ``(N·num_heads, L, S)``; ``key_padding_mask``: ``(N, S)``. Boolean
    entries ``True`` exclude; float entries are added. Returns ``(mask, is_causal)`` where ``mask``
    is ``None``, a boolean "takes part" array or an additive float32 array broadcastable to
    ``(N, num_heads, L, S)``. ``is_causal`` is passed through only when no other mask remains
    (the fused causal path); otherwise the causal mask is folded into ``mask``. As in PyTorch, an
    ``attn_mask`` given with ``is_causal=True`` is trusted to be the causal mask.
    """
    L, S = tgt_len, src_len
    masks = []
    if is_causal:
        if key_padding_mask is None:
            return None, True
        masks.append(np.triu(np.ones((L, S), bool), 1))  # torch convention: True = excluded
    elif attn_mask is not None:
        m = _to_numpy(attn_mask)
        if m.shape == (L, S):
            pass
        elif m.ndim == 3 and m.shape == (batch * num_heads, L, S):
            m = m.reshape(batch, num_heads, L, S)
        else:
            raise ShapeError(f"attn_mask should have shape ({L}, {S}) or ({batch * num_heads}, {L}, {S}) "
                             f"(batch·num_heads, L, S), got {tuple(m.shape)}")
        masks.append(m)
    if key_padding_mask is not None:
        m = _to_numpy(key_padding_mask)
        if m.shape != (batch, S):
            raise ShapeError(
                f"key_padding_mask should have shape ({batch}, {S}) (batch, source length), got {tuple(m.shape)}")
        masks.append(m.reshape(batch, 1, 1, S))
    if not masks:
        return None, False
    if all(m.dtype == np.bool_ for m in masks):
        allowed = ~masks[0]
        for m in masks[1:]:
            allowed = allowed & ~m
        return allowed, False
    total = np.zeros((), np.float32)
    for m in masks:
        total = total + (np.where(m, -np.inf, 0.0).astype(np.float32) if m.dtype == np.bool_ else m.astype(np.float32))
    return total, False


def _any_padding(key_padding_mask: Any) -> bool:
    """Whether a boolean ``key_padding_mask`` marks any key as padding (a float one: any nonzero)."""
    return key_padding_mask is not None and bool(np.any(_to_numpy(key_padding_mask)))


def structured_mask(mask: Mask, key_padding_mask: Any, is_causal: bool, batch: int,
                    src_len: int) -> Mask:
    """A structured ``attn_mask`` combined with a torch.nn-convention boolean
    ``key_padding_mask (N, S)`` (``True`` = padding) and ``is_causal``."""
    if key_padding_mask is not None:
        m = _to_numpy(key_padding_mask)
        if m.dtype != np.bool_:
            raise InvalidArgumentError("a structured attn_mask combines with a boolean key_padding_mask only "
                                       "(True = padding); a float one is not supported with it")
        if m.shape != (batch, src_len):
            raise ShapeError(f"key_padding_mask should have shape ({batch}, {src_len}) (batch, source length), "
                             f"got {tuple(m.shape)}")
        mask = mask & key_padding(~m)
    return mask & causal() if is_causal else mask


# ---------------------------------------------------------------------------------------- attention

class MultiheadAttention(Module):
    """Multi-head attention of "Attention Is All You Need", with ``torch.nn.MultiheadAttention``'s
    parameters, arguments and masks (``batch_first=True`` layout only).

    Shapes: query ``(N, L, E)``, key ``(N, S, kdim)``, value ``(N, S, vdim)`` (or unbatched
    ``(L, E)``, …) → output ``(N, L, E)`` and, with ``need_weights``, attention weights
    ``(N, L, S)`` averaged over heads (``(N, num_heads, L, S)`` with
    ``average_attn_weights=False``), taken after masking and before dropout.

    Parameters: ``in_proj_weight (3E, E)`` stacking the q, k, v projections (or
    ``q_proj_weight (E, E)``, ``k_proj_weight (E, kdim)``, ``v_proj_weight (E, vdim)`` when kdim
    or vdim differ from E), ``in_proj_bias (3E,)``, ``out_proj.weight (E, E)``,
    ``out_proj.bias (E,)``. Self-attention (``query is key is value``) projects q, k, v with one
    GEMM; without ``need_weights`` the fused, memory-linear attention kernel runs.

    ``attention`` (tfm_rs extension): the kind of attention, ``"dense"`` (the paper's) or one of
    :mod:`tfm_rs.nn.attention_kind` — a sliding window with global tokens, block-sparse, linear or
    LSH — as an :class:`~tfm_rs.nn.attention_kind.AttentionKind` or its string.
    """

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, batch_first: bool = True, attention: Any = "dense") -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise InvalidArgumentError(f"embed_dim and num_heads must be greater than 0, got embed_dim={embed_dim} "
                                       f"and num_heads={num_heads} instead")
        if embed_dim % num_heads != 0:
            raise InvalidArgumentError(f"embed_dim ({embed_dim}) must be divisible by num_heads ({num_heads})")
        if not batch_first:
            raise InvalidArgumentError("MultiheadAttention: only batch_first=True ((batch, seq, feature) inputs) is "
                                       "supported; transpose (seq, batch, feature) inputs with x.transpose(0, 1)")
        if add_bias_kv or add_zero_attn:
            raise InvalidArgumentError("MultiheadAttention: add_bias_kv and add_zero_attn are not supported")
        if not 0.0 <= dropout <= 1.0:
            raise InvalidArgumentError(f"dropout probability has to be between 0 and 1, but got {dropout}")
        self.embed_dim = int(embed_dim)
        self.kdim = int(kdim) if kdim is not None else self.embed_dim
        self.vdim = int(vdim) if vdim is not None else self.embed_dim
        self._qkv_same_embed_dim = self.kdim == self.embed_dim and self.vdim == self.embed_dim
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.batch_first = True
        self.head_dim = self.embed_dim // self.num_heads
        self.attention = AttentionKind.parse(attention)
        E = self.embed_dim
        if self._qkv_same_embed_dim:
            self.in_proj_weight = Parameter(np.zeros((3 * E, E), np.float32))
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        else:
            self.q_proj_weight = Parameter(np.zeros((E, E), np.float32))
            self.k_proj_weight = Parameter(np.zeros((E, self.kdim), np.float32))
            self.v_proj_weight = Parameter(np.zeros((E, self.vdim), np.float32))
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = Parameter(np.zeros((3 * E,), np.float32))
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = Linear(E, E, bias=bias)
        self.bias_k = self.bias_v = None
        self.add_zero_attn = False
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            init.xavier_uniform_(self.q_proj_weight)
            init.xavier_uniform_(self.k_proj_weight)
            init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            init.zeros_(self.in_proj_bias)
            init.zeros_(self.out_proj.bias)

    def _heads(self, x: Tensor, n: int) -> Tensor:
        """``(N, T, n·E)`` → ``(n, N, H, T, Dh)`` (n stacked projections, split into heads)."""
        b, t, _ = x.shape
        return x.reshape(b, t, n, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)

    @property
    def inner_dim(self) -> int:
        """Width of the concatenated heads: ``embed_dim`` until :meth:`prune_heads` removes some."""
        return self.num_heads * self.head_dim

    def _bias(self, i: int, j: int) -> Optional[Tensor]:
        E = self.inner_dim
        return None if self.in_proj_bias is None else self.in_proj_bias[i * E:j * E]

    def check_prunable_heads(self, heads: Iterable[Any]) -> set:
        """``heads`` as a set, after checking that :meth:`prune_heads` may remove them."""
        original = self.embed_dim // self.head_dim
        heads = list(heads)
        bad = [h for h in heads if isinstance(h, bool) or not isinstance(h, (int, np.integer))
               or not 0 <= h < original]
        if bad:
            raise InvalidArgumentError(f"prune_heads: head indices must be ints in [0, {original}), got {bad}")
        kept = [h for h in range(original) if h not in self.__dict__.get("pruned_heads", set())]
        if not set(kept) - set(heads):
            raise InvalidArgumentError(f"prune_heads: pruning heads {sorted(set(heads))} would leave no head in "
                                       f"this layer (kept now: {kept})")
        if any(name.endswith("_orig") for m in (self, self.out_proj) for name in m._parameters):
            raise InvalidArgumentError("prune_heads: this layer has mask pruning (nn.utils.prune); call "
                                       "prune.remove first")
        return set(int(h) for h in heads)

    def prune_heads(self, heads: Iterable[int]) -> None:
        """Removes ``heads`` (indices into the original heads, as Hugging Face's
        ``prune_heads``; ones already removed are ignored): their rows of the q, k, v projections
        and their columns of ``out_proj`` go, so the matrices shrink and the layer computes
        exactly what it computed with those heads' outputs zeroed before ``out_proj``."""
        heads = self.check_prunable_heads(heads)
        pruned = set(self.__dict__.get("pruned_heads", set()))
        kept = [h for h in range(self.embed_dim // self.head_dim) if h not in pruned]
        Dh = self.head_dim
        keep = np.concatenate([np.arange(i * Dh, (i + 1) * Dh) for i, h in enumerate(kept) if h not in heads])
        inner = self.inner_dim
        rows3 = np.concatenate([keep + b * inner for b in range(3)])

        def shrink(t: Tensor, index: np.ndarray, axis: int) -> Parameter:
            p = Parameter(np.take(t.numpy(), index, axis=axis), t.requires_grad)
            p._move_(t.device)
            return p

        if self._qkv_same_embed_dim:
            self.in_proj_weight = shrink(self.in_proj_weight, rows3, 0)
        else:
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                setattr(self, name, shrink(getattr(self, name), keep, 0))
        if self.in_proj_bias is not None:
            self.in_proj_bias = shrink(self.in_proj_bias, rows3, 0)
        self.out_proj.weight = shrink(self.out_proj.weight, keep, 1)
        self.out_proj.in_features = len(keep)
        self.num_heads = len(keep) // Dh
        self.pruned_heads = pruned | heads

    def _in_projection(self, query: Tensor, key: Tensor, value: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """q ``(N, H, L, Dh)``, k and v ``(N, H, S, Dh)`` with as few GEMMs as the aliasing allows."""
        E = self.inner_dim
        if not self._qkv_same_embed_dim:
            q = F.linear(query, self.q_proj_weight, self._bias(0, 1))
            k = F.linear(key, self.k_proj_weight, self._bias(1, 2))
            v = F.linear(value, self.v_proj_weight, self._bias(2, 3))
            return self._heads(q, 1)[0], self._heads(k, 1)[0], self._heads(v, 1)[0]
        w = self.in_proj_weight
        if query is key and key is value:  # self-attention: one GEMM
            qkv = self._heads(F.linear(query, w, self.in_proj_bias), 3)
            return qkv[0], qkv[1], qkv[2]
        q = self._heads(F.linear(query, w[:E], self._bias(0, 1)), 1)[0]
        if key is value:  # cross-attention on memory: k and v in one GEMM
            kv = self._heads(F.linear(key, w[E:], self._bias(1, 3)), 2)
            return q, kv[0], kv[1]
        k = self._heads(F.linear(key, w[E:2 * E], self._bias(1, 2)), 1)[0]
        v = self._heads(F.linear(value, w[2 * E:], self._bias(2, 3)), 1)[0]
        return q, k, v

    def forward(self, query: Tensor, key: Tensor, value: Tensor, key_padding_mask: Any = None,
                need_weights: bool = True, attn_mask: Any = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """Attention of ``query`` over ``key``/``value``; returns ``(output, weights or None)``.

        ``key_padding_mask (N, S)``: ``True`` marks padding keys to ignore (float: added).
        ``attn_mask (L, S)`` or ``(N·num_heads, L, S)``: ``True`` = not allowed (float: added).
        ``is_causal=True`` applies the causal mask (query i sees keys j ≤ i); a given
        ``attn_mask`` is then trusted to be that mask.
        ``attn_mask`` may also be a :class:`tfm_rs.masks.Mask` (``True`` = takes part, as every
        structured mask): the block-skipping kernel runs it, combined with the key padding and
        causal flag (``need_weights=True`` materializes it, as the weights are ``L × S``).
        """
        query, key, value = _as_tensors(query, key, value)
        batched = query.ndim == 3
        if not batched:
            if query.ndim != 2 or key.ndim != 2 or value.ndim != 2:
                raise ShapeError(f"MultiheadAttention: query, key and value must all be 3-D (batched) or 2-D "
                                 f"(unbatched), got {query.shape}, {key.shape}, {value.shape}")
            same = query is key, key is value
            query = query.unsqueeze(0)
            key = query if same[0] else key.unsqueeze(0)
            value = key if same[1] else value.unsqueeze(0)
            if key_padding_mask is not None:
                key_padding_mask = _to_numpy(key_padding_mask)[None]
        self._check_shapes(query, key, value)
        n, L, E = query.shape
        S = key.shape[1]
        q, k, v = self._in_projection(query, key, value)
        dropout_p = self.dropout if self.training else 0.0
        kind = self.attention
        if kind.name != "dense" and is_causal and attn_mask is not None and not isinstance(attn_mask, Mask):
            attn_mask = None  # the dense causal mask is_causal vouches for; the kind applies it itself
        if kind.name in ("linear", "lsh"):
            y = self._operator_attention(q, k, v, attn_mask, key_padding_mask, need_weights, is_causal)
            return self._out(y, n, L, batched, None)
        if kind.is_mask:
            if attn_mask is not None and not isinstance(attn_mask, Mask):
                raise InvalidArgumentError(f"MultiheadAttention(attention='{kind}'): an extra attn_mask must be a "
                                           "structured tfm_rs.masks.Mask (it is combined with the kind's mask)")
            own = kind.mask(max(L, S))
            attn_mask = own if attn_mask is None else own & attn_mask
        if isinstance(attn_mask, Mask):
            mask, causal = structured_mask(attn_mask, key_padding_mask, is_causal, n, S), False
        else:
            mask, causal = merge_masks(attn_mask, key_padding_mask, is_causal, n, self.num_heads, L, S)
        weights = None
        if need_weights:
            y, weights = F.attention_with_weights(q, k, v, mask, dropout_p, causal)
            if average_attn_weights:
                weights = weights.mean(1)
        else:
            y = F.scaled_dot_product_attention(q, k, v, mask, dropout_p, causal)
        return self._out(y, n, L, batched, weights)

    def _out(self, y: Tensor, n: int, L: int, batched: bool,
             weights: Optional[Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """Heads ``y (N, H, L, Dh)`` (gated where heads have importance gates) through
        ``out_proj``."""
        gate = self.__dict__.get("head_gate")
        if gate is not None:  # head importance (Michel et al. 2019): y_h · ξ_h, differentiable in ξ
            y = y * gate.reshape(1, self.num_heads, 1, 1)
        out = self.out_proj(y.transpose(1, 2).reshape(n, L, self.inner_dim))
        if not batched:
            out = out.squeeze(0)
            weights = None if weights is None else weights.squeeze(0)
        return out, weights

    def _operator_attention(self, q: Tensor, k: Tensor, v: Tensor, attn_mask: Any, key_padding_mask: Any,
                            need_weights: bool, is_causal: bool) -> Tensor:
        """Linear or LSH attention: no attention matrix, so no weights, no ``attn_mask`` and no
        dropout on it; both leave out the keys a boolean ``key_padding_mask`` marks."""
        kind = self.attention
        asked = (("need_weights=True", need_weights), ("an attn_mask", attn_mask is not None))
        refused = [what for what, given in asked if given]
        if refused:
            raise InvalidArgumentError(f"MultiheadAttention(attention='{kind}') takes no {refused[0]}: "
                                       f"{kind.name} attention has no attention matrix to mask or return "
                                       "(is_causal is supported; pad on the right under is_causal)")
        padding = None
        if _any_padding(key_padding_mask):
            m = _to_numpy(key_padding_mask)
            if m.dtype != np.bool_:
                raise InvalidArgumentError(f"MultiheadAttention(attention='{kind}'): key_padding_mask must be "
                                           "boolean (True = padding)")
            padding = m[:, None, :]  # (N, S) over the heads of k (N, H, S, Dh)
        if kind.name == "linear":
            return F.linear_attention(q, k, v, causal=is_causal, key_padding_mask=padding)
        if q.shape[2] != k.shape[2]:
            raise ShapeError(f"MultiheadAttention(attention='{kind}'): LSH attention is self-attention, got "
                             f"{q.shape[2]} queries and {k.shape[2]} keys")
        # Reformer shares queries and keys: the query projection gives both.
        return F.lsh_attention(q, v, n_hashes=kind["n_hashes"], bucket_size=kind["bucket_size"],
                               causal=is_causal, seed=kind["seed"], key_padding_mask=padding)

    def _check_shapes(self, query: Tensor, key: Tensor, value: Tensor) -> None:
        if query.ndim != 3 or key.ndim != 3 or value.ndim != 3:
            raise ShapeError(f"MultiheadAttention: query, key and value must all be 3-D (batch, seq, feature), "
                             f"got {query.shape}, {key.shape}, {value.shape}")
        if query.shape[-1] != self.embed_dim:
            raise ShapeError(
                f"MultiheadAttention: query has {query.shape[-1]} features, expected embed_dim={self.embed_dim}")
        if key.shape[-1] != self.kdim or value.shape[-1] != self.vdim:
            raise ShapeError(f"MultiheadAttention: key/value have {key.shape[-1]}/{value.shape[-1]} features, "
                             f"expected kdim={self.kdim}/vdim={self.vdim}")
        if key.shape[:2] != value.shape[:2] or key.shape[0] != query.shape[0]:
            raise ShapeError(f"MultiheadAttention: batch and source lengths disagree: query {query.shape}, "
                             f"key {key.shape}, value {value.shape}")
