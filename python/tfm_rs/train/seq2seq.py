"""The parallel-text recipe: train a Transformer translator and report its test BLEU.

    python -m tfm_rs.train.seq2seq --data multi30k --src de --tgt en --minutes 20 --out runs/x

Steps: read the corpus (Multi30k from ``shared/data/multi30k``, or any directory holding
``train.<lang>``, ``val.<lang>``, ``<test-split>.<lang>``, plain or .gz); train a joint BPE
tokenizer on the training text of both languages (or load ``--tokenizer``, or
``<out>/tokenizer.json`` when resuming); build the model (``--preset small`` by default, shared
embeddings); train with :class:`~tfm_rs.train.Seq2SeqTrainer` for ``--minutes`` of training time
and/or ``--max-steps``; average the weights of the last ``--average`` snapshots (the paper's
checkpoint averaging; snapshots every ``--average-every`` minutes, or steps under a step budget,
up to the end); then translate the test set greedily and with beam search (``--beam``,
``--length-penalty`` α = 1.0) with the averaged weights and score both with sacrebleu (cased,
detokenized; ``bleu`` in the results is the beam search's; ``bleu_greedy_last`` is the last
weights' greedy score). Everything lands in ``--out``: ``tokenizer.json``, ``metrics.jsonl``,
``checkpoint/`` (the last weights and the state to ``--resume`` from), ``averaged/`` (the
averaged model), ``test.hyp.txt`` and ``results.json``. Snapshots taken before a ``--resume``
are not kept, so a resumed run averages only what it saw.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import tfm_rs
from tfm_rs import metrics
from tfm_rs.checkpoint import save_checkpoint
from tfm_rs.data import ParallelCorpus, load_multi30k, multi30k_files, run_tokenizer, train_tokenizer
from tfm_rs.models import Seq2SeqTransformer, preset_config
from tfm_rs.train.averaging import WeightAverager, snapshot_points
from tfm_rs.train.trainer import Seq2SeqTrainer, TrainConfig

__all__ = ["main", "parse_args", "load_corpora"]


def _file(root: Path, split: str, lang: str) -> Path:
    for name in (f"{split}.{lang}.gz", f"{split}.{lang}"):
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(f"no {root / (split + '.' + lang)}[.gz]")


def load_corpora(data: str, src: str, tgt: str, test_split: str):
    """``(train, val, test, train_files)``: three :class:`ParallelCorpus` and the training files."""
    if data == "multi30k":
        split = {"test_2016_flickr": "test"}.get(test_split, test_split)
        return (load_multi30k("train", src, tgt), load_multi30k("val", src, tgt), load_multi30k(split, src, tgt),
                multi30k_files("train", (src, tgt)))
    root = Path(data)
    corp = [ParallelCorpus(_file(root, s, src), _file(root, s, tgt)) for s in ("train", "val", test_split)]
    return corp[0], corp[1], corp[2], [_file(root, "train", src), _file(root, "train", tgt)]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tfm_rs.train.seq2seq", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", default="multi30k", help="'multi30k' or a directory of train/val/test files")
    p.add_argument("--src", default="de")
    p.add_argument("--tgt", default="en")
    p.add_argument("--test-split", default="test_2016_flickr")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--minutes", type=float, default=20.0, help="training-time budget (0 = none)")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--preset", default="small", choices=["tiny", "small", "base", "big"])
    p.add_argument("--no-share", action="store_true", help="separate source/target embeddings")
    p.add_argument("--norm-first", action="store_true", help="pre-LN layers")
    p.add_argument("--dropout", type=float, default=None, help="override the preset's dropout")
    p.add_argument("--tokenizer", default=None, help="an existing tokenizer.json to use")
    p.add_argument("--vocab-size", type=int, default=8000)
    p.add_argument("--max-tokens", type=int, default=3000, help="padded src+tgt tokens per batch")
    p.add_argument("--accum", type=int, default=1, help="batches per optimizer step")
    p.add_argument("--lr", type=float, default=7e-4, help="peak learning rate")
    p.add_argument("--warmup", type=int, default=800)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--clip-norm", type=float, default=0.0, help="global gradient-norm clip (0 = off)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--valid-every", type=int, default=500)
    p.add_argument("--bleu-every", type=int, default=1000)
    p.add_argument("--bleu-subset", type=int, default=200)
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--print-every", type=int, default=50)
    p.add_argument("--test-limit", type=int, default=None, help="decode only the first N test sentences")
    p.add_argument("--beam", type=int, default=4, help="beam size for the test translation (1 = greedy only)")
    p.add_argument("--length-penalty", type=float, default=1.0,
                   help="GNMT length penalty alpha for the beam search (1.0 suits short-trained models, "
                        "which stop early; the paper's 0.6 favours shorter output)")
    p.add_argument("--average", type=int, default=5,
                   help="average the weights of this many snapshots at the end of training (1 = off)")
    p.add_argument("--average-every", type=float, default=None,
                   help="minutes (or steps, under a step budget only) between snapshots; default 5%% of the budget")
    p.add_argument("--threads", type=int, default=None, help="tfm_rs worker threads")
    p.add_argument("--resume", action="store_true", help="continue from <out>/checkpoint")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    t_start = time.perf_counter()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.threads:
        tfm_rs.set_num_threads(args.threads)
    tfm_rs.manual_seed(args.seed)

    train, val, test, train_files = load_corpora(args.data, args.src, args.tgt, args.test_split)
    tok_path = out / "tokenizer.json"
    t0 = time.perf_counter()
    tokenizer = run_tokenizer(tok_path, args.tokenizer,
                              lambda: train_tokenizer(train_files, args.vocab_size, kind="bpe"))
    src_ids = tokenizer.encode_batch(train.src)
    tgt_ids = tokenizer.encode_batch(train.tgt)
    val_src, val_tgt = tokenizer.encode_batch(val.src), tokenizer.encode_batch(val.tgt)
    prep_time = time.perf_counter() - t0
    print(f"data: {len(train)} train / {len(val)} val / {len(test)} test pairs; {tokenizer}; "
          f"prepared in {prep_time:.1f}s", flush=True)

    overrides = {"share_embeddings": not args.no_share, "norm_first": args.norm_first,
                 "pad_id": tokenizer.pad_id, "bos_id": tokenizer.bos_id, "eos_id": tokenizer.eos_id}
    if args.dropout is not None:
        overrides["dropout"] = args.dropout
    model = Seq2SeqTransformer(**preset_config(args.preset, tokenizer.vocab_size, tokenizer.vocab_size, **overrides))
    print(f"model: {args.preset} {model.num_parameters() / 1e6:.2f}M parameters; threads "
          f"{tfm_rs.get_num_threads()}", flush=True)

    cfg = TrainConfig(max_tokens=args.max_tokens, lr=args.lr, warmup_steps=args.warmup,
                      label_smoothing=args.label_smoothing, clip_norm=args.clip_norm or None,
                      accum_steps=args.accum, seed=args.seed, max_steps=args.max_steps,
                      max_minutes=args.minutes or None, valid_every=args.valid_every, bleu_every=args.bleu_every,
                      bleu_subset=args.bleu_subset, save_every=args.save_every, print_every=args.print_every)
    trainer = Seq2SeqTrainer(model, (src_ids, tgt_ids), cfg, out_dir=out, valid_data=(val_src, val_tgt),
                             valid_texts=(val.src, val.tgt), tokenizer=tokenizer)
    print(f"batches: {trainer.sampler.stats}, ~{len(trainer.sampler)} per epoch", flush=True)
    if args.resume:
        trainer.resume(out / "checkpoint")
        print(f"resumed at step {trainer.step} ({trainer.train_time / 60:.1f} min trained)", flush=True)
    # Snapshot points in training minutes (time budget) or steps (step budget only).
    by_time = bool(args.minutes)
    budget = args.minutes if by_time else args.max_steps
    points = []
    if args.average > 1 and budget:
        points = snapshot_points(budget, args.average, args.average_every or budget / 20)
    averager = WeightAverager()

    def snapshot(rec: dict) -> None:
        if rec["type"] != "train":
            return
        progress = rec["train_time"] / 60 if by_time else rec["step"]
        if points and progress >= points[0]:
            # One snapshot per step, however many points it passed.
            averager.add(model.state_dict())
            while points and progress >= points[0]:
                points.pop(0)

    trainer.train(callback=snapshot)
    trainer.save()
    n = args.test_limit or len(test)
    last_greedy = None
    if averager.count:
        hyps = model.translate(test.src[:n], tokenizer, num_beams=1, batch_size=cfg.bleu_batch_size)
        last_greedy = metrics.bleu_score(hyps, test.tgt[:n])
        averager.add(model.state_dict())
        model.load_state_dict(averager.average())
        save_checkpoint(out / "averaged", model.state_dict(), model.config,
                        extra={"averaged": averager.count, "step": trainer.step}, keep_previous=False)
        print(f"averaged the weights of {averager.count} snapshots (last weights: greedy test BLEU "
              f"{last_greedy.score:.2f})", flush=True)
    final_valid = trainer.validate(bleu=False)

    decoded = {}
    for beams in sorted({1, args.beam}):
        t0 = time.perf_counter()
        hyps = model.translate(test.src[:n], tokenizer, num_beams=beams, length_penalty=args.length_penalty,
                               batch_size=cfg.bleu_batch_size)
        decoded[beams] = (hyps, time.perf_counter() - t0, metrics.bleu_score(hyps, test.tgt[:n]))
    hyps, decode_time, score = decoded[args.beam]
    (out / "test.hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
    train_recs = [r for r in trainer.history if r["type"] == "train"]
    tail = train_recs[-100:]
    results = {
        "command": " ".join([sys.executable.split("/")[-1], "-m", "tfm_rs.train.seq2seq", *(argv or sys.argv[1:])]),
        "test_split": args.test_split, "test_sentences": n, "bleu": float(score.score), "bleu_detail": str(score),
        "beam": args.beam, "length_penalty": args.length_penalty, "bleu_greedy": float(decoded[1][2].score),
        "decode_seconds_greedy": decoded[1][1], "averaged_snapshots": averager.count,
        "bleu_greedy_last": float(last_greedy.score) if last_greedy else None,
        "steps": trainer.step, "train_minutes": trainer.train_time / 60, "tokens_seen": trainer.tokens_seen,
        "tok_per_s_overall": trainer.tokens_seen / max(trainer.train_time, 1e-9),
        "tok_per_s_last100": (sum(r["tokens"] for r in tail) / max(sum(r["step_time"] for r in tail), 1e-9))
        if tail else None,
        "valid_loss": final_valid.get("loss"), "valid_ppl": final_valid.get("ppl"),
        "decode_seconds": decode_time, "wall_minutes": (time.perf_counter() - t_start) / 60,
        "params": model.num_parameters(), "model_config": model.config, "train_config": cfg.to_dict(),
        "threads": tfm_rs.get_num_threads(), "cpus": os.cpu_count(), "machine": platform.machine(),
        "tfm_rs": tfm_rs.__version__,
    }
    trainer.log({"type": "test", **{k: results[k] for k in ("bleu", "test_sentences", "decode_seconds", "steps")}})
    trainer.close()
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    print(f"test BLEU {score.score:.2f} (beam {args.beam}; greedy {decoded[1][2].score:.2f}) on {n} sentences "
          f"({score}); {trainer.step} steps, "
          f"{trainer.train_time / 60:.1f} min training, {results['wall_minutes']:.1f} min wall", flush=True)
    return results


if __name__ == "__main__":
    main()
