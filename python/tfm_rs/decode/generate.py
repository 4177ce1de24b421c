"""Generation for the encoder-decoder and the causal language model.

Every search runs in Rust with a key/value cache: no Python call per token (except in
:func:`stream`, which hands each token over as it is produced). Dropout is off while decoding,
whatever the model's train/eval mode.

Search settings (names and meaning as in Hugging Face ``generate``):

* ``num_beams`` (1 = greedy or sampling), ``length_penalty`` α: beam hypotheses are ranked by
  ``log P / ((5 + len) / 6) ** α`` (GNMT; ``len`` counts the EOS), ``num_return_sequences``
  (n-best lists, or independent samples).
* ``do_sample``, ``temperature``, ``top_k`` (0 = off), ``top_p`` in (0, 1], ``seed`` (None =
  drawn from tfm_rs's generator, so ``tfm_rs.manual_seed`` makes runs repeatable). Sample
  ``j`` of input ``i`` depends only on ``(seed, i, j)``, never on what else is in the batch.
* ``repetition_penalty`` (CTRL, 1 = off), ``no_repeat_ngram_size`` (0 = off); both look at
  the prompt and the generated tokens. ``suppress_tokens``: ids never generated; the padding
  id is always among them (a model never learns to predict padding, and a pad inside a
  sequence would be masked out by a full forward).

A beam search ends only when no live hypothesis can still beat the n-th finished one under
the length penalty (or at the length limit); nothing follows an EOS.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from tfm_rs import _core
from tfm_rs._core import InvalidArgumentError, ShapeError
from tfm_rs.autograd import no_grad
from tfm_rs.decode.protocol import CausalLanguageModel, EncoderDecoderModel, EngineWeightsModel
from tfm_rs.decode.weights import decoder_weights

__all__ = ["GenerationOutput", "generate_seq2seq", "generate_lm", "stream"]


@dataclass
class GenerationOutput:
    """The result of ``generate``: ``num_return_sequences`` hypotheses per input, input by input
    (hypothesis ``j`` of input ``i`` at ``i * num_return_sequences + j``; beam hypotheses best
    first).

    Attributes:
        sequences: token ids. Encoder-decoder: the generated tokens (no BOS), ending in EOS if
            one was produced. GPT: the prompt followed by the generated tokens.
        scores: what the search ranked by: ``log_probs / lp(len)`` for beam search, the total
            log-probability otherwise.
        log_probs: total log-probability of the generated tokens (after the repetition penalty
            and n-gram blocking, before temperature).
        num_return_sequences: hypotheses per input.
    """

    sequences: List[List[int]] = field(default_factory=list)
    scores: List[float] = field(default_factory=list)
    log_probs: List[float] = field(default_factory=list)
    num_return_sequences: int = 1

    def __len__(self) -> int:
        return len(self.sequences)


def _count(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise InvalidArgumentError(f"generate: {name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) or not np.isfinite(value):
        raise InvalidArgumentError(f"generate: {name} must be a finite number, got {value!r}")
    return float(value)


def _search_config(num_beams: int = 1, num_return_sequences: int = 1, length_penalty: float = 0.6,
                   do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
                   repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
                   eos_token_id: Optional[int] = None, seed: Optional[int] = None,
                   suppress_tokens: Sequence[int] = ()) -> Dict[str, Any]:
    """Type checks here; the value ranges (top_p in (0, 1], temperature > 0, …) are checked in
    Rust, with the same messages for every caller."""
    return dict(
        num_beams=_count("num_beams", num_beams, 0), num_return_sequences=_count("num_return_sequences",
                                                                                num_return_sequences, 0),
        length_penalty=_number("length_penalty", length_penalty), do_sample=bool(do_sample),
        temperature=_number("temperature", temperature), top_k=_count("top_k", top_k, 0),
        top_p=_number("top_p", top_p), repetition_penalty=_number("repetition_penalty", repetition_penalty),
        no_repeat_ngram_size=_count("no_repeat_ngram_size", no_repeat_ngram_size, 0),
        eos_token_id=None if eos_token_id is None else _count("eos_token_id", eos_token_id, 0),
        suppress_tokens=[_count("suppress_tokens", t, 0) for t in suppress_tokens],
        seed=None if seed is None else _count("seed", seed, 0) & (2 ** 64 - 1))


def _check(model: Any, protocol: type, what: str) -> None:
    if not isinstance(model, protocol):
        raise InvalidArgumentError(f"{what} needs a model implementing tfm_rs.decode.{protocol.__name__}, "
                                   f"got {type(model).__name__}")


def _output(results: List[List[Any]], n: int, prompts: Optional[Sequence[List[int]]] = None) -> GenerationOutput:
    out = GenerationOutput(num_return_sequences=n)
    for i, hyps in enumerate(results):
        for tokens, log_prob, score in hyps:
            out.sequences.append((list(prompts[i]) if prompts is not None else []) + list(tokens))
            out.log_probs.append(float(log_prob))
            out.scores.append(float(score))
    return out


def generate_seq2seq(model: EncoderDecoderModel, src_ids: Any, max_new_tokens: Optional[int] = None,
                     max_len_a: float = 1.5, max_len_b: int = 10, **search: Any) -> GenerationOutput:
    """Translations of ``src_ids (B, S)`` (padded with ``model.pad_id``; a 1-D sequence is one
    row). At most ``max_new_tokens`` tokens per sentence if given, else ``max_len_a · S_i +
    max_len_b`` for a source of ``S_i`` tokens (capped by the model's ``max_len``). Search
    settings as in the module docstring; EOS is ``model.eos_id``."""
    _check(model, EncoderDecoderModel, "generate_seq2seq")
    src = model.source_ids(src_ids)
    cfg = _search_config(eos_token_id=model.eos_id, **search)
    cfg["suppress_tokens"] = sorted({*cfg["suppress_tokens"], model.pad_id})
    mask = src == model.pad_id
    if max_new_tokens is not None:
        limits = [_count("max_new_tokens", max_new_tokens, 0)] * src.shape[0]
    else:
        a, b = _number("max_len_a", max_len_a), _number("max_len_b", max_len_b)
        lens = (~mask).sum(axis=1)
        limits = [int(min(max(a * n + b, 0), model.max_len)) for n in lens]
    was_training = model.training
    model.eval()
    try:
        with no_grad():
            memory = model.encoder_memory(src, mask)
        weights = decoder_weights(model)
    finally:
        model.train(was_training)
    results = _core.generate(weights, [[model.bos_id]] * src.shape[0], limits, cfg, memory, mask)
    return _output(results, cfg["num_return_sequences"])


def _prompts(model: CausalLanguageModel, prompt_ids: Any) -> List[List[int]]:
    """One prompt (a 1-D sequence) or many (a 2-D array, or a list of sequences that may differ
    in length), each checked against the vocabulary and ``max_len``."""
    if isinstance(prompt_ids, (list, tuple)) and prompt_ids and all(
            isinstance(p, (list, tuple, np.ndarray)) for p in prompt_ids):
        rows = list(prompt_ids)
    else:
        arr = prompt_ids.numpy() if hasattr(prompt_ids, "numpy") else np.asarray(prompt_ids)
        rows = [arr] if arr.ndim == 1 else list(arr)
    if not rows:
        raise ShapeError(f"{type(model).__name__}.generate: prompt_ids is an empty batch")
    return [model.prompt_ids(r, f"prompt {i}")[0].tolist() for i, r in enumerate(rows)]


def _lm_search(model: CausalLanguageModel, prompt_ids: Any, max_new_tokens: int, search: Dict[str, Any]):
    _check(model, CausalLanguageModel, "generate_lm")
    prompts = _prompts(model, prompt_ids)
    cfg = _search_config(**search)
    if model.pad_id is not None:
        cfg["suppress_tokens"] = sorted({*cfg["suppress_tokens"], model.pad_id})
    n = _count("max_new_tokens", max_new_tokens, 0)
    return prompts, [n] * len(prompts), cfg, _engine_weights(model)


def _engine_weights(model: CausalLanguageModel) -> Any:
    """The engine's weights: from the model's ``decoder_spec()``, or built by a model that a
    spec cannot describe (Llama)."""
    if not isinstance(model, EngineWeightsModel):
        return decoder_weights(model)
    with no_grad():  # the model may stack its projections: no graph for that
        return model.decoder_weights()


def generate_lm(model: CausalLanguageModel, prompt_ids: Any, max_new_tokens: int = 20,
                **search: Any) -> GenerationOutput:
    """Continuations of ``prompt_ids`` by a :class:`~tfm_rs.models.GPT` or
    :class:`~tfm_rs.models.Llama`: up to ``max_new_tokens``
    new tokens each, stopping early at ``eos_token_id`` if given. ``sequences`` hold prompt +
    continuation. Prompts may differ in length (pass a list of lists)."""
    prompts, limits, cfg, weights = _lm_search(model, prompt_ids, max_new_tokens, search)
    return _output(_core.generate(weights, prompts, limits, cfg), cfg["num_return_sequences"], prompts)


def stream(model: CausalLanguageModel, prompt_ids: Any, max_new_tokens: int = 20, **search: Any) -> Iterator[int]:
    """Yields the new token ids of one prompt's continuation as they are produced (greedy or
    sampling; beam search decides nothing before it ends, so it cannot stream)."""
    prompts, limits, cfg, weights = _lm_search(model, prompt_ids, max_new_tokens, search)
    if len(prompts) != 1:
        raise ShapeError(f"GPT.stream: streams one prompt at a time, got {len(prompts)}")
    if cfg["num_beams"] != 1 or cfg["num_return_sequences"] != 1:
        raise InvalidArgumentError("GPT.stream: beam search and several sequences cannot stream; use generate")
    search_state = _core.Search(weights, prompts, limits, cfg)
    while True:
        emitted = search_state.step()
        if emitted is None:
            return
        for _, _, token in emitted:
            yield token
