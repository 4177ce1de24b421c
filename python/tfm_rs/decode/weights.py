"""A model's decoder as the native :class:`tfm_rs._core.DecoderWeights`: the tensors are shared
with the model (no copy), so build it right before decoding — an optimizer step afterwards
gives the model new storage and leaves the old weights behind."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

import numpy as np

from tfm_rs import nn
from tfm_rs._core import DecoderWeights, InvalidArgumentError, Tensor
from tfm_rs.decode.protocol import DecodableModel, DecoderLayerSpec
from tfm_rs.nn.batch_norm import MaskedBatchNorm1d

__all__ = ["decoder_weights"]


def _linear(m: nn.Linear) -> Tuple[Any, Any]:
    return (m.weight, m.bias)


def _norm(m: Optional[nn.Module]) -> Optional[Tuple[Any, Any]]:
    """A norm's ``(weight, bias)`` for the engine. An eval-mode batch norm is a fixed per-channel
    affine map, so its running statistics and eps are folded in: ``x·s + (b − mean·s)`` with
    ``s = w / √(var + eps)``."""
    if m is None:
        return None
    if isinstance(m, MaskedBatchNorm1d):
        if not m.track_running_stats:
            raise InvalidArgumentError("the native decoder runs batch norm with its running statistics; this one "
                                       "has track_running_stats=False (evaluate it with teacher forcing: forward/loss)")
        mean, var = m.running_mean.numpy().astype(np.float64), m.running_var.numpy().astype(np.float64)
        w = m.weight.numpy() if m.affine else 1.0
        b = m.bias.numpy() if m.affine else 0.0
        scale = w / np.sqrt(var + m.eps)
        return (Tensor(scale.astype(np.float32)), Tensor((b - mean * scale).astype(np.float32)))
    return (m.weight, getattr(m, "bias", None))


_KINDS = {nn.LayerNorm: "layer", nn.RMSNorm: "rms", MaskedBatchNorm1d: "affine"}


def _norm_kind(spec: Any, owner: str) -> Tuple[float, str]:
    """``(eps, kind)`` shared by every norm of the decoder: LayerNorm's, RMSNorm's (whose
    ``eps=None`` is float32's machine epsilon, as in :func:`tfm_rs.functional.rms_norm`), or
    ``"affine"`` for batch norm (its eps is folded into the weights)."""
    norms = [m for layer in spec.layers for m in (layer.norm_self, layer.norm_cross, layer.norm_ff, spec.final_norm)
             if m is not None]
    for m in norms:
        if type(m) not in _KINDS:
            raise InvalidArgumentError(f"{owner}: the native decoder runs LayerNorm, RMSNorm and MaskedBatchNorm1d "
                                       f"(norm='batch'), not {type(m).__name__}")
    kinds = {type(m) for m in norms}
    epsilons = {m.eps for m in norms}
    if len(kinds) != 1 or (len(epsilons) != 1 and kinds != {MaskedBatchNorm1d}):
        raise InvalidArgumentError(f"{owner}: decoding needs one kind of norm with one eps, got "
                                   f"{sorted(f'{type(m).__name__}(eps={m.eps})' for m in norms)}")
    kind, eps = kinds.pop(), norms[0].eps
    if kind is nn.RMSNorm and eps is None:
        eps = np.finfo(np.float32).eps
    return float(eps), _KINDS[kind]


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
    if spec.activation not in ("relu", "gelu", "gelu_tanh", "silu"):
        raise InvalidArgumentError(f"{owner}: decoding supports relu, gelu, gelu_tanh and silu, not "
                                   f"{spec.activation!r}")
    first = spec.layers[0]
    widths = {m.head_dim for layer in spec.layers for m in (layer.self_attn, layer.cross_attn) if m is not None}
    if len(widths) != 1:
        raise InvalidArgumentError(f"{owner}: decoding needs one head width in every attention, got {sorted(widths)}")
    eps, norm = _norm_kind(spec, owner)
    return DecoderWeights(dict(
        head_dim=first.self_attn.head_dim, norm_first=bool(spec.norm_first),
        eps=eps, norm=norm,
        embed=spec.embed, embed_scale=float(spec.embed_scale), positions=spec.positions,
        final_norm=_norm(spec.final_norm), head=_linear(spec.head), activation=spec.activation,
        layers=[_layer(layer, owner) for layer in spec.layers]))
