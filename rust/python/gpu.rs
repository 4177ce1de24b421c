//! Bindings of the GPU backend: `gpu_available()`, `gpu_info()` and, with the `wgpu` feature,
//! the `_core.gpu` submodule of ops on NumPy arrays (copied to the GPU, results copied back),
//! which `tfm_rs.gpu` wraps. Each binding only converts: shapes are read off the arrays and
//! checked here, the work is one call into `crate::gpu::ops` through `runtime::run`.

use pyo3::prelude::*;
#[cfg(feature = "wgpu")]
use pyo3::types::PyDict;

/// Whether a GPU adapter and device are available to tfm_rs (False when built without the
/// `wgpu` feature). The first call creates the device.
#[pyfunction]
fn gpu_available(py: Python<'_>) -> bool {
    #[cfg(feature = "wgpu")]
    {
        super::runtime::run(py, || Ok(crate::gpu::is_available())).unwrap_or(false)
    }
    #[cfg(not(feature = "wgpu"))]
    {
        let _ = py;
        false
    }
}

/// The GPU adapter in use as a dict (name, backend, device_type, driver), or None when there
/// is none or tfm_rs was built without its GPU backend. `gpu_info(reason=True)` returns the
/// reason as a string instead of None.
#[pyfunction]
#[pyo3(signature = (reason = false))]
fn gpu_info(py: Python<'_>, reason: bool) -> PyResult<Option<Bound<'_, PyAny>>> {
    #[cfg(feature = "wgpu")]
    let info = super::runtime::run(py, || Ok(crate::gpu::info()))?;
    #[cfg(not(feature = "wgpu"))]
    let info: Result<(), String> =
        Err("tfm_rs was built without its GPU backend (cargo feature 'wgpu')".to_string());
    match info {
        #[cfg(feature = "wgpu")]
        Ok(i) => {
            let d = PyDict::new(py);
            d.set_item("name", i.name)?;
            d.set_item("backend", i.backend)?;
            d.set_item("device_type", i.device_type)?;
            d.set_item("driver", i.driver)?;
            Ok(Some(d.into_any()))
        }
        #[cfg(not(feature = "wgpu"))]
        Ok(()) => Ok(None),
        Err(e) if reason => Ok(Some(e.to_string().into_pyobject(py)?.into_any())),
        Err(_) => Ok(None),
    }
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(gpu_available, m)?)?;
    m.add_function(wrap_pyfunction!(gpu_info, m)?)?;
    #[cfg(feature = "wgpu")]
    ops::register(m)?;
    Ok(())
}

#[cfg(feature = "wgpu")]
mod ops {
    // Every input goes through `host_tensor_from_py` (or `.to_host()`), so the host accessors below
    // only ever see host tensors: a GPU `Tensor` passed in is downloaded, not a panic.
    use super::super::convert::{host_tensor_from_py, ids_from_py, mask_from_py, tensor_to_numpy};
    use super::super::runtime::run;
    use crate::error::{Result, TfmError};
    use crate::gpu::ops as gpu_ops;
    use crate::ops::activation::ActivationKind;
    use crate::ops::attention::{AttentionConfig, AttnMask};
    use crate::ops::broadcast::broadcast_to;
    use crate::ops::cross_entropy::Reduction;
    use crate::optim::AdamConfig;
    use crate::tensor::{numel, shape_str, Tensor};
    use pyo3::prelude::*;
    use pyo3::types::PyTuple;

    type Arr<'py> = Bound<'py, PyAny>;

    fn array<'py>(py: Python<'py>, data: Vec<f32>, shape: &[usize]) -> PyResult<Arr<'py>> {
        tensor_to_numpy(py, Tensor::new(data, shape)?)
    }

    fn tuple<'py>(py: Python<'py>, items: Vec<Arr<'py>>) -> PyResult<Arr<'py>> {
        Ok(PyTuple::new(py, items)?.into_any())
    }

    fn opt_tensor(obj: Option<&Arr<'_>>, op: &'static str) -> PyResult<Option<Tensor>> {
        match obj {
            Some(o) if !o.is_none() => Ok(Some(host_tensor_from_py(o, op)?)),
            _ => Ok(None),
        }
    }

    /// (rows, last dimension) of a shape with at least one dimension.
    fn rows_cols(op: &'static str, shape: &[usize]) -> Result<(usize, usize)> {
        match shape.split_last() {
            Some((&c, lead)) => Ok((numel(lead), c)),
            None => Err(TfmError::shape(
                op,
                "expected at least one dimension, got a scalar",
            )),
        }
    }

    /// `op(a) · op(b)` for `a (…, M, K)` and `b (…, K, N)` (either may be 2-D and is then
    /// shared by every batch entry; batch dimensions otherwise equal). With `trans_a`, `a` is
    /// stored `(…, K, M)`; with `trans_b`, `b` is stored `(…, N, K)`.
    #[pyfunction]
    #[pyo3(signature = (a, b, trans_a = false, trans_b = false))]
    fn matmul<'py>(
        py: Python<'py>,
        a: &Arr<'py>,
        b: &Arr<'py>,
        trans_a: bool,
        trans_b: bool,
    ) -> PyResult<Arr<'py>> {
        const OP: &str = "gpu.matmul";
        let (a, b) = (host_tensor_from_py(a, OP)?, host_tensor_from_py(b, OP)?);
        let (sa, sb) = (a.shape(), b.shape());
        if sa.len() < 2 || sb.len() < 2 {
            return Err(TfmError::shape(
                OP,
                format!(
                    "operands must have at least 2 dimensions, got {} and {}",
                    shape_str(sa),
                    shape_str(sb)
                ),
            )
            .into());
        }
        let (ba, bb) = (&sa[..sa.len() - 2], &sb[..sb.len() - 2]);
        let (m, ka) = if trans_a {
            (sa[sa.len() - 1], sa[sa.len() - 2])
        } else {
            (sa[sa.len() - 2], sa[sa.len() - 1])
        };
        let (kb, n) = if trans_b {
            (sb[sb.len() - 1], sb[sb.len() - 2])
        } else {
            (sb[sb.len() - 2], sb[sb.len() - 1])
        };
        let batch_shape = match (ba.is_empty(), bb.is_empty()) {
            (_, true) => ba,
            (true, false) => bb,
            _ if ba == bb => ba,
            _ => {
                return Err(TfmError::shape(
                    OP,
                    format!(
                        "batch dimensions differ: {} and {}",
                        shape_str(sa),
                        shape_str(sb)
                    ),
                )
                .into())
            }
        };
        if ka != kb {
            return Err(TfmError::shape(
                OP,
                format!(
                    "inner dimensions differ: {} and {} (trans_a={trans_a}, trans_b={trans_b})",
                    shape_str(sa),
                    shape_str(sb)
                ),
            )
            .into());
        }
        let s = gpu_ops::gemm::GemmShape {
            batch: numel(batch_shape),
            m,
            k: ka,
            n,
            trans_a,
            trans_b,
            batched_a: !ba.is_empty(),
            batched_b: !bb.is_empty(),
        };
        let out_shape: Vec<usize> = batch_shape.iter().copied().chain([m, n]).collect();
        let c = run(py, || gpu_ops::gemm::matmul(a.data(), b.data(), &s))?;
        array(py, c, &out_shape)
    }

    fn softmax_impl<'py>(
        py: Python<'py>,
        op: &'static str,
        x: &Arr<'py>,
        mask: Option<&Arr<'py>>,
        log: bool,
    ) -> PyResult<Arr<'py>> {
        let x = host_tensor_from_py(x, op)?;
        let mask = match mask {
            Some(m) if !m.is_none() => Some(broadcast_to(
                op,
                &mask_from_py(m, op)?.to_host()?,
                x.shape(),
            )?),
            _ => None,
        };
        let (_, cols) = rows_cols(op, x.shape())?;
        let y = run(py, || {
            gpu_ops::softmax::forward_host(x.data(), mask.as_ref().map(|m| m.data()), cols, log)
        })?;
        array(py, y, x.shape())
    }

    /// Softmax over the last axis of `x + mask` (mask additive or boolean, broadcast to x).
    #[pyfunction]
    #[pyo3(signature = (x, mask = None))]
    fn softmax<'py>(py: Python<'py>, x: &Arr<'py>, mask: Option<&Arr<'py>>) -> PyResult<Arr<'py>> {
        softmax_impl(py, "gpu.softmax", x, mask, false)
    }

    /// Log-softmax over the last axis of `x + mask`.
    #[pyfunction]
    #[pyo3(signature = (x, mask = None))]
    fn log_softmax<'py>(
        py: Python<'py>,
        x: &Arr<'py>,
        mask: Option<&Arr<'py>>,
    ) -> PyResult<Arr<'py>> {
        softmax_impl(py, "gpu.log_softmax", x, mask, true)
    }

    /// The gradient of (log-)softmax from its output `y` and the output gradient.
    #[pyfunction]
    #[pyo3(signature = (grad, y, log = false))]
    fn softmax_backward<'py>(
        py: Python<'py>,
        grad: &Arr<'py>,
        y: &Arr<'py>,
        log: bool,
    ) -> PyResult<Arr<'py>> {
        const OP: &str = "gpu.softmax_backward";
        let (g, y) = (host_tensor_from_py(grad, OP)?, host_tensor_from_py(y, OP)?);
        if g.shape() != y.shape() {
            return Err(TfmError::shape(
                OP,
                format!(
                    "grad {} and y {} differ",
                    shape_str(g.shape()),
                    shape_str(y.shape())
                ),
            )
            .into());
        }
        let (_, cols) = rows_cols(OP, y.shape())?;
        let dx = run(py, || {
            gpu_ops::softmax::backward_host(y.data(), g.data(), cols, log)
        })?;
        array(py, dx, y.shape())
    }

    /// LayerNorm over the last axis: `(y, mean, rstd)`, the statistics shaped `x.shape[:-1]`.
    #[pyfunction]
    #[pyo3(signature = (x, weight = None, bias = None, eps = 1e-5))]
    fn layer_norm<'py>(
        py: Python<'py>,
        x: &Arr<'py>,
        weight: Option<&Arr<'py>>,
        bias: Option<&Arr<'py>>,
        eps: f32,
    ) -> PyResult<Arr<'py>> {
        const OP: &str = "gpu.layer_norm";
        let (x, w, b) = (
            host_tensor_from_py(x, OP)?,
            opt_tensor(weight, OP)?,
            opt_tensor(bias, OP)?,
        );
        let (_, d) = rows_cols(OP, x.shape())?;
        let out = run(py, || {
            gpu_ops::layer_norm::forward_host(
                x.data(),
                w.as_ref().map(|t| t.data()),
                b.as_ref().map(|t| t.data()),
                d,
                eps,
            )
        })?;
        let lead = &x.shape()[..x.ndim() - 1];
        tuple(
            py,
            vec![
                array(py, out.y, x.shape())?,
                array(py, out.mean, lead)?,
                array(py, out.rstd, lead)?,
            ],
        )
    }

    /// The LayerNorm backward: `(dx, dweight, dbias)` from the output gradient, the input and
    /// the forward's mean and rstd.
    #[pyfunction]
    #[pyo3(signature = (grad, x, mean, rstd, weight = None))]
    fn layer_norm_backward<'py>(
        py: Python<'py>,
        grad: &Arr<'py>,
        x: &Arr<'py>,
        mean: &Arr<'py>,
        rstd: &Arr<'py>,
        weight: Option<&Arr<'py>>,
    ) -> PyResult<Arr<'py>> {
        const OP: &str = "gpu.layer_norm_backward";
        let (g, x, mean, rstd, w) = (
            host_tensor_from_py(grad, OP)?,
            host_tensor_from_py(x, OP)?,
            host_tensor_from_py(mean, OP)?,
            host_tensor_from_py(rstd, OP)?,
            opt_tensor(weight, OP)?,
        );
        let (rows, d) = rows_cols(OP, x.shape())?;
        if g.shape() != x.shape() || mean.numel() != rows || rstd.numel() != rows {
            return Err(TfmError::shape(
                OP,
                format!(
                    "grad {}, mean {}, rstd {} do not fit x {}",
                    shape_str(g.shape()),
                    shape_str(mean.shape()),
                    shape_str(rstd.shape()),
                    shape_str(x.shape())
                ),
            )
            .into());
        }
        let (dx, dw, db) = run(py, || {
            gpu_ops::layer_norm::backward_host(
                g.data(),
                x.data(),
                mean.data(),
                rstd.data(),
                w.as_ref().map(|t| t.data()),
                d,
            )
        })?;
        tuple(
            py,
            vec![
                array(py, dx, x.shape())?,
                array(py, dw, &[d])?,
                array(py, db, &[d])?,
            ],
        )
    }

    fn activation_kind(name: &str) -> Result<ActivationKind> {
        match name {
            "relu" => Ok(ActivationKind::Relu),
            "gelu" | "none" => Ok(ActivationKind::Gelu),
            "gelu_tanh" | "tanh" => Ok(ActivationKind::GeluTanh),
            other => Err(TfmError::value(
                "gpu.activation",
                format!("unknown activation {other:?} (expected 'relu', 'gelu' or 'gelu_tanh')"),
            )),
        }
    }

    /// `act(x)` for `kind` in 'relu', 'gelu' (erf form), 'gelu_tanh'.
    #[pyfunction]
    fn activation<'py>(py: Python<'py>, x: &Arr<'py>, kind: &str) -> PyResult<Arr<'py>> {
        let (kind, x) = (
            activation_kind(kind)?,
            host_tensor_from_py(x, "gpu.activation")?,
        );
        let y = run(py, || gpu_ops::activation::forward_host(kind, x.data()))?;
        array(py, y, x.shape())
    }

    /// `grad ∘ act'(x)`.
    #[pyfunction]
    fn activation_backward<'py>(
        py: Python<'py>,
        grad: &Arr<'py>,
        x: &Arr<'py>,
        kind: &str,
    ) -> PyResult<Arr<'py>> {
        const OP: &str = "gpu.activation_backward";
        let (kind, g, x) = (
            activation_kind(kind)?,
            host_tensor_from_py(grad, OP)?,
            host_tensor_from_py(x, OP)?,
        );
        let dx = run(py, || {
            gpu_ops::activation::backward_host(kind, g.data(), x.data())
        })?;
        array(py, dx, x.shape())
    }

    /// Inverted dropout with drop probability `p`, its mask keyed by `seed` (the same masks as
    /// the CPU's for that seed); also its own backward (apply it to the gradient).
    #[pyfunction]
    fn dropout<'py>(py: Python<'py>, x: &Arr<'py>, p: f64, seed: u64) -> PyResult<Arr<'py>> {
        let x = host_tensor_from_py(x, "gpu.dropout")?;
        let y = run(py, || gpu_ops::dropout::apply_host(x.data(), seed, p))?;
        array(py, y, x.shape())
    }

    /// Rows of `weight (V, D)` gathered by integer `ids` → `ids.shape + (D,)`.
    #[pyfunction]
    fn embedding<'py>(py: Python<'py>, ids: &Arr<'py>, weight: &Arr<'py>) -> PyResult<Arr<'py>> {
        const OP: &str = "gpu.embedding";
        let ((ids, ids_shape), w) = (ids_from_py(ids, OP)?, host_tensor_from_py(weight, OP)?);
        if w.ndim() != 2 {
            return Err(TfmError::shape(
                OP,
                format!("weight must be (V, D), got {}", shape_str(w.shape())),
            )
            .into());
        }
        let d = w.shape()[1];
        let out = run(py, || gpu_ops::embedding::forward_host(&ids, w.data(), d))?;
        array(
            py,
            out,
            &ids_shape.iter().copied().chain([d]).collect::<Vec<_>>(),
        )
    }

    /// The embedding backward: `dweight (num_embeddings, D)` from `grad (ids.shape + (D,))`.
    #[pyfunction]
    #[pyo3(signature = (grad, ids, num_embeddings, padding_idx = None))]
    fn embedding_backward<'py>(
        py: Python<'py>,
        grad: &Arr<'py>,
        ids: &Arr<'py>,
        num_embeddings: usize,
        padding_idx: Option<usize>,
    ) -> PyResult<Arr<'py>> {
        const OP: &str = "gpu.embedding_backward";
        let ((ids, _), g) = (ids_from_py(ids, OP)?, host_tensor_from_py(grad, OP)?);
        let d = if ids.is_empty() {
            g.shape().last().copied().unwrap_or(0)
        } else {
            g.numel() / ids.len()
        };
        if g.numel() != ids.len() * d || padding_idx.is_some_and(|p| p >= num_embeddings) {
            return Err(TfmError::shape(
                OP,
                format!(
                    "grad {} does not fit {} ids, or padding_idx is out of range",
                    shape_str(g.shape()),
                    ids.len()
                ),
            )
            .into());
        }
        let dw = run(py, || {
            gpu_ops::embedding::backward_host(g.data(), &ids, num_embeddings, d, padding_idx)
        })?;
        array(py, dw, &[num_embeddings, d])
    }

    /// Cross entropy of `logits (N, C)` against class indices `target (N,)`; with
    /// `with_grad=True`, `(loss, dlogits)`, the gradient of the reduced loss.
    #[pyfunction]
    #[pyo3(signature = (logits, target, ignore_index = -100, label_smoothing = 0.0, reduction = "mean", with_grad = false))]
    fn cross_entropy<'py>(
        py: Python<'py>,
        logits: &Arr<'py>,
        target: &Arr<'py>,
        ignore_index: i64,
        label_smoothing: f32,
        reduction: &str,
        with_grad: bool,
    ) -> PyResult<Arr<'py>> {
        const OP: &str = "gpu.cross_entropy";
        let (x, (t, _)) = (host_tensor_from_py(logits, OP)?, ids_from_py(target, OP)?);
        let red = match reduction {
            "none" => Reduction::None,
            "mean" => Reduction::Mean,
            "sum" => Reduction::Sum,
            other => {
                return Err(TfmError::value(
                    OP,
                    format!("reduction must be 'none', 'mean' or 'sum', got {other:?}"),
                )
                .into())
            }
        };
        if x.ndim() != 2 || x.shape()[0] != t.len() {
            return Err(TfmError::shape(
                OP,
                format!(
                    "logits must be (N, C) with one target per row; got {} and {} targets",
                    shape_str(x.shape()),
                    t.len()
                ),
            )
            .into());
        }
        let c = x.shape()[1];
        let out = run(py, || {
            gpu_ops::cross_entropy::cross_entropy_host(
                x.data(),
                &t,
                c,
                ignore_index,
                label_smoothing,
                red,
                with_grad,
            )
        })?;
        let loss_shape: &[usize] = if red == Reduction::None {
            &[t.len()]
        } else {
            &[]
        };
        let loss = array(py, out.loss, loss_shape)?;
        match out.dlogits {
            Some(d) => tuple(py, vec![loss, array(py, d, x.shape())?]),
            None => Ok(loss),
        }
    }

    /// q (…, Tq, E), k (…, Tk, E), v (…, Tk, Ev) and the mask broadcast to (…, Tq, Tk).
    struct AttnInputs {
        q: Tensor,
        k: Tensor,
        v: Tensor,
        mask: Option<Tensor>,
        offsets: Vec<usize>,
        batch: Vec<usize>,
        dims: [usize; 4],
    }

    fn attention_inputs(
        op: &'static str,
        [q, k, v]: [&Arr<'_>; 3],
        mask: Option<&Arr<'_>>,
    ) -> PyResult<AttnInputs> {
        let (q, k, v) = (
            host_tensor_from_py(q, op)?,
            host_tensor_from_py(k, op)?,
            host_tensor_from_py(v, op)?,
        );
        let nd = q.ndim();
        let fits = nd >= 2
            && k.ndim() == nd
            && v.ndim() == nd
            && q.shape()[..nd - 2] == k.shape()[..nd - 2]
            && k.shape()[..nd - 1] == v.shape()[..nd - 1]
            && q.shape()[nd - 1] == k.shape()[nd - 1];
        if !fits {
            return Err(TfmError::shape(
                op,
                format!(
                    "q {}, k {}, v {} must be (…, Tq, E), (…, Tk, E), (…, Tk, Ev)",
                    shape_str(q.shape()),
                    shape_str(k.shape()),
                    shape_str(v.shape())
                ),
            )
            .into());
        }
        let batch = q.shape()[..nd - 2].to_vec();
        let dims = [
            q.shape()[nd - 2],
            k.shape()[nd - 2],
            q.shape()[nd - 1],
            v.shape()[nd - 1],
        ];
        let full: Vec<usize> = batch.iter().copied().chain([dims[0], dims[1]]).collect();
        let mask = match mask {
            Some(m) if !m.is_none() => {
                Some(broadcast_to(op, &mask_from_py(m, op)?.to_host()?, &full)?)
            }
            _ => None,
        };
        let offsets = (0..numel(&batch)).map(|h| h * dims[0] * dims[1]).collect();
        Ok(AttnInputs {
            q,
            k,
            v,
            mask,
            offsets,
            batch,
            dims,
        })
    }

    impl AttnInputs {
        fn config(
            &self,
            is_causal: bool,
            scale: Option<f32>,
            dropout_p: f32,
            seed: u64,
        ) -> AttentionConfig<'_> {
            let [tq, tk, e, ev] = self.dims;
            AttentionConfig {
                bh: numel(&self.batch),
                tq,
                tk,
                e,
                ev,
                scale: scale.unwrap_or(1.0 / (e as f32).sqrt()),
                is_causal,
                mask: self.mask.as_ref().map(|m| AttnMask {
                    data: m.data(),
                    head_offsets: &self.offsets,
                    row_stride: tk,
                    col_stride: 1,
                }),
                dropout_p,
                seed,
            }
        }
        fn shape(&self, rows: usize, cols: usize) -> Vec<usize> {
            self.batch.iter().copied().chain([rows, cols]).collect()
        }
    }

    /// Fused attention: `(out (…, Tq, Ev), lse (…, Tq))`, with an additive or boolean mask
    /// broadcast to (…, Tq, Tk), a causal flag, and dropout keyed by `seed`.
    #[pyfunction]
    #[pyo3(signature = (q, k, v, attn_mask = None, is_causal = false, scale = None, dropout_p = 0.0, seed = 0))]
    #[allow(clippy::too_many_arguments)]
    fn scaled_dot_product_attention<'py>(
        py: Python<'py>,
        q: &Arr<'py>,
        k: &Arr<'py>,
        v: &Arr<'py>,
        attn_mask: Option<&Arr<'py>>,
        is_causal: bool,
        scale: Option<f32>,
        dropout_p: f32,
        seed: u64,
    ) -> PyResult<Arr<'py>> {
        let a = attention_inputs("gpu.scaled_dot_product_attention", [q, k, v], attn_mask)?;
        let cfg = a.config(is_causal, scale, dropout_p, seed);
        let (out, lse) = run(py, || {
            gpu_ops::attention::forward_host(a.q.data(), a.k.data(), a.v.data(), &cfg)
        })?;
        let [tq, _, _, ev] = a.dims;
        tuple(
            py,
            vec![
                array(py, out, &a.shape(tq, ev))?,
                array(py, lse, &a.shape(tq, 1)[..a.batch.len() + 1])?,
            ],
        )
    }

    /// The attention backward: `(dq, dk, dv)` from the output gradient and the forward's
    /// inputs, output and lse, with the forward's options.
    #[pyfunction]
    #[pyo3(signature = (grad, q, k, v, out, lse, attn_mask = None, is_causal = false, scale = None, dropout_p = 0.0, seed = 0))]
    #[allow(clippy::too_many_arguments)]
    fn attention_backward<'py>(
        py: Python<'py>,
        grad: &Arr<'py>,
        q: &Arr<'py>,
        k: &Arr<'py>,
        v: &Arr<'py>,
        out: &Arr<'py>,
        lse: &Arr<'py>,
        attn_mask: Option<&Arr<'py>>,
        is_causal: bool,
        scale: Option<f32>,
        dropout_p: f32,
        seed: u64,
    ) -> PyResult<Arr<'py>> {
        const OP: &str = "gpu.attention_backward";
        let a = attention_inputs(OP, [q, k, v], attn_mask)?;
        let (g, o, l) = (
            host_tensor_from_py(grad, OP)?,
            host_tensor_from_py(out, OP)?,
            host_tensor_from_py(lse, OP)?,
        );
        let cfg = a.config(is_causal, scale, dropout_p, seed);
        let (dq, dk, dv) = run(py, || {
            gpu_ops::attention::backward_host(
                g.data(),
                a.q.data(),
                a.k.data(),
                a.v.data(),
                o.data(),
                l.data(),
                &cfg,
            )
        })?;
        tuple(
            py,
            vec![
                array(py, dq, a.q.shape())?,
                array(py, dk, a.k.shape())?,
                array(py, dv, a.v.shape())?,
            ],
        )
    }

    /// One Adam (AdamW with `decoupled=True`) step: returns the new
    /// `(param, exp_avg, exp_avg_sq, max_exp_avg_sq)` (the last None without amsgrad).
    #[pyfunction]
    #[pyo3(signature = (param, grad, exp_avg, exp_avg_sq, step, lr = 1e-3, betas = (0.9, 0.999), eps = 1e-8, weight_decay = 0.0, decoupled = false, amsgrad = false, maximize = false, max_exp_avg_sq = None))]
    #[allow(clippy::too_many_arguments)]
    fn adam_step<'py>(
        py: Python<'py>,
        param: &Arr<'py>,
        grad: &Arr<'py>,
        exp_avg: &Arr<'py>,
        exp_avg_sq: &Arr<'py>,
        step: u64,
        lr: f64,
        betas: (f64, f64),
        eps: f64,
        weight_decay: f64,
        decoupled: bool,
        amsgrad: bool,
        maximize: bool,
        max_exp_avg_sq: Option<&Arr<'py>>,
    ) -> PyResult<Arr<'py>> {
        const OP: &str = "gpu.adam_step";
        let cfg = AdamConfig {
            lr,
            beta1: betas.0,
            beta2: betas.1,
            eps,
            weight_decay,
            decoupled,
            amsgrad,
            maximize,
        };
        let p = host_tensor_from_py(param, OP)?;
        let g = host_tensor_from_py(grad, OP)?;
        let (mut pv, mut m, mut v) = (
            p.data().to_vec(),
            host_tensor_from_py(exp_avg, OP)?.into_host_vec()?,
            host_tensor_from_py(exp_avg_sq, OP)?.into_host_vec()?,
        );
        let mut vmax = match (amsgrad, opt_tensor(max_exp_avg_sq, OP)?) {
            (true, Some(t)) => Some(t.into_host_vec()?),
            (true, None) => Some(vec![0.0; pv.len()]),
            (false, _) => None,
        };
        run(py, || {
            gpu_ops::adam::step_host(
                &mut pv,
                &mut m,
                &mut v,
                vmax.as_deref_mut(),
                g.data(),
                step,
                &cfg,
            )
        })?;
        let shape = p.shape();
        let last = match vmax {
            Some(x) => array(py, x, shape)?,
            None => py.None().into_bound(py),
        };
        tuple(
            py,
            vec![
                array(py, pv, shape)?,
                array(py, m, shape)?,
                array(py, v, shape)?,
                last,
            ],
        )
    }

    /// Best seconds of `repeats` GEMMs `(batch, m, k)·(k, n)` (`trans_b`: B stored (n, k)) on
    /// device-resident buffers, each waited for (benchmarks; no host copies timed).
    #[pyfunction]
    #[pyo3(signature = (m, k, n, batch = 1, trans_b = false, repeats = 10))]
    fn time_matmul(
        py: Python<'_>,
        m: usize,
        k: usize,
        n: usize,
        batch: usize,
        trans_b: bool,
        repeats: usize,
    ) -> PyResult<f64> {
        let s = gpu_ops::gemm::GemmShape {
            batch,
            trans_b,
            ..gpu_ops::gemm::GemmShape::new(m, k, n)
        };
        run(py, || crate::gpu::timing::time_gemm(&s, repeats))
    }

    /// Best seconds of the attention forward (and backward, with `backward=True`) for
    /// `bh` batch-heads of `t` queries and keys of dimension `e`, on device-resident buffers.
    #[pyfunction]
    #[pyo3(signature = (bh, t, e, is_causal = false, backward = false, repeats = 5))]
    fn time_attention(
        py: Python<'_>,
        bh: usize,
        t: usize,
        e: usize,
        is_causal: bool,
        backward: bool,
        repeats: usize,
    ) -> PyResult<f64> {
        let cfg = AttentionConfig {
            bh,
            tq: t,
            tk: t,
            e,
            ev: e,
            scale: 1.0 / (e as f32).sqrt(),
            is_causal,
            mask: None,
            dropout_p: 0.0,
            seed: 0,
        };
        run(py, || {
            crate::gpu::timing::time_attention(&cfg, backward, repeats)
        })
    }

    pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
        // Private until the rewrite of this file removes it: only the two timers below are used.
        let sub = PyModule::new(m.py(), "_gpu")?;
        sub.add_function(wrap_pyfunction!(time_matmul, &sub)?)?;
        sub.add_function(wrap_pyfunction!(time_attention, &sub)?)?;
        sub.add_function(wrap_pyfunction!(matmul, &sub)?)?;
        sub.add_function(wrap_pyfunction!(softmax, &sub)?)?;
        sub.add_function(wrap_pyfunction!(log_softmax, &sub)?)?;
        sub.add_function(wrap_pyfunction!(softmax_backward, &sub)?)?;
        sub.add_function(wrap_pyfunction!(layer_norm, &sub)?)?;
        sub.add_function(wrap_pyfunction!(layer_norm_backward, &sub)?)?;
        sub.add_function(wrap_pyfunction!(activation, &sub)?)?;
        sub.add_function(wrap_pyfunction!(activation_backward, &sub)?)?;
        sub.add_function(wrap_pyfunction!(dropout, &sub)?)?;
        sub.add_function(wrap_pyfunction!(embedding, &sub)?)?;
        sub.add_function(wrap_pyfunction!(embedding_backward, &sub)?)?;
        sub.add_function(wrap_pyfunction!(cross_entropy, &sub)?)?;
        sub.add_function(wrap_pyfunction!(scaled_dot_product_attention, &sub)?)?;
        sub.add_function(wrap_pyfunction!(attention_backward, &sub)?)?;
        sub.add_function(wrap_pyfunction!(adam_step, &sub)?)?;
        // The benchmark timers' private names at `_core` top level (benches/bench_gpu.py).
        m.add("_gpu_time_matmul", sub.getattr("time_matmul")?)?;
        m.add("_gpu_time_attention", sub.getattr("time_attention")?)?;
        m.add_submodule(&sub)
    }
}
