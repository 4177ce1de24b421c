"""Training progress for people: a tqdm bar on a terminal, plain lines elsewhere.

:class:`Progress` is the ``callback`` of :meth:`tfm_rs.train.Trainer.train`: it takes every train
and validation record. On a terminal (stderr is a TTY, tqdm importable, not ``quiet``) it draws a
bar over the step budget — or over the training-time budget when only minutes are given — with
loss, learning rate and tokens/s averaged since the last refresh, and tqdm's ETA. Elsewhere (a
log file, CI) it prints a line at the first and last step and about every ``every_s`` seconds of
training, with the ETA computed from the budget. ``quiet`` prints nothing but validation lines.
"""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

__all__ = ["Progress", "format_seconds"]


def format_seconds(s: float) -> str:
    """``75`` → ``"1:15"``, ``3725`` → ``"1:02:05"``."""
    s = max(0, int(round(s)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


class Progress:
    """Shows training progress; call it with each record (see the module docstring).

    Args:
        total_steps: the step budget (``None``: none).
        seconds: the training-time budget in seconds (``None``: none).
        initial_step: steps already done (a resumed run).
        initial_time: training seconds already done (a resumed run).
        use_bar: allow a tqdm bar (still only on a terminal).
        quiet: no per-step output at all.
        every_s: seconds of training between plain lines.
        stream: where plain lines go (default stdout).
    """

    def __init__(self, total_steps: Optional[int], seconds: Optional[float], initial_step: int = 0,
                 initial_time: float = 0.0, use_bar: bool = True, quiet: bool = False, every_s: float = 10.0,
                 stream: Any = None) -> None:
        self.total_steps, self.seconds = total_steps, seconds
        self.quiet, self.every_s = quiet, every_s
        self.stream = stream if stream is not None else sys.stdout
        self.bar = None
        if use_bar and not quiet and sys.stderr.isatty():
            try:
                from tqdm import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                if total_steps is None and seconds:  # a time budget: the bar fills with training seconds
                    self.bar = tqdm(total=round(seconds), initial=min(initial_time, seconds), unit="s",
                                    dynamic_ncols=True, leave=True,
                                    bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt}s [{elapsed}<{remaining}{postfix}]")
                else:
                    self.bar = tqdm(total=total_steps, initial=initial_step, unit="step", dynamic_ncols=True,
                                    leave=True)
        self.start_time = initial_time
        self.start_step = initial_step
        self.last_print = -1.0
        self.window: List[Dict[str, Any]] = []

    def _eta(self, rec: Dict[str, Any]) -> Optional[float]:
        t, step = rec["train_time"], rec["step"]
        etas = []
        if self.total_steps and step > self.start_step:
            per_step = (t - self.start_time) / (step - self.start_step)
            etas.append(max(0.0, (self.total_steps - step) * per_step))
        if self.seconds:
            etas.append(max(0.0, self.seconds - t))
        return min(etas) if etas else None

    def _summary(self) -> str:
        tok = sum(r["tokens"] for r in self.window)
        sec = sum(r["step_time"] for r in self.window) or 1e-9
        loss = sum(r["loss"] for r in self.window) / len(self.window)
        return f"loss {loss:.3f}  lr {self.window[-1]['lr']:.2e}  {tok / sec:7,.0f} tok/s"

    def __call__(self, rec: Dict[str, Any], done: bool = False) -> None:
        if rec.get("type") == "valid":
            parts = [f"{k} {rec[k]:.3f}" for k in ("loss", "ppl", "accuracy", "bleu") if k in rec]
            self.write(f"valid @ step {rec['step']}: " + "  ".join(parts))
            return
        self.window.append(rec)
        if self.bar is not None:
            if self.bar.unit == "s":
                self.bar.update(min(rec["step_time"], self.bar.total - self.bar.n))
            else:
                self.bar.update(1)
            if rec["step"] % 5 == 0 or done:
                self.bar.set_postfix_str(f"step {rec['step']}  " + self._summary().replace("   ", " "))
                self.window = []
            return
        if self.quiet:
            self.window = []
            return
        # Plain lines: about every `every_s` seconds of training, and at the first and last step.
        t = rec["train_time"]
        last = done or (self.total_steps is not None and rec["step"] >= self.total_steps)
        if rec["step"] == self.start_step + 1 or last or t - self.last_print >= self.every_s:
            self.last_print = t
            of = f"/{self.total_steps}" if self.total_steps else ""
            eta = self._eta(rec)
            eta_s = f"  ETA {format_seconds(eta)}" if eta is not None and not last else ""
            self.write(f"step {rec['step']:5d}{of}  {self._summary()}  {t:5.1f}s{eta_s}")
            self.window = []

    def write(self, line: str) -> None:
        """Print a line without breaking the bar."""
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, file=self.stream, flush=True)

    def close(self) -> None:
        """Finish the bar (a no-op for plain lines)."""
        if self.bar is not None:
            self.bar.close()
            self.bar = None
