"""The data-parallel scaling model of docs/distributed.md, as numbers.

    python benches/scaling_model.py [--sweep SWEEP.json] [--bucket-mb 25]

Weak scaling (a fixed batch per node): one step takes ``T(N) = C_f + max(C_b, A − A_last) +
A_last`` where ``C = C_f + C_b`` is one node's compute (forward ≈ C/3, backward ≈ 2C/3), ``A`` the
ring all-reduce of all gradients, ``2(N−1)/N · bytes / bandwidth + 2(N−1) · latency``, and
``A_last`` that of the last bucket, which starts only when the backward ends (the buckets before
it overlap the backward). Without overlap ``T(N) = C + A``. Efficiency ``C / T(N)``.

Compute times per step are those of the paper's hardware (Vaswani et al., 8 P100s: base 0.4 s,
big 1.0 s a step), the small preset scaled from base by parameter count — a *fast* node, where
communication matters; on a CPU node like this one compute is ~100× longer and every
configuration here stays above 98%. ``--sweep`` (a ``bench_allreduce.py --json`` output) fits
latency and bandwidth to the measured all-reduce times and prints the model's prediction beside
each measurement. ``--smoke``: the tables only (they need nothing but Python).
"""

from __future__ import annotations

import argparse
import json
import sys

# Parameters with shared embeddings (tfm_rs.models.presets; vocabularies 8000 / 37000 / 37000).
PRESETS = {"small": 7_577_600, "base": 63_082_496, "big": 214_245_376}
STEP_SECONDS = {"small": 0.4 * 7_577_600 / 63_082_496, "base": 0.4, "big": 1.0}
LINKS = {"10 Gbit/s": (1.25e9, 20e-6), "100 Gbit/s": (12.5e9, 5e-6)}
NODES = (2, 4, 8, 16, 32, 64)


def ring_seconds(nbytes: float, n: int, bandwidth: float, latency: float) -> float:
    """Ring all-reduce: 2(N−1) steps, each moving bytes/N over every link."""
    return 2 * (n - 1) / n * nbytes / bandwidth + 2 * (n - 1) * latency


def efficiency(nbytes: float, compute: float, n: int, bandwidth: float, latency: float, bucket: float,
               overlap: bool) -> float:
    a = ring_seconds(nbytes, n, bandwidth, latency)
    if not overlap:
        return compute / (compute + a)
    a_last = ring_seconds(min(bucket, nbytes), n, bandwidth, latency)
    return compute / (compute / 3 + max(2 * compute / 3, a - a_last) + a_last)


def tables(bucket_mb: float) -> None:
    bucket = bucket_mb * 2 ** 20
    print(f"efficiency, no overlap / overlapped ({bucket_mb:g} MiB buckets), weak scaling")
    print("| preset | gradient bytes | link | compute per step | " + " | ".join(f"N={n}" for n in NODES) + " |")
    print("| --- | --- | --- | --- | " + " | ".join("---" for _ in NODES) + " |")
    for preset, params in PRESETS.items():
        nbytes = 4 * params
        for link, (bw, lat) in LINKS.items():
            c = STEP_SECONDS[preset]
            cells = [f"{efficiency(nbytes, c, n, bw, lat, bucket, False):.0%} / "
                     f"{efficiency(nbytes, c, n, bw, lat, bucket, True):.0%}" for n in NODES]
            print(f"| {preset} | {nbytes / 1e6:.0f} MB | {link} | {c:.2f} s | " + " | ".join(cells) + " |")


def fit(path: str) -> None:
    import numpy as np

    with open(path) as f:
        sweep = json.load(f)
    n = sweep["nproc"]
    rows = sweep["rows"]
    x = np.array([2 * (n - 1) / n * r["bytes"] for r in rows])
    t = np.array([r["seconds"] for r in rows])
    # Least squares on t = 2(N−1)·latency + x / bandwidth, weighted by 1/t (relative error).
    a = np.stack([np.full_like(x, 2 * (n - 1)), x], axis=1) / t[:, None]
    (lat, inv_bw), *_ = np.linalg.lstsq(a, np.ones_like(t), rcond=None)
    print(f"fit to {path} ({n} processes): latency {lat * 1e6:.1f} µs, bandwidth {1 / inv_bw / 1e9:.2f} GB/s")
    print(f"{'bytes':>12} {'measured µs':>12} {'model µs':>10}")
    for r, xi in zip(rows, x):
        print(f"{r['bytes']:>12,} {r['seconds'] * 1e6:>12.1f} {(2 * (n - 1) * lat + xi * inv_bw) * 1e6:>10.1f}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sweep", help="a bench_allreduce.py --json file to fit and compare")
    p.add_argument("--bucket-mb", type=float, default=25.0, help="bucket size in MiB (default 25)")
    p.add_argument("--smoke", action="store_true", help="the tables only")
    args = p.parse_args()
    tables(args.bucket_mb)
    if args.sweep and not args.smoke:
        fit(args.sweep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
