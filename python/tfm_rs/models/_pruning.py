"""Structured pruning that shrinks the models: whole attention heads (``prune_heads``, Hugging
Face's name and semantics) and feed-forward channels (``prune_ffn``), with smaller weight
matrices, hence fewer parameters and less compute — unlike the masks of
:mod:`tfm_rs.nn.utils.prune`.

The configuration records the new structure, so a pruned model saves, rebuilds
(``from_config``) and loads: ``pruned_heads`` maps an attention layer's key to the original
indices of its removed heads, ``ffn_dims`` maps a layer's key to its feed-forward width. Both
are absent from the configuration of an unpruned model.

Keys name layers: ``"0"``, ``"1"``, … (or the ints) in the one stack of GPT and BertEncoder;
in the encoder-decoder ``"encoder.i"`` (self-attention and feed-forward of encoder layer i),
``"decoder.i"`` (decoder self-attention and feed-forward) and ``"decoder.i.cross"`` (attention
over the encoder's output).
"""

from __future__ import annotations

from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import numpy as np

from tfm_rs import nn
from tfm_rs._core import InvalidArgumentError
from tfm_rs.models._common import check_config_arch

__all__ = ["StructuredPruning", "build_from_config", "head_importance"]

_STRUCTURE_KEYS = ("pruned_heads", "ffn_dims")
Key = Union[int, str]


def build_from_config(cls: Any, config: Mapping[str, Any]) -> Any:
    """``cls`` built from ``config``, then given the pruned structure the configuration records."""
    cfg = check_config_arch(config, cls.arch)
    structure = {k: cfg.pop(k) for k in _STRUCTURE_KEYS if k in cfg}
    model = cls(**cfg)
    if "pruned_heads" in structure:
        model.prune_heads(structure["pruned_heads"])
    for key, width in structure.get("ffn_dims", {}).items():
        layer = model._ffn_layers()[model._key(key, model._ffn_layers(), "ffn_dims")]
        current = layer.linear1.out_features
        if not 0 < int(width) <= current:
            raise InvalidArgumentError(f"from_config: ffn_dims[{key!r}]={width} is not in [1, {current}]")
        model.prune_ffn({key: range(int(width), current)})
    return model


class StructuredPruning:
    """``prune_heads`` and ``prune_ffn`` for a model that lists its attention modules and its
    feed-forward layers by key (``_attention_modules`` / ``_ffn_layers``)."""

    _config: Dict[str, Any]

    def _attention_modules(self) -> Dict[str, nn.MultiheadAttention]:
        raise NotImplementedError

    def _ffn_layers(self) -> Dict[str, nn.Module]:
        raise NotImplementedError

    @staticmethod
    def _key(key: Key, table: Mapping[str, Any], what: str) -> str:
        name = str(key)
        if isinstance(key, bool) or name not in table:
            raise InvalidArgumentError(f"{what}: no layer {key!r}; the keys are {list(table)}")
        return name

    def prune_heads(self, heads_to_prune: Mapping[Key, Iterable[int]]) -> None:
        """Removes the given heads, ``{layer key: [original head indices]}``; heads removed
        before are ignored. Every request is checked before anything changes: a head index out
        of range, an unknown key, or removing every head of a layer is an
        :class:`~tfm_rs.InvalidArgumentError`."""
        table = self._attention_modules()
        plan: List[Tuple[str, nn.MultiheadAttention, List[int]]] = []
        for key, heads in dict(heads_to_prune).items():
            name = self._key(key, table, "prune_heads")
            attn = table[name]
            heads = [int(h) if isinstance(h, (int, np.integer)) else h for h in heads]
            attn.check_prunable_heads(heads)
            plan.append((name, attn, heads))
        for name, attn, heads in plan:
            attn.prune_heads(heads)
            if attn.pruned_heads:
                self._config.setdefault("pruned_heads", {})[name] = sorted(int(h) for h in attn.pruned_heads)

    def prune_ffn(self, channels: Optional[Mapping[Key, Iterable[int]]] = None, amount: Optional[float] = None) -> None:
        """Removes feed-forward channels: ``{layer key: [channel indices]}`` (indices into the
        current width), or, with ``amount`` (a fraction in [0, 1) or a count), that many channels
        of every layer, those with the smallest ``‖linear1.weight[c]‖₂·‖linear2.weight[:, c]‖₂``."""
        table = self._ffn_layers()
        if (channels is None) == (amount is None):
            raise InvalidArgumentError("prune_ffn: give either channels ({layer: [indices]}) or amount")
        if amount is not None:
            channels = {key: _weakest_channels(layer, amount) for key, layer in table.items()}
        plan = []
        for key, chans in dict(channels).items():
            name = self._key(key, table, "prune_ffn")
            chans = sorted(set(int(c) for c in chans))
            width = table[name].linear1.out_features
            if any(not 0 <= c < width for c in chans) or len(chans) >= width:
                raise InvalidArgumentError(f"prune_ffn: layer {name!r} has {width} channels; cannot remove {chans} "
                                           "(indices must be in range and at least one channel must stay)")
            plan.append((name, chans))
        for name, chans in plan:
            if chans:
                table[name].prune_ffn(chans)
                self._config.setdefault("ffn_dims", {})[name] = table[name].linear1.out_features


def _weakest_channels(layer: nn.Module, amount: Union[int, float]) -> List[int]:
    width = layer.linear1.out_features
    if isinstance(amount, bool) or not isinstance(amount, (int, float, np.integer, np.floating)):
        raise InvalidArgumentError(f"prune_ffn: amount must be a fraction in [0, 1) or a count, got {amount!r}")
    if isinstance(amount, (int, np.integer)):
        if not 0 <= amount < width:
            raise InvalidArgumentError(f"prune_ffn: amount={amount} must be in [0, {width}) for a width of {width}")
        k = int(amount)
    else:
        if not 0.0 <= amount < 1.0:
            raise InvalidArgumentError(f"prune_ffn: amount={amount} must be a fraction in [0, 1)")
        k = min(int(round(amount * width)), width - 1)
    w1 = layer.linear1.weight.numpy().astype(np.float64)
    w2 = layer.linear2.weight.numpy().astype(np.float64)
    score = np.linalg.norm(w1, axis=1) * np.linalg.norm(w2, axis=0)
    return [int(c) for c in np.argsort(score, kind="stable")[:k]]


def head_importance(model: Any, batches: Iterable[Any], normalize: bool = True) -> Dict[str, np.ndarray]:
    """Head importance of Michel et al. (2019), "Are Sixteen Heads Really Better than One?":
    each head's output is multiplied by a gate ξ_h = 1 and ``I_h = Σ_batches |∂L/∂ξ_h|``, the
    gradient taken by tfm_rs's autograd of ``model.loss(*batch)`` (a batch is a tuple of the
    loss's arguments, or a dict of its keyword arguments). With ``normalize`` (as the paper)
    each layer's scores are divided by their L2 norm. Returns ``{layer key: (heads,)}`` over
    the heads the layer has now; parameter gradients are left untouched. Run it in ``eval()``
    mode for deterministic scores."""
    from tfm_rs._core import Tensor

    table = model._attention_modules()
    scores = {key: np.zeros(attn.num_heads, np.float64) for key, attn in table.items()}
    grads_wanted = [(p, p.requires_grad) for p in model.parameters()]
    try:
        for p, _ in grads_wanted:
            p.requires_grad_(False)
        for attn in table.values():
            gate = Tensor(np.ones(attn.num_heads, np.float32), requires_grad=True)
            gate._move_(attn.out_proj.weight.device)
            attn.head_gate = gate
        seen = 0
        for batch in batches:
            loss = model.loss(**batch) if isinstance(batch, Mapping) else model.loss(*batch)
            loss.backward()
            for key, attn in table.items():
                grad = attn.head_gate.grad
                if grad is not None:
                    scores[key] += np.abs(grad.numpy().astype(np.float64))
                attn.head_gate.grad = None
            seen += 1
        if seen == 0:
            raise InvalidArgumentError("head_importance: batches is empty")
    finally:
        for attn in table.values():
            attn.__dict__.pop("head_gate", None)
        for p, wanted in grads_wanted:
            p.requires_grad_(wanted)
    if normalize:
        for key, s in scores.items():
            norm = np.linalg.norm(s)
            if norm > 0:
                scores[key] = s / norm
    return scores
