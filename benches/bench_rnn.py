"""tfm_rs's nn.LSTM / nn.GRU against PyTorch's CPU nn.LSTM / nn.GRU (oneDNN / MKL) on the same
shapes: forward + backward of ``output.sum() + h_n.sum()``, time-major input (T, B, I=H).

Run:  python3 benches/bench_rnn.py [--threads 2] [--repeat 5] [--rounds 3] [--smoke]

Per shape, ``--rounds`` rounds of ``--repeat`` runs (after two warm-ups) of tfm_rs, then of torch,
interleaved so that both sample the same stretches of machine load. Prints tokens/s (B·T per
second) of the medians, and the ratio tfm_rs / torch of the medians and, in parentheses, of the
best runs (> 1: tfm_rs is faster). torch is optional: without it only tfm_rs is timed.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time
from typing import Callable, List

import numpy as np

import tfm_rs
from tfm_rs import nn

try:
    import torch
except ImportError:  # a benchmark baseline only, never a dependency
    torch = None


def samples_s(fn: Callable[[], object], repeat: int) -> List[float]:
    # Two warm-up runs: torch builds its oneDNN primitives over the first two calls, and the other
    # library's idle threads (rayon, OpenMP) spin for a while after its last run.
    fn()
    fn()
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def ours(mode: str, x: np.ndarray, hidden: int, layers: int) -> Callable[[], None]:
    m = getattr(nn, mode)(x.shape[2], hidden, num_layers=layers)
    xt = tfm_rs.tensor(x, requires_grad=True)

    def step() -> None:
        out, state = m(xt)
        h = state[0] if mode == "LSTM" else state
        (out.sum() + h.sum()).backward()
    return step


def theirs(mode: str, x: np.ndarray, hidden: int, layers: int) -> Callable[[], None]:
    m = getattr(torch.nn, mode)(x.shape[2], hidden, num_layers=layers)
    xt = torch.from_numpy(x.copy()).requires_grad_(True)

    def step() -> None:
        out, state = m(xt)
        h = state[0] if mode == "LSTM" else state
        (out.sum() + h.sum()).backward()
    return step


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--hidden", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--layers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--smoke", action="store_true", help="tiny shapes, one run: checks that the script runs")
    args = ap.parse_args()
    if args.smoke:
        args.batch, args.steps, args.hidden, args.layers, args.repeat, args.rounds = 3, 5, [17], [1], 1, 1
    tfm_rs.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"{platform.processor() or platform.machine()}, {args.threads} threads; B={args.batch}, T={args.steps}, "
          f"forward + backward; tokens/s of the median of {args.rounds}×{args.repeat} runs")
    print(f"{'cell':5} {'H':>5} {'L':>2} {'tfm_rs tok/s':>13} {'torch tok/s':>12} {'ratio (best)':>14}")
    rng = np.random.default_rng(0)
    for mode in ("LSTM", "GRU"):
        for hidden in args.hidden:
            for layers in args.layers:
                x = rng.standard_normal((args.steps, args.batch, hidden)).astype(np.float32)
                fns = [ours(mode, x, hidden, layers)]
                if torch is not None:
                    fns.append(theirs(mode, x, hidden, layers))
                times: List[List[float]] = [[] for _ in fns]
                for _ in range(args.rounds):
                    for k, fn in enumerate(fns):
                        times[k] += samples_s(fn, args.repeat)
                tokens = args.batch * args.steps
                row = f"{mode:5} {hidden:5} {layers:2} {tokens / statistics.median(times[0]):13.0f}"
                if torch is not None:
                    med = statistics.median(times[1]) / statistics.median(times[0])
                    best = min(times[1]) / min(times[0])
                    row += f" {tokens / statistics.median(times[1]):12.0f} {med:7.2f} ({best:.2f})"
                print(row, flush=True)


if __name__ == "__main__":
    main()
