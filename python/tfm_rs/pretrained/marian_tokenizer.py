"""The SentencePiece tokenizers of Marian checkpoints (Helsinki-NLP's opus-mt): ``source.spm``,
``target.spm`` and ``vocab.json`` (with ``target_vocab.json`` where ``tokenizer_config.json`` says
``separate_vocabs``), read as ``transformers``' ``MarianTokenizer`` reads them.

SentencePiece cuts text into pieces, but the model's ids are not SentencePiece's: ``vocab.json``
maps each piece to its id, and a piece it lacks is ``<unk>``. Encoding: a leading language code
(``>>fr<<``, which multilingual opus-mt models expect) is split off as one piece, ``source.spm``
cuts the rest, and ``</s>`` is appended. Decoding: ids become pieces through the target
vocabulary, special tokens are skipped, and ``target.spm`` joins the pieces into text.

Unlike ``MarianTokenizer``, special-token strings written in the text (``"</s>"``) are cut as
text, not read as their ids. The ``sentencepiece`` package (an optional dependency) is imported
only when such a directory is read.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence

from tfm_rs import _core
from tfm_rs.data.tokenizer import _as_id_list
from tfm_rs.pretrained.errors import PretrainedFormatError
from tfm_rs.pretrained.hf import PathLike, checkpoint_dir, config_value, read_json

__all__ = ["MarianTokenizer", "load_marian_tokenizer"]

SPM_FILES = ("source.spm", "target.spm")
CONFIG_FILE = "tokenizer_config.json"
SPIECE_UNDERLINE = "▁"


def _sentencepiece() -> Any:
    try:
        import sentencepiece
    except ImportError as e:  # optional: only opus-mt's tokenizers need it
        raise ImportError("reading a Marian SentencePiece tokenizer (source.spm, target.spm) needs the sentencepiece "
                          "package: pip install sentencepiece") from e
    return sentencepiece


def _processor(sentencepiece: Any, path: Path, data: bytes) -> Any:
    sp = sentencepiece.SentencePieceProcessor()
    try:
        # Not the model_proto= argument: it silently leaves an empty file's processor unloaded.
        sp.LoadFromSerializedProto(data)
    except Exception as e:  # sentencepiece raises RuntimeError with its C++ message
        raise PretrainedFormatError(f"{path}: not a SentencePiece model ({e})") from None
    return sp


def _token(config: Dict[str, Any], key: str, default: str, owner: str) -> str:
    value = config.get(key)
    if isinstance(value, dict):  # an AddedToken, as transformers 4 wrote some
        value = value.get("content")
    return config_value({key: value}, key, str, default, owner=owner)


def _vocab(path: Path) -> Dict[str, int]:
    vocab = read_json(path, "vocabulary (piece → id)")
    bad = next(((k, v) for k, v in vocab.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0), None)
    if bad is not None:
        raise PretrainedFormatError(f"{path}: {bad[0]!r} maps to {bad[1]!r}, not a token id")
    return vocab


class MarianTokenizer:
    """Text ⇄ ids for a Marian checkpoint directory, with what :func:`tfm_rs.decode.translate`
    and ``tfm-rs translate`` use of :class:`tfm_rs.data.Tokenizer`: ``encode``,
    ``encode_batch``, ``decode``, ``pad_id``/``bos_id``/``eos_id``/``unk_id``. Unlike it,
    ``encode`` appends ``</s>`` by default, as Marian's models expect of a source sentence
    (``add_special_tokens=False`` leaves it off). ``encode`` and ``token_to_id`` use the source
    vocabulary (``vocab.json``), ``decode`` and ``id_to_token`` the target one (the same file, or
    ``target_vocab.json`` with ``separate_vocabs``)."""

    def __init__(self, path: PathLike) -> None:
        d = checkpoint_dir(path)
        missing = [name for name in (*SPM_FILES, "vocab.json") if not (d / name).is_file()]
        if missing:
            raise PretrainedFormatError(f"{d}: no {', '.join(missing)}; a Marian SentencePiece tokenizer is "
                                        "source.spm, target.spm and vocab.json")
        self.config = read_json(d / CONFIG_FILE, CONFIG_FILE) if (d / CONFIG_FILE).is_file() else {}
        owner = str(d / CONFIG_FILE)
        self.pad_token, self.eos_token, self.unk_token = (
            _token(self.config, f"{role}_token", default, owner)
            for role, default in (("pad", "<pad>"), ("eos", "</s>"), ("unk", "<unk>")))
        self._vocab = _vocab(d / "vocab.json")
        absent = [t for t in (self.pad_token, self.eos_token, self.unk_token) if t not in self._vocab]
        if absent:
            raise PretrainedFormatError(f"{d / 'vocab.json'}: no {', '.join(absent)}")
        separate = config_value(self.config, "separate_vocabs", bool, False, owner=owner)
        self._target_vocab = _vocab(d / "target_vocab.json") if separate else self._vocab
        self._pieces = {i: piece for piece, i in self._target_vocab.items()}
        sentencepiece = _sentencepiece()
        self._spm = {name: (d / name).read_bytes() for name in SPM_FILES}  # written back by save
        self._source, self._target = (_processor(sentencepiece, d / name, self._spm[name]) for name in SPM_FILES)

    # -- ids -------------------------------------------------------------------------------------

    @property
    def pad_id(self) -> int:
        return self._vocab[self.pad_token]

    @property
    def bos_id(self) -> int:
        """Marian has no ``<s>``: its decoder starts from the pad token (opus-mt's
        ``decoder_start_token_id``)."""
        return self.pad_id

    @property
    def eos_id(self) -> int:
        return self._vocab[self.eos_token]

    @property
    def unk_id(self) -> int:
        return self._vocab[self.unk_token]

    @property
    def vocab_size(self) -> int:
        """Entries of ``vocab.json`` (the source side), as ``MarianTokenizer.vocab_size``."""
        return len(self._vocab)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str) -> Optional[int]:
        return self._vocab.get(token)

    def id_to_token(self, i: int) -> Optional[str]:
        return self._pieces.get(i)

    # -- encode / decode -------------------------------------------------------------------------

    def tokenize(self, text: str) -> List[str]:
        """The pieces of ``text``: a leading language code such as ``>>fr<<`` as one piece (it is
        in ``vocab.json``, not in ``source.spm``), then ``source.spm``'s pieces of the rest."""
        code, end = [], text.find("<<")
        if text.startswith(">>") and end != -1:
            code, text = [text[: end + 2]], text[end + 2:]
        return code + self._source.encode(text, out_type=str)

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        """Ids of ``text``, ``</s>`` appended with ``add_special_tokens``."""
        if not isinstance(text, str):
            raise _core.DTypeError(f"MarianTokenizer.encode: expected str, got {type(text).__name__}")
        ids = [self._vocab.get(piece, self.unk_id) for piece in self.tokenize(text)]
        return ids + [self.eos_id] if add_special_tokens else ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True) -> List[List[int]]:
        return [self.encode(text, add_special_tokens) for text in texts]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        """The text of ``ids`` (ints, or a 1-D array/Tensor) as ``MarianTokenizer.decode``: pieces
        joined by ``target.spm``, special tokens dropped (or kept as words)."""
        ids = _as_id_list(ids)
        bad = [i for i in ids if i not in self._pieces]
        if bad:
            raise _core.IndexOutOfRangeError(f"MarianTokenizer.decode: ids {bad[:5]} are not in the vocabulary")
        special = (self.pad_token, self.eos_token, self.unk_token)
        text, run = "", []
        for piece in (self._pieces[i] for i in ids):
            if piece not in special:
                run.append(piece)
            elif not skip_special_tokens:
                text += self._target.decode_pieces(run) + piece + " "
                run = []
        # SentencePiece passes pieces it does not know (the other language's, in a shared
        # vocabulary) through verbatim, word-boundary mark included.
        return (text + self._target.decode_pieces(run)).replace(SPIECE_UNDERLINE, " ").strip()

    def decode_batch(self, batch: Iterable[Iterable[int]], skip_special_tokens: bool = True) -> List[str]:
        return [self.decode(ids, skip_special_tokens) for ids in batch]

    # -- persistence -----------------------------------------------------------------------------

    def save(self, directory: PathLike) -> Path:
        """Writes the files this tokenizer was read from into ``directory`` (returned)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        for name, data in self._spm.items():
            (d / name).write_bytes(data)
        files = {"vocab.json": self._vocab, CONFIG_FILE: self.config}
        if self._target_vocab is not self._vocab:
            files["target_vocab.json"] = self._target_vocab
        for name, value in files.items():
            (d / name).write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return d


def load_marian_tokenizer(path: PathLike) -> Optional[MarianTokenizer]:
    """The Marian SentencePiece tokenizer of a checkpoint directory, or ``None`` if it has no
    ``.spm`` file (a directory with only some of the files is an error naming the others)."""
    d = checkpoint_dir(path)
    return MarianTokenizer(d) if any((d / name).exists() for name in SPM_FILES) else None
