"""``model.explain()``: where a model's parameters, compute and memory go, layer by layer.

Counts are exact for the parameters (they are read from the modules, so pruned heads and
channels, and tied matrices, counted once, show) and closed formulas for the rest, stated here:

* FLOPs of a forward pass, a multiply-add counted as 2: a projection of ``n`` vectors from
  ``a`` to ``b`` features costs ``2·n·a·b``; attention of ``L`` queries over ``S`` keys with
  ``h`` heads of width ``d_h`` costs ``4·B·L·S·h·d_h`` (scores and the weighted sum; the causal
  half is counted in full, as the kernels compute it). Softmax, norms and activations are left
  out (they are O(n·d), not O(n·d²)).
* Activation memory for training: the float32 tensors a layer's backward needs, per sub-layer:
  attention — its input, q, k, v, the attention weights ``(B, h, L, S)`` and the concatenated
  heads; feed-forward — its input and the hidden activations before and after the nonlinearity;
  each LayerNorm — its input. An estimate of what autograd keeps, not a measurement.
* KV-cache bytes for decoding: per decoder layer ``2·B·T·h·d_h`` floats for self-attention
  (keys and values of ``T`` target positions) and ``2·B·S·h·d_h`` for cross-attention.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import numpy as np

__all__ = ["Explainable"]

F32 = 4


def _count(*tensors: Any) -> int:
    return int(sum(int(np.prod(t.shape)) for t in tensors if t is not None))


def _module_params(m: Any) -> int:
    return _count(*m.parameters())


def _attention(attn: Any, B: int, L: int, S: int) -> Dict[str, int]:
    E, inner = attn.embed_dim, attn.inner_dim
    q_rows = 2 * B * L * E * inner
    kv_rows = 2 * B * S * E * 2 * inner
    return {"params": _module_params(attn), "flops_proj": q_rows + kv_rows + 2 * B * L * inner * E,
            "flops_attn": 4 * B * L * S * inner,
            "act_bytes": F32 * (B * L * E + B * L * inner + 2 * B * S * inner + B * attn.num_heads * L * S
                                + B * L * inner)}


def _ffn(layer: Any, B: int, L: int) -> Dict[str, int]:
    E, Fw = layer.linear1.in_features, layer.linear1.out_features
    return {"params": _module_params(layer.linear1) + _module_params(layer.linear2),
            "flops_proj": 2 * 2 * B * L * E * Fw, "flops_attn": 0, "act_bytes": F32 * (B * L * E + 2 * B * L * Fw)}


def _norms(norms: List[Any], B: int, L: int, E: int) -> Dict[str, int]:
    return {"params": sum(_module_params(n) for n in norms), "flops_proj": 0, "flops_attn": 0,
            "act_bytes": F32 * len(norms) * B * L * E}


class Explainable:
    """``explain()`` for a model that lists its layers' parts (``_explain_layers``)."""

    def _explain_layers(self, B: int, S: int, T: int) -> List[Dict[str, Any]]:
        raise NotImplementedError

    def explain(self, batch: int = 1, src_len: int = 32, tgt_len: Optional[int] = None,
                print_fn: Optional[Callable[[str], None]] = print) -> Dict[str, Any]:
        """Parameters, forward FLOPs (projections and attention apart), training activation
        memory and decoding KV-cache bytes for ``batch`` sequences of ``src_len`` source and
        ``tgt_len`` (default ``src_len``) target tokens; per layer and in total. Prints a table
        (``print_fn=None``: quiet) and returns ``{"layers": [...], "total": {...}}``. The
        formulas are in :mod:`tfm_rs.models._explain`."""
        from tfm_rs._core import InvalidArgumentError

        tgt_len = src_len if tgt_len is None else tgt_len
        for name, v in (("batch", batch), ("src_len", src_len), ("tgt_len", tgt_len)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise InvalidArgumentError(f"explain: {name} must be a positive int, got {v!r}")
        rows = self._explain_layers(int(batch), int(src_len), int(tgt_len))
        keys = ("params", "flops_proj", "flops_attn", "act_bytes", "kv_bytes")
        for r in rows:
            r.setdefault("kv_bytes", 0)
        total = {k: sum(r[k] for r in rows) for k in keys}
        total["params"] = self.num_parameters() if hasattr(self, "num_parameters") else _module_params(self)
        if print_fn is not None:
            print_fn(f"{'part':<24}{'params':>12}{'GFLOP proj':>12}{'GFLOP attn':>12}{'act MiB':>10}{'KV MiB':>9}")
            for r in rows + [dict(total, name="total (tied once)")]:
                print_fn(f"{r['name']:<24}{r['params']:>12,}{r['flops_proj'] / 1e9:>12.4f}"
                         f"{r['flops_attn'] / 1e9:>12.4f}{r['act_bytes'] / 2**20:>10.2f}{r['kv_bytes'] / 2**20:>9.2f}")
        return {"layers": rows, "total": total}


def _row(name: str, *parts: Dict[str, int], kv_bytes: int = 0) -> Dict[str, Any]:
    row: Dict[str, Any] = {"name": name, "kv_bytes": kv_bytes}
    for k in ("params", "flops_proj", "flops_attn", "act_bytes"):
        row[k] = sum(p[k] for p in parts)
    return row


def encoder_rows(prefix: str, layers: Any, B: int, L: int) -> List[Dict[str, Any]]:
    """One row per encoder-style layer (self-attention, feed-forward, two norms)."""
    out = []
    for i, layer in enumerate(layers):
        E = layer.linear1.in_features
        out.append(_row(f"{prefix}{i}", _attention(layer.self_attn, B, L, L), _ffn(layer, B, L),
                        _norms([layer.norm1, layer.norm2], B, L, E)))
    return out


def decoder_rows(layers: Any, B: int, S: int, T: int) -> List[Dict[str, Any]]:
    """One row per encoder-decoder decoder layer, with its KV cache."""
    out = []
    for i, layer in enumerate(layers):
        E = layer.linear1.in_features
        kv = F32 * 2 * B * (T * layer.self_attn.inner_dim + S * layer.multihead_attn.inner_dim)
        out.append(_row(f"decoder.{i}", _attention(layer.self_attn, B, T, T), _attention(layer.multihead_attn, B, T, S),
                        _ffn(layer, B, T), _norms([layer.norm1, layer.norm2, layer.norm3], B, T, E), kv_bytes=kv))
    return out


def output_row(name: str, linear: Any, B: int, L: int, params: int) -> Dict[str, Any]:
    """The output projection to the vocabulary (its parameters given: 0 when tied)."""
    E, V = linear.in_features, linear.out_features
    return {"name": name, "params": params, "flops_proj": 2 * B * L * E * V, "flops_attn": 0,
            "act_bytes": F32 * B * L * (E + V), "kv_bytes": 0}


def single_stack_rows(model: Any, head: Any, B: int, L: int, kv_cache: bool,
                      extra_flops: int = 0) -> List[Dict[str, Any]]:
    """GPT / BertEncoder: one row per block (with its KV cache when the model decodes), then the
    rest (embeddings, final norms, heads; ``head`` is the projection to the vocabulary)."""
    rows = encoder_rows("", model.layers, B, L)
    if kv_cache:
        for row, layer in zip(rows, model.layers):
            row["kv_bytes"] = F32 * 2 * B * L * layer.self_attn.inner_dim
    rest = output_row("embeddings, norms, head", head, B, L, _module_params(model) - sum(r["params"] for r in rows))
    rest["flops_proj"] += extra_flops
    return rows + [rest]
