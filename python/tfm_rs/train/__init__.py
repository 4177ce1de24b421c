"""Training: :class:`Trainer` (the loop, logs, checkpoints, exact resume) with
:class:`Seq2SeqTrainer` (parallel text) and :class:`LMTrainer` (a token stream, GPT), greedy
decoding for evaluation, and the Multi30k recipe (``python -m tfm_rs.train.seq2seq``)."""

from tfm_rs.train.greedy import greedy_decode, translate
from tfm_rs.train.lm import LMTrainer
from tfm_rs.train.trainer import SCHEDULES, Seq2SeqTrainer, TrainConfig, Trainer

__all__ = ["LMTrainer", "SCHEDULES", "Seq2SeqTrainer", "TrainConfig", "Trainer", "greedy_decode", "translate"]
