"""Claim 9: one explainer says self-attention uses random masks and cross-attention uses future
(causal) masks. The experiment records, with forward pre-hooks, the masks every attention module
of an encoder-decoder, a GPT and a BERT really receives on a padded batch, turns each into the
picture of which keys each query may attend to, and names its kind; it runs the batch twice to
see whether anything in the masks is random, and shows where BERT's randomness lives: in
``mask_tokens``, on the input ids.
"""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Tuple

import numpy as np

import tfm_rs
from tfm_rs import nn
from tfm_rs.claims.base import Claim, Outcome
from tfm_rs.models import GPT, BertEncoder, Seq2SeqTransformer

PAD = 0
_SIG = inspect.signature(nn.MultiheadAttention.forward)


def _allowed(kw: Dict[str, Any], q_len: int, k_len: int) -> np.ndarray:
    """Sample 0's ``(L, S)`` boolean picture: True where query i may attend to key j."""
    allowed = np.ones((q_len, k_len), bool)
    if kw.get("is_causal"):
        allowed &= np.tril(np.ones((q_len, k_len), bool))
    mask = kw.get("attn_mask")
    if mask is not None:
        m = np.asarray(mask.numpy() if isinstance(mask, tfm_rs.Tensor) else mask)
        m = m[0] if m.ndim == 3 else m
        allowed &= ~m if m.dtype == np.bool_ else np.isfinite(m)
    kpm = kw.get("key_padding_mask")
    if kpm is not None:
        k = np.asarray(kpm.numpy() if isinstance(kpm, tfm_rs.Tensor) else kpm)[0]
        allowed &= ~k[None, :] if k.dtype == np.bool_ else np.isfinite(k)[None, :]
    return allowed


def kind_of(allowed: np.ndarray, key_is_pad: np.ndarray) -> str:
    """Names a picture: none, padding, causal, causal+padding, or other."""
    q_len, k_len = allowed.shape
    causal = np.tril(np.ones((q_len, k_len), bool))
    pad = np.broadcast_to(~key_is_pad[None, :], allowed.shape)
    for name, pattern in [("none", np.ones_like(allowed)), ("padding", pad), ("causal", causal),
                          ("causal+padding", causal & pad)]:
        if np.array_equal(allowed, pattern):
            return name
    return "other"


def record(model: nn.Module, run: Any) -> List[Tuple[str, Dict[str, Any], Tuple[int, int]]]:
    """Runs ``run()`` with a hook on every attention module; returns (name, kwargs, (L, S))."""
    seen: List[Tuple[str, Dict[str, Any], Tuple[int, int]]] = []
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.MultiheadAttention):
            def hook(m: Any, args: Tuple[Any, ...], kwargs: Dict[str, Any], name: str = name) -> None:
                bound = _SIG.bind(m, *args, **kwargs).arguments
                seen.append((name, bound, (bound["query"].shape[1], bound["key"].shape[1])))
            handles.append(module.register_forward_pre_hook(hook, with_kwargs=True))
    try:
        with tfm_rs.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return seen


def _batch(rng: np.random.Generator, lengths: List[int], vocab: int) -> np.ndarray:
    ids = np.full((len(lengths), max(lengths)), PAD, np.int64)
    for i, n in enumerate(lengths):
        ids[i, :n] = rng.integers(5, vocab, n)
    return ids


def experiment(quick: bool) -> Outcome:
    del quick  # a few forward passes of tiny models: always quick
    rng = np.random.default_rng(0)
    vocab = 50
    src, tgt = _batch(rng, [6, 8], vocab), _batch(rng, [5, 7], vocab)
    tfm_rs.manual_seed(0)
    kw = dict(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0)
    s2s = Seq2SeqTransformer(vocab, vocab, num_encoder_layers=1, num_decoder_layers=1, pad_id=PAD, **kw).eval()
    gpt = GPT(vocab, num_layers=1, pad_id=PAD, max_len=32, **{k: v for k, v in kw.items()}).eval()
    bert = BertEncoder(vocab, num_layers=1, pad_id=PAD, max_len=32, **kw).eval()
    runs = {"encoder-decoder": (s2s, lambda: s2s(src, tgt), {"encoder": src, "decoder": tgt}),
            "GPT": (gpt, lambda: gpt(tgt), {"": tgt}),
            "BERT": (bert, lambda: bert(src), {"": src})}
    pictures: Dict[str, np.ndarray] = {}
    kinds: Dict[str, str] = {}
    deterministic = True
    for model_name, (model, run, inputs) in runs.items():
        first, second = record(model, run), record(model, run)
        for (name, bound, (q_len, k_len)), (_, bound2, _) in zip(first, second):
            picture = _allowed(bound, q_len, k_len)
            deterministic &= np.array_equal(picture, _allowed(bound2, q_len, k_len))
            # Cross-attention's keys are the encoder's (source) tokens; self-attention's its own input.
            side = "encoder" if ("multihead_attn" in name or ".encoder." in name) else "decoder"
            keys = inputs.get(side, inputs.get(""))
            role = ("cross-attention" if "multihead_attn" in name else
                    f"{side} self-attention" if model_name == "encoder-decoder" else "self-attention")
            label = f"{model_name}\n{role}"
            pictures[label] = picture
            kinds[label] = kind_of(picture, keys[0, :k_len] == PAD)
    ids = _batch(rng, [8], vocab)
    masked, labels = bert.mask_tokens(ids, np.random.default_rng(1), mlm_probability=0.5)
    changed = int((masked != ids).sum())
    cross = [k for n, k in kinds.items() if "cross-attention" in n]
    self_kinds = [k for n, k in kinds.items() if n not in cross]
    random_nowhere = deterministic and "other" not in kinds.values()
    verdict = "wrong" if random_nowhere and "causal" not in " ".join(cross) else "holds"
    summary = (f"self-attention masks: {sorted(set(self_kinds))}; cross-attention: {sorted(set(cross))}; the "
               f"masks are identical on a second run (nothing random); BERT's randomness is in its input ids "
               f"(mask_tokens changed {changed} of {ids.size} ids at p=0.5), not in its attention")

    def draw(plt: Any) -> Any:
        fig, axes = plt.subplots(1, len(pictures), figsize=(2.8 * len(pictures), 3.6))
        for ax, (label, pic) in zip(np.atleast_1d(axes), pictures.items()):
            ax.imshow(pic, cmap="Greys_r", vmin=0, vmax=1)
            ax.set_title(f"{label}\n→ {kinds[label]}", fontsize=8)
            ax.set_xlabel("key")
            ax.set_ylabel("query")
        return fig

    return Outcome(verdict, summary, {"kinds": kinds, "deterministic": deterministic,
                                      "mask_tokens_changed": changed}, {"attention_masks": draw})


CLAIM = Claim(
    name="which-masks",
    number=9,
    statement="Self-attention uses random masks and cross-attention uses future (causal) masks.",
    expected="wrong",
    reason="Recorded from the models themselves: encoder and BERT self-attention mask only padding keys, decoder "
           "and GPT self-attention are causal (plus padding), and cross-attention masks only the source's padding — "
           "it may look at every source position. Nothing in any attention mask is random; BERT's random masking "
           "replaces input tokens before the encoder sees them.",
    experiment=experiment,
)
