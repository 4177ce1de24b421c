"""Claim 11: one attention layer sees the whole sequence; a CNN needs many layers to reach the
same receptive field.

The experiment measures the receptive field from gradients, as claim 12 does: for every output
position i, which input positions j have ∂out_i/∂in_j ≠ 0. The models are one self-attention
layer (``nn.TransformerEncoderLayer``) and stacks of residual ``nn.Conv1d`` blocks
(``x + relu(conv(x))``, kernel 3, zero padding) at several depths, plain and with the dilation
doubling every layer (WaveNet). Batch element i carries the upstream gradient of output i only,
so one backward pass gives the whole ``(L, L)`` dependency matrix.
"""

from __future__ import annotations

from typing import Any, Dict

import numpy as np

import tfm_rs
import tfm_rs.functional as F
from tfm_rs import nn
from tfm_rs.claims.base import Claim, Outcome

WIDTH, KERNEL = 16, 3


class ConvStack(nn.Module):
    """``depth`` residual blocks ``x + relu(conv(x))``; dilation ``2^layer`` when ``dilated``."""

    def __init__(self, depth: int, dilated: bool) -> None:
        super().__init__()
        self.convs = nn.ModuleList([nn.Conv1d(WIDTH, WIDTH, KERNEL, padding="same", dilation=2 ** k if dilated else 1)
                                    for k in range(depth)])

    def forward(self, x: tfm_rs.Tensor) -> tfm_rs.Tensor:
        x = x.transpose(1, 2)
        for conv in self.convs:
            x = x + F.relu(conv(x))
        return x.transpose(1, 2)


def dependency(model: nn.Module, length: int, seed: int = 0) -> np.ndarray:
    """``(L, L)``: ‖∂out_i/∂in_j‖ for output i (row) and input j (column), one random input."""
    rng = np.random.default_rng(seed)
    one = rng.standard_normal((1, length, WIDTH)).astype(np.float32)
    x = tfm_rs.tensor(np.repeat(one, length, axis=0), requires_grad=True)
    upstream = np.zeros((length, length, WIDTH), np.float32)
    upstream[np.arange(length), np.arange(length)] = rng.standard_normal((length, WIDTH))
    (model(x) * tfm_rs.tensor(upstream)).sum().backward()
    return np.linalg.norm(x.grad.numpy(), axis=-1)


def coverage(dep: np.ndarray) -> float:
    """Fraction of (output, input) pairs with a nonzero gradient: outside a convolution's reach it is
    exactly zero, inside it can be tiny (a product of one kernel tap per layer), so no threshold."""
    return float((dep > 0).mean())


def experiment(quick: bool) -> Outcome:
    length = 32 if quick else 64
    tfm_rs.manual_seed(0)
    attention = nn.TransformerEncoderLayer(WIDTH, 2, 2 * WIDTH, dropout=0.0)
    att_dep = dependency(attention, length)
    # Up to 2L: a corner pair's gradient is a sum of products of one kernel tap per layer, and with
    # barely enough layers there are so few such paths that it can fall out of float32's range.
    plain_depths = [2 ** k for k in range(int(np.log2(length)) + 2)]
    dilated_depths = list(range(1, int(np.log2(length)) + 2))
    maps: Dict[str, Dict[int, np.ndarray]] = {"plain": {}, "dilated": {}}
    for form, depths in (("plain", plain_depths), ("dilated", dilated_depths)):
        for depth in depths:
            tfm_rs.manual_seed(depth)
            maps[form][depth] = dependency(ConvStack(depth, form == "dilated"), length)
    cov = {form: {d: coverage(m) for d, m in by.items()} for form, by in maps.items()}
    # A plain kernel-k stack widens by k − 1 inputs a layer: its widest row spans 1 + depth·(k − 1), capped at L.
    field = {form: {d: int((m > 0).sum(1).max()) for d, m in by.items()} for form, by in maps.items()}
    expected_plain = {d: min(length, 1 + d * (KERNEL - 1)) for d in plain_depths}
    full = {form: min((d for d, c in by.items() if c == 1.0), default=None) for form, by in cov.items()}
    att_full = coverage(att_dep) == 1.0
    # Attention's far inputs are not a token effect: the smallest off-diagonal gradient against the median.
    off = att_dep[~np.eye(length, dtype=bool)]
    att_min_over_median = float(off.min() / np.median(off))
    plain_linear = all(field["plain"][d] == expected_plain[d] for d in plain_depths)
    many = full["plain"] is None or full["plain"] > 1
    verdict = "holds" if att_full and plain_linear and many else "wrong"
    reach_plain = f"{full['plain']} layers" if full["plain"] else f"none of {plain_depths}"
    summary = (f"L = {length}: one attention layer has a nonzero gradient from all {length}×{length} pairs "
               f"(smallest off-diagonal / median {att_min_over_median:.2f}); kernel-{KERNEL} conv stacks reach "
               f"1 + 2·depth inputs per output ({plain_linear}) and cover every pair only at {reach_plain} "
               f"(depths tried {plain_depths[0]}–{plain_depths[-1]}), dilated (×2 per layer) at {full['dilated']} "
               f"layers")

    def draw(plt: Any) -> Any:
        fig, axes = plt.subplots(1, 4, figsize=(14, 3.6))
        panels = [(att_dep, "1 attention layer"), (maps["plain"][4], "4 conv layers (kernel 3)"),
                  (maps["dilated"][4], "4 dilated conv layers")]
        for ax, (m, title) in zip(axes, panels):
            ax.imshow(np.log10(np.maximum(m / m.max(), 1e-12)), cmap="viridis", vmin=-8)
            ax.set_title(f"log10 ‖∂out_i/∂in_j‖ (rel.): {title}", fontsize=7)
            ax.set_xlabel("input position j")
            ax.set_ylabel("output position i")
        ax = axes[3]
        ax.plot(plain_depths, [cov["plain"][d] for d in plain_depths], "o-", label="conv, kernel 3")
        ax.plot(dilated_depths, [cov["dilated"][d] for d in dilated_depths], "s-", label="conv, dilation 2^layer")
        ax.plot([1], [coverage(att_dep)], "r*", markersize=12, label="self-attention")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("layers")
        ax.set_ylabel("fraction of (i, j) pairs with ∂out_i/∂in_j ≠ 0")
        ax.set_title(f"receptive field coverage, L = {length}", fontsize=8)
        ax.legend(fontsize=7)
        return fig

    figures = {"length": length, "width": WIDTH, "kernel": KERNEL, "attention_coverage": coverage(att_dep),
               "attention_min_offdiag_over_median": att_min_over_median,
               "coverage": {f: {str(d): c for d, c in by.items()} for f, by in cov.items()},
               "widest_field": {f: {str(d): n for d, n in by.items()} for f, by in field.items()},
               "expected_plain_field": {str(d): n for d, n in expected_plain.items()},
               "layers_for_full_coverage": full}
    return Outcome(verdict, summary, figures, {"receptive_field": draw})


CLAIM = Claim(
    name="receptive-field",
    number=11,
    statement="One attention layer sees the whole sequence; a CNN needs many layers to reach the same "
              "receptive field.",
    expected="holds",
    reason="Measured from gradients: every output of one self-attention layer depends on every input, and the "
           "far ones are not negligible. A stack of kernel-3 convolutions widens by exactly 2 inputs per layer, so "
           "every output sees every input only after about L layers; doubling the dilation each layer "
           "(WaveNet) needs about log2(L) + 1 — still many more than one.",
    experiment=experiment,
    not_measured=("the effective (trained) receptive field, and what it costs in accuracy",),
)
