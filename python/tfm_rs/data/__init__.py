"""Data for training: tokenizers, corpora (Multi30k), token-budget batching.

* :mod:`tfm_rs.data.tokenizer`: ``train_tokenizer`` / ``Tokenizer`` (Hugging Face ``tokenizers``),
  ``token_statistics`` (tokens per sentence, rate of ``<unk>``).
* :mod:`tfm_rs.data.corpus`: ``read_lines``, ``ParallelCorpus``, ``load_multi30k``.
* :mod:`tfm_rs.data.batching`: ``token_batches`` / ``TokenBatchSampler`` (resumable),
  ``pad_batch``, ``collate`` → ``Seq2SeqBatch``.
"""

from tfm_rs.data.batching import (
    Seq2SeqBatch,
    TokenBatchSampler,
    collate,
    iterate_batches,
    pad_batch,
    token_batches,
)
from tfm_rs.data.corpus import (
    CorpusError,
    ParallelCorpus,
    find_multi30k,
    iter_lines,
    load_multi30k,
    multi30k_files,
    read_lines,
)
from tfm_rs.data.tokenizer import (
    DEFAULT_SPECIAL_TOKENS,
    TokenStatistics,
    Tokenizer,
    build_tokenizer,
    run_tokenizer,
    token_statistics,
    train_tokenizer,
)

__all__ = [
    "CorpusError",
    "DEFAULT_SPECIAL_TOKENS",
    "ParallelCorpus",
    "Seq2SeqBatch",
    "TokenBatchSampler",
    "TokenStatistics",
    "Tokenizer",
    "build_tokenizer",
    "collate",
    "find_multi30k",
    "iter_lines",
    "iterate_batches",
    "load_multi30k",
    "multi30k_files",
    "pad_batch",
    "read_lines",
    "run_tokenizer",
    "token_batches",
    "token_statistics",
    "train_tokenizer",
]
