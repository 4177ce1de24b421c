"""Training loops: one shared :class:`Trainer`, specialized by the data it batches.

:class:`Trainer` owns the optimizer (Adam), the learning-rate schedule, the logs, validation and
checkpoints; a subclass says how to draw a batch and how to run the model on it.
:class:`Seq2SeqTrainer` trains a :class:`~tfm_rs.models.Seq2SeqTransformer` on parallel token
ids (token-budget batches); :class:`tfm_rs.train.lm.LMTrainer` a
:class:`~tfm_rs.models.GPT` on a token stream. One *step* is one optimizer update:
``accum_steps`` micro-batches whose summed loss is divided by their total target-token count, so
the gradient is the token mean over the whole step (not a mean of per-batch means).

Schedules (``TrainConfig.schedule``), each a linear warmup to ``lr`` followed by:
``"inverse_sqrt"`` (alias ``"noam"``: the paper's eq. 3 parameterized by its peak ``lr``:
∝ 1/√step), ``"cosine"`` (a half cosine, :func:`tfm_rs.optim.lr_scheduler.cosine_decay`, down to
``min_lr_ratio · lr`` at the end of the budget, ``max_steps`` or ``max_minutes``, whichever runs
out first) or ``"constant"`` (``lr``). The warmup lasts ``warmup_steps`` updates, or, with
``warmup_fraction``, until that fraction of the budget is used if that comes first: a short time
budget gets a short warmup. The step at which the warmup ended is logged (a ``"warmup"`` record)
and checkpointed; every rate is a closed form of (step, training time, that step), so a resumed
run gets the same rates.

Every step appends a JSON line to ``<out_dir>/metrics.jsonl`` (``log_name``)::

    {"type": "train", "step", "epoch", "loss", "lr", "grad_norm", "tokens", "tgt_tokens",
     "tokens_per_s", "step_time", "train_time", "elapsed"}

``loss`` is the label-smoothed token-mean loss that was optimized, ``tokens`` counts real
(non-pad) input + target tokens, ``tokens_per_s`` is ``tokens / step_time``, ``train_time`` sums
step times (validation and checkpointing excluded), ``elapsed`` is wall-clock seconds since the
run started (carried across resumes). Validation lines are ``{"type": "valid", "step", "loss",
"ppl", "accuracy", "bleu"?, …}`` (``loss`` is the plain NLL, no smoothing; ``accuracy`` the
fraction of target tokens the argmax predicts).

Training runs where ``TrainConfig.device`` says (the model is moved there; by default it stays
where it is; batches are NumPy token ids either way). Checkpoints hold host copies of the weights
and optimizer state, so a run trained on the GPU loads on the CPU and the other way round, and
resumes on either.

Data-parallel training over MPI (``TrainConfig.distributed``, on automatically when
``tfm-rs train`` runs under ``mpirun``; :mod:`tfm_rs.distributed`, ``docs/distributed.md``):
every rank draws the same global sequence of batches and trains on its own ``accum_steps`` of
each step's ``world_size · accum_steps`` (a disjoint shard, a pure function of seed, epoch,
position and rank); the loss is divided by the *global* target-token count and the gradients are
summed over the ranks in buckets overlapped with the backward, so a step equals one process's
step over the union of the batches. Dropout masks are seeded per global micro-batch for the
same reason. Rank 0 alone logs (global tokens/s; ``comm_wait``: the seconds the slowest rank
waited on the all-reduce) and writes checkpoints; every rank resumes from them.

Checkpoints (``save``/``resume``) hold the model, optimizer, schedule position, data position, the
trainer's NumPy generator, tfm_rs's dropout RNG state, ``nn.init``'s generator and the counters,
so a resumed run continues with bit-identical losses.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from contextlib import nullcontext
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

import tfm_rs
import tfm_rs.functional as F
from tfm_rs import checkpoint as ckpt_lib
from tfm_rs import metrics, nn, optim
from tfm_rs._core import DeviceError, InvalidArgumentError, Tensor
from tfm_rs.amp import autocast
from tfm_rs.autograd import no_grad
from tfm_rs.data.batching import Seq2SeqBatch, TokenBatchSampler, collate
from tfm_rs.models import load_model_state

__all__ = ["DEVICES", "PRECISIONS", "SCHEDULES", "TrainConfig", "Trainer", "Seq2SeqTrainer", "check_device", "evaluate",
           "seq2seq_batches", "seq2seq_forward"]

SCHEDULES = ("inverse_sqrt", "noam", "cosine", "constant")
DEVICES = ("cpu", "gpu")
PRECISIONS = ("float32", "bf16")
Record = Dict[str, Any]


@dataclass
class TrainConfig:
    """Hyperparameters of a :class:`Trainer` (defaults: the Multi30k recipe).

    ``max_steps``/``max_minutes``: stop after that many updates / minutes of training time
    (whichever comes first; ``None`` = no limit). ``schedule``: one of :data:`SCHEDULES` (see the
    module docstring); ``min_lr_ratio``: the cosine schedule's floor as a fraction of ``lr``.
    ``valid_every``/``bleu_every``/``save_every``: every that many steps (0 = never).
    ``clip_norm``: global L2 clipping (``None`` = off; the norm is still measured and logged).
    ``device``: where the model, its gradients and the optimizer state live during training
    (``"cpu"``, or ``"gpu"``: the wgpu backend; see :func:`tfm_rs.gpu_available`); ``None``
    leaves the model where it is. ``distributed``: data-parallel over the MPI job this process
    belongs to (a job of one without ``mpirun``; see the module docstring), gradients reduced in
    buckets of ``bucket_cap_mb`` MB. ``precision``: ``"float32"``, or ``"bf16"`` mixed precision (the
    forward and backward matrix products take bf16 inputs with float32 accumulation, inside
    :class:`tfm_rs.autocast`; weights, optimizer state, checkpoints, validation and decoding stay
    float32; CPU only; see docs/precision.md).
    """

    max_tokens: int = 3000
    lr: float = 7e-4
    warmup_steps: int = 800
    warmup_fraction: Optional[float] = None
    schedule: str = "inverse_sqrt"
    min_lr_ratio: float = 0.0
    betas: Tuple[float, float] = (0.9, 0.98)
    eps: float = 1e-9
    weight_decay: float = 0.0
    label_smoothing: float = 0.1
    clip_norm: Optional[float] = None
    accum_steps: int = 1
    seed: int = 1
    max_steps: Optional[int] = None
    max_minutes: Optional[float] = None
    log_every: int = 1
    print_every: int = 50
    valid_every: int = 0
    bleu_every: int = 0
    bleu_subset: int = 200
    bleu_batch_size: int = 128
    save_every: int = 0
    max_len: Optional[int] = None
    device: Optional[str] = None
    distributed: bool = False
    bucket_cap_mb: float = 25.0
    precision: str = "float32"

    def __post_init__(self) -> None:
        if self.accum_steps < 1:
            raise InvalidArgumentError(f"TrainConfig: accum_steps must be ≥ 1, got {self.accum_steps}")
        if self.max_tokens <= 0 or self.lr <= 0 or self.warmup_steps < 1:
            raise InvalidArgumentError("TrainConfig: max_tokens, lr and warmup_steps must be positive")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise InvalidArgumentError(f"TrainConfig: clip_norm must be > 0 or None, got {self.clip_norm}")
        if self.schedule not in SCHEDULES:
            raise InvalidArgumentError(f"TrainConfig: schedule must be one of {', '.join(SCHEDULES)}, "
                                       f"got {self.schedule!r}")
        if self.warmup_fraction is not None and not 0.0 < self.warmup_fraction <= 1.0:
            raise InvalidArgumentError(f"TrainConfig: warmup_fraction must be in (0, 1] or None, got "
                                       f"{self.warmup_fraction}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise InvalidArgumentError(f"TrainConfig: min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.device is not None and self.device not in DEVICES:
            raise InvalidArgumentError(f"TrainConfig: device must be one of {', '.join(DEVICES)}, got {self.device!r}")
        if self.precision not in PRECISIONS:
            raise InvalidArgumentError(f"TrainConfig: precision must be one of {', '.join(PRECISIONS)}, got "
                                       f"{self.precision!r}")
        if self.precision == "bf16" and self.device == "gpu":
            raise InvalidArgumentError("TrainConfig: precision 'bf16' runs on the CPU only (device 'gpu' given)")
        self.betas = tuple(self.betas)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as plain JSON types."""
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


class Trainer:
    """The training loop shared by every model: optimizer, schedule, logs, validation,
    checkpoints with exact resume. Subclasses implement the data side:

    * :meth:`next_batch` → one training batch;
    * :meth:`forward_batch` ``(batch)`` → ``(logits (N, V), targets (N,), ignore_index)``;
    * :meth:`count_tokens` ``(batch)`` → ``(target tokens, all real tokens)``;
    * :meth:`valid_batches` → the validation batches (for :meth:`validation_loss`);
    * :meth:`data_state` / :meth:`load_data_state`: the data position, for checkpoints.

    Args:
        model: the model (it must have a JSON ``config`` and a ``state_dict``); it is moved to
            ``config.device`` in place, if one is given.
        config: :class:`TrainConfig`.
        out_dir: where the JSONL log and checkpoints go (``None``: no files).
        log_name: the JSONL log's file name inside ``out_dir``.
    """

    def __init__(self, model: Any, config: Optional[TrainConfig] = None, out_dir: Optional[os.PathLike] = None,
                 log_name: str = "metrics.jsonl") -> None:
        self.model = model
        self.config = config or TrainConfig()
        c = self.config
        if c.device is not None:
            check_device(c.device)
            model.to(c.device)
        self.params = list(model.parameters())
        self.ddp: Any = None
        self.rank, self.world_size = 0, 1
        if c.distributed:
            from tfm_rs import distributed as dist

            # Rank 0's initial weights are broadcast; the loss is divided by the global token
            # count, so the gradients are summed, not averaged.
            self.ddp = dist.DistributedDataParallel(model, bucket_cap_mb=c.bucket_cap_mb, reduce_op="sum")
            self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self.optimizer = optim.Adam(self.params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)
        # (step, budget fraction) at which the warmup ended; None while it lasts.
        self.warmup_end: Optional[Tuple[int, float]] = None
        if c.schedule == "cosine" and c.max_steps is None and c.max_minutes is None:
            raise InvalidArgumentError("TrainConfig: the cosine schedule needs max_steps or max_minutes (it decays "
                                       "to the end of the budget)")
        self.rng = np.random.default_rng(c.seed)
        self.step = 0
        self.train_time = 0.0
        self.tokens_seen = 0
        self._t_start = time.perf_counter()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._log_file = None
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.out_dir / log_name, "a", buffering=1)
        self.history: List[Record] = []

    # ------------------------------------------------------------------ the data side

    def next_batch(self) -> Any:
        """One training batch (subclasses)."""
        raise NotImplementedError

    def skip_batch(self) -> None:
        """Advance past one training batch (another rank's); subclasses may avoid building it."""
        self.next_batch()

    def forward_batch(self, batch: Any) -> Tuple[Tensor, np.ndarray, int]:
        """``(logits (N, V), targets (N,), ignore_index)`` of ``batch`` (subclasses)."""
        raise NotImplementedError

    def count_tokens(self, batch: Any) -> Tuple[int, int]:
        """``(target tokens, real input + target tokens)`` of ``batch`` (subclasses)."""
        raise NotImplementedError

    def valid_batches(self) -> Iterable[Any]:
        """The validation batches, in a fixed order (subclasses; none by default)."""
        raise InvalidArgumentError(f"{type(self).__name__}: no validation data given")

    def has_valid_data(self) -> bool:
        """Whether :meth:`valid_batches` has anything to iterate."""
        return False

    def data_state(self) -> Dict[str, Any]:
        """The data position (JSON), saved in checkpoints (subclasses)."""
        raise NotImplementedError

    def load_data_state(self, state: Dict[str, Any]) -> None:
        """Restore :meth:`data_state` (subclasses)."""
        raise NotImplementedError

    @property
    def epoch(self) -> int:
        """Passes over the training data so far (subclasses that know it)."""
        return 0

    # ------------------------------------------------------------------ logging

    def log(self, record: Record) -> None:
        """Keep ``record`` in :attr:`history` and append it to the JSONL log."""
        self.history.append(record)
        if self._log_file is not None:
            self._log_file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        """Close the JSONL log."""
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    @property
    def elapsed(self) -> float:
        """Wall-clock seconds since the run started (across resumes)."""
        return time.perf_counter() - self._t_start

    # ------------------------------------------------------------------ training

    def loss_sum(self, batch: Any, label_smoothing: float = 0.0) -> Tensor:
        """The summed (not averaged) cross-entropy over the batch's target tokens."""
        logits, targets, ignore = self.forward_batch(batch)
        return F.cross_entropy(logits, targets, ignore_index=ignore, reduction="sum", label_smoothing=label_smoothing)

    def current_lr(self) -> float:
        """The rate the next update will use."""
        return float(self.optimizer.param_groups[0]["lr"])

    def budget_fraction(self, step: int) -> float:
        """The fraction of the budget used by the end of update ``step`` (counted from 1) — in
        steps, or in training time so far, whichever is further along."""
        c = self.config
        frac = 0.0
        if c.max_steps:
            frac = step / c.max_steps
        if c.max_minutes:
            frac = max(frac, self.train_time / (60.0 * c.max_minutes))
        return frac

    def scheduled_lr(self) -> float:
        """The rate of the next update (see the module docstring). A closed form of the step, the
        training time and :attr:`warmup_end`, all checkpointed, so a resume is exact. The call that
        finds the warmup over sets :attr:`warmup_end` and logs the ``"warmup"`` record."""
        c = self.config
        step = self.step + 1
        frac = self.budget_fraction(step)
        if self.warmup_end is None:
            ramp = step / c.warmup_steps
            if c.warmup_fraction:
                ramp = max(ramp, frac / c.warmup_fraction)
            if ramp < 1.0:
                return c.lr * ramp
            end = min(step, c.warmup_steps)
            self.warmup_end = (end, frac)
            self.log({"type": "warmup", "step": end, "warmup_steps": end, "budget_fraction": frac,
                      "ended_by": "warmup_steps" if end == c.warmup_steps else "warmup_fraction"})
        end, end_frac = self.warmup_end
        if c.schedule in ("inverse_sqrt", "noam"):
            return c.lr if step <= end else c.lr * math.sqrt(end / step)
        if c.schedule == "cosine":
            progress = (frac - end_frac) / (1.0 - end_frac) if end_frac < 1.0 else 1.0
            return optim.lr_scheduler.cosine_decay(c.lr, c.lr * c.min_lr_ratio, progress)
        return c.lr

    def train_step(self) -> Record:
        """One optimizer update over ``accum_steps`` micro-batches; returns its metrics record."""
        c, m = self.config, self.model
        t0 = time.perf_counter()
        m.train()
        for group in self.optimizer.param_groups:
            group["lr"] = self.scheduled_lr()
        batches = self._step_batches()
        counts = [self.count_tokens(b) for _, b in batches]
        tgt_tokens = sum(n for n, _ in counts)
        tokens = sum(n for _, n in counts)
        if self.ddp is not None:
            tgt_tokens, tokens = self._all_reduce([tgt_tokens, tokens], np.int64)
        total = 0.0
        for i, (index, b) in enumerate(batches):
            with self._micro_batch(i, index, len(batches)):
                with autocast("cpu", dtype=c.precision):
                    loss = self.loss_sum(b, c.label_smoothing)
                (loss * (1.0 / tgt_tokens)).backward()
                total += float(loss.item())
        comm_wait = None
        if self.ddp is not None:
            comm_wait = self.ddp.synchronize()
            (total,) = self._all_reduce([total], np.float64)
        grad_norm = float(nn_clip(self.params, c.clip_norm))
        lr = self.current_lr()
        if math.isfinite(grad_norm):
            self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        dt = time.perf_counter() - t0
        if self.ddp is not None:  # the slowest rank's, so that every rank sees the same budget
            dt, comm_wait = self._all_reduce([dt, comm_wait], np.float64, op="max")
        self.train_time += dt
        self.tokens_seen += tokens
        rec = {"type": "train", "step": self.step, "epoch": self.epoch, "loss": total / tgt_tokens,
               "lr": lr, "grad_norm": grad_norm, "tokens": tokens, "tgt_tokens": tgt_tokens,
               "tokens_per_s": tokens / dt, "step_time": dt, "train_time": self.train_time,
               "elapsed": self.elapsed}
        if comm_wait is not None:
            rec["comm_wait"] = comm_wait
        if not math.isfinite(grad_norm):
            rec["skipped"] = "non-finite gradient norm"
        if c.log_every and self.step % c.log_every == 0:
            self.log(rec)
        return rec

    def _step_batches(self) -> List[Tuple[int, Any]]:
        """This rank's micro-batches of the step, with their global indices: all ``accum_steps``
        of them on one process; under ``distributed``, the ``rank``-th run of ``accum_steps`` out
        of the ``world_size · accum_steps`` every rank draws in the same order."""
        a = self.config.accum_steps
        if self.ddp is None:
            return [(i, self.next_batch()) for i in range(a)]
        mine = []
        for index in range(self.world_size * a):
            if index // a == self.rank:
                mine.append((index, self.next_batch()))
            else:
                self.skip_batch()
        return mine

    def _micro_batch(self, i: int, index: int, count: int) -> Any:
        """The context of micro-batch ``i`` of ``count`` (global ``index``): under ``distributed``
        its dropout seed is a function of (seed, step, index), and all but the last backward
        accumulate without communication."""
        if self.ddp is None:
            return nullcontext()
        from tfm_rs.distributed import dropout_seed

        tfm_rs.set_rng_state(dropout_seed(self.config.seed, self.step, index))
        return self.ddp.no_sync() if i < count - 1 else nullcontext()

    def _all_reduce(self, values: Sequence[Any], dtype: Any, op: str = "sum") -> List[Any]:
        from tfm_rs.distributed import all_reduce_values

        return all_reduce_values(values, op, dtype)

    def done(self) -> bool:
        """Whether the step or time budget is used up."""
        c = self.config
        if c.max_steps is not None and self.step >= c.max_steps:
            return True
        return c.max_minutes is not None and self.train_time >= 60.0 * c.max_minutes


    def train(self, max_steps: Optional[int] = None, max_minutes: Optional[float] = None,
              verbose: bool = True, callback: Optional[Callable[[Record], None]] = None) -> List[Record]:
        """Train until ``max_steps`` total steps or ``max_minutes`` of training time (arguments
        override the config's). Validates, computes BLEU and saves at the configured intervals;
        ``callback`` gets every train and validation record as it is made (progress bars).
        Returns the train records of this call."""
        c = self.config
        if max_steps is not None:
            c.max_steps = max_steps
        if max_minutes is not None:
            c.max_minutes = max_minutes
        records = []
        window: List[Record] = []
        while not self.done():
            rec = self.train_step()
            records.append(rec)
            window.append(rec)
            if callback is not None:
                callback(rec)
            if verbose and c.print_every and self.step % c.print_every == 0:
                tok = sum(r["tokens"] for r in window)
                sec = sum(r["step_time"] for r in window)
                print(f"step {self.step:6d}  loss {np.mean([r['loss'] for r in window]):.3f}  lr {rec['lr']:.2e}  "
                      f"gnorm {rec['grad_norm']:.2f}  {tok / sec:7.0f} tok/s  train {self.train_time / 60:.1f} min",
                      flush=True)
                window = []
            bleu_now = bool(c.bleu_every) and self.step % c.bleu_every == 0
            if ((c.valid_every and self.step % c.valid_every == 0) or bleu_now) and self.is_main:
                v = self.validate(bleu=bleu_now)
                if callback is not None:
                    callback(v)
                if verbose:
                    print("valid " + "  ".join(f"{k} {v[k]:.3f}" for k in ("loss", "ppl", "bleu") if k in v),
                          flush=True)
            if c.save_every and self.out_dir is not None and self.step % c.save_every == 0:
                self.save()
        return records

    # ------------------------------------------------------------------ evaluation

    def evaluate_batches(self, batches: Iterable[Any]) -> Dict[str, float]:
        """:func:`evaluate` with this trainer's model and :meth:`forward_batch`."""
        return evaluate(self.model, batches, lambda m, b: self.forward_batch(b))

    def validation_loss(self) -> Dict[str, float]:
        """:meth:`evaluate_batches` over the validation data."""
        return self.evaluate_batches(self.valid_batches())

    def extra_validation(self, record: Record, bleu: bool) -> None:
        """Add model-specific scores to a validation record (BLEU for translation)."""

    def validate(self, bleu: bool = True) -> Record:
        """Validation loss, perplexity and accuracy (if there is validation data) plus
        :meth:`extra_validation`; logged as a ``"valid"`` record."""
        t0 = time.perf_counter()
        rec: Record = {"type": "valid", "step": self.step, "train_time": self.train_time}
        if self.has_valid_data():
            rec.update(self.validation_loss())
        self.extra_validation(rec, bleu)
        rec["eval_time"] = time.perf_counter() - t0
        rec["elapsed"] = self.elapsed
        self.log(rec)
        return rec

    # ------------------------------------------------------------------ checkpoints

    def state_extra(self) -> Dict[str, Any]:
        """Everything but the weights, optimizer and schedule that a resume needs."""
        return {"step": self.step, "train_time": self.train_time, "tokens_seen": self.tokens_seen,
                "elapsed": self.elapsed, "sampler": self.data_state(), "numpy_rng": ckpt_lib.rng_state(self.rng),
                "tfm_rng": int(tfm_rs.get_rng_state()), "init_rng": ckpt_lib.rng_state(nn.init.generator()),
                "warmup_end": list(self.warmup_end) if self.warmup_end is not None else None,
                "train_config": self.config.to_dict()}

    def save(self, path: Optional[os.PathLike] = None) -> Path:
        """Checkpoint everything needed for an exact resume (default ``<out_dir>/checkpoint``).
        Under ``distributed`` only rank 0 writes (the state is the same on every rank); the
        others return the path."""
        if path is None:
            if self.out_dir is None:
                raise InvalidArgumentError(f"{type(self).__name__}.save: no path and no out_dir")
            path = self.out_dir / "checkpoint"
        if not self.is_main:
            return Path(path)
        return ckpt_lib.save_checkpoint(path, self.model.state_dict(), self.model.config,
                                        optimizer_state=self.optimizer.state_dict(), extra=self.state_extra())

    def resume(self, path: os.PathLike) -> None:
        """Continue from a :meth:`save` checkpoint: weights (the architecture is checked first),
        optimizer moments, schedule position, data position and every RNG."""
        ck = ckpt_lib.load_checkpoint(path)
        load_model_state(self.model, ck)
        if ck.optimizer_state is not None:
            self.optimizer.load_state_dict(ck.optimizer_state)
        ex = ck.extra
        self.load_data_state(ex["sampler"])
        ckpt_lib.set_rng_state(self.rng, ex["numpy_rng"])
        tfm_rs.set_rng_state(int(ex["tfm_rng"]))
        nn.init.set_rng_state(ex["init_rng"])
        self.step = int(ex["step"])
        end = ex.get("warmup_end")
        self.warmup_end = (int(end[0]), float(end[1])) if end else None
        self.train_time = float(ex.get("train_time", 0.0))
        self.tokens_seen = int(ex.get("tokens_seen", 0))
        self._t_start = time.perf_counter() - float(ex.get("elapsed", 0.0))


class Seq2SeqTrainer(Trainer):
    """Trains a :class:`~tfm_rs.models.Seq2SeqTransformer` on ``(src_ids, tgt_ids)`` lists of
    token-id lists (no BOS/EOS; :func:`tfm_rs.data.collate` adds them).

    Args:
        model: the model (its ``pad_id``/``bos_id``/``eos_id``/``max_len`` are used).
        train_data: ``(src_ids, tgt_ids)``.
        config: :class:`TrainConfig`.
        out_dir: where the JSONL log and checkpoints go (``None``: no files).
        valid_data: optional ``(src_ids, tgt_ids)`` for the validation loss.
        valid_texts: optional ``(src_sentences, reference_sentences)`` for greedy BLEU (needs
            ``tokenizer``).
        tokenizer: a :class:`tfm_rs.data.Tokenizer` (BLEU decoding).
        log_name: the JSONL log's file name.
    """

    def __init__(self, model: Any, train_data: Tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]],
                 config: Optional[TrainConfig] = None, out_dir: Optional[os.PathLike] = None,
                 valid_data: Optional[Tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]]] = None,
                 valid_texts: Optional[Tuple[Sequence[str], Sequence[str]]] = None, tokenizer: Any = None,
                 log_name: str = "metrics.jsonl") -> None:
        c = config or TrainConfig()
        self.src_ids, self.tgt_ids = list(train_data[0]), list(train_data[1])
        if len(self.src_ids) != len(self.tgt_ids):
            raise InvalidArgumentError(f"Seq2SeqTrainer: {len(self.src_ids)} source but {len(self.tgt_ids)} "
                                       "target examples")
        if not self.src_ids:
            raise InvalidArgumentError("Seq2SeqTrainer: the training data is empty")
        max_len = c.max_len if c.max_len is not None else model.max_len
        self.sampler = TokenBatchSampler(self.src_ids, self.tgt_ids, c.max_tokens, shuffle=True, seed=c.seed,
                                         max_len=max_len)
        if not self.sampler.kept_indices.size:
            raise InvalidArgumentError(f"Seq2SeqTrainer: no usable training example ({self.sampler.stats})")
        self.valid_data = valid_data
        self.valid_texts = valid_texts
        self.tokenizer = tokenizer
        self._iter: Optional[Iterator[List[int]]] = None
        super().__init__(model, c, out_dir, log_name)

    # ------------------------------------------------------------------ batches

    def _next_indices(self) -> List[int]:
        for _ in range(2):
            if self._iter is None:
                self._iter = iter(self.sampler)
            try:
                return next(self._iter)
            except StopIteration:
                self._iter = None  # epoch finished: the sampler has moved to the next one
        raise InvalidArgumentError("Seq2SeqTrainer: the sampler yields no batches")

    def skip_batch(self) -> None:
        self._next_indices()

    def next_batch(self) -> Seq2SeqBatch:
        """The next token-budget batch of the training data."""
        m, idx = self.model, self._next_indices()
        return collate([self.src_ids[i] for i in idx], [self.tgt_ids[i] for i in idx], m.pad_id, m.bos_id,
                       m.eos_id, idx)

    def forward_batch(self, batch: Seq2SeqBatch) -> Tuple[Tensor, np.ndarray, int]:
        """:func:`seq2seq_forward` of ``batch``."""
        return seq2seq_forward(self.model, batch)

    def count_tokens(self, batch: Seq2SeqBatch) -> Tuple[int, int]:
        """Non-pad target tokens (with EOS), and those plus the non-pad source tokens."""
        return batch.num_tokens, batch.num_tokens + batch.num_src_tokens

    def has_valid_data(self) -> bool:
        return self.valid_data is not None

    def valid_batches(self) -> Iterator[Seq2SeqBatch]:
        """``valid_data`` in length-bucketed token-budget batches (no shuffling)."""
        if self.valid_data is None:
            raise InvalidArgumentError("Seq2SeqTrainer: no valid_data given")
        return seq2seq_batches(self.model, *self.valid_data, self.config.max_tokens, self.config.max_len)

    def data_state(self) -> Dict[str, Any]:
        return self.sampler.state_dict()

    def load_data_state(self, state: Dict[str, Any]) -> None:
        self.sampler.load_state_dict(state)
        self._iter = None

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    # ------------------------------------------------------------------ evaluation

    def bleu(self, sources: Sequence[str], references: Sequence[str]) -> Dict[str, Any]:
        """Greedy-decode ``sources`` and score them against ``references`` (sacrebleu, cased)."""
        if self.tokenizer is None:
            raise InvalidArgumentError("Seq2SeqTrainer: BLEU needs a tokenizer")
        t0 = time.perf_counter()
        hyps = self.model.translate(sources, self.tokenizer, num_beams=1, batch_size=self.config.bleu_batch_size)
        score = metrics.bleu(hyps, list(references))
        return {"bleu": score, "decode_time": time.perf_counter() - t0, "hypotheses": hyps}

    def extra_validation(self, record: Record, bleu: bool) -> None:
        """Greedy BLEU on the first ``bleu_subset`` sentences of ``valid_texts`` (if given and ``bleu``)."""
        if bleu and self.valid_texts is not None and self.tokenizer is not None:
            n = self.config.bleu_subset
            srcs, refs = self.valid_texts
            out = self.bleu(srcs[:n], refs[:n])
            record.update(bleu=out["bleu"], bleu_sentences=len(srcs[:n]))


def evaluate(model: Any, batches: Iterable[Any],
             forward: Callable[[Any, Any], Tuple[Tensor, np.ndarray, int]]) -> Dict[str, float]:
    """Token-mean NLL (no label smoothing), perplexity and token accuracy of ``model`` over
    ``batches``; ``forward(model, batch)`` gives ``(logits (N, V), targets (N,), ignore_index)``
    (:func:`seq2seq_forward`, :func:`tfm_rs.train.lm.lm_forward`). Runs in eval mode without
    gradients; the model's mode is restored."""
    total, count, correct = 0.0, 0, 0
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            for b in batches:
                logits, targets, ignore = forward(model, b)
                total += float(F.cross_entropy(logits, targets, ignore_index=ignore, reduction="sum").item())
                ok, n = metrics.token_accuracy(logits.numpy(), targets, ignore_index=ignore, return_counts=True)
                correct += ok
                count += n
    finally:
        model.train(was_training)
    mean = total / max(count, 1)
    return {"loss": mean, "ppl": metrics.perplexity(mean), "accuracy": correct / max(count, 1), "tokens": count}


def seq2seq_forward(model: Any, batch: Seq2SeqBatch) -> Tuple[Tensor, np.ndarray, int]:
    """Teacher-forced logits ``(B·T, V)`` of ``batch.tgt_out`` given ``batch.src`` and
    ``batch.tgt_in``, the targets ``(B·T,)`` and the pad id to ignore."""
    logits = model(batch.src, batch.tgt_in)
    return logits.reshape(-1, model.tgt_vocab_size), batch.tgt_out.reshape(-1), model.pad_id


def seq2seq_batches(model: Any, src_ids: Sequence[Sequence[int]], tgt_ids: Sequence[Sequence[int]],
                    max_tokens: int, max_len: Optional[int] = None) -> Iterator[Seq2SeqBatch]:
    """``(src_ids, tgt_ids)`` in length-bucketed token-budget batches, in a fixed order (pairs
    longer than ``max_len``, default ``model.max_len``, or empty are left out)."""
    sampler = TokenBatchSampler(src_ids, tgt_ids, max_tokens, shuffle=False, bucket=True,
                                max_len=max_len if max_len is not None else model.max_len)
    for idx in sampler:
        yield collate([src_ids[i] for i in idx], [tgt_ids[i] for i in idx], model.pad_id, model.bos_id,
                      model.eos_id, idx)


def check_device(device: str) -> None:
    """Raise :class:`tfm_rs.DeviceError`, saying why, when ``device`` is the GPU and there is none
    (tfm_rs built without the backend, no adapter, ``TFM_RS_GPU=0``)."""
    if device != "cpu" and not tfm_rs.gpu_available():
        raise DeviceError(f"training on device {device!r}: no GPU is available ({tfm_rs.gpu_info(reason=True)})")


def nn_clip(params: Sequence[Any], clip_norm: Optional[float]) -> float:
    """Global L2 gradient norm, clipping to ``clip_norm`` when given (``clip_grad_norm_``).
    Without clipping the norm is only measured, with one float32 dot product per gradient
    (cheaper than ``clip_grad_norm_``'s float64 copies; it is only logged)."""
    if clip_norm is not None:
        return float(optim.clip_grad_norm_(params, clip_norm).item())
    total = 0.0
    for p in params:
        if p.grad is not None:
            g = p.grad.numpy().ravel()
            total += float(np.dot(g, g))
    return math.sqrt(total)
