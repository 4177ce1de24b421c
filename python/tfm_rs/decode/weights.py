"""A model's decoder as the native :class:`tfm_rs._core.DecoderWeights`: the tensors are shared
with the model (no copy), so build it right before decoding — an optimizer step afterwards
gives the model new storage and leaves the old weights behind."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from tfm_rs import nn
import numpy as np

from tfm_rs._core import DecoderWeights, InvalidArgumentError, Tensor
from tfm_rs.decode.protocol import DecodableModel, DecoderLayerSpec

__all__ = ["decoder_weights"]


def _linear(m: nn.Linear) -> Tuple[Any, Any]:
    return (m.weight, m.bias)


def _norm(m: Optional[nn.LayerNorm]) -> Optional[Tuple[Any, Any]]:
    return None if m is None else (m.weight, m.bias)


def _attention(m: Optional[nn.MultiheadAttention], owner: str) -> Tuple[Any, Any]:
    # A decoder-only layer has no cross-attention: (None, None).
    if m is None:
        return None, None
    if m.in_proj_weight is None:
        raise InvalidArgumentError(f"{owner}: decoding needs packed q/k/v projections (kdim == vdim == embed_dim)")
    if m.num_heads * m.head_dim != m.embed_dim:
        return _restore_pruned_heads(m)
    return (m.in_proj_weight, m.in_proj_bias), _linear(m.out_proj)


def _restore_pruned_heads(m: nn.MultiheadAttention) -> Tuple[Any, Any]:
    """The projections of a layer that lost heads (``prune_heads``), with zero rows and columns
    where they were: the native decoder takes one head count for all layers, and a zero head
    adds exactly nothing (its values are 0 and so is its slice of ``out_proj``). Copies, so
    such layers decode correctly but no faster than unpruned ones."""
    E, Dh = m.embed_dim, m.head_dim
    kept = [h for h in range(E // Dh) if h not in m.pruned_heads]
    rows = np.concatenate([np.arange(h * Dh, (h + 1) * Dh) for h in kept])
    w = np.zeros((3, E, E), np.float32)
    w[:, rows] = m.in_proj_weight.numpy().reshape(3, len(rows), E)
    b = None
    if m.in_proj_bias is not None:
        b = np.zeros((3, E), np.float32)
        b[:, rows] = m.in_proj_bias.numpy().reshape(3, len(rows))
        b = _on(b.reshape(3 * E), m.in_proj_weight.device)
    out = np.zeros((E, E), np.float32)
    out[:, rows] = m.out_proj.weight.numpy()
    return ((_on(w.reshape(3 * E, E), m.in_proj_weight.device), b),
            (_on(out, m.in_proj_weight.device), m.out_proj.bias))


def _on(a: np.ndarray, device: str) -> Tensor:
    return Tensor(a).to(device)


def _layer(layer: DecoderLayerSpec, owner: str) -> Dict[str, Any]:
    self_in, self_out = _attention(layer.self_attn, owner)
    cross_in, cross_out = _attention(layer.cross_attn, owner)
    return dict(self_in=self_in, self_out=self_out, cross_in=cross_in, cross_out=cross_out,
                norm_self=_norm(layer.norm_self), norm_cross=_norm(layer.norm_cross), norm_ff=_norm(layer.norm_ff),
                ff1=_linear(layer.linear1), ff2=_linear(layer.linear2))


def decoder_weights(model: DecodableModel) -> DecoderWeights:
    """The decoder stack of ``model`` (anything with ``decoder_spec()``, such as
    :class:`~tfm_rs.models.Seq2SeqTransformer` or :class:`~tfm_rs.models.GPT`), for the native
    decoding engine."""
    owner = type(model).__name__
    if not isinstance(model, DecodableModel):
        raise InvalidArgumentError(f"decoding needs a model with decoder_spec() (tfm_rs.decode.DecodableModel), "
                                   f"got {owner}")
    spec = model.decoder_spec()
    if not spec.layers:
        raise InvalidArgumentError(f"{owner}: the decoder has no layers")
    if spec.activation not in ("relu", "gelu"):
        raise InvalidArgumentError(f"{owner}: decoding supports relu and gelu, not {spec.activation!r}")
    first = spec.layers[0]
    return DecoderWeights(dict(
        nhead=first.self_attn.embed_dim // first.self_attn.head_dim, norm_first=bool(spec.norm_first),
        eps=float(first.norm_self.eps),
        embed=spec.embed, embed_scale=float(spec.embed_scale), positions=spec.positions,
        final_norm=_norm(spec.final_norm), head=_linear(spec.head), activation=spec.activation,
        layers=[_layer(layer, owner) for layer in spec.layers]))
