"""The Transformer of "Attention Is All You Need", with ``torch.nn.Transformer``'s classes,
arguments, masks and ``state_dict`` keys (``batch_first=True`` layout only).

Post-LN layers (the paper's, ``norm_first=False``) compute ``norm(x + sublayer(x))`` with the
fused residual LayerNorm; pre-LN layers (``norm_first=True``) compute ``x + sublayer(norm(x))``.
Masks follow torch.nn: boolean ``True`` = not allowed to attend, float masks are added (see
:mod:`tfm_rs.nn.activation`).
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Optional, Union

import numpy as np

import tfm_rs.functional as F
from tfm_rs._core import InvalidArgumentError, ShapeError, Tensor
from tfm_rs.nn import init
from tfm_rs.nn.activation import MultiheadAttention
from tfm_rs.nn.dropout import Dropout
from tfm_rs.nn.linear import Linear
from tfm_rs.nn.module import Module, ModuleList
from tfm_rs.nn.normalization import LayerNorm
from tfm_rs.nn.norms import add_norm, apply_norm, check_norm, make_norm
from tfm_rs.nn.parameter import Parameter, as_tensor

__all__ = ["Transformer", "TransformerDecoder", "TransformerDecoderLayer", "TransformerEncoder",
           "TransformerEncoderLayer", "generate_square_subsequent_mask"]

Activation = Union[str, Callable[[Tensor], Tensor]]


def generate_square_subsequent_mask(sz: int) -> np.ndarray:
    """The causal mask ``(sz, sz)``: float32, ``-inf`` above the diagonal and ``0`` elsewhere
    (a NumPy array; tfm_rs masks are NumPy arrays, like token ids)."""
    return np.triu(np.full((sz, sz), -np.inf, np.float32), 1)


def _detect_is_causal_mask(mask: Any, is_causal: Optional[bool], size: int) -> bool:
    """``is_causal`` if given; otherwise whether ``mask`` is exactly the causal mask (float
    ``-inf`` above the diagonal, or boolean ``True`` above it), so the fused causal path runs."""
    if is_causal is not None or mask is None:
        return bool(is_causal)
    m = mask.numpy() if isinstance(mask, Tensor) else np.asarray(mask)
    if m.shape != (size, size):
        return False
    if m.dtype == np.bool_:
        return bool(np.array_equal(m, np.triu(np.ones((size, size), bool), 1)))
    return bool(np.array_equal(m, generate_square_subsequent_mask(size)))


def _gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _activation(activation: Activation) -> Callable[[Tensor], Tensor]:
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    if activation == "gelu_tanh":  # GPT-2's "gelu_new"
        return _gelu_tanh
    if activation == "silu":  # Marian's "swish"
        return F.silu
    if isinstance(activation, str) or not callable(activation):
        raise InvalidArgumentError(
            f"activation should be 'relu', 'gelu', 'gelu_tanh', 'silu' or a callable, not {activation!r}")
    return activation


def _check_layer_args(d_model: int, nhead: int, batch_first: bool) -> None:
    if nhead <= 0 or d_model % nhead != 0:
        raise InvalidArgumentError(f"d_model ({d_model}) must be divisible by nhead ({nhead})")
    if not batch_first:
        raise InvalidArgumentError("only batch_first=True ((batch, seq, feature) inputs) is supported; "
                                   "transpose (seq, batch, feature) inputs with x.transpose(0, 1)")


def _prune_ffn_channels(layer: Module, channels: Any) -> None:
    """Removes feed-forward channels (rows of ``linear1``, columns of ``linear2``): the layer then
    computes what it computed with those hidden units' activations zeroed."""
    width = layer.linear1.out_features
    drop = set(int(c) for c in channels)
    bad = sorted(c for c in drop if not 0 <= c < width)
    if bad:
        raise InvalidArgumentError(f"prune_ffn: channel indices must be in [0, {width}), got {bad}")
    if len(drop) >= width:
        raise InvalidArgumentError(f"prune_ffn: pruning {len(drop)} of {width} feed-forward channels would leave none")
    if any(name.endswith("_orig") for m in (layer.linear1, layer.linear2) for name in m._parameters):
        raise InvalidArgumentError("prune_ffn: this layer has mask pruning (nn.utils.prune); call prune.remove first")
    keep = np.array([c for c in range(width) if c not in drop], np.int64)

    def shrink(t: Any, axis: int) -> Parameter:
        p = Parameter(np.take(t.numpy(), keep, axis=axis), t.requires_grad)
        p._move_(t.device)
        return p

    layer.linear1.weight = shrink(layer.linear1.weight, 0)
    if layer.linear1.bias is not None:
        layer.linear1.bias = shrink(layer.linear1.bias, 0)
    layer.linear1.out_features = len(keep)
    layer.linear2.weight = shrink(layer.linear2.weight, 1)
    layer.linear2.in_features = len(keep)


class TransformerEncoderLayer(Module):
    """Self-attention and a feed-forward network, each in a residual connection with LayerNorm.

    src ``(N, S, d_model)`` → ``(N, S, d_model)``. ``src_mask (S, S)`` or ``(N·nhead, S, S)``,
    ``src_key_padding_mask (N, S)`` (``True`` = padding), ``is_causal`` as in
    :class:`MultiheadAttention`. Submodules: ``self_attn``, ``linear1 (d_model → dim_feedforward)``,
    ``linear2``, ``norm1``, ``norm2``, ``dropout``, ``dropout1``, ``dropout2``. ``attention``
    (tfm_rs extension): the self-attention's kind (:mod:`tfm_rs.nn.attention_kind`).
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Activation = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = True,
                 norm_first: bool = False, bias: bool = True, norm: str = "layer", attention: Any = "dense") -> None:
        super().__init__()
        _check_layer_args(d_model, nhead, batch_first)
        check_norm(norm, type(self).__name__)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first,
                                            attention=attention)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)
        self.norm_first = norm_first
        self.norm1 = make_norm(norm, d_model, layer_norm_eps, bias)
        self.norm2 = make_norm(norm, d_model, layer_norm_eps, bias)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _activation(activation)

    def forward(self, src: Tensor, src_mask: Any = None, src_key_padding_mask: Any = None,
                is_causal: bool = False, norm_padding_mask: Any = None) -> Tensor:
        """``norm_padding_mask (N, S)`` (tfm_rs extension; ``True`` = padding, default
        ``src_key_padding_mask``): the positions batch norm (``norm="batch"``) leaves out of its
        statistics."""
        x = as_tensor(src)
        pad = src_key_padding_mask if norm_padding_mask is None else norm_padding_mask
        if self.norm_first:
            x = x + self._sa_block(apply_norm(self.norm1, x, pad), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(apply_norm(self.norm2, x, pad))
        else:
            x = add_norm(self.norm1, self._sa_block(x, src_mask, src_key_padding_mask, is_causal), x, pad)
            x = add_norm(self.norm2, self._ff_block(x), x, pad)
        return x

    def _sa_block(self, x: Tensor, attn_mask: Any, key_padding_mask: Any, is_causal: bool) -> Tensor:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                           need_weights=False, is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x: Tensor) -> Tensor:
        return self.dropout2(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def prune_ffn(self, channels: Any) -> None:
        """Removes feed-forward channels (indices into the current ``dim_feedforward``): smaller
        ``linear1``/``linear2``, the same output as with those hidden activations zeroed."""
        _prune_ffn_channels(self, channels)



class TransformerDecoderLayer(Module):
    """Masked self-attention, attention over the encoder's ``memory``, and a feed-forward network,
    each in a residual connection with LayerNorm.

    tgt ``(N, T, d_model)``, memory ``(N, S, d_model)`` → ``(N, T, d_model)``. ``tgt_mask (T, T)``,
    ``memory_mask (T, S)``, ``tgt_key_padding_mask (N, T)``, ``memory_key_padding_mask (N, S)``.
    Submodules: ``self_attn``, ``multihead_attn``, ``linear1``, ``linear2``, ``norm1``–``norm3``,
    ``dropout``, ``dropout1``–``dropout3``.
    """

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048, dropout: float = 0.1,
                 activation: Activation = "relu", layer_norm_eps: float = 1e-5, batch_first: bool = True,
                 norm_first: bool = False, bias: bool = True, norm: str = "layer") -> None:
        super().__init__()
        _check_layer_args(d_model, nhead, batch_first)
        check_norm(norm, type(self).__name__)
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first)
        self.multihead_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias, batch_first=batch_first)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias)
        self.norm_first = norm_first
        self.norm1 = make_norm(norm, d_model, layer_norm_eps, bias)
        self.norm2 = make_norm(norm, d_model, layer_norm_eps, bias)
        self.norm3 = make_norm(norm, d_model, layer_norm_eps, bias)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.dropout3 = Dropout(dropout)
        self.activation = _activation(activation)

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Any = None, memory_mask: Any = None,
                tgt_key_padding_mask: Any = None, memory_key_padding_mask: Any = None,
                tgt_is_causal: bool = False, memory_is_causal: bool = False, norm_padding_mask: Any = None) -> Tensor:
        """``norm_padding_mask (N, T)``: as :meth:`TransformerEncoderLayer.forward`'s (default
        ``tgt_key_padding_mask``)."""
        x, memory = as_tensor(tgt), as_tensor(memory)
        pad = tgt_key_padding_mask if norm_padding_mask is None else norm_padding_mask
        if self.norm_first:
            x = x + self._sa_block(apply_norm(self.norm1, x, pad), tgt_mask, tgt_key_padding_mask, tgt_is_causal)
            x = x + self._mha_block(apply_norm(self.norm2, x, pad), memory, memory_mask, memory_key_padding_mask,
                                    memory_is_causal)
            x = x + self._ff_block(apply_norm(self.norm3, x, pad))
        else:
            x = add_norm(self.norm1, self._sa_block(x, tgt_mask, tgt_key_padding_mask, tgt_is_causal), x, pad)
            x = add_norm(self.norm2,
                         self._mha_block(x, memory, memory_mask, memory_key_padding_mask, memory_is_causal), x, pad)
            x = add_norm(self.norm3, self._ff_block(x), x, pad)
        return x

    def _sa_block(self, x: Tensor, attn_mask: Any, key_padding_mask: Any, is_causal: bool) -> Tensor:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                           need_weights=False, is_causal=is_causal)[0]
        return self.dropout1(x)

    def _mha_block(self, x: Tensor, mem: Tensor, attn_mask: Any, key_padding_mask: Any, is_causal: bool) -> Tensor:
        x = self.multihead_attn(x, mem, mem, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                                need_weights=False, is_causal=is_causal)[0]
        return self.dropout2(x)

    def _ff_block(self, x: Tensor) -> Tensor:
        return self.dropout3(self.linear2(self.dropout(self.activation(self.linear1(x)))))

    def prune_ffn(self, channels: Any) -> None:
        """Removes feed-forward channels (indices into the current ``dim_feedforward``): smaller
        ``linear1``/``linear2``, the same output as with those hidden activations zeroed."""
        _prune_ffn_channels(self, channels)



class TransformerEncoder(Module):
    """``num_layers`` deep copies of ``encoder_layer`` (``layers.0``, ``layers.1``, …), then the
    optional final ``norm``. src ``(N, S, d_model)`` → ``(N, S, d_model)``.

    A ``mask`` equal to the causal mask is detected (``is_causal=None``) and runs the fused causal
    attention path. ``enable_nested_tensor`` and ``mask_check`` are accepted for compatibility and
    ignored (padded positions are computed, not zeroed).
    """

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int, norm: Optional[Module] = None,
                 enable_nested_tensor: bool = True, mask_check: bool = True) -> None:
        super().__init__()
        self.layers = ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, src: Tensor, mask: Any = None, src_key_padding_mask: Any = None,
                is_causal: Optional[bool] = None, norm_padding_mask: Any = None) -> Tensor:
        is_causal = _detect_is_causal_mask(mask, is_causal, src.shape[-2])
        pad = src_key_padding_mask if norm_padding_mask is None else norm_padding_mask
        x = src
        for layer in self.layers:
            x = layer(x, src_mask=mask, src_key_padding_mask=src_key_padding_mask, is_causal=is_causal,
                      norm_padding_mask=pad)
        return apply_norm(self.norm, x, pad) if self.norm is not None else x


class TransformerDecoder(Module):
    """``num_layers`` deep copies of ``decoder_layer`` (``layers.0``, …), then the optional final
    ``norm``. tgt ``(N, T, d_model)``, memory ``(N, S, d_model)`` → ``(N, T, d_model)``."""

    def __init__(self, decoder_layer: TransformerDecoderLayer, num_layers: int, norm: Optional[Module] = None) -> None:
        super().__init__()
        self.layers = ModuleList([copy.deepcopy(decoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm

    def forward(self, tgt: Tensor, memory: Tensor, tgt_mask: Any = None, memory_mask: Any = None,
                tgt_key_padding_mask: Any = None, memory_key_padding_mask: Any = None,
                tgt_is_causal: Optional[bool] = None, memory_is_causal: bool = False,
                norm_padding_mask: Any = None) -> Tensor:
        tgt_is_causal = _detect_is_causal_mask(tgt_mask, tgt_is_causal, tgt.shape[-2])
        pad = tgt_key_padding_mask if norm_padding_mask is None else norm_padding_mask
        x = tgt
        for layer in self.layers:
            x = layer(x, memory, tgt_mask=tgt_mask, memory_mask=memory_mask, tgt_key_padding_mask=tgt_key_padding_mask,
                      memory_key_padding_mask=memory_key_padding_mask, tgt_is_causal=tgt_is_causal,
                      memory_is_causal=memory_is_causal, norm_padding_mask=pad)
        return apply_norm(self.norm, x, pad) if self.norm is not None else x


class Transformer(Module):
    """The encoder-decoder Transformer, as ``torch.nn.Transformer`` (``batch_first=True``).

    ``forward(src (N, S, d_model), tgt (N, T, d_model))`` → ``(N, T, d_model)``; embeddings,
    positions and the output projection are the caller's. Masks: ``src_mask (S, S)``,
    ``tgt_mask (T, T)`` (e.g. :meth:`generate_square_subsequent_mask`), ``memory_mask (T, S)``,
    key padding masks ``(N, S)`` / ``(N, T)`` / ``(N, S)``. Every weight matrix starts from
    xavier_uniform_, as in PyTorch. Keys: ``encoder.layers.{i}.…``, ``encoder.norm.…``,
    ``decoder.layers.{i}.…``, ``decoder.norm.…``.
    """

    def __init__(self, d_model: int = 512, nhead: int = 8, num_encoder_layers: int = 6, num_decoder_layers: int = 6,
                 dim_feedforward: int = 2048, dropout: float = 0.1, activation: Activation = "relu",
                 custom_encoder: Optional[Module] = None, custom_decoder: Optional[Module] = None,
                 layer_norm_eps: float = 1e-5, batch_first: bool = True, norm_first: bool = False,
                 bias: bool = True) -> None:
        super().__init__()
        _check_layer_args(d_model, nhead, batch_first)
        if custom_encoder is not None:
            self.encoder = custom_encoder
        else:
            layer = TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                                            batch_first, norm_first, bias)
            self.encoder = TransformerEncoder(layer, num_encoder_layers,
                                              LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        if custom_decoder is not None:
            self.decoder = custom_decoder
        else:
            layer = TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                                            batch_first, norm_first, bias)
            self.decoder = TransformerDecoder(layer, num_decoder_layers,
                                              LayerNorm(d_model, eps=layer_norm_eps, bias=bias))
        self._reset_parameters()
        self.d_model = d_model
        self.nhead = nhead
        self.batch_first = batch_first

    def _reset_parameters(self) -> None:
        for p in self.parameters():
            if p.ndim > 1:
                init.xavier_uniform_(p)

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Any = None, tgt_mask: Any = None, memory_mask: Any = None,
                src_key_padding_mask: Any = None, tgt_key_padding_mask: Any = None,
                memory_key_padding_mask: Any = None, src_is_causal: Optional[bool] = None,
                tgt_is_causal: Optional[bool] = None, memory_is_causal: bool = False) -> Tensor:
        if src.ndim == 3 and src.shape[0] != tgt.shape[0]:
            raise ShapeError(f"the batch number of src and tgt must be equal, got {src.shape[0]} and {tgt.shape[0]}")
        if src.shape[-1] != self.d_model or tgt.shape[-1] != self.d_model:
            raise ShapeError(f"the feature number of src and tgt must be equal to d_model ({self.d_model}), "
                             f"got {src.shape[-1]} and {tgt.shape[-1]}")
        memory = self.encoder(src, mask=src_mask, src_key_padding_mask=src_key_padding_mask, is_causal=src_is_causal)
        return self.decoder(tgt, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                            tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask,
                            tgt_is_causal=tgt_is_causal, memory_is_causal=memory_is_causal)

    @staticmethod
    def generate_square_subsequent_mask(sz: int) -> np.ndarray:
        """The causal mask ``(sz, sz)``: float32 NumPy array, ``-inf`` above the diagonal, ``0``
        elsewhere."""
        return generate_square_subsequent_mask(sz)
