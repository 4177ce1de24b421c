"""The ``tfm-rs`` command line (also ``python -m tfm_rs``).

Commands:

* ``tfm-rs info``: version, SIMD path, threads, GPU backend.
* ``tfm-rs demo [--lang en|fr|de] [--minutes N] [--steps N] [--seed S]``: trains a small
  encoder-decoder to write numbers out in words (:mod:`tfm_rs.tasks.numbers`), then prints sample
  translations and the exact-match accuracy on held-out numbers.

User errors (a bad flag value, an unknown language) print one line and exit with status 2; add
``--debug`` (anywhere on the line) for the traceback.
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
    from tfm_rs.tasks.numbers import LANGUAGES

    p = _Parser(prog=PROG, description="tfm_rs: a Transformer on a Rust core with SIMD kernels.",
                epilog="Add --debug anywhere for a full traceback on errors.")
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
    return p


# ---------------------------------------------------------------------------------- info

def cmd_info(args: argparse.Namespace) -> int:
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
    if probe is None or getattr(tfm_rs._core, "gpu", None) is None:
        return "not built (tfm_rs was built without the cargo feature 'wgpu')"
    try:
        if not probe():
            return f"built (wgpu), no device: {tfm_rs.gpu_info(reason=True)}"
        info = tfm_rs.gpu_info()
        return f"wgpu, {info['name']} ({info['backend']}, {info['device_type']})"
    except Exception as e:  # pragma: no cover - a driver failing in an unforeseen way
        return f"built (wgpu), unavailable ({type(e).__name__}: {e})"


# ---------------------------------------------------------------------------------- demo

class _Progress:
    """tqdm on a terminal when importable, else a plain line every so often."""

    def __init__(self, total_steps: Optional[int], seconds: Optional[float], use_bar: bool) -> None:
        self.total_steps, self.seconds = total_steps, seconds
        self.bar = None
        if use_bar and sys.stderr.isatty():
            try:
                from tqdm import tqdm
                if total_steps is None and seconds:  # a time budget: the bar fills with training seconds
                    self.bar = tqdm(total=round(seconds), unit="s", dynamic_ncols=True, leave=True,
                                    bar_format="{l_bar}{bar}| {n:.0f}/{total_fmt}s [{elapsed}<{remaining}{postfix}]")
                else:
                    self.bar = tqdm(total=total_steps, unit="step", dynamic_ncols=True, leave=True)
            except ImportError:
                pass
        self.last_print = -1.0
        self.window: List[dict] = []

    def update(self, rec: dict, done: bool) -> None:
        self.window.append(rec)
        tok = sum(r["tokens"] for r in self.window)
        sec = sum(r["step_time"] for r in self.window) or 1e-9
        loss = sum(r["loss"] for r in self.window) / len(self.window)
        if self.bar is not None:
            if self.bar.unit == "s":
                self.bar.update(min(rec["step_time"], self.bar.total - self.bar.n))
            else:
                self.bar.update(1)
            if rec["step"] % 5 == 0 or done:
                self.bar.set_postfix_str(f"step {rec['step']}  loss {loss:.3f}  lr {rec['lr']:.1e}  "
                                         f"{tok / sec:,.0f} tok/s")
                self.window = []
            return
        # Plain lines: about every 10 s of training, and at the first and last step.
        t = rec["train_time"]
        if rec["step"] == 1 or done or t - self.last_print >= 10.0:
            self.last_print = t
            of = f"/{self.total_steps}" if self.total_steps else ""
            print(f"step {rec['step']:5d}{of}  loss {loss:.3f}  lr {rec['lr']:.2e}  {tok / sec:7,.0f} tok/s  "
                  f"{t:5.1f}s", flush=True)
            self.window = []

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def cmd_demo(args: argparse.Namespace) -> int:
    import numpy as np

    import tfm_rs
    from tfm_rs import nn
    from tfm_rs.models import Seq2SeqTransformer
    from tfm_rs.tasks.numbers import NumbersTask, format_digits
    from tfm_rs.train.greedy import translate
    from tfm_rs.train.trainer import Seq2SeqTrainer, TrainConfig

    minutes = args.minutes if args.minutes is not None else (None if args.steps is not None else 3.0)
    t_start = time.perf_counter()
    tfm_rs.manual_seed(args.seed)
    nn.init.manual_seed(args.seed)
    task = NumbersTask(args.lang, num_train=20000, num_heldout=args.heldout, seed=args.seed)
    model = Seq2SeqTransformer(len(task.src_vocab), len(task.tgt_vocab), d_model=128, nhead=4, num_encoder_layers=2,
                               num_decoder_layers=2, dim_feedforward=512, dropout=0.0, max_len=32)
    config = TrainConfig(max_tokens=2500, lr=2e-3, warmup_steps=150, label_smoothing=0.1, clip_norm=1.0,
                         seed=args.seed, max_steps=args.steps, max_minutes=minutes, print_every=0)
    trainer = Seq2SeqTrainer(model, task.train_pairs(), config)
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

    progress = _Progress(args.steps, 60.0 * minutes if minutes else None, use_bar=not args.no_bar)
    # Schedule: linear warmup, then cosine decay to zero at the end of the budget (steps or
    # minutes, whichever runs out first), set before each step (the trainer's own inverse-sqrt
    # schedule keeps the learning rate high, and the last weights noisy, on a short budget).
    peak, warmup = config.lr, config.warmup_steps
    try:
        while not trainer._done():
            frac = 0.0
            if args.steps:
                frac = trainer.step / args.steps
            if minutes:
                frac = max(frac, trainer.train_time / (60.0 * minutes))
            lr = peak * min(1.0, (trainer.step + 1) / warmup) * 0.5 * (1.0 + math.cos(math.pi * min(frac, 1.0)))
            for group in trainer.optimizer.param_groups:
                group["lr"] = max(lr, peak * 1e-3)
            rec = trainer.train_step()
            progress.update(rec, trainer._done())
    finally:
        progress.close()
    train_time = trainer.train_time
    rate = trainer.tokens_seen / max(train_time, 1e-9)
    print(f"trained {trainer.step} steps in {train_time:.1f}s ({rate:,.0f} tok/s)", flush=True)

    t0 = time.perf_counter()
    sources = [format_digits(n) for n in task.heldout_numbers]
    refs = [task.spell(n) for n in task.heldout_numbers]
    hyps = translate(model, task.tokenizer, sources, batch_size=250, max_len=task.max_target_len() + 2)
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


# ---------------------------------------------------------------------------------- main

COMMANDS = {"info": cmd_info, "demo": cmd_demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of ``tfm-rs``; returns (and, as a console script, exits with) the status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.version:
            import tfm_rs
            print(f"tfm_rs {tfm_rs.__version__}")
            return 0
        if args.command is None:
            parser.print_help()
            return EXIT_USAGE
        return COMMANDS[args.command](args)
    except UsageError as e:
        if debug:
            raise
        print(f"{PROG}: error: {e} (see '{PROG} --help')", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, TypeError) as e:
        if debug:
            raise
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:
        if debug:
            raise
        print(f"{PROG}: error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return 1


def _console() -> None:
    sys.exit(main())


if __name__ == "__main__":
    _console()
