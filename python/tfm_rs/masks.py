"""Structured attention masks: which keys each query may attend, as typed objects.

Each constructor returns a :class:`Mask`; masks compose with ``&`` (both allow) and ``|``
(either allows), and a NumPy boolean array composes with them as a dense mask. Everywhere,
``True`` means *takes part in attention* (PyTorch ``scaled_dot_product_attention``'s boolean
convention), whatever the object.

* :func:`causal` — query ``i`` sees keys ``j ≤ i`` (``alignment="upper_left"``) or
  ``j ≤ i + S − L`` (``"lower_right"``: the last query sees every key, as PyTorch's
  ``CausalBias`` names the two).
* :func:`sliding_window` — ``i − left ≤ j ≤ i + right`` (Longformer's local attention).
* :func:`global_tokens` — the given rows and columns attend and are attended everywhere.
* :func:`key_padding` — per-sample valid keys, from lengths or a boolean ``(N, S)`` array.
* :func:`block_sparse` — BigBird: sliding, global and seeded random blocks.
* :func:`dense` — any boolean array broadcastable to ``(..., L, S)`` (the fallback).

``F.scaled_dot_product_attention(q, k, v, attn_mask=mask)`` runs a block-skipping fused kernel
on such a mask (forward and backward; tiles the mask empties cost nothing; no ``L × S`` matrix is
formed). :meth:`Mask.to_dense` gives the same mask as a boolean array, computed here in NumPy
independently of the kernel; :meth:`Mask.explain` says what the mask saves.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np

from tfm_rs import _core

__all__ = ["Mask", "MaskExplanation", "block_sparse", "causal", "dense", "global_tokens", "key_padding",
           "sliding_window"]

_ALIGNMENTS = ("upper_left", "lower_right")
TILE = 64  # the fused kernels' query and key block


def _count(name: str, value, minimum: int = 0) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise _core.InvalidArgumentError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise _core.InvalidArgumentError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _alignment(alignment: str) -> bool:
    if alignment not in _ALIGNMENTS:
        raise _core.InvalidArgumentError(f"alignment must be 'upper_left' or 'lower_right', got {alignment!r}")
    return alignment == "lower_right"


class Mask:
    """A structured attention mask. Build with the module's constructors; combine with ``&``,
    ``|``. ``True`` = takes part."""

    # NumPy arrays then leave `array & mask` to `Mask.__rand__` instead of looping over elements.
    __array_ufunc__ = None

    def __and__(self, other) -> "Mask":
        return _And(self, _as_mask(other))

    def __rand__(self, other) -> "Mask":
        return _And(_as_mask(other), self)

    def __or__(self, other) -> "Mask":
        return _Or(self, _as_mask(other))

    def __ror__(self, other) -> "Mask":
        return _Or(_as_mask(other), self)

    def to_dense(self, L: int, S: int) -> np.ndarray:
        """The mask as a boolean array broadcastable to the scores ``(..., L, S)``: ``(L, S)``,
        or ``(N, 1, L, S)`` with per-sample key padding (``N`` batch samples, any heads)."""
        L, S = _count("L", L), _count("S", S)
        return np.asarray(self._dense(L, S), dtype=bool)

    def explain(self, L: int, S: int, head_dim: int = 64) -> "MaskExplanation":
        """Density, FLOPs and bytes against dense attention, and the fused kernel's tiles
        (``64 × 64``) that are full, partial or empty, for one head at ``L × S``."""
        L, S, head_dim = _count("L", L), _count("S", S), _count("head_dim", head_dim, 1)
        samples = self._samples()
        allowed, full, partial, empty = _core.mask_explain(self._spec(L, S), samples, L, S)
        per = 1.0 / samples
        pairs = L * S
        return MaskExplanation(
            mask=repr(self), L=L, S=S, head_dim=head_dim,
            density=allowed * per / pairs if pairs else 0.0,
            flops=4 * head_dim * allowed * per, dense_flops=4 * head_dim * pairs,
            kernel_flops=4 * head_dim * TILE * TILE * (full + partial) * per,
            kv_bytes=8 * head_dim * TILE * (full + partial) * per,
            dense_kv_bytes=8 * head_dim * S * -(-L // TILE),
            dense_mask_bytes=pairs, score_bytes=4 * pairs,
            full_tiles=int(round(full * per)), partial_tiles=int(round(partial * per)),
            empty_tiles=int(round(empty * per)))

    # Subclasses: `_dense(L, S)` (NumPy, broadcastable bool), `_spec(L, S)` (the tuples the Rust
    # binding reads), `_words()`, and `_samples()` when they carry per-sample data.
    def _samples(self) -> int:
        return 1

    def __repr__(self) -> str:
        return f"<Mask: {self._words()}>"

    def _words(self) -> str:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError


@dataclass(frozen=True)
class MaskExplanation:
    """What :meth:`Mask.explain` found, per head (averaged over key-padding samples).

    ``flops``: the forward's ``QKᵀ`` and ``PV`` multiply-adds ×2 over the allowed pairs only;
    ``kernel_flops``: what the fused kernel computes (whole 64 × 64 tiles, full and partial);
    ``kv_bytes``: keys and values it reads (float32); ``dense_*``: the same for dense attention;
    ``dense_mask_bytes`` / ``score_bytes``: a dense boolean mask / float32 score matrix."""
    mask: str
    L: int
    S: int
    head_dim: int
    density: float
    flops: float
    dense_flops: float
    kernel_flops: float
    kv_bytes: float
    dense_kv_bytes: float
    dense_mask_bytes: int
    score_bytes: int
    full_tiles: int
    partial_tiles: int
    empty_tiles: int

    def __str__(self) -> str:
        ratio = self.dense_flops / self.kernel_flops if self.kernel_flops else float("inf")
        return (f"{self.mask} at L={self.L}, S={self.S}, head_dim={self.head_dim}: density {self.density:.4f}; "
                f"forward FLOPs {self.kernel_flops:.3g} computed ({self.flops:.3g} needed) vs {self.dense_flops:.3g} "
                f"dense ({ratio:.1f}x fewer); tiles of {TILE}x{TILE}: {self.full_tiles} full, "
                f"{self.partial_tiles} partial, {self.empty_tiles} empty (skipped); K/V bytes read "
                f"{self.kv_bytes:.3g} vs {self.dense_kv_bytes:.3g}; a dense bool mask would take "
                f"{self.dense_mask_bytes:.3g} bytes, a float32 score matrix {self.score_bytes:.3g}")


def _rows_cols(L: int, S: int) -> Tuple[np.ndarray, np.ndarray]:
    return np.arange(L)[:, None], np.arange(S)[None, :]


class _Band(Mask):
    def __init__(self, left: Optional[int], right: int, lower_right: bool):
        self.left, self.right, self.lower_right = left, right, lower_right

    def _dense(self, L, S):
        i, j = _rows_cols(L, S)
        d = j - i - (S - L if self.lower_right else 0)
        ok = d <= self.right
        return ok if self.left is None else ok & (d >= -self.left)

    def _spec(self, L, S):
        if self.left is None:
            return ("causal", self.lower_right)
        return ("window", self.left, self.right, self.lower_right)

    def _words(self):
        align = "lower-right" if self.lower_right else "upper-left"
        if self.left is None:
            return f"causal ({align} aligned)"
        return f"sliding window: {self.left} keys left, {self.right} right ({align} aligned)"


def causal(alignment: str = "upper_left") -> Mask:
    """Query ``i`` sees keys ``j ≤ i`` (``"upper_left"``, PyTorch's ``is_causal``) or
    ``j ≤ i + S − L`` (``"lower_right"``: L new queries after S − L cached keys)."""
    return _Band(None, 0, _alignment(alignment))


def sliding_window(left: int, right: Optional[int] = None, alignment: str = "upper_left") -> Mask:
    """Query ``i`` sees keys ``i − left … i + right`` (``right`` defaults to ``left``; use
    ``right=0`` for a causal window). ``alignment`` as in :func:`causal`."""
    left = _count("sliding_window: left", left)
    right = left if right is None else _count("sliding_window: right", right)
    return _Band(left, right, _alignment(alignment))


class _Global(Mask):
    def __init__(self, indices):
        self.indices = indices

    def _check(self, L, S):
        bad = [g for g in self.indices if g >= max(L, S)]
        if bad:
            raise _core.IndexOutOfRangeError(
                f"global_tokens: index {bad[0]} is out of range for L = {L}, S = {S}")

    def _dense(self, L, S):
        self._check(L, S)
        i, j = _rows_cols(L, S)
        g = np.asarray(self.indices, dtype=np.int64)
        return np.isin(i, g) | np.isin(j, g)

    def _spec(self, L, S):
        self._check(L, S)
        return ("global", list(self.indices))

    def _words(self):
        shown = ", ".join(map(str, self.indices[:8])) + (", …" if len(self.indices) > 8 else "")
        return f"{len(self.indices)} global token(s) [{shown}] (their rows and columns attend everywhere)"


def global_tokens(indices: Union[int, Sequence[int], np.ndarray]) -> Mask:
    """Tokens at ``indices`` attend every key, and every query attends them (Longformer's
    global attention; combine as ``sliding_window(w) | global_tokens([0])``). An index must be
    below ``max(L, S)`` at use."""
    arr = np.atleast_1d(np.asarray(indices))
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise _core.InvalidArgumentError(f"global_tokens: indices must be integers, got {indices!r}")
    if arr.size and arr.min() < 0:
        raise _core.IndexOutOfRangeError(f"global_tokens: indices must be >= 0, got {int(arr.min())}")
    return _Global(sorted({int(g) for g in arr}))


class _KeyPadding(Mask):
    def __init__(self, lengths: Optional[np.ndarray], valid: Optional[np.ndarray]):
        self.lengths, self.valid = lengths, valid

    def _samples(self):
        return len(self.lengths) if self.lengths is not None else self.valid.shape[0]

    def _flags(self, S):
        if self.lengths is not None:
            if self.lengths.size and self.lengths.max() > S:
                raise _core.ShapeError(f"key_padding: length {int(self.lengths.max())} exceeds S = {S}")
            return np.arange(S)[None, :] < self.lengths[:, None]
        if self.valid.shape[1] != S:
            raise _core.ShapeError(f"key_padding: the mask has {self.valid.shape[1]} keys, the keys S = {S}")
        return self.valid

    def _dense(self, L, S):
        flags = self._flags(S)
        return np.broadcast_to(flags[:, None, None, :], (flags.shape[0], 1, L, S))

    def _spec(self, L, S):
        flags = self._flags(S)
        return ("key_padding", flags.shape[0], np.ascontiguousarray(flags, dtype=np.uint8).tobytes())

    def _words(self):
        if self.lengths is not None:
            shown = ", ".join(map(str, self.lengths[:8].tolist())) + (", …" if len(self.lengths) > 8 else "")
            return f"key padding: valid lengths [{shown}] per sample"
        return f"key padding: {self.valid.shape[0]} sample(s) × {self.valid.shape[1]} keys (True = valid)"


def key_padding(lengths_or_bool) -> Mask:
    """Keys each sample may attend: integer lengths ``(N,)`` (keys ``j < length`` are valid) or
    a boolean ``(N, S)`` / ``(S,)`` array with ``True`` = *valid key* (the opposite of
    ``nn.MultiheadAttention``'s ``key_padding_mask``, which marks padding). The sample is the
    first leading dimension of q, k, v (N of ``(N, H, L, E)``)."""
    arr = np.asarray(lengths_or_bool.numpy() if hasattr(lengths_or_bool, "numpy") else lengths_or_bool)
    if arr.dtype == np.bool_:
        if arr.ndim == 1:
            arr = arr[None]
        if arr.ndim != 2:
            raise _core.ShapeError(f"key_padding: a boolean mask must be (N, S) or (S,), got shape {arr.shape}")
        return _KeyPadding(None, arr.copy())
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise _core.InvalidArgumentError(
            f"key_padding: expected integer lengths (N,) or a boolean (N, S) array, got {arr.dtype} {arr.shape}")
    if arr.size == 0 or arr.min() < 0:
        raise _core.InvalidArgumentError(f"key_padding: lengths must be >= 0 and not empty, got {arr.tolist()}")
    return _KeyPadding(arr.astype(np.int64), None)


def _random_blocks(seed: int, qb: np.ndarray, t: int, random: int, key_blocks: int) -> np.ndarray:
    """Key block ``t`` drawn for each query block in ``qb``: SplitMix64, as the Rust kernel's
    ``random_block`` (tested against each other through the kernel)."""
    with np.errstate(over="ignore"):
        u = np.uint64
        x = u(seed) + (qb.astype(u) * u(random) + u(t + 1)) * u(0x9E3779B97F4A7C15)
        z = (x ^ (x >> u(30))) * u(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> u(27))) * u(0x94D049BB133111EB)
        z = z ^ (z >> u(31))
    return (z % u(max(key_blocks, 1))).astype(np.int64)


class _BlockSparse(Mask):
    def __init__(self, block, window, global_, random, seed):
        self.block, self.window, self.global_, self.random, self.seed = block, window, global_, random, seed

    def block_layout(self, L: int, S: int) -> np.ndarray:
        """The boolean ``(ceil(L/b), ceil(S/b))`` layout of query blocks by key blocks."""
        nq, nk = -(-L // self.block), -(-S // self.block)
        a, b = np.arange(nq)[:, None], np.arange(nk)[None, :]
        ok = (a < self.global_) | (b < self.global_) | (np.abs(a - b) <= self.window)
        for t in range(self.random if nk else 0):
            ok[np.arange(nq), _random_blocks(self.seed, np.arange(nq), t, self.random, nk)] = True
        return ok

    def _dense(self, L, S):
        layout = self.block_layout(L, S)
        return layout[np.arange(L)[:, None] // self.block, np.arange(S)[None, :] // self.block]

    def _spec(self, L, S):
        return ("block_sparse", self.block, self.window, self.global_, self.random, self.seed)

    def _words(self):
        return (f"BigBird block-sparse: blocks of {self.block}, {self.window} neighbouring block(s) each side, "
                f"{self.global_} global block(s), {self.random} random block(s) per query block (seed {self.seed})")


def block_sparse(block_size: int, window_blocks: int = 1, global_blocks: int = 1, num_random_blocks: int = 3,
                 seed: int = 0) -> Mask:
    """BigBird's block-sparse attention on blocks of ``block_size`` tokens: query block ``a``
    attends key block ``b`` when ``|a − b| ≤ window_blocks`` (BigBird's 3-block window is
    ``window_blocks=1``), either is among the first ``global_blocks``, or ``b`` is one of the
    ``num_random_blocks`` drawn for ``a`` from ``seed``. The random blocks are a function of
    the seed and the block indices only: the same in training and evaluation, in every call."""
    return _BlockSparse(_count("block_sparse: block_size", block_size, 1),
                        _count("block_sparse: window_blocks", window_blocks),
                        _count("block_sparse: global_blocks", global_blocks),
                        _count("block_sparse: num_random_blocks", num_random_blocks),
                        _count("block_sparse: seed", seed))


class _Dense(Mask):
    def __init__(self, array: np.ndarray):
        self.array = array

    def _samples(self):
        return self.array.shape[0] if self.array.ndim >= 3 else 1

    def _check(self, L, S):
        if self.array.shape[-2] not in (1, L) or self.array.shape[-1] not in (1, S):
            raise _core.ShapeError(
                f"dense mask of shape {self.array.shape} cannot be broadcast to (..., L, S) = (..., {L}, {S})")

    def _dense(self, L, S):
        self._check(L, S)
        return self.array

    def _spec(self, L, S):
        self._check(L, S)
        return ("dense", self.array)

    def _words(self):
        return f"dense boolean mask of shape {self.array.shape} (density {self.array.mean():.3f})"


def dense(array) -> Mask:
    """A boolean array broadcastable to ``(..., L, S)``, ``True`` = takes part (the fallback for
    patterns no constructor describes; read in place, every tile masked element-wise)."""
    arr = np.asarray(array.numpy() if hasattr(array, "numpy") else array)
    if arr.dtype != np.bool_:
        raise _core.DTypeError(f"masks.dense: expected a boolean array (True = takes part), got {arr.dtype}")
    if arr.ndim < 2:
        raise _core.ShapeError(f"masks.dense: expected at least 2 dimensions (..., L, S), got shape {arr.shape}")
    return _Dense(arr)


class _Binary(Mask):
    word = ""

    def __init__(self, a: Mask, b: Mask):
        self.a, self.b = a, b

    def _samples(self):
        sa, sb = self.a._samples(), self.b._samples()
        if sa != sb and 1 not in (sa, sb):
            raise _core.ShapeError(f"masks with {sa} and {sb} samples cannot be combined")
        return max(sa, sb)

    def _dense(self, L, S):
        a, b = self.a._dense(L, S), self.b._dense(L, S)
        try:
            np.broadcast_shapes(a.shape, b.shape)
        except ValueError:
            raise _core.ShapeError(f"{self!r}: shapes {a.shape} and {b.shape} do not broadcast") from None
        return self.op(a, b)

    def _spec(self, L, S):
        self._samples()
        return (self.word, self.a._spec(L, S), self.b._spec(L, S))

    def _words(self):
        return f"({self.a._words()}) {self.word} ({self.b._words()})"


class _And(_Binary):
    word = "and"
    op = staticmethod(np.logical_and)


class _Or(_Binary):
    word = "or"
    op = staticmethod(np.logical_or)


def _as_mask(other) -> Mask:
    if isinstance(other, Mask):
        return other
    return dense(other)
