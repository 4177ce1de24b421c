"""Text corpora: line readers for plain or gzipped files, aligned parallel corpora, Multi30k.

Lines are split on ``"\\n"`` only (a trailing ``"\\r"`` of CRLF files is dropped too): Python's
universal-newline mode would also split on a stray ``"\\r"``, ``"\\x1c"`` or ``"\\u2028"`` inside
a sentence and silently misalign a parallel corpus.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Iterator, List, Optional, Sequence, Tuple, Union

from tfm_rs import _core

__all__ = ["CorpusError", "iter_lines", "read_lines", "ParallelCorpus", "load_multi30k", "find_multi30k",
           "MULTI30K_SPLITS", "multi30k_files"]

PathLike = Union[str, os.PathLike]

_GZIP_MAGIC = b"\x1f\x8b"


class CorpusError(_core.InvalidArgumentError):
    """A corpus file is unreadable as UTF-8 text, or two sides of a parallel corpus disagree."""


def _is_gzip(path: Path) -> bool:
    # By content, not by name: a .gz that was decompressed in place (or the reverse) still reads.
    with open(path, "rb") as f:
        return f.read(2) == _GZIP_MAGIC


def iter_lines(path: PathLike, encoding: str = "utf-8") -> Iterator[str]:
    """Stream the lines of a plain or gzipped text file, without their line terminator."""
    path = Path(path)
    raw = gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")
    # Binary lines split on b"\n" only, and decoding line by line lets an error name its line.
    with raw:
        lineno = 0
        try:
            for lineno, data in enumerate(raw, start=1):
                if data.endswith(b"\n"):
                    data = data[:-1]
                if data.endswith(b"\r"):
                    data = data[:-1]
                yield data.decode(encoding)
        except UnicodeDecodeError as e:
            raise CorpusError(f"{path}: line {lineno} is not valid {encoding} ({e.reason} at byte {e.start})") from e
        except (EOFError, gzip.BadGzipFile) as e:
            raise CorpusError(f"{path}: truncated or corrupt gzip data after line {lineno} ({e})") from e


def read_lines(path: PathLike, encoding: str = "utf-8") -> List[str]:
    """All lines of a plain or gzipped UTF-8 text file, newline stripped (nothing else is)."""
    return list(iter_lines(path, encoding))


class ParallelCorpus:
    """Two line-aligned files (sentence ``i`` of ``src_path`` translates sentence ``i`` of
    ``tgt_path``). ``corpus[i]`` is ``(src, tgt)``; ``corpus.src``/``corpus.tgt`` are the lists.

    Raises :class:`CorpusError` naming both files and both counts when the line counts differ.
    """

    def __init__(self, src_path: PathLike, tgt_path: PathLike, encoding: str = "utf-8") -> None:
        self.src_path, self.tgt_path = Path(src_path), Path(tgt_path)
        self.src = read_lines(self.src_path, encoding)
        self.tgt = read_lines(self.tgt_path, encoding)
        if len(self.src) != len(self.tgt):
            raise CorpusError(
                f"parallel corpus is misaligned: {self.src_path} has {len(self.src)} lines but "
                f"{self.tgt_path} has {len(self.tgt)}")

    def __len__(self) -> int:
        return len(self.src)

    def __getitem__(self, i: int) -> Tuple[str, str]:
        return self.src[i], self.tgt[i]

    def __iter__(self) -> Iterator[Tuple[str, str]]:
        return iter(zip(self.src, self.tgt))

    def __repr__(self) -> str:
        return f"ParallelCorpus({str(self.src_path)!r}, {str(self.tgt_path)!r}, {len(self)} pairs)"


# Multi30k (Elliott et al., 2016): the WMT16 multimodal task's file names. "test" means the 2016
# Flickr test set, the one the literature reports on.
MULTI30K_SPLITS = {"train": "train", "val": "val", "valid": "val", "validation": "val",
                   "test": "test_2016_flickr", "test_2016_flickr": "test_2016_flickr"}
MULTI30K_ENV = "TFM_RS_MULTI30K"


def _candidate_roots() -> List[Path]:
    """Where to look for ``shared/data/multi30k``: every ancestor of this file (an editable install
    lives in the repository, whose sibling is ``shared/``) and of the working directory, each as
    ``<ancestor>/shared/data/multi30k``."""
    seen, out = set(), []
    for start in (Path(__file__).resolve().parent, Path.cwd().resolve()):
        for anc in (start, *start.parents):
            cand = anc / "shared" / "data" / "multi30k"
            if cand not in seen:
                seen.add(cand)
                out.append(cand)
    return out


def find_multi30k(root: Optional[PathLike] = None) -> Path:
    """The Multi30k directory: ``root`` if given, else ``$TFM_RS_MULTI30K``, else the nearest
    ``shared/data/multi30k`` above the package or the working directory (the repository's
    ``../shared/data/multi30k``). Raises FileNotFoundError listing what was tried."""
    if root is not None:
        tried = [Path(root)]
    elif os.environ.get(MULTI30K_ENV):
        tried = [Path(os.environ[MULTI30K_ENV])]
    else:
        tried = _candidate_roots()
    for cand in tried:
        if cand.is_dir():
            return cand
    where = ", ".join(str(t) for t in tried[:6]) + (", …" if len(tried) > 6 else "")
    raise FileNotFoundError(
        f"Multi30k not found (tried {where}). Pass root=..., or set {MULTI30K_ENV} to the directory holding "
        "train.de.gz, train.en.gz, val.*, test_2016_flickr.* (plain or .gz).")


def _split_file(root: Path, split: str, lang: str) -> Path:
    for name in (f"{split}.{lang}.gz", f"{split}.{lang}"):
        if (root / name).is_file():
            return root / name
    plain = root / (split + "." + lang)
    raise FileNotFoundError(f"Multi30k: neither {plain}.gz nor {plain} exists")


def load_multi30k(split: str = "train", src: str = "de", tgt: str = "en",
                  root: Optional[PathLike] = None) -> ParallelCorpus:
    """Multi30k ``split`` ("train", "val", "test" = "test_2016_flickr") as a :class:`ParallelCorpus`
    from ``src`` to ``tgt`` ("de", "en", "fr"). See :func:`find_multi30k` for where it looks."""
    if split not in MULTI30K_SPLITS:
        raise _core.InvalidArgumentError(f"load_multi30k: unknown split {split!r}; one of {sorted(MULTI30K_SPLITS)}")
    if src == tgt:
        raise _core.InvalidArgumentError(f"load_multi30k: src and tgt are both {src!r}")
    base = find_multi30k(root)
    name = MULTI30K_SPLITS[split]
    return ParallelCorpus(_split_file(base, name, src), _split_file(base, name, tgt))


def multi30k_files(split: str = "train", langs: Sequence[str] = ("de", "en"),
                   root: Optional[PathLike] = None) -> List[Path]:
    """The files of ``split`` for each language (e.g. to train a joint tokenizer)."""
    base = find_multi30k(root)
    name = MULTI30K_SPLITS[split]
    return [_split_file(base, name, lang) for lang in langs]
