"""A BERT-style encoder with a masked-language-model head.

Embeddings: token + learned position + token type, then LayerNorm and dropout; ``num_layers``
post-LN encoder layers (GELU); MLM head: ``Linear(d, d)`` → GELU → LayerNorm → a projection tied
to the token embedding plus its own bias.

Shapes: ``forward(input_ids (B, T), token_type_ids (B, T) = 0)`` → MLM logits ``(B, T, V)``;
``encode`` → hidden states ``(B, T, d_model)``; ``loss(input_ids, labels)`` → scalar mean
cross-entropy over positions whose label is not ``-100``.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

import tfm_rs.functional as F
from tfm_rs import nn
from tfm_rs._core import InvalidArgumentError, ShapeError, Tensor
from tfm_rs.models._common import as_ids, set_attention
from tfm_rs.models._explain import Explainable, single_stack_rows
from tfm_rs.models._pruning import StructuredPruning, build_from_config
from tfm_rs.models._reduction import (FfnRank, init_token_embedding, make_token_embedding, reduction_config,
                                       set_ffn_rank, share_stack)
from tfm_rs.nn.norms import apply_norm, check_norm
from tfm_rs.models.sentence import sentence_embeddings
from tfm_rs.pretrained.bert import load_bert, save_bert

__all__ = ["BertEncoder", "IGNORE_INDEX"]

IGNORE_INDEX = -100


class BertEncoder(nn.Module, StructuredPruning, Explainable):
    """Encoder-only Transformer with a tied masked-LM head.

    Args:
        vocab_size, d_model, nhead, num_layers, dim_feedforward, max_len, dropout: as usual.
        type_vocab_size: number of token types (segments).
        pad_id: padding id (its keys are masked; never chosen by :meth:`mask_tokens`).
        mask_id: the ``[MASK]`` token id (default 4: the first extra special token after
            pad/bos/eos/unk of :func:`tfm_rs.data.train_tokenizer`).
        special_ids: ids never masked (default: ``0 … 4``, i.e. pad/bos/eos/unk/mask).
        norm: ``"layer"``, ``"rms"`` or ``"batch"`` for the embedding norm and the layers (the
            MLM head keeps its LayerNorm).
        embedding_dim, share_layers: ALBERT (Lan et al. 2020): a ``V×embedding_dim`` table
            projected to ``d_model``, the MLM head projecting back to ``embedding_dim`` and tied
            to that table; one set of weights for every layer.
        hash_buckets, num_hashes, ffn_rank: as :class:`~tfm_rs.models.Seq2SeqTransformer`'s (a
            hashed embedding gets an untied MLM projection).
        pooler: BERT's pooler (:meth:`pooler_output`); mlm_head: ``False`` builds the encoder
            alone (the classifiers of :mod:`tfm_rs.models.bert_heads` wrap one).
    """

    arch = "BertEncoder"

    def __init__(self, vocab_size: int, d_model: int = 768, nhead: int = 12, num_layers: int = 12,
                 dim_feedforward: int = 3072, max_len: int = 512, type_vocab_size: int = 2, pad_id: int = 0,
                 mask_id: int = 4, dropout: float = 0.1, special_ids: Optional[Sequence[int]] = None,
                 layer_norm_eps: float = 1e-12, norm: str = "layer", embedding_dim: Optional[int] = None,
                 hash_buckets: Optional[int] = None, num_hashes: int = 2, share_layers: bool = False,
                 ffn_rank: FfnRank = None, pooler: bool = False, mlm_head: bool = True,
                 attention: Any = "dense") -> None:
        super().__init__()
        if d_model <= 0 or nhead <= 0 or d_model % nhead != 0:
            raise InvalidArgumentError(
                f"BertEncoder: d_model ({d_model}) must be a positive multiple of nhead ({nhead})")
        for name, v in (("pad_id", pad_id), ("mask_id", mask_id)):
            if not 0 <= v < vocab_size:
                raise InvalidArgumentError(f"BertEncoder: {name}={v} outside the vocabulary [0, {vocab_size})")
        if type_vocab_size < 1:
            raise InvalidArgumentError(f"BertEncoder: type_vocab_size must be ≥ 1, got {type_vocab_size}")
        special = sorted({int(pad_id), int(mask_id)} | set(range(min(5, vocab_size)) if special_ids is None
                                                            else {int(i) for i in special_ids}))
        self._config: Dict[str, Any] = dict(
            vocab_size=int(vocab_size), d_model=int(d_model), nhead=int(nhead), num_layers=int(num_layers),
            dim_feedforward=int(dim_feedforward), max_len=int(max_len), type_vocab_size=int(type_vocab_size),
            pad_id=int(pad_id), mask_id=int(mask_id), dropout=float(dropout), special_ids=special,
            layer_norm_eps=float(layer_norm_eps), norm=check_norm(norm, "BertEncoder"),
            **reduction_config(embedding_dim, hash_buckets, num_hashes, share_layers, ffn_rank))
        if pooler:  # only then, so that configurations written before the pooler existed still match
            self._config["pooler"] = True
        if not mlm_head:
            self._config["mlm_head"] = False
        self.vocab_size, self.d_model, self.max_len = int(vocab_size), int(d_model), int(max_len)
        self.type_vocab_size, self.pad_id, self.mask_id = int(type_vocab_size), int(pad_id), int(mask_id)
        self.special_ids = np.asarray(special, np.int64)

        self.tok_embed = make_token_embedding("BertEncoder", vocab_size, d_model, pad_id, embedding_dim,
                                              hash_buckets, num_hashes)
        self.pos_embed = nn.LearnedPositionalEmbedding(max_len, d_model)
        self.type_embed = nn.Embedding(type_vocab_size, d_model)
        init_token_embedding(self.tok_embed, 0.02)
        for w in (self.pos_embed.weight, self.type_embed.weight):
            nn.init.normal_(w, 0.0, 0.02)
        self.emb_norm = nn.make_norm(norm, d_model, layer_norm_eps)
        self.drop = nn.Dropout(dropout)
        self.layers = nn.ModuleList([
            nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, "gelu", layer_norm_eps, True, False,
                                       norm=norm)
            for _ in range(num_layers)])
        set_attention(self.layers, attention, "BertEncoder", self._config, share_layers)
        if share_layers:
            self.layers = share_stack(self.layers)
        set_ffn_rank(self, ffn_rank, from_trained=False)
        if mlm_head:
            self._build_mlm_head(embedding_dim, layer_norm_eps)
        else:  # the encoder of a classifier (tfm_rs.models.bert_heads)
            self.mlm_dense = self.mlm_norm = self.mlm_decoder = None
        # BERT's pooler (dense + tanh on the first token), kept when a checkpoint has one.
        self.pooler = nn.Linear(d_model, d_model) if pooler else None
        self.tokenizer: Any = None

    @property
    def config(self) -> Dict[str, Any]:
        return {"arch": self.arch, **self._config}

    def _build_mlm_head(self, embedding_dim: Optional[int], eps: float) -> None:
        # The MLM head ends in the width of the token table it is tied to (E when factorized).
        head_dim = self.d_model if embedding_dim is None else int(embedding_dim)
        self.mlm_dense = nn.Linear(self.d_model, head_dim)
        self.mlm_norm = nn.LayerNorm(head_dim, eps=eps)
        self.mlm_decoder = nn.Linear(head_dim, self.vocab_size, bias=True)
        if isinstance(self.tok_embed, nn.FactorizedEmbedding):
            self.mlm_decoder.weight = self.tok_embed.embed.weight
        elif isinstance(self.tok_embed, nn.Embedding):
            self.mlm_decoder.weight = self.tok_embed.weight
        nn.init.zeros_(self.mlm_decoder.bias)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "BertEncoder":
        return build_from_config(cls, config)

    def _attention_modules(self) -> Dict[str, nn.MultiheadAttention]:
        return {str(i): layer.self_attn for i, layer in enumerate(self.layers)}

    def _ffn_layers(self) -> Dict[str, nn.Module]:
        return {str(i): layer for i, layer in enumerate(self.layers)}

    def _explain_layers(self, B: int, S: int, T: int) -> List[Dict[str, Any]]:
        """One sequence length: ``src_len`` (``tgt_len`` is not used)."""
        mlm_dense = 2 * B * S * self.d_model * self.d_model
        return single_stack_rows(self, self.mlm_decoder, B, S, kv_cache=False, extra_flops=mlm_dense)

    def _inputs(self, input_ids: Any, token_type_ids: Any) -> Tuple[np.ndarray, np.ndarray]:
        ids = as_ids(input_ids, "input_ids", self.vocab_size, self.max_len, "BertEncoder")
        if token_type_ids is None:
            types = np.zeros_like(ids)
        else:
            types = as_ids(token_type_ids, "token_type_ids", self.type_vocab_size, self.max_len, "BertEncoder")
            if types.shape != ids.shape:
                raise ShapeError(f"BertEncoder: token_type_ids {types.shape} and input_ids {ids.shape} differ")
        if np.all(ids == self.pad_id, axis=1).any():
            raise InvalidArgumentError("BertEncoder: a row of input_ids is empty (only pad_id)")
        return ids, types

    @classmethod
    def from_pretrained(cls, path: Any, strict: bool = True) -> "BertEncoder":
        """A Hugging Face BERT checkpoint directory (see :mod:`tfm_rs.pretrained.bert`), in eval
        mode, with its ``tokenizer.json`` as ``.tokenizer``."""
        return load_bert(cls, path, strict=strict)

    def save_pretrained(self, path: Any) -> None:
        """Writes a ``BertForMaskedLM`` checkpoint directory that ``transformers`` loads."""
        save_bert(self, path)

    def pooler_output(self, hidden: Tensor) -> Tensor:
        """BERT's pooled output ``tanh(pooler(hidden[:, 0]))`` ``(B, d_model)``."""
        if self.pooler is None:
            raise InvalidArgumentError("BertEncoder: this model has no pooler (build it with pooler=True)")
        return self.pooler(hidden[:, 0]).tanh()

    def encode(self, input_ids: Any, token_type_ids: Any = None, **sentence_options: Any) -> Any:
        """input_ids ``(B, T)`` → hidden states ``(B, T, d_model)``.

        Given text instead (a string or a list of strings), sentence embeddings as
        sentence-transformers computes them: a NumPy array ``(N, d_model)`` (see
        :func:`tfm_rs.models.sentence.sentence_embeddings` for ``pooling``, ``normalize``,
        ``batch_size``), tokenized with ``.tokenizer``."""
        if isinstance(input_ids, str) or (isinstance(input_ids, (list, tuple)) and input_ids
                                          and all(isinstance(s, str) for s in input_ids)):
            return sentence_embeddings(self, input_ids, **sentence_options)
        if sentence_options:
            raise InvalidArgumentError(f"BertEncoder.encode: {sorted(sentence_options)} apply to sentences (text)")
        ids, types = self._inputs(input_ids, token_type_ids)
        x = self.pos_embed(self.tok_embed(ids) + self.type_embed(types))
        mask = ids == self.pad_id
        x = self.drop(apply_norm(self.emb_norm, x, mask))
        kpm = mask if mask.any() else None
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=kpm, norm_padding_mask=mask)
        return x

    def forward(self, input_ids: Any, token_type_ids: Any = None) -> Tensor:
        """→ masked-LM logits ``(B, T, V)``."""
        return self._mlm_logits(self.encode(input_ids, token_type_ids))

    def _mlm_logits(self, hidden: Tensor) -> Tensor:
        """The masked-LM head on hidden states ``(…, d_model)`` → ``(…, V)``."""
        if self.mlm_decoder is None:
            raise InvalidArgumentError("BertEncoder: this encoder was built without the masked-LM head "
                                       "(mlm_head=False)")
        return self.mlm_decoder(self.mlm_norm(F.gelu(self.mlm_dense(hidden))))

    def mask_tokens(self, ids: Any, rng: np.random.Generator, mlm_probability: float = 0.15
                    ) -> Tuple[np.ndarray, np.ndarray]:
        """BERT's masking: each non-special token is selected with ``mlm_probability``; a selected
        token becomes ``mask_id`` with probability 0.8, a uniformly random token with 0.1, and
        stays itself with 0.1. Returns ``(inputs, labels)``: ``labels`` holds the original id at
        selected positions and ``-100`` elsewhere. ``ids`` is not modified."""
        if not 0.0 <= mlm_probability <= 1.0:
            raise InvalidArgumentError(f"mask_tokens: mlm_probability must be in [0, 1], got {mlm_probability}")
        ids = as_ids(ids, "ids", self.vocab_size, None, "BertEncoder.mask_tokens")
        selectable = ~np.isin(ids, self.special_ids)
        selected = (rng.random(ids.shape) < mlm_probability) & selectable
        labels = np.where(selected, ids, IGNORE_INDEX).astype(np.int64)
        u = rng.random(ids.shape)
        to_mask = selected & (u < 0.8)
        to_random = selected & (u >= 0.8) & (u < 0.9)
        inputs = ids.copy()
        inputs[to_mask] = self.mask_id
        inputs[to_random] = rng.integers(0, self.vocab_size, size=int(to_random.sum()))
        return inputs, labels

    def loss(self, input_ids: Any, labels: Any, token_type_ids: Any = None) -> Tensor:
        """Mean cross-entropy of the MLM logits against ``labels (B, T)`` (``-100`` = ignored)."""
        labels = np.asarray(labels, dtype=np.int64)
        hidden = self.encode(input_ids, token_type_ids)                          # (B, T, d)
        if labels.shape != tuple(hidden.shape[:2]):
            raise ShapeError(
                f"BertEncoder.loss: labels {labels.shape} do not match input_ids {tuple(hidden.shape[:2])}")
        bad = (labels != IGNORE_INDEX) & ((labels < 0) | (labels >= self.vocab_size))
        if bad.any():
            raise InvalidArgumentError(f"BertEncoder.loss: label {int(labels[bad][0])} is neither -100 nor a token id")
        # The head (its V-wide projection dominates the cost) runs on the labelled positions only:
        # ~15% of them. Gathered as an embedding lookup into the hidden states, whose backward
        # scatters the gradient back. No labelled position: one ignored row, a zero loss.
        flat = labels.reshape(-1)
        picked = np.flatnonzero(flat != IGNORE_INDEX)
        picked = picked if picked.size else np.zeros(1, np.int64)
        rows = F.embedding(picked, hidden.reshape(-1, self.d_model))             # (M, d)
        return F.cross_entropy(self._mlm_logits(rows), flat[picked], ignore_index=IGNORE_INDEX)
