"""tfm_rs's fused scaled_dot_product_attention against PyTorch's CPU one, on the sdpa workload of
../shared/bench/reference_torch.py: B=4, H=8, head dim 64, T in (128, 512, 1024), causal and not.

Run:  python3 benches/bench_attention.py [--threads 2] [--repeat 7] [--t 512 ...]

Times the forward alone (no grad) and forward + `.sum().backward()`, the median of `--repeat`
runs after one warm-up, with tfm_rs and torch interleaved per workload so that both see the same
machine load. Prints a table with ratios torch / tfm_rs (> 1: tfm_rs is faster). torch is
optional: without it only tfm_rs times are printed.
"""
from __future__ import annotations

import argparse
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


def median_ms(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2] * 1e3


def bench_tfm(arrays: list[np.ndarray], causal: bool, repeat: int) -> tuple[float, float]:
    q, k, v = (tfm_rs.tensor(a, requires_grad=True) for a in arrays)

    def fwd() -> None:
        with tfm_rs.no_grad():
            F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def fwd_bwd() -> None:
        F.scaled_dot_product_attention(q, k, v, is_causal=causal).sum().backward()

    return median_ms(fwd, repeat), median_ms(fwd_bwd, repeat)


def bench_torch(arrays: list[np.ndarray], causal: bool, repeat: int) -> Optional[tuple[float, float]]:
    if torch is None:
        return None
    q, k, v = (torch.from_numpy(a.copy()).requires_grad_(True) for a in arrays)

    def fwd() -> None:
        with torch.no_grad():
            TF.scaled_dot_product_attention(q, k, v, is_causal=causal)

    def fwd_bwd() -> None:
        TF.scaled_dot_product_attention(q, k, v, is_causal=causal).sum().backward()

    return median_ms(fwd, repeat), median_ms(fwd_bwd, repeat)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--t", type=int, nargs="+", default=[128, 512, 1024])
    args = ap.parse_args()
    tfm_rs.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"threads {args.threads}, torch {torch.__version__ if torch else 'not installed'}")
    print(f"{'workload':<14} {'tfm fwd':>9} {'torch fwd':>10} {'ratio':>6} {'tfm f+b':>9} {'torch f+b':>10} {'ratio':>6}")
    for t in args.t:
        for causal in (False, True):
            arrays = [rng.standard_normal((4, 8, t, 64)).astype(np.float32) for _ in range(3)]
            ours = bench_tfm(arrays, causal, args.repeat)
            ref = bench_torch(arrays, causal, args.repeat)
            name = f"T{t}{'_causal' if causal else ''}"
            if ref is None:
                print(f"{name:<14} {ours[0]:9.2f} {'-':>10} {'-':>6} {ours[1]:9.2f} {'-':>10} {'-':>6}")
            else:
                print(
                    f"{name:<14} {ours[0]:9.2f} {ref[0]:10.2f} {ref[0] / ours[0]:6.2f} "
                    f"{ours[1]:9.2f} {ref[1]:10.2f} {ref[1] / ours[1]:6.2f}"
                )


if __name__ == "__main__":
    main()
