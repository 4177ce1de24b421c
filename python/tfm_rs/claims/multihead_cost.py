"""Claim 2: multi-head attention costs no more parameters or FLOPs than one head of the same
width: 3·d² for the Q/K/V projections plus d² for the output projection, whatever the number
of heads, because the heads split d rather than each getting d.

The experiment counts the parameters of ``nn.MultiheadAttention(d, h)`` for several ``h``,
counts the FLOPs of one forward (projections and the two attention products), and times the
forward + backward on the same input, so that the count can be compared with the clock.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List

import numpy as np

import tfm_rs
from tfm_rs import nn
from tfm_rs.claims.base import Claim, Outcome


def flops(batch: int, t: int, d: int, heads: int) -> Dict[str, int]:
    """Multiply-adds × 2 of one self-attention forward on ``(batch, t, d)``."""
    head_dim = d // heads
    return {"projections": 2 * batch * t * d * 4 * d,
            # Q·Kᵀ and P·V: per head a (t × head_dim)·(head_dim × t) and a (t × t)·(t × head_dim).
            "attention": 2 * 2 * batch * heads * t * t * head_dim}


def _time(mha: nn.MultiheadAttention, x: np.ndarray, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats + 1):  # the first run warms the buffer pool and is dropped
        q = tfm_rs.tensor(x, requires_grad=True)
        start = time.perf_counter()
        out = mha(q, q, q, need_weights=False)[0]
        out.sum().backward()
        best = min(best, time.perf_counter() - start)
    return best


def experiment(quick: bool) -> Outcome:
    d, batch, t = (128, 4, 64) if quick else (512, 8, 128)
    heads = [1, 2, 4, 8] if quick else [1, 2, 4, 8, 16, 32]
    x = np.random.default_rng(0).standard_normal((batch, t, d)).astype(np.float32)
    rows: List[Dict[str, Any]] = []
    for h in heads:
        tfm_rs.manual_seed(0)
        mha = nn.MultiheadAttention(d, h)
        params = sum(int(np.prod(p.shape)) for p in mha.parameters())
        rows.append({"heads": h, "parameters": params, **flops(batch, t, d, h),
                     "seconds": _time(mha, x, 2 if quick else 5)})
    formula = 4 * d * d + 4 * d  # four d×d matrices and their biases
    same_params = all(r["parameters"] == formula for r in rows)
    same_flops = len({(r["projections"], r["attention"]) for r in rows}) == 1
    slowest = max(r["seconds"] for r in rows) / min(r["seconds"] for r in rows)
    verdict = "holds" if same_params and same_flops else "wrong"
    summary = (f"d={d}: {rows[0]['parameters']:,} parameters (4d²+4d = {formula:,}) and "
               f"{rows[0]['projections'] + rows[0]['attention']:,} FLOPs for every head count {heads}; "
               f"forward+backward times within {slowest:.2f}x of each other (batch {batch}, length {t})")

    def draw(plt: Any) -> Any:
        fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.4))
        a.plot(heads, [r["parameters"] for r in rows], "o-", label="parameters")
        a.plot(heads, [r["projections"] + r["attention"] for r in rows], "s--", label="forward FLOPs")
        a.set_xscale("log", base=2)
        a.set_yscale("log")
        a.set_xlabel("heads")
        a.set_title(f"count (d = {d})")
        a.legend(fontsize=8)
        b.plot(heads, [1e3 * r["seconds"] for r in rows], "o-")
        b.set_xscale("log", base=2)
        b.set_ylim(bottom=0)
        b.set_xlabel("heads")
        b.set_ylabel("ms")
        b.set_title(f"forward + backward, batch {batch} × {t} tokens")
        return fig

    return Outcome(verdict, summary, {"d_model": d, "rows": rows, "time_spread": slowest},
                   {"multihead_cost": draw})


CLAIM = Claim(
    name="multihead-cost",
    number=2,
    statement="Multi-head attention costs no more parameters or FLOPs than one head of the same width "
              "(3·d² for Q/K/V plus d² for the output projection).",
    expected="holds",
    reason="The heads split the width: h heads of size d/h use the same four d×d projections as one head, and "
           "the attention products cost h·T²·(d/h) = T²·d either way. The counts are exact; the clock agrees "
           "up to the efficiency of smaller per-head matrix products.",
    experiment=experiment,
    not_measured=("BLEU against the number of heads at equal parameters on Multi30k",
                  "whether heads attend to different things (per-head distance and entropy)"),
)
