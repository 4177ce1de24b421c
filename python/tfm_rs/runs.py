"""Run directories: what ``tfm-rs train`` writes and ``translate``/``generate``/``eval``/``plot`` read.

A run directory holds::

    config.toml      the resolved configuration (absolute paths); `tfm-rs train --config` repeats it
    tokenizer.json   the tokenizer (text tasks; the numbers task has fixed vocabularies)
    metrics.jsonl    one JSON object per logged step, validation and evaluation
    checkpoint/      model, optimizer, schedule, data position, RNG states (exact resume)
    averaged/        the averaged weights (train.average > 1); translate/eval/plot use them
    results.json     the run's summary: steps, speed, validation, test BLEU (beam and greedy)
    test.hyp.txt     the test set's beam-search translations (with a test set)
    eval.json        the last `tfm-rs eval` results

The pieces are functions over a resolved configuration (:mod:`tfm_rs.config`):
:func:`prepare_data` (task → token ids and a tokenizer), :func:`build_model`,
:func:`make_trainer` (a :class:`~tfm_rs.train.Seq2SeqTrainer` or
:class:`~tfm_rs.train.LMTrainer`), :func:`train_run` (all of it, with progress and checkpoints),
:func:`load_run` (a trained model back with its tokenizer), :func:`translate_sentences` (the one
place that decodes translations) and :func:`evaluate_run`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import tfm_rs
from tfm_rs import config as cfg_lib
from tfm_rs.config import ConfigError

__all__ = ["Data", "LoadedRun", "build_model", "evaluate_run", "generate_text", "load_run", "make_trainer",
           "prepare_data", "stream_text", "train_run", "translate_sentences"]

Config = Dict[str, Dict[str, Any]]
CONFIG_FILE = "config.toml"
TOKENIZER_FILE = "tokenizer.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"
AVERAGED_DIR = "averaged"
RESULTS_FILE = "results.json"


@dataclass
class Data:
    """A task's data as token ids, and how to turn text into ids and back.

    ``kind`` is ``"seq2seq"`` (``train``/``valid`` are ``(src_ids, tgt_ids)``) or ``"lm"``
    (``train``/``valid`` are flat id streams). ``valid_texts`` is ``(sources, references)`` for
    BLEU and samples; ``sample_text`` a validation line of a language model. ``tokenizer`` has
    ``encode_batch`` and ``decode`` (a :class:`~tfm_rs.data.Tokenizer`, or the numbers task's
    adapter); ``task`` is the :class:`~tfm_rs.tasks.numbers.NumbersTask` for the built-in task.
    """

    kind: str
    tokenizer: Any
    train: Any
    valid: Any = None
    valid_texts: Optional[Tuple[List[str], List[str]]] = None
    task: Any = None
    src_vocab_size: int = 0
    tgt_vocab_size: int = 0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2
    info: Dict[str, Any] = field(default_factory=dict)
    sample_text: Optional[str] = None


def _file(cfg: Config, key: str) -> Path:
    value = cfg["data"][key]
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {value} (data.{key})")
    return path


def _valid_count(cfg: Config, n: int) -> int:
    size = cfg["data"]["valid_size"] or min(1000, n // 20)
    if not 0 < size < n:
        raise ConfigError(f"cannot hold out {size} of {n} training lines for validation; give validation files "
                          "or set data.valid_size")
    return size


def _tokenizer(cfg: Config, run_dir: Optional[Path], texts: Sequence[str]) -> Any:
    """The configured tokenizer file, else the run's, else one trained on ``texts`` (saved in the run)."""
    from tfm_rs.data import run_tokenizer, train_tokenizer

    d = cfg["data"]
    return run_tokenizer(run_dir / TOKENIZER_FILE if run_dir is not None else None,
                         _file(cfg, "tokenizer") if d["tokenizer"] else None,
                         lambda: train_tokenizer([], d["vocab_size"], kind=d["tokenizer_kind"],
                                                 lowercase=d["lowercase"], min_frequency=2, texts=iter(texts)))


def prepare_data(cfg: Config, run_dir: Optional[Path] = None, need_train: bool = True) -> Data:
    """Read (or generate) the configured task's data and tokenize it. A tokenizer trained here is
    saved into ``run_dir``. ``need_train=False`` skips tokenizing the training data (a loaded run
    needs only the tokenizer and the validation data)."""
    task = cfg["data"]["task"]
    if task == "numbers":
        return _numbers_data(cfg)
    if task == "parallel":
        return _parallel_data(cfg, run_dir, need_train)
    return _lm_data(cfg, run_dir, need_train)


def _numbers_data(cfg: Config) -> Data:
    from tfm_rs.tasks.numbers import PAD, BOS, EOS, NumbersTask, format_digits

    d = cfg["data"]
    try:
        task = NumbersTask(d["lang"], num_train=d["num_train"], num_heldout=d["num_heldout"], seed=cfg["train"]["seed"])
    except ValueError as e:
        raise ConfigError(f"data.num_train/num_heldout: {e}") from None
    texts = ([format_digits(n) for n in task.heldout_numbers], [task.spell(n) for n in task.heldout_numbers])
    return Data("seq2seq", task.tokenizer, task.train_pairs(), task.heldout_pairs(), texts, task,
                len(task.src_vocab), len(task.tgt_vocab), PAD, BOS, EOS,
                {"train": len(task.train_numbers), "valid": len(task.heldout_numbers)})


def _parallel_data(cfg: Config, run_dir: Optional[Path], need_train: bool) -> Data:
    from tfm_rs.data import ParallelCorpus

    d = cfg["data"]
    train = ParallelCorpus(_file(cfg, "src"), _file(cfg, "tgt"))
    src, tgt = list(train.src), list(train.tgt)
    if d["valid_src"]:
        valid = ParallelCorpus(_file(cfg, "valid_src"), _file(cfg, "valid_tgt"))
        vsrc, vtgt = list(valid.src), list(valid.tgt)
    else:  # the last lines, so the split is the same every time the run is read
        k = _valid_count(cfg, len(src))
        src, vsrc, tgt, vtgt = src[:-k], src[-k:], tgt[:-k], tgt[-k:]
    tok = _tokenizer(cfg, run_dir, src + tgt)
    train_ids = (tok.encode_batch(src), tok.encode_batch(tgt)) if need_train else None
    valid_ids = (tok.encode_batch(vsrc), tok.encode_batch(vtgt))
    return Data("seq2seq", tok, train_ids, valid_ids, (vsrc, vtgt), None, tok.vocab_size, tok.vocab_size,
                tok.pad_id, tok.bos_id, tok.eos_id, {"train": len(src), "valid": len(vsrc)})


def stream_ids(tok: Any, lines: Sequence[str]) -> List[int]:
    """One id stream of ``lines``, each followed by EOS (the line separator a generator learns)."""
    out: List[int] = []
    for ids in tok.encode_batch(list(lines)):
        out.extend(ids)
        out.append(tok.eos_id)
    return out


def _lm_data(cfg: Config, run_dir: Optional[Path], need_train: bool) -> Data:
    from tfm_rs.data import read_lines

    d = cfg["data"]
    lines = [line for line in read_lines(_file(cfg, "text")) if line.strip()]
    if d["valid_text"]:
        valid = [line for line in read_lines(_file(cfg, "valid_text")) if line.strip()]
    else:
        k = _valid_count(cfg, len(lines))
        lines, valid = lines[:-k], lines[-k:]
    tok = _tokenizer(cfg, run_dir, lines)
    return Data("lm", tok, stream_ids(tok, lines) if need_train else None, stream_ids(tok, valid), None, None,
                tok.vocab_size, tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id,
                {"train": len(lines), "valid": len(valid)}, valid[0] if valid else None)


def build_model(cfg: Config, data: Data) -> Any:
    """A fresh model for ``data``: a Seq2SeqTransformer, or a GPT for the lm task, shaped by the
    ``[model]`` table (preset + overrides). Seeds tfm_rs first (``train.seed``)."""
    from tfm_rs.models import GPT, Seq2SeqTransformer

    tfm_rs.manual_seed(cfg["train"]["seed"])
    kw = cfg_lib.model_kwargs(cfg)
    reduced = {k: kw[k] for k in cfg_lib.REDUCTION_KEYS if k in kw}
    # Factorized and hashed embeddings have no table to tie an output projection to.
    untied = "embedding_dim" in reduced or "hash_buckets" in reduced
    if data.kind == "lm":
        return GPT(data.tgt_vocab_size, d_model=kw["d_model"], nhead=kw["nhead"],
                   num_layers=kw["num_decoder_layers"], dim_feedforward=kw["dim_feedforward"],
                   dropout=kw["dropout"], max_len=kw["max_len"], tie_weights=not untied, **reduced)
    if data.task is None and not untied:  # a joint tokenizer: share the embeddings unless told otherwise
        kw.setdefault("share_embeddings", True)
    return Seq2SeqTransformer(data.src_vocab_size, data.tgt_vocab_size, pad_id=data.pad_id, bos_id=data.bos_id,
                              eos_id=data.eos_id, **kw)


def train_config(cfg: Config) -> Any:
    """The :class:`~tfm_rs.train.TrainConfig` of a resolved configuration."""
    from tfm_rs.train import TrainConfig

    o, t = cfg["optim"], cfg["train"]
    return TrainConfig(max_tokens=o["max_tokens"], lr=o["lr"], warmup_steps=o["warmup"],
                       warmup_fraction=o["warmup_fraction"] or None, schedule=o["schedule"],
                       min_lr_ratio=o["min_lr_ratio"], weight_decay=o["weight_decay"],
                       label_smoothing=o["label_smoothing"], clip_norm=o["clip_norm"] or None,
                       accum_steps=o["accum_steps"], seed=t["seed"], max_steps=t["max_steps"],
                       max_minutes=t["minutes"], log_every=t["log_every"], print_every=0,
                       valid_every=t["valid_every"], bleu_every=t["bleu_every"], bleu_subset=t["bleu_subset"],
                       save_every=t["save_every"], device=t["device"], precision=t["precision"],
                       distributed=_launched_by_mpi())


def _launched_by_mpi() -> bool:
    """Whether this process is one of several an MPI launcher started (``mpirun -n N tfm-rs train``)."""
    from tfm_rs import distributed as dist

    return dist.launched_world_size() > 1


def make_trainer(cfg: Config, data: Data, model: Any, run_dir: Optional[Path]) -> Any:
    """The trainer for ``data.kind``, logging to ``run_dir/metrics.jsonl`` (``None``: no files)."""
    from tfm_rs.train import LMTrainer, Seq2SeqTrainer

    tc = train_config(cfg)
    if data.kind == "lm":
        return LMTrainer(model, data.train, tc, block_size=cfg["data"]["block_size"], out_dir=run_dir,
                         valid_ids=data.valid, log_name=METRICS_FILE)
    return Seq2SeqTrainer(model, data.train, tc, out_dir=run_dir, valid_data=data.valid, valid_texts=data.valid_texts,
                          tokenizer=data.tokenizer, log_name=METRICS_FILE)


def describe_model(model: Any) -> str:
    """One line: architecture, shape and parameter count."""
    c = model.config
    n = model.num_parameters()
    layers = (f"{c['num_encoder_layers']}+{c['num_decoder_layers']} layers" if "num_encoder_layers" in c
              else f"{c['num_layers']} layers")
    return (f"{c['arch']}: d_model {c['d_model']}, {c['nhead']} heads, {layers}, ff {c['dim_feedforward']}, "
            f"{n:,} parameters")


def _budget_line(tc: Any) -> str:
    budget = " and ".join(s for s in (f"{tc.max_steps} steps" if tc.max_steps else "",
                                       f"{tc.max_minutes:g} min" if tc.max_minutes else "") if s)
    warmup = f"warmup {tc.warmup_steps} steps"
    if tc.warmup_fraction:
        warmup += f" or {tc.warmup_fraction:.0%} of the budget, whichever ends first"
    return (f"training for {budget}: {tc.schedule} schedule, lr {tc.lr:g}, {warmup}, {tc.max_tokens} tokens per "
            f"batch, clip_norm {tc.clip_norm or 'off'}")


def train_run(cfg: Config, resume: bool = False, quiet: bool = False, use_bar: bool = True,
              out: Any = print, command: Optional[str] = None, make: Any = None) -> Dict[str, Any]:
    """Train the configured run into ``cfg["train"]["out"]``: prepare the data, build the model
    (or resume it from the run's checkpoint), train with progress, save the checkpoint, average
    the last snapshots (``train.average``), validate, translate the test set greedily and with
    beam search (when the configuration has one) and write ``results.json``. ``out`` prints the
    report lines; ``command`` is recorded in the results; ``make`` replaces :func:`make_trainer`
    (same arguments; distillation brings its own trainer). Returns the results."""
    import shutil

    from tfm_rs.progress import Progress
    from tfm_rs.train.averaging import BudgetSnapshots
    from tfm_rs.train.trainer import check_device

    from tfm_rs import distributed as dist

    t_start = time.perf_counter()
    t = cfg["train"]
    run_dir = Path(t["out"])
    ckpt = run_dir / CHECKPOINT_DIR
    if _launched_by_mpi():
        dist.init()
    main = dist.get_rank() == 0  # under MPI only rank 0 writes the run directory and reports
    if not main:
        quiet, out = True, _silent
    if resume and not ckpt.exists():
        raise FileNotFoundError(f"nothing to resume in {run_dir}: no checkpoint there")
    if not resume and ckpt.exists():
        raise ConfigError(f"{run_dir} already holds a trained run; add --resume to continue it, or choose another "
                          "--out")
    if t["threads"]:
        tfm_rs.set_num_threads(t["threads"])
    check_device(t["device"])  # before the run directory and the data exist
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / CONFIG_FILE).write_text(cfg_lib.dumps(cfg), encoding="utf-8")
        _trim_metrics(run_dir, _checkpoint_step(run_dir) if resume else 0)
        # Averaged weights of an earlier session would outlive this one's training; snapshots taken
        # before a resume are not kept, so a resumed run averages only what it saw.
        shutil.rmtree(run_dir / AVERAGED_DIR, ignore_errors=True)
        data = prepare_data(cfg, run_dir)
    if dist.get_world_size() > 1:
        dist.barrier()  # the other ranks read the tokenizer rank 0 trained and saved
    if not main:
        data = prepare_data(cfg, run_dir)
    model = build_model(cfg, data)
    trainer = (make or make_trainer)(cfg, data, model, run_dir)
    out(f"run: {run_dir} ({'resumed' if resume else 'new'}); task {cfg['data']['task']}: "
        f"{data.info['train']:,} training / {data.info['valid']:,} validation examples; vocabulary "
        f"{data.src_vocab_size}" + (f"/{data.tgt_vocab_size}" if data.tgt_vocab_size != data.src_vocab_size else ""))
    out(f"model: {describe_model(model)}")
    if resume:
        trainer.resume(ckpt)
        out(f"resumed at step {trainer.step} ({trainer.train_time:.1f}s trained)")
    tc = trainer.config
    out(_budget_line(tc) + "; " + _device_line(tc.device, tc.precision))
    if trainer.world_size > 1:
        out(f"data parallel over MPI: {trainer.world_size} processes; each step is {trainer.world_size} × "
            f"{tc.accum_steps} batches (tokens/s are the job's)")
    snapshots = BudgetSnapshots(model, t["average"], tc.max_steps, tc.max_minutes, t["average_every"])
    progress = Progress(tc.max_steps, 60.0 * tc.max_minutes if tc.max_minutes else None,
                        initial_step=trainer.step, initial_time=trainer.train_time, use_bar=use_bar, quiet=quiet)

    def callback(record: Dict[str, Any]) -> None:
        snapshots(record)
        progress(record, done=trainer.done())

    try:
        trainer.train(verbose=False, callback=callback)
    finally:
        progress.close()
    trainer.save()
    if not main:
        trainer.close()
        return {"run_dir": str(run_dir), "rank": dist.get_rank(), "steps": trainer.step}
    rate = trainer.tokens_seen / max(trainer.train_time, 1e-9)
    out(f"trained {trainer.step} steps in {trainer.train_time:.1f}s ({rate:,.0f} tok/s); checkpoint "
        f"{run_dir / CHECKPOINT_DIR}")
    if trainer.warmup_end is not None:
        end, frac = trainer.warmup_end
        out(f"warmup: {end} steps ({frac:.0%} of the budget)")

    return _finish_run(cfg, data, trainer, snapshots.averager, out, command, t_start)


def _silent(*args: Any, **kwargs: Any) -> None:
    """The report printer of ranks other than 0."""


def _finish_run(cfg: Config, data: Data, trainer: Any, averager: Any, out: Any, command: Optional[str],
                t_start: float) -> Dict[str, Any]:
    """After training: average the snapshots into ``averaged/``, validate, translate the test set
    (greedy and beam) into ``test.hyp.txt``, write ``results.json``; returns the results."""
    import os
    import platform

    from tfm_rs.checkpoint import save_checkpoint

    t, tc, model = cfg["train"], trainer.config, trainer.model
    run_dir = Path(t["out"])
    rate = trainer.tokens_seen / max(trainer.train_time, 1e-9)
    test = _test_pairs(cfg, t["test_limit"])

    def translate(beams: int) -> List[str]:
        return translate_sentences(model, data.tokenizer, test[0], task=data.task, batch_size=tc.bleu_batch_size,
                                   num_beams=beams, length_penalty=t["length_penalty"])

    results: Dict[str, Any] = {"command": command, "steps": trainer.step}
    if averager.count:
        if test is not None:
            results["bleu_greedy_last"] = metrics_bleu(translate(1), test[1])["score"]
        averager.add(model.state_dict())
        model.load_state_dict(averager.average())
        save_checkpoint(run_dir / AVERAGED_DIR, model.state_dict(), model.config,
                        extra={"averaged": averager.count, "step": trainer.step}, keep_previous=False)
        out(f"averaged the weights of {averager.count} snapshots into {run_dir / AVERAGED_DIR}")
    final = trainer.validate(bleu=False) if trainer.has_valid_data() else {}
    if final:
        out("validation: " + "  ".join(f"{k} {final[k]:.3f}" for k in ("loss", "ppl", "accuracy") if k in final))
    if test is not None:
        decoded = {}
        for beams in sorted({1, t["beam"]}):
            t0 = time.perf_counter()
            hyps = translate(beams)
            decoded[beams] = (hyps, time.perf_counter() - t0, metrics_bleu(hyps, test[1]))
        hyps, seconds, score = decoded[t["beam"]]
        (run_dir / "test.hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
        results.update(test_set=cfg["data"]["test_src"], test_sentences=len(hyps), bleu=score["score"],
                       bleu_detail=score["detail"], beam=t["beam"], length_penalty=t["length_penalty"],
                       bleu_greedy=decoded[1][2]["score"], decode_seconds=seconds,
                       decode_seconds_greedy=decoded[1][1])
        trainer.log({"type": "test", "bleu": score["score"], "test_sentences": len(hyps), "decode_seconds": seconds,
                     "steps": trainer.step})
        out(f"test BLEU {score['score']:.2f} (beam {t['beam']}; greedy {decoded[1][2]['score']:.2f}) on {len(hyps)} "
            f"sentences ({score['detail']})")
    trainer.close()
    train_recs = [r for r in trainer.history if r["type"] == "train"][-100:]
    results.update(
        averaged_snapshots=averager.count, train_minutes=trainer.train_time / 60, tokens_seen=trainer.tokens_seen,
        tok_per_s_overall=rate,
        tok_per_s_last100=(sum(r["tokens"] for r in train_recs) / max(sum(r["step_time"] for r in train_recs), 1e-9)
                           if train_recs else None),
        warmup_steps=trainer.warmup_end[0] if trainer.warmup_end else None,
        valid_loss=final.get("loss"), valid_ppl=final.get("ppl"), valid=final,
        wall_minutes=(time.perf_counter() - t_start) / 60, params=int(model.num_parameters()),
        model_config=model.config, train_config=tc.to_dict(), threads=tfm_rs.get_num_threads(), cpus=os.cpu_count(),
        machine=platform.machine(), tfm_rs=tfm_rs.__version__, run_dir=str(run_dir))
    (run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    return results


def metrics_bleu(hyps: Sequence[str], refs: Sequence[str]) -> Dict[str, Any]:
    """sacrebleu's corpus BLEU as ``{"score", "detail"}`` (cased, detokenized)."""
    from tfm_rs import metrics

    score = metrics.bleu_score(list(hyps), list(refs))
    return {"score": float(score.score), "detail": str(score)}


def _test_pairs(cfg: Config, limit: Optional[int]) -> Optional[Tuple[List[str], List[str]]]:
    """The configured test set's (sources, references), the first ``limit`` only; ``None`` without one."""
    from tfm_rs.data import ParallelCorpus

    d = cfg["data"]
    if d["task"] != "parallel" or not (d["test_src"] and d["test_tgt"]):
        return None
    corpus = ParallelCorpus(_file(cfg, "test_src"), _file(cfg, "test_tgt"))
    return list(corpus.src)[:limit], list(corpus.tgt)[:limit]


def _device_line(device: str, precision: str = "float32") -> str:
    if device == "cpu":
        line = f"CPU, SIMD {tfm_rs.cpu_features()['isa']}, {tfm_rs.get_num_threads()} threads"
        if precision != "float32":
            path, note = tfm_rs.amp.precision_info(precision)
            line += f", {precision} products ({path})" + (f"\nnote: {note}" if note else "")
        return line
    info = tfm_rs.gpu_info()
    return f"GPU {info['name']} ({info['backend']}, {info['device_type']})"


# ------------------------------------------------------------------------------ loading a run

@dataclass
class LoadedRun:
    """A trained run: its configuration, model (eval mode), tokenizer and data description."""

    dir: Path
    config: Config
    model: Any
    data: Data

    @property
    def kind(self) -> str:
        """``"seq2seq"`` or ``"lm"``."""
        return self.data.kind

    @property
    def tokenizer(self) -> Any:
        """The run's tokenizer (or the numbers task's adapter)."""
        return self.data.tokenizer


def load_config(run_dir: Path) -> Config:
    """The resolved configuration a run directory keeps (for a directory written by the former
    recipe script, which kept none: the configuration its recorded command stands for)."""
    path = Path(run_dir) / CONFIG_FILE
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"no such run directory: {run_dir}")
    if not path.is_file():
        legacy = legacy_recipe_config(Path(run_dir))
        if legacy is not None:
            return legacy
        raise FileNotFoundError(f"{run_dir} is not a tfm-rs run directory (no {CONFIG_FILE})")
    return cfg_lib.resolve(cfg_lib.load_toml(path), sources=[str(path)])


def legacy_recipe_config(run_dir: Path) -> Optional[Config]:
    """The configuration of a run directory made by ``python -m tfm_rs.train.seq2seq`` before it
    became an alias (``results.json`` records its command, no ``config.toml``), or ``None``."""
    from tfm_rs import cli
    from tfm_rs.train.seq2seq import translate_argv

    try:
        command = json.loads((run_dir / RESULTS_FILE).read_text(encoding="utf-8"))["command"].split()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    script = "tfm_rs.train.seq2seq"
    if script not in command:
        return None
    args = cli.build_parser().parse_args(translate_argv(command[command.index(script) + 1:]))
    flags = cfg_lib.flag_values(args)
    flags.setdefault("train", {})["out"] = str(run_dir.absolute())
    shipped = cfg_lib.shipped_config("multi30k")
    return cfg_lib.resolve(cfg_lib.load_toml(shipped), flags, sources=[str(shipped), f"{run_dir / RESULTS_FILE}"])


def load_run(run_dir: "str | Path", need_valid: bool = True) -> LoadedRun:
    """Load a run directory's configuration, tokenizer and trained model (from ``checkpoint/``)."""
    from tfm_rs.models import model_from_checkpoint

    run_dir = Path(run_dir)
    cfg = load_config(run_dir)
    ckpt = run_dir / CHECKPOINT_DIR
    if not ckpt.exists() and not ckpt.with_name(CHECKPOINT_DIR + ".prev").exists():
        raise FileNotFoundError(f"{run_dir} has no checkpoint yet (train it first: tfm-rs train --out {run_dir})")
    if cfg["data"]["task"] != "numbers" and not need_valid and (run_dir / TOKENIZER_FILE).is_file():
        from tfm_rs.data import Tokenizer

        tok = Tokenizer.load(run_dir / TOKENIZER_FILE)
        kind = "lm" if cfg["data"]["task"] == "lm" else "seq2seq"
        data = Data(kind, tok, None, None, None, None, tok.vocab_size, tok.vocab_size, tok.pad_id, tok.bos_id,
                    tok.eos_id)
    else:
        data = prepare_data(cfg, run_dir, need_train=False)
    # The averaged weights are the run's result where there are some (train.average > 1).
    averaged = run_dir / AVERAGED_DIR
    model = model_from_checkpoint(averaged if averaged.exists() else ckpt)
    model.eval()
    return LoadedRun(run_dir, cfg, model, data)


# ------------------------------------------------------------------------------ using a run

def translate_sentences(model: Any, tokenizer: Any, sentences: Sequence[str], task: Any = None,
                        batch_size: int = 128, num_beams: int = 1, length_penalty: float = 0.6) -> List[str]:
    """Translations of ``sentences`` — the one place the command line decodes a Seq2SeqTransformer
    (``Seq2SeqTransformer.translate``: KV-cache decoding in Rust, greedy by default, beam search
    with ``num_beams > 1`` and the paper's length penalty). ``task``: the numbers task, whose
    outputs have a known maximum length."""
    kwargs: Dict[str, Any] = {}
    if task is not None:
        kwargs["max_new_tokens"] = min(task.max_target_len() + 2, model.max_len)
    return model.translate(list(sentences), tokenizer, num_beams=num_beams, length_penalty=length_penalty,
                           batch_size=batch_size, **kwargs)


def _lm_request(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int, temperature: float, top_k: int,
                top_p: float, seed: Optional[int], greedy: bool) -> Tuple[List[int], Dict[str, Any]]:
    ids = tokenizer.encode(prompt) if prompt else []
    start = ids or [tokenizer.eos_id]  # an empty prompt starts a new line
    room = model.max_len - len(start)
    if room <= 0:
        raise ConfigError(f"the prompt has {len(start)} tokens; the model reads at most {model.max_len}")
    return start, dict(max_new_tokens=min(max_new_tokens, room), do_sample=not greedy, temperature=temperature,
                       top_k=top_k, top_p=top_p, seed=seed, eos_token_id=tokenizer.eos_id)


def generate_text(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, seed: Optional[int] = None, greedy: bool = False) -> str:
    """Continue ``prompt`` with a GPT run's model (``GPT.generate``, KV-cache decoding in Rust):
    sampling with ``temperature``/``top_k``/``top_p`` unless ``greedy``; stops at EOS (the end of
    a line) or after ``max_new_tokens``. Returns the continuation's text."""
    start, search = _lm_request(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed, greedy)
    out = model.generate([start], **search)
    return tokenizer.decode_until_eos(list(out.sequences[0])[len(start):])


def stream_text(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int, temperature: float = 1.0,
                top_k: int = 0, top_p: float = 1.0, seed: Optional[int] = None,
                greedy: bool = False) -> Iterator[str]:
    """:func:`generate_text` piece by piece (``GPT.stream``): yields the text each new token adds
    (the tokens so far are decoded together, so word boundaries come out as in the whole text)."""
    start, search = _lm_request(model, tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed, greedy)
    ids: List[int] = []
    shown = ""
    for token in model.stream(start, **search):
        if token == tokenizer.eos_id:
            break
        ids.append(int(token))
        text = tokenizer.decode(ids)
        if text.startswith(shown) and len(text) > len(shown):
            yield text[len(shown):]
            shown = text


def _reference_pairs(run: LoadedRun, src_file: Optional[str],
                     ref_file: Optional[str]) -> Tuple[List[str], List[str], str]:
    from tfm_rs.data import ParallelCorpus

    d = run.config["data"]
    if src_file or ref_file:
        if not (src_file and ref_file):
            raise ConfigError("give both --src and --ref (sources and their reference translations)")
        corpus = ParallelCorpus(_existing(src_file), _existing(ref_file))
        return list(corpus.src), list(corpus.tgt), f"{src_file}"
    if d["test_src"] and d["test_tgt"]:
        corpus = ParallelCorpus(_file(run.config, "test_src"), _file(run.config, "test_tgt"))
        return list(corpus.src), list(corpus.tgt), "test set (data.test_src)"
    srcs, refs = run.data.valid_texts
    return list(srcs), list(refs), "held-out set" if d["task"] == "numbers" else "validation set"


def _existing(path: str) -> Path:
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such file: {path}")
    return Path(path)


def evaluate_run(run: LoadedRun, src_file: Optional[str] = None, ref_file: Optional[str] = None,
                 text_file: Optional[str] = None, limit: Optional[int] = None, num_beams: int = 1) -> Dict[str, Any]:
    """Score a run. Seq2seq: translations of a test set (``src_file``/``ref_file``, else the
    configured test set, else the validation/held-out set) → BLEU (sacrebleu) and exact match, plus
    teacher-forced perplexity and token accuracy. LM: perplexity and next-token accuracy on
    ``text_file`` or the validation text. ``limit``: the first N examples only; ``num_beams``:
    beam size of the translations (1: greedy)."""
    from tfm_rs import metrics
    from tfm_rs.train.lm import lm_batches, lm_forward, windows
    from tfm_rs.train.trainer import evaluate, seq2seq_batches, seq2seq_forward

    model, tok, d = run.model, run.tokenizer, run.config
    max_tokens = d["optim"]["max_tokens"]
    t0 = time.perf_counter()
    if run.kind == "lm":
        from tfm_rs.data import read_lines

        if text_file:
            lines = [line for line in read_lines(_existing(text_file)) if line.strip()]
            ids, what = stream_ids(tok, lines[:limit]), text_file
        else:
            ids, what = run.data.valid, "validation text"
        block = d["data"]["block_size"] or model.max_len
        wins = windows(ids, block)
        scores = evaluate(model, lm_batches(wins, max(1, max_tokens // block)), lm_forward)
        res: Dict[str, Any] = {"set": what, **scores}
    else:
        srcs, refs, what = _reference_pairs(run, src_file, ref_file)
        srcs, refs = srcs[:limit], refs[:limit]
        if not srcs:
            raise ConfigError("nothing to evaluate: the test set is empty")
        hyps = translate_sentences(model, tok, srcs, task=run.data.task, num_beams=num_beams)
        if run.data.task is not None:
            src_ids = [run.data.task.encode_source(s) for s in srcs]
            tgt_ids = [run.data.task.encode_target(r) for r in refs]
        else:
            src_ids, tgt_ids = tok.encode_batch(srcs), tok.encode_batch(refs)
        scores = evaluate(model, seq2seq_batches(model, src_ids, tgt_ids, max_tokens), seq2seq_forward)
        res = {"set": what, "sentences": len(srcs), "beam": num_beams, "bleu": metrics.bleu(hyps, refs),
               "exact_match": sum(h == r for h, r in zip(hyps, refs)) / len(refs), **scores}
        (run.dir / "eval.hyp.txt").write_text("\n".join(hyps) + "\n", encoding="utf-8")
        res["examples"] = [{"source": s, "hypothesis": h, "reference": r}
                           for s, h, r in list(zip(srcs, hyps, refs))[:5]]
    res["seconds"] = time.perf_counter() - t0
    step = _checkpoint_step(run.dir)
    (run.dir / "eval.json").write_text(json.dumps(res, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    record = {"type": "eval", "step": step, **{k: v for k, v in res.items() if k != "examples"}}
    with open(run.dir / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
    return res


def _trim_metrics(run_dir: Path, step: Optional[int]) -> None:
    """Drop the log records after ``step``: an interrupted run logged steps its checkpoint does
    not hold, and they are trained again (step 0: a new run replaces an unsaved one's log)."""
    path = run_dir / METRICS_FILE
    if not path.is_file() or step is None:
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= step:
                keep.append(line)
        except (ValueError, TypeError, AttributeError):
            continue
    path.write_text("".join(f"{line}\n" for line in keep), encoding="utf-8")


def _checkpoint_step(run_dir: Path) -> Optional[int]:
    try:
        extra = json.loads((run_dir / CHECKPOINT_DIR / "extra.json").read_text())
        return int(extra["step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_metrics(run_dir: "str | Path") -> List[Mapping[str, Any]]:
    """The records of a run's ``metrics.jsonl`` (``train.jsonl`` for runs of the Multi30k recipe)."""
    run_dir = Path(run_dir)
    for name in (METRICS_FILE, "train.jsonl"):
        path = run_dir / name
        if path.is_file():
            out = []
            for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if line.strip():
                    try:
                        out.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise ConfigError(f"{path}: line {i} is not JSON") from None
            return out
    raise FileNotFoundError(f"no {METRICS_FILE} in {run_dir}")
