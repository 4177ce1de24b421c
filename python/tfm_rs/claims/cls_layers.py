"""Claim 20: the CLS vectors of a BERT's layers are similar to each other, and the attention
diagonal (how much each token attends to itself) changes with depth.

The experiment trains a small ``BertEncoder`` briefly by masked-LM on the Markov text of claim
15 with a CLS token (id 1, never masked) in front of every sentence, then reads, for held-out
sentences, the CLS vector after every layer (forward pre-hooks, as claim 14) and each layer's
attention weights (recomputed with ``need_weights=True`` from the inputs a pre-hook on every
``self_attn`` records). It reports the cosine similarity of the CLS vectors between every pair
of layers, and the mean weight a token gives itself, per layer, against the uniform 1/T.
"""

from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

import tfm_rs
from tfm_rs.claims.base import Claim, Outcome
from tfm_rs.claims.bert_vs_gpt import chain, sample, train
from tfm_rs.claims.contextual import hidden_states

CLS, LAYERS = 1, 4


def with_cls(ids: np.ndarray) -> np.ndarray:
    """The sentences with CLS in front and their last token dropped (the length stays 16)."""
    return np.concatenate([np.full((len(ids), 1), CLS), ids[:, :-1]], axis=1)


def attention_weights(model: Any, ids: np.ndarray) -> List[np.ndarray]:
    """Every layer's head-averaged attention ``(B, T, T)``."""
    inputs: List[Any] = []

    def hook(module: Any, args: Any, kwargs: Dict[str, Any]) -> None:
        inputs.append((module, args, kwargs))

    handles = [layer.self_attn.register_forward_pre_hook(hook, with_kwargs=True) for layer in model.layers]
    try:
        with tfm_rs.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    with tfm_rs.no_grad():
        return [m(*a, **{**k, "need_weights": True, "average_attn_weights": True})[1].numpy() for m, a, k in inputs]


def experiment(quick: bool) -> Outcome:
    steps, seed = (150, 0) if quick else (600, 0)
    p = chain(seed)
    model, losses = train("BERT", p, steps, seed, layers=LAYERS, prefix=with_cls)
    model.eval()
    test = with_cls(sample(p, 500, np.random.default_rng(seed + 100)))
    states = hidden_states(model, test)
    cls = [h[:, 0] / np.linalg.norm(h[:, 0], axis=1, keepdims=True) for h in states]
    sim = np.array([[float((a * b).sum(1).mean()) for b in cls] for a in cls])
    adjacent = [float(sim[k, k + 1]) for k in range(LAYERS)]
    # Across sentences at one layer: how alike CLS vectors of *different* sentences are.
    across = [float((c @ c.T)[~np.eye(len(c), dtype=bool)].mean()) for c in cls]
    weights = attention_weights(model, test)
    length = test.shape[1]
    diagonal = [float(np.diagonal(w, axis1=1, axis2=2).mean()) for w in weights]
    cls_similar = min(adjacent[1:]) > 0.9  # the embedding → layer 1 step is the attention's first mixing
    diag_changes = max(diagonal) / min(diagonal) > 1.5
    verdict = "holds" if cls_similar and diag_changes else ("it depends" if cls_similar or diag_changes else "wrong")
    summary = (f"BERT ({LAYERS} layers, {steps} MLM steps): cosine of one sentence's CLS vectors between adjacent "
               f"layers {', '.join(f'{s:.2f}' for s in adjacent)} (embeddings → layer 1 first), embeddings vs top "
               f"{sim[0, -1]:.2f}; the mean self-attention weight per layer "
               f"{', '.join(f'{d:.3f}' for d in diagonal)} (uniform 1/T = {1 / length:.3f}); 500 sentences")

    def draw(plt: Any) -> Any:
        fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
        ax = axes[0]
        im = ax.imshow(sim, vmin=-1, vmax=1, cmap="coolwarm")
        for i in range(LAYERS + 1):
            for j in range(LAYERS + 1):
                ax.text(j, i, f"{sim[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_xlabel("layer (0 = embeddings)")
        ax.set_ylabel("layer")
        ax.set_title("cosine of the same sentence's CLS vector", fontsize=9)
        fig.colorbar(im, ax=ax)
        ax = axes[1]
        ax.plot(range(1, LAYERS + 1), diagonal, "o-", label="mean weight on itself (a_ii)")
        ax.axhline(1 / length, color="0.5", ls="--", label="uniform 1/T")
        ax.set_xlabel("layer")
        ax.set_ylabel("attention weight")
        ax.set_title("the attention diagonal against depth", fontsize=9)
        ax.legend(fontsize=7)
        return fig

    figures = {"steps": steps, "seed": seed, "layers": LAYERS, "test_sentences": len(test), "final_loss": losses[-1],
               "cls_cosine": sim.tolist(), "cls_adjacent": adjacent, "cls_across_sentences": across,
               "attention_diagonal": diagonal, "uniform": 1 / length}
    return Outcome(verdict, summary, figures, {"cls_layers": draw})


CLAIM = Claim(
    name="cls-across-layers",
    number=20,
    statement="The CLS vectors of a BERT's different layers are similar, and the attention diagonal changes with "
              "depth.",
    expected="holds",
    reason="After the first layer a sentence's CLS vector changes little from one layer to the next (cosine "
           "0.93–0.98 between neighbours), while the step from the embeddings to layer 1 and the distance from "
           "the bottom to the top are larger — and CLS vectors of different sentences are much alike too. The "
           "weight tokens give themselves is not constant: about uniform in the first layer, 1.5 times uniform "
           "in the second, lower again at the top.",
    experiment=experiment,
    not_measured=("a pretrained BERT on real text (the same code reads any BertEncoder)",),
)
