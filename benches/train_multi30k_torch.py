"""Multi30k training throughput: tfm_rs against PyTorch on the same configuration.

Both frameworks train the same model (the ``small`` preset: post-LN, d_model 256, 4 heads,
d_ff 1024, 3+3 layers, shared embeddings, sinusoidal positions), start from the *same weights*
(the tfm_rs initialization is copied into torch), see the *same batches* (one tokenizer file, one
:class:`tfm_rs.data.TokenBatchSampler`), with the same hyperparameters (Adam 0.9/0.98/1e-9,
inverse-sqrt warmup to 7e-4, label smoothing 0.1), on the same number of threads. The step-0
losses are printed side by side as a check that the two models are the same function.

    python benches/train_multi30k_torch.py --steps 50 [--tokenizer runs/x/tokenizer.json]
    python benches/train_multi30k_torch.py --minutes 20 --bleu      # train torch alone, then BLEU

Tokens/s counts real (non-pad) source + target tokens, as ``tfm_rs.train`` logs them. Without
torch installed, only the tfm_rs side runs.
"""

from __future__ import annotations

import argparse
import math
import time


import tfm_rs
from tfm_rs.data import Tokenizer, collate, load_multi30k, multi30k_files, train_tokenizer
from tfm_rs.data.batching import TokenBatchSampler
from tfm_rs.bench import multi30k_or_skip
from tfm_rs.models import preset_config, Seq2SeqTransformer
from tfm_rs.nn.positional import sinusoidal_table
from tfm_rs.train import Seq2SeqTrainer, TrainConfig

try:
    import torch
    import torch.nn as tnn
    import torch.nn.functional as TF
except ImportError:  # the tfm_rs side still runs
    torch = None


def build_torch_model(cfg: dict):
    """The PyTorch twin of :class:`tfm_rs.models.Seq2SeqTransformer` (same submodule names, so
    the tfm_rs state_dict loads into it)."""

    class TorchSeq2Seq(tnn.Module):
        def __init__(self) -> None:
            super().__init__()
            d = cfg["d_model"]
            self.pad_id, self.bos_id, self.eos_id = cfg["pad_id"], cfg["bos_id"], cfg["eos_id"]
            self.max_len = cfg["max_len"]
            layer_args = (d, cfg["nhead"], cfg["dim_feedforward"], cfg["dropout"], cfg["activation"],
                          cfg["layer_norm_eps"])
            enc = tnn.TransformerEncoderLayer(*layer_args, batch_first=True, norm_first=cfg["norm_first"])
            dec = tnn.TransformerDecoderLayer(*layer_args, batch_first=True, norm_first=cfg["norm_first"])
            enc_norm = tnn.LayerNorm(d, eps=cfg["layer_norm_eps"]) if cfg["norm_first"] else None
            dec_norm = tnn.LayerNorm(d, eps=cfg["layer_norm_eps"]) if cfg["norm_first"] else None
            self.transformer = tnn.Transformer(
                d, cfg["nhead"], batch_first=True,
                custom_encoder=tnn.TransformerEncoder(enc, cfg["num_encoder_layers"], enc_norm,
                                                      enable_nested_tensor=False),
                custom_decoder=tnn.TransformerDecoder(dec, cfg["num_decoder_layers"], dec_norm))
            self.src_embed = tnn.Embedding(cfg["src_vocab_size"], d, padding_idx=cfg["pad_id"])
            self.tgt_embed = self.src_embed if cfg["share_embeddings"] else tnn.Embedding(cfg["tgt_vocab_size"], d,
                                                                                       padding_idx=cfg["pad_id"])
            self.register_buffer("pe", torch.from_numpy(sinusoidal_table(cfg["max_len"], d)), persistent=False)
            self.dropout = tnn.Dropout(cfg["dropout"])
            self.generator = tnn.Linear(d, cfg["tgt_vocab_size"], bias=not cfg["tie_output"])
            if cfg["tie_output"]:
                self.generator.weight = self.tgt_embed.weight
            self.scale = math.sqrt(d)

        def embed(self, emb, ids):
            return self.dropout(emb(ids) * self.scale + self.pe[: ids.shape[1]])

        def encode(self, src):
            mask = src == self.pad_id
            return self.transformer.encoder(self.embed(self.src_embed, src), src_key_padding_mask=mask), mask

        def decode(self, tgt, memory, src_mask):
            causal = tnn.Transformer.generate_square_subsequent_mask(tgt.shape[1], dtype=memory.dtype)
            h = self.transformer.decoder(self.embed(self.tgt_embed, tgt), memory, tgt_mask=causal, tgt_is_causal=True,
                                         memory_key_padding_mask=src_mask)
            return self.generator(h)

        def forward(self, src, tgt):
            memory, mask = self.encode(src)
            return self.decode(tgt, memory, mask)

    return TorchSeq2Seq()


def torch_greedy(model, src_rows, batch_size=128, max_len_a=1.5, max_len_b=10):
    """Batched greedy decoding as nn.Transformer is usually driven: the decoder re-runs over the
    whole prefix at every step (no cache); a row stops at its first EOS."""
    outs = [None] * len(src_rows)
    order = sorted(range(len(src_rows)), key=lambda i: len(src_rows[i]))
    model.eval()
    with torch.no_grad():
        for start in range(0, len(order), batch_size):
            chunk = order[start: start + batch_size]
            src = torch.from_numpy(tfm_rs.data.pad_batch([src_rows[i] for i in chunk], model.pad_id))
            lens = (src != model.pad_id).sum(1)
            limit = torch.clamp((max_len_a * lens + max_len_b).long(), max=model.max_len - 1)
            memory, mask = model.encode(src)
            ys = torch.full((len(chunk), 1), model.bos_id, dtype=torch.long)
            done = torch.zeros(len(chunk), dtype=torch.bool)
            for t in range(int(limit.max())):
                nxt = model.decode(ys, memory, mask)[:, -1].argmax(-1)
                nxt = torch.where(done, torch.full_like(nxt, model.pad_id), nxt)
                ys = torch.cat([ys, nxt[:, None]], 1)
                done |= (nxt == model.eos_id) | (t + 1 >= limit)
                if bool(done.all()):
                    break
            for i, row in zip(chunk, ys[:, 1:].tolist()):
                row = row[: row.index(model.eos_id)] if model.eos_id in row else row
                outs[i] = [x for x in row if x != model.pad_id]
    model.train()
    return outs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30, help="timed steps per framework")
    p.add_argument("--warmup-steps-skip", type=int, default=3, help="untimed first steps")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: train a joint BPE 8000)")
    p.add_argument("--src", default="de")
    p.add_argument("--tgt", default="en")
    p.add_argument("--max-tokens", type=int, default=3000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--minutes", type=float, default=0.0, help="instead: train torch for this long, then --bleu")
    p.add_argument("--bleu", action="store_true", help="greedy BLEU on test_2016_flickr after --minutes")
    p.add_argument("--skip-tfm", action="store_true")
    p.add_argument("--smoke", action="store_true",
                   help="2 timed steps, 300-token batches of 2,000 sentences, a 1,000-token BPE: checks that it runs")
    args = p.parse_args()
    if not multi30k_or_skip(args.smoke):
        return
    smoke_lines = 2000 if args.smoke else None
    if args.smoke:
        args.steps, args.warmup_steps_skip, args.max_tokens, args.minutes = 2, 1, 300, 0.0

    threads = args.threads or tfm_rs.get_num_threads()
    tfm_rs.set_num_threads(threads)
    if args.tokenizer:
        tok = Tokenizer.load(args.tokenizer)
    else:
        files = multi30k_files("train", (args.src, args.tgt))
        tok = train_tokenizer(files, 1000, max_lines=smoke_lines) if args.smoke else train_tokenizer(files, 8000)
    train = load_multi30k("train", args.src, args.tgt)
    src_ids, tgt_ids = tok.encode_batch(train.src[:smoke_lines]), tok.encode_batch(train.tgt[:smoke_lines])
    tfm_rs.manual_seed(args.seed)
    model = Seq2SeqTransformer(**preset_config("small", tok.vocab_size, tok.vocab_size, share_embeddings=True))
    cfg = model.config
    init_state = model.state_dict()
    tc = TrainConfig(max_tokens=args.max_tokens, seed=args.seed, print_every=0)
    print(f"config: small preset, {model.num_parameters() / 1e6:.2f}M params, vocab {tok.vocab_size}, "
          f"max_tokens {args.max_tokens}, threads {threads}")

    # ---- the same batch sequence for both
    sampler = TokenBatchSampler(src_ids, tgt_ids, tc.max_tokens, shuffle=True, seed=tc.seed, max_len=cfg["max_len"])
    n_total = args.steps + args.warmup_steps_skip
    batches = []
    it = iter(sampler)
    while len(batches) < n_total:
        try:
            idx = next(it)
        except StopIteration:
            it = iter(sampler)
            continue
        batches.append(collate([src_ids[i] for i in idx], [tgt_ids[i] for i in idx], 0, 1, 2, idx))

    # The same function: eval-mode (no dropout) loss of the initial weights on the first batch.
    b0 = batches[0]
    model.eval()
    with tfm_rs.no_grad():
        init_loss_tfm = model.loss(b0.src, b0.tgt_in, b0.tgt_out, label_smoothing=tc.label_smoothing).item()
    model.train()

    results = {}
    if not args.skip_tfm and not args.minutes:
        trainer = Seq2SeqTrainer(model, (src_ids, tgt_ids), tc)
        feed = iter(batches)
        trainer.next_batch = lambda: next(feed)
        recs = [trainer.train_step() for _ in range(n_total)]
        timed = recs[args.warmup_steps_skip:]
        results["tfm_rs"] = (sum(r["tokens"] for r in timed) / sum(r["step_time"] for r in timed),
                             recs[0]["loss"], recs[-1]["loss"])

    if torch is None:
        print("torch is not importable: tfm_rs only")
    else:
        torch.set_num_threads(threads)
        torch.manual_seed(args.seed)
        tm = build_torch_model(cfg)
        missing, unexpected = tm.load_state_dict({k: torch.from_numpy(v) for k, v in init_state.items()}, strict=False)
        assert not missing and not unexpected, (missing, unexpected)
        tm.eval()
        with torch.no_grad():
            lg = tm(torch.from_numpy(b0.src), torch.from_numpy(b0.tgt_in))
            init_loss_torch = TF.cross_entropy(lg.reshape(-1, lg.shape[-1]), torch.from_numpy(b0.tgt_out).reshape(-1),
                                               ignore_index=0, label_smoothing=tc.label_smoothing).item()
        print(f"initial eval loss on batch 0: tfm_rs {init_loss_tfm:.6f}  torch {init_loss_torch:.6f}")
        opt = torch.optim.Adam(tm.parameters(), lr=tc.lr, betas=tuple(tc.betas), eps=tc.eps)
        w = tc.warmup_steps
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: (s + 1) / w if s + 1 <= w else math.sqrt(w / (s + 1)))

        def step(b):
            t0 = time.perf_counter()
            tm.train()
            logits = tm(torch.from_numpy(b.src), torch.from_numpy(b.tgt_in))
            loss = TF.cross_entropy(logits.reshape(-1, logits.shape[-1]), torch.from_numpy(b.tgt_out).reshape(-1),
                                    ignore_index=0, label_smoothing=tc.label_smoothing, reduction="sum")
            (loss / b.num_tokens).backward()
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            return loss.item() / b.num_tokens, b.num_tokens + b.num_src_tokens, time.perf_counter() - t0

        if args.minutes:
            tokens = secs = 0.0
            n = 0
            it = iter(sampler)
            sampler.set_epoch(0)
            it = iter(sampler)
            while secs < 60 * args.minutes:
                try:
                    idx = next(it)
                except StopIteration:
                    it = iter(sampler)
                    continue
                b = collate([src_ids[i] for i in idx], [tgt_ids[i] for i in idx], 0, 1, 2, idx)
                loss, ntok, dt = step(b)
                tokens, secs, n = tokens + ntok, secs + dt, n + 1
                if n % 100 == 0:
                    print(f"torch step {n} loss {loss:.3f} {tokens / secs:.0f} tok/s {secs / 60:.1f} min", flush=True)
            print(f"torch: {n} steps in {secs / 60:.1f} min, {tokens / secs:.0f} tok/s")
            if args.bleu:
                test = load_multi30k("test", args.src, args.tgt)
                hyps = [tok.decode(o) for o in torch_greedy(tm, tok.encode_batch(test.src))]
                print(f"torch test_2016_flickr BLEU {tfm_rs.metrics.bleu(hyps, test.tgt):.2f}")
            return
        recs = [step(b) for b in batches]
        timed = recs[args.warmup_steps_skip:]
        results["torch"] = (sum(r[1] for r in timed) / sum(r[2] for r in timed), recs[0][0], recs[-1][0])

    print(f"{'framework':<10} {'tok/s':>8} {'loss@step1':>11} {'loss@last':>10}   ({args.steps} timed steps)")
    for name, (tps, first, last) in results.items():
        print(f"{name:<10} {tps:8.0f} {first:11.4f} {last:10.4f}")
    if len(results) == 2:
        print(f"tfm_rs / torch throughput: {results['tfm_rs'][0] / results['torch'][0]:.2f}x")


if __name__ == "__main__":
    main()
