"""What a model offers the decoder (PEP 544 protocols): the models implement these, and
:mod:`tfm_rs.decode` works with anything that does, so decoding never imports a model class.

* :class:`DecoderSpec` / :class:`DecoderLayerSpec`: a model's decoder stack described by its
  own modules (attention, feed-forward, norms, embeddings, output head) — what the native
  engine needs, in the engine's order.
* :class:`DecodableModel`: a model that can describe its decoder (:meth:`decoder_spec`).
* :class:`EncoderDecoderModel`: also checks source ids and encodes them into the memory the
  decoder cross-attends to (:class:`~tfm_rs.models.Seq2SeqTransformer`).
* :class:`CausalLanguageModel`: a decoder-only model that checks prompts
  (:class:`~tfm_rs.models.GPT`, :class:`~tfm_rs.models.Llama`).
* :class:`EngineWeightsModel`: a model that builds the engine's weights itself, because a
  :class:`DecoderSpec` cannot describe it (:class:`~tfm_rs.models.Llama`: rotary positions,
  grouped key/value heads, SwiGLU).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Protocol, Sequence, runtime_checkable

import numpy as np

from tfm_rs import nn
from tfm_rs._core import DecoderWeights, Tensor

__all__ = ["CausalLanguageModel", "DecodableModel", "DecoderLayerSpec", "DecoderSpec", "EncoderDecoderModel",
           "EngineWeightsModel"]


@dataclass(frozen=True)
class DecoderLayerSpec:
    """One decoder block: self-attention, cross-attention (``None`` in a decoder-only model), the
    feed-forward ``linear1``/``linear2``, and the LayerNorm of each sublayer. Each attention's
    ``num_heads`` is what it keeps after ``prune_heads`` (it may differ between layers, and
    between a layer's self- and cross-attention); its ``head_dim`` is the model's."""

    self_attn: nn.MultiheadAttention
    linear1: nn.Linear
    linear2: nn.Linear
    norm_self: nn.LayerNorm
    norm_ff: nn.LayerNorm
    cross_attn: Optional[nn.MultiheadAttention] = None
    norm_cross: Optional[nn.LayerNorm] = None


@dataclass(frozen=True)
class DecoderSpec:
    """A decoder stack: token ``embed`` (rows = vocabulary) times ``embed_scale`` plus
    ``positions`` (rows = positions), the ``layers`` (pre-LN when ``norm_first``), an optional
    ``final_norm``, and the output ``head``. ``activation``: "relu", "gelu" or "gelu_tanh"."""

    layers: Sequence[DecoderLayerSpec]
    embed: Tensor
    embed_scale: float
    positions: Tensor
    head: nn.Linear
    final_norm: Optional[nn.LayerNorm]
    norm_first: bool
    activation: str


@runtime_checkable
class DecodableModel(Protocol):
    """A model whose decoder the native engine can run. ``max_len``: the longest sequence it reads;
    ``pad_id``: its padding id (never generated), or ``None``."""

    max_len: int
    pad_id: Optional[int]
    training: bool

    def decoder_spec(self) -> DecoderSpec:
        """The decoder's modules; tensors are the model's own (no copy)."""
        ...

    def train(self, mode: bool = True) -> Any:
        ...

    def eval(self) -> Any:
        ...


@runtime_checkable
class EncoderDecoderModel(DecodableModel, Protocol):
    """An encoder-decoder: decoding starts from ``bos_id`` and stops at ``eos_id``."""

    bos_id: int
    eos_id: int

    def source_ids(self, src_ids: Any) -> np.ndarray:
        """``src_ids`` checked (vocabulary, ``max_len``, no empty row) as int64 ``(B, S)``."""
        ...

    def encoder_memory(self, src: np.ndarray, padding_mask: np.ndarray) -> Tensor:
        """The encoder's output ``(B, S, d_model)`` for checked ``src`` and its padding mask
        (True = pad)."""
        ...


@runtime_checkable
class CausalLanguageModel(Protocol):
    """A decoder-only language model; decoding continues prompts. Its engine weights come from
    :meth:`DecodableModel.decoder_spec` or, for an :class:`EngineWeightsModel`, from the model."""

    max_len: int
    pad_id: Optional[int]
    training: bool

    def prompt_ids(self, prompt: Any, name: str) -> np.ndarray:
        """One prompt checked (vocabulary, ``max_len``, not empty) as int64 ``(1, T)``; ``name``
        says which prompt in error messages."""
        ...

    def train(self, mode: bool = True) -> Any:
        ...

    def eval(self) -> Any:
        ...


@runtime_checkable
class EngineWeightsModel(Protocol):
    """A model that builds the native engine's weights itself."""

    def decoder_weights(self) -> DecoderWeights:
        """The engine's weights; tensors are the model's own where the engine can share them."""
        ...
