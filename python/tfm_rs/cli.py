"""The ``tfm-rs`` command line (also ``python -m tfm_rs``).

Commands:

* ``tfm-rs demo [--lang en|fr|de] [--minutes N] [--steps N] [--seed S]``: trains a small
  encoder-decoder to write numbers out in words (:mod:`tfm_rs.tasks.numbers`), then prints sample
  translations and the exact-match accuracy on held-out numbers.
* ``tfm-rs train [--config FILE.toml] [flags]``: trains a run (the numbers task, parallel text
  files, or a text file for a GPT) into a run directory; ``--resume`` continues it.
* ``tfm-rs translate RUN_DIR [SENTENCE ...]`` (or ``--input FILE``, or stdin),
  ``tfm-rs generate RUN_DIR --prompt TEXT``, ``tfm-rs eval RUN_DIR``, ``tfm-rs plot RUN_DIR``:
  use a trained run.
* ``tfm-rs distill --teacher RUN_DIR --preset tiny --level word|sequence --minutes N --out RUN_DIR``:
  knowledge distillation of a trained run into a smaller student (:mod:`tfm_rs.train.distill`).
* ``tfm-rs finetune --from-pretrained DIR --data train.jsonl --task sequence-classification --out DIR``:
  fine-tunes a Hugging Face BERT checkpoint on labelled text (:mod:`tfm_rs.train.finetune`).
* ``tfm-rs bench``: a quick GEMM / attention / training-step benchmark against NumPy and PyTorch.
* ``tfm-rs claims`` lists the explainers' claims; ``tfm-rs claims run NAME|--all [--quick] [--out DIR]``
  measures them and gives each a verdict (:mod:`tfm_rs.claims`).
* ``tfm-rs info``: version, SIMD path, threads, GPU backend.

User errors (a bad flag value, an unknown config key, a missing file, ``--device gpu`` without
a GPU) print one line and exit with status 2; add ``--debug`` (anywhere on the line) for the
traceback. See ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import Any, Callable, List, Optional, Sequence

PROG = "tfm-rs"
EXIT_USAGE = 2


class UsageError(Exception):
    """A mistake in what the user asked for: one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise UsageError(message)


def _positive(kind: Callable[[str], Any], name: str) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a positive {kind.__name__}, got {text!r}") from None
        if not (value > 0 and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"{name} must be a positive {kind.__name__}, got {text!r}")
        return value
    parse.__name__ = name
    return parse


def _nonnegative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The ``tfm-rs`` argument parser with every subcommand."""
    from tfm_rs import config as cfg_lib
    from tfm_rs.tasks.numbers import LANGUAGES

    p = _Parser(prog=PROG, description="tfm_rs: a Transformer on a Rust core with SIMD kernels.",
                epilog="Add --debug anywhere for a full traceback on errors. Documentation: docs/cli.md.")
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    sub.add_parser("info", help="version, SIMD path, threads, GPU backend",
                   description="Print the version, the SIMD path in use, threads and GPU backend availability.")

    d = sub.add_parser("demo", help="train a small Transformer to write numbers in words",
                       description="Train a small encoder-decoder (d_model 128, 4 heads, 2+2 layers) to write "
                                   "numbers out in words (\"3 452\" -> \"three thousand four hundred fifty-two\"), "
                                   "then report the exact-match accuracy on held-out numbers.")
    d.add_argument("--lang", default="en", choices=LANGUAGES, help="target language (default: en)")
    d.add_argument("--minutes", type=_positive(float, "--minutes"), default=None,
                   help="training time budget in minutes (default: 3, unless --steps is given)")
    d.add_argument("--steps", type=_positive(int, "--steps"), default=None,
                   help="number of optimizer steps (training stops at whichever of --steps/--minutes comes first)")
    d.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the data split and the model (default: 0)")
    d.add_argument("--heldout", type=_positive(int, "--heldout"), default=1000,
                   help="held-out numbers to evaluate on (default: 1000)")
    d.add_argument("--samples", type=_nonnegative_int, default=8, help="sample translations to print (default: 8)")
    d.add_argument("--no-bar", action="store_true", help="plain progress lines even on a terminal")

    t = sub.add_parser("train", help="train a model from a TOML config and/or flags",
                       description="Train a run: the built-in numbers task (default), parallel text files "
                                   "(--task parallel --src F --tgt F) or a text file for a GPT (--task lm --text F). "
                                   "Flags override the config file; --config multi30k is the Multi30k recipe. The run "
                                   "directory (--out) gets config.toml, metrics.jsonl, checkpoint/, results.json and, "
                                   "for text, tokenizer.json (averaged/ and test.hyp.txt where configured).")
    t.add_argument("--config", metavar="FILE.toml", help="a configuration file (tables [data] [model] [optim] "
                                                         "[train]; see docs/cli.md), or the name of one shipped "
                                                         "with tfm_rs: multi30k (the Multi30k recipe)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint (its "
                                                         "config.toml is the base; flags may extend the budget)")
    t.add_argument("--quiet", action="store_true", help="no progress output, only the summary")
    t.add_argument("--no-bar", action="store_true", help="plain progress lines even on a terminal")
    t.add_argument("--nproc", type=_positive(int, "--nproc"), default=None,
                   help="data-parallel over N local processes: runs this command under mpirun -n N (needs Open "
                        "MPI and mpi4py; docs/distributed.md)")
    cfg_lib.add_flags(t)

    ds = sub.add_parser("distill", help="train a small student from a trained run (knowledge distillation)",
                        description="Knowledge distillation into a new run directory: the student (--preset) trains "
                                    "on the teacher run's data with the word-level loss (T²·KL to the teacher's "
                                    "softened distribution mixed with the cross-entropy) or, with --level sequence, "
                                    "on the teacher's beam-search translations of the training sources.")
    ds.add_argument("--teacher", metavar="RUN_DIR", required=True, help="the trained teacher run")
    ds.add_argument("--out", metavar="RUN_DIR", required=True, help="the student's run directory (new)")
    ds.add_argument("--preset", default="tiny", help="the student's shape (a model preset; default tiny)")
    ds.add_argument("--level", choices=("word", "sequence"), default="word", help="word-level or sequence-level")
    ds.add_argument("--minutes", type=_positive(float, "--minutes"), help="training time budget")
    ds.add_argument("--max-steps", type=_positive(int, "--max-steps"), help="optimizer step budget")
    ds.add_argument("--temperature", type=_positive(float, "--temperature"), default=2.0,
                    help="word level: the softmax temperature T (default 2)")
    ds.add_argument("--alpha", type=float, default=0.5, help="word level: weight of the KL term (default 0.5)")
    ds.add_argument("--beams", type=_positive(int, "--beams"), default=4,
                    help="sequence level: the teacher's beam size (default 4)")
    ds.add_argument("--quiet", action="store_true", help="no progress output, only the summary")
    ds.add_argument("--no-bar", action="store_true", help="plain progress lines even on a terminal")

    tr = sub.add_parser("translate", help="translate sentences with a trained run",
                        description="Translate sentences given as arguments, read from --input FILE, or from stdin "
                                    "(one per line), with the model of RUN_DIR (or of --from-pretrained DIR); prints "
                                    "one translation per line.")
    tr.add_argument("run_dir", metavar="RUN_DIR", nargs="?")
    tr.add_argument("--from-pretrained", metavar="DIR",
                    help="a Hugging Face MarianMTModel directory with tokenizer.json (or opus-mt's source.spm, "
                         "target.spm and vocab.json) instead of RUN_DIR (every positional argument is then a "
                         "sentence)")
    tr.add_argument("sentences", nargs="*", metavar="SENTENCE")
    tr.add_argument("--input", metavar="FILE", help="translate the lines of FILE (plain or .gz)")
    tr.add_argument("--batch-size", type=_positive(int, "--batch-size"), default=64,
                    help="sentences decoded together (default: 64)")
    tr.add_argument("--beam", type=_positive(int, "--beam"), default=1,
                    help="beam size (default: 1, greedy; the paper used 4)")
    tr.add_argument("--int8", action="store_true",
                    help=f"decode with the int8 weights written by '{PROG} quantize RUN_DIR' (--from-pretrained: "
                         "quantized on loading)")

    qz = sub.add_parser("quantize", help="write int8 weights of a trained run (for translate --int8)",
                        description="Quantize the run's model to int8 (tfm_rs.quantization.quantize_dynamic: every "
                                    "linear layer, attention projections and output projection included) and write "
                                    "RUN_DIR/model.int8.safetensors; the float checkpoint stays as it is.")
    qz.add_argument("run_dir", metavar="RUN_DIR")

    g = sub.add_parser("generate", help="continue a prompt with a trained GPT run",
                       description="Sample a continuation of --prompt from the language model of RUN_DIR "
                                   "(a run trained with --task lm).")
    g.add_argument("run_dir", metavar="RUN_DIR", nargs="?")
    g.add_argument("--from-pretrained", metavar="PATH",
                   help="instead of RUN_DIR: a Hugging Face GPT-2 or Llama checkpoint directory, or a Llama .gguf file "
                        "(docs/pretrained.md)")
    g.add_argument("--prompt", default="", help="the text to continue (default: start a new line)")
    g.add_argument("--max-new-tokens", type=_positive(int, "--max-new-tokens"), default=50,
                   help="tokens to generate at most (default: 50)")
    g.add_argument("--temperature", type=_positive(float, "--temperature"), default=1.0,
                   help="sampling temperature (default: 1.0)")
    g.add_argument("--top-k", type=_nonnegative_int, default=0, help="sample among the k likeliest tokens (0: all)")
    g.add_argument("--top-p", type=_probability, default=1.0, help="nucleus sampling mass (default: 1.0, off)")
    g.add_argument("--seed", type=_nonnegative_int, default=None, help="sampling seed (default: random)")
    g.add_argument("--greedy", action="store_true", help="always take the likeliest token (no sampling)")
    g.add_argument("--stream", action="store_true", help="print the text as it is generated")

    e = sub.add_parser("eval", help="score a trained run (BLEU, perplexity, accuracy)",
                       description="Translation runs: translations (greedy, or --beam N) of a test set (--src/--ref, "
                                   "else the config's test files, else the validation or held-out set) scored with "
                                   "sacrebleu "
                                   "BLEU and exact match, plus teacher-forced perplexity and token accuracy. "
                                   "GPT runs: perplexity and next-token accuracy. Writes RUN_DIR/eval.json.")
    e.add_argument("run_dir", metavar="RUN_DIR")
    e.add_argument("--src", metavar="FILE", help="source sentences of a test set")
    e.add_argument("--ref", metavar="FILE", help="their reference translations")
    e.add_argument("--text", metavar="FILE", help="GPT runs: a text file to score")
    e.add_argument("--limit", type=_positive(int, "--limit"), default=None, help="only the first N examples")
    e.add_argument("--beam", type=_positive(int, "--beam"), default=1,
                   help="beam size of the translations (default: 1, greedy)")

    ft = sub.add_parser("finetune", help="fine-tune a pretrained BERT to classify sequences or tokens",
                        description="Fine-tune a Hugging Face BERT checkpoint directory (a bare encoder, or a "
                                    "classifier of the task) on a .jsonl or .csv file with the columns text, "
                                    "optionally text_pair, and label (token classification: words and one tag per "
                                    "word). Writes --out as a Hugging Face checkpoint of "
                                    "BertForSequenceClassification / BertForTokenClassification plus results.json "
                                    "(accuracy; regression: mse; multi-label: f1). See docs/cli.md.")
    ft.add_argument("--from-pretrained", metavar="DIR", required=True,
                    help="a BERT checkpoint directory with config.json, model.safetensors and tokenizer.json")
    ft.add_argument("--data", metavar="FILE", required=True, help="training examples (.jsonl or .csv)")
    ft.add_argument("--valid", metavar="FILE", help="held-out examples: accuracy after every epoch")
    ft.add_argument("--task", required=True, choices=("sequence-classification", "token-classification"))
    ft.add_argument("--problem-type", default=None,
                    choices=("single_label_classification", "regression", "multi_label_classification"),
                    help="sequence classification as Hugging Face's problem_type: one label name per example "
                         "(cross-entropy; the default, or the checkpoint's), one number (regression: mean squared "
                         "error), or a list of label names (multi-label: binary cross-entropy)")
    ft.add_argument("--out", metavar="DIR", required=True, help="where the fine-tuned checkpoint goes")
    ft.add_argument("--epochs", type=_positive(int, "--epochs"), default=None,
                    help="passes over the data (default: 3, or as many as --minutes allows)")
    ft.add_argument("--minutes", type=_positive(float, "--minutes"), default=None,
                    help="training time budget (stops at whichever of --epochs/--minutes comes first)")
    ft.add_argument("--lr", type=_positive(float, "--lr"), default=5e-5, help="peak learning rate (default: 5e-5)")
    ft.add_argument("--batch-size", type=_positive(int, "--batch-size"), default=32,
                    help="examples per step (default: 32)")
    ft.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    ft.add_argument("--seed", type=_nonnegative_int, default=0, help="seed of the shuffling, dropout and new head")

    b = sub.add_parser("bench", help="quick GEMM, attention and training-step benchmark",
                       description="Time tfm_rs's GEMM, fused attention and one training step against NumPy and "
                                   "PyTorch (when importable). A quick check of this machine; the repository's "
                                   "benches/ hold the careful measurements.")
    b.add_argument("cases", nargs="*", metavar="CASE", help="gemm, attention, train_step (default: all)")
    b.add_argument("--repeat", type=_positive(int, "--repeat"), default=5, help="timed calls per case (default: 5)")
    b.add_argument("--size", type=_positive(int, "--size"), default=512, help="GEMM size n (default: 512)")
    b.add_argument("--seq-len", type=_positive(int, "--seq-len"), default=256,
                   help="attention sequence length (default: 256)")
    b.add_argument("--threads", type=_positive(int, "--threads"), default=None, help="tfm_rs (and torch) threads")

    pl = sub.add_parser("plot", help="loss/lr curves, attention heatmaps, positional encodings as PNG",
                        description="Write RUN_DIR/plots/*.png: loss.png and lr.png from metrics.jsonl, "
                                    "positional_encoding.png, and attention heatmaps per layer and head (encoder "
                                    "self-, decoder self- and cross-attention) for --sentence. Needs matplotlib "
                                    "(pip install 'tfm_rs[plot]').")
    pl.add_argument("run_dir", metavar="RUN_DIR", nargs="+",
                    help="a run directory; several with --compare")
    pl.add_argument("--sentence", help="the example for the attention maps (default: the first validation "
                                       "sentence)")
    pl.add_argument("--out", metavar="DIR", help="where to write the PNG files (default: RUN_DIR/plots)")
    pl.add_argument("--compare", metavar="PNG", help="instead: one figure of the losses of every RUN_DIR against "
                                                     "training minutes, written to PNG")

    cl = sub.add_parser("claims", help="check the explainers' claims about Transformers by measurement",
                        description="'tfm-rs claims' lists the claims (with the verdict of the last run in --out); "
                                    "'tfm-rs claims run NAME' (or --all) measures one, prints the figures and the "
                                    "verdict, and writes DIR/NAME/result.json and PNG plots. See docs/claims.md.")
    cl.add_argument("action", nargs="?", choices=["list", "run"], default="list")
    cl.add_argument("name", nargs="?", help="the claim to run (see 'tfm-rs claims')")
    cl.add_argument("--all", action="store_true", help="run every claim")
    cl.add_argument("--quick", action="store_true", help="the small version of each experiment (seconds)")
    cl.add_argument("--out", metavar="DIR", default="claims", help="where results go (default: ./claims)")
    return p


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}") from None
    if not 0.0 < value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


# ---------------------------------------------------------------------------------- info

def cmd_info(args: argparse.Namespace) -> int:
    """``tfm-rs info``: version, Python and NumPy, SIMD path, threads, GPU backend."""
    import platform

    import numpy as np

    import tfm_rs

    feats = tfm_rs.cpu_features()
    print(f"tfm_rs {tfm_rs.__version__}")
    print(f"python {platform.python_version()} ({sys.executable}), numpy {np.__version__}")
    print(f"platform: {platform.system()} {feats.get('arch', platform.machine())}")
    forced = f" (forced by TFM_RS_ISA={feats['forced_by_env']})" if feats.get("forced_by_env") else ""
    print(f"SIMD path: {feats['isa']}{forced}; supported here: {', '.join(feats.get('supported', []))}")
    print(f"threads: {tfm_rs.get_num_threads()}")
    print(f"GPU backend: {_gpu_backend()}")
    return 0


def _gpu_backend() -> str:
    import tfm_rs

    probe = getattr(tfm_rs, "gpu_available", None)
    if probe is None or not hasattr(tfm_rs._core, "_gpu_time_matmul"):
        return "not built (tfm_rs was built without the cargo feature 'wgpu')"
    try:
        if not probe():
            return f"built (wgpu), no device: {tfm_rs.gpu_info(reason=True)}"
        info = tfm_rs.gpu_info()
        return f"wgpu, {info['name']} ({info['backend']}, {info['device_type']})"
    except Exception as e:  # pragma: no cover - a driver failing in an unforeseen way
        return f"built (wgpu), unavailable ({type(e).__name__}: {e})"


# ---------------------------------------------------------------------------------- demo

def cmd_demo(args: argparse.Namespace) -> int:
    """``tfm-rs demo``: the numbers task with the default configuration, no run directory."""
    import numpy as np

    import tfm_rs
    from tfm_rs import config as cfg_lib
    from tfm_rs import runs
    from tfm_rs.progress import Progress
    from tfm_rs.tasks.numbers import format_digits

    minutes = args.minutes if args.minutes is not None else (None if args.steps is not None else 3.0)
    t_start = time.perf_counter()
    cfg = cfg_lib.resolve({"data": {"task": "numbers", "lang": args.lang, "num_heldout": args.heldout},
                           "train": {"seed": args.seed, "max_steps": args.steps, "minutes": minutes}})
    data = runs.prepare_data(cfg)
    task = data.task
    model = runs.build_model(cfg, data)
    trainer = runs.make_trainer(cfg, data, model, None)
    feats = tfm_rs.cpu_features()
    budget = " and ".join(s for s in (f"{args.steps} steps" if args.steps else "",
                                       f"{minutes:g} min" if minutes else "") if s)
    example = task.heldout_numbers[len(task.heldout_numbers) // 2] if task.heldout_numbers else 3452
    print(f"tfm_rs {tfm_rs.__version__}: SIMD path {feats['isa']}, {tfm_rs.get_num_threads()} threads")
    print(f"task: numbers in digits -> words ({args.lang}), e.g. \"{format_digits(example)}\" -> "
          f"\"{task.spell(example)}\"")
    print(f"data: {len(task.train_numbers)} training numbers, {len(task.heldout_numbers)} held out (seed {args.seed}); "
          f"vocabularies {len(task.src_vocab)} / {len(task.tgt_vocab)}")
    print(f"model: d_model 128, 4 heads, 2+2 layers, {model.num_parameters():,} parameters; training for {budget}",
          flush=True)

    # Schedule: linear warmup, then cosine decay to the end of the budget (steps or minutes,
    # whichever runs out first): on a short budget the last weights are the least noisy.
    progress = Progress(args.steps, 60.0 * minutes if minutes else None, use_bar=not args.no_bar)
    try:
        trainer.train(verbose=False, callback=lambda r: progress(r, done=trainer.done()))
    finally:
        progress.close()
    train_time = trainer.train_time
    rate = trainer.tokens_seen / max(train_time, 1e-9)
    print(f"trained {trainer.step} steps in {train_time:.1f}s ({rate:,.0f} tok/s)", flush=True)

    t0 = time.perf_counter()
    sources, refs = data.valid_texts
    hyps = runs.translate_sentences(model, task.tokenizer, sources, task=task, batch_size=250)
    correct = np.array([h == r for h, r in zip(hyps, refs)], dtype=bool)
    eval_time = time.perf_counter() - t0
    if args.samples:
        rng = np.random.default_rng(args.seed + 1)
        picks = rng.choice(len(sources), size=min(args.samples, len(sources)), replace=False)
        print("samples (held out):")
        width = max(len(sources[i]) for i in picks)
        for i in sorted(picks, key=lambda i: task.heldout_numbers[i]):
            mark = "ok" if correct[i] else f"WRONG, expected \"{refs[i]}\""
            print(f"  {sources[i]:>{width}} -> {hyps[i]}  [{mark}]")
    print(f"held-out exact match: {correct.mean():.1%} ({int(correct.sum())}/{len(correct)}), "
          f"greedy decoding {eval_time:.1f}s; total {time.perf_counter() - t_start:.1f}s")
    return 0


# ---------------------------------------------------------------------------------- train

def cmd_train(args: argparse.Namespace, command: Optional[Sequence[str]] = None) -> int:
    """``tfm-rs train``: defaults < the run's saved config (``--resume``) < ``--config`` < flags.
    ``--config NAME`` that is not a file names a shipped configuration (``multi30k``);
    ``command``: the arguments, recorded in results.json."""
    from pathlib import Path

    from tfm_rs import config as cfg_lib
    from tfm_rs import runs

    if args.nproc is not None:
        return launch_mpirun(args.nproc, ["train", *_without_nproc(command or [])])
    flags = cfg_lib.flag_values(args)
    config_path = args.config
    if config_path and not Path(config_path).is_file() and cfg_lib.shipped_config(config_path):
        config_path = str(cfg_lib.shipped_config(config_path))
        print(f"config: {config_path} (shipped with tfm_rs)")
    file_cfg = cfg_lib.load_toml(config_path) if config_path else None
    base = None
    if args.resume:
        out = flags.get("train", {}).get("out") or (file_cfg or {}).get("train", {}).get("out")
        if not out:
            raise UsageError("--resume needs the run directory: --out RUN_DIR")
        saved = Path(out) / runs.CONFIG_FILE
        if saved.is_file():
            base = cfg_lib.load_toml(saved)
        else:  # a run of the former recipe script keeps its command instead
            base = runs.legacy_recipe_config(Path(out))
            if base is None:
                raise FileNotFoundError(f"nothing to resume in {out}: no {runs.CONFIG_FILE} there")
        given = {**(file_cfg or {}).get("train", {}), **flags.get("train", {})}
        if "max_steps" in given or "minutes" in given:  # a new budget replaces the saved one
            for key in ("max_steps", "minutes"):
                base.get("train", {}).pop(key, None)
    cfg = cfg_lib.resolve(base, file_cfg, flags, sources=[str(saved) if base else None, config_path, None],
                          base_dirs=[None, Path(config_path).parent if config_path else None, None])
    summary = runs.train_run(cfg, resume=args.resume, quiet=args.quiet, use_bar=not args.no_bar,
                             command=" ".join([PROG, "train", *(command or [])]))
    run_dir = summary["run_dir"]
    if summary.get("rank", 0) != 0:
        return 0
    if cfg["data"]["task"] == "lm":
        print(f"next: {PROG} generate {run_dir} --prompt \"...\"   |   {PROG} eval {run_dir}   |   "
              f"{PROG} plot {run_dir}")
    else:
        example = "\"3 452\"" if cfg["data"]["task"] == "numbers" else "\"a sentence\""
        print(f"next: {PROG} translate {run_dir} {example}   |   {PROG} eval {run_dir}   |   {PROG} plot {run_dir}")
    return 0


def _without_nproc(argv: Sequence[str]) -> List[str]:
    out: List[str] = []
    skip = False
    for a in argv:
        if skip:
            skip = False
        elif a == "--nproc":
            skip = True
        elif not a.startswith("--nproc="):
            out.append(a)
    return out


def launch_mpirun(nproc: int, argv: Sequence[str]) -> int:
    """Run ``tfm-rs ARGV`` as ``nproc`` local MPI processes (``mpirun -n nproc``) and return the
    job's exit status. Each process gets ``cores / nproc`` threads unless ``TFM_RS_NUM_THREADS``
    is set; running as root (containers) is allowed through Open MPI's variables; more processes
    than cores are allowed (oversubscription)."""
    import os
    import shutil
    import subprocess

    from tfm_rs import distributed as dist

    if dist.launched_world_size() > 1:
        raise UsageError("--nproc inside an MPI job: either mpirun -n N tfm-rs train … or tfm-rs train --nproc N")
    mpirun = shutil.which("mpirun")
    if mpirun is None:
        raise UsageError("--nproc needs MPI's mpirun, which is not on PATH (Open MPI: apt-get install openmpi-bin "
                         "libopenmpi-dev; then pip install mpi4py)")
    if not dist.is_available():
        raise UsageError("--nproc needs mpi4py (pip install mpi4py)")
    env = dict(os.environ)
    env.setdefault("TFM_RS_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env.setdefault("OMPI_MCA_rmaps_base_oversubscribe", "1")
    if hasattr(os, "geteuid") and os.geteuid() == 0:  # Open MPI refuses root without these
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    cmd = [mpirun, "-n", str(nproc), "--bind-to", "none", sys.executable, "-m", "tfm_rs", *argv]
    threads = env["TFM_RS_NUM_THREADS"]
    print(f"{PROG}: launching {nproc} processes (TFM_RS_NUM_THREADS={threads} each): " + " ".join(cmd), flush=True)
    return subprocess.call(cmd, env=env)


def _abort_peers(message: str) -> None:
    """Under MPI, end the other ranks now rather than leave them waiting on this one."""
    from tfm_rs import distributed as dist

    if dist.get_world_size() > 1:
        dist.abort(message)


# ---------------------------------------------------------------------------------- using a run

def _input_lines(args: argparse.Namespace) -> List[str]:
    from tfm_rs.data import read_lines

    if args.sentences and args.input:
        raise UsageError("give sentences as arguments or --input FILE, not both")
    if args.sentences:
        return list(args.sentences)
    if args.input:
        from pathlib import Path

        if not Path(args.input).is_file():
            raise FileNotFoundError(f"no such file: {args.input}")
        return read_lines(args.input)
    if sys.stdin.isatty():
        print("reading sentences from stdin, one per line (Ctrl-D to end)", file=sys.stderr)
    return [line.rstrip("\n").rstrip("\r") for line in sys.stdin]


def cmd_translate(args: argparse.Namespace) -> int:
    """``tfm-rs translate``: one translation per input line, in order."""
    from tfm_rs import runs

    if args.from_pretrained:
        return _translate_pretrained(args)
    if args.run_dir is None:
        raise UsageError("translate needs RUN_DIR or --from-pretrained DIR")
    run = runs.load_run(args.run_dir, need_valid=False)
    if run.kind != "seq2seq":
        raise UsageError(f"{args.run_dir} is a language model; use '{PROG} generate'")
    model = run.model
    if args.int8:
        from pathlib import Path

        from tfm_rs.quantization import load_quantized

        path = Path(args.run_dir) / INT8_FILE
        if not path.is_file():
            raise UsageError(f"{path} does not exist: run '{PROG} quantize {args.run_dir}' first")
        model = load_quantized(model, path)
    sentences = _input_lines(args)
    for hyp in runs.translate_sentences(model, run.tokenizer, sentences, task=run.data.task,
                                        batch_size=args.batch_size, num_beams=args.beam):
        print(hyp, flush=False)
    sys.stdout.flush()
    return 0


def _translate_pretrained(args: argparse.Namespace) -> int:
    """``tfm-rs translate --from-pretrained DIR``: a MarianMTModel directory (int8: quantized on load)."""
    from tfm_rs import runs
    from tfm_rs.data import Tokenizer
    from tfm_rs.models import Seq2SeqTransformer
    from tfm_rs.pretrained import MarianTokenizer

    model = Seq2SeqTransformer.from_pretrained(args.from_pretrained)
    tokenizer = model.tokenizer
    if tokenizer is None:
        raise UsageError(f"{args.from_pretrained} has no tokenizer.json (nor source.spm, target.spm and vocab.json); "
                         "translate reads and writes text")
    if not isinstance(tokenizer, MarianTokenizer):  # tokenizer.json's, which knows no special tokens by role
        name = tokenizer.id_to_token
        tokenizer = Tokenizer(tokenizer, pad_token=name(model.pad_id), bos_token=name(model.bos_id),
                              eos_token=name(model.eos_id))
    if args.int8:
        from tfm_rs.quantization import quantize_dynamic

        model = quantize_dynamic(model, inplace=True)
    args.sentences = ([args.run_dir] if args.run_dir else []) + list(args.sentences)
    for hyp in runs.translate_sentences(model, tokenizer, _input_lines(args), batch_size=args.batch_size,
                                        num_beams=args.beam):
        print(hyp, flush=False)
    sys.stdout.flush()
    return 0


INT8_FILE = "model.int8.safetensors"


def cmd_quantize(args: argparse.Namespace) -> int:
    """``tfm-rs quantize``: RUN_DIR/model.int8.safetensors from the run's model."""
    from pathlib import Path

    import numpy as np

    from tfm_rs import runs
    from tfm_rs.quantization import quantize_dynamic, save_quantized

    run = runs.load_run(args.run_dir, need_valid=False)
    float_bytes = sum(int(np.prod(p.shape)) * 4 for p in run.model.parameters())
    model = quantize_dynamic(run.model, inplace=True)
    path = Path(args.run_dir) / INT8_FILE
    save_quantized(model, path)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB; float32 parameters {float_bytes / 1e6:.1f} MB); "
          f"translate with: {PROG} translate {args.run_dir} --int8")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    """``tfm-rs generate``: a continuation of the prompt, printed after it."""
    from tfm_rs import runs

    if args.from_pretrained:
        from tfm_rs.models.auto import generate_pretrained_text

        if args.run_dir:
            raise UsageError("give RUN_DIR or --from-pretrained PATH, not both")
        print(args.prompt + generate_pretrained_text(
            args.from_pretrained, args.prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
            top_p=args.top_p, seed=args.seed, greedy=args.greedy))
        return 0
    if not args.run_dir:
        raise UsageError("generate needs RUN_DIR or --from-pretrained PATH")
    run = runs.load_run(args.run_dir, need_valid=False)
    if run.kind != "lm":
        raise UsageError(f"{args.run_dir} is a translation model; use '{PROG} translate'")
    search = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
                  greedy=args.greedy)
    if args.stream:
        print(args.prompt, end="", flush=True)
        first = True
        for piece in runs.stream_text(run.model, run.tokenizer, args.prompt, args.max_new_tokens, **search):
            print(_joiner(args.prompt, piece) if first else "", piece, sep="", end="", flush=True)
            first = False
        print()
        return 0
    text = runs.generate_text(run.model, run.tokenizer, args.prompt, args.max_new_tokens, **search)
    print(f"{args.prompt}{_joiner(args.prompt, text)}{text}")
    return 0


def _joiner(prompt: str, text: str) -> str:
    """A space between the prompt and its continuation when neither side has one (the
    tokenizer's decode drops the word boundary at the start of the continuation)."""
    return " " if prompt and text and not text[0].isspace() and not prompt[-1].isspace() else ""


def cmd_eval(args: argparse.Namespace) -> int:
    """``tfm-rs eval``: scores printed, and saved to RUN_DIR/eval.json."""
    from tfm_rs import runs

    run = runs.load_run(args.run_dir)
    if run.kind == "lm" and (args.src or args.ref):
        raise UsageError("--src/--ref are for translation runs; use --text FILE for a language model")
    if run.kind == "seq2seq" and args.text:
        raise UsageError("--text is for language-model runs; use --src FILE --ref FILE")
    if run.kind == "lm" and args.beam != 1:
        raise UsageError("--beam is for translation runs")
    res = runs.evaluate_run(run, args.src, args.ref, args.text, args.limit, num_beams=args.beam)
    if run.kind == "seq2seq":
        print(f"{res['set']}: {res['sentences']} sentences")
        for ex in res["examples"][:3]:
            print(f"  {ex['source']} -> {ex['hypothesis']}   (reference: {ex['reference']})")
        print(f"BLEU {res['bleu']:.2f}  exact match {res['exact_match']:.1%}  perplexity {res['ppl']:.3f}  "
              f"token accuracy {res['accuracy']:.1%}  ({res['seconds']:.1f}s)")
    else:
        print(f"{res['set']}: {res['tokens']:,} tokens")
        print(f"perplexity {res['ppl']:.3f}  next-token accuracy {res['accuracy']:.1%}  ({res['seconds']:.1f}s)")
    print(f"saved {run.dir / 'eval.json'}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    """``tfm-rs bench``: the in-package quick benchmark."""
    import tfm_rs
    from tfm_rs import bench

    if args.threads:
        tfm_rs.set_num_threads(args.threads)
    cases = args.cases or list(bench.CASES)
    bad = [c for c in cases if c not in bench.CASES]
    if bad:
        raise UsageError(f"unknown benchmark {bad[0]!r}; one of {', '.join(bench.CASES)}")
    results = bench.run(cases, repeat=args.repeat, gemm_size=args.size, seq_len=args.seq_len)
    for line in bench.format_results(results):
        print(line)
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    """``tfm-rs plot``: PNG files into RUN_DIR/plots (or --out)."""
    from pathlib import Path

    from tfm_rs import plots, runs

    try:
        if args.compare:
            records = {Path(d).name: runs.read_metrics(d) for d in args.run_dir}
            print(f"wrote {plots.plot_compare(records, Path(args.compare))}")
            return 0
        if len(args.run_dir) > 1:
            raise UsageError("several RUN_DIRs need --compare PNG")
        files, example = plots.plot_run(args.run_dir[0], sentence=args.sentence, out_dir=args.out)
    except plots.PlotError as e:
        raise UsageError(str(e)) from None
    folder = files[0].parent if files else args.out
    print(f"wrote {len(files)} plots to {folder}: {', '.join(f.name for f in files)}")
    print(f"attention maps of {example}")
    return 0


# ---------------------------------------------------------------------------------- main

def cmd_finetune(args: argparse.Namespace) -> int:
    """``tfm-rs finetune``: a fine-tuned checkpoint directory and its results.json."""
    from tfm_rs.train.finetune import finetune

    res = finetune(args.from_pretrained, args.data, args.task, args.out, valid_path=args.valid, epochs=args.epochs,
                   minutes=args.minutes, lr=args.lr, batch_size=args.batch_size, weight_decay=args.weight_decay,
                   seed=args.seed, problem_type=args.problem_type)
    metric = {"regression": "mse", "multi_label_classification": "f1_micro"}.get(res["problem_type"], "accuracy")
    shown = (lambda v: f"{v:.4f}") if metric == "mse" else (lambda v: f"{v:.1%}")
    held_out = "" if res[f"valid_{metric}"] is None else f", held-out {metric} {shown(res[f'valid_{metric}'])}"
    print(f"{res['train_examples']} examples, {res['epochs']} epochs, {res['steps']} steps in {res['seconds']:.0f}s: "
          f"training {metric} {shown(res[f'train_{metric}'])}{held_out}")
    print(f"saved {args.out} (Hugging Face layout) and {args.out}/results.json")
    return 0


def cmd_distill(args: argparse.Namespace, command: Optional[Sequence[str]] = None) -> int:
    """``tfm-rs distill``: a student run trained from a teacher run."""
    from pathlib import Path

    from tfm_rs.runs import CHECKPOINT_DIR
    from tfm_rs.train.distill import distill_run

    if (Path(args.out) / CHECKPOINT_DIR).exists():
        raise UsageError(f"{args.out} already holds a trained run; choose another --out")
    distill_run(args.teacher, args.out, preset=args.preset, level=args.level, minutes=args.minutes,
                max_steps=args.max_steps, temperature=args.temperature, alpha=args.alpha, num_beams=args.beams,
                quiet=args.quiet, use_bar=not args.no_bar, command=" ".join([PROG, "distill", *(command or [])]))
    print(f"next: {PROG} eval {args.out}   |   {PROG} translate {args.out} \"...\"")
    return 0


def cmd_claims(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from tfm_rs import claims

    out = Path(args.out)
    if args.action == "list":
        if args.name or args.all:
            raise UsageError("'tfm-rs claims' lists; use 'tfm-rs claims run NAME' or 'tfm-rs claims run --all'")
        for claim in claims.CLAIMS.values():
            saved = out / claim.name / "result.json"
            verdict = json.loads(saved.read_text())["verdict"] if saved.is_file() else "not run"
            print(f"{claim.number:>3}  {claim.name:<32} {verdict:<11} {claim.statement}")
        return 0
    if args.all == bool(args.name):
        raise UsageError("'tfm-rs claims run' takes one claim NAME or --all")
    names = list(claims.CLAIMS) if args.all else [args.name]
    for name in names:
        result = claims.run(name, quick=args.quick, out=out / name)
        print(f"{name}: {result.verdict}  ({result.seconds:.1f} s{', quick' if result.quick else ''})")
        print(f"  {result.summary}")
        if result.not_measured:
            print(f"  not measured yet: {'; '.join(result.not_measured)}")
        print(f"  written: {out / name / 'result.json'}" + "".join(f", {out / name / p}" for p in result.plots
                                                                  if p.endswith(".png")))
    return 0


COMMANDS = {"info": cmd_info, "demo": cmd_demo, "train": cmd_train, "translate": cmd_translate,
            "generate": cmd_generate, "eval": cmd_eval, "bench": cmd_bench, "plot": cmd_plot,
            "claims": cmd_claims, "quantize": cmd_quantize, "finetune": cmd_finetune}


def _one_line(e: BaseException) -> str:
    """An exception's message on one line (checkpoint mismatches list one difference a line)."""
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    if not lines:
        return type(e).__name__
    return lines[0] + (" " + "; ".join(lines[1:]) if len(lines) > 1 else "")


def _is_device_error(e: BaseException) -> bool:
    from tfm_rs._core import DeviceError

    return isinstance(e, DeviceError)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``tfm-rs``; returns (and, as a console script, exits with) the status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if extra and args.command == "translate" and not any(a.startswith("-") for a in extra):
            args.sentences += extra  # sentences after an option: tfm-rs translate RUN --beam 4 "a b"
        elif extra:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.version:
            import tfm_rs
            print(f"tfm_rs {tfm_rs.__version__}")
            return 0
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        if args.command == "train":
            return cmd_train(args, argv[1:])
        if args.command == "distill":
            return cmd_distill(args, argv[1:])
        return COMMANDS[args.command](args)
    except UsageError as e:
        if debug:
            raise
        print(f"{PROG}: error: {e} (see '{PROG} --help')", file=sys.stderr)
        _abort_peers("usage error")
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError, OSError, LookupError) as e:
        # Bad values, a bad config key, a missing or unreadable file, an unknown name.
        if debug:
            raise
        print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
        _abort_peers(_one_line(e))
        return EXIT_USAGE
    except Exception as e:
        if debug:
            raise
        if _is_device_error(e):  # --device gpu without a GPU: the user's choice, not a crash
            print(f"{PROG}: error: {_one_line(e)}", file=sys.stderr)
            return EXIT_USAGE
        print(f"{PROG}: error: {type(e).__name__}: {_one_line(e)} (run with --debug for the traceback)",
              file=sys.stderr)
        _abort_peers(f"{type(e).__name__}: {_one_line(e)}")
        return 1


def _console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _console()
