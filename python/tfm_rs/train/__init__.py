"""Training: :class:`Trainer` (the loop, logs, checkpoints, exact resume) with
:class:`Seq2SeqTrainer` (parallel text) and :class:`LMTrainer` (a token stream, GPT), and the
Multi30k recipe's former command (``python -m tfm_rs.train.seq2seq``, now an alias of
``tfm-rs train --config multi30k``), and :class:`WeightAverager` (the paper's checkpoint
averaging). Decoding lives in :mod:`tfm_rs.decode`."""

from tfm_rs.train.averaging import WeightAverager, snapshot_points
from tfm_rs.train.lm import LMTrainer
from tfm_rs.train.trainer import SCHEDULES, Seq2SeqTrainer, TrainConfig, Trainer

__all__ = ["LMTrainer", "SCHEDULES", "Seq2SeqTrainer", "TrainConfig", "Trainer", "WeightAverager",
           "snapshot_points"]
