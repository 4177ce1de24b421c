//! Bindings of the ops behind `tfm_rs.functional` (whose Python wrappers give PyTorch's
//! signatures and docstrings). Each converts arguments, moves PyTorch conventions the core does
//! not take directly (a softmax `dim`, a class dimension at position 1, multi-dimensional
//! `normalized_shape`) onto the core's last-axis forms, and calls one op.

use super::convert::{ids_from_py, mask_from_py, var_from_py};
use super::runtime::run;
use super::tensor::PyTensor;
use crate::autograd::Var;
use crate::desc::Precision;
use crate::error::{Result, TfmError};
use crate::ops::cross_entropy::{self as cross_entropy_op, Reduction};
use crate::ops::{activation, attention, dropout as dropout_op, embedding as embedding_op};
use crate::ops::{
    layer_norm as ln, linear as linear_op, matmul as matmul_op, shape, softmax as softmax_op,
};
use crate::tensor::Tensor;
use pyo3::prelude::*;

fn opt_var(obj: Option<&Bound<'_, PyAny>>, op: &'static str) -> PyResult<Option<Var>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(var_from_py(o, op)?)),
        _ => Ok(None),
    }
}

fn opt_mask(obj: Option<&Bound<'_, PyAny>>, op: &'static str) -> PyResult<Option<Tensor>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(mask_from_py(o, op)?)),
        _ => Ok(None),
    }
}

/// The `precision` argument of the products: `None` is float32.
fn precision_arg(precision: Option<&str>) -> PyResult<Precision> {
    Ok(precision.map_or(Ok(Precision::F32), Precision::from_name)?)
}

fn wrap(py: Python<'_>, f: impl FnOnce() -> Result<Var> + Send) -> PyResult<PyTensor> {
    Ok(PyTensor::wrap(run(py, f)?))
}

#[pyfunction]
#[pyo3(signature = (input, weight, bias = None, precision = None))]
fn linear(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    bias: Option<&Bound<'_, PyAny>>,
    precision: Option<&str>,
) -> PyResult<PyTensor> {
    let precision = precision_arg(precision)?;
    let (x, w, b) = (
        var_from_py(input, "linear")?,
        var_from_py(weight, "linear")?,
        opt_var(bias, "linear")?,
    );
    wrap(py, || linear_op::linear_with(&x, &w, b.as_ref(), precision))
}

#[pyfunction]
#[pyo3(signature = (input, other, precision = None))]
fn matmul(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    other: &Bound<'_, PyAny>,
    precision: Option<&str>,
) -> PyResult<PyTensor> {
    let precision = precision_arg(precision)?;
    let (a, b) = (var_from_py(input, "matmul")?, var_from_py(other, "matmul")?);
    wrap(py, || matmul_op::matmul_with(&a, &b, precision))
}

#[pyfunction]
#[pyo3(signature = (input, dim = -1, mask = None))]
fn softmax(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    dim: isize,
    mask: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyTensor> {
    let (x, m) = (var_from_py(input, "softmax")?, opt_mask(mask, "softmax")?);
    wrap(py, || {
        shape::along_dim("softmax", &x, dim, m, softmax_op::softmax)
    })
}

#[pyfunction]
#[pyo3(signature = (input, dim = -1, mask = None))]
fn log_softmax(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    dim: isize,
    mask: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyTensor> {
    let (x, m) = (
        var_from_py(input, "log_softmax")?,
        opt_mask(mask, "log_softmax")?,
    );
    wrap(py, || {
        shape::along_dim("log_softmax", &x, dim, m, softmax_op::log_softmax)
    })
}

/// Flattens the trailing `normalized_shape` dimensions of x (and of weight/bias) into one, so
/// the last-axis LayerNorm covers them; returns the reshaped operands.
fn flatten_normalized(
    op: &'static str,
    x: &Var,
    normalized: &[usize],
    params: [Option<&Var>; 2],
) -> Result<(Var, [Option<Var>; 2])> {
    let shape = x.shape();
    let n = normalized.len();
    if n == 0 || n > shape.len() || shape[shape.len() - n..] != *normalized {
        return Err(TfmError::shape(op, format!("normalized_shape {normalized:?} does not match the trailing dimensions of input {shape:?}")));
    }
    let d: usize = normalized.iter().product();
    let mut flat: Vec<isize> = shape[..shape.len() - n]
        .iter()
        .map(|&s| s as isize)
        .collect();
    flat.push(d as isize);
    let reshape_param = |p: Option<&Var>| -> Result<Option<Var>> {
        match p {
            Some(p) if p.shape() == normalized => Ok(Some(shape::reshape(p, &[d as isize])?)),
            Some(p) => Err(TfmError::shape(
                op,
                format!(
                    "weight/bias of shape {:?} do not match normalized_shape {normalized:?}",
                    p.shape()
                ),
            )),
            None => Ok(None),
        }
    };
    Ok((
        shape::reshape(x, &flat)?,
        [reshape_param(params[0])?, reshape_param(params[1])?],
    ))
}

#[pyfunction]
#[pyo3(signature = (input, normalized_shape, weight = None, bias = None, eps = 1e-5))]
fn layer_norm(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    normalized_shape: Vec<usize>,
    weight: Option<&Bound<'_, PyAny>>,
    bias: Option<&Bound<'_, PyAny>>,
    eps: f32,
) -> PyResult<PyTensor> {
    let (x, w, b) = (
        var_from_py(input, "layer_norm")?,
        opt_var(weight, "layer_norm")?,
        opt_var(bias, "layer_norm")?,
    );
    wrap(py, || {
        let (xf, [wf, bf]) = flatten_normalized(
            "layer_norm",
            &x,
            &normalized_shape,
            [w.as_ref(), b.as_ref()],
        )?;
        let y = ln::layer_norm(&xf, wf.as_ref(), bf.as_ref(), eps)?;
        shape::reshape(
            &y,
            &x.shape().iter().map(|&s| s as isize).collect::<Vec<_>>(),
        )
    })
}

/// `eps = None` is float32's machine epsilon, as PyTorch's default for a float32 input.
#[pyfunction]
#[pyo3(signature = (input, normalized_shape, weight = None, eps = None))]
fn rms_norm(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    normalized_shape: Vec<usize>,
    weight: Option<&Bound<'_, PyAny>>,
    eps: Option<f32>,
) -> PyResult<PyTensor> {
    let (x, w) = (
        var_from_py(input, "rms_norm")?,
        opt_var(weight, "rms_norm")?,
    );
    wrap(py, || {
        let (xf, [wf, _]) =
            flatten_normalized("rms_norm", &x, &normalized_shape, [w.as_ref(), None])?;
        let y = ln::rms_norm(&xf, wf.as_ref(), eps.unwrap_or(f32::EPSILON))?;
        shape::reshape(
            &y,
            &x.shape().iter().map(|&s| s as isize).collect::<Vec<_>>(),
        )
    })
}

#[pyfunction]
#[pyo3(signature = (input, residual, normalized_shape, weight = None, bias = None, eps = 1e-5))]
#[allow(clippy::too_many_arguments)]
fn add_layer_norm(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    residual: &Bound<'_, PyAny>,
    normalized_shape: Vec<usize>,
    weight: Option<&Bound<'_, PyAny>>,
    bias: Option<&Bound<'_, PyAny>>,
    eps: f32,
) -> PyResult<PyTensor> {
    let (x, r) = (
        var_from_py(input, "add_layer_norm")?,
        var_from_py(residual, "add_layer_norm")?,
    );
    let (w, b) = (
        opt_var(weight, "add_layer_norm")?,
        opt_var(bias, "add_layer_norm")?,
    );
    wrap(py, || {
        if x.shape() != r.shape() {
            return Err(TfmError::shape(
                "add_layer_norm",
                format!("input {:?} and residual {:?} differ", x.shape(), r.shape()),
            ));
        }
        let op = "add_layer_norm";
        let (xf, [wf, bf]) =
            flatten_normalized(op, &x, &normalized_shape, [w.as_ref(), b.as_ref()])?;
        let (rf, _) = flatten_normalized(op, &r, &normalized_shape, [None, None])?;
        let y = ln::add_layer_norm(&xf, &rf, wf.as_ref(), bf.as_ref(), eps)?;
        shape::reshape(
            &y,
            &x.shape().iter().map(|&s| s as isize).collect::<Vec<_>>(),
        )
    })
}

#[pyfunction]
fn relu(py: Python<'_>, input: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let x = var_from_py(input, "relu")?;
    wrap(py, || activation::relu(&x))
}

#[pyfunction]
fn silu(py: Python<'_>, input: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let x = var_from_py(input, "silu")?;
    wrap(py, || activation::silu(&x))
}

#[pyfunction]
fn gelu(py: Python<'_>, input: &Bound<'_, PyAny>, approximate_tanh: bool) -> PyResult<PyTensor> {
    let x = var_from_py(input, "gelu")?;
    wrap(py, || activation::gelu(&x, approximate_tanh))
}

#[pyfunction]
fn dropout(py: Python<'_>, input: &Bound<'_, PyAny>, p: f64, training: bool) -> PyResult<PyTensor> {
    let x = var_from_py(input, "dropout")?;
    wrap(py, || dropout_op::dropout(&x, p, training))
}

#[pyfunction]
#[pyo3(signature = (input, weight, padding_idx = None))]
fn embedding(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    padding_idx: Option<i64>,
) -> PyResult<PyTensor> {
    let (ids, ids_shape) = ids_from_py(input, "embedding")?;
    let w = var_from_py(weight, "embedding")?;
    wrap(py, || {
        embedding_op::embedding(&ids, &ids_shape, &w, padding_idx)
    })
}

#[pyfunction]
fn cross_entropy(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    target: &Bound<'_, PyAny>,
    ignore_index: i64,
    reduction: &str,
    label_smoothing: f32,
) -> PyResult<PyTensor> {
    let x = var_from_py(input, "cross_entropy")?;
    let (t, t_shape) = ids_from_py(target, "cross_entropy")?;
    let reduction = match reduction {
        "none" => Reduction::None,
        "sum" => Reduction::Sum,
        _ => Reduction::Mean,
    };
    wrap(py, || {
        let shape = x.shape();
        let expected: Vec<usize> = match shape.len() {
            0 => {
                return Err(TfmError::shape(
                    "cross_entropy",
                    "input must have a class dimension, got a 0-d tensor",
                ))
            }
            1 => vec![],
            _ => [&shape[..1], &shape[2..]].concat(),
        };
        if t_shape != expected {
            return Err(TfmError::shape("cross_entropy", format!("target of shape {t_shape:?} does not fit input of shape {shape:?} (expected target shape {expected:?})")));
        }
        // (N, C, d1, …) → (N·d1·…, C): move the class dimension last, as the kernel wants.
        let logits = if shape.len() > 2 {
            let mut perm: Vec<isize> = (0..shape.len() as isize).filter(|&d| d != 1).collect();
            perm.push(1);
            shape::reshape(&shape::permute(&x, &perm)?, &[-1, shape[1] as isize])?
        } else {
            x.clone()
        };
        let loss =
            cross_entropy_op::cross_entropy(&logits, &t, ignore_index, label_smoothing, reduction)?;
        match reduction {
            Reduction::None => shape::reshape(
                &loss,
                &expected.iter().map(|&s| s as isize).collect::<Vec<_>>(),
            ),
            _ => Ok(loss),
        }
    })
}

/// Query, key and value as variables and the mask as an additive tensor.
fn attention_inputs(
    op: &'static str,
    [query, key, value]: [&Bound<'_, PyAny>; 3],
    attn_mask: Option<&Bound<'_, PyAny>>,
) -> PyResult<(Var, Var, Var, Option<Tensor>)> {
    Ok((
        var_from_py(query, op)?,
        var_from_py(key, op)?,
        var_from_py(value, op)?,
        opt_mask(attn_mask, op)?,
    ))
}

#[pyfunction]
#[pyo3(signature = (query, key, value, attn_mask = None, dropout_p = 0.0, is_causal = false, scale = None, precision = None))]
#[allow(clippy::too_many_arguments)]
fn scaled_dot_product_attention(
    py: Python<'_>,
    query: &Bound<'_, PyAny>,
    key: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
    attn_mask: Option<&Bound<'_, PyAny>>,
    dropout_p: f32,
    is_causal: bool,
    scale: Option<f32>,
    precision: Option<&str>,
) -> PyResult<PyTensor> {
    let precision = precision_arg(precision)?;
    let (q, k, v, mask) = attention_inputs(
        "scaled_dot_product_attention",
        [query, key, value],
        attn_mask,
    )?;
    wrap(py, || {
        attention::scaled_dot_product_attention_with(
            &q,
            &k,
            &v,
            mask.as_ref(),
            dropout_p,
            is_causal,
            scale,
            precision,
        )
    })
}

/// `(path, note)` for `precision`: how its products run on this machine (`"float32"`,
/// `"amx_bf16"`, `"avx512_bf16"`, `"emulated on avx2"`, …) and, where bf16 is emulated, a
/// sentence saying so (else `None`). Errors on an unknown precision.
#[pyfunction]
fn precision_info(precision: &str) -> PyResult<(String, Option<String>)> {
    let precision = Precision::from_name(precision)?;
    let path = match precision {
        Precision::F32 => "float32".to_string(),
        Precision::Bf16 => crate::cpu::gemm_bf16::Bf16Path::active().name(),
    };
    Ok((path, crate::ops::autocast::precision_note(precision)))
}

#[pyfunction]
#[pyo3(signature = (query, key, value, attn_mask = None, dropout_p = 0.0, is_causal = false, scale = None))]
#[allow(clippy::too_many_arguments)]
fn attention_with_weights(
    py: Python<'_>,
    query: &Bound<'_, PyAny>,
    key: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
    attn_mask: Option<&Bound<'_, PyAny>>,
    dropout_p: f32,
    is_causal: bool,
    scale: Option<f32>,
) -> PyResult<(PyTensor, PyTensor)> {
    let (q, k, v, mask) =
        attention_inputs("attention_with_weights", [query, key, value], attn_mask)?;
    let (out, weights) = run(py, || {
        attention::attention_with_weights(&q, &k, &v, mask.as_ref(), dropout_p, is_causal, scale)
    })?;
    Ok((PyTensor::wrap(out), PyTensor::wrap(weights)))
}

/// A structured mask from the nested tuples `tfm_rs.masks` builds (`Mask._spec()`):
/// `("causal", lower_right)`, `("window", left, right, lower_right)`, `("global", indices)`,
/// `("key_padding", samples, valid_bytes)`, `("block_sparse", block, window, global, random,
/// seed)`, `("dense", bool_array)`, `("and" | "or", a, b)`.
fn mask_spec_from_py(obj: &Bound<'_, PyAny>, op: &'static str) -> PyResult<attention::MaskSpec> {
    use attention::MaskSpec;
    let kind: String = obj.get_item(0)?.extract()?;
    let at = |i: usize| obj.get_item(i);
    Ok(match kind.as_str() {
        "causal" => MaskSpec::Causal {
            lower_right: at(1)?.extract()?,
        },
        "window" => MaskSpec::Window {
            left: at(1)?.extract()?,
            right: at(2)?.extract()?,
            lower_right: at(3)?.extract()?,
        },
        "global" => MaskSpec::Global {
            indices: at(1)?.extract()?,
        },
        "key_padding" => MaskSpec::KeyPadding {
            samples: at(1)?.extract()?,
            valid: at(2)?
                .extract::<Vec<u8>>()?
                .into_iter()
                .map(|b| b != 0)
                .collect(),
        },
        "block_sparse" => MaskSpec::BlockSparse {
            block: at(1)?.extract()?,
            window: at(2)?.extract()?,
            global: at(3)?.extract()?,
            random: at(4)?.extract()?,
            seed: at(5)?.extract()?,
        },
        "dense" => MaskSpec::Dense(mask_from_py(&at(1)?, op)?),
        "and" | "or" => {
            let (a, b) = (
                Box::new(mask_spec_from_py(&at(1)?, op)?),
                Box::new(mask_spec_from_py(&at(2)?, op)?),
            );
            if kind == "and" {
                MaskSpec::And(a, b)
            } else {
                MaskSpec::Or(a, b)
            }
        }
        other => {
            return Err(
                TfmError::value(op, format!("unknown structured mask kind {other:?}")).into(),
            )
        }
    })
}

/// `scaled_dot_product_attention` under a structured mask (`tfm_rs.masks`).
#[pyfunction]
#[pyo3(signature = (query, key, value, mask, dropout_p = 0.0, scale = None, precision = None))]
#[allow(clippy::too_many_arguments)]
fn scaled_dot_product_attention_structured(
    py: Python<'_>,
    query: &Bound<'_, PyAny>,
    key: &Bound<'_, PyAny>,
    value: &Bound<'_, PyAny>,
    mask: &Bound<'_, PyAny>,
    dropout_p: f32,
    scale: Option<f32>,
    precision: Option<&str>,
) -> PyResult<PyTensor> {
    const OP: &str = "scaled_dot_product_attention";
    let precision = precision_arg(precision)?;
    let (q, k, v, _) = attention_inputs(OP, [query, key, value], None)?;
    let spec = mask_spec_from_py(mask, OP)?;
    wrap(py, || {
        attention::scaled_dot_product_attention_structured_with(
            &q, &k, &v, &spec, dropout_p, scale, precision,
        )
    })
}

/// `(allowed pairs, full, partial, empty tiles)` of a structured mask over L × S for each of
/// `samples` batch samples, with the fused kernels' 64 × 64 tiles.
#[pyfunction]
fn mask_explain(
    py: Python<'_>,
    mask: &Bound<'_, PyAny>,
    samples: usize,
    l: usize,
    s: usize,
) -> PyResult<(u64, u64, u64, u64)> {
    let spec = mask_spec_from_py(mask, "Mask.explain")?;
    run(py, move || {
        let m = spec.resolve(&[samples], l, s)?;
        let st = m.explain(samples, 64);
        Ok((st.allowed, st.full, st.partial, st.empty))
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(linear, m)?)?;
    m.add_function(wrap_pyfunction!(matmul, m)?)?;
    m.add_function(wrap_pyfunction!(softmax, m)?)?;
    m.add_function(wrap_pyfunction!(log_softmax, m)?)?;
    m.add_function(wrap_pyfunction!(layer_norm, m)?)?;
    m.add_function(wrap_pyfunction!(add_layer_norm, m)?)?;
    m.add_function(wrap_pyfunction!(rms_norm, m)?)?;
    m.add_function(wrap_pyfunction!(relu, m)?)?;
    m.add_function(wrap_pyfunction!(gelu, m)?)?;
    m.add_function(wrap_pyfunction!(silu, m)?)?;
    m.add_function(wrap_pyfunction!(dropout, m)?)?;
    m.add_function(wrap_pyfunction!(embedding, m)?)?;
    m.add_function(wrap_pyfunction!(cross_entropy, m)?)?;
    m.add_function(wrap_pyfunction!(scaled_dot_product_attention, m)?)?;
    m.add_function(wrap_pyfunction!(attention_with_weights, m)?)?;
    m.add_function(wrap_pyfunction!(precision_info, m)?)?;
    m.add_function(wrap_pyfunction!(
        scaled_dot_product_attention_structured,
        m
    )?)?;
    m.add_function(wrap_pyfunction!(mask_explain, m)?)?;
    Ok(())
}
