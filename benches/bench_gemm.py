"""SGEMM throughput of tfm_rs vs numpy (and torch, if importable), in GFLOP/s, with ratios.

    python benches/bench_gemm.py                 # 1 thread and all cores
    python benches/bench_gemm.py --threads 2     # only 2 threads
    python benches/bench_gemm.py --sizes 1024 2048 --repeats 20

Each thread count runs in a fresh subprocess, because OpenBLAS/MKL read their thread count from
the environment at import, and tfm_rs reads TFM_RS_NUM_THREADS when its pool is first built.
Every case reports the best of --repeats calls after a warm-up call, and checks tfm_rs's result
against numpy's.

Layouts: `nn` is A·B, `nt` is A·Bᵀ (the Linear layer's x·Wᵀ), `ntb` is A·Bᵀ + bias (the Linear
layer with its bias: numpy adds it after the product, torch runs `addmm`, tfm_rs its GEMM
epilogue), `tn` is Aᵀ·B (its weight gradient).
numpy and torch get strided views. A tfm_rs tensor is always contiguous (converting a strided
view copies it), so each layout runs through the op that reaches that GEMM layout: `nn` is
`matmul`, `nt` is `linear(A, W)`, `tn` is the backward of `linear` into W alone (dW = Gᵀ·X,
timed as `backward(retain_graph=True)`, which also adds dW into W.grad: k·n adds, <1% here).
"""

import argparse
import functools
import json
import os
import subprocess
import sys
import time

THREAD_VARS = ("TFM_RS_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


LAYOUTS = ("nn", "nt", "ntb", "tn")


def cases(sizes):
    """(name, m, k, n, layout): squares plus a Transformer FFN shape, each in the three layouts."""
    shapes = [(f"{s}^3", s, s, s) for s in sizes] + [("2048x512x2048", 2048, 512, 2048)]
    return [(f"{name} {layout}", m, k, n, layout) for name, m, k, n in shapes for layout in LAYOUTS]


def operands(np, m, k, n, layout, rng):
    """A (m×k) and B (k×n) as numpy views; transposed layouts are strided views, not copies."""
    a = rng.standard_normal((k, m) if layout == "tn" else (m, k), dtype=np.float32)
    b = rng.standard_normal((n, k) if layout.startswith("nt") else (k, n), dtype=np.float32)
    return (a.T if layout == "tn" else a), (b.T if layout.startswith("nt") else b)


def bias_of(np, n):
    """The `ntb` layout's bias (n,)."""
    return np.linspace(-1.0, 1.0, n, dtype=np.float32)


SETTLE_S = 0.3


def best_seconds(fn, repeats):
    fn()  # warm-up: thread pools, packing buffers, page faults
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def tfm_rs_product(tfm_rs, layout, a, b):
    """(product, result) for tfm_rs: the timed call for `layout` on A = `a`, B = `b` (numpy views),
    and a function returning A·B (after one product) for the accuracy check."""
    F = tfm_rs.functional
    if layout == "nn":
        x, y = tfm_rs.tensor(a), tfm_rs.tensor(b)
        return (lambda: F.matmul(x, y)), (lambda: F.matmul(x, y).numpy())
    import numpy as np

    if layout.startswith("nt"):
        x, w = tfm_rs.tensor(a), tfm_rs.tensor(b.T)  # b.T is the contiguous n×k weight
        bias = tfm_rs.tensor(bias_of(np, b.shape[1])) if layout == "ntb" else None
        return (lambda: F.linear(x, w, bias)), (lambda: F.linear(x, w, bias).numpy())
    # tn: Aᵀ·B is dW of y = X·Wᵀ with X = B (k×n), W m×n, dy = G = A's k×m storage.
    x, g = tfm_rs.tensor(b), tfm_rs.tensor(a.T)
    w = tfm_rs.tensor(np.zeros((a.shape[0], b.shape[1]), np.float32), requires_grad=True)
    y = F.linear(x, w)

    def result():
        w.grad = None
        y.backward(g, retain_graph=True)
        return w.grad.numpy()

    return (lambda: y.backward(g, retain_graph=True)), result


def worker(threads, sizes, repeats):
    """Runs in the subprocess: measures every library and prints one JSON line."""
    import numpy as np

    # Each library gets (convert, multiply): operands are converted to its own type once, outside
    # the timed call, so the timing is the product alone (plus its output allocation).
    libs = {"numpy": (lambda x: x, lambda a, b: a @ b, lambda a, b, bias: a @ b + bias)}
    try:
        import tfm_rs

        if hasattr(tfm_rs, "set_num_threads"):
            tfm_rs.set_num_threads(threads)
        libs["tfm_rs"] = None
    except ImportError as e:
        print(f"tfm_rs not importable ({e}); measuring the others only", file=sys.stderr)
    try:
        import torch

        torch.set_num_threads(threads)
        libs["torch"] = (torch.from_numpy, lambda a, b: a @ b, lambda a, b, bias: torch.addmm(bias, a, b))
    except ImportError:
        pass

    rng = np.random.default_rng(0)
    results = []
    for name, m, k, n, layout in cases(sizes):
        a, b = operands(np, m, k, n, layout, rng)
        bias = bias_of(np, n)
        row = {"case": name, "gflops": {}}
        flops = 2.0 * m * n * k
        for lib, conv_mul in libs.items():
            if lib == "tfm_rs":
                timed, result = tfm_rs_product(tfm_rs, layout, a, b)
            elif layout == "ntb":
                convert, _, fn = conv_mul
                timed = functools.partial(fn, convert(a), convert(b), convert(bias))
            else:
                convert, fn, _ = conv_mul
                timed = functools.partial(fn, convert(a), convert(b))
            # OpenBLAS's worker threads busy-wait for ~0.1 s after a call (its THREAD_TIMEOUT,
            # 2^28 cycles); let them (and any other pool) go idle before the next library, which
            # would otherwise share the cores with them.
            time.sleep(SETTLE_S)
            row["gflops"][lib] = flops / best_seconds(timed, repeats) / 1e9
        if "tfm_rs" in libs:
            got = result()
            want = a.astype(np.float64) @ b.astype(np.float64)
            scale = np.abs(a).astype(np.float64) @ np.abs(b).astype(np.float64)
            if layout == "ntb":
                want += bias
                scale += np.abs(bias)
            row["max_rel_err"] = float(np.max(np.abs(got - want) / (scale + 1e-30)))
        results.append(row)
    isa = tfm_rs.cpu_features()["isa"] if "tfm_rs" in libs else "-"
    print(json.dumps({"threads": threads, "isa": isa, "results": results}))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="*", help="thread counts (default: 1 and all cores)")
    p.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024, 2048])
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="sizes 17 and 64, one thread: checks that the script runs")
    args = p.parse_args()
    if args.smoke:
        args.threads, args.sizes, args.repeats = args.threads or [1], [17, 64], 1
    if args.worker:
        worker(args.worker, args.sizes, args.repeats)
        return

    from tfm_rs.bench import cpu_model

    cores = os.cpu_count() or 1
    print(f"CPU: {cpu_model()}")
    thread_counts = args.threads or sorted({1, cores})
    for threads in thread_counts:
        env = dict(os.environ, **{v: str(threads) for v in THREAD_VARS})
        cmd = [sys.executable, __file__, "--worker", str(threads), "--repeats", str(args.repeats)]
        cmd += ["--sizes", *map(str, args.sizes)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.exit(f"worker for {threads} thread(s) failed:\n{proc.stderr}")
        sys.stderr.write(proc.stderr)
        report = json.loads(proc.stdout.strip().splitlines()[-1])
        if args.smoke and not all("tfm_rs" in row["gflops"] for row in report["results"]):
            sys.exit("tfm_rs was not measured (not importable?)")
        print_table(report)


def print_table(report):
    rows = report["results"]
    libs = list(rows[0]["gflops"]) if rows else []
    others = [lib for lib in libs if lib != "tfm_rs"]
    print(f"\n== {report['threads']} thread(s), tfm_rs ISA path {report['isa']}, GFLOP/s (best of repeats) ==")
    header = f"{'case':<20}" + "".join(f"{lib:>10}" for lib in libs)
    if "tfm_rs" in libs:
        header += "".join(f"{'tfm/' + lib:>12}" for lib in others) + f"{'max rel err':>13}"
    print(header)
    for row in rows:
        g = row["gflops"]
        line = f"{row['case']:<20}" + "".join(f"{g[lib]:>10.1f}" for lib in libs)
        if "tfm_rs" in g:
            line += "".join(f"{g['tfm_rs'] / g[lib]:>11.2f}x" for lib in others)
            line += f"{row['max_rel_err']:>13.1e}"
        print(line)


if __name__ == "__main__":
    main()
