"""Which attention a layer computes (tfm_rs extension): dense, a sliding window with global
tokens (Longformer), BigBird's block-sparse pattern, linear attention or LSH attention.

A kind is written as a short string, the form configs, checkpoints and the CLI store::

    dense
    window(left=256, right=0, global=16)
    block_sparse(block=64, window=1, global=1, random=3, seed=0)
    linear
    lsh(n_hashes=4, bucket_size=64, seed=0)

``window``'s ``global=G`` makes the first ``G`` tokens global; ``block_sparse`` takes
:func:`tfm_rs.masks.block_sparse`'s arguments (``window=1`` is BigBird's 3-block window).
``window`` and ``block_sparse`` are structured masks (:mod:`tfm_rs.masks`) on the fused
block-skipping kernel, composed with the layer's causal flag and key padding; ``linear`` and ``lsh``
are other operators (:func:`tfm_rs.functional.linear_attention`,
:func:`tfm_rs.functional.lsh_attention`). An LSH layer shares queries and keys as the Reformer
does: the query projection gives both, and the key rows of ``in_proj_weight`` go unused.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

from tfm_rs import masks
from tfm_rs._core import InvalidArgumentError

__all__ = ["AttentionKind", "attention_kinds", "config_value"]

# Each kind's parameters and their defaults, in the canonical order of its string.
_PARAMS: Dict[str, Dict[str, Any]] = {
    "dense": {},
    "window": {"left": None, "right": 0, "global": 0},
    "block_sparse": {"block": 64, "window": 1, "global": 1, "random": 3, "seed": 0},
    "linear": {},
    "lsh": {"n_hashes": 4, "bucket_size": 64, "seed": 0},
}

_SPEC = re.compile(r"^\s*([a-z_]+)\s*(?:\((.*)\))?\s*$")


@dataclass(frozen=True)
class AttentionKind:
    """A parsed attention kind: ``name`` and its integer parameters (see the module doc)."""

    name: str
    params: Tuple[Tuple[str, int], ...] = field(default=())

    @classmethod
    def parse(cls, spec: Union[str, "AttentionKind"]) -> "AttentionKind":
        if isinstance(spec, AttentionKind):
            return spec
        if not isinstance(spec, str):
            raise InvalidArgumentError(f"an attention kind is a string such as 'dense' or "
                                       f"'window(left=256, global=16)', got {spec!r}")
        m = _SPEC.match(spec)
        if not m or m.group(1) not in _PARAMS:
            raise InvalidArgumentError(f"unknown attention kind {spec!r}; expected one of "
                                       f"{', '.join(_PARAMS)} (e.g. 'window(left=256, global=16)')")
        name, args = m.group(1), (m.group(2) or "").strip()
        given: Dict[str, int] = {}
        for part in filter(None, (p.strip() for p in args.split(","))):
            key, eq, value = part.partition("=")
            key = key.strip()
            if not eq or key not in _PARAMS[name]:
                raise InvalidArgumentError(f"attention kind {spec!r}: {part!r} is not one of {name}'s parameters "
                                           f"({', '.join(_PARAMS[name]) or 'none'}), written key=value")
            try:
                given[key] = int(value.strip())
            except ValueError:
                raise InvalidArgumentError(f"attention kind {spec!r}: {key} must be an integer, got "
                                           f"{value.strip()!r}") from None
            if given[key] < 0:
                raise InvalidArgumentError(f"attention kind {spec!r}: {key} must be ≥ 0, got {given[key]}")
        values = {**_PARAMS[name], **given}
        missing = [k for k, v in values.items() if v is None]
        if missing:
            raise InvalidArgumentError(f"attention kind {spec!r} needs {', '.join(missing)}")
        kind = cls(name, tuple(values.items()))
        kind.mask()  # checks block sizes and the like now, not at the first forward
        return kind

    def __getitem__(self, key: str) -> int:
        return dict(self.params)[key]

    def __str__(self) -> str:
        if not self.params:
            return self.name
        return f"{self.name}({', '.join(f'{k}={v}' for k, v in self.params)})"

    @property
    def is_mask(self) -> bool:
        """Whether the kind is a structured mask on the dense kernel (window, block_sparse)."""
        return self.name in ("window", "block_sparse")

    def mask(self, length: Optional[int] = None) -> Optional[masks.Mask]:
        """The structured mask of a window or block-sparse kind (``None`` for the others), for
        sequences of ``length`` (the global tokens of a shorter sequence are all of it)."""
        if self.name == "window":
            window = masks.sliding_window(self["left"], self["right"])
            g = self["global"] if length is None else min(self["global"], length)
            return window | masks.global_tokens(range(g)) if g else window
        if self.name == "block_sparse":
            return masks.block_sparse(self["block"], self["window"], self["global"], self["random"], self["seed"])
        return None


def attention_kinds(spec: Union[str, AttentionKind, Sequence[Union[str, AttentionKind]]], num_layers: int,
                    owner: str) -> List[AttentionKind]:
    """One kind per layer: ``spec`` for every layer, or one per layer as a list or as one string
    separated by ``;`` (the form a TOML config or a command-line flag holds)."""
    if isinstance(spec, str) and ";" in spec:
        spec = [part for part in spec.split(";")]
    if isinstance(spec, (str, AttentionKind)):
        return [AttentionKind.parse(spec)] * num_layers
    kinds = [AttentionKind.parse(s) for s in spec]
    if len(kinds) != num_layers:
        raise InvalidArgumentError(f"{owner}: attention lists {len(kinds)} kinds for {num_layers} layers; give one "
                                   "kind for all layers or one per layer")
    return kinds


def config_value(kinds: Sequence[AttentionKind]) -> str:
    """What a config stores: one kind when every layer has the same, else one per layer separated
    by ``;``."""
    names = [str(k) for k in kinds]
    return names[0] if len(set(names)) == 1 else "; ".join(names)
