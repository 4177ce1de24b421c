"""Claim 25: teacher forcing leaves a gap between training, where the decoder reads the gold
prefix, and inference, where it reads its own (exposure bias).

The experiment trains the small encoder-decoder of :mod:`tfm_rs.claims.decoder_mask` to
reverse sequences and, at several points of its training, measures at every target position the
cross-entropy of the gold token given the gold prefix and given the model's own greedy prefix.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

import tfm_rs
from tfm_rs.claims.base import Claim, Outcome
from tfm_rs.claims.decoder_mask import BOS, VOCAB, _batch, _train


def _position_losses(logits: np.ndarray, tgt: np.ndarray) -> np.ndarray:
    """Mean cross-entropy per position, ``(T,)``, computed in float64."""
    z = logits.astype(np.float64)
    z -= z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    return -np.take_along_axis(logp, tgt[..., None], -1)[..., 0].mean(0)


def _gap(model: Any, src: np.ndarray, tgt_in: np.ndarray, tgt: np.ndarray) -> Dict[str, List[float]]:
    length = tgt.shape[1]
    with tfm_rs.no_grad():
        gold = _position_losses(model(src, tgt_in, True).numpy(), tgt)
        own = np.full((len(src), 1), BOS)
        for _ in range(length - 1):
            step = model(src, own, True).numpy()[:, -1].argmax(-1)
            own = np.concatenate([own, step[:, None]], axis=1)
        free = _position_losses(model(src, own, True).numpy(), tgt)
    return {"gold_prefix": gold.tolist(), "own_prefix": free.tolist()}


def experiment(quick: bool) -> Outcome:
    task, length = "reverse", 8
    stages, seeds = ([60, 120], [0]) if quick else ([40, 60, 80, 120, 200], [0, 1, 2])
    src, tgt_in, tgt = _batch(np.random.default_rng(7), 512, length, task)
    found: Dict[int, List[Dict[str, List[float]]]] = {s: [] for s in stages}

    def measure(step: int, model: Any) -> None:
        if step in found:
            found[step].append(_gap(model, src, tgt_in, tgt))

    for seed in seeds:
        _train(task, True, stages[-1], length, seed, after_step=measure)
    mean = {s: {k: np.mean([r[k] for r in runs], axis=0) for k in ("gold_prefix", "own_prefix")}
            for s, runs in found.items()}
    # The stage where the model's own prefix costs it most, relative to the gold prefix.
    worst = max(stages[:-1], key=lambda s: mean[s]["own_prefix"].mean() / mean[s]["gold_prefix"].mean())
    early, late = mean[worst], mean[stages[-1]]
    early_gap = early["own_prefix"] - early["gold_prefix"]
    late_gap = float((late["own_prefix"] - late["gold_prefix"]).mean())
    half = length // 2
    gap_while_wrong = (early["own_prefix"].mean() > 1.2 * early["gold_prefix"].mean()
                       and early_gap[half:].mean() > early_gap[:half].mean())
    gone_when_right = late_gap < 0.05
    verdict = ("it depends" if gap_while_wrong and gone_when_right else "holds" if gap_while_wrong else "wrong")
    summary = (f"after {worst} steps the gold token costs {early['gold_prefix'].mean():.2f} nats after the gold "
               f"prefix vs {early['own_prefix'].mean():.2f} after the model's own (last position "
               f"{early['gold_prefix'][-1]:.2f} vs {early['own_prefix'][-1]:.2f}); after {stages[-1]} steps the gap "
               f"is {late_gap:.3f} nats (reversal, length {length}, 512 test sequences, seeds {seeds})")

    def draw(plt: Any) -> Any:
        fig, axes = plt.subplots(1, len(stages), figsize=(3.4 * len(stages), 3.4), sharey=True)
        pos = np.arange(1, length + 1)
        for ax, s in zip(np.atleast_1d(axes), stages):
            ax.plot(pos, mean[s]["gold_prefix"], "o-", label="gold prefix (training)")
            ax.plot(pos, mean[s]["own_prefix"], "s--", label="own prefix (inference)")
            ax.set_title(f"after {s} steps")
            ax.set_xlabel("target position")
            ax.set_ylim(bottom=0)
        np.atleast_1d(axes)[0].set_ylabel("CE of the gold token (nats)")
        np.atleast_1d(axes)[0].legend(fontsize=7)
        return fig

    figures = {str(s): {k: v.tolist() for k, v in m.items()} for s, m in mean.items()}
    return Outcome(verdict, summary, {"by_training_steps": figures, "vocab": VOCAB}, {"teacher_forcing_gap": draw})


CLAIM = Claim(
    name="teacher-forcing-gap",
    number=25,
    statement="Teacher forcing leaves a gap between training (gold prefix) and inference (the model's own prefix).",
    expected="it depends",
    reason="At the first position both prefixes are the same start token, so the losses agree; after that, every "
           "mistake the model makes enters its own prefix, and while the model still makes mistakes the loss of "
           "the gold continuation grows along the sequence faster than the teacher-forced loss. The gap is the "
           "model's errors compounding: once it decodes correctly, its own prefix is the gold prefix and the gap "
           "vanishes.",
    experiment=experiment,
    not_measured=("the gap on Multi30k translation",),
)
