"""Decoding: greedy, beam search and sampling with a key/value cache, the whole loop in Rust.

Models expose it as methods (``Seq2SeqTransformer.generate`` / ``.translate``, ``GPT.generate``
/ ``.stream``); the functions here take the model as their first argument. What a model must
offer is typed in :mod:`tfm_rs.decode.protocol` (PEP 544): this package knows the protocols,
never the model classes (models import decoding, not the other way round).
"""

from tfm_rs.decode.generate import GenerationOutput, generate_lm, generate_seq2seq, stream
from tfm_rs.decode.protocol import (
    CausalLanguageModel,
    DecodableModel,
    DecoderLayerSpec,
    DecoderSpec,
    EncoderDecoderModel,
)
from tfm_rs.decode.translate import translate
from tfm_rs.decode.weights import decoder_weights

__all__ = ["CausalLanguageModel", "DecodableModel", "DecoderLayerSpec", "DecoderSpec", "EncoderDecoderModel",
           "GenerationOutput", "decoder_weights", "generate_lm", "generate_seq2seq", "stream", "translate"]
