"""Fine-tuning on real data: does this English caption translate that German one?
``python -m tfm_rs.examples.caption_match [--pretrain-minutes 4] [--minutes 4] [--out caption-match]``.

From Multi30k's caption pairs (``../shared/data/multi30k`` or ``$TFM_RS_MULTI30K``): each German
caption with its own English caption (label ``yes``) and with the English caption of another
pair drawn at random (``no``) — balanced, and the negatives are fluent captions of the same kind
of picture, so only the content decides. Training pairs come from the ``train`` split, the
per-epoch check from ``val``, the reported accuracy from ``test_2016_flickr`` (1,000 pairs, 2,000
examples, never seen in training).

The model starts from random weights — there is no pretrained multilingual BERT here — so the
script makes its own small pretrained checkpoint first: a lowercasing WordPiece vocabulary
shared by both languages (trained on the training captions), a small BERT (2 layers of width
128, 4 heads, BERT's pooler) pre-trained for ``--pretrain-minutes`` with translation language
modelling (:func:`pretrain_tlm`: masked words predicted from both captions of a training pair),
written in Hugging Face's layout as a downloaded checkpoint would be (``bert-tlm/``;
``--pretrain-minutes 0`` writes the random weights as ``bert-random/``). Then it runs
:func:`tfm_rs.train.finetune.finetune` — what ``tfm-rs finetune --task sequence-classification``
runs — for ``--minutes`` on the German caption as ``text`` and the English one as ``text_pair``,
and scores the test split. Everything goes to ``--out``: ``data/*.jsonl``, the encoder checkpoint,
``classifier/`` (a ``BertForSequenceClassification`` checkpoint with its ``results.json``) and
``results.json`` with the test accuracy.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

import tfm_rs
from tfm_rs.models import BertEncoder, BertForSequenceClassification
from tfm_rs.optim import AdamW
from tfm_rs.train.finetune import accuracy, batches, budget_progress, encode, finetune, read_examples, warmup_linear

__all__ = ["build_tokenizer", "make_pairs", "pretrain_tlm", "run"]

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
MAX_LEN = 128


def make_pairs(de: Sequence[str], en: Sequence[str], rng: np.random.Generator) -> List[Dict[str, str]]:
    """Every German caption twice: with its English caption (``yes``) and with another pair's
    (``no``; a random other index, so never its own)."""
    n = len(de)
    other = (np.arange(n) + rng.integers(1, n, n)) % n
    rows = []
    for i in range(n):
        rows.append({"text": de[i], "text_pair": en[i], "label": "yes"})
        rows.append({"text": de[i], "text_pair": en[other[i]], "label": "no"})
    return [rows[i] for i in rng.permutation(len(rows))]


def build_tokenizer(texts: Sequence[str], vocab_size: int, max_length: int) -> Any:
    """A BERT-style WordPiece tokenizer (lowercased, accents kept) over ``texts``, with the
    ``[CLS] A [SEP] B [SEP]`` template that gives the second segment token type 1, truncating
    to ``max_length`` pieces (the model's positions)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=False)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIALS,
                                                             show_progress=False))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    tok.enable_truncation(max_length=max_length)
    return tok


def pretrain_tlm(bert: BertEncoder, tokenizer: Any, de: Sequence[str], en: Sequence[str], minutes: float,
                 lr: float, batch_size: int, rng: np.random.Generator, log=print) -> Dict[str, Any]:
    """Translation language modelling (Lample & Conneau 2019): the masked-LM objective on a German
    caption and its English translation side by side (``[CLS] de [SEP] en [SEP]``), so that
    predicting a masked word can use its translation — it teaches the encoder which words of the
    two languages correspond, the knowledge the classifier needs. ``minutes`` of AdamW steps."""
    data = [(e.ids, e.type_ids) for e in tokenizer.encode_batch(list(zip(de, en)))]
    opt = AdamW(bert.parameters(), lr=lr, weight_decay=0.01)
    progress = budget_progress(10 ** 9, minutes)
    sched = warmup_linear(opt, progress)
    bert.train()
    step, losses = 0, []
    start = time.perf_counter()
    while progress(step) < 1.0:
        order = rng.integers(0, len(data), batch_size)
        ids, types, _ = next(batches([(*data[i], 0) for i in order], batch_size, bert.pad_id))
        inputs, labels = bert.mask_tokens(ids, rng)
        opt.zero_grad()
        loss = bert.loss(inputs, labels, types)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        losses.append(loss.item())
        if step % 500 == 0:
            log(f"  TLM step {step}  loss {np.mean(losses[-500:]):.3f}  {time.perf_counter() - start:.0f}s")
    return {"tlm_steps": step, "tlm_loss": float(np.mean(losses[-100:])), "tlm_seconds": time.perf_counter() - start}


def _write_jsonl(path: Path, rows: Sequence[Dict[str, str]]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def run(out: Any = "caption-match", minutes: float = 4.0, pretrain_minutes: float = 4.0,
        train_pairs: Optional[int] = None, d_model: int = 128, num_layers: int = 2, vocab_size: int = 8000,
        lr: float = 1e-3, batch_size: int = 32, seed: int = 0, root: Any = None, log=print) -> Dict[str, Any]:
    from tfm_rs.data.corpus import load_multi30k

    out = Path(out)
    (out / "data").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    splits = {name: load_multi30k(split, "de", "en", root=root) for name, split in
              (("train", "train"), ("valid", "val"), ("test", "test"))}
    train = splits["train"]
    keep = rng.permutation(len(train.src))[:train_pairs] if train_pairs else np.arange(len(train.src))
    data = {"train": make_pairs([train.src[i] for i in keep], [train.tgt[i] for i in keep], rng),
            "valid": make_pairs(splits["valid"].src, splits["valid"].tgt, rng),
            "test": make_pairs(splits["test"].src, splits["test"].tgt, rng)}
    for name, rows in data.items():
        _write_jsonl(out / "data" / f"{name}.jsonl", rows)
    log(f"pairs: {len(keep)} train, {len(splits['valid'].src)} valid, {len(splits['test'].src)} test "
        f"-> {len(data['train'])} / {len(data['valid'])} / {len(data['test'])} examples (half positive)")

    t0 = time.perf_counter()
    tokenizer = build_tokenizer([*train.src, *train.tgt], vocab_size, MAX_LEN)
    tfm_rs.manual_seed(seed)
    bert = BertEncoder(tokenizer.get_vocab_size(), d_model, d_model // 32, num_layers, 2 * d_model, max_len=MAX_LEN,
                       pad_id=tokenizer.token_to_id("[PAD]"), mask_id=tokenizer.token_to_id("[MASK]"), dropout=0.1,
                       pooler=True)
    bert.tokenizer = tokenizer
    log(f"random BERT: vocabulary {tokenizer.get_vocab_size()}, {num_layers} layers of width {d_model}, "
        f"{sum(int(np.prod(p.shape)) for p in bert.parameters()):,} parameters ({time.perf_counter() - t0:.0f}s)")
    tlm: Dict[str, Any] = {}
    if pretrain_minutes > 0:
        tlm = pretrain_tlm(bert, tokenizer, [train.src[i] for i in keep], [train.tgt[i] for i in keep],
                           pretrain_minutes, lr, batch_size, rng, log)
        log(f"TLM pre-training: {tlm['tlm_steps']} steps in {tlm['tlm_seconds']:.0f}s, loss {tlm['tlm_loss']:.3f}")
    start = "bert-tlm" if tlm else "bert-random"
    bert.eval().save_pretrained(out / start)

    res = finetune(out / start, out / "data" / "train.jsonl", "sequence-classification", out / "classifier",
                   valid_path=out / "data" / "valid.jsonl", minutes=minutes, lr=lr, batch_size=batch_size, seed=seed,
                   log=lambda line: log("  " + line))
    model = BertForSequenceClassification.from_pretrained(out / "classifier")
    test_rows = read_examples(out / "data" / "test.jsonl", "sequence-classification")
    test = encode(model.tokenizer, test_rows, "sequence-classification",
                  {name: i for i, name in enumerate(model.label_names())}, "test")
    summary = {"test_accuracy": accuracy(model, test), "test_examples": len(test),
               "valid_accuracy": res["valid_accuracy"], "train_accuracy": res["train_accuracy"],
               "train_examples": res["train_examples"], "epochs": res["history"][-1]["epoch"], "steps": res["steps"],
               "seconds": res["seconds"], "minutes": minutes, "lr": lr, "batch_size": batch_size, "d_model": d_model,
               "num_layers": num_layers, "vocab_size": tokenizer.get_vocab_size(), "seed": seed,
               "threads": tfm_rs.get_num_threads(), "init": "tlm" if tlm else "random", **tlm}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    log(f"test_2016_flickr: {summary['test_accuracy']:.1%} of {len(test)} examples right "
        f"({res['steps']} steps, {res['seconds']:.0f}s of fine-tuning)")
    return summary


def main(argv: Optional[Sequence[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="caption-match", help="where the data, checkpoints and results go")
    p.add_argument("--minutes", type=float, default=4.0, help="fine-tuning time budget (default 4)")
    p.add_argument("--pretrain-minutes", type=float, default=4.0,
                   help="translation-LM pre-training budget (default 4; 0: fine-tune the random weights)")
    p.add_argument("--train-pairs", type=int, default=None, help="use only this many training pairs (default: all)")
    p.add_argument("--layers", type=int, default=2, help="BERT layers (default 2)")
    p.add_argument("--d-model", type=int, default=128, help="BERT width (default 128; heads of 32)")
    p.add_argument("--lr", type=float, default=1e-3, help="peak learning rate of both stages (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    run(a.out, a.minutes, a.pretrain_minutes, a.train_pairs, a.d_model, a.layers, lr=a.lr, seed=a.seed)


if __name__ == "__main__":
    main()
