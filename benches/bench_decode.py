"""Decoding speed: tfm_rs's Rust search loop with a key/value cache against PyTorch driving
nn.Transformer the usual way (the decoder re-runs over the whole prefix at every step).

    python benches/bench_decode.py [--threads 2] [--repeat 3] [--run RUN_DIR [--torch-real]]

Workloads (the ``greedy`` workload of ../shared/bench/reference_torch.py, extended):

* seq2seq: d_model 256, 4 heads, d_ff 1024, 2+2 layers, joint vocabulary 8000 (tied), random
  weights (the same in both frameworks), sources of 32 tokens, 64 new tokens per sentence (EOS
  and padding are suppressed in both, so every row runs the full 64 steps); greedy and beam 4 at
  batch 1 and 32. Tokens/s counts output tokens (batch × 64).
* GPT prompt continuation: d_model 256, 4 heads, 4 pre-LN layers, vocabulary 8000, prompts of 32
  tokens, 64 new tokens, greedy and beam 4 at batch 1 and 32.
* ``--run RUN_DIR`` (a ``python -m tfm_rs.train.seq2seq`` output): translate the 1,000
  test_2016_flickr sentences greedily and with beam 4, printing time and BLEU; ``--torch-real``
  also times PyTorch's greedy loop on the same model (minutes).

Medians of ``--repeat`` runs after a warm-up, tfm_rs and torch interleaved per workload. Ratios
are torch time / tfm_rs time (> 1: tfm_rs is faster). torch is optional.

Greedy outputs are checked twice. tfm_rs's batch output must equal each row decoded alone
(bit-identical whatever the batch: "BATCH-DEPENDENT" is a tfm_rs bug). Against torch, rows may
differ where two tokens are nearly tied: both compute in float32, with different summation
orders, so a tie can break either way and the continuations then part. The note says how many
rows differ, from which generated token, and torch's gap between its top two log-probabilities
there (a gap near float32 rounding, ~1e-6, is such a tie).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tfm_rs  # noqa: E402
from tfm_rs.models import GPT, Seq2SeqTransformer  # noqa: E402

try:
    import torch
    import torch.nn as tnn
    from train_multi30k_torch import build_torch_model, torch_greedy
except ImportError:  # torch is a benchmark baseline only
    torch = None

V, D, H, FF, NEW, SRC_LEN, PROMPT = 8000, 256, 4, 1024, 64, 32, 32


def median_s(fn: Callable[[], object], repeat: int) -> float:
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def torch_state(model) -> Dict[str, "torch.Tensor"]:
    return {k: torch.from_numpy(np.array(v)) for k, v in model.state_dict().items()}


def torch_search(step_logits: Callable[["torch.Tensor"], "torch.Tensor"], start: "torch.Tensor", beams: int,
                 banned: list) -> "torch.Tensor":
    """NEW steps of greedy (beams == 1) or beam search over ``step_logits(prefix) -> (rows, V)``,
    re-running the model over the prefix each step; ``banned`` ids are never chosen."""
    batch = start.shape[0]
    ys = start.repeat_interleave(beams, 0)
    scores = torch.zeros(batch, beams)
    scores[:, 1:] = -float("inf")  # all beams start equal: keep one
    for _ in range(NEW):
        logp = torch.log_softmax(step_logits(ys)[:, -1].float(), -1)
        logp[:, banned] = -float("inf")
        if beams == 1:
            nxt = logp.argmax(-1, keepdim=True)
        else:
            cand = (scores.reshape(-1, 1) + logp).reshape(batch, -1)
            scores, idx = cand.topk(beams, -1)
            parent = (idx // logp.shape[-1]) + torch.arange(batch)[:, None] * beams
            ys = ys[parent.reshape(-1)]
            nxt = (idx % logp.shape[-1]).reshape(-1, 1)
        ys = torch.cat([ys, nxt], 1)
    return ys


def greedy_note(ours: list, theirs: list, alone: list, start: int, top2_gap: Callable[[int, list], float]) -> str:
    """How tfm_rs's greedy rows compare with themselves decoded alone and with torch's (lists of
    token lists, generated tokens from index ``start``); ``top2_gap(row, prefix)``: torch's gap
    between its two best next-token log-probabilities after ``prefix``."""
    note = "" if ours == alone else "BATCH-DEPENDENT; "
    parted = [(r, next(i for i, (a, b) in enumerate(zip(x, y)) if a != b))
              for r, (x, y) in enumerate(zip(ours, theirs)) if x != y]
    if not parted:
        return note + "outputs equal"
    r, at = min(parted, key=lambda p: p[1])
    return (note + f"{len(parted)}/{len(ours)} rows differ from torch, first at token {at - start} "
            f"(torch top-2 gap there {top2_gap(r, theirs[r][:at]):.1e})")


def row(name: str, tfm_s: float, torch_s: Optional[float], tokens: int, note: str = "") -> Dict:
    r = {"workload": name, "tfm_tok_s": tokens / tfm_s, "torch_tok_s": tokens / torch_s if torch_s else None,
         "ratio": torch_s / tfm_s if torch_s else None}
    ratio = f"{r['ratio']:6.2f}x" if torch_s else "    -  "
    torch_col = f"{r['torch_tok_s']:10.0f}" if torch_s else "         -"
    print(f"{name:28s} {r['tfm_tok_s']:10.0f} {torch_col} {ratio} {note}", flush=True)
    return r


def bench_seq2seq(repeat: int) -> list:
    tfm_rs.manual_seed(0)
    m = Seq2SeqTransformer(V, V, d_model=D, nhead=H, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=FF,
                           max_len=128, share_embeddings=True).eval()
    tm = None
    if torch is not None:
        tm = build_torch_model(m.config).eval()
        tm.load_state_dict(torch_state(m), strict=False)
    rng = np.random.default_rng(0)
    rows = []
    for batch in (1, 32):
        src = rng.integers(3, V, (batch, SRC_LEN))
        for beams in (1, 4):
            kw = dict(max_new_tokens=NEW, num_beams=beams, suppress_tokens=[m.eos_id], length_penalty=0.0)
            out = m.generate(src, **kw)
            t_tfm = median_s(lambda: m.generate(src, **kw), repeat)
            t_torch, note = None, ""
            if tm is not None:
                src_t = torch.from_numpy(src)

                def run_torch():
                    with torch.no_grad():
                        memory, mask = tm.encode(src_t)
                        memory = memory.repeat_interleave(beams, 0)
                        mask = mask.repeat_interleave(beams, 0)
                        return torch_search(lambda ys: tm.decode(ys, memory, mask),
                                            torch.full((batch, 1), m.bos_id), beams, [m.pad_id, m.eos_id])
                ys = run_torch()
                t_torch = median_s(run_torch, repeat)
                if beams == 1:
                    alone = [m.generate(src[i:i + 1], **kw).sequences[0] for i in range(batch)]

                    def gap(r: int, prefix: list, src_t=src_t) -> float:
                        with torch.no_grad():
                            memory, mask = tm.encode(src_t[r:r + 1])
                            logits = tm.decode(torch.tensor([[m.bos_id] + prefix]), memory, mask)[0, -1]
                        logp = torch.log_softmax(logits.float(), -1)
                        logp[[m.pad_id, m.eos_id]] = -float("inf")
                        top = logp.topk(2).values
                        return float(top[0] - top[1])

                    note = greedy_note(out.sequences, ys[:, 1:].tolist(), alone, 0, gap)
            rows.append(row(f"seq2seq {'greedy' if beams == 1 else 'beam 4'} batch {batch}", t_tfm, t_torch,
                            batch * NEW, note))
    return rows


def torch_gpt(m: GPT):
    class TorchGPT(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            c = m.config
            self.tok_embed = tnn.Embedding(c["vocab_size"], c["d_model"])
            self.pos_embed = tnn.Embedding(c["max_len"], c["d_model"])
            self.layers = tnn.ModuleList([tnn.TransformerEncoderLayer(
                c["d_model"], c["nhead"], c["dim_feedforward"], 0.0, c["activation"], c["layer_norm_eps"],
                batch_first=True, norm_first=True) for _ in range(c["num_layers"])])
            self.norm = tnn.LayerNorm(c["d_model"], eps=c["layer_norm_eps"])
            self.head = tnn.Linear(c["d_model"], c["vocab_size"], bias=False)
            self.head.weight = self.tok_embed.weight

        def forward(self, ids):
            x = self.tok_embed(ids) + self.pos_embed.weight[: ids.shape[1]]
            mask = tnn.Transformer.generate_square_subsequent_mask(ids.shape[1])
            for layer in self.layers:
                x = layer(x, src_mask=mask, is_causal=True)
            return self.head(self.norm(x))

    tm = TorchGPT().eval()
    tm.load_state_dict(torch_state(m), strict=False)
    return tm


def bench_gpt(repeat: int) -> list:
    tfm_rs.manual_seed(0)
    m = GPT(V, d_model=D, nhead=H, num_layers=4, max_len=128)
    for p in m.parameters():  # GPT-2's 0.02 init gives near-equal logits; spread them out
        if len(p.shape) == 2:
            p.copy_(p.numpy() * 10)
    tm = torch_gpt(m) if torch is not None else None
    rng = np.random.default_rng(1)
    rows = []
    for batch in (1, 32):
        prompts = rng.integers(0, V, (batch, PROMPT))
        for beams in (1, 4):
            kw = dict(num_beams=beams, length_penalty=0.0)
            out = m.generate(prompts, NEW, **kw)
            t_tfm = median_s(lambda: m.generate(prompts, NEW, **kw), repeat)
            t_torch, note = None, ""
            if tm is not None:
                def run_torch():
                    with torch.no_grad():
                        return torch_search(tm, torch.from_numpy(prompts), beams, [])
                ys = run_torch()
                t_torch = median_s(run_torch, repeat)
                if beams == 1:
                    alone = [m.generate(prompts[i:i + 1], NEW).sequences[0] for i in range(batch)]

                    def gap(r: int, prefix: list) -> float:
                        with torch.no_grad():
                            top = torch.log_softmax(tm(torch.tensor([prefix]))[0, -1].float(), -1).topk(2).values
                        return float(top[0] - top[1])

                    note = greedy_note(out.sequences, ys.tolist(), alone, PROMPT, gap)
            rows.append(row(f"GPT {'greedy' if beams == 1 else 'beam 4'} batch {batch}", t_tfm, t_torch,
                            batch * NEW, note))
    return rows


def bench_real(run_dir: str, with_torch: bool) -> Dict:
    from tfm_rs import metrics
    from tfm_rs.checkpoint import load_checkpoint
    from tfm_rs.data import Tokenizer, load_multi30k

    ck = load_checkpoint(Path(run_dir) / "checkpoint")
    m = Seq2SeqTransformer.from_config(ck.config)
    m.load_state_dict(ck.model_state)
    m.eval()
    tok = Tokenizer.load(Path(run_dir) / "tokenizer.json")
    test = load_multi30k("test", "de", "en")
    res = {}
    for beams in (1, 4):
        t = time.perf_counter()
        hyps = m.translate(test.src, tok, num_beams=beams)
        res[f"beam{beams}"] = {"seconds": time.perf_counter() - t, "bleu": metrics.bleu(hyps, test.tgt)}
        print(f"tfm_rs {'greedy' if beams == 1 else 'beam 4'}: {len(hyps)} sentences in "
              f"{res[f'beam{beams}']['seconds']:.1f}s, BLEU {res[f'beam{beams}']['bleu']:.2f}", flush=True)
    if with_torch and torch is not None:
        tm = build_torch_model(m.config)
        tm.load_state_dict(torch_state(m), strict=False)
        src = [s[: m.max_len] for s in tok.encode_batch(test.src)]
        t = time.perf_counter()
        outs = torch_greedy(tm, src)
        secs = time.perf_counter() - t
        bleu = metrics.bleu([tok.decode(o) for o in outs], test.tgt)
        res["torch_greedy"] = {"seconds": secs, "bleu": bleu}
        print(f"torch greedy (prefix re-run): {secs:.1f}s, BLEU {bleu:.2f}", flush=True)
    return res


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--run", default=None, help="a trained seq2seq run directory for the Multi30k test")
    p.add_argument("--torch-real", action="store_true", help="also time torch greedy on the real model")
    p.add_argument("--skip-synthetic", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="tiny models, 4 new tokens, one run: checks that it runs")
    args = p.parse_args()
    if args.smoke:
        global V, D, H, FF, NEW, SRC_LEN, PROMPT
        V, D, H, FF, NEW, SRC_LEN, PROMPT = 50, 16, 2, 32, 4, 5, 5
        args.repeat = 1
    tfm_rs.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    print(f"threads {args.threads}; torch {torch.__version__ if torch else 'not installed'}")
    res: Dict = {}
    if not args.skip_synthetic:
        print(f"{'workload':28s} {'tfm tok/s':>10s} {'torch tok/s':>10s} {'ratio':>7s}")
        res["seq2seq"] = bench_seq2seq(args.repeat)
        res["gpt"] = bench_gpt(args.repeat)
    if args.run:
        res["multi30k"] = bench_real(args.run, args.torch_real)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
