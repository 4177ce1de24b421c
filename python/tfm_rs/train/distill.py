"""Knowledge distillation: a small student learns from a trained teacher.

* Word level (Hinton et al. 2015; the loss DistilBERT uses): at every target position the
  student matches the teacher's distribution softened by a temperature ``T``,
  ``T²·KL(p_teacher^T ‖ p_student^T)`` (the ``T²`` keeps the gradient's size independent of
  ``T``), mixed with the label-smoothed cross-entropy on the reference by ``alpha``:
  ``alpha·T²·KL + (1 − alpha)·CE``. The teacher runs under ``no_grad``.
  :class:`WordDistillationTrainer` trains with it.
* Sequence level (Kim & Rush 2016): :func:`teacher_translations` translates the training
  sources with the teacher's beam search (the native decoder, in batches, with progress); the
  student is then trained on those outputs by the ordinary :class:`Seq2SeqTrainer`.

:func:`distill_run` (``tfm-rs distill``) does either for a trained run directory.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

import tfm_rs.functional as F
from tfm_rs._core import InvalidArgumentError, ShapeError, Tensor
from tfm_rs.autograd import no_grad
from tfm_rs.data.batching import Seq2SeqBatch, pad_batch
from tfm_rs.train.trainer import Seq2SeqTrainer, seq2seq_forward

__all__ = ["WordDistillationTrainer", "check_teacher", "distill_run", "distillation_loss", "teacher_translations"]


def _probs(teacher_logits: Any, temperature: float) -> np.ndarray:
    z = (teacher_logits.numpy() if isinstance(teacher_logits, Tensor) else np.asarray(teacher_logits))
    z = z.astype(np.float64) / temperature
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def distillation_loss(student_logits: Tensor, targets: Any, teacher_logits: Any = None, *,
                      teacher_probs: Any = None, temperature: float = 1.0, alpha: float = 0.5,
                      label_smoothing: float = 0.0, ignore_index: int = -100, reduction: str = "mean") -> Tensor:
    """``alpha·T²·KL(p_teacher^T ‖ softmax(student/T)) + (1 − alpha)·CE(student, targets)``
    over the rows ``(N, V)`` whose target is not ``ignore_index``: summed, or averaged over
    those rows (``"mean"``). The teacher is given as logits ``(N, V)`` (softened by ``T``
    here) or directly as probabilities ``teacher_probs`` (used as given); either way it is a
    constant (no gradient). ``T = 1``, ``alpha = 1`` and one-hot ``teacher_probs`` on the
    targets give exactly the cross-entropy."""
    if (teacher_logits is None) == (teacher_probs is None):
        raise InvalidArgumentError("distillation_loss: give exactly one of teacher_logits and teacher_probs")
    if not (temperature > 0 and np.isfinite(temperature)):
        raise InvalidArgumentError(f"distillation_loss: temperature must be positive, got {temperature}")
    if not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(f"distillation_loss: alpha must be in [0, 1], got {alpha}")
    if reduction not in ("mean", "sum"):
        raise InvalidArgumentError(f"distillation_loss: reduction must be 'mean' or 'sum', got {reduction!r}")
    if student_logits.ndim != 2:
        raise ShapeError(f"distillation_loss: student_logits must be (N, V), got {tuple(student_logits.shape)}")
    p = _probs(teacher_logits, temperature) if teacher_probs is None else np.asarray(
        teacher_probs.numpy() if isinstance(teacher_probs, Tensor) else teacher_probs, np.float64)
    if p.shape != tuple(student_logits.shape):
        raise ShapeError(f"distillation_loss: the teacher's distributions are {p.shape} but the student's logits "
                         f"{tuple(student_logits.shape)}; teacher and student need the same vocabulary")
    targets = np.asarray(targets).reshape(-1)
    keep = targets != ignore_index
    count = int(keep.sum())
    p = np.where(keep[:, None], p, 0.0)
    # KL = Σ p log p − Σ p log q: the first term is a constant, kept so the value is the KL itself.
    neg_entropy = float(np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)))
    log_q = F.log_softmax(student_logits * (1.0 / temperature), -1)
    kl = (log_q * Tensor(p.astype(np.float32)).to(student_logits.device)).sum() * -1.0 + neg_entropy
    loss = kl * (alpha * temperature * temperature)
    if alpha < 1.0:
        ce = F.cross_entropy(student_logits, targets, ignore_index=ignore_index, reduction="sum",
                             label_smoothing=label_smoothing)
        loss = loss + ce * (1.0 - alpha)
    if reduction == "mean":
        loss = loss * (1.0 / max(count, 1))
    return loss


def check_teacher(teacher: Any, student: Any) -> None:
    """A teacher must speak the student's vocabularies (the same ids mean the same tokens)."""
    for name in ("src_vocab_size", "tgt_vocab_size", "pad_id", "bos_id", "eos_id"):
        t, s = getattr(teacher, name, None), getattr(student, name, None)
        if t != s:
            raise InvalidArgumentError(f"distillation: the teacher's {name} is {t} but the student's is {s}; "
                                       "teacher and student need the same vocabulary and special ids")


class WordDistillationTrainer(Seq2SeqTrainer):
    """:class:`Seq2SeqTrainer` whose loss is :func:`distillation_loss` against ``teacher``
    (run in eval mode, under ``no_grad``); ``config.label_smoothing`` smooths the
    cross-entropy part. Validation still reports the plain cross-entropy."""

    def __init__(self, model: Any, teacher: Any, train_data: Any, temperature: float = 2.0, alpha: float = 0.5,
                 **kwargs: Any) -> None:
        check_teacher(teacher, model)
        if not (temperature > 0 and np.isfinite(temperature)) or not 0.0 <= alpha <= 1.0:
            raise InvalidArgumentError(f"WordDistillationTrainer: temperature must be positive and alpha in "
                                       f"[0, 1], got {temperature} and {alpha}")
        self.teacher, self.temperature, self.alpha = teacher, float(temperature), float(alpha)
        super().__init__(model, train_data, **kwargs)
        if self.config.device is not None:
            teacher.to(self.config.device)

    def loss_sum(self, batch: Seq2SeqBatch, label_smoothing: float = 0.0) -> Tensor:
        logits, targets, ignore = self.forward_batch(batch)
        self.teacher.eval()
        with no_grad():
            teacher_logits, _, _ = seq2seq_forward(self.teacher, batch)
        return distillation_loss(logits, targets, teacher_logits.numpy(), temperature=self.temperature,
                                 alpha=self.alpha, label_smoothing=label_smoothing, ignore_index=ignore,
                                 reduction="sum")


def teacher_translations(teacher: Any, src_ids: Sequence[Sequence[int]], num_beams: int = 4,
                         batch_size: int = 64, progress: Optional[Callable[[int, int], None]] = None,
                         **generate: Any) -> Tuple[List[List[int]], float]:
    """Sequence-level distillation data: the teacher's beam-search output for every source (ids
    without BOS/EOS, as training data), in ``batch_size`` batches sorted by length; returns the
    targets in the sources' order and the seconds spent. A source longer than the teacher's
    ``max_len`` gets an empty target (training drops such examples anyway).
    ``progress(done, total)`` is called after each batch."""
    if batch_size < 1:
        raise InvalidArgumentError(f"teacher_translations: batch_size must be ≥ 1, got {batch_size}")
    teacher.eval()
    lengths = np.array([len(s) for s in src_ids], dtype=np.int64)
    order = np.argsort(lengths, kind="stable")
    order = order[lengths[order] <= teacher.max_len]
    out: List[List[int]] = [[] for _ in src_ids]
    t0 = time.perf_counter()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        src = pad_batch([src_ids[i] for i in idx], teacher.pad_id)
        result = teacher.generate(src, num_beams=num_beams, **generate)
        for i, seq in zip(idx, result.sequences):
            seq = list(seq)
            if seq and seq[-1] == teacher.eos_id:
                seq = seq[:-1]
            out[i] = [int(t) for t in seq]
        if progress is not None:
            progress(min(start + batch_size, len(order)), len(order))
    return out, time.perf_counter() - t0


def distill_run(teacher_dir: Any, out_dir: Any, preset: str = "tiny", level: str = "word",
                minutes: Optional[float] = None, max_steps: Optional[int] = None, temperature: float = 2.0,
                alpha: float = 0.5, num_beams: int = 4, quiet: bool = False, use_bar: bool = True,
                out: Any = print, command: Optional[str] = None) -> Dict[str, Any]:
    """Trains a student of shape ``preset`` from the trained run ``teacher_dir`` into the run
    directory ``out_dir``: the teacher's data, tokenizer and optimizer settings, the given
    budget, and either the word-level loss (``level="word"``) or the teacher's beam-search
    translations of the training sources as targets (``"sequence"``). The run directory is an
    ordinary one (translate, eval and plot work on it); ``results.json`` also records the
    distillation (level, T, alpha, teacher, seconds spent translating)."""
    from tfm_rs import config as cfg_lib
    from tfm_rs import runs

    if level not in ("word", "sequence"):
        raise InvalidArgumentError(f"distill: level must be 'word' or 'sequence', got {level!r}")
    teacher_run = runs.load_run(teacher_dir, need_valid=False)
    if teacher_run.kind != "seq2seq":
        raise InvalidArgumentError(f"distill: the teacher {teacher_dir} is a language model; distillation here "
                                   "needs an encoder-decoder run")
    teacher = teacher_run.model
    base = {section: dict(values) for section, values in teacher_run.config.items()}
    base["model"] = {"preset": preset}  # the student's shape: the preset, none of the teacher's overrides
    for key in ("max_steps", "minutes", "out"):
        base["train"].pop(key, None)
    flags: Dict[str, Any] = {"out": str(Path(out_dir).absolute())}
    if minutes is not None:
        flags["minutes"] = minutes
    if max_steps is not None:
        flags["max_steps"] = max_steps
    cfg = cfg_lib.resolve(base, {"train": flags}, sources=[str(Path(teacher_dir) / runs.CONFIG_FILE), None])
    tokenizer = Path(teacher_dir) / runs.TOKENIZER_FILE
    if tokenizer.is_file():  # the student speaks the teacher's vocabulary
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tokenizer, Path(out_dir) / runs.TOKENIZER_FILE)
    info: Dict[str, Any] = {"level": level, "teacher": str(Path(teacher_dir).absolute()),
                            "teacher_parameters": teacher.num_parameters()}

    def make(cfg: Any, data: Any, model: Any, run_dir: Any) -> Any:
        check_teacher(teacher, model)
        tc = runs.train_config(cfg)
        common = dict(config=tc, out_dir=run_dir, valid_data=data.valid, valid_texts=data.valid_texts,
                      tokenizer=data.tokenizer, log_name=runs.METRICS_FILE)
        info["student_parameters"] = model.num_parameters()
        if level == "word":
            info.update(temperature=temperature, alpha=alpha)
            return WordDistillationTrainer(model, teacher, data.train, temperature, alpha, **common)
        src = data.train[0]

        def report(done: int, total: int) -> None:
            if not quiet:
                out(f"teacher beam {num_beams}: {done}/{total} sources")

        hyps, seconds = teacher_translations(teacher, src, num_beams=num_beams, batch_size=tc.bleu_batch_size,
                                             progress=report)
        pairs = [(s, h) for s, h in zip(src, hyps) if h]
        info.update(num_beams=num_beams, teacher_seconds=seconds, empty_outputs=len(src) - len(pairs))
        out(f"sequence-level data: the teacher translated {len(src):,} sources in {seconds:.1f}s "
            f"({len(src) - len(pairs)} empty outputs left out)")
        return Seq2SeqTrainer(model, ([s for s, _ in pairs], [h for _, h in pairs]), **common)

    results = runs.train_run(cfg, quiet=quiet, use_bar=use_bar, out=out, command=command, make=make)
    path = Path(cfg["train"]["out"]) / runs.RESULTS_FILE
    stored = json.loads(path.read_text(encoding="utf-8"))
    stored["distill"] = info
    path.write_text(json.dumps(stored, indent=2) + "\n", encoding="utf-8")
    results["distill"] = info
    return results
