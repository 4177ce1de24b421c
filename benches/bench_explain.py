"""``model.explain()``'s FLOP counts against measured kernel time (``docs/compression.md``).

For one encoder layer of a Seq2Seq model (the Multi30k ``small`` preset by default), forward
only, no grad: the self-attention module, the feed-forward pair and the output projection to
the vocabulary are timed, each at the shape ``explain(batch, src_len)`` counts, for the full
model and for one with half of every layer's heads removed (``prune_heads``) and half of the
feed-forward channels (``prune_ffn``). If the counts are right, the achieved GFLOP/s of one part
barely move when it shrinks, and the pruned/full time ratio follows the FLOP ratio.

    python benches/bench_explain.py [--preset small] [--batch 32] [--len 30] [--repeat 20]
    python benches/bench_explain.py --smoke
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time

import numpy as np

import tfm_rs
import tfm_rs.functional as F
from tfm_rs import _core
from tfm_rs.bench import cpu_model
from tfm_rs.models import Seq2SeqTransformer
from tfm_rs.models.presets import preset_config


def parts(model, batch, length):
    """``{part: (FLOPs by explain(), callable running that part)}`` for encoder layer 0."""
    table = model.explain(batch=batch, src_len=length, print_fn=None)
    row = next(r for r in table["layers"] if r["name"] == "encoder.0")
    gen = next(r for r in table["layers"] if r["name"] == "generator")
    layer = model.transformer.encoder.layers[0]
    E, Fw = layer.linear1.in_features, layer.linear1.out_features
    ffn_flops = 2 * 2 * batch * length * E * Fw  # explain's feed-forward term, recomputed to split the row
    x = tfm_rs.tensor(np.random.default_rng(0).standard_normal((batch, length, E)).astype(np.float32))
    attn = layer.self_attn
    return {
        "self-attention": (row["flops_proj"] - ffn_flops + row["flops_attn"],
                           lambda: attn(x, x, x, need_weights=False)),
        "feed-forward": (ffn_flops, lambda: layer.linear2(F.relu(layer.linear1(x)))),
        "output projection": (gen["flops_proj"], lambda: model.generator(x)),
    }


def median_ms(fn, repeat):
    fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--len", type=int, default=30)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--smoke", action="store_true", help="the tiny preset, 3 repeats")
    args = ap.parse_args()
    if args.smoke:
        args.preset, args.vocab, args.batch, args.len, args.repeat = "tiny", 64, 2, 5, 3
    tfm_rs.set_num_threads(args.threads)
    tfm_rs.manual_seed(0)
    full = Seq2SeqTransformer(**preset_config(args.preset, args.vocab, share_embeddings=True)).eval()
    pruned = copy.deepcopy(full)
    heads = full.transformer.encoder.layers[0].self_attn.num_heads
    pruned.prune_heads({key: list(range(heads // 2)) for key in pruned._attention_modules()} if heads > 1 else {})
    pruned.prune_ffn(amount=0.5)
    print(f"CPU {cpu_model()}; ISA {_core.cpu_features()['isa']}; "
          f"{args.threads} threads; preset {args.preset}, batch {args.batch}, length {args.len}; "
          f"median of {args.repeat}, forward, no grad")
    print(f"{'part':<20}{'model':<8}{'MFLOP':>10}{'ms':>9}{'GFLOP/s':>9}   pruned/full: FLOPs  time")
    with tfm_rs.no_grad():
        a, b = parts(full, args.batch, args.len), parts(pruned, args.batch, args.len)
        for name in a:
            # interleaved rounds, so load from other processes hits both alike
            ms_a, ms_b = [], []
            for _ in range(3):
                ms_a.append(median_ms(a[name][1], args.repeat))
                ms_b.append(median_ms(b[name][1], args.repeat))
            ta, tb = statistics.median(ms_a), statistics.median(ms_b)
            for label, (flops, _), t in (("full", a[name], ta), ("pruned", b[name], tb)):
                print(f"{name:<20}{label:<8}{flops / 1e6:>10.2f}{t:>9.3f}{flops / t / 1e6:>9.1f}", end="")
                print(f"   {b[name][0] / a[name][0]:>12.2f}  {tb / ta:.2f}" if label == "pruned" else "")


if __name__ == "__main__":
    main()
