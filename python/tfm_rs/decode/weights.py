"""A model's decoder as the native :class:`tfm_rs._core.DecoderWeights`: the tensors are shared
with the model (no copy), so build it right before decoding — an optimizer step afterwards
gives the model new storage and leaves the old weights behind."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from tfm_rs import nn
from tfm_rs._core import DecoderWeights, InvalidArgumentError
from tfm_rs.decode.protocol import DecodableModel, DecoderLayerSpec

__all__ = ["decoder_weights"]


def _linear(m: nn.Linear) -> Tuple[Any, Any]:
    return (m.weight, m.bias)


def _norm(m: Optional[nn.Module]) -> Optional[Tuple[Any, Any]]:
    if m is not None and not isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
        raise InvalidArgumentError(f"the native decoder runs LayerNorm and RMSNorm models only, this one has "
                                   f"{type(m).__name__} (norm='batch'); evaluate it with teacher forcing "
                                   "(forward/loss)")
    return None if m is None else (m.weight, getattr(m, "bias", None))


def _norm_kind(spec: Any, owner: str) -> Tuple[float, bool]:
    """``(eps, centred)`` shared by every norm of the decoder: LayerNorm's, or RMSNorm's (whose
    ``eps=None`` is float32's machine epsilon, as in :func:`tfm_rs.functional.rms_norm`)."""
    norms = [m for layer in spec.layers for m in (layer.norm_self, layer.norm_cross, layer.norm_ff, spec.final_norm)
             if m is not None]
    for m in norms:
        _norm(m)
    kinds = {(type(m), m.eps) for m in norms}
    if len(kinds) != 1:
        raise InvalidArgumentError(f"{owner}: decoding needs one kind of norm with one eps, got "
                                   f"{sorted(map(str, kinds))}")
    kind, eps = kinds.pop()
    if kind is nn.RMSNorm:
        return (float(np.finfo(np.float32).eps) if eps is None else float(eps)), False
    return float(eps), True


def _attention(m: Optional[nn.MultiheadAttention], owner: str) -> Tuple[Optional[int], Any, Any]:
    """``(heads, in_proj, out_proj)`` of one attention; a layer that lost heads (``prune_heads``)
    has fewer of them and smaller matrices, which the engine takes as they are (and so decodes
    faster). A decoder-only layer has no cross-attention: ``(None, None, None)``."""
    if m is None:
        return None, None, None
    if m.in_proj_weight is None:
        raise InvalidArgumentError(f"{owner}: decoding needs packed q/k/v projections (kdim == vdim == embed_dim)")

    return m.num_heads, (m.in_proj_weight, m.in_proj_bias), _linear(m.out_proj)


def _self_attention(m: nn.MultiheadAttention, owner: str) -> Any:
    """The engine's name for a decoder layer's (causal) self-attention: ``"dense"``,
    ``"linear"`` (a recurrent state), or ``("window", left, global)`` (a rolling cache; the
    decoder is causal, so a window's right side does not matter). Block-sparse and LSH layers
    have no incremental form here."""
    kind = m.attention
    if kind.name == "window":
        return ("window", kind["left"], kind["global"])
    if kind.name not in ("dense", "linear"):
        raise InvalidArgumentError(f"{owner}: the native decoder runs dense, sliding-window and linear attention; "
                                   f"this model has {kind} layers (evaluate it with forward/loss)")
    return kind.name


def _layer(layer: DecoderLayerSpec, owner: str) -> Dict[str, Any]:
    self_heads, self_in, self_out = _attention(layer.self_attn, owner)
    cross_heads, cross_in, cross_out = _attention(layer.cross_attn, owner)
    return dict(attention=_self_attention(layer.self_attn, owner), self_heads=self_heads, cross_heads=cross_heads,
                self_in=self_in, self_out=self_out, cross_in=cross_in, cross_out=cross_out,
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
    if spec.activation not in ("relu", "gelu", "gelu_tanh"):
        raise InvalidArgumentError(f"{owner}: decoding supports relu, gelu and gelu_tanh, not {spec.activation!r}")
    first = spec.layers[0]
    widths = {m.head_dim for layer in spec.layers for m in (layer.self_attn, layer.cross_attn) if m is not None}
    if len(widths) != 1:
        raise InvalidArgumentError(f"{owner}: decoding needs one head width in every attention, got {sorted(widths)}")
    eps, centred = _norm_kind(spec, owner)
    return DecoderWeights(dict(
        head_dim=first.self_attn.head_dim, norm_first=bool(spec.norm_first),
        eps=eps, centred=centred,
        embed=spec.embed, embed_scale=float(spec.embed_scale), positions=spec.positions,
        final_norm=_norm(spec.final_norm), head=_linear(spec.head), activation=spec.activation,
        layers=[_layer(layer, owner) for layer in spec.layers]))
