"""Long-sequence attention: a sliding window (256 left + 256 right) with 16 global tokens through
the block-skipping fused kernel (``attn_mask=masks.sliding_window(256) | masks.global_tokens(range(16))``)
against tfm_rs's own dense fused attention on the same inputs, and PyTorch SDPA with the same mask
as a dense boolean array (where installed). Batch 1, 8 heads, head dim 64, forward + backward
(``.sum().backward()``), T = 1k, 4k, 16k and 64k.

Run:  python3 benches/bench_long_attention.py [--threads 2] [--quick] [--t 1024 4096 ...]

Each (method, T) runs in its own process, so that its peak resident memory (``ru_maxrss``) is its
own: two warm-ups, then ``--repeat`` timed runs (fewer at long T), median reported. Dense runs only
up to ``--dense-max`` (16k: its time grows as T²), PyTorch up to ``--torch-max`` (4k: the dense
mask and its scores grow as T²). ``--quick`` stops at 16k; ``--smoke`` runs T = 384 once.

A second table compares the attention kinds that are not masks on the same shapes, forward +
backward: causal linear attention (``F.linear_attention(causal=True)``, elu+1 feature map) and
Reformer LSH attention (``F.lsh_attention``, 4 hashes, bucket 64, shared QK) against tfm_rs's
dense causal fused attention, and a causal linear attention written with PyTorch's ``cumsum``
(what a user would write; it stores a T × E × Ev prefix tensor, so it runs up to ``--torch-max``).
``dense/lin`` > 1 is where linear attention pays off (the crossover).

A third table decodes with small GPTs (d_model 256, 4 heads, 4 layers, random weights) whose layers
are all dense, all windowed (``window(left=256, global=16)``: a rolling cache) or all linear (a
recurrent state), through the native decoder: the prefill of a ``--context`` token prompt (8k;
384 with ``--smoke``) in feeds of 512 tokens, then 64 generated tokens one at a time, with each
process's peak RSS. The dense model's KV cache grows by 8 KiB per token and layer (64 MiB at 8k);
the window's stays near (16 + 256 + 512) rows, the linear state at 4 × 64 × 64 floats per layer.

A fourth table (``--hf-t``, 4k; 1k with ``--smoke``) puts the layers a user would take from Hugging Face
``transformers`` (a benchmark reference only) beside ours, forward + backward, batch 1, d_model
512 (8 heads of 64), projections included: ``LongformerSelfAttention`` (``attention_window`` 512,
i.e. 256 each side, the first 16 tokens global; its query, key and value projections, plus the
separate projections of the global tokens) against ``nn.MultiheadAttention(512, 8,
attention="window(left=256, right=256, global=16)")``, and ``BigBirdBlockSparseAttention`` (blocks
of 64, 3 random blocks, its first and last blocks global; training mode, where its random blocks
are drawn) against ``attention="block_sparse(block=64, window=1, global=2, random=3)"`` (the same
8 key blocks per query block, our two global blocks the first two). Ours also runs the output
projection, which theirs leave to the next module. Without ``transformers`` the table is skipped,
saying so.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import time
from typing import Optional

import numpy as np

from tfm_rs.bench import cpu_model

WINDOW, GLOBALS, HEADS, HEAD_DIM = 256, 16, 8, 64
LSH_HASHES, LSH_BUCKET = 4, 64
DECODE_KINDS = {"dense": "dense", "window": f"window(left={WINDOW}, global={GLOBALS})", "linear": "linear"}
DECODE_NEW, DECODE_CHUNK = 64, 512


def decode_worker(kind: str, context: int, threads: int) -> dict:
    """Prefill ``context`` tokens, then decode ``DECODE_NEW`` greedily, one at a time."""
    import tfm_rs
    from tfm_rs import _core
    from tfm_rs.decode import decoder_weights
    from tfm_rs.models import GPT

    tfm_rs.set_num_threads(threads)
    tfm_rs.manual_seed(0)
    model = GPT(1000, d_model=256, nhead=4, num_layers=4, max_len=context + DECODE_NEW, dropout=0.0,
                attention=DECODE_KINDS[kind]).eval()
    dec = _core.Decoder(decoder_weights(model), 1)
    prompt = np.random.default_rng(0).integers(0, 1000, context).tolist()
    t0 = time.perf_counter()
    # In chunks, as a long prompt is fed: a windowed layer evicts after each feed, so its cache
    # stays near window + chunk rows while the dense one keeps every position.
    for start in range(0, context, DECODE_CHUNK):
        logits = dec.feed([prompt[start:start + DECODE_CHUNK]])
    t1 = time.perf_counter()
    for _ in range(DECODE_NEW):
        logits = dec.feed([[int(np.argmax(logits[0]))]])
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "tok_s": DECODE_NEW / (t2 - t1),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


HF_D = HEADS * HEAD_DIM
HF_KINDS = {"window": f"window(left={WINDOW}, right={WINDOW}, global={GLOBALS})",
            "block_sparse": f"block_sparse(block={LSH_BUCKET}, window=1, global=2, random=3)"}


def layer_step(method: str, t: int, threads: int):
    """One forward + backward of a whole attention layer (``hf_longformer``, ``hf_bigbird``, or ours
    with ``layer_<kind>``) on ``(1, t, HF_D)`` inputs: the fourth table."""
    x = np.random.default_rng(0).standard_normal((1, t, HF_D)).astype(np.float32)
    if method.startswith("layer_"):
        import tfm_rs
        from tfm_rs import nn

        tfm_rs.set_num_threads(threads)
        tfm_rs.manual_seed(0)
        layer = nn.MultiheadAttention(HF_D, HEADS, attention=HF_KINDS[method[len("layer_"):]])
        xt = tfm_rs.tensor(x, requires_grad=True)
        return lambda: layer(xt, xt, xt, need_weights=False)[0].sum().backward()
    import torch
    from transformers import BigBirdConfig, LongformerConfig
    from transformers.models.big_bird.modeling_big_bird import BigBirdBlockSparseAttention, BigBirdModel
    from transformers.models.longformer.modeling_longformer import LongformerSelfAttention

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    xt = torch.from_numpy(x).requires_grad_(True)
    if method == "hf_longformer":
        cfg = LongformerConfig(hidden_size=HF_D, num_attention_heads=HEADS, attention_window=[2 * WINDOW],
                               attention_probs_dropout_prob=0.0)
        layer = LongformerSelfAttention(cfg, layer_id=0).train()
        # The layer's own encoding (LongformerModel converts the user's 0/1/2 mask to it):
        # 0 local, +10000 global, -10000 padding.
        mask = torch.zeros(1, t)
        mask[:, :GLOBALS] = 10000.0
        return lambda: layer(xt, attention_mask=mask, is_index_masked=mask < 0, is_index_global_attn=mask > 0,
                             is_global_attn=True)[0].sum().backward()
    cfg = BigBirdConfig(hidden_size=HF_D, num_attention_heads=HEADS, block_size=LSH_BUCKET, num_random_blocks=3,
                        attention_type="block_sparse", max_position_embeddings=t, attention_probs_dropout_prob=0.0)
    layer = BigBirdBlockSparseAttention(cfg, seed=0).train()
    blocked, band, from_mask, to_mask = BigBirdModel.create_masks_for_block_sparse_attn(torch.ones(1, t), LSH_BUCKET)
    return lambda: layer(xt, band_mask=band, from_mask=from_mask, to_mask=to_mask, from_blocked_mask=blocked,
                         to_blocked_mask=blocked)[0].sum().backward()


def worker(method: str, t: int, repeat: int, threads: int) -> dict:
    if method.startswith("decode_"):
        return decode_worker(method[len("decode_"):], t, threads)
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((1, HEADS, t, HEAD_DIM)).astype(np.float32) for _ in range(3)]
    if method.startswith(("hf_", "layer_")):
        step = layer_step(method, t, threads)
    elif method == "torch_linear":
        import torch

        torch.set_num_threads(threads)
        q, k, v = (torch.from_numpy(a).requires_grad_(True) for a in arrays)

        def step() -> None:
            fq, fk = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
            s = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=-3)  # (1, H, T, E, Ev)
            z = torch.cumsum(fk, dim=-2)
            out = torch.einsum("bhte,bhtef->bhtf", fq, s) / (fq * z).sum(-1, keepdim=True)
            out.sum().backward()
    elif method == "torch":
        import torch
        import torch.nn.functional as TF

        torch.set_num_threads(threads)
        import tfm_rs.masks as masks

        dense = torch.from_numpy((masks.sliding_window(WINDOW) | masks.global_tokens(range(GLOBALS))).to_dense(t, t))
        q, k, v = (torch.from_numpy(a).requires_grad_(True) for a in arrays)

        def step() -> None:
            TF.scaled_dot_product_attention(q, k, v, attn_mask=dense).sum().backward()
    else:
        import tfm_rs
        import tfm_rs.functional as F
        from tfm_rs import masks

        tfm_rs.set_num_threads(threads)
        mask = masks.sliding_window(WINDOW) | masks.global_tokens(range(GLOBALS)) if method == "window" else None
        q, k, v = (tfm_rs.tensor(a, requires_grad=True) for a in arrays)

        def step() -> None:
            if method == "linear":
                out = F.linear_attention(q, k, v, causal=True)
            elif method == "lsh":
                out = F.lsh_attention(q, v, n_hashes=LSH_HASHES, bucket_size=LSH_BUCKET)
            else:
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=method == "causal")
            out.sum().backward()

    # Two untimed steps: the first creates the gradients, the second is the first to accumulate
    # into them; only from the third do the op outputs come from the buffer pool, where a
    # 64k-token step otherwise spends ~30% of its time faulting in fresh pages.
    step()
    step()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return {"s": statistics.median(times), "best": min(times),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run(method: str, t: int, repeat: int, threads: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", method, str(t), str(repeat), str(threads)],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{method} at T={t} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        method, t, repeat, threads = sys.argv[2], *map(int, sys.argv[3:6])
        print(json.dumps(worker(method, t, repeat, threads)))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--t", type=int, nargs="+", default=[1024, 4096, 16384, 65536])
    ap.add_argument("--quick", action="store_true", help="stop at 16k")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs at T <= 4k (2 above, 1 at 64k)")
    ap.add_argument("--dense-max", type=int, default=16384)
    ap.add_argument("--torch-max", type=int, default=4096)
    ap.add_argument("--smoke", action="store_true", help="T 384, one run each: checks that the script runs")
    ap.add_argument("--context", type=int, default=8192, help="prompt length of the decoding table")
    ap.add_argument("--only-decode", action="store_true", help="only the decoding table")
    ap.add_argument("--hf-t", type=int, default=4096, help="length of the Hugging Face table (a multiple of 512)")
    ap.add_argument("--only-hf", action="store_true", help="only the Hugging Face table")
    args = ap.parse_args()
    ts = [t for t in args.t if not (args.quick and t > 16384)]
    if args.smoke:
        ts, args.repeat = [384], 1
    # Not imported here: a worker inherits this process's peak RSS through fork (Linux keeps the
    # high-water mark across exec), and torch alone is ~500 MB.
    has_torch = importlib.util.find_spec("torch") is not None  # a benchmark baseline only
    if args.only_decode:
        decoding(args)
        return
    if args.only_hf:
        hugging_face(args)
        return
    print(f"{cpu_model()}, {args.threads} threads; batch 1, {HEADS} heads, head dim {HEAD_DIM}, window "
          f"{WINDOW}+{WINDOW} with {GLOBALS} global tokens; forward + backward, median seconds; peak RSS "
          f"per process; torch {'installed' if has_torch else 'not installed'}")
    print(f"{'T':>6} {'window s':>9} {'RSS MB':>7} {'dense s':>8} {'RSS MB':>7} {'dense/win':>9} "
          f"{'torch s':>8} {'RSS MB':>7} {'torch/win':>9} {'win s/kT':>9}")
    for t in ts:
        repeat = args.repeat if t <= 4096 else (2 if t <= 16384 else 1)
        if args.smoke:
            repeat = 1
        win = run("window", t, repeat, args.threads)
        dense = run("dense", t, repeat, args.threads) if t <= args.dense_max else None
        ref = run("torch", t, repeat, args.threads) if has_torch and t <= args.torch_max else None
        cells = [f"{t:>6}", f"{win['s']:9.3f}", f"{win['rss_mb']:7.0f}"]
        for other in (dense, ref):
            if other is None:
                cells += [f"{'-':>8}", f"{'-':>7}", f"{'-':>9}"]
            else:
                cells += [f"{other['s']:8.3f}", f"{other['rss_mb']:7.0f}", f"{other['s'] / win['s']:9.1f}"]
        cells.append(f"{win['s'] / t * 1024:9.4f}")
        print(" ".join(cells), flush=True)
    kinds(ts, args)
    decoding(args)
    hugging_face(args)


def _cell(r: Optional[dict], width: int) -> list:
    return [f"{'-':>{width}}", f"{'-':>7}"] if r is None else [f"{r['s']:{width}.3f}", f"{r['rss_mb']:7.0f}"]


def _ratio(dense: Optional[dict], r: Optional[dict]) -> str:
    return f"{'-':>9}" if r is None or dense is None else f"{dense['s'] / r['s']:9.1f}"


def kinds(ts: list, args: argparse.Namespace) -> None:
    """The second table: causal linear and LSH attention against dense causal attention."""
    has_torch = importlib.util.find_spec("torch") is not None
    print(f"\nattention kinds, same shapes; LSH {LSH_HASHES} hashes, bucket {LSH_BUCKET}")
    print(f"{'T':>6} {'causal s':>9} {'RSS MB':>7} {'linear s':>9} {'RSS MB':>7} {'dense/lin':>9} "
          f"{'lsh s':>8} {'RSS MB':>7} {'dense/lsh':>9} {'torch-lin s':>11} {'RSS MB':>7}")
    for t in ts:
        repeat = 1 if args.smoke else (args.repeat if t <= 4096 else (2 if t <= 16384 else 1))
        dense = run("causal", t, repeat, args.threads) if t <= args.dense_max else None
        lin = run("linear", t, repeat, args.threads)
        lsh = run("lsh", t, repeat, args.threads) if t % (2 * LSH_BUCKET) == 0 else None
        ref = run("torch_linear", t, repeat, args.threads) if has_torch and t <= args.torch_max else None
        cells = [f"{t:>6}", *_cell(dense, 9), *_cell(lin, 9), _ratio(dense, lin), *_cell(lsh, 8), _ratio(dense, lsh),
                 *_cell(ref, 11)]
        print(" ".join(cells), flush=True)


def decoding(args: argparse.Namespace) -> None:
    """The third table: GPT decoding at a long context, dense against windowed and linear layers."""
    context = 384 if args.smoke else args.context
    print(f"\n{cpu_model()}, {args.threads} threads; GPT d_model 256, 4 heads, 4 layers; prefill {context} tokens, "
          f"then {DECODE_NEW} decoded one at a time; peak RSS per process")
    print(f"{'layers':>8} {'prefill s':>10} {'decode tok/s':>13} {'RSS MB':>7} {'tok/s vs dense':>15}")
    results = {kind: run(f"decode_{kind}", context, 1, args.threads) for kind in DECODE_KINDS}
    for kind, r in results.items():
        print(f"{kind:>8} {r['prefill_s']:10.2f} {r['tok_s']:13.1f} {r['rss_mb']:7.0f} "
              f"{r['tok_s'] / results['dense']['tok_s']:15.2f}", flush=True)


def hugging_face(args: argparse.Namespace) -> None:
    """The fourth table: Hugging Face's Longformer and BigBird attention layers against ours."""
    if importlib.util.find_spec("transformers") is None or importlib.util.find_spec("torch") is None:
        print("\nHugging Face table skipped: transformers (and torch) are not installed")
        return
    t = 1024 if args.smoke else args.hf_t
    repeat = 1 if args.smoke else args.repeat
    print(f"\n{cpu_model()}, {args.threads} threads; one attention layer, T {t}, batch 1, d_model {HF_D}, {HEADS} "
          f"heads; forward + backward, median of {repeat}; peak RSS per process")
    print(f"{'pattern':>13} {'HF layer':>27} {'HF s':>7} {'RSS MB':>7} {'tfm_rs s':>9} {'RSS MB':>7} {'HF/tfm_rs':>9}")
    for kind, hf in (("window", "LongformerSelfAttention"), ("block_sparse", "BigBirdBlockSparseAttention")):
        ref = run(f"hf_{'longformer' if kind == 'window' else 'bigbird'}", t, repeat, args.threads)
        ours = run(f"layer_{kind}", t, repeat, args.threads)
        print(f"{kind:>13} {hf:>27} {ref['s']:7.3f} {ref['rss_mb']:7.0f} {ours['s']:9.3f} {ours['rss_mb']:7.0f} "
              f"{ref['s'] / ours['s']:9.1f}", flush=True)


if __name__ == "__main__":
    main()
