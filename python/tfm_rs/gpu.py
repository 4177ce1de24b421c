"""GPU ops through wgpu (Vulkan, Metal, DX12): NumPy arrays in, NumPy arrays out.

Each function copies its inputs to the GPU, runs the WGSL kernels and copies the results back,
with the semantics of the CPU op of the same name (``tfm_rs.functional``) and its backward
(the CPU ops' tests are the oracle: ~1e-4 relative). Tensors do not stay on the GPU between
calls yet; this module exists to run and test the kernels from Python.

``tfm_rs.gpu_available()`` says whether there is an adapter (on a machine without a GPU,
Mesa's lavapipe, Debian package ``mesa-vulkan-drivers``, provides a software one), and
``tfm_rs.gpu_info()`` which one. Without an adapter, or when tfm_rs was built without its GPU
backend (cargo feature ``wgpu``), every function here raises :class:`tfm_rs.DeviceError`.
``TFM_RS_GPU=0`` hides the GPU.

Functions (see each docstring): ``matmul(a, b, trans_a=False, trans_b=False)``,
``softmax(x, mask=None)``, ``log_softmax(x, mask=None)``, ``softmax_backward(grad, y, log=False)``,
``layer_norm(x, weight=None, bias=None, eps=1e-5) -> (y, mean, rstd)``,
``layer_norm_backward(grad, x, mean, rstd, weight=None) -> (dx, dweight, dbias)``,
``activation(x, kind)``, ``activation_backward(grad, x, kind)`` (kind ``'relu'``, ``'gelu'``,
``'gelu_tanh'``), ``dropout(x, p, seed)``, ``embedding(ids, weight)``,
``embedding_backward(grad, ids, num_embeddings, padding_idx=None)``,
``cross_entropy(logits, target, ignore_index=-100, label_smoothing=0.0, reduction='mean', with_grad=False)``,
``scaled_dot_product_attention(q, k, v, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0, seed=0)
-> (out, lse)``,
``attention_backward(grad, q, k, v, out, lse, attn_mask=None, is_causal=False, scale=None, dropout_p=0.0, seed=0)
-> (dq, dk, dv)``,
``adam_step(param, grad, exp_avg, exp_avg_sq, step, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
decoupled=False, amsgrad=False, maximize=False, max_exp_avg_sq=None)``;
for benchmarks, ``time_matmul(m, k, n, batch=1, trans_b=False, repeats=10)`` and
``time_attention(bh, t, e, is_causal=False, backward=False, repeats=5)`` (best seconds of the
kernels alone, on buffers that stay on the GPU).
"""

from __future__ import annotations

from typing import Any, Callable

from tfm_rs import _core
from tfm_rs._core import DeviceError, gpu_available, gpu_info

_ops = getattr(_core, "gpu", None)

__all__ = [
    "DeviceError",
    "gpu_available",
    "gpu_info",
    "matmul",
    "softmax",
    "log_softmax",
    "softmax_backward",
    "layer_norm",
    "layer_norm_backward",
    "activation",
    "activation_backward",
    "dropout",
    "embedding",
    "embedding_backward",
    "cross_entropy",
    "scaled_dot_product_attention",
    "attention_backward",
    "adam_step",
    "time_matmul",
    "time_attention",
]


def _op(name: str) -> Callable[..., Any]:
    """The binding ``name``, or a function that raises DeviceError when the backend is not built."""
    if _ops is not None:
        return getattr(_ops, name)

    def unavailable(*args: Any, **kwargs: Any) -> Any:
        raise DeviceError(f"gpu.{name}: tfm_rs was built without its GPU backend (cargo feature 'wgpu')")

    unavailable.__name__ = unavailable.__qualname__ = name
    unavailable.__doc__ = "Unavailable: tfm_rs was built without its GPU backend (cargo feature 'wgpu')."
    return unavailable


matmul = _op("matmul")
softmax = _op("softmax")
log_softmax = _op("log_softmax")
softmax_backward = _op("softmax_backward")
layer_norm = _op("layer_norm")
layer_norm_backward = _op("layer_norm_backward")
activation = _op("activation")
activation_backward = _op("activation_backward")
dropout = _op("dropout")
embedding = _op("embedding")
embedding_backward = _op("embedding_backward")
cross_entropy = _op("cross_entropy")
scaled_dot_product_attention = _op("scaled_dot_product_attention")
attention_backward = _op("attention_backward")
adam_step = _op("adam_step")
# Benchmark helpers: kernel time on device-resident buffers (see benches/bench_gpu.py).
time_matmul = _op("time_matmul")
time_attention = _op("time_attention")
