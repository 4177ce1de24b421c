"""bf16 mixed precision: the bf16 GEMM against tfm_rs's float32 SGEMM, and a training step of the
Multi30k ``small`` preset's shape (d_model 256, 4 heads, d_ff 1024, 3+3 layers, vocabulary 8000)
in float32 and in bf16, against PyTorch CPU with and without ``torch.autocast("cpu",
dtype=torch.bfloat16)`` on the same synthetic batches (~3000 tokens, sentence lengths like
Multi30k's) from the same initial weights.

    python benches/bench_bf16.py [--sizes 512 1024 2048] [--steps 10] [--rounds 3] [--threads 2]
    python benches/bench_bf16.py --smoke

Variants run interleaved, round by round, so that load from other processes hits all of them
alike; each figure is the median over rounds. Tokens/s counts real source + target tokens, as
``tfm_rs.train`` logs them. Without torch, only the tfm_rs columns run.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import tfm_rs
import tfm_rs.functional as F
from tfm_rs.data import collate
from tfm_rs.models import Seq2SeqTransformer, preset_config
from tfm_rs.train import Seq2SeqTrainer, TrainConfig

try:
    import torch
    import torch.nn.functional as TF
except ImportError:
    torch = None


def best_time(fn, repeats):
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_gemm(sizes, repeats, rounds):
    print(f"\nGEMM C = A·B, square, GFLOP/s (best of {repeats} per round, median of {rounds} rounds)")
    head = f"{'n':>6} {'tfm f32':>9} {'tfm bf16':>9} {'ratio':>6}"
    if torch is not None:
        head += f" {'torch f32':>10} {'torch bf16':>11}"
    print(head)
    rows = []
    for n in sizes:
        rng = np.random.default_rng(n)
        a, b = (rng.standard_normal((n, n)).astype(np.float32) for _ in range(2))
        ta, tb = tfm_rs.tensor(a), tfm_rs.tensor(b)

        def tfm_bf16():
            with tfm_rs.autocast("bf16"):
                F.matmul(ta, tb)

        fns = {"tfm f32": lambda: F.matmul(ta, tb), "tfm bf16": tfm_bf16}
        if torch is not None:
            xa, xb = torch.from_numpy(a), torch.from_numpy(b)
            ya, yb = xa.bfloat16(), xb.bfloat16()
            fns["torch f32"] = lambda: xa @ xb
            fns["torch bf16"] = lambda: ya @ yb
        times = {k: [] for k in fns}
        for _ in range(rounds):
            for k, fn in fns.items():
                times[k].append(best_time(fn, repeats))
        gf = {k: 2 * n ** 3 / statistics.median(v) / 1e9 for k, v in times.items()}
        line = f"{n:>6} {gf['tfm f32']:9.0f} {gf['tfm bf16']:9.0f} {gf['tfm bf16'] / gf['tfm f32']:5.2f}x"
        if torch is not None:
            line += f" {gf['torch f32']:10.0f} {gf['torch bf16']:11.0f}"
        print(line)
        rows.append(gf)
    return rows


def synthetic_batches(count, vocab, max_tokens, seed):
    """Batches of sentence pairs with Multi30k-like lengths (source ~N(13, 4), target ~N(14, 4),
    at least 3), ids 4..vocab-1, up to ``max_tokens`` padded tokens per batch."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        src, tgt, toks = [], [], 0
        while True:
            ls, lt = (max(3, int(rng.normal(m, 4))) for m in (13, 14))
            if (len(src) + 1) * (max(ls, lt, *(len(s) for s in src + tgt)) + 2) > max_tokens:
                break
            src.append(rng.integers(4, vocab, ls).tolist())
            tgt.append(rng.integers(4, vocab, lt).tolist())
            toks += ls + lt
        out.append(collate(src, tgt, 0, 1, 2, list(range(len(src)))))
    return out


def bench_training(steps, rounds, max_tokens, vocab, seed):
    sys.path.insert(0, str(Path(__file__).parent))
    from train_multi30k_torch import build_torch_model

    batches = synthetic_batches(steps, vocab, max_tokens, seed)
    tfm_rs.manual_seed(seed)
    cfg = preset_config("small", vocab, vocab, share_embeddings=True)
    init = Seq2SeqTransformer(**cfg).state_dict()
    tc = dict(max_tokens=max_tokens, seed=seed, print_every=0, log_every=0)

    def tfm_runner(precision):
        model = Seq2SeqTransformer(**cfg)
        model.load_state_dict(init)
        trainer = Seq2SeqTrainer(model, ([[4, 5]], [[4, 5]]), TrainConfig(precision=precision, **tc))

        def run():
            feed = iter(batches)
            trainer.next_batch = lambda: next(feed)
            recs = [trainer.train_step() for _ in batches]
            return sum(r["tokens"] for r in recs) / sum(r["step_time"] for r in recs), recs[-1]["loss"]

        return run

    runners = {"tfm_rs f32": tfm_runner("float32"), "tfm_rs bf16": tfm_runner("bf16")}
    if torch is not None:
        def torch_runner(bf16):
            tm = build_torch_model(Seq2SeqTransformer(**cfg).config)
            tm.load_state_dict({k: torch.from_numpy(v) for k, v in init.items()}, strict=False)
            opt = torch.optim.Adam(tm.parameters(), lr=7e-4, betas=(0.9, 0.98), eps=1e-9)

            def step(b):
                t0 = time.perf_counter()
                tm.train()
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    logits = tm(torch.from_numpy(b.src), torch.from_numpy(b.tgt_in))
                    loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(),
                                            torch.from_numpy(b.tgt_out).reshape(-1), ignore_index=0,
                                            label_smoothing=0.1, reduction="sum")
                (loss / b.num_tokens).backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                return loss.item() / b.num_tokens, b.num_tokens + b.num_src_tokens, time.perf_counter() - t0

            def run():
                recs = [step(b) for b in batches]
                return sum(r[1] for r in recs) / sum(r[2] for r in recs), recs[-1][0]

            return run

        runners["torch f32"] = torch_runner(False)
        runners["torch bf16"] = torch_runner(True)
    for k, run in runners.items():  # one untimed pass each: allocations, caches
        print(f"  warm-up: {k} {run()[0]:.0f} tok/s", flush=True)
    tps = {k: [] for k in runners}
    loss = {}
    for r in range(rounds):
        for k, run in runners.items():
            t, loss[k] = run()
            tps[k].append(t)
            print(f"  round {r + 1}: {k} {t:.0f} tok/s", flush=True)
    med = {k: statistics.median(v) for k, v in tps.items()}
    ntok = sum(b.num_tokens + b.num_src_tokens for b in batches) / len(batches)
    print(f"\ntraining step, small preset shape, {len(batches)} synthetic batches of ~{ntok:.0f} real tokens "
          f"(max_tokens {max_tokens}); tokens/s, median of {rounds} rounds")
    print(f"{'variant':<12} {'tok/s':>8} {'vs tfm f32':>11} {'last loss':>10}  (each variant keeps training its model)")
    for k, v in med.items():
        print(f"{k:<12} {v:8.0f} {v / med['tfm_rs f32']:10.2f}x {loss[k]:10.4f}")
    if torch is not None:
        print(f"tfm_rs bf16 / torch bf16: {med['tfm_rs bf16'] / med['torch bf16']:.2f}x; "
              f"tfm_rs bf16 / torch f32: {med['tfm_rs bf16'] / med['torch f32']:.2f}x")
    return med


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[512, 1024, 2048])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--steps", type=int, default=8, help="training batches per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--max-tokens", type=int, default=3000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--skip-gemm", action="store_true", help="only the training step")
    p.add_argument("--no-torch", action="store_true", help="tfm_rs columns only (PyTorch CPU training under heavy "
                   "load from other processes can take minutes per step)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, 1 round: checks that it runs")
    args = p.parse_args()
    global torch
    if args.no_torch:
        torch = None
    if args.smoke:
        args.sizes, args.repeats, args.steps, args.rounds, args.max_tokens = [64, 130], 1, 2, 1, 300
    threads = args.threads or tfm_rs.get_num_threads()
    tfm_rs.set_num_threads(threads)
    if torch is not None:
        torch.set_num_threads(threads)
    path, note = tfm_rs.amp.precision_info("bf16")
    print(f"bf16 path: {path}; {threads} threads; torch {'absent' if torch is None else torch.__version__}")
    if note:
        print(f"note: {note}")
    if not args.skip_gemm:
        bench_gemm(args.sizes, args.repeats, args.rounds)
    bench_training(args.steps, args.rounds, args.max_tokens, 8000, args.seed)


if __name__ == "__main__":
    main()
