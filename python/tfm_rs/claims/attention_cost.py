"""Claim 10: "attention costs O(n^n), and RNNs are cheaper on long sequences".

The experiment times one layer's forward pass on one sequence of n tokens of width d, against n:
dense self-attention (``nn.MultiheadAttention``, projections included), an ``nn.LSTM`` of the
same width, and two efficient attentions on the same layer (a sliding window of 128 keys and linear
attention, :mod:`tfm_rs.nn.attention_kind`). It fits the growth exponent of each curve between
the two longest lengths and finds where the LSTM, if anywhere, becomes faster than dense
attention. FLOPs per layer: attention ``8nd² + 4n²d`` (four projections, scores and their
weighted sum), an LSTM ``16nd²`` in ``n`` sequential steps: equal at ``n = 2d``.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Dict, List

import numpy as np

import tfm_rs
from tfm_rs import nn
from tfm_rs.claims.base import Claim, Outcome

HEADS = 8
LAYERS = ("dense attention", "LSTM", "window attention (128 keys)", "linear attention")


def _layer(name: str, d: int) -> nn.Module:
    kind = {"dense attention": "dense", "window attention (128 keys)": "window(left=64, right=63)",
            "linear attention": "linear"}.get(name)
    if kind is None:
        return nn.LSTM(d, d, batch_first=True)
    return nn.MultiheadAttention(d, HEADS, attention=kind)


def layer_seconds(layer: nn.Module, x: tfm_rs.Tensor, repeats: int, backward: bool = False) -> float:
    """Best of ``repeats`` calls of ``layer`` on ``x``: the forward pass, or with ``backward`` the
    forward and the backward of the output's sum (claim 24 times training, this claim inference)."""
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        with contextlib.nullcontext() if backward else tfm_rs.no_grad():
            out = layer(x)[0] if isinstance(layer, nn.LSTM) else layer(x, x, x, need_weights=False)[0]
            if backward:
                out.sum().backward()
        best = min(best, time.perf_counter() - t)
    return best


def experiment(quick: bool) -> Outcome:
    d = 32 if quick else 512
    lengths = [256, 1024, 4096] if quick else [128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    repeats = 2 if quick else 3
    tfm_rs.manual_seed(0)
    layers = {name: _layer(name, d) for name in LAYERS}
    rng = np.random.default_rng(0)
    times: Dict[str, List[float]] = {name: [] for name in LAYERS}
    for n in lengths:
        x = tfm_rs.tensor(rng.standard_normal((1, n, d)).astype(np.float32))
        for name, layer in layers.items():
            times[name].append(layer_seconds(layer, x, repeats))
    exponent = {name: float(np.log(t[-1] / t[-2]) / np.log(lengths[-1] / lengths[-2])) for name, t in times.items()}
    faster = [n for n, a, r in zip(lengths, times["dense attention"], times["LSTM"]) if r < a]
    crossover = faster[0] if faster and all(n in faster for n in lengths[lengths.index(faster[0]):]) else None
    # O(n^n) would multiply the time by n^n / (n/2)^(n/2) per doubling; anything near n² refutes it.
    polynomial = exponent["dense attention"] < 2.5
    verdict = ("holds" if not polynomial else "it depends" if crossover else "wrong")
    lstm_vs = times["LSTM"][-1] / times["dense attention"][-1]
    last = {name: t[-1] * 1e3 for name, t in times.items()}
    efficient_best = all(last[e] < min(last["dense attention"], last["LSTM"])
                         for e in ("window attention (128 keys)", "linear attention"))
    summary = (f"forward time per layer grows as n^{exponent['dense attention']:.2f} for dense attention between "
               f"n = {lengths[-2]} and {lengths[-1]} (d = {d}), n^{exponent['LSTM']:.2f} for the LSTM, "
               f"n^{exponent['window attention (128 keys)']:.2f} for a 128-key window and "
               f"n^{exponent['linear attention']:.2f} for linear attention: polynomial, at most quadratic, never "
               f"n^n. The LSTM takes {lstm_vs:.2f}× dense attention's time at n = {lengths[-1]}; "
               + (f"it is faster from n = {crossover} on" if crossover else
                  f"it is not faster at any n measured (FLOPs cross at n = 2d = {2 * d}, but its steps are "
                  f"sequential)")
               + f"; at n = {lengths[-1]}: dense {last['dense attention']:.1f} ms, LSTM {last['LSTM']:.1f} ms, "
                 f"window {last['window attention (128 keys)']:.1f} ms, linear {last['linear attention']:.1f} ms"
               + (" (the efficient attentions beat both)" if efficient_best else "")
               + f" ({HEADS} heads, batch 1, best of {repeats})")

    def draw(plt: Any) -> Any:
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, colour in zip(LAYERS, ("C3", "C0", "C2", "C1")):
            ax.loglog(lengths, np.array(times[name]) * 1e3, "o-", color=colour, label=name)
        ax.set_xlabel("sequence length n (tokens)")
        ax.set_ylabel("forward time per layer (ms)")
        ax.set_title(f"one layer, d = {d}: dense attention grows as n^{exponent['dense attention']:.1f}, not n^n",
                     fontsize=9)
        ax.legend(fontsize=8)
        return fig

    figures = {"d": d, "heads": HEADS, "lengths": lengths, "repeats": repeats, "seconds": times,
               "exponent_last_doubling": exponent, "lstm_faster_from": crossover,
               "lstm_over_dense_at_longest": lstm_vs, "efficient_fastest_at_longest": efficient_best}
    return Outcome(verdict, summary, figures, {"attention_cost": draw})


CLAIM = Claim(
    name="attention-cost",
    number=10,
    statement="Attention costs O(n^n), and RNNs are cheaper on long sequences.",
    expected="it depends",
    reason="The first half is wrong: self-attention's cost is polynomial, the projections O(n·d²) and the "
           "scores and their weighted sum O(n²·d), so time grows linearly while n ≪ d and quadratically "
           "beyond, never as n^n. The second half depends on n against d: an LSTM's O(n·d²) FLOPs are fewer "
           "than attention's past n = 2d, but its n steps run one after another, so on a CPU it only wins "
           "several times further out; windowed and linear attention are linear in n and cheaper than both "
           "on long inputs.",
    experiment=experiment,
    not_measured=("the backward pass", "batches larger than one", "GPUs, where the LSTM's sequential steps cost "
                  "relatively more"),
)
