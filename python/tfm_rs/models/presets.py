"""Named configurations of :class:`~tfm_rs.models.Seq2SeqTransformer`.

``transformer_base`` and ``transformer_big`` are the paper's Table 3 rows (N=6 layers each side,
label smoothing 0.1 is the training recipe's, not the model's). ``transformer_small`` is the
configuration used for Multi30k here (3+3 layers of width 256), ``transformer_tiny`` a model for
tests. Keyword arguments override any field (vocabulary sizes, ``share_embeddings``, …).
"""

from __future__ import annotations

from typing import Any, Dict

from tfm_rs.models.seq2seq import Seq2SeqTransformer

__all__ = ["PRESETS", "preset_config", "transformer_base", "transformer_big", "transformer_small", "transformer_tiny"]

PRESETS: Dict[str, Dict[str, Any]] = {
    "base": dict(d_model=512, nhead=8, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=2048, dropout=0.1),
    "big": dict(d_model=1024, nhead=16, num_encoder_layers=6, num_decoder_layers=6, dim_feedforward=4096, dropout=0.3),
    "small": dict(d_model=256, nhead=4, num_encoder_layers=3, num_decoder_layers=3, dim_feedforward=1024, dropout=0.1,
                  max_len=256),
    # A quarter of "small"'s parameters with an 8k shared vocabulary: the distillation student.
    "mini": dict(d_model=128, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=512, dropout=0.1,
                 max_len=256),
    "tiny": dict(d_model=32, nhead=2, num_encoder_layers=1, num_decoder_layers=1, dim_feedforward=64, dropout=0.0,
                 max_len=64),
}


def preset_config(name: str, src_vocab_size: int = 8000, tgt_vocab_size: int = None,
                  **overrides: Any) -> Dict[str, Any]:
    """The keyword arguments of preset ``name`` ("base", "big", "small", "mini", "tiny") with overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown preset {name!r}; one of {sorted(PRESETS)}")
    tgt = src_vocab_size if tgt_vocab_size is None else tgt_vocab_size
    return {"src_vocab_size": int(src_vocab_size), "tgt_vocab_size": int(tgt), **PRESETS[name], **overrides}


def transformer_base(src_vocab_size: int = 37000, tgt_vocab_size: int = None, **overrides: Any) -> Seq2SeqTransformer:
    """Table 3 "base": d_model 512, 8 heads, d_ff 2048, 6+6 layers, dropout 0.1 (~65M parameters
    with a 37k shared vocabulary)."""
    return Seq2SeqTransformer(**preset_config("base", src_vocab_size, tgt_vocab_size, **overrides))


def transformer_big(src_vocab_size: int = 37000, tgt_vocab_size: int = None, **overrides: Any) -> Seq2SeqTransformer:
    """Table 3 "big": d_model 1024, 16 heads, d_ff 4096, 6+6 layers, dropout 0.3."""
    return Seq2SeqTransformer(**preset_config("big", src_vocab_size, tgt_vocab_size, **overrides))


def transformer_small(src_vocab_size: int = 8000, tgt_vocab_size: int = None, **overrides: Any) -> Seq2SeqTransformer:
    """The Multi30k model: d_model 256, 4 heads, d_ff 1024, 3+3 layers, dropout 0.1, max_len 256."""
    return Seq2SeqTransformer(**preset_config("small", src_vocab_size, tgt_vocab_size, **overrides))


def transformer_tiny(src_vocab_size: int = 64, tgt_vocab_size: int = None, **overrides: Any) -> Seq2SeqTransformer:
    """For tests: d_model 32, 2 heads, d_ff 64, 1+1 layers, no dropout, max_len 64."""
    return Seq2SeqTransformer(**preset_config("tiny", src_vocab_size, tgt_vocab_size, **overrides))
