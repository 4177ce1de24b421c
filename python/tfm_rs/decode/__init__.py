"""Decoding: greedy, beam search and sampling with a key/value cache, the whole loop in Rust.

Models expose it as methods (``Seq2SeqTransformer.generate`` / ``.translate``, ``GPT.generate``
/ ``.stream``); the functions here take the model as their first argument.
"""

from tfm_rs.decode.generate import GenerationOutput, generate_lm, generate_seq2seq, stream
from tfm_rs.decode.translate import translate
from tfm_rs.decode.weights import decoder_weights

__all__ = ["GenerationOutput", "decoder_weights", "generate_lm", "generate_seq2seq", "stream", "translate"]
