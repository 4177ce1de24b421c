"""Learning-rate schedules with ``torch.optim.lr_scheduler``'s names and protocol.

Protocol (as in PyTorch): constructing a scheduler records ``initial_lr`` in every parameter group
and sets the learning rate for ``last_epoch = 0``; the training loop then calls
``optimizer.step()`` followed by ``scheduler.step()``, which advances ``last_epoch`` by one and
writes the next rate into the groups. ``get_last_lr()`` is the list of rates now in force.

Every schedule here is closed form in ``last_epoch`` (no chained, multiplicative updates), so a
``state_dict()`` holds only plain numbers (JSON-serializable, for :mod:`tfm_rs.checkpoint`) and
``load_state_dict`` reproduces the exact rate sequence of an uninterrupted run.

Warm-up schedules (:class:`NoamLR`, :class:`InverseSqrtLR`, :class:`WarmupCosineLR`) count
training steps from 1, as the paper does: the rate in force at ``last_epoch = e`` is the rate of
training step ``e + 1``, i.e. the rate the ``(e+1)``-th ``optimizer.step()`` uses. That way the
first update does not get the degenerate rate 0 of "step 0", and the peak is reached by the
``warmup_steps``-th update (``last_epoch == warmup_steps - 1``).
"""

from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

from tfm_rs import _core

__all__ = [
    "LRScheduler",
    "LambdaLR",
    "ConstantLR",
    "NoamLR",
    "InverseSqrtLR",
    "WarmupCosineLR",
    "cosine_decay",
]


def cosine_decay(peak: float, floor: float, progress: float) -> float:
    """The half-cosine from ``peak`` (``progress`` 0) down to ``floor`` (``progress`` ≥ 1): the one
    cosine formula, used by :class:`WarmupCosineLR` (progress in steps after the warm-up) and by
    :class:`tfm_rs.train.Trainer` (progress through the rest of a step or time budget)."""
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))


class LRScheduler:
    """Base class. Subclasses implement :meth:`get_lr` as a function of ``self.last_epoch``."""

    def __init__(self, optimizer, last_epoch: int = -1) -> None:
        if not hasattr(optimizer, "param_groups"):
            raise _core.InvalidArgumentError(
                f"{type(self).__name__}: expected an Optimizer, got {type(optimizer).__name__}")
        self.optimizer = optimizer
        if last_epoch == -1:
            for group in optimizer.param_groups:
                group.setdefault("initial_lr", group["lr"])
        else:
            # Resuming by constructor argument (torch): the groups must already carry initial_lr.
            for i, group in enumerate(optimizer.param_groups):
                if "initial_lr" not in group:
                    raise KeyError(
                        f"param 'initial_lr' is not specified in param_groups[{i}] when resuming an optimizer")
        self.base_lrs: List[float] = [float(g["initial_lr"]) for g in optimizer.param_groups]
        self.last_epoch = last_epoch
        self._step_count = 0
        self._last_lr: List[float] = []
        self.step()

    def get_lr(self) -> List[float]:
        """Rates for the current ``self.last_epoch``, one per parameter group."""
        raise NotImplementedError

    def get_last_lr(self) -> List[float]:
        """The rates last written into the optimizer's parameter groups."""
        return list(self._last_lr)

    def step(self, epoch: Optional[int] = None) -> None:
        """Advance one step (or jump to ``epoch``; every schedule here is closed form, so a jump
        is exact) and write the new rates into the optimizer."""
        self._step_count += 1
        self.last_epoch = self.last_epoch + 1 if epoch is None else int(epoch)
        self._apply(self.get_lr())

    def _apply(self, lrs: Sequence[float]) -> None:
        for group, lr in zip(self.optimizer.param_groups, lrs):
            group["lr"] = float(lr)
        self._last_lr = [float(g["lr"]) for g in self.optimizer.param_groups]

    # Attributes that are not state: the optimizer itself and (LambdaLR) user functions.
    _not_state = ("optimizer",)

    def state_dict(self) -> Dict[str, Any]:
        """Everything but the optimizer, as in torch; here only ints, floats and lists of them."""
        return {k: (list(v) if isinstance(v, (list, tuple)) else v)
                for k, v in self.__dict__.items() if k not in self._not_state}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restore the schedule's position. Unlike torch, the restored rate is also written into
        the optimizer's groups at once, so a resumed run is right even when the optimizer's own
        state was not restored (for a closed-form schedule this is the same value torch would get
        from the optimizer's saved state)."""
        own = set(self.__dict__) - set(self._not_state)
        unknown = set(state_dict) - own
        if unknown:
            raise _core.InvalidArgumentError(
                f"{type(self).__name__}.load_state_dict: unexpected keys {sorted(unknown)}")
        self.__dict__.update({k: (list(v) if isinstance(v, (list, tuple)) else v) for k, v in state_dict.items()})
        if len(self.base_lrs) != len(self.optimizer.param_groups):
            raise _core.ShapeError(
                f"{type(self).__name__}.load_state_dict: state for {len(self.base_lrs)} parameter groups, "
                f"the optimizer has {len(self.optimizer.param_groups)}")
        self._apply(self.get_lr())


class LambdaLR(LRScheduler):
    """``lr = base_lr * lr_lambda(last_epoch)``; ``lr_lambda`` is one function or one per group.

    The functions are not part of ``state_dict()`` (torch drops them too): construct the
    scheduler with the same functions before ``load_state_dict``.
    """

    _not_state = ("optimizer", "lr_lambdas")

    def __init__(self, optimizer, lr_lambda: Union[Callable[[int], float], Sequence[Callable[[int], float]]],
                 last_epoch: int = -1) -> None:
        n = len(optimizer.param_groups)
        if callable(lr_lambda):
            self.lr_lambdas = [lr_lambda] * n
        else:
            self.lr_lambdas = list(lr_lambda)
            if len(self.lr_lambdas) != n:
                raise _core.InvalidArgumentError(f"LambdaLR: expected {n} lr_lambdas, got {len(self.lr_lambdas)}")
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        return [base * f(self.last_epoch) for base, f in zip(self.base_lrs, self.lr_lambdas)]


class ConstantLR(LRScheduler):
    """torch's ``ConstantLR``: ``base_lr * factor`` while ``last_epoch < total_iters``, then
    ``base_lr``. ``ConstantLR(opt, factor=1.0)`` is a plain constant schedule (the default arguments
    are torch's: ``factor=1/3, total_iters=5``)."""

    def __init__(self, optimizer, factor: float = 1.0 / 3, total_iters: int = 5, last_epoch: int = -1) -> None:
        if not 0.0 <= factor <= 1.0:
            raise _core.InvalidArgumentError(f"ConstantLR: factor must be in [0, 1], got {factor}")
        if total_iters < 0:
            raise _core.InvalidArgumentError(f"ConstantLR: total_iters must be ≥ 0, got {total_iters}")
        self.factor = float(factor)
        self.total_iters = int(total_iters)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        scale = self.factor if self.last_epoch < self.total_iters else 1.0
        return [base * scale for base in self.base_lrs]


def _check_warmup(name: str, warmup_steps: int) -> int:
    if int(warmup_steps) != warmup_steps or warmup_steps < 0:
        raise _core.InvalidArgumentError(f"{name}: warmup_steps must be an integer ≥ 0, got {warmup_steps}")
    return int(warmup_steps)


class NoamLR(LRScheduler):
    """The schedule of "Attention Is All You Need" (eq. 3)::

        lr(step) = factor * d_model**-0.5 * min(step**-0.5, step * warmup_steps**-1.5)

    with ``step = last_epoch + 1`` (see the module docstring). The optimizer's own ``lr`` is
    ignored: the formula gives the absolute rate (build the optimizer with any ``lr``, e.g. 1.0).
    The peak, ``factor * (d_model * warmup_steps)**-0.5``, is reached at ``step == warmup_steps``.
    The paper: ``d_model=512, warmup_steps=4000``, Adam ``betas=(0.9, 0.98), eps=1e-9``.
    """

    def __init__(self, optimizer, d_model: int, warmup_steps: int = 4000, factor: float = 1.0,
                 last_epoch: int = -1) -> None:
        if d_model <= 0:
            raise _core.InvalidArgumentError(f"NoamLR: d_model must be > 0, got {d_model}")
        self.warmup_steps = _check_warmup("NoamLR", warmup_steps)
        if self.warmup_steps == 0:
            raise _core.InvalidArgumentError("NoamLR: warmup_steps must be > 0 (the formula divides by it)")
        self.d_model = int(d_model)
        self.factor = float(factor)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        step = max(self.last_epoch + 1, 1)
        lr = self.factor * self.d_model ** -0.5 * min(step ** -0.5, step * self.warmup_steps ** -1.5)
        return [lr for _ in self.base_lrs]


class InverseSqrtLR(LRScheduler):
    """Noam's shape parameterized by its peak (fairseq's ``inverse_sqrt``)::

        lr(step) = peak_lr * step / warmup_steps          for step <= warmup_steps
                 = peak_lr * sqrt(warmup_steps / step)    after

    with ``step = last_epoch + 1``. ``peak_lr=None`` takes each group's initial ``lr`` as its peak.
    ``InverseSqrtLR(opt, w, factor * (d_model * w) ** -0.5)`` equals ``NoamLR(opt, d_model, w, factor)``.
    """

    def __init__(self, optimizer, warmup_steps: int, peak_lr: Optional[float] = None, last_epoch: int = -1) -> None:
        self.warmup_steps = _check_warmup("InverseSqrtLR", warmup_steps)
        if peak_lr is not None and peak_lr < 0:
            raise _core.InvalidArgumentError(f"InverseSqrtLR: peak_lr must be ≥ 0, got {peak_lr}")
        self.peak_lr = None if peak_lr is None else float(peak_lr)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        step = max(self.last_epoch + 1, 1)
        w = self.warmup_steps
        scale = step / w if step <= w else math.sqrt(w / step)
        peaks = self.base_lrs if self.peak_lr is None else [self.peak_lr] * len(self.base_lrs)
        return [peak * scale for peak in peaks]


class WarmupCosineLR(LRScheduler):
    """Linear warm-up from 0 to each group's initial ``lr`` over ``warmup_steps``, then a half-cosine
    decay to ``min_lr`` at ``step == total_steps``, then ``min_lr``::

        lr(step) = base * step / warmup_steps                                   step <= warmup
                 = min_lr + (base - min_lr) * (1 + cos(pi * p)) / 2,
                   p = (step - warmup_steps) / (total_steps - warmup_steps)      after (p clamped to 1)

    with ``step = last_epoch + 1``.
    """

    def __init__(self, optimizer, warmup_steps: int, total_steps: int, min_lr: float = 0.0,
                 last_epoch: int = -1) -> None:
        self.warmup_steps = _check_warmup("WarmupCosineLR", warmup_steps)
        if total_steps <= self.warmup_steps:
            raise _core.InvalidArgumentError(
                f"WarmupCosineLR: total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})")
        if min_lr < 0:
            raise _core.InvalidArgumentError(f"WarmupCosineLR: min_lr must be ≥ 0, got {min_lr}")
        self.total_steps = int(total_steps)
        self.min_lr = float(min_lr)
        super().__init__(optimizer, last_epoch)

    def get_lr(self) -> List[float]:
        step = max(self.last_epoch + 1, 1)
        w = self.warmup_steps
        if step <= w:
            return [base * step / w for base in self.base_lrs]
        p = (step - w) / (self.total_steps - w)
        return [cosine_decay(base, self.min_lr, p) for base in self.base_lrs]
