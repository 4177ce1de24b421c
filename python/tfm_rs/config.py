"""The configuration of a ``tfm-rs train`` run: a TOML file, command-line flags, or both.

A configuration has four tables; every key is optional (the defaults train the built-in numbers
task with the demo's model)::

    [data]
    task = "numbers"          # "numbers" (built in), "parallel" (src/tgt files), "lm" (one text file)
    lang = "en"               # numbers: target language (en, fr, de)
    src = "train.de.gz"       # parallel: source and target training files (plain or .gz)
    tgt = "train.en.gz"
    text = "corpus.txt"       # lm: the training text

    [model]
    preset = "tiny"           # numbers, tiny, mini, small, base, big
    d_model = 64              # overrides of the preset

    [optim]
    schedule = "noam"         # noam (= inverse_sqrt), cosine, constant
    lr = 1e-3

    [train]
    out = "runs/numbers"
    max_steps = 500
    device = "cpu"            # or "gpu"

Shipped configurations (:func:`shipped_config`; ``tfm-rs train --config multi30k``) live in
``tfm_rs/configs/``: ``multi30k.toml`` is the Multi30k recipe of ``docs/training.md``.

:data:`FIELDS` lists every key with its type, default and help; :func:`resolve` merges defaults,
a file and flags (flags win) and checks them, raising :class:`ConfigError` with one line that
names the bad key and lists the valid ones. :func:`dumps` writes a resolved configuration back as
TOML (the run directory keeps it as ``config.toml``).
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["ConfigError", "Field", "FIELDS", "SECTIONS", "MODEL_PRESETS", "PATH_KEYS", "TASKS", "add_flags", "defaults",
           "dumps", "flag_values", "load_toml", "loads", "model_kwargs", "resolve", "shipped_config", "valid_keys"]

TASKS = ("numbers", "parallel", "lm")
#: Keys naming files: relative to the config file that sets them (``train.out``: to the working
#: directory, like a flag), stored absolute.
PATH_KEYS = ("data.src", "data.tgt", "data.valid_src", "data.valid_tgt", "data.test_src", "data.test_tgt",
             "data.text", "data.valid_text", "data.tokenizer")
SECTIONS = ("data", "model", "optim", "train")

#: Model shapes by name: the library's Seq2SeqTransformer presets plus "numbers", the demo's model
#: (d_model 128, 4 heads, 2+2 layers), which learns the built-in task in a few minutes on 2 cores.
MODEL_PRESETS: Dict[str, Dict[str, Any]] = {
    "numbers": dict(d_model=128, nhead=4, num_encoder_layers=2, num_decoder_layers=2, dim_feedforward=512,
                    dropout=0.0, max_len=32),
}


def _presets() -> Dict[str, Dict[str, Any]]:
    from tfm_rs.models import PRESETS

    return {**MODEL_PRESETS, **PRESETS}


class ConfigError(ValueError):
    """A configuration mistake (unknown key, wrong type, missing file, bad value): one line."""


@dataclass(frozen=True)
class Field:
    """One configuration key: ``section.key``, its type (``int``, ``float``, ``str``, ``bool``),
    default (``None``: unset), help text, allowed values, and whether numbers must be > 0."""

    section: str
    key: str
    type: type
    default: Any
    help: str
    choices: Optional[Tuple[str, ...]] = None
    positive: bool = False

    @property
    def name(self) -> str:
        """``section.key``."""
        return f"{self.section}.{self.key}"

    @property
    def flag(self) -> str:
        """The command-line flag: ``--d-model`` for ``model.d_model``."""
        return "--" + self.key.replace("_", "-")


def _f(section: str, key: str, type_: type, default: Any, help_: str, choices: Optional[Sequence[str]] = None,
       positive: bool = False) -> Field:
    return Field(section, key, type_, default, help_, tuple(choices) if choices else None, positive)


FIELDS: List[Field] = [
    # data
    _f("data", "task", str, "numbers", "what to learn: the built-in numbers task, parallel text files, or a "
       "text file for language modelling", TASKS),
    _f("data", "lang", str, "en", "numbers task: the target language", ("en", "fr", "de")),
    _f("data", "num_train", int, 20000, "numbers task: training numbers", positive=True),
    _f("data", "num_heldout", int, 1000, "numbers task: held-out numbers (validation and eval)", positive=True),
    _f("data", "src", str, None, "parallel: source-side training file (plain or .gz)"),
    _f("data", "tgt", str, None, "parallel: target-side training file, line-aligned with src"),
    _f("data", "valid_src", str, None, "parallel: source-side validation file (default: hold out part of train)"),
    _f("data", "valid_tgt", str, None, "parallel: target-side validation file"),
    _f("data", "test_src", str, None, "parallel: source-side test file (for tfm-rs eval)"),
    _f("data", "test_tgt", str, None, "parallel: target-side test file (references)"),
    _f("data", "corpus", str, None, "parallel: a known corpus whose files fill data.src/tgt, valid_src/tgt and "
       "test_src/tgt where not given (multi30k: ../shared/data/multi30k or $TFM_RS_MULTI30K; none: only the files "
       "given)", ("multi30k", "none")),
    _f("data", "pair", str, None, "corpus: the language pair, source-target (default: de-en)"),
    _f("data", "text", str, None, "lm: the training text file (plain or .gz)"),
    _f("data", "valid_text", str, None, "lm: a validation text file (default: hold out the end of text)"),
    _f("data", "valid_size", int, 0, "validation lines held out of the training data when no validation "
       "file is given (0: 5%, at most 1000)"),
    _f("data", "tokenizer", str, None, "a tokenizer.json to use (default: train one on the training text)"),
    _f("data", "tokenizer_kind", str, "bpe", "kind of tokenizer to train",
       ("bpe", "wordpiece", "byte_bpe", "word", "char")),
    _f("data", "vocab_size", int, 8000, "vocabulary size of a trained tokenizer (an upper bound)", positive=True),
    _f("data", "lowercase", bool, False, "lowercase text before tokenizing (trained tokenizer)"),
    _f("data", "block_size", int, None, "lm: tokens per training window (default: the model's max_len)",
       positive=True),
    # model
    _f("model", "preset", str, None, "model shape (default: numbers for the numbers task, small otherwise)",
       ("numbers", "tiny", "mini", "small", "base", "big")),
    _f("model", "d_model", int, None, "width of embeddings and layers", positive=True),
    _f("model", "nhead", int, None, "attention heads (must divide d_model)", positive=True),
    _f("model", "layers", int, None, "layers on each side (GPT: blocks)", positive=True),
    _f("model", "encoder_layers", int, None, "encoder layers (overrides layers)", positive=True),
    _f("model", "decoder_layers", int, None, "decoder layers (overrides layers)", positive=True),
    _f("model", "dim_feedforward", int, None, "inner width of the feed-forward networks", positive=True),
    _f("model", "dropout", float, None, "dropout probability"),
    _f("model", "max_len", int, None, "longest sequence (positions)", positive=True),
    _f("model", "norm_first", bool, None, "pre-LN layers instead of the paper's post-LN"),
    _f("model", "share_embeddings", bool, None, "one embedding matrix for source, target and output (text tasks "
       "with a joint tokenizer: default true)"),
    _f("model", "norm", str, None, "normalization in every layer (default layer: the paper's LayerNorm; batch: "
       "batch norm over the real tokens; the native decoder, so BLEU, needs layer or rms)", ("layer", "rms", "batch")),
    _f("model", "embedding_dim", int, None, "ALBERT-factorized embeddings: a vocab x embedding_dim table projected "
       "to d_model (unties the embeddings)", positive=True),
    _f("model", "hash_buckets", int, None, "hashed embeddings with this many shared buckets (unties the embeddings)",
       positive=True),
    _f("model", "num_hashes", int, None, "hashed embeddings: hash functions per token (default 2)", positive=True),
    _f("model", "share_layers", bool, None, "ALBERT cross-layer sharing: one set of weights per stack"),
    _f("model", "ffn_rank", int, None, "low-rank feed-forward layers of this rank", positive=True),
    _f("model", "attention", str, None, "self-attention kind of the encoder (GPT: every block): dense, "
       "'window(left=W, right=0, global=G)', 'block_sparse(block=B, ...)', linear or 'lsh(...)'; one for all "
       "layers or one per layer separated by ';' (docs/long-sequences.md)"),
    _f("model", "encoder", str, None, "encoder of the encoder-decoder tasks (default transformer: self-attention "
       "layers; conv: ConvS2S gated convolution blocks, encoder_layers of them)", ("transformer", "conv")),
    _f("model", "encoder_kernel_size", int, None, "encoder = conv: the convolutions' width (odd; default 3)",
       positive=True),
    # optim
    _f("optim", "schedule", str, None, "learning-rate schedule (default: cosine for numbers, noam otherwise)",
       ("noam", "inverse_sqrt", "cosine", "constant")),
    _f("optim", "lr", float, None, "peak learning rate (default: 2e-3 numbers, 7e-4 otherwise)", positive=True),
    _f("optim", "warmup", int, None, "warmup steps (default: 150 numbers, 800 otherwise)", positive=True),
    _f("optim", "warmup_fraction", float, 0.25, "the warmup also ends once this fraction of the budget (steps "
       "or minutes) is used, so a short budget gets a short warmup (0: warmup steps only)"),
    _f("optim", "min_lr_ratio", float, 1e-3, "cosine: the final rate as a fraction of lr"),
    _f("optim", "weight_decay", float, 0.0, "Adam weight decay"),
    _f("optim", "clip_norm", float, 1.0, "global gradient-norm clipping (0: off)"),
    _f("optim", "label_smoothing", float, 0.1, "label smoothing of the training loss"),
    _f("optim", "max_tokens", int, None, "padded tokens per batch (default: 2500 numbers, 3000 otherwise)",
       positive=True),
    _f("optim", "accum_steps", int, 1, "batches per optimizer step", positive=True),
    # train
    _f("train", "out", str, None, "run directory (default: runs/<task>)"),
    _f("train", "max_steps", int, None, "stop after this many optimizer steps", positive=True),
    _f("train", "minutes", float, None, "stop after this many minutes of training (default: 3 if max_steps is "
       "not given; 0: no time limit)"),
    _f("train", "seed", int, 0, "seed of the data split, the initialization and dropout"),
    _f("train", "valid_every", int, 0, "validate every N steps (0: only at the end)"),
    _f("train", "bleu_every", int, 0, "greedy BLEU on validation sentences every N steps (0: never)"),
    _f("train", "bleu_subset", int, 200, "validation sentences the periodic BLEU translates", positive=True),
    _f("train", "save_every", int, 0, "checkpoint every N steps (0: only at the end)"),
    _f("train", "average", int, 1, "average the weights of this many snapshots over the end of the budget, the "
       "paper's checkpoint averaging, into RUN_DIR/averaged (1: off)", positive=True),
    _f("train", "average_every", float, None, "minutes (steps under a step budget only) between snapshots "
       "(default: 5% of the budget)", positive=True),
    _f("train", "beam", int, 4, "beam size of the final test translation (with a test set; greedy too)",
       positive=True),
    _f("train", "length_penalty", float, 1.0, "GNMT length penalty of that beam search"),
    _f("train", "test_limit", int, None, "translate only the first N test sentences", positive=True),
    _f("train", "log_every", int, 1, "metrics.jsonl line every N steps", positive=True),
    _f("train", "threads", int, None, "tfm_rs worker threads (default: all cores)", positive=True),
    _f("train", "device", str, "cpu", "where to train: cpu, or gpu (the wgpu backend: Vulkan, Metal, DX12)",
       ("cpu", "gpu")),
    _f("train", "precision", str, "float32", "arithmetic of the training step's matrix products: float32, or bf16 "
       "mixed precision (bf16 inputs, float32 accumulation and weights; CPU only, see docs/precision.md)",
       ("float32", "bf16")),
]

_BY_NAME = {f.name: f for f in FIELDS}
_BY_KEY = {f.key: f for f in FIELDS}
assert len(_BY_KEY) == len(FIELDS), "configuration keys must be unique across sections (they are also flags)"


def valid_keys(section: Optional[str] = None) -> List[str]:
    """``section.key`` names, of one section or all."""
    return [f.name for f in FIELDS if section is None or f.section == section]


def defaults() -> Dict[str, Dict[str, Any]]:
    """Every key at its default, as ``{section: {key: value}}``."""
    out: Dict[str, Dict[str, Any]] = {s: {} for s in SECTIONS}
    for f in FIELDS:
        out[f.section][f.key] = f.default
    return out


def _tomllib():
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - exercised on 3.9/3.10 only
        import tomli as tomllib
    return tomllib


def loads(text: str, source: str = "config") -> Dict[str, Any]:
    """Parse TOML text (``tomllib``; ``tomli`` before Python 3.11); ``source`` names it in errors."""
    tomllib = _tomllib()
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML ({e})") from None


def load_toml(path: "str | Path") -> Dict[str, Any]:
    """Parse a TOML file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such config file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e.reason})") from None
    return loads(text, str(path))


def _coerce(f: Field, value: Any, where: str) -> Any:
    if value is None:
        return None
    t = f.type
    ok = (isinstance(value, bool) if t is bool else
          isinstance(value, int) and not isinstance(value, bool) if t is int else
          isinstance(value, (int, float)) and not isinstance(value, bool) if t is float else
          isinstance(value, str))
    if not ok:
        raise ConfigError(f"{where}{f.name} must be {'a ' + t.__name__ if t is not int else 'an int'}, "
                          f"got {value!r}")
    if t is float:
        value = float(value)
        if not math.isfinite(value):
            raise ConfigError(f"{where}{f.name} must be finite, got {value!r}")
    if f.choices and value not in f.choices:
        raise ConfigError(f"{where}{f.name} must be one of {', '.join(f.choices)}; got {value!r}")
    if f.positive and value <= 0:
        raise ConfigError(f"{where}{f.name} must be positive, got {value!r}")
    if t in (int, float) and not f.positive and value < 0:
        raise ConfigError(f"{where}{f.name} must be ≥ 0, got {value!r}")
    return value


def _check_tables(raw: Mapping[str, Any], where: str) -> Dict[str, Dict[str, Any]]:
    out: Dict[str, Dict[str, Any]] = {}
    for section, table in raw.items():
        if section not in SECTIONS:
            hint = ""
            if not isinstance(table, dict) and section in _BY_KEY:
                hint = f" (did you mean {_BY_KEY[section].name}, under [{_BY_KEY[section].section}]?)"
            raise ConfigError(f"{where}unknown table [{section}]{hint}; valid tables: "
                              f"{', '.join(f'[{s}]' for s in SECTIONS)}")
        if not isinstance(table, dict):
            raise ConfigError(f"{where}[{section}] must be a table of keys")
        for key, value in table.items():
            f = _BY_NAME.get(f"{section}.{key}")
            if f is None:
                raise ConfigError(f"{where}unknown key {section}.{key}; valid keys in [{section}]: "
                                  f"{', '.join(k.split('.', 1)[1] for k in valid_keys(section))}")
            out.setdefault(section, {})[key] = _coerce(f, value, where)
    return out


def add_flags(parser: argparse.ArgumentParser) -> None:
    """Add one flag per key (default ``None`` = not given), grouped by table."""
    for section in SECTIONS:
        group = parser.add_argument_group(f"[{section}] (flags override the config file)")
        for f in (f for f in FIELDS if f.section == section):
            text = f.help if f.default is None or "default" in f.help else f"{f.help} (default: {f.default})"
            kw: Dict[str, Any] = {"dest": f"cfg_{f.key}", "default": None, "help": text.replace("%", "%%")}
            if f.type is bool:
                group.add_argument(f.flag, action=argparse.BooleanOptionalAction, **kw)
                continue
            if f.choices:
                kw["choices"] = f.choices
            else:
                kw["metavar"] = {int: "N", float: "X"}.get(f.type, f.key.upper())
            group.add_argument(f.flag, type=_flag_type(f), **kw)


def _flag_type(f: Field):
    def parse(text: str) -> Any:
        try:
            value = f.type(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an' if f.type is int else 'a'} {f.type.__name__}, "
                                             f"got {text!r}") from None
        try:
            return _coerce(f, value, "")
        except ConfigError as e:  # "argument --lr: must be positive, got -1.0"
            raise argparse.ArgumentTypeError(str(e).replace(f"{f.name} ", "", 1)) from None
    parse.__name__ = f.key
    return parse


def flag_values(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """The flags the user gave (not ``None``), as ``{section: {key: value}}``."""
    out: Dict[str, Dict[str, Any]] = {}
    for f in FIELDS:
        v = getattr(args, f"cfg_{f.key}", None)
        if v is not None:
            out.setdefault(f.section, {})[f.key] = v
    return out


def resolve(*layers: Optional[Mapping[str, Any]], sources: Sequence[Optional[str]] = (),
            base_dirs: Sequence[Optional[Path]] = ()) -> Dict[str, Dict[str, Any]]:
    """Merge configuration layers over :func:`defaults` (later layers win; ``None`` layers are
    skipped), checking each, then fill the task-dependent defaults and check the combination.

    ``sources[i]`` names layer ``i`` in error messages (a file name); data file paths of layer
    ``i`` are relative to ``base_dirs[i]`` (a config file's folder; ``None``: the working
    directory). Paths come out absolute, so the resolved configuration works from anywhere."""
    cfg = defaults()
    for i, layer in enumerate(layers):
        if layer is None:
            continue
        where = f"{sources[i]}: " if i < len(sources) and sources[i] else ""
        base = Path(base_dirs[i]) if i < len(base_dirs) and base_dirs[i] is not None else Path.cwd()
        for section, table in _check_tables(layer, where).items():
            for key, value in table.items():
                if f"{section}.{key}" in PATH_KEYS and value:
                    value = str((base / Path(value).expanduser()).absolute())
                cfg[section][key] = value
    return _finish(cfg)


def _finish(cfg: Dict[str, Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    d, m, o, t = cfg["data"], cfg["model"], cfg["optim"], cfg["train"]
    task = d["task"]
    numbers = task == "numbers"
    if d["corpus"] == "none":
        d["corpus"] = None
    if d["corpus"] is not None:
        if task != "parallel":
            raise ConfigError(f"data.corpus is for the parallel task, not {task!r}")
        _corpus_files(d)
    if task == "parallel":
        missing = [k for k in ("src", "tgt") if not d[k]]
        if missing:
            raise ConfigError(f"the parallel task needs data.src and data.tgt (flags --src/--tgt); missing "
                              f"{', '.join('data.' + k for k in missing)}")
        if bool(d["valid_src"]) != bool(d["valid_tgt"]):
            raise ConfigError("give both data.valid_src and data.valid_tgt, or neither")
    if task == "lm" and not d["text"]:
        raise ConfigError("the lm task needs data.text (flag --text), the training text file")
    if m["preset"] is None:
        m["preset"] = "numbers" if numbers else "small"
    if task == "lm" and m["share_embeddings"] is not None:
        raise ConfigError("model.share_embeddings is for the encoder-decoder tasks (GPT always ties its output)")
    if task == "lm" and (m["encoder"] is not None or m["encoder_kernel_size"] is not None):
        raise ConfigError("model.encoder and model.encoder_kernel_size are for the encoder-decoder tasks (GPT has "
                          "no encoder)")
    if m["encoder_kernel_size"] is not None and m["encoder"] != "conv":
        raise ConfigError("model.encoder_kernel_size needs model.encoder = conv")
    if o["schedule"] is None:
        o["schedule"] = "cosine" if numbers else "noam"
    for key, num, other in (("lr", 2e-3, 7e-4), ("warmup", 150, 800), ("max_tokens", 2500, 3000)):
        if o[key] is None:
            o[key] = num if numbers else other
    if t["minutes"] == 0:
        t["minutes"] = None
    if t["max_steps"] is None and t["minutes"] is None:
        t["minutes"] = 3.0
    if t["out"] is None:
        t["out"] = f"runs/{task}"
    if o["warmup_fraction"] > 1.0:
        raise ConfigError(f"optim.warmup_fraction must be in [0, 1], got {o['warmup_fraction']}")
    if not 0.0 <= o["label_smoothing"] < 1.0:
        raise ConfigError(f"optim.label_smoothing must be in [0, 1), got {o['label_smoothing']}")
    if m["dropout"] is not None and not 0.0 <= m["dropout"] < 1.0:
        raise ConfigError(f"model.dropout must be in [0, 1), got {m['dropout']}")
    if m["share_embeddings"] and (m["embedding_dim"] or m["hash_buckets"]):
        raise ConfigError("model.embedding_dim / model.hash_buckets leave no table to share: set "
                          "share_embeddings = false (flag --no-share-embeddings)")
    preset = _presets()[m["preset"]]
    d_model = m["d_model"] or preset["d_model"]
    nhead = m["nhead"] or preset["nhead"]
    if d_model % nhead:
        raise ConfigError(f"model.d_model ({d_model}) must be a multiple of model.nhead ({nhead})")
    return cfg


def _corpus_files(d: Dict[str, Any]) -> None:
    """Fill the file keys of ``data`` from its corpus (only those not given)."""
    from tfm_rs.data.corpus import find_multi30k, multi30k_files

    d["pair"] = d["pair"] or "de-en"
    langs = d["pair"].split("-")
    if len(langs) != 2 or not all(langs) or langs[0] == langs[1]:
        raise ConfigError(f"data.pair must be two different languages, source-target (e.g. de-en), got {d['pair']!r}")
    find_multi30k()  # FileNotFoundError saying where it looked
    for split, prefix in (("train", ""), ("val", "valid_"), ("test", "test_")):
        src, tgt = multi30k_files(split, langs)
        for key, path in ((prefix + "src", src), (prefix + "tgt", tgt)):
            if not d[key]:
                d[key] = str(path.absolute())


def shipped_config(name: str) -> Optional[Path]:
    """The configuration shipped with tfm_rs as ``name`` or ``name.toml`` (``tfm_rs/configs/``),
    or ``None``."""
    folder = Path(__file__).parent / "configs"
    for cand in (name, f"{name}.toml"):
        if "/" not in cand and (folder / cand).is_file():
            return folder / cand
    return None


#: The ``[model]`` keys of the normalization and attention switches and of parameter reduction,
#: passed to every architecture as they are.
REDUCTION_KEYS = ("norm", "embedding_dim", "hash_buckets", "num_hashes", "share_layers", "ffn_rank", "attention")


def model_kwargs(cfg: Mapping[str, Mapping[str, Any]]) -> Dict[str, Any]:
    """The preset's shape with the ``[model]`` overrides, as Seq2SeqTransformer arguments
    (vocabulary sizes and special ids are added by the caller)."""
    m = cfg["model"]
    kw = dict(_presets()[m["preset"]])
    for key in ("d_model", "nhead", "dim_feedforward", "dropout", "max_len", "norm_first", "share_embeddings",
                "encoder", "encoder_kernel_size", *REDUCTION_KEYS):
        if m[key] is not None:
            kw[key] = m[key]
    if m["layers"] is not None:
        kw["num_encoder_layers"] = kw["num_decoder_layers"] = m["layers"]
    if m["encoder_layers"] is not None:
        kw["num_encoder_layers"] = m["encoder_layers"]
    if m["decoder_layers"] is not None:
        kw["num_decoder_layers"] = m["decoder_layers"]
    kw.setdefault("max_len", 256)
    return kw


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    s = str(v).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{s}"'


def dumps(cfg: Mapping[str, Mapping[str, Any]]) -> str:
    """A resolved configuration as TOML (unset keys are left out, so :func:`resolve` of the text
    gives the configuration back)."""
    lines = ["# tfm-rs train configuration (resolved); `tfm-rs train --config THIS_FILE` repeats the run"]
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        for key, value in cfg[section].items():
            if value is not None:
                lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n"
