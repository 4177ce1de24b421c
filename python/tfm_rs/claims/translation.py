"""Small Multi30k de→en translators, for the claims that are about real translation (16, 17, 22).

The corpus is read with :func:`tfm_rs.data.load_multi30k` (``../shared/data/multi30k`` or
``$TFM_RS_MULTI30K``; a ``FileNotFoundError`` saying where it looked when it is absent). A model is a
:class:`~tfm_rs.models.Seq2SeqTransformer` with one shared embedding table (a joint vocabulary),
``layers`` encoder and ``layers`` decoder layers, ``width // 32`` heads and a feed-forward of
``4·width``, trained by :class:`~tfm_rs.train.Seq2SeqTrainer` — the library's training loop — with
the inverse-square-root schedule after a linear warmup, label smoothing 0.1 and batches of about
2,000 tokens. The peak rate is ``2e-3·√(128/width)``: the paper's d_model^-0.5 scaling, anchored
where a width-128 model trains well, so that wide models are not handicapped by a rate tuned for
narrow ones.

"The same training time" is CPU time (:func:`train_for`): the machines these run on are shared,
and the wall-clock time a step takes there depends on what else runs; the CPU time this process
spends on a step does much less.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import tfm_rs
from tfm_rs import metrics
from tfm_rs.data import Tokenizer, load_multi30k
from tfm_rs.models import Seq2SeqTransformer
from tfm_rs.train import Seq2SeqTrainer, TrainConfig

Texts = Tuple[List[str], List[str]]

MAX_TOKENS = 2000
LABEL_SMOOTHING = 0.1


@dataclass
class Multi30k:
    """Sentence pairs (German sources, English references) of the three splits, as read."""

    train: Texts
    valid: Texts
    test: Texts

    def sizes(self) -> dict:
        return {"train": len(self.train[0]), "valid": len(self.valid[0]), "test": len(self.test[0])}


def multi30k(train: Optional[int] = None, valid: Optional[int] = None, test: Optional[int] = None) -> Multi30k:
    """The first ``train``/``valid``/``test`` pairs of each split (``None``: all of it: 29,000,
    1,014 and 1,000)."""
    def first(split: str, n: Optional[int]) -> Texts:
        corpus = load_multi30k(split, "de", "en")
        return list(corpus.src[:n]), list(corpus.tgt[:n])

    return Multi30k(first("train", train), first("val", valid), first("test", test))


def peak_lr(width: int) -> float:
    return 2e-3 * math.sqrt(128 / width)


def build(vocab_size: int, width: int, layers: int, seed: int, max_len: int = 256) -> Seq2SeqTransformer:
    """A fresh translator (see the module docstring), initialised from ``seed``."""
    tfm_rs.manual_seed(seed)
    return Seq2SeqTransformer(vocab_size, vocab_size, d_model=width, nhead=max(1, width // 32),
                              num_encoder_layers=layers, num_decoder_layers=layers, dim_feedforward=4 * width,
                              dropout=0.1, max_len=max_len, share_embeddings=True)


def trainer(model: Seq2SeqTransformer, tok: Tokenizer, data: Multi30k, ids: "Encoded", seed: int, warmup: int,
            steps: Optional[int] = None, valid_every: int = 0, bleu_every: int = 0,
            bleu_subset: int = 200) -> Seq2SeqTrainer:
    """A :class:`Seq2SeqTrainer` of ``model`` on ``ids.train`` (``data.train`` encoded by ``tok``),
    warming up over ``warmup`` steps, for ``steps`` updates (``None``: until told, as
    :func:`train_for` does), validating on ``ids.valid`` (loss every ``valid_every`` steps, greedy
    BLEU on the first ``bleu_subset`` sentences of ``data.valid`` every ``bleu_every``)."""
    config = TrainConfig(max_tokens=MAX_TOKENS, lr=peak_lr(model.d_model), warmup_steps=warmup,
                         schedule="inverse_sqrt", label_smoothing=LABEL_SMOOTHING, seed=seed, max_steps=steps,
                         print_every=0, valid_every=valid_every, bleu_every=bleu_every, bleu_subset=bleu_subset)
    return Seq2SeqTrainer(model, ids.train, config, valid_data=ids.valid, valid_texts=data.valid, tokenizer=tok)


def train_for(trainer: Seq2SeqTrainer, cpu_seconds: float) -> Dict[str, float]:
    """Train one step at a time until the steps have used ``cpu_seconds`` of this process's CPU
    time (all its threads); returns the CPU and wall-clock seconds they took."""
    cpu = wall = 0.0
    while cpu < cpu_seconds:
        c0, w0 = time.process_time(), time.perf_counter()
        trainer.train(max_steps=trainer.step + 1, verbose=False)
        cpu += time.process_time() - c0
        wall += time.perf_counter() - w0
    return {"cpu_seconds": cpu, "wall_seconds": wall}


Ids = Tuple[List[List[int]], List[List[int]]]


@dataclass
class Encoded:
    """The training and validation pairs as token ids (encoded once, shared by every run)."""

    train: Ids
    valid: Ids


def encode(tok: Tokenizer, data: Multi30k) -> Encoded:
    def ids(pairs: Texts) -> Ids:
        return tok.encode_batch(pairs[0]), tok.encode_batch(pairs[1])

    return Encoded(ids(data.train), ids(data.valid))


def greedy_bleu(model: Seq2SeqTransformer, tok: Tokenizer, pairs: Texts) -> float:
    """Corpus BLEU (sacrebleu, cased, 13a) of greedy translations of ``pairs``' sources."""
    hyps = model.translate(pairs[0], tok, num_beams=1, batch_size=128)
    return metrics.bleu(hyps, pairs[1])


def embedding_parameters(model: Any) -> int:
    """Parameters of the (shared) embedding table: vocabulary × width."""
    return int(model.src_embed.weight.numel())


def spread(values: Sequence[float]) -> float:
    """Sample standard deviation (0 for a single value)."""
    n = len(values)
    if n < 2:
        return 0.0
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
