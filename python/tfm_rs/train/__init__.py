"""Training: :class:`Seq2SeqTrainer` (the loop, logs, checkpoints, exact resume), greedy
decoding for evaluation, and the Multi30k recipe (``python -m tfm_rs.train.seq2seq``)."""

from tfm_rs.train.greedy import greedy_decode, translate
from tfm_rs.train.trainer import Seq2SeqTrainer, TrainConfig

__all__ = ["Seq2SeqTrainer", "TrainConfig", "greedy_decode", "translate"]
