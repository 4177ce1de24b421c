"""tfm_rs's fused scaled_dot_product_attention against PyTorch's CPU one, on the sdpa workload of
../shared/bench/reference_torch.py: B=4, H=8, head dim 64, T in (128, 512, 1024), causal and not.

Run:  python3 benches/bench_attention.py [--threads 2] [--repeat 7] [--rounds 3] [--t 512 ...]

Times the forward alone (no grad) and forward + `.sum().backward()`: per workload, `--rounds`
rounds of `--repeat` runs (after one warm-up) of tfm_rs, then of torch, so that both sample the
same stretches of machine load. Prints the medians and the ratios torch / tfm_rs (> 1: tfm_rs is
faster) of the medians and, in parentheses, of the best runs, which noise from other tenants of
a shared machine moves least. torch is optional: without it only tfm_rs times are printed.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Callable, Optional

import numpy as np

import tfm_rs
import tfm_rs.functional as F

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # torch is a benchmark baseline only, never a dependency
    torch = None


def samples_ms(fn: Callable[[], object], repeat: int) -> list[float]:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return times


def tfm_fns(arrays: list[np.ndarray], causal: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    q, k, v = (tfm_rs.tensor(a, requires_grad=True) for a in arrays)

    def fwd() -> None:
        with tfm_rs.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def fwd_bwd() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=causal).sum().backward()

    return fwd, fwd_bwd


def torch_fns(arrays: list[np.ndarray], causal: bool) -> Optional[tuple[Callable[[], None], Callable[[], None]]]:
    if torch is None:
        return None
    q, k, v = (torch.from_numpy(a.copy()).requires_grad_(True) for a in arrays)

    def fwd() -> None:
        with torch.no_grad():
            TF.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def fwd_bwd() -> None:
        TF.scaled_dot_product_attention(q, k, v, is_causal=causal).sum().backward()

    return fwd, fwd_bwd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7, help="timed runs per round")
    ap.add_argument("--rounds", type=int, default=3, help="rounds of tfm_rs then torch runs, alternating")
    ap.add_argument("--t", type=int, nargs="+", default=[128, 512, 1024])
    ap.add_argument("--smoke", action="store_true", help="T 17, one run: checks that the script runs")
    args = ap.parse_args()
    if args.smoke:
        args.t, args.repeat, args.rounds = [17], 1, 1
    tfm_rs.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"threads {args.threads}, torch {torch.__version__ if torch else 'not installed'}; "
          f"median ms of {args.rounds}×{args.repeat} runs, ratio torch/tfm_rs of the medians (of the best runs)")
    print(f"{'workload':<14} {'tfm fwd':>9} {'torch fwd':>10} {'ratio':>12} "
          f"{'tfm f+b':>9} {'torch f+b':>10} {'ratio':>12}")
    for t in args.t:
        for causal in (False, True):
            arrays = [rng.standard_normal((4, 8, t, 64)).astype(np.float32) for _ in range(3)]
            sides = {"tfm": tfm_fns(arrays, causal), "torch": torch_fns(arrays, causal)}
            times: dict = {(side, phase): [] for side in sides for phase in range(2)}
            for _ in range(args.rounds):
                for side, fns in sides.items():
                    # Let the other library's threads stop spinning first (OpenMP and BLAS pools
                    # busy-wait for a while after a call).
                    time.sleep(0.2)
                    for phase, fn in enumerate(fns or ()):
                        times[side, phase] += samples_ms(fn, args.repeat)
            row = f"T{t}{'_causal' if causal else ''}"
            row = f"{row:<14}"
            for phase in range(2):
                ours = times["tfm", phase]
                row += f" {statistics.median(ours):9.2f}"
                ref = times["torch", phase]
                if ref:
                    ratio = f"{statistics.median(ref) / statistics.median(ours):.2f} ({min(ref) / min(ours):.2f})"
                    row += f" {statistics.median(ref):10.2f} {ratio:>12}"
                else:
                    row += f" {'-':>10} {'-':>12}"
            print(row)


if __name__ == "__main__":
    main()
