"""A model's decoder as the native :class:`tfm_rs._core.DecoderWeights`: the tensors are shared
with the model (no copy), so build it right before decoding — an optimizer step afterwards
gives the model new storage and leaves the old weights behind."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from tfm_rs import nn
from tfm_rs._core import DecoderWeights, InvalidArgumentError
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
    return (m.in_proj_weight, m.in_proj_bias), _linear(m.out_proj)


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
        nhead=first.self_attn.num_heads, norm_first=bool(spec.norm_first), eps=float(first.norm_self.eps),
        embed=spec.embed, embed_scale=float(spec.embed_scale), positions=spec.positions,
        final_norm=_norm(spec.final_norm), head=_linear(spec.head), activation=spec.activation,
        layers=[_layer(layer, owner) for layer in spec.layers]))
