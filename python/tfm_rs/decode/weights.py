"""A model's decoder as the native :class:`tfm_rs._core.DecoderWeights`: the tensors are shared
with the model (no copy), so build it right before decoding — an optimizer step afterwards
gives the model new storage and leaves the old weights behind."""

from __future__ import annotations

from typing import Any, Dict, Optional, Tuple

from tfm_rs._core import DecoderWeights, InvalidArgumentError
from tfm_rs import nn

__all__ = ["decoder_weights"]


def _linear(m: nn.Linear) -> Tuple[Any, Any]:
    return (m.weight, m.bias)


def _norm(m: Optional[nn.LayerNorm]) -> Optional[Tuple[Any, Any]]:
    return None if m is None else (m.weight, m.bias)


def _attention(m: nn.MultiheadAttention, owner: str) -> Tuple[Tuple[Any, Any], Tuple[Any, Any]]:
    if m.in_proj_weight is None:
        raise InvalidArgumentError(f"{owner}: decoding needs packed q/k/v projections (kdim == vdim == embed_dim)")
    return (m.in_proj_weight, m.in_proj_bias), _linear(m.out_proj)


def _activation(model: Any) -> str:
    act = model.config.get("activation", "relu")
    if act not in ("relu", "gelu"):
        raise InvalidArgumentError(f"{type(model).__name__}: decoding supports relu and gelu, not {act!r}")
    return act


def decoder_weights(model: Any) -> DecoderWeights:
    """The decoder stack of a :class:`~tfm_rs.models.Seq2SeqTransformer` or a
    :class:`~tfm_rs.models.GPT`, for the native decoding engine."""
    from tfm_rs.models import GPT, Seq2SeqTransformer

    owner = type(model).__name__
    layers = []
    if isinstance(model, Seq2SeqTransformer):
        decoder = model.transformer.decoder
        for layer in decoder.layers:
            self_in, self_out = _attention(layer.self_attn, owner)
            cross_in, cross_out = _attention(layer.multihead_attn, owner)
            layers.append(dict(self_in=self_in, self_out=self_out, cross_in=cross_in, cross_out=cross_out,
                               norm_self=_norm(layer.norm1), norm_cross=_norm(layer.norm2),
                               norm_ff=_norm(layer.norm3), ff1=_linear(layer.linear1), ff2=_linear(layer.linear2)))
        spec: Dict[str, Any] = dict(
            nhead=decoder.layers[0].self_attn.num_heads, norm_first=model.config["norm_first"],
            eps=float(decoder.layers[0].norm1.eps), embed=model.tgt_embed.weight,
            embed_scale=float(model.emb_scale), positions=model.pos.pe, final_norm=_norm(decoder.norm),
            head=_linear(model.generator))
    elif isinstance(model, GPT):
        for layer in model.layers:
            self_in, self_out = _attention(layer.self_attn, owner)
            layers.append(dict(self_in=self_in, self_out=self_out, cross_in=None, cross_out=None,
                               norm_self=_norm(layer.norm1), norm_cross=None, norm_ff=_norm(layer.norm2),
                               ff1=_linear(layer.linear1), ff2=_linear(layer.linear2)))
        spec = dict(nhead=model.layers[0].self_attn.num_heads, norm_first=True, eps=float(model.layers[0].norm1.eps),
                    embed=model.tok_embed.weight, embed_scale=1.0, positions=model.pos_embed.weight,
                    final_norm=_norm(model.norm), head=_linear(model.head))
    else:
        raise InvalidArgumentError(f"decoding supports Seq2SeqTransformer and GPT models, got {owner}")
    spec["layers"] = layers
    spec["activation"] = _activation(model)
    return DecoderWeights(spec)
