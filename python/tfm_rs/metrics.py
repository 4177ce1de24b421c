"""Evaluation metrics: corpus BLEU (sacrebleu), perplexity, token accuracy.

BLEU is computed the way papers report it when comparable: sacrebleu's ``corpus_bleu`` on
*detokenized*, cased text with its standard ``13a`` tokenizer — so feed it
``Tokenizer.decode``'s output and the raw reference lines, not subword or pre-tokenized text.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional, Sequence, Tuple, Union

import numpy as np

from tfm_rs import _core

__all__ = ["bleu", "bleu_score", "perplexity", "token_accuracy"]


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError as e:
        raise ImportError("tfm_rs.metrics.bleu needs sacrebleu (pip install sacrebleu)") from e
    return sacrebleu


def _reference_streams(hypotheses: Sequence[str], references: Sequence[Any]) -> List[List[str]]:
    """sacrebleu wants one list per reference *set*; accept one reference per hypothesis
    (``list[str]``) or several (``list[list[str]]``, same count for every hypothesis)."""
    if len(references) != len(hypotheses):
        raise _core.InvalidArgumentError(
            f"bleu: {len(hypotheses)} hypotheses but {len(references)} references")
    if all(isinstance(r, str) for r in references):
        return [list(references)]
    counts = {len(r) for r in references}
    if len(counts) != 1 or any(isinstance(r, str) for r in references):
        raise _core.InvalidArgumentError("bleu: references must be all strings, or all lists of the same length")
    return [list(stream) for stream in zip(*references)]


def bleu_score(hypotheses: Sequence[str], references: Sequence[Any], tokenize: str = "13a",
               lowercase: bool = False):
    """sacrebleu's ``BLEUScore`` object (``.score``, ``.precisions``, ``.bp``, ``str()`` for the
    signature-style line) for detokenized ``hypotheses`` against ``references``."""
    hypotheses = list(hypotheses)
    if any(not isinstance(h, str) for h in hypotheses):
        raise _core.DTypeError("bleu: hypotheses must be strings (decode the ids first)")
    refs = _reference_streams(hypotheses, list(references))
    return _sacrebleu().corpus_bleu(hypotheses, refs, tokenize=tokenize, lowercase=lowercase)


def bleu(hypotheses: Sequence[str], references: Sequence[Any], tokenize: str = "13a", lowercase: bool = False) -> float:
    """Corpus BLEU in [0, 100] (sacrebleu defaults: cased, ``13a`` tokenization, exponential
    smoothing off). ``references``: one string per hypothesis, or a list of strings per
    hypothesis for multiple references."""
    return float(bleu_score(hypotheses, references, tokenize=tokenize, lowercase=lowercase).score)


def perplexity(mean_nll: Union[float, Any]) -> float:
    """``exp(mean_nll)``: ``mean_nll`` is the mean negative log-likelihood per token in nats (the
    mean cross-entropy; a float, 0-d array or 0-d Tensor). Overflow gives ``inf``."""
    if hasattr(mean_nll, "item"):
        mean_nll = mean_nll.item()
    x = float(mean_nll)
    if math.isnan(x):
        return math.nan
    try:
        return math.exp(x)
    except OverflowError:
        return math.inf


def _to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, _core.Tensor):
        return x.numpy()
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor, without importing torch
        return x.detach().cpu().numpy()
    return np.asarray(x)


def token_accuracy(logits_or_pred: Any, target: Any, ignore_index: Optional[int] = -100,
                   return_counts: bool = False) -> Union[float, Tuple[int, int]]:
    """Fraction of target tokens predicted exactly, over positions where ``target != ignore_index``
    (pass the pad id, e.g. 0; ``None`` counts every position; torch's default -100 otherwise).

    ``logits_or_pred``: logits with one more (last) dimension than ``target`` — the argmax is taken
    — or predicted ids shaped like ``target``. With ``return_counts`` returns ``(correct, total)``
    to accumulate over batches; otherwise the fraction (``nan`` when nothing is counted).
    """
    out = _to_numpy(logits_or_pred)
    tgt = _to_numpy(target)
    if out.ndim == tgt.ndim + 1:
        if out.shape[:-1] != tgt.shape:
            raise _core.ShapeError(f"token_accuracy: logits {out.shape} do not match target {tgt.shape}")
        pred = out.argmax(axis=-1)
    elif out.shape == tgt.shape:
        pred = out
    else:
        raise _core.ShapeError(
            f"token_accuracy: expected logits of shape {tgt.shape + ('V',)} or predictions of shape {tgt.shape}, "
            f"got {out.shape}")
    mask = np.ones(tgt.shape, bool) if ignore_index is None else tgt != ignore_index
    correct = int(((pred == tgt) & mask).sum())
    total = int(mask.sum())
    if return_counts:
        return correct, total
    return correct / total if total else math.nan
