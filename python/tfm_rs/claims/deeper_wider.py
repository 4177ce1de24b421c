"""Claim 17: deeper and wider always means stronger.

The experiment trains the same Multi30k de→en translator (:mod:`tfm_rs.claims.translation`, one
joint BPE vocabulary of 2,000) at three widths (64, 128, 256 at 2+2 layers) and three depths (1+1,
2+2, 4+4 layers at width 128) for the same training time each — CPU time, 60 s (about 30 s of
a free 2-core machine) — then measures the validation loss
(all 1,014 validation pairs) and greedy test BLEU (test_2016_flickr, 1,000 sentences), with the
parameters and the steps each model reached. The middle model (width 128, 2+2 layers) is trained
with three seeds: their spread is the noise a difference must clear.
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

from tfm_rs.claims import translation as tr
from tfm_rs.claims.base import Claim, Outcome
from tfm_rs.data import train_tokenizer

VOCAB = 2000
BASE = (128, 2)
WIDTHS = (64, 128, 256)
DEPTHS = (1, 2, 4)
SEEDS = (0, 1, 2)
# A difference counts when it clears twice the standard deviation of a difference of two single
# runs (√2 · the seed spread of the middle model), and at least these floors: three seeds give a
# rough spread, which can come out near zero by chance.
LOSS_FLOOR, BLEU_FLOOR = 0.02, 0.5

Shape = Tuple[int, int]


def _label(shape: Shape) -> str:
    return f"width {shape[0]}, {shape[1]}+{shape[1]} layers"


def _axes() -> Dict[str, List[Shape]]:
    return {"width": [(w, BASE[1]) for w in WIDTHS], "depth": [(BASE[0], d) for d in DEPTHS]}


def train_and_score(tok: Any, data: tr.Multi30k, ids: tr.Encoded, shape: Shape, seconds: float, warmup: int,
                    seed: int, bleu: bool) -> Dict[str, float]:
    model = tr.build(tok.vocab_size, shape[0], shape[1], seed)
    trainer = tr.trainer(model, tok, data, ids, seed, warmup)
    used = tr.train_for(trainer, seconds)
    out = {"parameters": model.num_parameters(), "steps": trainer.step, **used,
           "valid_loss": trainer.validation_loss()["loss"]}
    if bleu:
        out["bleu"] = tr.greedy_bleu(model, tok, data.test)
    return out


def compare(axes: Dict[str, List[Dict[str, float]]], margins: Dict[str, float]) -> Dict[str, List[str]]:
    """For each axis (runs from smallest to largest), each step up: ``"better"`` when every
    measured score improves by more than its margin, ``"worse"`` when one gets worse by more than
    its margin, ``"tie"`` otherwise. Lower loss and higher BLEU are better."""
    out = {}
    for axis, runs in axes.items():
        steps = []
        for small, big in zip(runs, runs[1:]):
            gains = {k: (small[k] - big[k]) if k == "valid_loss" else (big[k] - small[k]) for k in margins}
            if any(g < -margins[k] for k, g in gains.items()):
                steps.append("worse")
            elif all(g > margins[k] for k, g in gains.items()):
                steps.append("better")
            else:
                steps.append("tie")
        out[axis] = steps
    return out


def verdict_of(steps: Dict[str, List[str]]) -> str:
    flat = [s for axis in steps.values() for s in axis]
    if "worse" in flat:
        return "wrong"
    return "holds" if all(s == "better" for s in flat) else "it depends"


def experiment(quick: bool) -> Outcome:
    data = tr.multi30k(train=3000, valid=200, test=0) if quick else tr.multi30k()
    seconds, warmup = (0.6, 2) if quick else (60.0, 30)
    bleu = not quick
    tok = train_tokenizer([], VOCAB, texts=data.train[0] + data.train[1])
    ids = tr.encode(tok, data)
    shapes = sorted(set(_axes()["width"] + _axes()["depth"]))
    runs = {_label(s): train_and_score(tok, data, ids, s, seconds, warmup, SEEDS[0], bleu) for s in shapes}
    base_seeds = [runs[_label(BASE)]]
    base_seeds += [train_and_score(tok, data, ids, BASE, seconds, warmup, s, bleu) for s in SEEDS[1:]]
    keys = ["valid_loss"] + (["bleu"] if bleu else [])
    spread = {k: tr.spread([r[k] for r in base_seeds]) for k in keys}
    floors = {"valid_loss": LOSS_FLOOR, "bleu": BLEU_FLOOR}
    margins = {k: max(2 * 2 ** 0.5 * spread[k], floors[k]) for k in keys}
    axes = {axis: [runs[_label(s)] for s in shapes_] for axis, shapes_ in _axes().items()}
    steps = compare(axes, margins)
    verdict = verdict_of(steps)

    def line(axis: str) -> str:
        parts = []
        for s in _axes()[axis]:
            r = runs[_label(s)]
            score = f"loss {r['valid_loss']:.2f}" + (f", BLEU {r['bleu']:.1f}" if bleu else "")
            parts.append(f"{s[0] if axis == 'width' else s[1]}: {score}, {r['parameters'] / 1e6:.2f}M params, "
                         f"{r['steps']} steps")
        return f"{axis} ({', '.join(steps[axis])}): " + "; ".join(parts)

    noise = ", ".join(f"{k} ±{spread[k]:.2f}" for k in keys)
    summary = (f"{seconds:g} CPU-seconds of training each on {data.sizes()['train']:,} pairs (noise, s.d. of 3 seeds: "
               f"{noise}); " + " | ".join(line(a) for a in ("width", "depth")))

    def draw(plt: Any) -> Any:
        fig, axs = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4), squeeze=False)
        for ax, key in zip(axs[0], keys):
            for c, (axis, shapes_) in enumerate(_axes().items()):
                xs = [runs[_label(s)]["parameters"] / 1e6 for s in shapes_]
                ys = [runs[_label(s)][key] for s in shapes_]
                fixed = f"{BASE[1]}+{BASE[1]} layers" if axis == "width" else f"width {BASE[0]}"
                ax.plot(xs, ys, "o-", color=f"C{c}", label=f"{axis} ({fixed})")
                for s, x, y in zip(shapes_, xs, ys):
                    ax.annotate(f"{s[0]}×{s[1]}, {runs[_label(s)]['steps']} steps", (x, y), fontsize=7,
                                textcoords="offset points", xytext=(4, 4))
            base = runs[_label(BASE)]
            ax.errorbar([base["parameters"] / 1e6], [base[key]], yerr=[2 * spread[key]], color="k", capsize=4,
                        label="±2 s.d. (3 seeds)")
            ax.set_xscale("log")
            ax.set_xlabel("parameters (millions, log scale)")
            ax.set_ylabel("validation loss (nats per token)" if key == "valid_loss" else "test BLEU (greedy)")
            what = "validation loss" if key == "valid_loss" else "BLEU"
            ax.set_title(f"{what} at {seconds:g} CPU-s of training each", fontsize=9)
            ax.legend(fontsize=7)
        return fig

    figures = {"cpu_seconds": seconds, "warmup_steps": warmup, "vocab_size": tok.vocab_size, "data": data.sizes(),
               "runs": runs, "base_seeds": base_seeds, "seeds": list(SEEDS), "spread": spread, "margins": margins,
               "steps_up": steps, "lr": {str(w): tr.peak_lr(w) for w in WIDTHS}}
    return Outcome(verdict, summary, figures, {"deeper_wider": draw})


CLAIM = Claim(
    name="deeper-wider",
    number=17,
    statement="Deeper and wider always means stronger.",
    expected="wrong",
    reason="Not at equal training time. A wider or deeper model does more work per step, so in the same "
           "time it takes fewer steps, and on a budget like this one a smaller model that took more steps is "
           "ahead. Size helps per step, not per second: the claim is about what a model can become, not about "
           "what a given budget buys.",
    experiment=experiment,
    not_measured=("long budgets (hours), where the larger models' extra capacity starts to pay", "equal steps or "
                  "equal tokens instead of equal time", "beam search", "seeds for every shape (only the middle "
                  "model is repeated, to measure the noise)"),
)
