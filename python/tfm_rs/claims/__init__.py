"""Claims the Transformer explainers make, each as a measured experiment with a verdict.

``CLAIMS`` maps each claim's name to its :class:`~tfm_rs.claims.base.Claim`; :func:`run` runs
one (``quick=True``: a few seconds, the size the tests use) and writes ``result.json`` and PNG
plots. ``tfm-rs claims`` is the command line; ``docs/claims.md`` the table of findings.
"""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Dict, Optional

from tfm_rs.claims.base import Claim, Outcome, Result, run_claim

__all__ = ["CLAIMS", "Claim", "Outcome", "Result", "get", "run"]


def _discover() -> Dict[str, Claim]:
    # Every module of this package but ``base`` holds one or more claims; finding them by
    # type means adding a claim is adding its module, with no list to keep in step.
    found = []
    for info in pkgutil.iter_modules(__path__):
        if info.name == "base":
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        found.extend(v for v in vars(module).values() if isinstance(v, Claim))
    return {c.name: c for c in sorted(found, key=lambda c: c.number)}


CLAIMS: Dict[str, Claim] = _discover()


def get(name: str) -> Claim:
    """The claim called ``name``; a ``LookupError`` listing the names otherwise."""
    try:
        return CLAIMS[name]
    except KeyError:
        raise LookupError(f"no claim named {name!r}; the claims are: {', '.join(CLAIMS)}") from None


def run(name: str, quick: bool = False, out: Optional[Path] = None) -> Result:
    """Runs the claim ``name``; see :func:`tfm_rs.claims.base.run_claim`."""
    return run_claim(get(name), quick=quick, out=out)
