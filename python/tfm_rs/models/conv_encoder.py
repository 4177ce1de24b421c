"""A convolutional sequence encoder in the style of ConvS2S (Gehring et al., 2017): token plus
learned position embeddings, a linear map to ``channels``, then ``num_layers`` residual blocks
``x ← (x + GLU(conv(dropout(x)))) · √½`` with centred (``padding="same"``) kernels, and a linear
map back to ``embed_dim``.

Each block widens the receptive field by ``kernel_size − 1`` positions, so position t of the
output depends on inputs ``t ± num_layers·(kernel_size − 1)/2`` only (``receptive_field``):
the contrast with self-attention's one-layer global view that the paper's table 1 draws. Padded
positions are zeroed before every convolution and in the output, so a sentence encodes the
same alone or padded in a batch. The output ``(B, S, embed_dim)`` serves as a seq2seq encoder's memory or, pooled, as
a classifier's features (``pooled``).

The residual blocks alone are :class:`ConvBlocks`, which also serves as the encoder of
``Seq2SeqTransformer(encoder="conv")``: convolutions in place of self-attention, with the
Transformer's embeddings, decoder and cross-attention unchanged.
"""

from __future__ import annotations

import math
from typing import Any, Tuple

import numpy as np

import tfm_rs
from tfm_rs import nn
from tfm_rs._core import InvalidArgumentError, Tensor
from tfm_rs.models._common import as_ids

__all__ = ["ConvBlocks", "ConvEncoder"]


def glu(x: Tensor, dim: int = -1) -> Tensor:
    """Gated linear unit: the first half of ``dim`` times the sigmoid of the second."""
    n = x.shape[dim] // 2
    a = x.transpose(dim, -1)[..., :n]
    b = x.transpose(dim, -1)[..., n:]
    return (a * ((b * 0.5).tanh() * 0.5 + 0.5)).transpose(dim, -1)


class ConvBlocks(nn.Module):
    """ConvS2S's residual blocks on states ``(B, S, channels)`` → ``(B, S, channels)``:
    ``num_layers`` times ``x ← (x + GLU(conv(dropout(x)))) · √½``, each convolution centred and
    ``kernel_size`` wide (odd), padded positions zeroed before every convolution and in the output.

    Called as a :class:`tfm_rs.nn.TransformerEncoder` is (``src_key_padding_mask`` /
    ``norm_padding_mask``: True = pad), so it can stand in for one; it has no attention ``layers``.
    """

    layers: Tuple[()] = ()
    norm = None

    def __init__(self, channels: int, num_layers: int, kernel_size: int = 3, dropout: float = 0.1) -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise InvalidArgumentError(f"ConvBlocks: kernel_size must be odd and positive, got {kernel_size}")
        if num_layers < 1:
            raise InvalidArgumentError(f"ConvBlocks: num_layers must be at least 1, got {num_layers}")
        if channels < 1:
            raise InvalidArgumentError(f"ConvBlocks: channels must be positive, got {channels}")
        self.num_layers, self.kernel_size = int(num_layers), int(kernel_size)
        self.convs = nn.ModuleList([nn.Conv1d(channels, 2 * channels, kernel_size, padding="same")
                                    for _ in range(num_layers)])
        self.dropout = nn.Dropout(dropout)

    @property
    def receptive_field(self) -> int:
        """Input positions one output position depends on."""
        return 1 + self.num_layers * (self.kernel_size - 1)

    def forward(self, src: Tensor, mask: Any = None, src_key_padding_mask: Any = None, is_causal: Any = None,
                norm_padding_mask: Any = None) -> Tensor:
        if mask is not None or is_causal:
            raise InvalidArgumentError("ConvBlocks: attention masks do not apply to convolutions; "
                                       "pass the padding mask only")
        pad = src_key_padding_mask if norm_padding_mask is None else norm_padding_mask
        keep = None
        if pad is not None and np.asarray(pad).any():
            keep = tfm_rs.tensor((~np.asarray(pad, dtype=bool)).astype(np.float32)[:, None, :])  # (B, 1, S)
        x = src.transpose(1, 2)  # (B, C, S)
        scale = math.sqrt(0.5)
        for conv in self.convs:
            if keep is not None:
                x = x * keep
            x = (x + glu(conv(self.dropout(x)), 1)) * scale
        if keep is not None:
            x = x * keep
        return x.transpose(1, 2)


class ConvEncoder(nn.Module):
    """ids ``(B, S)`` → states ``(B, S, embed_dim)`` (see the module docstring); ``kernel_size`` odd."""

    def __init__(self, vocab_size: int, embed_dim: int = 256, channels: int = 256, num_layers: int = 4,
                 kernel_size: int = 3, dropout: float = 0.1, max_len: int = 1024, pad_id: int = 0) -> None:
        super().__init__()
        self.vocab_size, self.max_len, self.pad_id = int(vocab_size), int(max_len), int(pad_id)
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_id)
        self.positions = nn.Embedding(max_len, embed_dim)
        self.to_channels = nn.Linear(embed_dim, channels)
        self.blocks = ConvBlocks(channels, num_layers, kernel_size, dropout)
        self.to_embed = nn.Linear(channels, embed_dim)
        self.dropout = nn.Dropout(dropout)

    @property
    def receptive_field(self) -> int:
        """Input positions one output position depends on."""
        return self.blocks.receptive_field

    def forward(self, ids: Any) -> Tensor:
        src = as_ids(ids, "ids", self.vocab_size, self.max_len, type(self).__name__)
        pad = src == self.pad_id
        pos = np.broadcast_to(np.arange(src.shape[1]), src.shape)
        x = self.dropout(self.embed(src) + self.positions(pos))
        x = self.blocks(self.to_channels(x), norm_padding_mask=pad)
        return self.to_embed(x) * tfm_rs.tensor((~pad).astype(np.float32)[:, :, None])

    def pooled(self, ids: Any) -> Tuple[Tensor, np.ndarray]:
        """The mean of the states over each sequence's real tokens ``(B, embed_dim)``, and the mask."""
        src = as_ids(ids, "ids", self.vocab_size, self.max_len, type(self).__name__)
        keep = (src != self.pad_id).astype(np.float32)
        states = self(src)
        weights = tfm_rs.tensor((keep / np.maximum(keep.sum(axis=1, keepdims=True), 1.0))[:, :, None])
        return (states * weights).sum(1), keep
