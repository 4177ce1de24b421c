"""A Vision Transformer (Dosovitskiy et al., 2021): an image cut into ``p×p`` patches, each
patch flattened and projected to ``d_model`` (the patch embedding, a linear layer — the same as
a ``p×p`` convolution with stride ``p``), a learned class token prepended, learned positions
added, a pre-LN Transformer encoder, and a classifier on the class token's final state.

Shapes: ``forward(images (B, C, H, W) or (B, H, W))`` → logits ``(B, num_classes)``;
``patches`` → ``(B, N, C·p·p)`` with ``N = (H/p)·(W/p)`` in row-major patch order.
"""

from __future__ import annotations

from typing import Any, Dict, Mapping

import numpy as np

from tfm_rs import cat, nn, tensor
from tfm_rs._core import InvalidArgumentError, ShapeError, Tensor
from tfm_rs.autograd import no_grad
from tfm_rs.models._common import check_config_arch

__all__ = ["ViT"]


class ViT(nn.Module):
    """Args: image_size (square side), patch_size, in_channels, num_classes, d_model, nhead,
    num_layers, dim_feedforward, dropout."""

    arch = "ViT"

    def __init__(self, image_size: int, patch_size: int, num_classes: int, in_channels: int = 1,
                 d_model: int = 64, nhead: int = 4, num_layers: int = 4, dim_feedforward: int = 128,
                 dropout: float = 0.1) -> None:
        super().__init__()
        if patch_size < 1 or image_size < 1 or image_size % patch_size:
            raise InvalidArgumentError(f"ViT: image_size ({image_size}) must be a positive multiple of patch_size "
                                       f"({patch_size})")
        if num_classes < 1 or in_channels < 1:
            raise InvalidArgumentError("ViT: num_classes and in_channels must be positive")
        self._config: Dict[str, Any] = dict(
            image_size=int(image_size), patch_size=int(patch_size), num_classes=int(num_classes),
            in_channels=int(in_channels), d_model=int(d_model), nhead=int(nhead), num_layers=int(num_layers),
            dim_feedforward=int(dim_feedforward), dropout=float(dropout))
        self.image_size, self.patch_size, self.in_channels = int(image_size), int(patch_size), int(in_channels)
        self.num_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(in_channels * patch_size * patch_size, d_model)
        self.cls_token = nn.Parameter(np.zeros((1, 1, d_model), np.float32))
        self.pos_embed = nn.Parameter(np.zeros((1, self.num_patches + 1, d_model), np.float32))
        nn.init.normal_(self.cls_token, 0.0, 0.02)
        nn.init.normal_(self.pos_embed, 0.0, 0.02)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, "gelu", 1e-6, True, norm_first=True)
            for _ in range(num_layers)])
        self.norm = nn.LayerNorm(d_model, eps=1e-6)
        self.head = nn.Linear(d_model, num_classes)

    @property
    def config(self) -> Dict[str, Any]:
        return {"arch": self.arch, **self._config}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ViT":
        return cls(**check_config_arch(config, cls.arch))

    def patches(self, images: Any) -> np.ndarray:
        """``images`` ``(B, C, H, W)`` (or ``(B, H, W)`` with one channel) → flattened patches
        ``(B, N, C·p·p)`` (float32)."""
        x = np.asarray(images.numpy() if isinstance(images, Tensor) else images, dtype=np.float32)
        if x.ndim == 3 and self.in_channels == 1:
            x = x[:, None]
        s, p = self.image_size, self.patch_size
        if x.ndim != 4 or x.shape[1:] != (self.in_channels, s, s):
            raise ShapeError(f"ViT: images must be (B, {self.in_channels}, {s}, {s}), got {x.shape}")
        B, C = x.shape[:2]
        g = s // p
        x = x.reshape(B, C, g, p, g, p).transpose(0, 2, 4, 1, 3, 5)   # (B, gh, gw, C, p, p)
        return np.ascontiguousarray(x.reshape(B, g * g, C * p * p))

    def embed(self, images: Any) -> Tensor:
        """Patch embeddings with the class token first and positions added: ``(B, N + 1, d)``."""
        x = self.patch_embed(tensor(self.patches(images)))              # (B, N, d)
        B, _, d = x.shape
        cls = self.cls_token + tensor(np.zeros((B, 1, d), np.float32))  # (B, 1, d)
        return self.drop(cat([cls, x], dim=1) + self.pos_embed)

    def forward(self, images: Any) -> Tensor:
        x = self.embed(images)
        for layer in self.layers:
            x = layer(x)
        return self.head(self.norm(x)[:, 0])                             # (B, classes)

    def attention_maps(self, image: Any) -> np.ndarray:
        """Attention weights of one image, ``(layers, heads, N + 1, N + 1)`` (eval mode): row 0 is
        what the class token attends to."""
        was_training = self.training
        self.eval()
        maps = []
        try:
            with no_grad():
                x = self.embed(np.asarray(image)[None])
                for layer in self.layers:
                    h = layer.norm1(x)
                    _, w = layer.self_attn(h, h, h, need_weights=True, average_attn_weights=False)
                    maps.append(w.numpy()[0])
                    x = layer(x)
        finally:
            self.train(was_training)
        return np.stack(maps)
