"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

``Seq2SeqTransformer`` wraps :class:`tfm_rs.nn.Transformer` with what the paper adds around it:
token embeddings scaled by ``√d_model``, sinusoidal positions, dropout on their sum, and an
output projection to the target vocabulary (optionally tied to the embeddings, section 3.4).
Masks are built from the token ids: ``pad_id`` positions of the source are padding for the
encoder and for cross-attention, and the decoder is causal.

Shapes (``B`` batch, ``S`` source length, ``T`` target length, ``V`` target vocabulary):

* ``forward(src_ids (B, S), tgt_ids (B, T))`` → logits ``(B, T, V)``
* ``encode(src_ids (B, S))`` → memory ``(B, S, d_model)``
* ``generate`` / ``translate``: decoding with a key/value cache in Rust; the model implements
  :class:`tfm_rs.decode.EncoderDecoderModel` (``decoder_spec``, ``source_ids``,
  ``encoder_memory``) for it
* ``decode(tgt_ids (B, T), memory (B, S, d_model), src_padding_mask (B, S))`` → logits ``(B, T, V)``
* ``loss(src_ids, tgt_in, tgt_out)`` → scalar mean cross-entropy over non-pad ``tgt_out`` tokens
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

import tfm_rs.functional as F
from tfm_rs import decode as decoding
from tfm_rs import nn
from tfm_rs._core import InvalidArgumentError, ShapeError, Tensor
from tfm_rs.decode import DecoderLayerSpec, DecoderSpec, GenerationOutput
from tfm_rs.models._common import as_ids, right_padded, set_attention
from tfm_rs.models.conv_encoder import ConvBlocks
from tfm_rs.models._explain import Explainable, decoder_rows, encoder_rows, output_row
from tfm_rs.models._pruning import StructuredPruning, build_from_config
from tfm_rs.nn.norms import check_norm
from tfm_rs.models._reduction import (FfnRank, embedding_table, init_token_embedding, make_token_embedding,
                                       reduction_config, set_ffn_rank, share_stack)
from tfm_rs.pretrained.marian import load_marian, save_marian

__all__ = ["Seq2SeqTransformer"]


class Seq2SeqTransformer(nn.Module, StructuredPruning, Explainable):
    """Encoder-decoder Transformer for translation-like tasks.

    Args:
        src_vocab_size, tgt_vocab_size: vocabulary sizes (equal when ``share_embeddings``).
        d_model, nhead, num_encoder_layers, num_decoder_layers, dim_feedforward, dropout,
        activation, layer_norm_eps: as :class:`tfm_rs.nn.Transformer`.
        norm_first: ``False`` = post-LN (the paper); ``True`` = pre-LN, with a final LayerNorm
            after the encoder and after the decoder.
        max_len: longest source or target sequence accepted (length of the position table).
        pad_id, bos_id, eos_id: special token ids (``pad_id`` builds the padding masks; ``bos_id`` may
            equal ``pad_id``, as in opus-mt, and the first decoder position is then a token).
        share_embeddings: one matrix for source embedding, target embedding and output
            projection (joint vocabulary).
        tie_output: tie the output projection to the target embedding (implied by
            ``share_embeddings``; needs a plain embedding table).
        norm: ``"layer"`` (the paper's LayerNorm), ``"rms"`` (RMSNorm) or ``"batch"`` (batch
            norm whose statistics skip padded positions, :class:`tfm_rs.nn.MaskedBatchNorm1d`).
            The native decoder (``generate``/``translate``) runs LayerNorm models only.
        embedding_dim: ALBERT's factorized embeddings, ``V×embedding_dim`` then
            ``embedding_dim×d_model`` (:class:`tfm_rs.nn.FactorizedEmbedding`).
        hash_buckets, num_hashes: hashed embeddings (:class:`tfm_rs.nn.HashEmbedding`) with this
            many shared buckets.
        share_layers: ALBERT's cross-layer sharing: one set of weights for all encoder layers,
            one for all decoder layers.
        ffn_rank: low-rank feed-forward layers (:class:`tfm_rs.nn.LowRankLinear`): one rank, or
            one per ``linear1``/``linear2`` in layer order (what
            :func:`tfm_rs.models.factorize_ffn` records).
        encoder: ``"transformer"`` (self-attention layers, the paper) or ``"conv"``: ConvS2S's gated
            convolution blocks (:class:`tfm_rs.models.ConvBlocks`, ``num_encoder_layers`` of them,
            ``encoder_kernel_size`` wide) in place of the encoder's self-attention layers, with the
            same embeddings, decoder and cross-attention: the receptive-field baseline.
        encoder_kernel_size: the convolutions' width (odd) when ``encoder="conv"``.

    Submodules: ``src_embed``, ``tgt_embed`` (the same object when shared), ``pos`` (sinusoidal),
    ``dropout``, ``transformer`` (:class:`tfm_rs.nn.Transformer`), ``generator`` (``Linear`` to
    ``V``; its ``weight`` is ``tgt_embed.weight`` when tied).
    """

    arch = "Seq2SeqTransformer"

    def __init__(self, src_vocab_size: int, tgt_vocab_size: int, d_model: int = 512, nhead: int = 8,
                 num_encoder_layers: int = 6, num_decoder_layers: int = 6, dim_feedforward: int = 2048,
                 dropout: float = 0.1, norm_first: bool = False, max_len: int = 1024, pad_id: int = 0,
                 bos_id: int = 1, eos_id: int = 2, share_embeddings: bool = False, activation: str = "relu",
                 layer_norm_eps: float = 1e-5, tie_output: Optional[bool] = None, norm: str = "layer",
                 embedding_dim: Optional[int] = None, hash_buckets: Optional[int] = None, num_hashes: int = 2,
                 share_layers: bool = False, ffn_rank: FfnRank = None, attention: Any = "dense",
                 encoder: str = "transformer", encoder_kernel_size: int = 3) -> None:
        super().__init__()
        if src_vocab_size <= 0 or tgt_vocab_size <= 0:
            raise InvalidArgumentError(f"Seq2SeqTransformer: vocabulary sizes must be positive, got "
                                       f"{src_vocab_size} and {tgt_vocab_size}")
        if d_model <= 0 or nhead <= 0 or d_model % nhead != 0:
            raise InvalidArgumentError(f"Seq2SeqTransformer: d_model ({d_model}) must be a positive multiple of "
                                       f"nhead ({nhead})")
        if num_encoder_layers < 1 or num_decoder_layers < 1:
            raise InvalidArgumentError("Seq2SeqTransformer: needs at least one encoder and one decoder layer")
        if max_len <= 0:
            raise InvalidArgumentError(f"Seq2SeqTransformer: max_len must be positive, got {max_len}")
        if share_embeddings and src_vocab_size != tgt_vocab_size:
            raise InvalidArgumentError(
                f"Seq2SeqTransformer: share_embeddings needs one joint vocabulary, but src_vocab_size="
                f"{src_vocab_size} != tgt_vocab_size={tgt_vocab_size}")
        for name, v in (("pad_id", pad_id), ("bos_id", bos_id), ("eos_id", eos_id)):
            if not 0 <= v < tgt_vocab_size:
                raise InvalidArgumentError(f"Seq2SeqTransformer: {name}={v} outside the target vocabulary")
        if encoder not in ("transformer", "conv"):
            raise InvalidArgumentError(f"Seq2SeqTransformer: encoder must be 'transformer' or 'conv', got {encoder!r}")
        conv = encoder == "conv"
        if conv and not (isinstance(attention, str) and attention == "dense"):
            raise InvalidArgumentError("Seq2SeqTransformer: attention kinds are for the self-attention encoder; "
                                       "encoder='conv' has none")
        if tie_output is None:
            tie_output = bool(share_embeddings)
        if share_embeddings and not tie_output:
            raise InvalidArgumentError("Seq2SeqTransformer: share_embeddings ties the output projection too")
        if tie_output and (embedding_dim is not None or hash_buckets is not None):
            raise InvalidArgumentError("Seq2SeqTransformer: a tied output projection needs a plain embedding table; "
                                       "set tie_output=False (and share_embeddings=False) with embedding_dim or "
                                       "hash_buckets")
        self._config: Dict[str, Any] = dict(
            src_vocab_size=int(src_vocab_size), tgt_vocab_size=int(tgt_vocab_size), d_model=int(d_model),
            nhead=int(nhead), num_encoder_layers=int(num_encoder_layers),
            num_decoder_layers=int(num_decoder_layers), dim_feedforward=int(dim_feedforward),
            dropout=float(dropout), norm_first=bool(norm_first), max_len=int(max_len), pad_id=int(pad_id),
            bos_id=int(bos_id), eos_id=int(eos_id), share_embeddings=bool(share_embeddings),
            activation=str(activation), layer_norm_eps=float(layer_norm_eps), tie_output=bool(tie_output),
            norm=check_norm(norm, "Seq2SeqTransformer"),
            **reduction_config(embedding_dim, hash_buckets, num_hashes, share_layers, ffn_rank))
        if conv:  # recorded only when set, so configurations from before it still match
            self._config.update(encoder="conv", encoder_kernel_size=int(encoder_kernel_size))
        self.d_model, self.max_len = int(d_model), int(max_len)
        self.src_vocab_size, self.tgt_vocab_size = int(src_vocab_size), int(tgt_vocab_size)
        self.pad_id, self.bos_id, self.eos_id = int(pad_id), int(bos_id), int(eos_id)
        self.emb_scale = math.sqrt(d_model)

        # The Transformer core first: its constructor xavier-initializes every matrix it owns.
        enc_layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, activation,
                                               layer_norm_eps, True, norm_first, norm=norm)
        dec_layer = nn.TransformerDecoderLayer(d_model, nhead, dim_feedforward, dropout, activation,
                                               layer_norm_eps, True, norm_first, norm=norm)
        # Post-LN layers already end in a norm; pre-LN stacks need a final one.
        enc_norm = nn.make_norm(norm, d_model, layer_norm_eps) if norm_first else None
        dec_norm = nn.make_norm(norm, d_model, layer_norm_eps) if norm_first else None
        self.transformer = nn.Transformer(
            d_model, nhead, dropout=dropout,
            custom_encoder=(ConvBlocks(d_model, num_encoder_layers, encoder_kernel_size, dropout) if conv
                            else nn.TransformerEncoder(enc_layer, num_encoder_layers, enc_norm)),
            custom_decoder=nn.TransformerDecoder(dec_layer, num_decoder_layers, dec_norm))
        set_attention(self.transformer.encoder.layers, attention, "Seq2SeqTransformer", self._config, share_layers)
        if share_layers:
            for stack in (self.transformer.encoder, self.transformer.decoder):
                if stack.layers:
                    stack.layers = share_stack(stack.layers)
        set_ffn_rank(self, ffn_rank, from_trained=False)

        # Embeddings ~ N(0, d_model^-1/2): after the √d_model scale they have unit variance, and a
        # tied output projection starts with logits of sensible size (fairseq's choice).
        std = d_model ** -0.5
        reduce = dict(embedding_dim=embedding_dim, hash_buckets=hash_buckets, num_hashes=num_hashes)
        self.src_embed = make_token_embedding("Seq2SeqTransformer", src_vocab_size, d_model,
                                              pad_id if pad_id < src_vocab_size else None, **reduce)
        init_token_embedding(self.src_embed, std)
        if share_embeddings:
            self.tgt_embed = self.src_embed
        else:
            self.tgt_embed = make_token_embedding("Seq2SeqTransformer", tgt_vocab_size, d_model, pad_id, **reduce)
            init_token_embedding(self.tgt_embed, std)
        self.pos = nn.SinusoidalPositionalEncoding(d_model, max_len)
        self.dropout = nn.Dropout(dropout)
        self.generator = nn.Linear(d_model, tgt_vocab_size, bias=not tie_output)
        if tie_output:
            self.generator.weight = self.tgt_embed.weight
        else:
            nn.init.xavier_uniform_(self.generator.weight)
        # From from_pretrained: a tokenizers.Tokenizer (tokenizer.json) or a MarianTokenizer (opus-mt's .spm files).
        self.tokenizer: Any = None

    # ------------------------------------------------------------------ configuration

    @property
    def config(self) -> Dict[str, Any]:
        """The constructor arguments plus ``"arch"`` (JSON-serializable); see :meth:`from_config`."""
        return {"arch": self.arch, **self._config}

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "Seq2SeqTransformer":
        """A fresh model built from :attr:`config` (``"arch"`` must match, if present)."""
        return build_from_config(cls, config)

    @classmethod
    def from_pretrained(cls, path: Any) -> "Seq2SeqTransformer":
        """A Hugging Face ``MarianMTModel`` checkpoint directory (see :mod:`tfm_rs.pretrained.marian`),
        in eval mode, with its ``tokenizer.json`` as ``.tokenizer`` (or, for Helsinki-NLP's opus-mt, its
        SentencePiece files as a :class:`~tfm_rs.pretrained.MarianTokenizer`)."""
        return load_marian(cls, path)

    def save_pretrained(self, path: Any) -> None:
        """Writes a ``MarianMTModel`` checkpoint directory that ``transformers`` loads and
        CTranslate2's ``TransformersConverter`` converts (a post-LN LayerNorm model; others are
        refused, naming the option)."""
        save_marian(self, path)

    def _attention_modules(self) -> Dict[str, nn.MultiheadAttention]:
        out: Dict[str, nn.MultiheadAttention] = {}
        for i, layer in enumerate(self.transformer.encoder.layers):
            out[f"encoder.{i}"] = layer.self_attn
        for i, layer in enumerate(self.transformer.decoder.layers):
            out[f"decoder.{i}"] = layer.self_attn
            out[f"decoder.{i}.cross"] = layer.multihead_attn
        return out

    def _explain_layers(self, B: int, S: int, T: int) -> List[Dict[str, Any]]:
        emb_params = sum(int(np.prod(p.shape)) for p in self.src_embed.parameters())
        if self.tgt_embed is not self.src_embed:
            emb_params += sum(int(np.prod(p.shape)) for p in self.tgt_embed.parameters())
        emb = {"name": "embeddings", "params": emb_params,
            "flops_proj": 0, "flops_attn": 0, "act_bytes": 4 * B * (S + T) * self.d_model, "kv_bytes": 0}
        tied = self.generator.weight is getattr(self.tgt_embed, "weight", None)
        head_params = sum(int(np.prod(p.shape)) for p in self.generator.parameters()
                          if not (tied and p is self.generator.weight))
        encoder = self.transformer.encoder
        if isinstance(encoder, ConvBlocks):
            enc_rows = [{"name": f"encoder.convs.{i}", "params": sum(int(np.prod(p.shape)) for p in conv.parameters()),
                         "flops_proj": 2 * B * S * int(np.prod(conv.weight.shape)), "flops_attn": 0,
                         "act_bytes": 4 * B * S * 3 * self.d_model, "kv_bytes": 0}
                        for i, conv in enumerate(encoder.convs)]
        else:
            enc_rows = encoder_rows("encoder.", encoder.layers, B, S)
        rows = [emb, *enc_rows,
                *decoder_rows(self.transformer.decoder.layers, B, S, T)]
        for name, norm, L in (("encoder.norm", self.transformer.encoder.norm, S),
                              ("decoder.norm", self.transformer.decoder.norm, T)):
            if norm is not None:
                rows.append({"name": name, "params": sum(int(np.prod(p.shape)) for p in norm.parameters()),
                             "flops_proj": 0, "flops_attn": 0, "act_bytes": 4 * B * L * self.d_model, "kv_bytes": 0})
        rows.append(output_row("generator", self.generator, B, T, head_params))
        return rows

    def _ffn_layers(self) -> Dict[str, nn.Module]:
        return {**{f"encoder.{i}": layer for i, layer in enumerate(self.transformer.encoder.layers)},
                **{f"decoder.{i}": layer for i, layer in enumerate(self.transformer.decoder.layers)}}

    def num_parameters(self) -> int:
        """Distinct trainable values (a tied matrix counts once)."""
        return int(sum(int(np.prod(p.shape)) for p in self.parameters()))

    # ------------------------------------------------------------------ checks

    def source_ids(self, src_ids: Any) -> np.ndarray:
        """``src_ids`` checked (integer ids in the source vocabulary, at most ``max_len`` long, no
        row of padding only) as an int64 array ``(B, S)``; a 1-D sequence is one row."""
        src = as_ids(src_ids, "src_ids", self.src_vocab_size, self.max_len, type(self).__name__)
        empty = np.all(src == self.pad_id, axis=1)
        if empty.any():
            raise InvalidArgumentError(
                f"{type(self).__name__}: src_ids row {int(np.flatnonzero(empty)[0])} is empty (only pad_id="
                f"{self.pad_id}); drop empty sentences before batching")
        return src

    def _tgt(self, tgt_ids: Any) -> np.ndarray:
        return as_ids(tgt_ids, "tgt_ids", self.tgt_vocab_size, self.max_len, type(self).__name__)

    # ------------------------------------------------------------------ model

    def _embed(self, emb: nn.Embedding, ids: np.ndarray) -> Tensor:
        return self.dropout(self.pos(emb(ids) * self.emb_scale))

    def encode(self, src_ids: Any) -> Tensor:
        """src_ids ``(B, S)`` → memory ``(B, S, d_model)`` (padding positions are computed but never
        attended to when ``decode`` gets the matching ``src_padding_mask``)."""
        src = self.source_ids(src_ids)
        return self.encoder_memory(src, src == self.pad_id)

    def encoder_memory(self, src: np.ndarray, padding_mask: np.ndarray) -> Tensor:
        """The encoder's output ``(B, S, d_model)`` for ids already checked by :meth:`source_ids`
        and their padding mask ``(B, S)`` (True = pad)."""
        return self.transformer.encoder(self._embed(self.src_embed, src),
                                        src_key_padding_mask=padding_mask if padding_mask.any() else None,
                                        norm_padding_mask=padding_mask)

    def decode_hidden(self, tgt_ids: Any, memory: Tensor, src_padding_mask: Any = None) -> Tensor:
        """The decoder's output states ``(B, T, d_model)`` before the output projection."""
        tgt = self._tgt(tgt_ids)
        if memory.ndim != 3 or memory.shape[0] != tgt.shape[0] or memory.shape[2] != self.d_model:
            raise ShapeError(f"{type(self).__name__}.decode: memory must be (B={tgt.shape[0]}, S, {self.d_model}), "
                             f"got {tuple(memory.shape)}")
        if src_padding_mask is not None:
            src_padding_mask = np.asarray(src_padding_mask, dtype=bool)
            if src_padding_mask.shape != tuple(memory.shape[:2]):
                raise ShapeError(f"{type(self).__name__}.decode: src_padding_mask must be {tuple(memory.shape[:2])}, "
                                 f"got {src_padding_mask.shape}")
            if not src_padding_mask.any():
                src_padding_mask = None
        return self._decode_hidden(tgt, memory, src_padding_mask)

    def _decode_hidden(self, tgt: np.ndarray, memory: Tensor, src_mask: Optional[np.ndarray]) -> Tensor:
        tgt_mask = tgt == self.pad_id
        if self.bos_id == self.pad_id:  # opus-mt starts the decoder with pad: that one is a token
            tgt_mask[:, 0] = False
        # Causal attention already hides right padding from every real token, so the fused causal
        # kernel alone is exact; a pad before a real token needs the explicit padding mask too.
        tgt_kpm = None if right_padded(tgt_mask) else tgt_mask
        return self.transformer.decoder(self._embed(self.tgt_embed, tgt), memory, tgt_is_causal=True,
                                        tgt_key_padding_mask=tgt_kpm, memory_key_padding_mask=src_mask,
                                        norm_padding_mask=tgt_mask)

    def project(self, hidden: Tensor) -> Tensor:
        """Decoder states ``(…, d_model)`` → logits ``(…, V)``."""
        return self.generator(hidden)

    def decode(self, tgt_ids: Any, memory: Tensor, src_padding_mask: Any = None) -> Tensor:
        """tgt_ids ``(B, T)``, memory ``(B, S, d_model)``, src_padding_mask ``(B, S)`` (True = pad)
        → logits ``(B, T, V)``; position ``t`` sees ``tgt_ids[:, :t+1]`` only."""
        return self.project(self.decode_hidden(tgt_ids, memory, src_padding_mask))

    def forward(self, src_ids: Any, tgt_ids: Any) -> Tensor:
        """src_ids ``(B, S)``, tgt_ids ``(B, T)`` (decoder input, ``[bos] + y``) → logits ``(B, T, V)``."""
        src, tgt = self.source_ids(src_ids), self._tgt(tgt_ids)
        if src.shape[0] != tgt.shape[0]:
            raise ShapeError(f"{type(self).__name__}: src_ids has batch size {src.shape[0]} but tgt_ids has "
                             f"{tgt.shape[0]}")
        mask = src == self.pad_id
        memory = self.encoder_memory(src, mask)
        return self.project(self._decode_hidden(tgt, memory, mask if mask.any() else None))

    def loss(self, src_ids: Any, tgt_in: Any, tgt_out: Any, label_smoothing: float = 0.0,
             reduction: str = "mean") -> Tensor:
        """Cross-entropy of predicting ``tgt_out (B, T)`` from ``tgt_in (B, T)``, ignoring ``pad_id``
        targets: ``"mean"`` over the non-pad tokens (default) or ``"sum"``."""
        tgt_in_a = self._tgt(tgt_in)
        tgt_out_a = as_ids(tgt_out, "tgt_out", self.tgt_vocab_size, self.max_len, type(self).__name__)
        if tgt_out_a.shape != tgt_in_a.shape:
            raise ShapeError(
                f"{type(self).__name__}.loss: tgt_in {tgt_in_a.shape} and tgt_out {tgt_out_a.shape} differ")
        logits = self.forward(src_ids, tgt_in_a)
        return F.cross_entropy(logits.reshape(-1, self.tgt_vocab_size), tgt_out_a.reshape(-1),
                               ignore_index=self.pad_id, reduction=reduction, label_smoothing=label_smoothing)

    # ------------------------------------------------------------------ decoding

    def decoder_spec(self) -> DecoderSpec:
        """The decoder for the native decoding engine (:class:`tfm_rs.decode.DecoderSpec`)."""
        layers = self.transformer.decoder.layers
        return DecoderSpec(
            layers=[DecoderLayerSpec(self_attn=layer.self_attn, linear1=layer.linear1, linear2=layer.linear2,
                                     norm_self=layer.norm1, norm_ff=layer.norm3, cross_attn=layer.multihead_attn,
                                     norm_cross=layer.norm2) for layer in layers],
            embed=embedding_table(self.tgt_embed), embed_scale=float(self.emb_scale), positions=self.pos.pe,
            head=self.generator, final_norm=self.transformer.decoder.norm, norm_first=self._config["norm_first"],
            activation=self._config["activation"])

    def generate(self, src_ids: Any, max_new_tokens: Optional[int] = None, max_len_a: float = 1.5,
                 max_len_b: int = 10, **search: Any) -> GenerationOutput:
        """Translations of ``src_ids (B, S)`` with a key/value cache, the loop in Rust: greedy by
        default, beam search with ``num_beams > 1``, sampling with ``do_sample=True``. See
        :func:`tfm_rs.decode.generate_seq2seq` for the arguments and the result."""
        return decoding.generate_seq2seq(self, src_ids, max_new_tokens, max_len_a, max_len_b, **search)

    def translate(self, sentences: Sequence[str], tokenizer: Any, num_beams: int = 4, length_penalty: float = 0.6,
                  batch_size: int = 64, **generate: Any) -> List[str]:
        """Text in, text out (beam 4, α = 0.6 by default, as in the paper); see
        :func:`tfm_rs.decode.translate`."""
        return decoding.translate(self, sentences, tokenizer, num_beams, length_penalty, batch_size, **generate)

    def extra_repr(self) -> str:
        c = self._config
        return (f"d_model={c['d_model']}, nhead={c['nhead']}, layers={c['num_encoder_layers']}+"
                f"{c['num_decoder_layers']}, ff={c['dim_feedforward']}, norm_first={c['norm_first']}, "
                f"shared={c['share_embeddings']}")
