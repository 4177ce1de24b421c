"""A decoder-only causal language model (GPT-2's layout): token + learned position embeddings,
dropout, ``num_layers`` pre-LN self-attention blocks with causal masks, a final LayerNorm and an
output head tied to the token embedding.

Shapes: ``forward(ids (B, T))`` → logits ``(B, T, V)``; ``loss(ids (B, T))`` → scalar mean
next-token cross-entropy (predicting ``ids[:, 1:]`` from ``ids[:, :-1]``).
"""

from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Optional

import numpy as np

import tfm_rs.functional as F
from tfm_rs import decode as decoding
from tfm_rs import nn
from tfm_rs._core import InvalidArgumentError, ShapeError, Tensor
from tfm_rs.decode import DecoderLayerSpec, DecoderSpec, GenerationOutput
from tfm_rs.models._common import as_ids, right_padded, set_attention
from tfm_rs.models._explain import Explainable, single_stack_rows
from tfm_rs.models._pruning import StructuredPruning, build_from_config
from tfm_rs.models._reduction import (FfnRank, embedding_table, init_token_embedding, make_token_embedding,
                                       reduction_config, set_ffn_rank, share_stack)
from tfm_rs.nn.norms import apply_norm, check_norm
from tfm_rs.pretrained.gpt2 import load_gpt2, save_gpt2

__all__ = ["GPT"]


class GPT(nn.Module, StructuredPruning, Explainable):
    """Causal Transformer language model.

    Args:
        vocab_size: tokens.
        d_model, nhead, num_layers: width, heads, blocks.
        dim_feedforward: inner FFN width (default ``4·d_model``).
        dropout: on embeddings, attention weights and residual branches.
        max_len: longest sequence (rows of the learned position table).
        tie_weights: output head shares the token embedding matrix.
        pad_id: optional padding id: pad keys are masked and pad targets ignored by :meth:`loss`.
        activation: "gelu", "gelu_tanh" (GPT-2's), "relu" or "silu".
        norm, embedding_dim, hash_buckets, num_hashes, share_layers, ffn_rank: as
            :class:`~tfm_rs.models.Seq2SeqTransformer`'s (a factorized or hashed embedding needs
            ``tie_weights=False``). Batch norm's statistics span every position of the batch, so
            with ``norm="batch"`` a position's training output depends on later tokens.

    Submodules: ``tok_embed``, ``pos_embed`` (:class:`~tfm_rs.nn.LearnedPositionalEmbedding`),
    ``drop``, ``layers`` (pre-LN :class:`~tfm_rs.nn.TransformerEncoderLayer` s), ``norm``, ``head``.
    """

    arch = "GPT"

    def __init__(self, vocab_size: int, d_model: int = 768, nhead: int = 12, num_layers: int = 12,
                 dim_feedforward: Optional[int] = None, dropout: float = 0.1, max_len: int = 1024,
                 tie_weights: bool = True, pad_id: Optional[int] = None, activation: str = "gelu",
                 layer_norm_eps: float = 1e-5, norm: str = "layer", embedding_dim: Optional[int] = None,
                 hash_buckets: Optional[int] = None, num_hashes: int = 2, share_layers: bool = False,
                 ffn_rank: FfnRank = None, attention: Any = "dense") -> None:
        super().__init__()
        if vocab_size <= 0:
            raise InvalidArgumentError(f"GPT: vocab_size must be positive, got {vocab_size}")
        if tie_weights and (embedding_dim is not None or hash_buckets is not None):
            raise InvalidArgumentError("GPT: a tied head needs a plain embedding table; set tie_weights=False with "
                                       "embedding_dim or hash_buckets")
        if d_model <= 0 or nhead <= 0 or d_model % nhead != 0:
            raise InvalidArgumentError(f"GPT: d_model ({d_model}) must be a positive multiple of nhead ({nhead})")
        if num_layers < 1 or max_len < 1:
            raise InvalidArgumentError(f"GPT: num_layers ({num_layers}) and max_len ({max_len}) must be ≥ 1")
        if pad_id is not None and not 0 <= pad_id < vocab_size:
            raise InvalidArgumentError(f"GPT: pad_id={pad_id} outside the vocabulary [0, {vocab_size})")
        dim_feedforward = 4 * d_model if dim_feedforward is None else int(dim_feedforward)
        self._config: Dict[str, Any] = dict(
            vocab_size=int(vocab_size), d_model=int(d_model), nhead=int(nhead), num_layers=int(num_layers),
            dim_feedforward=dim_feedforward, dropout=float(dropout), max_len=int(max_len),
            tie_weights=bool(tie_weights), pad_id=None if pad_id is None else int(pad_id),
            activation=str(activation), layer_norm_eps=float(layer_norm_eps), norm=check_norm(norm, "GPT"),
            **reduction_config(embedding_dim, hash_buckets, num_hashes, share_layers, ffn_rank))
        self.vocab_size, self.d_model, self.max_len = int(vocab_size), int(d_model), int(max_len)
        self.pad_id = None if pad_id is None else int(pad_id)

        self.tok_embed = make_token_embedding("GPT", vocab_size, d_model, None, embedding_dim, hash_buckets,
                                              num_hashes)
        self.pos_embed = nn.LearnedPositionalEmbedding(max_len, d_model)
        init_token_embedding(self.tok_embed, 0.02)
        nn.init.normal_(self.pos_embed.weight, 0.0, 0.02)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation, layer_norm_eps,
                                       True, norm_first=True, norm=norm) for _ in range(num_layers)])
        set_attention(self.layers, attention, "GPT", self._config, share_layers)
        if share_layers:
            self.layers = share_stack(self.layers)
        set_ffn_rank(self, ffn_rank, from_trained=False)
        self.norm = nn.make_norm(norm, d_model, layer_norm_eps)
        self.head = nn.Linear(d_model, vocab_size, bias=False)
        if tie_weights:
            self.head.weight = self.tok_embed.weight
        self.tokenizer: Any = None

    @property
    def config(self) -> Dict[str, Any]:
        return {"arch": self.arch, **self._config}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "GPT":
        return build_from_config(cls, config)

    @classmethod
    def from_pretrained(cls, path: Any) -> "GPT":
        """A Hugging Face GPT-2 checkpoint directory (see :mod:`tfm_rs.pretrained.gpt2`), in eval
        mode, with its ``tokenizer.json`` as ``.tokenizer``."""
        return load_gpt2(cls, path)

    def save_pretrained(self, path: Any) -> None:
        """Writes a ``GPT2LMHeadModel`` checkpoint directory that ``transformers`` loads."""
        save_gpt2(self, path)

    def _attention_modules(self) -> Dict[str, nn.MultiheadAttention]:
        return {str(i): layer.self_attn for i, layer in enumerate(self.layers)}

    def _ffn_layers(self) -> Dict[str, nn.Module]:
        return {str(i): layer for i, layer in enumerate(self.layers)}

    def _explain_layers(self, B: int, S: int, T: int) -> List[Dict[str, Any]]:
        """One sequence length: ``src_len`` (``tgt_len`` is not used)."""
        return single_stack_rows(self, self.head, B, S, kv_cache=True, extra_flops=0)

    def num_parameters(self) -> int:
        """Distinct trainable values (a tied matrix counts once)."""
        return int(sum(int(np.prod(p.shape)) for p in self.parameters()))

    def _ids(self, ids: Any) -> np.ndarray:
        return as_ids(ids, "ids", self.vocab_size, self.max_len, "GPT")

    def forward(self, ids: Any) -> Tensor:
        """ids ``(B, T)`` → logits ``(B, T, V)``; position ``t`` depends on ``ids[:, :t+1]`` only."""
        ids = self._ids(ids)
        x = self.drop(self.pos_embed(self.tok_embed(ids)))
        kpm = mask = None
        if self.pad_id is not None:
            mask = ids == self.pad_id
            # Right padding is invisible to real tokens under the causal mask (fused kernel).
            if mask.any() and not right_padded(mask):
                kpm = mask
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=kpm, is_causal=True, norm_padding_mask=mask)
        return self.head(apply_norm(self.norm, x, mask))

    def loss(self, ids: Any, ignore_pad: bool = True) -> Tensor:
        """Mean next-token cross-entropy over ``ids (B, T)``, ``T ≥ 2``; targets equal to ``pad_id``
        are ignored when ``ignore_pad`` (and a ``pad_id`` is set)."""
        ids = self._ids(ids)
        if ids.shape[1] < 2:
            raise ShapeError(f"GPT.loss: sequences need at least 2 tokens to predict a next one, got T={ids.shape[1]}")
        logits = self.forward(ids[:, :-1])
        target = ids[:, 1:]
        ignore = self.pad_id if (ignore_pad and self.pad_id is not None) else -100
        return F.cross_entropy(logits.reshape(-1, self.vocab_size), target.reshape(-1), ignore_index=ignore)

    def prompt_ids(self, prompt: Any, name: str = "prompt_ids") -> np.ndarray:
        """One prompt checked (ids in the vocabulary, at most ``max_len`` long, not empty) as an
        int64 array ``(1, T)``."""
        return as_ids(prompt, name, self.vocab_size, self.max_len, "GPT.generate")

    def decoder_spec(self) -> DecoderSpec:
        """The decoder for the native decoding engine (:class:`tfm_rs.decode.DecoderSpec`)."""
        return DecoderSpec(
            layers=[DecoderLayerSpec(self_attn=layer.self_attn, linear1=layer.linear1, linear2=layer.linear2,
                                     norm_self=layer.norm1, norm_ff=layer.norm2) for layer in self.layers],
            embed=embedding_table(self.tok_embed), embed_scale=1.0, positions=self.pos_embed.weight, head=self.head,
            final_norm=self.norm, norm_first=True, activation=self._config["activation"])

    def generate(self, prompt_ids: Any, max_new_tokens: int = 20, **search: Any) -> GenerationOutput:
        """Continues ``prompt_ids`` (one 1-D prompt, a 2-D array, or a list of prompts of any
        lengths) by up to ``max_new_tokens`` tokens with a key/value cache, the loop in Rust:
        greedy by default; ``do_sample=True`` with ``temperature``/``top_k``/``top_p``/``seed``;
        ``num_beams > 1``; stops at ``eos_token_id`` if given. ``sequences`` hold prompt +
        continuation. See :mod:`tfm_rs.decode.generate`."""
        return decoding.generate_lm(self, prompt_ids, max_new_tokens, **search)

    def stream(self, prompt_ids: Any, max_new_tokens: int = 20, **search: Any) -> Iterator[int]:
        """Like :meth:`generate` for one prompt, yielding each new token id as it is produced."""
        return decoding.stream(self, prompt_ids, max_new_tokens, **search)
