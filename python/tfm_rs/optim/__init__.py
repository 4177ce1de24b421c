"""Optimizers, learning-rate schedules and gradient clipping, with ``torch.optim``'s names.

``tfm_rs.optim.SGD/Adam/AdamW`` (update in Rust), ``tfm_rs.optim.lr_scheduler`` (as
``torch.optim.lr_scheduler``), and ``clip_grad_norm_``/``clip_grad_value_`` (in torch they live in
``torch.nn.utils``; here they sit beside the optimizers, which are what they prepare for).
"""

from tfm_rs.optim import lr_scheduler
from tfm_rs.optim.clip import clip_grad_norm_, clip_grad_value_
from tfm_rs.optim.lr_scheduler import (
    ConstantLR,
    InverseSqrtLR,
    LambdaLR,
    LRScheduler,
    NoamLR,
    WarmupCosineLR,
)
from tfm_rs.optim.optimizer import SGD, Adam, AdamW, Optimizer, ParamsT

__all__ = [
    "Optimizer",
    "SGD",
    "Adam",
    "AdamW",
    "ParamsT",
    "lr_scheduler",
    "LRScheduler",
    "LambdaLR",
    "ConstantLR",
    "NoamLR",
    "InverseSqrtLR",
    "WarmupCosineLR",
    "clip_grad_norm_",
    "clip_grad_value_",
]
