"""A training loop for sequence-to-sequence models on parallel token ids.

:class:`Seq2SeqTrainer` owns the optimizer (Adam), the schedule (inverse square root with
linear warmup), the token-budget batch sampler and the logs. One *step* is one optimizer update:
``accum_steps`` micro-batches whose summed loss is divided by their total target-token count,
so the gradient is the token mean over the whole step (not a mean of per-batch means).

Every step appends a JSON line to ``<out_dir>/train.jsonl``::

    {"type": "train", "step", "epoch", "loss", "lr", "grad_norm", "tokens", "tgt_tokens",
     "tok_per_s", "step_time", "train_time", "wall"}

``loss`` is the label-smoothed token-mean loss that was optimized, ``tokens`` counts real
(non-pad) source + target tokens, ``tok_per_s`` is ``tokens / step_time``, ``train_time`` sums
step times (validation and checkpointing excluded), ``wall`` is seconds since the trainer started.
Validation lines are ``{"type": "valid", "step", "loss", "ppl", "bleu"?, …}`` (``loss`` is the
plain NLL, no smoothing).

Checkpoints (``save``/``resume``) hold the model, optimizer, scheduler, sampler position, the
trainer's NumPy generator, tfm_rs's dropout RNG state, ``nn.init``'s generator and the counters,
so a resumed run continues with bit-identical losses.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

import tfm_rs
from tfm_rs import checkpoint as ckpt_lib
from tfm_rs import metrics, nn, optim
from tfm_rs._core import InvalidArgumentError
from tfm_rs.autograd import no_grad
from tfm_rs.data.batching import Seq2SeqBatch, TokenBatchSampler, collate
from tfm_rs.models import load_model_state

__all__ = ["TrainConfig", "Seq2SeqTrainer"]


@dataclass
class TrainConfig:
    """Hyperparameters of :class:`Seq2SeqTrainer` (defaults: the Multi30k recipe).

    ``max_steps``/``max_minutes``: stop after that many updates / minutes of training time
    (whichever comes first; ``None`` = no limit). ``valid_every``/``bleu_every``/``save_every``:
    every that many steps (0 = never). ``clip_norm``: global L2 clipping (``None`` = off; the
    norm is still measured and logged).
    """

    max_tokens: int = 3000
    lr: float = 7e-4
    warmup_steps: int = 800
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

    def __post_init__(self) -> None:
        if self.accum_steps < 1:
            raise InvalidArgumentError(f"TrainConfig: accum_steps must be ≥ 1, got {self.accum_steps}")
        if self.max_tokens <= 0 or self.lr <= 0 or self.warmup_steps < 1:
            raise InvalidArgumentError("TrainConfig: max_tokens, lr and warmup_steps must be positive")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise InvalidArgumentError(f"TrainConfig: clip_norm must be > 0 or None, got {self.clip_norm}")
        self.betas = tuple(self.betas)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d


class Seq2SeqTrainer:
    """Trains a :class:`~tfm_rs.models.Seq2SeqTransformer` on ``(src_ids, tgt_ids)`` lists of
    token-id lists (no BOS/EOS; :func:`tfm_rs.data.collate` adds them).

    Args:
        model: the model (its ``pad_id``/``bos_id``/``eos_id``/``max_len`` are used).
        train_data: ``(src_ids, tgt_ids)``.
        config: :class:`TrainConfig`.
        out_dir: where ``train.jsonl`` and checkpoints go (``None``: no files).
        valid_data: optional ``(src_ids, tgt_ids)`` for the validation loss.
        valid_texts: optional ``(src_sentences, reference_sentences)`` for greedy BLEU (needs
            ``tokenizer``).
        tokenizer: a :class:`tfm_rs.data.Tokenizer` (BLEU decoding).
    """

    def __init__(self, model: Any, train_data: Tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]],
                 config: Optional[TrainConfig] = None, out_dir: Optional[os.PathLike] = None,
                 valid_data: Optional[Tuple[Sequence[Sequence[int]], Sequence[Sequence[int]]]] = None,
                 valid_texts: Optional[Tuple[Sequence[str], Sequence[str]]] = None, tokenizer: Any = None) -> None:
        self.model = model
        self.config = config or TrainConfig()
        c = self.config
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
        self.params = list(model.parameters())
        self.optimizer = optim.Adam(self.params, lr=c.lr, betas=c.betas, eps=c.eps, weight_decay=c.weight_decay)
        self.scheduler = optim.lr_scheduler.InverseSqrtLR(self.optimizer, c.warmup_steps, peak_lr=c.lr)
        self.rng = np.random.default_rng(c.seed)
        self.step = 0
        self.train_time = 0.0
        self.tokens_seen = 0
        self._iter: Optional[Iterator[List[int]]] = None
        self._t_start = time.perf_counter()
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self._log_file = None
        if self.out_dir is not None:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.out_dir / "train.jsonl", "a", buffering=1)
        self.history: List[Dict[str, Any]] = []

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

    def next_batch(self) -> Seq2SeqBatch:
        m = self.model
        idx = self._next_indices()
        return collate([self.src_ids[i] for i in idx], [self.tgt_ids[i] for i in idx], m.pad_id, m.bos_id,
                       m.eos_id, idx)

    # ------------------------------------------------------------------ logging

    def log(self, record: Dict[str, Any]) -> None:
        self.history.append(record)
        if self._log_file is not None:
            self._log_file.write(json.dumps(record) + "\n")

    def close(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    # ------------------------------------------------------------------ training

    def train_step(self) -> Dict[str, Any]:
        """One optimizer update over ``accum_steps`` micro-batches; returns its metrics record."""
        c, m = self.config, self.model
        t0 = time.perf_counter()
        m.train()
        batches = [self.next_batch() for _ in range(c.accum_steps)]
        tgt_tokens = sum(b.num_tokens for b in batches)
        tokens = tgt_tokens + sum(b.num_src_tokens for b in batches)
        total = 0.0
        for b in batches:
            loss = m.loss(b.src, b.tgt_in, b.tgt_out, label_smoothing=c.label_smoothing, reduction="sum")
            (loss * (1.0 / tgt_tokens)).backward()
            total += float(loss.item())
        grad_norm = float(nn_clip(self.params, c.clip_norm))
        lr = float(self.optimizer.param_groups[0]["lr"])
        if math.isfinite(grad_norm):
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad()
        self.step += 1
        dt = time.perf_counter() - t0
        self.train_time += dt
        self.tokens_seen += tokens
        rec = {"type": "train", "step": self.step, "epoch": self.sampler.epoch, "loss": total / tgt_tokens,
               "lr": lr, "grad_norm": grad_norm, "tokens": tokens, "tgt_tokens": tgt_tokens,
               "tok_per_s": tokens / dt, "step_time": dt, "train_time": self.train_time,
               "wall": time.perf_counter() - self._t_start}
        if not math.isfinite(grad_norm):
            rec["skipped"] = "non-finite gradient norm"
        if c.log_every and self.step % c.log_every == 0:
            self.log(rec)
        return rec

    def _done(self) -> bool:
        c = self.config
        if c.max_steps is not None and self.step >= c.max_steps:
            return True
        return c.max_minutes is not None and self.train_time >= 60.0 * c.max_minutes

    def train(self, max_steps: Optional[int] = None, max_minutes: Optional[float] = None,
              verbose: bool = True) -> List[Dict[str, Any]]:
        """Train until ``max_steps`` total steps or ``max_minutes`` of training time (arguments
        override the config's). Validates, computes BLEU and saves at the configured intervals;
        returns the train records of this call."""
        c = self.config
        if max_steps is not None:
            c.max_steps = max_steps
        if max_minutes is not None:
            c.max_minutes = max_minutes
        records = []
        window: List[Dict[str, Any]] = []
        while not self._done():
            rec = self.train_step()
            records.append(rec)
            window.append(rec)
            if verbose and c.print_every and self.step % c.print_every == 0:
                tok = sum(r["tokens"] for r in window)
                sec = sum(r["step_time"] for r in window)
                print(f"step {self.step:6d}  loss {np.mean([r['loss'] for r in window]):.3f}  lr {rec['lr']:.2e}  "
                      f"gnorm {rec['grad_norm']:.2f}  {tok / sec:7.0f} tok/s  train {self.train_time / 60:.1f} min",
                      flush=True)
                window = []
            bleu_now = bool(c.bleu_every) and self.step % c.bleu_every == 0
            if (c.valid_every and self.step % c.valid_every == 0) or bleu_now:
                v = self.validate(bleu=bleu_now)
                if verbose:
                    print("valid " + "  ".join(f"{k} {v[k]:.3f}" for k in ("loss", "ppl", "bleu") if k in v), flush=True)
            if c.save_every and self.out_dir is not None and self.step % c.save_every == 0:
                self.save()
        return records

    # ------------------------------------------------------------------ evaluation

    def validation_loss(self) -> Dict[str, float]:
        """Token-mean NLL (no label smoothing) and perplexity over ``valid_data``."""
        if self.valid_data is None:
            raise InvalidArgumentError("Seq2SeqTrainer: no valid_data given")
        m, c = self.model, self.config
        src, tgt = self.valid_data
        sampler = TokenBatchSampler(src, tgt, c.max_tokens, shuffle=False, bucket=True,
                                    max_len=c.max_len if c.max_len is not None else m.max_len)
        total, count = 0.0, 0
        was_training = m.training
        m.eval()
        try:
            with no_grad():
                for idx in sampler:
                    b = collate([src[i] for i in idx], [tgt[i] for i in idx], m.pad_id, m.bos_id, m.eos_id, idx)
                    total += float(m.loss(b.src, b.tgt_in, b.tgt_out, reduction="sum").item())
                    count += b.num_tokens
        finally:
            m.train(was_training)
        mean = total / max(count, 1)
        return {"loss": mean, "ppl": metrics.perplexity(mean), "tokens": count}

    def bleu(self, sources: Sequence[str], references: Sequence[str]) -> Dict[str, Any]:
        """Greedy-decode ``sources`` and score them against ``references`` (sacrebleu, cased)."""
        if self.tokenizer is None:
            raise InvalidArgumentError("Seq2SeqTrainer: BLEU needs a tokenizer")
        t0 = time.perf_counter()
        hyps = self.model.translate(sources, self.tokenizer, num_beams=1, batch_size=self.config.bleu_batch_size)
        score = metrics.bleu(hyps, list(references))
        return {"bleu": score, "decode_time": time.perf_counter() - t0, "hypotheses": hyps}

    def validate(self, bleu: bool = True) -> Dict[str, Any]:
        """Validation loss (if ``valid_data``) and greedy BLEU on the first ``bleu_subset``
        sentences of ``valid_texts`` (if given and ``bleu``); logged as a ``"valid"`` record."""
        t0 = time.perf_counter()
        rec: Dict[str, Any] = {"type": "valid", "step": self.step, "train_time": self.train_time}
        if self.valid_data is not None:
            rec.update(self.validation_loss())
        if bleu and self.valid_texts is not None and self.tokenizer is not None:
            n = self.config.bleu_subset
            srcs, refs = self.valid_texts
            out = self.bleu(srcs[:n], refs[:n])
            rec.update(bleu=out["bleu"], bleu_sentences=len(srcs[:n]))
        rec["eval_time"] = time.perf_counter() - t0
        rec["wall"] = time.perf_counter() - self._t_start
        self.log(rec)
        return rec

    # ------------------------------------------------------------------ checkpoints

    def state_extra(self) -> Dict[str, Any]:
        return {"step": self.step, "train_time": self.train_time, "tokens_seen": self.tokens_seen,
                "sampler": self.sampler.state_dict(), "numpy_rng": ckpt_lib.rng_state(self.rng),
                "tfm_rng": int(tfm_rs.get_rng_state()), "init_rng": ckpt_lib.rng_state(nn.init.generator()),
                "train_config": self.config.to_dict()}

    def save(self, path: Optional[os.PathLike] = None) -> Path:
        """Checkpoint everything needed for an exact resume (default ``<out_dir>/checkpoint``)."""
        if path is None:
            if self.out_dir is None:
                raise InvalidArgumentError("Seq2SeqTrainer.save: no path and no out_dir")
            path = self.out_dir / "checkpoint"
        return ckpt_lib.save_checkpoint(path, self.model.state_dict(), self.model.config,
                                        optimizer_state=self.optimizer.state_dict(),
                                        scheduler_state=self.scheduler.state_dict(), extra=self.state_extra())

    def resume(self, path: os.PathLike) -> None:
        """Continue from a :meth:`save` checkpoint: weights (the architecture is checked first),
        optimizer moments, schedule, data position and every RNG."""
        ck = ckpt_lib.load_checkpoint(path)
        load_model_state(self.model, ck)
        if ck.optimizer_state is not None:
            self.optimizer.load_state_dict(ck.optimizer_state)
        if ck.scheduler_state is not None:
            self.scheduler.load_state_dict(ck.scheduler_state)
        ex = ck.extra
        self.sampler.load_state_dict(ex["sampler"])
        self._iter = None
        ckpt_lib.set_rng_state(self.rng, ex["numpy_rng"])
        tfm_rs.set_rng_state(int(ex["tfm_rng"]))
        nn.init.set_rng_state(ex["init_rng"])
        self.step = int(ex["step"])
        self.train_time = float(ex.get("train_time", 0.0))
        self.tokens_seen = int(ex.get("tokens_seen", 0))


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
