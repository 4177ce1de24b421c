"""Training: :class:`Seq2SeqTrainer` (the loop, logs, checkpoints, exact resume) and the
Multi30k recipe (``python -m tfm_rs.train.seq2seq``). Decoding lives in :mod:`tfm_rs.decode`."""

from tfm_rs.train.trainer import Seq2SeqTrainer, TrainConfig

__all__ = ["Seq2SeqTrainer", "TrainConfig"]
