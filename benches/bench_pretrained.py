"""Pretrained-model workloads, tfm_rs against Hugging Face ``transformers`` on PyTorch CPU in
the same run, on the same random weights (written by ``transformers``, loaded by tfm_rs's
``from_pretrained``):

* sentence embeddings: a 6-layer, 384-wide BERT (12 heads, d_ff 1536, vocabulary 30522 — the
  shape of all-MiniLM-L6-v2), batches of 32 sentences of 128 tokens (pre-tokenized, so both time
  the model and the mean pooling only), sentences/s;
* generation: a ~100M-parameter Llama (d 768, 12 layers, 12 heads, 4 key/value heads, d_ff 2048,
  vocabulary 32000, tied embeddings), greedy, batch 1, a 16-token prompt and 64 new tokens,
  new tokens/s, in float32 and in int8 (tfm_rs's ``quantize_dynamic`` against PyTorch's
  ``torch.ao.quantization.quantize_dynamic`` of the same model); also what fraction of this
  machine's memory bandwidth (a NumPy copy, measured here) the weights' reads per token represent.

    python benches/bench_pretrained.py [--threads 2] [--repeat 3] [--smoke]

Medians of ``--repeat`` runs after a warm-up, the two frameworks interleaved. Ratio = torch
time / tfm_rs time. ``--smoke``: tiny models, one repeat (checks the script runs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time

import numpy as np

import tfm_rs
from tfm_rs.autograd import no_grad
from tfm_rs.models import BertEncoder, Llama
from tfm_rs.quantization import quantize_dynamic

try:
    import torch
    import transformers
except ImportError as e:  # references only: without them there is nothing to compare with
    print(f"bench_pretrained.py: skipped, it compares with transformers on PyTorch ({e}): pip install torch "
          "transformers")
    sys.exit(0)


def timed(fn, repeat):
    fn()  # warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def interleaved(fns, repeat):
    """Median seconds of each function, run alternately."""
    for fn in fns:
        fn()
    times = [[] for _ in fns]
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            times[i].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def bench_bert(smoke, repeat):
    layers, width, heads, ff, vocab, batch, length = (2, 64, 4, 128, 1000, 4, 16) if smoke else (
        6, 384, 12, 1536, 30522, 32, 128)
    torch.manual_seed(0)
    hf = transformers.BertModel(transformers.BertConfig(
        vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=ff, max_position_embeddings=512)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = BertEncoder.from_pretrained(d)
    rng = np.random.default_rng(0)
    ids = rng.integers(1000 if not smoke else 1, vocab, (batch, length))
    lengths = rng.integers(length // 2, length + 1, batch)
    lengths[0] = length
    for i, n in enumerate(lengths):
        ids[i, n:] = 0
    mask = (ids != 0).astype(np.float32)
    t_ids, t_mask = torch.tensor(ids), torch.tensor(mask.astype(np.int64))

    def run_ours():
        with no_grad():
            h = ours.encode(ids)
            return ((h * tfm_rs.tensor(mask[..., None])).sum(1) / tfm_rs.tensor(mask.sum(1, keepdims=True))).numpy()

    def run_torch():
        with torch.no_grad():
            h = hf(t_ids, attention_mask=t_mask).last_hidden_state
            return ((h * t_mask[..., None]).sum(1) / t_mask.sum(1, keepdim=True)).numpy()

    err = np.abs(run_ours() - run_torch()).max()
    t_ours, t_torch = interleaved([run_ours, run_torch], repeat)
    print(f"BERT {layers}x{width}, batch {batch} x {length} (padded, mean lengths {lengths.mean():.0f}): "
          f"tfm_rs {batch / t_ours:8.1f} sentences/s, torch {batch / t_torch:8.1f} sentences/s, "
          f"ratio {t_torch / t_ours:.2f}x  (max |diff| {err:.1e})")


def bandwidth_gbs():
    a = np.ones(64 * 1024 * 1024 // 4, np.float32)
    b = np.empty_like(a)
    t = timed(lambda: np.copyto(b, a), 5)
    return 2 * a.nbytes / t / 1e9   # read + write


def bench_llama(smoke, repeat):
    cfg = dict(vocab_size=1000, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2) if smoke else dict(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=12,
        num_key_value_heads=4)
    prompt_len, new = (8, 8) if smoke else (16, 64)
    torch.manual_seed(0)
    hf = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        **cfg, max_position_embeddings=512, tie_word_embeddings=True, bos_token_id=None, eos_token_id=None,
        pad_token_id=None)).eval()
    with tempfile.TemporaryDirectory() as d:
        hf.save_pretrained(d)
        ours = Llama.from_pretrained(d)
    params = ours.num_parameters()
    prompt = np.random.default_rng(1).integers(0, cfg["vocab_size"], prompt_len)
    t_prompt = torch.tensor(prompt[None])
    ours_int8 = quantize_dynamic(ours)
    hf_int8 = torch.ao.quantization.quantize_dynamic(hf, {torch.nn.Linear}, dtype=torch.qint8)

    def ours_run(model):
        return lambda: model.generate(prompt, new).sequences[0]

    def torch_run(model):
        def run():
            with torch.no_grad():
                return model.generate(t_prompt, max_new_tokens=new, min_new_tokens=new, do_sample=False)[0].tolist()
        return run

    runs = [ours_run(ours), torch_run(hf), ours_run(ours_int8), torch_run(hf_int8)]
    agree = runs[0]() == runs[1]()
    t_ours, t_torch, t_ours8, t_torch8 = interleaved(runs, repeat)
    bw = bandwidth_gbs()
    print(f"Llama {params / 1e6:.0f}M params, greedy batch 1, {new} new tokens (float32 same tokens: {agree}):")
    # Bytes of weights read per token: 4 per parameter in float32; in int8 1 per quantized
    # parameter (every Linear) plus 4 per embedding-table parameter.
    table = ours.embed_tokens.weight.numel()
    for label, t, t_peer, per_token in (("float32", t_ours, t_torch, 4 * params / 1e9),
                                        ("int8", t_ours8, t_torch8, (params - table + 4 * table) / 1e9)):
        print(f"  {label:7s} tfm_rs {new / t:6.1f} tok/s, torch {new / t_peer:6.1f} tok/s, ratio {t_peer / t:.2f}x; "
              f"bandwidth limit {bw / per_token:.1f} tok/s for {per_token:.2f} GB per token "
              f"(NumPy copy {bw:.1f} GB/s): tfm_rs at {new / t / (bw / per_token):.0%} of it")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--smoke", action="store_true")
    args = p.parse_args()
    tfm_rs.set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    repeat = 1 if args.smoke else args.repeat
    print(f"threads {args.threads}, torch {torch.__version__}, transformers {transformers.__version__}, "
          f"tfm_rs {tfm_rs.cpu_features().get('isa', '')}")
    bench_bert(args.smoke, repeat)
    bench_llama(args.smoke, repeat)


if __name__ == "__main__":
    main()
