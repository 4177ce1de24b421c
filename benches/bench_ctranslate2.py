"""Translation speed and BLEU: tfm_rs against CTranslate2 on the same weights.

A trained Seq2SeqTransformer (the 20-minute Multi30k model of ``tfm-rs train --config multi30k``)
is written with ``save_pretrained`` as a ``MarianMTModel`` directory and converted with
CTranslate2's ``TransformersConverter``; both engines then translate the Multi30k test sentences
(German → English), float32 and int8, greedy and beam 4, batch 1 and 32, on ``--threads``
threads (CTranslate2: one translator, ``intra_threads``). Printed: output tokens/s of each (EOS
not counted), the ratio tfm_rs / CTranslate2, BLEU of both, the CPU and the load.

    pip install ctranslate2              # a benchmark baseline only, never a tfm_rs dependency
    python benches/bench_ctranslate2.py --run RUN_DIR [--sentences 1000] [--json out.json]
    python benches/bench_ctranslate2.py --smoke     # a tiny random model, a few sentences, seconds

Same work for both: the same source token ids (no tokenization in the timings), batches of
sentences sorted by length, at most ``1.5·S + 10`` new tokens (per sentence in tfm_rs, per
batch's longest source in CTranslate2), length penalty α = 1: tfm_rs ranks beams by
``log P / ((5 + len) / 6)^α`` (GNMT), CTranslate2 by ``log P / len^α``, so beam outputs may differ.

CTranslate2's stock Marian loader assumes the opus-mt conventions: ``<pad>`` is the last
vocabulary entry, whose embedding row it drops, and the decoder starts from a zero vector (the
opus-mt start token is that pad, whose embedding is zero), not from the start token's embedding.
Neither holds for our checkpoints (``pad_id`` 0, start token ``<s>``): the stock loader refuses
them ("Source vocabulary 0 has size 60 but the model expected a vocabulary of size 59"), and with
``<pad>`` moved last it would run another model. :class:`MarianAsSaved` is the stock loader
without those two adjustments (BART's handling, which Marian's extends), so CTranslate2 runs the
model ``transformers`` runs. The float32 greedy outputs of the two engines are compared token for
token (``--smoke`` fails if fewer than half agree).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

import tfm_rs
from tfm_rs import metrics
from tfm_rs.bench import cpu_model, multi30k_or_skip
from tfm_rs.data.batching import pad_batch
from tfm_rs.models import Seq2SeqTransformer
from tfm_rs.quantization import quantize_dynamic

CONFIGS = [(beams, batch) for beams in (1, 4) for batch in (1, 32)]


def load_run(run_dir: Path):
    """The run's averaged model (else its last checkpoint) and tokenizer."""
    from tfm_rs.checkpoint import load_checkpoint
    from tfm_rs.data import Tokenizer

    ck = load_checkpoint(run_dir / ("averaged" if (run_dir / "averaged").is_dir() else "checkpoint"))
    model = Seq2SeqTransformer.from_config(ck.config)
    model.load_state_dict(ck.model_state)
    return model.eval(), Tokenizer.load(run_dir / "tokenizer.json")


def smoke_model(tmp: Path):
    """A tiny random model, a tokenizer trained on a few made-up sentences, and those sentences."""
    from tfm_rs.data import train_tokenizer

    rng = np.random.default_rng(0)
    words = "ein Hund läuft über die Wiese eine Frau liest ein Buch zwei Kinder spielen im Park".split()
    src = [" ".join(rng.choice(words, rng.integers(3, 9))) for _ in range(12)]
    tok = train_tokenizer([], 60, texts=src * 3)
    tfm_rs.manual_seed(0)
    model = Seq2SeqTransformer(len(tok), len(tok), d_model=16, nhead=2, num_encoder_layers=1, num_decoder_layers=1,
                               dim_feedforward=32, max_len=64, dropout=0.0, share_embeddings=True).eval()
    return model, tok, src, list(src)


def _ct2_classes():
    from ctranslate2.converters import transformers as ct2t

    class MarianAsSaved(ct2t.MarianMTLoader):
        """CTranslate2's Marian loader without its opus-mt assumptions (see the module docstring)."""

        def get_model_spec(self, model):
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return ct2t.BartLoader.get_model_spec(self, model)  # keeps every vocabulary row

        def set_config(self, config, model, tokenizer):
            ct2t.BartLoader.set_config(self, config, model, tokenizer)  # start token = decoder_start_token_id

        def set_decoder(self, spec, decoder):
            ct2t.BartLoader.set_decoder(self, spec, decoder)  # the start token's embedding, not zeros

        def get_vocabulary(self, model, tokenizer):
            return ct2t.BartLoader.get_vocabulary(self, model, tokenizer)

    return ct2t, MarianAsSaved


@contextmanager
def marian_as_saved():
    ct2t, loader = _ct2_classes()
    stock = ct2t._MODEL_LOADERS["MarianConfig"]
    ct2t._MODEL_LOADERS["MarianConfig"] = loader()
    try:
        yield
    finally:
        ct2t._MODEL_LOADERS["MarianConfig"] = stock


def convert(model: Seq2SeqTransformer, tok: Any, tmp: Path) -> Path:
    hf_dir, ct2_dir = tmp / "marian", tmp / "ct2"
    model.tokenizer = tok  # save_pretrained writes tokenizer.json and the tokenizer_config.json AutoTokenizer reads
    model.save_pretrained(hf_dir)
    ct2t, _ = _ct2_classes()
    with marian_as_saved():
        ct2t.TransformersConverter(str(hf_dir)).convert(str(ct2_dir), force=True)
    return ct2_dir


def batches(ids: Sequence[List[int]], batch: int) -> List[List[int]]:
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    return [order[i:i + batch] for i in range(0, len(order), batch)]


def run_tfm(model, ids, groups, beams: int) -> Dict[int, List[int]]:
    out: Dict[int, List[int]] = {}
    for g in groups:
        res = model.generate(pad_batch([ids[i] for i in g], model.pad_id), num_beams=beams, length_penalty=1.0)
        for k, i in enumerate(g):
            seq = list(res.sequences[k * res.num_return_sequences])
            out[i] = seq[:-1] if seq and seq[-1] == model.eos_id else seq
    return out


def run_ct2(translator, tokens, groups, beams: int, vocab: Dict[str, int]) -> Dict[int, List[int]]:
    out: Dict[int, List[int]] = {}
    for g in groups:
        src = [tokens[i] for i in g]
        res = translator.translate_batch(src, beam_size=beams, length_penalty=1.0, min_decoding_length=0,
                                         max_decoding_length=int(1.5 * max(map(len, src)) + 10))
        for i, r in zip(g, res):
            out[i] = [vocab[t] for t in r.hypotheses[0]]
    return out


def timed(fn):
    t = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", default=None, help="a trained seq2seq run directory (tfm-rs train --config multi30k)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--sentences", type=int, default=1000, help="test sentences (the first N)")
    p.add_argument("--json", default=None)
    p.add_argument("--smoke", action="store_true", help="a tiny random model, 12 sentences: checks that it runs")
    args = p.parse_args()
    try:
        import ctranslate2
        import transformers  # noqa: F401  (CTranslate2's converter reads the checkpoint with it)
    except ImportError as e:
        if args.smoke:
            print(f"skipped: {e} (pip install ctranslate2 transformers torch: benchmark baselines only)")
            return
        raise SystemExit(f"{e}: pip install ctranslate2 transformers torch (benchmark baselines only)") from None
    tfm_rs.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        if args.smoke:
            model, tok, src_text, refs = smoke_model(tmp)
        else:
            if args.run is None:
                raise SystemExit("give --run RUN_DIR (a trained seq2seq run), or --smoke")
            run = Path(args.run)
            if not (run / "tokenizer.json").is_file():
                raise SystemExit(f"{run}: not a trained run directory (no tokenizer.json); train one with "
                                 "tfm-rs train --config multi30k --out DIR")
            if not multi30k_or_skip(False):
                return
            from tfm_rs.data import load_multi30k

            model, tok = load_run(run)
            test = load_multi30k("test", "de", "en")
            src_text, refs = list(test.src[:args.sentences]), list(test.tgt[:args.sentences])
        ct2_dir = convert(model, tok, tmp)
        vocab = tok.get_vocab()
        inverse = {i: t for t, i in vocab.items()}
        ids = [s[:model.max_len] for s in tok.encode_batch(src_text)]
        tokens = [[inverse[i] for i in s] for s in ids]
        engines = {"tfm_rs float32": ("tfm", model), "tfm_rs int8": ("tfm", quantize_dynamic(model)),
                   "ct2 float32": ("ct2", ctranslate2.Translator(str(ct2_dir), device="cpu", compute_type="float32",
                                                                 inter_threads=1, intra_threads=args.threads)),
                   "ct2 int8": ("ct2", ctranslate2.Translator(str(ct2_dir), device="cpu", compute_type="int8",
                                                              inter_threads=1, intra_threads=args.threads))}
        header = (f"{cpu_model()} ({platform.machine()}), {args.threads} threads, load {os.getloadavg()}, "
                  f"{len(ids)} sentences, ctranslate2 {ctranslate2.__version__}")
        print(header, flush=True)
        print(f"{'engine':16s} {'search':7s} {'batch':>5s} {'seconds':>8s} {'tok/s':>8s} {'BLEU':>6s}", flush=True)
        rows, outputs = [], {}
        for beams, batch in CONFIGS:
            groups = batches(ids, batch)
            for name, (kind, engine) in engines.items():
                def decode(part, kind=kind, engine=engine, beams=beams):
                    return (run_tfm(engine, ids, part, beams) if kind == "tfm" else
                            run_ct2(engine, tokens, part, beams, vocab))

                decode(groups[:1])  # warm-up: thread pools, packed weights
                out, secs = timed(lambda: decode(groups))
                hyps = [tok.decode(out[i]) for i in range(len(ids))]
                n_tok = sum(len(o) for o in out.values())
                row = dict(engine=name, beams=beams, batch=batch, seconds=secs, tokens=n_tok, tok_s=n_tok / secs,
                           bleu=metrics.bleu(hyps, refs))
                rows.append(row)
                outputs[(name, beams, batch)] = out
                print(f"{name:16s} {'greedy' if beams == 1 else 'beam 4':7s} {batch:5d} {secs:8.2f} "
                      f"{row['tok_s']:8.0f} {row['bleu']:6.2f}", flush=True)
        print("\ntfm_rs / CTranslate2 tokens/s (> 1: tfm_rs faster)")
        for beams, batch in CONFIGS:
            r = {x["engine"]: x["tok_s"] for x in rows if x["beams"] == beams and x["batch"] == batch}
            print(f"  {'greedy' if beams == 1 else 'beam 4':7s} batch {batch:2d}: float32 "
                  f"{r['tfm_rs float32'] / r['ct2 float32']:.2f}x, int8 {r['tfm_rs int8'] / r['ct2 int8']:.2f}x")
        # Batch 1: both engines stop at the same length limit.
        a, b = outputs[("tfm_rs float32", 1, 1)], outputs[("ct2 float32", 1, 1)]
        same = sum(a[i] == b[i] for i in a)
        print(f"float32 greedy outputs identical in {same}/{len(a)} sentences; load after: {os.getloadavg()}")
        if args.smoke and same < len(a) // 2:
            raise SystemExit("the converted model does not decode like tfm_rs: the conversion is wrong")
        if args.json:
            Path(args.json).write_text(json.dumps(dict(machine=header, rows=rows, greedy_identical=[same, len(a)]),
                                                  indent=1))


if __name__ == "__main__":
    sys.exit(main())
