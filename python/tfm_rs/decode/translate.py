"""Text in, text out: tokenize, batch by length, generate, detokenize."""

from __future__ import annotations

from typing import Any, List, Sequence

from tfm_rs.data.batching import pad_batch
from tfm_rs.decode.generate import _count
from tfm_rs.decode.protocol import EncoderDecoderModel

__all__ = ["translate"]


def translate(model: EncoderDecoderModel, sentences: Sequence[str], tokenizer: Any, num_beams: int = 4,
              length_penalty: float = 0.6, batch_size: int = 64, **generate: Any) -> List[str]:
    """Translations of ``sentences`` by a :class:`~tfm_rs.models.Seq2SeqTransformer` (or any model
    with its ``generate``, such as :class:`~tfm_rs.models.RNNSeq2Seq`), in input order. The
    defaults are the paper's: beam size 4, length penalty α = 0.6 (``num_beams=1`` is greedy,
    several times faster). ``tokenizer`` needs ``encode_batch(texts)`` and ``decode(ids)``
    (:class:`tfm_rs.data.Tokenizer` and :class:`tfm_rs.pretrained.MarianTokenizer` have both).
    Sources longer than the model's ``max_len`` are truncated; empty or blank sentences
    translate to ``""``. Other keyword arguments go to the model's ``generate``."""
    sentences = list(sentences)
    batch_size = _count("batch_size", batch_size, 1)
    ids = [s[: model.max_len] for s in tokenizer.encode_batch(sentences)]
    results = [""] * len(ids)
    # Blank sentences are not decoded, though Marian's tokenizer gives them </s>; similar lengths
    # share a batch, so little work goes to padding.
    todo = sorted((i for i in range(len(ids)) if ids[i] and sentences[i].strip()), key=lambda i: len(ids[i]))
    for start in range(0, len(todo), batch_size):
        chunk = todo[start: start + batch_size]
        out = model.generate(pad_batch([ids[i] for i in chunk], model.pad_id), num_beams=num_beams,
                             length_penalty=length_penalty, **generate)
        n = out.num_return_sequences
        for k, i in enumerate(chunk):
            tokens = out.sequences[k * n]
            if tokens and tokens[-1] == model.eos_id:
                tokens = tokens[:-1]
            results[i] = tokenizer.decode(tokens)
    return results
