"""Claims the Transformer explainers make, each as a measured experiment with a verdict.

``CLAIMS`` maps each claim's name to its :class:`~tfm_rs.claims.base.Claim`; :func:`run` runs
one (``quick=True``: a few seconds, the size the tests use) and writes ``result.json`` and PNG
plots. ``tfm-rs claims`` is the command line; ``docs/claims.md`` the table of findings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional

from tfm_rs.claims import (attention_cost, bert_vs_gpt, cls_layers, contextual, decoder_mask, depth,
                           label_smoothing, masks, multihead_cost, norms, positions, receptive_field, rnn_distance,
                           sqrt_dk, teacher_forcing, warmup)
from tfm_rs.claims.base import Claim, Outcome, Result, run_claim

__all__ = ["CLAIMS", "Claim", "Outcome", "Result", "get", "run"]

CLAIMS: Dict[str, Claim] = {c.name: c for c in sorted(
    [sqrt_dk.CLAIM, multihead_cost.CLAIM, positions.SHIFT, positions.ORDER, depth.CLAIM, warmup.CLAIM,
     decoder_mask.MASK, masks.CLAIM, decoder_mask.DEPENDENCY, teacher_forcing.CLAIM,
     receptive_field.CLAIM, rnn_distance.CLAIM, bert_vs_gpt.CLAIM, contextual.CLAIM,
     label_smoothing.CLAIM, norms.CLAIM, cls_layers.CLAIM, attention_cost.CLAIM],
    key=lambda c: c.number)}


def get(name: str) -> Claim:
    """The claim called ``name``; a ``LookupError`` listing the names otherwise."""
    try:
        return CLAIMS[name]
    except KeyError:
        raise LookupError(f"no claim named {name!r}; the claims are: {', '.join(CLAIMS)}") from None


def run(name: str, quick: bool = False, out: Optional[Path] = None) -> Result:
    """Runs the claim ``name``; see :func:`tfm_rs.claims.base.run_claim`."""
    return run_claim(get(name), quick=quick, out=out)
