"""GPU (wgpu) throughput: GEMM GFLOP/s, attention times and training steps, against tfm_rs's
CPU path and, when PyTorch with CUDA is importable, against PyTorch CUDA in float32 (TF32 off),
in one run.

    python benches/bench_gpu.py                      # sizes picked for the adapter found
    python benches/bench_gpu.py --sizes 1024 4096    # GEMM sizes (cubes)
    python benches/bench_gpu.py --attention 32:1024:64:causal --train large
    python benches/bench_gpu.py --no-cpu             # skip the CPU path (slow at large sizes)
    python benches/bench_gpu.py --smoke              # tiny sizes: checks that the script runs

Two GPU columns: "kernel" times the WGSL kernels alone on buffers that stay on the GPU (the
private timers ``tfm_rs._core._gpu_time_matmul`` / ``_gpu_time_attention``: best of N launches,
each waited for), comparable with the PyTorch CUDA figures (operands already on the device,
``torch.cuda.synchronize()`` after each call); "tensor" times the same op as a user runs it, on
tensors moved with ``.to("gpu")``, waiting by reading back the sum of the result (for the
backward, of the query's gradient). Ratios: gpu/cpu compares the tensor path with tfm_rs's CPU
path, gpu/torch the kernels with PyTorch's. On a software adapter (lavapipe, device type
"cpu") the default sizes are small: its numbers measure Mesa's shader compiler on the CPU, not a GPU.

The training steps (a Seq2Seq and a GPT: forward, backward, Adam) time whole steps through the
Python API, as the trainer runs them: a model moved with ``.to("gpu")``, token ids uploaded each
step, the loss read back (which waits for the GPU); PyTorch runs ``nn.Transformer`` /
``nn.TransformerEncoder`` models of the same sizes on CUDA.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Callable, Optional

import numpy as np

import tfm_rs
from tfm_rs import _core
from tfm_rs.bench import _torch_train_step
from tfm_rs.models import GPT, Seq2SeqTransformer
from tfm_rs.optim import Adam


def best_seconds(fn: Callable[[], object], repeats: int, sync: Callable[[], None] = lambda: None) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def torch_cuda():
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    return torch


def fmt(x: Optional[float], spec: str = "9.1f") -> str:
    return format(x, spec) if x is not None else format("-", ">" + spec.split(".")[0])


def speedup(slow: Optional[float], fast: Optional[float]) -> str:
    """``slow / fast`` as a ratio column (> 1: the second is faster), or a dash."""
    return f"{slow / fast:8.2f}x" if slow and fast else f"{'-':>9}"


def sync(t: tfm_rs.Tensor) -> float:
    """Waits for ``t``'s device by reading one number that depends on it (a sum, small next to
    the op timed), as a user's code does when it reads a result."""
    return t.sum().item()


def bench_gemm(sizes, repeats: int, cpu: bool, torch) -> None:
    print("\nGEMM C = A·B, float32, GFLOP/s (2·n³ per call); kernel = the WGSL kernels alone on resident buffers,")
    print("tensor = F.matmul on GPU tensors plus a read-back of their sum (what a user sees)")
    print(f"{'n':>6} {'kernel':>9} {'tensor':>9} {'cpu':>9} {'torch':>9} {'gpu/cpu':>9} {'gpu/torch':>9}")
    rng = np.random.default_rng(0)
    for n in sizes:
        flops = 2.0 * n**3
        kernel = flops / _core._gpu_time_matmul(n, n, n, repeats=repeats) / 1e9
        a = tfm_rs.tensor(rng.standard_normal((n, n), dtype=np.float32))
        ag = a.to("gpu")
        tensor = flops / best_seconds(lambda: sync(tfm_rs.functional.matmul(ag, ag)), repeats) / 1e9
        cpu_g = None
        if cpu:
            cpu_g = flops / best_seconds(lambda: tfm_rs.functional.matmul(a, a), max(1, repeats // 2)) / 1e9
        th = None
        if torch is not None:
            x = torch.randn(n, n, device="cuda")
            th = flops / best_seconds(lambda: x @ x, repeats, torch.cuda.synchronize) / 1e9
        # GFLOP/s ratios: the GPU tensor path over the CPU's, the GPU kernels over PyTorch CUDA's.
        print(f"{n:>6} {kernel:9.1f} {tensor:9.1f} {fmt(cpu_g)} {fmt(th)} "
              f"{speedup(tensor, cpu_g)} {speedup(kernel, th)}", flush=True)


def bench_attention(cases, repeats: int, cpu: bool, torch) -> None:
    print("\nattention, float32, ms per call (B·H batch-heads, T queries = keys, head dim E); kernel = the")
    print("WGSL kernels alone, tensor = F.scaled_dot_product_attention (and backward) on GPU tensors")
    print(f"{'B·H':>5} {'T':>6} {'E':>4} {'causal':>6} {'pass':>8} {'kernel':>9} {'tensor':>9} {'cpu':>9} {'torch':>9} "
          f"{'cpu/gpu':>9}")
    rng = np.random.default_rng(0)
    for bh, t, e, causal in cases:
        for backward in (False, True):
            kernel = 1e3 * _core._gpu_time_attention(bh, t, e, is_causal=causal, backward=backward, repeats=repeats)
            arrays = [rng.standard_normal((bh, t, e), dtype=np.float32) for _ in range(3)]

            def on(device: str) -> Callable[[], object]:
                q, k, v = (tfm_rs.tensor(x).to(device).requires_grad_(backward) for x in arrays)

                def run() -> float:
                    out = tfm_rs.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    if not backward:
                        return sync(out)
                    out.sum().backward()
                    return sync(q.grad)
                return run

            tensor = 1e3 * best_seconds(on("gpu"), repeats)
            cpu_ms = 1e3 * best_seconds(on("cpu"), max(1, repeats // 2)) if cpu else None
            th_ms = None
            if torch is not None:
                q, k, v = (torch.randn(1, bh, t, e, device="cuda", requires_grad=backward) for _ in range(3))

                def run_torch():
                    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
                    if backward:
                        out.sum().backward()

                th_ms = 1e3 * best_seconds(run_torch, repeats, torch.cuda.synchronize)
            name = "fwd+bwd" if backward else "fwd"
            print(f"{bh:>5} {t:>6} {e:>4} {str(causal):>6} {name:>8} {kernel:9.2f} {tensor:9.2f} "
                  f"{fmt(cpu_ms, '9.2f')} {fmt(th_ms, '9.2f')} {speedup(cpu_ms, tensor)}", flush=True)


def tfm_step(model, batch) -> Callable[[], float]:
    """One Adam step of ``model`` on ``batch`` (its ``loss`` arguments); returns the loss, whose
    read-back waits for the device."""
    opt = Adam(model.parameters(), lr=1e-4)

    def step() -> float:
        loss = model.loss(*batch)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()
    return step


def torch_gpt_step(torch, vocab: int, d: int, heads: int, layers: int, ids: np.ndarray) -> Callable[[], None]:
    """A pre-LN causal ``nn.TransformerEncoder`` GPT of the same sizes on CUDA (tied embedding and
    head): one Adam step."""
    nn = torch.nn
    T = ids.shape[1] - 1
    emb, pos = nn.Embedding(vocab, d, device="cuda"), nn.Embedding(T, d, device="cuda")
    layer = nn.TransformerEncoderLayer(d, heads, 4 * d, dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True, device="cuda")
    core = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d, device="cuda"), enable_nested_tensor=False)
    head = nn.Linear(d, vocab, device="cuda")
    head.weight = emb.weight  # tied, as tfm_rs's GPT
    opt = torch.optim.Adam(nn.ModuleList([emb, pos, core, head]).parameters(), lr=1e-4)
    x = torch.from_numpy(ids).cuda()
    mask = nn.Transformer.generate_square_subsequent_mask(T, device="cuda")
    positions = torch.arange(T, device="cuda")

    def step() -> None:
        h = core(emb(x[:, :-1]) + pos(positions), mask=mask, is_causal=True)
        loss = nn.functional.cross_entropy(head(h).reshape(-1, vocab), x[:, 1:].reshape(-1))
        loss.backward()
        opt.step()
        opt.zero_grad()
    return step


# Training-step sizes: vocabulary, d_model, heads, d_ff, layers, seq2seq batch N x S tokens, GPT batch B x T.
TRAIN_SIZES = {
    "smoke": (50, 16, 2, 32, 1, 2, 5, 2, 8),
    "small": (500, 64, 4, 256, 2, 8, 16, 8, 32),
    "large": (8000, 512, 8, 2048, 6, 32, 32, 16, 128),
}


def bench_train(size: str, repeats: int, cpu: bool, torch) -> None:
    print(f"\ntraining step (forward, backward, Adam), float32, ms per step (tokens/s), {size} models")
    print(f"{'model':<44} {'wgpu':>18} {'cpu':>18} {'torch':>18} {'cpu/gpu':>9}")
    rng = np.random.default_rng(0)
    V, d, heads, ff, layers, N, S, B, T = TRAIN_SIZES[size]

    def row(name: str, tokens: int, make_tfm: Callable[[str], Callable[[], object]],
            make_torch: Optional[Callable[[], Callable[[], None]]]) -> None:
        def cell(seconds: Optional[float]) -> str:
            return fmt(None, "18.1f") if seconds is None else f"{1e3 * seconds:8.1f} ({tokens / seconds:7.0f})"
        gpu = best_seconds(make_tfm("gpu"), repeats)
        cpu_s = best_seconds(make_tfm("cpu"), repeats) if cpu else None
        th = best_seconds(make_torch(), repeats, torch.cuda.synchronize) if torch is not None else None
        print(f"{name:<44} {cell(gpu)} {cell(cpu_s)} {cell(th)} {speedup(cpu_s, gpu)}", flush=True)

    src, tgt = rng.integers(4, V, (N, S)), rng.integers(4, V, (N, S + 1))
    shape = dict(d_model=d, nhead=heads, num_encoder_layers=layers, num_decoder_layers=layers, dim_feedforward=ff,
                 dropout=0.0, max_len=max(S, T) + 1)

    def seq2seq(device: str) -> Callable[[], float]:
        tfm_rs.manual_seed(0)
        return tfm_step(Seq2SeqTransformer(V, V, **shape).to(device), (src, tgt[:, :-1], tgt[:, 1:]))

    row(f"seq2seq d{d} {layers}+{layers}L V{V}, {N}x{S}+{S} tokens", N * 2 * S, seq2seq,
        (lambda: _torch_train_step(torch, shape, V, src, tgt, device="cuda")) if torch else None)
    ids = rng.integers(1, V, (B, T + 1))

    def gpt(device: str) -> Callable[[], float]:
        tfm_rs.manual_seed(0)
        model = GPT(V, d_model=d, nhead=heads, num_layers=layers, dim_feedforward=ff, dropout=0.0, max_len=T + 1)
        return tfm_step(model.to(device), (ids,))

    row(f"GPT d{d} {layers}L V{V}, {B}x{T} tokens", B * T, gpt,
        (lambda: torch_gpt_step(torch, V, d, heads, layers, ids)) if torch else None)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="*", help="GEMM cube sizes (default: by adapter type)")
    p.add_argument("--attention", nargs="*", metavar="BH:T:E[:causal]",
                   help="attention cases, e.g. 32:1024:64:causal (default: by adapter type)")
    p.add_argument("--train", choices=[*TRAIN_SIZES, "none"], help="training-step model sizes (default: by adapter)")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement (best is kept)")
    p.add_argument("--no-cpu", action="store_true", help="skip tfm_rs's CPU path (slow at large sizes)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, one repeat: checks that the script runs")
    args = p.parse_args()
    if not tfm_rs.gpu_available():
        reason = f"no GPU adapter: {tfm_rs.gpu_info(reason=True)}"
        if args.smoke and os.environ.get("TFM_RS_REQUIRE_GPU") != "1":
            print(f"skipped: {reason}")
            return
        raise SystemExit(reason)
    info = tfm_rs.gpu_info()
    software = info["device_type"] == "cpu"
    torch = torch_cuda()
    print(f"adapter: {info['name']} ({info['backend']}, {info['device_type']}; driver {info['driver']})")
    print(f"cpu path: {tfm_rs.cpu_features()['isa']}, {tfm_rs.get_num_threads()} threads; "
          f"torch CUDA: {torch.cuda.get_device_name() + ' (TF32 off)' if torch else 'not available'}")
    if args.smoke:
        sizes, cases, train, repeats = [17, 64], [(2, 33, 16, False), (2, 33, 16, True)], "smoke", 1
    else:
        sizes = [64, 128, 256, 512] if software else [256, 512, 1024, 2048, 4096]
        cases = [(8, 128, 64, False), (8, 128, 64, True)] if software else \
            [(32, 512, 64, False), (32, 1024, 64, True), (16, 2048, 64, True)]
        train, repeats = ("small", 3) if software else ("large", 20)
    sizes = args.sizes or sizes
    if args.attention:
        cases = [parse_attention_case(c) for c in args.attention]
    train = args.train or train
    repeats = args.repeats or repeats
    failed = False
    sections = [lambda: bench_gemm(sizes, repeats, not args.no_cpu, torch),
                lambda: bench_attention(cases, repeats, not args.no_cpu, torch)]
    if train != "none":
        sections.append(lambda: bench_train(train, repeats, not args.no_cpu, torch))
    for section in sections:
        try:  # one failing size (e.g. out of device memory) does not hide the others' figures
            section()
        except tfm_rs.TfmError as e:
            print(f"error: {type(e).__name__}: {e}", flush=True)
            failed = True
    if failed:
        raise SystemExit(1)


def parse_attention_case(text: str) -> tuple:
    parts = text.split(":")
    if len(parts) not in (3, 4) or (len(parts) == 4 and parts[3] != "causal"):
        raise SystemExit(f"--attention {text!r}: expected BH:T:E or BH:T:E:causal")
    return int(parts[0]), int(parts[1]), int(parts[2]), len(parts) == 4


if __name__ == "__main__":
    main()
