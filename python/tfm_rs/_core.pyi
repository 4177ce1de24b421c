"""Type stubs of ``tfm_rs._core``, the native (Rust, PyO3) module; written from rust/python/*.rs.

The Python layer (``tfm_rs``, ``tfm_rs.functional``, ``tfm_rs.nn``, ``tfm_rs.optim``) wraps these
with PyTorch's argument names and defaults; prefer it to calling ``_core`` directly. Every native
function releases the GIL while it computes, and every failure is a :class:`TfmError`.
"""

from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union, overload

import numpy as np
import numpy.typing as npt

__version__: str

ArrayLike = Union["Tensor", npt.ArrayLike]

# ------------------------------------------------------------------------------ errors (errors.rs)

class TfmError(Exception):
    """Base class of every tfm_rs error."""

class ShapeError(TfmError, ValueError):
    """Shapes that do not fit together."""

class DTypeError(TfmError, TypeError):
    """An element type the op cannot take."""

class IndexOutOfRangeError(TfmError, IndexError):
    """An index or token id out of range."""

class InvalidArgumentError(TfmError, ValueError):
    """An argument outside its domain."""

class NonFiniteError(TfmError, ValueError):
    """NaN or infinity where a finite number is required."""

class AutogradError(TfmError, RuntimeError):
    """Misuse of autograd, such as a second backward through a freed graph."""

class DeviceError(TfmError, RuntimeError):
    """No GPU adapter, tfm_rs built without its GPU backend, or the GPU failed."""

class InternalError(TfmError, RuntimeError):
    """A bug inside tfm_rs; please report it."""

# ------------------------------------------------------------------------------ Tensor (tensor.rs)

class RemovableHandle:
    """What ``register_post_accumulate_grad_hook`` returns."""

    id: int

    def remove(self) -> None: ...

class Tensor:
    """A float32 tensor that records the operations on it for autograd (PyTorch's semantics)."""

    def __init__(self, data: npt.ArrayLike, requires_grad: bool = False) -> None:
        """A float32 tensor from an array-like (float64 is converted; integer arrays are refused)."""
    @property
    def shape(self) -> Tuple[int, ...]: ...
    @property
    def ndim(self) -> int: ...
    @property
    def dtype(self) -> str:
        """Always ``"float32"``."""
    @property
    def T(self) -> Tensor:
        """All dimensions reversed."""
    @property
    def requires_grad(self) -> bool: ...
    @requires_grad.setter
    def requires_grad(self, value: bool) -> None: ...
    @property
    def is_leaf(self) -> bool: ...
    @property
    def grad_fn(self) -> Optional[str]:
        """Name of the op that produced this tensor, or None for leaves."""
    @property
    def grad(self) -> Optional[Tensor]:
        """The accumulated gradient, or None."""
    @grad.setter
    def grad(self, value: Optional[ArrayLike]) -> None: ...
    @overload
    def size(self) -> Tuple[int, ...]: ...
    @overload
    def size(self, dim: int) -> int: ...
    def dim(self) -> int: ...
    def numel(self) -> int: ...
    def __len__(self) -> int: ...
    def requires_grad_(self, requires_grad: bool = True) -> Tensor:
        """Sets requires_grad in place and returns self (leaves only)."""
    def numpy(self) -> npt.NDArray[np.float32]:
        """A copy of the values as a NumPy float32 array."""
    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray: ...
    def tolist(self) -> Any: ...
    def item(self) -> float:
        """The value of a one-element tensor as a Python float."""
    def __float__(self) -> float: ...
    def backward(self, gradient: Optional[ArrayLike] = None, retain_graph: bool = False) -> None:
        """Computes gradients with respect to the graph's leaves; ``gradient`` is required for
        non-scalar tensors."""
    def register_post_accumulate_grad_hook(self, hook: Callable[["Tensor"], None]) -> "RemovableHandle":
        """Run ``hook(self)`` in every backward that reaches this leaf, once its ``.grad`` is complete."""
    def copy_(self, src: ArrayLike) -> Tensor:
        """Copies ``src``'s values in place (not recorded in the graph)."""
    def detach(self) -> Tensor:
        """A new leaf with the same values, outside the graph."""
    def clone(self) -> Tensor:
        """A copy that is a new leaf (does not require grad)."""
    @property
    def device(self) -> str:
        """Where the values live: "cpu" or "gpu"."""
    def to(self, device: str) -> Tensor:
        """This tensor on `device` ("cpu", or "gpu" / "wgpu"): itself if it is already there,
        else a copy, which stays in the graph (gradients flow back to this tensor's device), as
        PyTorch's `Tensor.to`. Moving to the GPU without one is a `DeviceError`."""
    def cpu(self) -> Tensor:
        """`to("cpu")`."""
    def _move_(self, device: str) -> None:
        """Moves a leaf's value, and its gradient, to `device` in place, keeping its identity (what
        `Module.to` does to parameters and buffers, like PyTorch's `param.data = …`)."""
    def __add__(self, other: Union[ArrayLike, float]) -> Tensor: ...
    def __radd__(self, other: Union[ArrayLike, float]) -> Tensor: ...
    def __sub__(self, other: Union[ArrayLike, float]) -> Tensor: ...
    def __rsub__(self, other: Union[ArrayLike, float]) -> Tensor: ...
    def __mul__(self, other: Union[ArrayLike, float]) -> Tensor: ...
    def __rmul__(self, other: Union[ArrayLike, float]) -> Tensor: ...
    def __truediv__(self, other: Union[ArrayLike, float]) -> Tensor: ...
    def __rtruediv__(self, other: Union[ArrayLike, float]) -> Tensor: ...
    def __matmul__(self, other: ArrayLike) -> Tensor: ...
    def __rmatmul__(self, other: ArrayLike) -> Tensor: ...
    def __neg__(self) -> Tensor: ...
    def __pow__(self, exponent: float, modulo: None = None) -> Tensor: ...
    def exp(self) -> Tensor: ...
    def log(self) -> Tensor: ...
    def sqrt(self) -> Tensor: ...
    def tanh(self) -> Tensor: ...
    def sigmoid(self) -> Tensor: ...
    def abs(self) -> Tensor:
        """``|x|``; its gradient is ``sign(x)`` (0 at 0, as PyTorch's)."""
    def sin(self) -> Tensor: ...
    def cos(self) -> Tensor: ...
    def relu(self) -> Tensor: ...
    def softmax(self, dim: int = -1) -> Tensor: ...
    def log_softmax(self, dim: int = -1) -> Tensor: ...
    def sum(self, dim: Union[int, Sequence[int], None] = None, keepdim: bool = False) -> Tensor:
        """Sum over ``dim`` (an int, a sequence, or None for all dimensions)."""
    def mean(self, dim: Union[int, Sequence[int], None] = None, keepdim: bool = False) -> Tensor:
        """Mean over ``dim`` (an int, a sequence, or None for all dimensions)."""
    def max(self, dim: Union[int, Tensor, None] = None, keepdim: bool = False) -> Any:
        """The largest value; along ``dim`` the named tuple ``(values, indices)`` (indices an
        int64 NumPy array); with a tensor, ``maximum``."""
    def min(self, dim: Union[int, Tensor, None] = None, keepdim: bool = False) -> Any: ...
    def amax(self, dim: Union[int, Sequence[int], None] = None, keepdim: bool = False) -> Tensor: ...
    def amin(self, dim: Union[int, Sequence[int], None] = None, keepdim: bool = False) -> Tensor: ...
    def argmax(self, dim: Optional[int] = None, keepdim: bool = False) -> npt.NDArray[np.int64]: ...
    def argmin(self, dim: Optional[int] = None, keepdim: bool = False) -> npt.NDArray[np.int64]: ...
    def clamp(self, min: Optional[float] = None, max: Optional[float] = None) -> Tensor: ...
    def clip(self, min: Optional[float] = None, max: Optional[float] = None) -> Tensor: ...
    def clamp_min(self, min: float) -> Tensor: ...
    def clamp_max(self, max: float) -> Tensor: ...
    def maximum(self, other: Any) -> Tensor: ...
    def minimum(self, other: Any) -> Tensor: ...
    def where(self, condition: Any, other: Any) -> Tensor:
        """``self`` where ``condition`` holds (nonzero or True), else ``other``."""
    def masked_fill(self, mask: Any, value: float) -> Tensor:
        """``value`` where ``mask`` holds; ``mask`` broadcasts to this tensor's shape."""
    def eq(self, other: Any) -> Tensor: ...
    def ne(self, other: Any) -> Tensor: ...
    def lt(self, other: Any) -> Tensor: ...
    def le(self, other: Any) -> Tensor: ...
    def gt(self, other: Any) -> Tensor: ...
    def ge(self, other: Any) -> Tensor: ...
    def __eq__(self, other: Any) -> Tensor: ...  # type: ignore[override]
    def __ne__(self, other: Any) -> Tensor: ...  # type: ignore[override]
    def __lt__(self, other: Any) -> Tensor: ...
    def __le__(self, other: Any) -> Tensor: ...
    def __gt__(self, other: Any) -> Tensor: ...
    def __ge__(self, other: Any) -> Tensor: ...
    def __hash__(self) -> int: ...
    def __bool__(self) -> bool: ...
    def float(self) -> Tensor: ...
    def var(self, dim: Union[int, Sequence[int], None] = None, unbiased: Optional[bool] = None,
            keepdim: bool = False, *, correction: Optional[float] = None) -> Tensor:
        """Variance over ``dim`` with Bessel's ``correction`` (default 1)."""
    def std(self, dim: Union[int, Sequence[int], None] = None, unbiased: Optional[bool] = None,
            keepdim: bool = False, *, correction: Optional[float] = None) -> Tensor: ...
    def reshape(self, *shape: Union[int, Sequence[int]]) -> Tensor: ...
    def view(self, *shape: Union[int, Sequence[int]]) -> Tensor: ...
    def flatten(self) -> Tensor: ...
    def transpose(self, dim0: int, dim1: int) -> Tensor: ...
    def t(self) -> Tensor:
        """The transpose of a 2-D tensor; 0-D and 1-D tensors are returned as is."""
    def permute(self, *dims: Union[int, Sequence[int]]) -> Tensor: ...
    def unsqueeze(self, dim: int) -> Tensor: ...
    def squeeze(self, dim: Optional[int] = None) -> Tensor:
        """Removes size-1 dimensions: all of them, or only ``dim`` if it has size 1."""
    def __getitem__(self, key: Any) -> Tensor:
        """Indexing with ints, slices (positive steps), None and ``...``, as in PyTorch."""

def tensor(data: npt.ArrayLike, requires_grad: bool = False) -> Tensor:
    """A tensor from data (like ``torch.tensor``)."""

def from_numpy(array: npt.ArrayLike) -> Tensor:
    """A tensor from a NumPy array. Unlike ``torch.from_numpy`` it copies (at memory speed, without
    the GIL for large arrays; other float dtypes are cast to float32): a tensor's storage is an
    owned, pooled, copy-on-write buffer, so it cannot share the array's memory, and writes to
    either afterwards are not seen by the other."""

def cat(tensors: Sequence[ArrayLike], dim: int = 0) -> Tensor:
    """Concatenates tensors along ``dim`` (like ``torch.cat``)."""

# ------------------------------------------------------------------------------ ops (functional.rs)
# Positional arguments as the bindings take them; tfm_rs.functional has PyTorch's keywords.

def linear(input: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None,
           precision: Optional[str] = None) -> Tensor:
    """``input @ weight.T + bias``; ``precision``: ``None``/``"float32"`` or ``"bf16"``
    (bf16 inputs, float32 accumulation, forward and backward)."""

def matmul(input: ArrayLike, other: ArrayLike, precision: Optional[str] = None) -> Tensor:
    """Matrix product with broadcasting of batch dimensions (``precision`` as for ``linear``)."""

def softmax(input: ArrayLike, dim: int = -1, mask: Optional[ArrayLike] = None) -> Tensor: ...
def log_softmax(input: ArrayLike, dim: int = -1, mask: Optional[ArrayLike] = None) -> Tensor: ...
def layer_norm(input: ArrayLike, normalized_shape: Union[int, Sequence[int]], weight: Optional[ArrayLike] = None,
               bias: Optional[ArrayLike] = None, eps: float = 1e-5) -> Tensor: ...
def add_layer_norm(input: ArrayLike, residual: ArrayLike, normalized_shape: Union[int, Sequence[int]],
                   weight: Optional[ArrayLike] = None, bias: Optional[ArrayLike] = None,
                   eps: float = 1e-5) -> Tensor:
    """``layer_norm(input + residual)`` in one fused kernel (the post-LN residual step)."""
def rms_norm(input: ArrayLike, normalized_shape: Union[int, Sequence[int]], weight: Optional[ArrayLike] = None,
             eps: Optional[float] = None) -> Tensor: ...
def relu(input: ArrayLike) -> Tensor: ...
def gelu(input: ArrayLike, approximate_tanh: bool) -> Tensor: ...
def silu(input: ArrayLike) -> Tensor: ...
def dropout(input: ArrayLike, p: float, training: bool) -> Tensor: ...
def embedding(input: npt.ArrayLike, weight: ArrayLike, padding_idx: Optional[int] = None) -> Tensor: ...
def cross_entropy(input: ArrayLike, target: npt.ArrayLike, ignore_index: int, reduction: str,
                  label_smoothing: float) -> Tensor:
    """``reduction`` is ``"none"``, ``"sum"`` or ``"mean"``; class dimension 1 as in PyTorch."""
def scaled_dot_product_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                                 attn_mask: Optional[ArrayLike] = None, dropout_p: float = 0.0,
                                 is_causal: bool = False, scale: Optional[float] = None,
                                 precision: Optional[str] = None) -> Tensor:
    """Fused (flash-style) attention ``softmax(QKᵀ·scale + mask)·V``, memory linear in T;
    ``scale`` defaults to ``1/√d_k``; ``precision="bf16"`` rounds q, k, v to bf16."""
def precision_info(precision: str) -> Tuple[str, Optional[str]]:
    """``(path, note)``: how ``precision``'s products run here; ``note`` says when bf16 is emulated."""
def attention_with_weights(query: ArrayLike, key: ArrayLike, value: ArrayLike,
                           attn_mask: Optional[ArrayLike] = None, dropout_p: float = 0.0,
                           is_causal: bool = False, scale: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """The explicit path: ``(output, weights (…, L, S))``, weights after masking, before dropout."""
def batch_norm(input: ArrayLike, keep: Optional[npt.ArrayLike], weight: Optional[ArrayLike],
               bias: Optional[ArrayLike], running_mean: Optional[Tensor], running_var: Optional[Tensor],
               use_batch_stats: bool, eps: float, channels_last: bool
               ) -> Tuple[Tensor, Optional[Tensor], Optional[Tensor]]:
    """``(y, batch_mean, batch_unbiased_var)``; the statistics only when the batch's were used."""
def hash_embedding(input: npt.ArrayLike, weight: ArrayLike, importance: Optional[ArrayLike], num_embeddings: int,
                   num_hashes: int, seed: Optional[int]) -> Tensor:
    """``seed=None``: the identity hash."""

# ------------------------------------------------------------------------------ sequence ops (sequence.rs)

def rnn_layer(mode: str, input: ArrayLike, hx: ArrayLike, weight_ih: ArrayLike, weight_hh: ArrayLike,
              bias_ih: Optional[ArrayLike] = None, bias_hh: Optional[ArrayLike] = None, cx: Optional[ArrayLike] = None,
              lengths: Optional[npt.ArrayLike] = None, reverse: bool = False) -> Tensor:
    """One layer and direction of an LSTM (``mode`` "LSTM", ``cx`` given) or GRU over a time-major
    ``(T, B, I)`` input: the stacked ``(T + 1, B, H)`` ``[output; h_n]`` (GRU) or ``(T + 2, B, H)``
    ``[output; h_n; c_n]`` (LSTM)."""

def additive_attention_scores(query: ArrayLike, key: ArrayLike, v: ArrayLike) -> Tensor:
    """``Σ_h v_h·tanh(query[b, i, h] + key[b, j, h])``: (B, Tq, H), (B, Tk, H), (H,) → (B, Tq, Tk)."""
def scaled_dot_product_attention_structured(query: ArrayLike, key: ArrayLike, value: ArrayLike, mask: tuple,
                                            dropout_p: float = 0.0, scale: Optional[float] = None,
                                            precision: Optional[str] = None) -> Tensor:
    """Fused attention under a structured mask (``tfm_rs.masks.Mask._spec(L, S)``): the
    block-skipping kernel (empty 64×64 tiles skipped, partial ones masked from indices);
    ``precision="bf16"`` rounds q, k and v to bf16 first, as the dense form does."""
def linear_attention(query: ArrayLike, key: ArrayLike, value: ArrayLike, causal: bool = False,
                     feature_map: str = "elu", key_padding_mask: Optional[Sequence[bool]] = None) -> Tensor: ...
def lsh_attention(qk: ArrayLike, v: ArrayLike, n_hashes: int = 4, bucket_size: int = 64, causal: bool = False,
                  seed: int = 0, key_padding_mask: Optional[Sequence[bool]] = None) -> Tensor: ...

class LinearAttentionState:
    """The recurrent state of causal linear attention: feed one token at a time with ``step``."""
    def __init__(self, feature_map: str = "elu") -> None: ...
    def step(self, query: ArrayLike, key: ArrayLike, value: ArrayLike) -> Tensor: ...
    def state(self) -> Optional[Tuple[np.ndarray, np.ndarray]]: ...

def mask_explain(mask: tuple, samples: int, l: int, s: int) -> Tuple[int, int, int, int]:
    """``(allowed pairs, full, partial, empty 64×64 tiles)`` of a mask spec over ``samples`` samples."""

def conv1d(input: ArrayLike, weight: ArrayLike, bias: Optional[ArrayLike] = None, stride: int = 1,
           padding: Tuple[int, int] = (0, 0), dilation: int = 1, groups: int = 1) -> Tensor:
    """1-D convolution with (left, right) zero padding: (N, C_in, L), (C_out, C_in / groups, K) → (N, C_out, L_out)."""

# ------------------------------------------------------------------------------ optimizers (optim.rs)

def adam_step(param: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, max_exp_avg_sq: Optional[Tensor], step: int,
              lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool,
              amsgrad: bool, maximize: bool) -> None:
    """One Adam/AdamW update of ``param`` and its moment buffers, in place (``tfm_rs.optim.Adam``)."""

def sgd_step(param: Tensor, momentum_buffer: Optional[Tensor], first_step: bool, lr: float, momentum: float,
             dampening: float, weight_decay: float, nesterov: bool, maximize: bool) -> None:
    """One SGD update of ``param`` (and its momentum buffer), in place (``tfm_rs.optim.SGD``)."""

# ------------------------------------------------------------------------------ runtime (runtime.rs)

def set_num_threads(n: int) -> None:
    """Sets the number of threads tfm_rs ops use (like ``torch.set_num_threads``)."""
def get_num_threads() -> int:
    """The number of threads tfm_rs ops use."""
def manual_seed(seed: int) -> None:
    """Seeds tfm_rs's random number generator (dropout masks); ``tfm_rs.manual_seed`` also seeds
    ``nn.init``."""
def get_rng_state() -> int:
    """The state of tfm_rs's random number generator."""
def set_rng_state(state: int) -> None:
    """Restores a state returned by :func:`get_rng_state`."""
def set_grad_enabled(enabled: bool) -> bool:
    """Turns graph recording on or off for this thread; returns the previous mode."""
def is_grad_enabled() -> bool: ...
def cpu_features() -> Dict[str, Any]:
    """``{"isa", "supported": [...], "arch", "num_threads", "forced_by_env"}``: the SIMD path the
    kernels use and those the CPU supports."""
def set_isa(name: str) -> None:
    """Forces a SIMD path (``"avx512"``, ``"avx2"`` or ``"generic"``); raises if the CPU cannot run it."""

# ------------------------------------------------------------------------------ decoding (decode.rs)
# Used through tfm_rs.decode (Seq2SeqTransformer.generate/translate, GPT.generate/stream).

Hypothesis = Tuple[List[int], float, float]  # (tokens, log_prob, score)

class DecoderWeights:
    """The weights of a decoder stack, shared (not copied) with the tensors they came from."""

    def __init__(self, spec: Dict[str, Any]) -> None:
        """``spec``: ``head_dim``, ``norm_first``, ``activation`` ("relu", "gelu", "gelu_tanh"),
        ``eps``, ``embed``, ``embed_scale``, ``positions``, ``layers`` (dicts of ``(weight, bias)``
        pairs and each attention's head count, ``self_heads`` and ``cross_heads``), ``final_norm``
        (or None) and ``head``; see ``tfm_rs.decode.weights``. A Llama-family decoder has
        ``positions=None`` and ``llama``: ``inv_freq`` (rotary frequencies, ``head_dim/2``),
        ``max_len`` and ``kv_heads`` (see ``tfm_rs.models.Llama.decoder_weights``)."""
    @property
    def vocab_size(self) -> int: ...
    @property
    def max_len(self) -> int: ...

class Decoder:
    """Step-by-step decoding with a key/value cache."""

    def __init__(self, weights: DecoderWeights, rows: int, memory: Optional[Tensor] = None,
                 memory_key_padding_mask: Optional[npt.ArrayLike] = None,
                 sources: Optional[Sequence[int]] = None) -> None:
        """``rows`` empty sequences; with ``memory``, row ``i`` attends to source ``sources[i]``
        (default ``i``)."""
    def feed(self, tokens: Sequence[Sequence[int]]) -> npt.NDArray[np.float32]:
        """Appends ``tokens[r]`` to each row; the logits after each row's last new token ``(rows, V)``."""
    def reorder(self, parents: Sequence[int]) -> None:
        """Row ``i`` becomes a copy of old row ``parents[i]``."""
    def num_rows(self) -> int: ...

class Search:
    """A generation that advances one token per :meth:`step` (streaming)."""

    def __init__(self, weights: DecoderWeights, prompts: Sequence[Sequence[int]], max_new: Sequence[int],
                 config: Dict[str, Any], memory: Optional[Tensor] = None,
                 memory_key_padding_mask: Optional[npt.ArrayLike] = None) -> None: ...
    def step(self) -> Optional[List[Tuple[int, int, int]]]:
        """The ``(input, sample, token)`` chosen now (empty for beam search), or None when over."""
    def finish(self) -> List[List[Hypothesis]]:
        """The results per input; ends the search."""

def generate(weights: DecoderWeights, prompts: Sequence[Sequence[int]], max_new: Sequence[int],
             config: Dict[str, Any], memory: Optional[Tensor] = None,
             memory_key_padding_mask: Optional[npt.ArrayLike] = None) -> List[List[Hypothesis]]:
    """A whole search in Rust (greedy, beam, sampling; ``config`` as ``tfm_rs.decode`` builds it);
    per input, a list of ``(tokens, log_prob, score)``."""


# ------------------------------------------------------------------------------ int8 inference (quantization.rs)
# Used through tfm_rs.quantization (quantize_dynamic, QuantizedLinear).

class QuantizedWeight:
    """An int8 weight ``(out_features, in_features)`` with one float32 scale per output feature."""

    def __init__(self, int8: npt.NDArray[np.int8], scales: ArrayLike) -> None:
        """From a checkpoint's int8 values ``(out, in)`` and positive scales ``(out,)``."""
    @staticmethod
    def quantize(weight: ArrayLike) -> "QuantizedWeight":
        """Quantizes a float weight ``(out, in)`` symmetrically per output feature."""
    @property
    def shape(self) -> Tuple[int, int]: ...
    def int8(self) -> npt.NDArray[np.int8]: ...
    def scales(self) -> npt.NDArray[np.float32]: ...
    def dequantize(self) -> npt.NDArray[np.float32]:
        """``scales[j]·int8[j]`` as float32 ``(out, in)``."""

def quantized_linear(input: ArrayLike, weight: QuantizedWeight, bias: Optional[ArrayLike] = None,
                     start: int = 0, end: Optional[int] = None) -> Tensor:
    """``input (*, in)`` times output features ``start..end`` of ``weight``, plus ``bias``."""


# ---------------------------------------------------------------- GPU backend (feature wgpu)

def gpu_available() -> bool:
    """Whether a GPU adapter and device are available (False without the ``wgpu`` feature)."""
def gpu_info(reason: bool = False) -> Optional[Union[Dict[str, str], str]]:
    """The adapter (name, backend, device_type, driver), or None; with ``reason=True`` the
    reason there is none, as a string."""

# With the ``wgpu`` feature, two private benchmark timers (``_gpu_time_matmul``,
# ``_gpu_time_attention``: best seconds of the kernels on device-resident buffers) for
# benches/bench_gpu.py; private, so not declared here.
