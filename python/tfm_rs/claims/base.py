"""What a claim is and how one runs: the experiment, its verdict and where its outputs go.

A claim module defines one :class:`Claim`. Its ``experiment(quick)`` measures, and returns an
:class:`Outcome`: the figures, the verdict *computed from them* (never written in advance), a
one-line summary with the numbers, and the plots to draw. :func:`run_claim` times it, writes
``result.json`` and the PNG plots into the output folder, and returns the :class:`Result`.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

__all__ = ["Claim", "Outcome", "Result", "VERDICTS", "run_claim", "tolerance_ratio"]

#: The three verdicts a measurement can give.
VERDICTS = ("holds", "wrong", "it depends")

#: ``draw(plt) -> figure``: one plot, drawn with matplotlib's pyplot module.
Draw = Callable[[Any], Any]


@dataclass
class Outcome:
    """What an experiment found. ``verdict`` is one of :data:`VERDICTS`; ``figures`` holds
    every number behind it (JSON-serialisable); ``plots`` maps a file stem to a ``draw``."""

    verdict: str
    summary: str
    figures: Dict[str, Any]
    plots: Dict[str, Draw] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {self.verdict!r}")


@dataclass(frozen=True)
class Claim:
    """One claim of the explainer notes, paraphrased in ``statement``.

    ``expected`` is the verdict the shipped measurement gives (the tests run every claim in
    quick mode and check it, so a library change that breaks a claim's finding fails CI);
    ``reason`` explains it in a paragraph; ``not_measured`` lists the parts of the claim this
    experiment does not measure yet.
    """

    name: str
    number: int
    statement: str
    expected: str
    reason: str
    experiment: Callable[[bool], Outcome]
    not_measured: Tuple[str, ...] = ()


@dataclass
class Result:
    name: str
    verdict: str
    expected: str
    summary: str
    figures: Dict[str, Any]
    quick: bool
    seconds: float
    plots: List[str]
    not_measured: List[str]
    machine: str

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, default=float)


def _machine() -> str:
    import tfm_rs

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}; {tfm_rs.get_num_threads()} threads; SIMD {tfm_rs.cpu_features()['isa']}"


def run_claim(claim: Claim, quick: bool = False, out: Optional[Path] = None) -> Result:
    """Runs ``claim``'s experiment; with ``out``, writes ``out/result.json`` and one PNG per
    plot there (plots need matplotlib; without it they are skipped, and the result says so)."""
    start = time.perf_counter()
    outcome = claim.experiment(quick)
    seconds = time.perf_counter() - start
    plots: List[str] = []
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        plots = _draw(outcome.plots, out, f"{claim.name}: {outcome.verdict}. {outcome.summary}")
    result = Result(name=claim.name, verdict=outcome.verdict, expected=claim.expected, summary=outcome.summary,
                    figures=outcome.figures, quick=quick, seconds=round(seconds, 2), plots=plots,
                    not_measured=list(claim.not_measured), machine=_machine())
    if out is not None:
        (out / "result.json").write_text(result.to_json() + "\n")
    return result


def _draw(plots: Dict[str, Draw], out: Path, caption: str) -> List[str]:
    if not plots:
        return []
    try:
        from tfm_rs.plots import _pyplot
        plt = _pyplot()
    except ImportError:
        return ["(plots skipped: matplotlib is not installed)"]
    written = []
    for stem, draw in plots.items():
        fig = draw(plt)
        fig.text(0.01, 0.005, caption, fontsize=7, ha="left", va="bottom", wrap=True)
        fig.tight_layout(rect=(0, 0.1, 1, 1))
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path.name)
    return written


def tolerance_ratio(a: float, b: float) -> float:
    """``max(a/b, b/a)`` for positive numbers: how far apart two values are, as a factor."""
    return max(a / b, b / a)
