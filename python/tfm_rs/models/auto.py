"""A pretrained causal language model chosen by what its files say: a ``.gguf`` file or a
directory whose ``config.json`` names ``model_type`` ``llama``/``mistral`` → :class:`Llama`,
``gpt2`` → :class:`GPT`."""

from __future__ import annotations

from typing import Any, Optional

from tfm_rs.models.gpt import GPT
from tfm_rs.models.llama import Llama
from tfm_rs.pretrained import UnsupportedConfigError, read_config

__all__ = ["causal_lm_from_pretrained", "generate_pretrained_text"]

_FAMILIES = {"gpt2": GPT, "llama": Llama, "mistral": Llama}


def causal_lm_from_pretrained(path: Any) -> Any:
    if str(path).endswith(".gguf"):
        return Llama.from_pretrained(path)
    kind = read_config(path).get("model_type")
    if kind not in _FAMILIES:
        raise UnsupportedConfigError(f"{path}: model_type {kind!r} is not a causal LM family tfm_rs loads "
                                     f"({', '.join(sorted(_FAMILIES))})")
    return _FAMILIES[kind].from_pretrained(path)


def generate_pretrained_text(path: Any, prompt: str, max_new_tokens: int, temperature: float = 1.0, top_k: int = 0,
                             top_p: float = 1.0, seed: Optional[int] = None, greedy: bool = False) -> str:
    """The continuation of ``prompt`` (text) by the model at ``path``, with its own tokenizer;
    stops at the model's end-of-sequence token."""
    model = causal_lm_from_pretrained(path)
    if model.tokenizer is None:
        raise UnsupportedConfigError(f"{path}: no tokenizer (tokenizer.json, or a byte-level BPE vocabulary in the "
                                     "GGUF metadata) to turn the prompt into ids")
    ids = model.tokenizer.encode(prompt).ids
    bos = getattr(model, "bos_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    if not ids:
        raise UnsupportedConfigError(f"{path}: the prompt is empty and the model has no beginning-of-sequence token")
    eos = getattr(model, "eos_id", None)
    search = dict(do_sample=not greedy, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
    out = model.generate(ids, max_new_tokens, eos_token_id=eos, **search)
    new = out.sequences[0][len(ids):]
    if eos is not None and new and new[-1] == eos:
        new = new[:-1]
    return model.tokenizer.decode(new)
