"""A quick benchmark that ships with the package (``tfm-rs bench``): GEMM, attention and a
training step, with ratios against NumPy and PyTorch when they are importable.

Each case reports the median of ``repeat`` timed calls after a warm-up call, with tfm_rs and
each baseline interleaved so that they see the same machine load. Ratios are ``baseline time /
tfm_rs time``: above 1, tfm_rs is faster. The numbers are a sanity check of the build on this
machine (is the SIMD path active? are the threads used?); the careful, reproducible
measurements are the scripts in the repository's ``benches/`` (see its README).

* ``gemm``: ``A (n×n) @ B (n×n)``, float32; NumPy's BLAS and ``torch.matmul``.
* ``attention``: fused ``scaled_dot_product_attention``, ``(B=4, H=8, T, 64)``, causal,
  forward only; a NumPy softmax(QKᵀ/√d)·V reference and ``torch``'s sdpa.
* ``train_step``: one forward + backward + Adam step of a small encoder-decoder
  (``d_model`` 128, 2+2 layers) on 32 sentence pairs of 24 tokens; PyTorch's
  ``nn.Transformer`` twin when importable.
"""

from __future__ import annotations

import math
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

import tfm_rs
import tfm_rs.functional as F

__all__ = ["BenchResult", "CASES", "run", "format_results", "cpu_model", "multi30k_or_skip"]

CASES = ("gemm", "attention", "train_step")


@dataclass
class BenchResult:
    """One case: tfm_rs's median seconds, the baselines' medians, and a throughput figure."""

    case: str
    detail: str
    seconds: float
    baselines: Dict[str, float] = field(default_factory=dict)
    unit: str = ""
    work: float = 0.0  # units of work per call (FLOPs, tokens): throughput = work / seconds

    def ratio(self, name: str) -> float:
        """``baseline / tfm_rs`` time (> 1: tfm_rs is faster)."""
        return self.baselines[name] / self.seconds


def cpu_model() -> str:
    """The CPU's marketing name (Linux ``/proc/cpuinfo``; elsewhere what ``platform`` knows): benchmark
    figures are meaningless without it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def multi30k_or_skip(smoke: bool) -> bool:
    """For the Multi30k benchmark scripts: True when the corpus is found. Without it, a ``--smoke``
    run (CI runs every script so) prints why it skips and returns False; a real run exits with
    the reason."""
    from tfm_rs.data.corpus import find_multi30k

    try:
        find_multi30k()
    except FileNotFoundError as e:
        if smoke:
            print(f"skipped: {e}")
            return False
        raise SystemExit(str(e)) from None
    return True


def _median_interleaved(fns: Dict[str, Callable[[], object]], repeat: int) -> Dict[str, float]:
    for fn in fns.values():
        fn()  # warm-up: thread pools, packing buffers, page faults
    times: Dict[str, List[float]] = {k: [] for k in fns}
    for _ in range(repeat):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def _torch():
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(tfm_rs.get_num_threads())
    return torch


def bench_gemm(n: int = 512, repeat: int = 5) -> BenchResult:
    """``n×n @ n×n`` in float32."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    ta, tb = tfm_rs.tensor(a), tfm_rs.tensor(b)
    fns: Dict[str, Callable[[], object]] = {"tfm_rs": lambda: F.matmul(ta, tb), "numpy": lambda: a @ b}
    torch = _torch()
    if torch is not None:
        xa, xb = torch.from_numpy(a), torch.from_numpy(b)
        fns["torch"] = lambda: xa @ xb
    t = _median_interleaved(fns, repeat)
    return BenchResult("gemm", f"{n}x{n}x{n} f32", t.pop("tfm_rs"), t, "GFLOP/s", 2.0 * n ** 3 / 1e9)


def bench_attention(seq_len: int = 256, repeat: int = 5) -> BenchResult:
    """Fused causal attention, forward, ``(4, 8, seq_len, 64)``."""
    B, H, T, D = 4, 8, seq_len, 64
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((B, H, T, D), dtype=np.float32) for _ in range(3))
    tq, tk, tv = tfm_rs.tensor(q), tfm_rs.tensor(k), tfm_rs.tensor(v)
    causal = np.triu(np.full((T, T), -np.inf, np.float32), 1)

    def numpy_ref() -> np.ndarray:
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(D) + causal
        s = np.exp(s - s.max(-1, keepdims=True))
        return (s / s.sum(-1, keepdims=True)) @ v

    def ours() -> object:
        with tfm_rs.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv, is_causal=True)

    fns: Dict[str, Callable[[], object]] = {"tfm_rs": ours, "numpy": numpy_ref}
    torch = _torch()
    if torch is not None:
        xq, xk, xv = (torch.from_numpy(x) for x in (q, k, v))

        def theirs() -> object:
            with torch.no_grad():
                return torch.nn.functional.scaled_dot_product_attention(xq, xk, xv, is_causal=True)
        fns["torch"] = theirs
    t = _median_interleaved(fns, repeat)
    flops = 4.0 * B * H * T * T * D / 2 / 1e9  # QKᵀ and PV, half of them masked
    return BenchResult("attention", f"B{B} H{H} T{T} d{D} causal fwd", t.pop("tfm_rs"), t, "GFLOP/s", flops)


def bench_train_step(repeat: int = 5) -> BenchResult:
    """One training step (forward, backward, Adam) of a d_model-128, 2+2-layer encoder-decoder."""
    from tfm_rs.models import Seq2SeqTransformer
    from tfm_rs.optim import Adam

    V, N, S = 1000, 32, 24
    shape = dict(d_model=128, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=512,
                 dropout=0.0, max_len=64)
    tfm_rs.manual_seed(0)
    model = Seq2SeqTransformer(V, V, **shape)
    opt = Adam(model.parameters(), lr=1e-4)
    rng = np.random.default_rng(0)
    src = rng.integers(4, V, (N, S))
    tgt = rng.integers(4, V, (N, S + 1))

    def ours() -> None:
        loss = model.loss(src, tgt[:, :-1], tgt[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()

    fns: Dict[str, Callable[[], object]] = {"tfm_rs": ours}
    torch = _torch()
    if torch is not None:
        fns["torch"] = _torch_train_step(torch, shape, V, src, tgt)
    t = _median_interleaved(fns, repeat)
    return BenchResult("train_step", f"seq2seq d128 2+2L, {N}x{S} tokens", t.pop("tfm_rs"), t, "tok/s",
                       float(N * (2 * S)))


def _torch_train_step(torch, shape: Dict[str, int], V: int, src: np.ndarray, tgt: np.ndarray,
                      device: str = "cpu") -> Callable[[], None]:
    """PyTorch's ``nn.Transformer`` of the same shape on ``device``: one Adam step (forward,
    backward, update), returned as a function (also used by ``benches/bench_gpu.py`` on CUDA)."""
    nn = torch.nn
    d = shape["d_model"]
    emb = nn.Embedding(V, d, device=device)
    core = nn.Transformer(d, shape["nhead"], shape["num_encoder_layers"], shape["num_decoder_layers"],
                          shape["dim_feedforward"], dropout=0.0, batch_first=True, device=device)
    head = nn.Linear(d, V, device=device)
    params = [*emb.parameters(), *core.parameters(), *head.parameters()]
    opt = torch.optim.Adam(params, lr=1e-4)
    s, ti, to = (torch.from_numpy(x).to(device) for x in (src, tgt[:, :-1], tgt[:, 1:]))
    mask = nn.Transformer.generate_square_subsequent_mask(ti.shape[1], device=device)

    def step() -> None:
        out = head(core(emb(s), emb(ti), tgt_mask=mask, tgt_is_causal=True))
        loss = nn.functional.cross_entropy(out.reshape(-1, V), to.reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


def run(cases: Sequence[str] = CASES, repeat: int = 5, gemm_size: int = 512, seq_len: int = 256) -> List[BenchResult]:
    """Run the named cases (:data:`CASES`)."""
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        raise ValueError(f"unknown benchmark {unknown[0]!r}; one of {', '.join(CASES)}")
    out = []
    for case in cases:
        if case == "gemm":
            out.append(bench_gemm(gemm_size, repeat))
        elif case == "attention":
            out.append(bench_attention(seq_len, repeat))
        else:
            out.append(bench_train_step(repeat))
    return out


def format_results(results: Sequence[BenchResult], threads: Optional[int] = None) -> List[str]:
    """A small table: case, tfm_rs time and throughput, each baseline's time and ratio."""
    threads = threads or tfm_rs.get_num_threads()
    lines = [f"tfm_rs {tfm_rs.__version__} on {cpu_model()}, SIMD {tfm_rs.cpu_features()['isa']}, {threads} threads; "
             "median times, ratio = baseline / tfm_rs (> 1: tfm_rs faster)"]
    for r in results:
        rate = f"{r.work / r.seconds:,.1f} {r.unit}" if r.work else ""
        base = "  ".join(f"{name} {sec * 1e3:8.2f} ms ({r.ratio(name):.2f}x)" for name, sec in r.baselines.items())
        lines.append(f"{r.case:<11} {r.detail:<34} tfm_rs {r.seconds * 1e3:8.2f} ms {rate:>16}  {base}")
    return lines
