"""Subword tokenizers: a thin wrapper over Hugging Face ``tokenizers`` (Rust, parallel).

Five kinds, all detokenizing back to the original text (``decode(encode(s)) == s`` for a
sentence with single spaces and characters seen in training, up to NFC normalization and the
optional lowercasing):

* ``"bpe"``: BPE with the ``Metaspace`` pre-tokenizer/decoder (SentencePiece's "▁" word
  boundaries; punctuation split off). Characters never seen in training become ``<unk>``.
* ``"wordpiece"``: WordPiece (``##`` continuations) over the same ``Metaspace`` words, so spacing
  round-trips too (BERT's whitespace/punctuation pre-tokenizer would not).
* ``"byte_bpe"``: byte-level BPE (GPT-2's ``ByteLevel``): no ``<unk>`` ever, any string round-trips
  exactly, at the cost of less readable tokens.
* ``"word"``: one token per word (the same ``Metaspace`` words, punctuation split off): the
  vocabulary-size extreme; a word never seen in training, or below ``min_frequency``, is ``<unk>``.
* ``"char"``: one token per character (BPE with no merges; "▁" marks each word start): the
  sequence-length extreme; ``vocab_size`` caps the alphabet, the rarest characters beyond it are
  ``<unk>``.

:func:`token_statistics` measures what a vocabulary costs on a text: tokens per sentence and the
rate of ``<unk>``.

Special tokens come first in the vocabulary, in the order given, so the defaults give
``pad=0, bos=1, eos=2, unk=3``, what the tfm_rs models assume. :meth:`Tokenizer.encode` adds no
special tokens by default: :mod:`tfm_rs.data.batching` adds BOS/EOS where the model needs them.
"""

from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Union

from tfm_rs import _core
from tfm_rs.data.corpus import iter_lines

__all__ = ["Tokenizer", "TokenStatistics", "train_tokenizer", "run_tokenizer", "token_statistics",
           "DEFAULT_SPECIAL_TOKENS", "TOKENIZER_KINDS"]

DEFAULT_SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
TOKENIZER_KINDS = ("bpe", "wordpiece", "byte_bpe", "word", "char")
PathLike = Union[str, os.PathLike]


def _hf():
    try:
        import tokenizers
    except ImportError as e:  # a runtime dependency, but say what to do if it is missing
        raise ImportError("tfm_rs.data.tokenizer needs Hugging Face `tokenizers` (pip install tokenizers)") from e
    return tokenizers


class Tokenizer:
    """Text ⇄ ids. Wraps a ``tokenizers.Tokenizer`` and knows which of its tokens are
    pad/bos/eos/unk (by their strings; ``<pad>, <s>, </s>, <unk>`` unless told otherwise)."""

    def __init__(self, hf_tokenizer, pad_token: str = "<pad>", bos_token: str = "<s>", eos_token: str = "</s>",
                 unk_token: str = "<unk>") -> None:
        self._tok = hf_tokenizer
        self.pad_token, self.bos_token, self.eos_token, self.unk_token = pad_token, bos_token, eos_token, unk_token
        missing = [t for t in (pad_token, bos_token, eos_token, unk_token) if hf_tokenizer.token_to_id(t) is None]
        # A byte-level tokenizer never produces <unk>, but we still reserve the id so every kind has it.
        if missing:
            raise _core.InvalidArgumentError(
                f"Tokenizer: the vocabulary has no {missing}; pass pad_token/bos_token/eos_token/unk_token naming "
                "its special tokens")

    # -- ids -------------------------------------------------------------------------------------

    @property
    def pad_id(self) -> int:
        return self._tok.token_to_id(self.pad_token)

    @property
    def bos_id(self) -> int:
        return self._tok.token_to_id(self.bos_token)

    @property
    def eos_id(self) -> int:
        return self._tok.token_to_id(self.eos_token)

    @property
    def unk_id(self) -> int:
        return self._tok.token_to_id(self.unk_token)

    @property
    def vocab_size(self) -> int:
        """Number of ids, special tokens included (the embedding table's size)."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> Optional[int]:
        return self._tok.token_to_id(token)

    def id_to_token(self, i: int) -> Optional[str]:
        return self._tok.id_to_token(i)

    def get_vocab(self) -> dict:
        return self._tok.get_vocab(with_added_tokens=True)

    @property
    def backend_tokenizer(self):
        """The wrapped ``tokenizers.Tokenizer`` (HF's attribute name)."""
        return self._tok

    # -- encode / decode -------------------------------------------------------------------------

    def _wrap(self, ids: List[int], add_special_tokens: bool) -> List[int]:
        return [self.bos_id, *ids, self.eos_id] if add_special_tokens else ids

    def encode(self, text: str, add_special_tokens: bool = False) -> List[int]:
        """Ids of ``text``; with ``add_special_tokens`` wrapped as ``[bos, …, eos]``."""
        if not isinstance(text, str):
            raise _core.DTypeError(f"Tokenizer.encode: expected str, got {type(text).__name__}")
        return self._wrap(self._tok.encode(text, add_special_tokens=False).ids, add_special_tokens)

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> List[List[int]]:
        """:meth:`encode` for many texts, in parallel (Rust threads)."""
        texts = list(texts)
        bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
        if bad is not None:
            raise _core.DTypeError(f"Tokenizer.encode_batch: item {bad} is {type(texts[bad]).__name__}, not str")
        return [self._wrap(e.ids, add_special_tokens)
                for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def tokenize(self, text: str) -> List[str]:
        """The subword strings of ``text`` (for inspection)."""
        return self._tok.encode(text, add_special_tokens=False).tokens

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """Detokenized text of ``ids`` (ints, or a 1-D array/Tensor). Generation output usually runs
        past EOS; cut it at the first EOS yourself, or use :meth:`decode_until_eos`."""
        ids = _as_id_list(ids)
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise _core.IndexOutOfRangeError(f"Tokenizer.decode: ids {bad[:5]} outside [0, {self.vocab_size})")
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = True) -> List[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    def decode_until_eos(self, ids: Iterable[int]) -> str:
        """Decode up to (not including) the first EOS, skipping special tokens: the usual way to
        turn a greedy/beam output row into text."""
        ids = _as_id_list(ids)
        eos = self.eos_id
        if eos in ids:
            ids = ids[: ids.index(eos)]
        return self.decode(ids, skip_special_tokens=True)

    # -- persistence -----------------------------------------------------------------------------

    def save(self, path: PathLike) -> Path:
        """Write ``tokenizer.json`` (HF's format). ``path`` is the file, or a directory to put it in.
        Returns the file written."""
        path = Path(path)
        if path.is_dir() or path.suffix != ".json":
            path.mkdir(parents=True, exist_ok=True)
            path = path / "tokenizer.json"
        tmp = path.with_name(path.name + ".tmp")
        self._tok.save(str(tmp))
        os.replace(tmp, path)  # a reader never sees half a file
        return path

    @classmethod
    def load(cls, path: PathLike, **special_tokens: str) -> "Tokenizer":
        """Read a ``tokenizer.json`` (a file, or a directory holding one). ``special_tokens``:
        ``pad_token=…`` etc. when they are not the defaults."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"Tokenizer.load: no tokenizer file at {path}")
        try:
            hf = _hf().Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise _core.InvalidArgumentError(f"Tokenizer.load: {path} is not a valid tokenizer.json ({e})") from e
        return cls(hf, **special_tokens)

    def __repr__(self) -> str:
        model = type(self._tok.model).__name__
        return (f"Tokenizer({model}, vocab_size={self.vocab_size}, pad={self.pad_id}, bos={self.bos_id}, "
                f"eos={self.eos_id}, unk={self.unk_id})")


def _as_id_list(ids) -> List[int]:
    if hasattr(ids, "numpy") and not isinstance(ids, (list, tuple)):
        ids = ids.numpy()
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    ids = list(ids)
    if any(isinstance(i, (list, tuple)) for i in ids):
        raise _core.ShapeError("Tokenizer.decode: expected one sequence of ids (use decode_batch for a batch)")
    return [int(i) for i in ids]


def _lines(files: Sequence[PathLike], max_lines: Optional[int]) -> Iterator[str]:
    n = 0
    for f in files:
        for line in iter_lines(f):
            if max_lines is not None and n >= max_lines:
                return
            n += 1
            yield line


def _metaspace_words(pre_tokenizers):
    # Metaspace marks word starts with "▁" (so spacing survives decoding); splitting punctuation
    # off as well keeps "Holz." from becoming its own token, and still decodes exactly, since a
    # split-off "." carries no "▁" and is glued back to its word.
    return pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])


def build_tokenizer(kind: str = "bpe", unk_token: str = "<unk>", lowercase: bool = False):
    """An untrained ``tokenizers.Tokenizer`` of ``kind``, with its normalizer, pre-tokenizer and
    decoder set (see the module docstring)."""
    tk = _hf()
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers

    if kind not in TOKENIZER_KINDS:
        raise _core.InvalidArgumentError(f"unknown tokenizer kind {kind!r}; one of {TOKENIZER_KINDS}")
    if kind in ("bpe", "char"):  # a character tokenizer is a BPE that learns no merges
        tok = tk.Tokenizer(models.BPE(unk_token=unk_token))
        tok.pre_tokenizer = _metaspace_words(pre_tokenizers)
        tok.decoder = decoders.Metaspace()
    elif kind == "word":
        tok = tk.Tokenizer(models.WordLevel(unk_token=unk_token))
        tok.pre_tokenizer = _metaspace_words(pre_tokenizers)
        tok.decoder = decoders.Metaspace()
    elif kind == "wordpiece":
        tok = tk.Tokenizer(models.WordPiece(unk_token=unk_token))
        tok.pre_tokenizer = _metaspace_words(pre_tokenizers)
        # Strip the "##" of continuation pieces only (anchored: a literal "##" inside a piece stays),
        # then let Metaspace turn "▁" back into spaces and join.
        tok.decoder = decoders.Sequence([decoders.Replace(Regex("^##"), ""), decoders.Metaspace()])
    else:
        tok = tk.Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
    # NFC only: it merges decomposed accents (common in scraped German/French) without changing
    # what the text looks like, so detokenized output still matches references for BLEU.
    norm = [normalizers.NFC()] + ([normalizers.Lowercase()] if lowercase else [])
    tok.normalizer = normalizers.Sequence(norm)
    return tok


def train_tokenizer(files: Union[PathLike, Sequence[PathLike]], vocab_size: int, kind: str = "bpe",
                    special_tokens: Sequence[str] = DEFAULT_SPECIAL_TOKENS, lowercase: bool = False,
                    min_frequency: int = 2, max_lines: Optional[int] = None,
                    texts: Optional[Iterable[str]] = None) -> Tokenizer:
    """Train a :class:`Tokenizer` of ``kind`` ("bpe", "wordpiece", "byte_bpe", "word", "char") on the lines of
    ``files`` (plain or .gz, streamed) and/or the strings in ``texts``.

    ``special_tokens`` get ids ``0, 1, 2, …`` in order; the first four are the pad, bos, eos and unk
    tokens (any further ones are extra reserved tokens). ``vocab_size`` is an upper bound (a small
    corpus may yield fewer tokens). ``max_lines`` caps the lines read across all files (quick runs).
    A joint source+target vocabulary (as in the paper) is one call with both languages' files.
    """
    _hf()  # the clear ImportError if tokenizers is missing
    from tokenizers import pre_tokenizers, trainers

    special_tokens = list(special_tokens)
    if len(special_tokens) < 4 or len(set(special_tokens)) != len(special_tokens):
        raise _core.InvalidArgumentError(
            "train_tokenizer: special_tokens must be ≥ 4 distinct tokens (pad, bos, eos, unk, …), "
            f"got {special_tokens}")
    if vocab_size <= len(special_tokens):
        raise _core.InvalidArgumentError(
            f"train_tokenizer: vocab_size {vocab_size} leaves no room beyond the special tokens")
    if isinstance(files, (str, os.PathLike)):
        files = [files]
    files = [Path(f) for f in (files or [])]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"train_tokenizer: no such file {f}")
    if not files and texts is None:
        raise _core.InvalidArgumentError("train_tokenizer: give files and/or texts")

    pad, bos, eos, unk = special_tokens[:4]
    tok = build_tokenizer(kind, unk_token=unk, lowercase=lowercase)
    common = dict(vocab_size=int(vocab_size), min_frequency=int(min_frequency), special_tokens=special_tokens,
                  show_progress=False)
    if kind == "wordpiece":
        trainer = trainers.WordPieceTrainer(**common)
    elif kind == "word":
        trainer = trainers.WordLevelTrainer(**common)
    elif kind == "bpe":
        trainer = trainers.BpeTrainer(**common)
    elif kind == "char":
        # A vocabulary no larger than the specials leaves no room for merges: the trainer keeps
        # the (capped) alphabet alone.
        trainer = trainers.BpeTrainer(**{**common, "vocab_size": 0},
                                      limit_alphabet=int(vocab_size) - len(special_tokens))
    else:
        # All 256 byte symbols up front, so no input can ever fall outside the vocabulary.
        trainer = trainers.BpeTrainer(**common, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def stream() -> Iterator[str]:
        yield from _lines(files, max_lines)
        if texts is not None:
            yield from texts

    tok.train_from_iterator(stream(), trainer=trainer)
    out = Tokenizer(tok, pad_token=pad, bos_token=bos, eos_token=eos, unk_token=unk)
    # Trainers put special tokens first in the order given; check, since the models rely on it.
    got = [out.token_to_id(t) for t in special_tokens]
    if got != list(range(len(special_tokens))):
        raise _core.InternalError(
            f"train_tokenizer: special tokens got ids {got}, expected 0..{len(special_tokens) - 1}")
    return out


@dataclass(frozen=True)
class TokenStatistics:
    """What a tokenizer makes of some sentences: ``tokens`` in all (no BOS/EOS), their mean and
    largest count per sentence, and how many of them are ``<unk>`` (``unknown_rate`` = the fraction
    of tokens)."""

    sentences: int
    tokens: int
    tokens_per_sentence: float
    longest: int
    unknown: int
    unknown_rate: float


def token_statistics(tokenizer: Tokenizer, texts: Sequence[str]) -> TokenStatistics:
    """:class:`TokenStatistics` of ``tokenizer`` on ``texts`` (at least one sentence)."""
    texts = list(texts)
    if not texts:
        raise _core.InvalidArgumentError("token_statistics: no sentences given")
    lengths, unknown = [], 0
    unk = tokenizer.unk_id
    for ids in tokenizer.encode_batch(texts):
        lengths.append(len(ids))
        unknown += sum(1 for i in ids if i == unk)
    tokens = sum(lengths)
    return TokenStatistics(len(texts), tokens, tokens / len(texts), max(lengths), unknown, unknown / max(tokens, 1))


def run_tokenizer(run_file: Optional[PathLike], given: Optional[PathLike],
                  train: Callable[[], Tokenizer]) -> Tokenizer:
    """The tokenizer of a training run: the ``given`` tokenizer.json if there is one, else the run's
    own ``run_file`` if it exists (a resumed run), else ``train()``. The result is saved as
    ``run_file`` (when given) unless it was read from there, so the run keeps what it used."""
    own = Path(run_file) if run_file is not None else None
    if given is not None:
        tok = Tokenizer.load(given)
    elif own is not None and own.is_file():
        return Tokenizer.load(own)
    else:
        tok = train()
    if own is not None:
        tok.save(own)
    return tok
