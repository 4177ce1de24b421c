"""RNNsearch (``tfm_rs.models.RNNSeq2Seq``) on Multi30k with the Multi30k recipe's data, joint BPE
tokenizer, optimizer settings and time budget (``python/tfm_rs/configs/multi30k.toml``), so that
it compares with ``tfm-rs train --config multi30k``: parameters, tokens/s, validation loss (of the
last weights), test BLEU greedy and beam 4 (``docs/alternatives-rnn-cnn.md``).

    python benches/train_multi30k_rnn.py --minutes 20 --out runs/rnnsearch
    python benches/train_multi30k_rnn.py --smoke    # 2 steps of a tiny model: checks that it runs
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import tfm_rs
from tfm_rs import config, runs
from tfm_rs.bench import multi30k_or_skip
from tfm_rs.models import RNNSeq2Seq


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/rnnsearch")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--max-steps", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--embed-dim", type=int, default=256)
    ap.add_argument("--hidden-size", type=int, default=256)
    ap.add_argument("--no-input-feeding", action="store_true")
    ap.add_argument("--test-limit", type=int, default=None)
    ap.add_argument("--smoke", action="store_true", help="2 steps of a 32-wide model, 1,000-token BPE, 10 test lines")
    args = ap.parse_args()
    if not multi30k_or_skip(args.smoke):
        return
    overrides = {}
    if args.smoke:
        args.max_steps, args.test_limit, args.embed_dim, args.hidden_size = 2, 10, 32, 32
        overrides = {"data": {"vocab_size": 1000}, "optim": {"max_tokens": 300}}
        if args.out == "runs/rnnsearch":
            args.out = tempfile.mkdtemp(prefix="rnnsearch-smoke-")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = {"out": str(out), "minutes": None if args.max_steps else args.minutes, "max_steps": args.max_steps,
             "threads": args.threads, "valid_every": 0, "bleu_every": 0, "save_every": 0}
    cfg = config.resolve(config.load_toml(config.shipped_config("multi30k")), {"train": train, **overrides})
    tfm_rs.set_num_threads(args.threads)
    tfm_rs.manual_seed(cfg["train"]["seed"])
    data = runs.prepare_data(cfg, out)
    tok = data.tokenizer
    model = RNNSeq2Seq(data.src_vocab_size, data.tgt_vocab_size, embed_dim=args.embed_dim,
                       hidden_size=args.hidden_size, dropout=0.1, input_feeding=not args.no_input_feeding,
                       pad_id=data.pad_id, bos_id=data.bos_id, eos_id=data.eos_id)
    trainer = runs.make_trainer(cfg, data, model, out)
    start = time.perf_counter()
    records = trainer.train(verbose=False)
    elapsed = time.perf_counter() - start
    trainer.save(out / "checkpoint")
    tokens = sum(r.get("tokens", 0) for r in records)
    result = {"parameters": model.num_parameters(), "steps": len(records), "minutes": elapsed / 60,
              "tokens_per_s": tokens / elapsed if elapsed else 0.0, "final_loss": records[-1]["loss"],
              "valid_loss": trainer.validation_loss()["loss"]}
    pairs = runs._test_pairs(cfg, args.test_limit)
    if pairs is not None:
        sources, refs = pairs
        model.eval()
        for beams in (1, 4):
            hyps = model.translate(sources, tok, num_beams=beams, length_penalty=cfg["train"]["length_penalty"])
            result[f"test_bleu_beam{beams}"] = runs.metrics_bleu(hyps, refs)["score"]
    (out / "result.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
