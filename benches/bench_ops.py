"""Row-wise ops of tfm_rs vs numpy and torch (each optional), forward + backward, in ms.

    python benches/bench_ops.py                  # all cases, best of 10
    python benches/bench_ops.py --repeats 20 --only cross_entropy

Every case runs the op forward and backward through the public API (``tfm_rs.functional``,
``.backward(gradient)``; torch likewise with autograd; numpy with the forward and the analytic
gradient written out). The input tensors are made once, outside the timing, and the backward
starts from a given gradient of the output's shape, as inside a network, so that neither the
NumPy conversion nor a ``.sum()``'s gradient (materialized by tfm_rs, an expanded view in
torch) is part of what is timed. The libraries run interleaved within each round so that load
from other processes hits all of them alike, each once untimed right before its timed call (the
previous library's idle threads, OpenMP's and rayon's, spin for a while after its last call and
would take the cores from the next); the script reports each one's best round plus the
ratio to tfm_rs (> 1: tfm_rs is faster). Threads: whatever each
library uses by default (tfm_rs: TFM_RS_NUM_THREADS or all cores).

The "transpose" case times a transpose made contiguous, forward only; "adam step" one
optimizer step (NumPy: the same update written out, with the first step's bias corrections). The "1000 calls" cases
time 1000 small ops in a row (a call's overhead, not its arithmetic). The
"to_tensor" and "to_numpy" cases time the NumPy conversions, which copy, against the same
copy elsewhere: ``tfm_rs.tensor(a)`` vs ``np.copy(a)`` and ``torch.from_numpy(a).clone()``, and
``t.numpy()`` vs ``np.copy`` and ``tt.clone().numpy()``.
"""

import argparse
import time

import numpy as np

import tfm_rs
import tfm_rs.functional as F

try:
    import torch
    import torch.nn.functional as TF
except ImportError:  # torch is optional
    torch = None


def np_log_softmax(x):
    m = x.max(-1, keepdims=True)
    z = x - m
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_softmax(x, g):
    y = np.exp(np_log_softmax(x))
    return y * (g - (g * y).sum(-1, keepdims=True))


def np_cross_entropy(x, t, eps):
    lsm = np_log_softmax(x)
    n, c = x.shape
    loss = -(1 - eps) * lsm[np.arange(n), t].mean() - eps * lsm.mean()
    d = np.exp(lsm) - eps / c
    d[np.arange(n), t] -= 1 - eps
    return loss, d / n


def np_add_layer_norm(x, r, w, b, g):
    s = x + r
    mean = s.mean(-1, keepdims=True)
    rstd = 1 / np.sqrt(s.var(-1, keepdims=True) + 1e-5)
    xhat = (s - mean) * rstd
    y = xhat * w + b
    gh = g * w
    ds = rstd * (gh - gh.mean(-1, keepdims=True) - xhat * (gh * xhat).mean(-1, keepdims=True))
    return y, ds, (g * xhat).sum(0), g.sum(0)


def np_rms_norm(x, w, g):
    rstd = 1 / np.sqrt((x * x).mean(-1, keepdims=True) + np.finfo(np.float32).eps)
    xhat = x * rstd
    gh = g * w
    return xhat * w, rstd * (gh - xhat * (gh * xhat).mean(-1, keepdims=True)), (g * xhat).sum(0)


def np_dropout(x, p, rng):
    keep = rng.random(x.shape, dtype=np.float32) >= p
    scale = np.float32(1 / (1 - p))
    return x * keep * scale, keep * scale


def np_gelu(x, g):
    from math import sqrt
    try:
        from scipy.special import erf
    except ImportError:
        return None
    cdf = 0.5 * (1 + erf(x / sqrt(2)))
    return x * cdf, g * (cdf + x * np.exp(-0.5 * x * x) / sqrt(2 * np.pi))


def np_silu(x, g):
    s = 1 / (1 + np.exp(-x))
    return x * s, g * s * (1 + x * (1 - s))


def np_sigmoid(x, g):
    s = 1 / (1 + np.exp(-x))
    return s, g * s * (1 - s)


def cases(rng, smoke: bool = False):
    """(name, {library: zero-argument callable running forward + backward}); ``smoke``: the
    leading dimensions divided by 256."""
    out = []

    def rows(n: int) -> int:
        return max(1, n // 256) if smoke else n

    def rand(*shape, scale=1.0):
        return (scale * rng.standard_normal(shape)).astype(np.float32)

    def upstream(shape):
        # The same gradient for every library: drawn from the output's shape alone.
        return np.random.default_rng(1).standard_normal(shape).astype(np.float32)

    def fb(make_leaf, make_grad, fn, arrays):
        leaves = [make_leaf(a) for a in arrays]
        grad = make_grad(upstream(tuple(fn(*leaves).shape)))

        def run():
            for t in leaves:
                t.grad = None
            fn(*leaves).backward(grad)
        return run

    def tfm_fb(fn, *arrays):
        return fb(lambda a: tfm_rs.tensor(a, requires_grad=True), tfm_rs.tensor, fn, arrays)

    def torch_fb(fn, *arrays):
        return fb(lambda a: torch.from_numpy(a.copy()).requires_grad_(), torch.from_numpy, fn, arrays)

    x, g = rand(rows(4096), 1024, scale=4.0), rand(rows(4096), 1024)
    out.append((f"softmax {rows(4096)}x1024", {
        "tfm_rs": tfm_fb(lambda t: F.softmax(t, -1), x),
        "numpy": lambda x=x, g=g: np_softmax(x, g),
        "torch": torch and torch_fb(lambda t: TF.softmax(t, -1), x),
    }))
    for m, d in ((rows(3072), 256), (rows(4096), 1024)):
        x, r, g = rand(m, d), rand(m, d), rand(m, d)
        w, b = rand(d), rand(d)
        out.append((f"add_layer_norm {m}x{d}", {
            "tfm_rs": tfm_fb(lambda a, c, wt, bt, d=d: F.add_layer_norm(a, c, d, wt, bt), x, r, w, b),
            "numpy": lambda x=x, r=r, w=w, b=b, g=g: np_add_layer_norm(x, r, w, b, g),
            "torch": torch and torch_fb(lambda a, c, wt, bt, d=d: TF.layer_norm(a + c, (d,), wt, bt), x, r, w, b),
        }))
        out.append((f"rms_norm {m}x{d}", {
            "tfm_rs": tfm_fb(lambda a, wt, d=d: F.rms_norm(a, d, wt), x, w),
            "numpy": lambda x=x, w=w, g=g: np_rms_norm(x, w, g),
            "torch": torch and torch_fb(lambda a, wt, d=d: TF.rms_norm(a, (d,), wt), x, w),
        }))
    for n, c in ((rows(1536), 8000), (rows(4096), 32000)):
        x = rand(n, c, scale=3.0)
        t = rng.integers(0, c, n)
        tt = torch and torch.from_numpy(t)
        out.append((f"cross_entropy {n}x{c}", {
            "tfm_rs": tfm_fb(lambda a, t=t: F.cross_entropy(a, t, label_smoothing=0.1), x),
            "numpy": lambda x=x, t=t: np_cross_entropy(x, t, 0.1),
            "torch": torch and torch_fb(lambda a, tt=tt: TF.cross_entropy(a, tt, label_smoothing=0.1), x),
        }))
    for n in (rows(393_216), rows(4_194_304)):
        x = rand(n)
        out.append((f"dropout {n}", {
            "tfm_rs": tfm_fb(lambda a: F.dropout(a, 0.1), x),
            "numpy": lambda x=x: np_dropout(x, 0.1, rng),
            "torch": torch and torch_fb(lambda a: TF.dropout(a, 0.1), x),
        }))
    x, g = rand(rows(3072), 1024, scale=3.0), rand(rows(3072), 1024)
    out.append((f"gelu {rows(3072)}x1024", {
        "tfm_rs": tfm_fb(lambda a: F.gelu(a), x),
        "numpy": (lambda x=x, g=g: np_gelu(x, g)) if np_gelu(x[:1], g[:1]) is not None else None,
        "torch": torch and torch_fb(lambda a: TF.gelu(a), x),
    }))
    out.append((f"silu {rows(3072)}x1024", {
        "tfm_rs": tfm_fb(lambda a: F.silu(a), x),
        "numpy": lambda x=x, g=g: np_silu(x, g),
        "torch": torch and torch_fb(lambda a: TF.silu(a), x),
    }))
    out.append((f"sigmoid {rows(3072)}x1024", {
        "tfm_rs": tfm_fb(lambda a: a.sigmoid(), x),
        "numpy": lambda x=x, g=g: np_sigmoid(x, g),
        "torch": torch and torch_fb(lambda a: a.sigmoid(), x),
    }))
    out.append((f"abs {rows(3072)}x1024", {
        "tfm_rs": tfm_fb(lambda a: a.abs(), x),
        "numpy": lambda x=x, g=g: (np.abs(x), g * np.sign(x)),
        "torch": torch and torch_fb(lambda a: a.abs(), x),
    }))
    out.append((f"sin {rows(3072)}x1024", {
        "tfm_rs": tfm_fb(lambda a: a.sin(), x),
        "numpy": lambda x=x, g=g: (np.sin(x), g * np.cos(x)),
        "torch": torch and torch_fb(lambda a: a.sin(), x),
    }))
    # var over the last dimension (the Annotated Transformer's LayerNorm takes x.std(-1)).
    out.append((f"var(dim=-1) {rows(3072)}x1024", {
        "tfm_rs": tfm_fb(lambda a: a.var(-1), x),
        "numpy": lambda x=x: x.var(-1, ddof=1),
        "torch": torch and torch_fb(lambda a: a.var(-1), x),
    }))
    # Selections: attention scores masked with -inf under a causal mask (the Annotated
    # Transformer's masked_fill), a clamp, and a max over the last dimension (values and indices).
    x = rand(rows(64), 128, 128)
    causal = np.triu(np.ones((128, 128), dtype=bool), 1)
    tcausal = torch and torch.from_numpy(causal)
    out.append((f"masked_fill {rows(64)}x128x128", {
        "tfm_rs": tfm_fb(lambda a: a.masked_fill(causal, -1e9), x),
        "numpy": lambda x=x: (np.where(causal, np.float32(-1e9), x), np.where(causal, 0, x)),
        "torch": torch and torch_fb(lambda a: a.masked_fill(tcausal, -1e9), x),
    }))
    x = rand(rows(3072), 1024)
    out.append((f"clamp {rows(3072)}x1024", {
        "tfm_rs": tfm_fb(lambda a: a.clamp(-0.5, 0.5), x),
        "numpy": lambda x=x, g=g: (np.clip(x, -0.5, 0.5), g * ((x > -0.5) & (x < 0.5))),
        "torch": torch and torch_fb(lambda a: a.clamp(-0.5, 0.5), x),
    }))
    x = rand(rows(1536), 8000)
    out.append((f"max(dim=-1) {rows(1536)}x8000", {
        "tfm_rs": tfm_fb(lambda a: a.max(-1).values, x),
        "numpy": lambda x=x: (x.max(-1), x.argmax(-1)),
        "torch": torch and torch_fb(lambda a: a.max(-1).values, x),
    }))
    # Batch norm over the tokens of a (N·T, C) batch in training mode (batch statistics).
    for m, c in ((rows(3072), 256), (rows(4096), 1024)):
        x, w, b = rand(m, c), rand(c), rand(c)
        out.append((f"batch_norm {m}x{c}", {
            "tfm_rs": tfm_fb(lambda a, wt, bt: F.batch_norm(a, None, None, wt, bt, training=True), x, w, b),
            "numpy": None,
            "torch": torch and torch_fb(lambda a, wt, bt: TF.batch_norm(a, None, None, wt, bt, training=True),
                                        x, w, b),
        }))
    # Hash embedding: 3072 tokens of a 32k vocabulary, 2 hashes into 8k buckets of width 256.
    # torch has no hashed lookup: its reference gathers the same number of rows (buckets drawn at
    # random, same shapes), weights them by importance and sums, with autograd's scatter-add.
    n, v, nb, k, d = rows(3072), 32000, 8000, 2, 256
    ids = rng.integers(0, v, n)
    pool, imp = rand(nb, d), rand(v, k)
    buckets = torch and torch.from_numpy(rng.integers(0, nb, (n, k)))
    tids = torch and torch.from_numpy(ids)
    out.append((f"hash_embedding {n}x{d} k={k}", {
        "tfm_rs": tfm_fb(lambda p, i, ids=ids, v=v, k=k: F.hash_embedding(ids, p, i, v, k, seed=0), pool, imp),
        "numpy": None,
        "torch": torch and torch_fb(lambda p, i, b=buckets, t=tids: (p[b] * i[t].unsqueeze(-1)).sum(1), pool, imp),
    }))
    # One optimizer step over 7.58M parameters (the small Multi30k preset's count) in one tensor.
    n = rows(7_580_000)
    x, g = rand(n), rand(n)
    p = tfm_rs.nn.Parameter(tfm_rs.tensor(x))
    p.grad = tfm_rs.tensor(g)
    tp = torch and torch.nn.Parameter(torch.from_numpy(x.copy()))
    if torch:
        tp.grad = torch.from_numpy(g.copy())
    m, v = np.zeros_like(x), np.zeros_like(x)

    def np_adam(x=x, g=g, m=m, v=v):
        m[:] = 0.9 * m + 0.1 * g
        v[:] = 0.999 * v + 0.001 * g * g
        x -= 1e-3 / 0.1 * m / (np.sqrt(v) / np.sqrt(0.001) + 1e-8)
    out.append((f"adam step {n}", {
        "tfm_rs": tfm_rs.optim.Adam([p], lr=1e-3).step,
        "numpy": np_adam,
        "torch": torch and torch.optim.Adam([tp], lr=1e-3).step,
    }))
    # Small ops, where the cost of a call dominates: 1000 calls in a row.
    x, y = rand(64), rand(64)
    tx, ty = tfm_rs.tensor(x), tfm_rs.tensor(y)
    qx, qy = torch and torch.from_numpy(x), torch and torch.from_numpy(y)
    out.append(("1000 calls: add 64 floats", {
        "tfm_rs": lambda a=tx, b=ty: [a + b for _ in range(1000)],
        "numpy": lambda a=x, b=y: [a + b for _ in range(1000)],
        "torch": torch and (lambda a=qx, b=qy: [a + b for _ in range(1000)]),
    }))
    x = rand(8, 64)
    small = tfm_fb(lambda a: a.tanh(), x), torch and torch_fb(lambda a: a.tanh(), x)
    out.append(("1000 calls: tanh 8x64 fwd+bwd", {
        "tfm_rs": lambda f=small[0]: [f() for _ in range(1000)],
        "numpy": None,
        "torch": torch and (lambda f=small[1]: [f() for _ in range(1000)]),
    }))
    # A transpose made contiguous (tfm_rs's tensors always are): forward only.
    x = rand(rows(1600), 1024)
    t, tt = tfm_rs.tensor(x), torch and torch.from_numpy(x)
    out.append((f"transpose {rows(1600)}x1024", {
        "tfm_rs": lambda t=t: t.t(),
        "numpy": lambda x=x: np.ascontiguousarray(x.T),
        "torch": torch and (lambda tt=tt: tt.t().contiguous()),
    }))
    for mb in (4, 16):
        x = rand(mb << 18)
        t, tt = tfm_rs.tensor(x), torch and torch.from_numpy(x.copy())
        out.append((f"to_tensor {mb} MB float32", {
            "tfm_rs": lambda x=x: tfm_rs.tensor(x),
            "numpy": lambda x=x: np.copy(x),
            "torch": torch and (lambda x=x: torch.from_numpy(x).clone()),
        }))
        out.append((f"to_numpy {mb} MB float32", {
            "tfm_rs": lambda t=t: t.numpy(),
            "numpy": lambda x=x: np.copy(x),
            "torch": torch and (lambda tt=tt: tt.clone().numpy()),
        }))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=10, help="interleaved rounds per case")
    ap.add_argument("--only", default="", help="run the cases whose name contains this")
    ap.add_argument("--smoke", action="store_true", help="1/256 of the rows, one round: checks that the script runs")
    args = ap.parse_args()
    if args.smoke:
        args.repeats = 1
    libs = ["tfm_rs", "numpy", "torch"]
    print(f"tfm_rs ISA {tfm_rs.cpu_features()['isa']}, numpy {np.__version__}, "
          f"torch {torch.__version__ if torch else 'not installed'}; best of {args.repeats}, ms, fwd+bwd")
    print(f"{'case':28} " + " ".join(f"{lib:>9}" for lib in libs) + "   numpy/tfm  torch/tfm")
    for name, fns in cases(np.random.default_rng(0), args.smoke):
        if args.only not in name:
            continue
        fns = {k: v for k, v in fns.items() if v}
        best = {k: float("inf") for k in fns}
        for fn in fns.values():
            fn()  # warm-up
        for _ in range(args.repeats):
            for lib, fn in fns.items():
                fn()  # untimed: lets the previous library's idle threads stop spinning
                t0 = time.perf_counter()
                fn()
                best[lib] = min(best[lib], time.perf_counter() - t0)
        ms = {k: v * 1e3 for k, v in best.items()}
        cells = " ".join(f"{ms[lib]:9.2f}" if lib in ms else f"{'-':>9}" for lib in libs)
        ratios = "  ".join(f"{ms[lib] / ms['tfm_rs']:9.2f}x" if lib in ms else f"{'-':>10}" for lib in libs[1:])
        print(f"{name:28} {cells}   {ratios}", flush=True)


if __name__ == "__main__":
    main()
