"""Claim 7: LayerNorm suits padded, variable-length text and small batches; BatchNorm does not.

Three forms of the same Transformer encoder layer (``nn.TransformerEncoderLayer(norm=...)``):
LayerNorm; batch norm whose statistics include the padded positions (plain ``BatchNorm1d``
applied to the padded batch: the layer is given an all-False ``norm_padding_mask``); and the
padding-aware batch norm (``MaskedBatchNorm1d``, statistics over real tokens only). The
experiment first measures, untrained and in training mode, how much one sentence's output moves
when its batchmates change and when the batch gets more padding. Then it trains a 2-layer
classifier of each form on padded variable-length sequences (are there more 5s than 6s?) at
several batch sizes for the same number of steps, three seeds, and scores held-out batches in
eval mode (batch norm then uses its running statistics).
"""

from __future__ import annotations

from typing import Any, Dict, List, Tuple

import numpy as np

import tfm_rs
import tfm_rs.functional as F
from tfm_rs import nn, optim
from tfm_rs.claims.base import Claim, Outcome

PAD, A, B, VOCAB, MAX_LEN, WIDTH = 0, 5, 6, 12, 16, 32
FORMS = ("LayerNorm", "BatchNorm (padding counted)", "padding-aware BatchNorm")
SEEDS = (0, 1, 2)


class Classifier(nn.Module):
    """Embeddings + learned positions + 2 encoder layers of one norm form + masked mean pool."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.embed = nn.Embedding(VOCAB, WIDTH, padding_idx=PAD)
        self.pos = nn.Embedding(MAX_LEN, WIDTH)
        norm = "layer" if form == "LayerNorm" else "batch"
        self.layers = nn.ModuleList([nn.TransformerEncoderLayer(WIDTH, 2, 2 * WIDTH, dropout=0.0, norm=norm)
                                     for _ in range(2)])
        self.head = nn.Linear(WIDTH, 2)

    def states(self, ids: np.ndarray) -> tfm_rs.Tensor:
        pad = ids == PAD
        # Plain batch norm: no position is left out of the statistics, padding included.
        norm_pad = np.zeros_like(pad) if self.form == FORMS[1] else pad
        x = self.embed(ids) + self.pos(np.broadcast_to(np.arange(ids.shape[1]), ids.shape))
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=pad, norm_padding_mask=norm_pad)
        return x

    def forward(self, ids: np.ndarray) -> tfm_rs.Tensor:
        keep = (ids != PAD).astype(np.float32)
        pooled = (self.states(ids) * tfm_rs.tensor((keep / keep.sum(1, keepdims=True))[:, :, None])).sum(1)
        return self.head(pooled)


def batch(rng: np.random.Generator, n: int) -> Tuple[np.ndarray, np.ndarray]:
    """Sequences of 3–16 tokens, right-padded; label 1 when 5 occurs more often than 6."""
    ids = np.full((n, MAX_LEN), PAD, np.int64)
    for i, length in enumerate(rng.integers(3, MAX_LEN + 1, n)):
        ids[i, :length] = rng.choice([A, B, 7, 8, 9, 10, 11], length, p=[0.25, 0.25, 0.1, 0.1, 0.1, 0.1, 0.1])
    return ids, ((ids == A).sum(1) > (ids == B).sum(1)).astype(np.int64)


def sensitivity(form: str) -> Dict[str, float]:
    """Largest change of sentence 0's real outputs (training mode) when its batchmates change,
    and when the same batch is padded further (trimmed to its longest sentence vs padded to 16)."""
    tfm_rs.manual_seed(0)
    model = Classifier(form)
    rng = np.random.default_rng(0)
    ids, _ = batch(rng, 8)
    ids[:, 12:] = PAD  # every sentence ≤ 12 tokens, so padding to 16 adds padding only
    n0 = int((ids[0] != PAD).sum())
    others = ids.copy()
    others[1:] = batch(rng, 7)[0]
    with tfm_rs.no_grad():
        trimmed, padded, mates = (model.states(x).numpy()[0, :n0] for x in (ids[:, :12], ids, others))
    return {"batchmates": float(np.abs(mates - padded).max()), "padding": float(np.abs(padded - trimmed).max())}


def accuracy(form: str, batch_size: int, steps: int, seed: int) -> float:
    tfm_rs.manual_seed(seed)
    model = Classifier(form)
    opt = optim.Adam(model.parameters(), lr=2e-3)
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        ids, y = batch(rng, batch_size)
        loss = F.cross_entropy(model(ids), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    ids, y = batch(np.random.default_rng(seed + 1000), 500)
    with tfm_rs.no_grad():
        return float((model(ids).numpy().argmax(-1) == y).mean())


def experiment(quick: bool) -> Outcome:
    steps, sizes = (80, (2, 32)) if quick else (400, (2, 4, 8, 32))
    sens = {f: sensitivity(f) for f in FORMS}
    acc: Dict[str, Dict[int, List[float]]] = {f: {b: [accuracy(f, b, steps, s) for s in SEEDS] for b in sizes}
                                             for f in FORMS}
    small, large = sizes[0], sizes[-1]

    def edge(b: int, form: str) -> Tuple[float, float]:
        """LayerNorm's accuracy minus ``form``'s at batch size ``b``: mean and s.e. over paired seeds."""
        d = np.subtract(acc["LayerNorm"][b], acc[form][b])
        return float(d.mean()), float(d.std(ddof=1) / np.sqrt(len(d)))

    edges = {f: {b: edge(b, f) for b in sizes} for f in FORMS[1:]}
    beats = {f: {b: e[0] > 2 * e[1] and e[0] > 0.01 for b, e in by.items()} for f, by in edges.items()}
    ln_exact = all(v < 1e-6 for v in sens["LayerNorm"].values())
    pad_moves_plain = sens[FORMS[1]]["padding"] > 1e-3
    pad_ignored_masked = sens[FORMS[2]]["padding"] < 1e-4
    small_batch_hurts = all(beats[f][small] for f in FORMS[1:])
    masked_fine_large = not beats[FORMS[2]][large]
    if ln_exact and pad_moves_plain and small_batch_hurts and not (pad_ignored_masked and masked_fine_large):
        verdict = "holds"
    elif ln_exact and (small_batch_hurts or pad_moves_plain):
        verdict = "it depends"
    else:
        verdict = "wrong"
    mean = {f: {b: float(np.mean(v)) for b, v in by.items()} for f, by in acc.items()}
    summary = (f"one sentence's output moves by {sens[FORMS[1]]['padding']:.2g} (BatchNorm, padding counted), "
               f"{sens[FORMS[2]]['padding']:.2g} (padding-aware) and {sens['LayerNorm']['padding']:.2g} (LayerNorm) "
               f"when the batch gets more padding; held-out accuracy after {steps} steps, mean of {len(SEEDS)} seeds, "
               f"batch {small} / {large}: LayerNorm {mean['LayerNorm'][small]:.3f} / {mean['LayerNorm'][large]:.3f}, "
               f"BatchNorm {mean[FORMS[1]][small]:.3f} / {mean[FORMS[1]][large]:.3f}, padding-aware "
               f"{mean[FORMS[2]][small]:.3f} / {mean[FORMS[2]][large]:.3f}")

    def draw(plt: Any) -> Any:
        fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
        ax = axes[0]
        for c, f in enumerate(FORMS):
            m = [np.mean(acc[f][b]) for b in sizes]
            s = [np.std(acc[f][b]) for b in sizes]
            ax.errorbar(sizes, m, yerr=s, fmt="o-", color=f"C{c}", capsize=3, label=f)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("training batch size (sequences)")
        ax.set_ylabel("held-out accuracy (eval mode)")
        ax.set_title(f"same {steps} steps, {len(SEEDS)} seeds (bars: spread)", fontsize=9)
        ax.legend(fontsize=7)
        ax = axes[1]
        x = np.arange(len(FORMS))
        for k, key in enumerate(("batchmates", "padding")):
            ax.bar(x + 0.4 * k - 0.2, [max(sens[f][key], 1e-9) for f in FORMS], 0.4,
                   label=f"other {key}" if key == "batchmates" else "more padding in the batch")
        ax.set_yscale("log")
        ax.set_xticks(x, ["LayerNorm", "BatchNorm\n(padding counted)", "padding-aware\nBatchNorm"], fontsize=8)
        ax.set_ylabel("max change of one sentence's outputs")
        ax.set_title("training mode, untrained layer (1e-9 = no change)", fontsize=9)
        ax.legend(fontsize=7)
        return fig

    figures = {"steps": steps, "batch_sizes": list(sizes), "seeds": list(SEEDS), "test_sequences": 500,
               "sensitivity": sens, "accuracy": {f: {str(b): v for b, v in by.items()} for f, by in acc.items()},
               "layernorm_edge": {f: {str(b): list(e) for b, e in by.items()} for f, by in edges.items()}}
    return Outcome(verdict, summary, figures, {"layer_vs_batch_norm": draw})


CLAIM = Claim(
    name="layernorm-vs-batchnorm",
    number=7,
    statement="LayerNorm suits padded, variable-length text and small batches; BatchNorm does not.",
    expected="it depends",
    reason="LayerNorm normalises each token by itself, so a sentence's output depends neither on its batchmates "
           "nor on the batch's padding. Batch norm that counts the padded positions changes a sentence's output "
           "when the batch is merely padded further; the padding-aware form does not (its outputs still depend on "
           "the batchmates in training, as any batch norm's). On this padded classification task the accuracy "
           "gap at small batches is LayerNorm's way but within the spread of three seeds: the padding half is "
           "about how batch norm is implemented, and the small-batch half did not show beyond noise here.",
    experiment=experiment,
    not_measured=("BLEU on a translation task (a padded classification task is used)",),
)
