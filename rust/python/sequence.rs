//! Bindings of the sequence-model ops that are not Transformer parts: the recurrent layers
//! (`tfm_rs.nn.LSTM` / `GRU`), additive attention and the 1-D convolution.

use super::convert::{ids_from_py, var_from_py};
use super::runtime::run;
use super::tensor::PyTensor;
use crate::error::TfmError;
use crate::ops::additive_attention::additive_scores;
use crate::ops::conv1d::{self as conv1d_op, Conv1dConfig};
use crate::ops::rnn::{self, Cell, RnnConfig, RnnWeights};
use pyo3::prelude::*;

fn opt_var(
    obj: Option<&Bound<'_, PyAny>>,
    op: &'static str,
) -> PyResult<Option<crate::autograd::Var>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(var_from_py(o, op)?)),
        _ => Ok(None),
    }
}

/// One layer and direction of an LSTM (`mode` "LSTM", `cx` given) or GRU: the stacked
/// `(T + 1 or 2, B, H)` result of `crate::ops::rnn`.
#[pyfunction]
#[pyo3(signature = (mode, input, hx, weight_ih, weight_hh, bias_ih = None, bias_hh = None, cx = None, lengths = None, reverse = false))]
#[allow(clippy::too_many_arguments)]
fn rnn_layer(
    py: Python<'_>,
    mode: &str,
    input: &Bound<'_, PyAny>,
    hx: &Bound<'_, PyAny>,
    weight_ih: &Bound<'_, PyAny>,
    weight_hh: &Bound<'_, PyAny>,
    bias_ih: Option<&Bound<'_, PyAny>>,
    bias_hh: Option<&Bound<'_, PyAny>>,
    cx: Option<&Bound<'_, PyAny>>,
    lengths: Option<&Bound<'_, PyAny>>,
    reverse: bool,
) -> PyResult<PyTensor> {
    const OP: &str = "rnn";
    let cell = Cell::parse(mode)?;
    let x = var_from_py(input, OP)?;
    let mut state = vec![var_from_py(hx, OP)?];
    state.extend(opt_var(cx, OP)?);
    let (w_ih, w_hh) = (var_from_py(weight_ih, OP)?, var_from_py(weight_hh, OP)?);
    let (b_ih, b_hh) = (opt_var(bias_ih, OP)?, opt_var(bias_hh, OP)?);
    let lengths = match lengths {
        Some(l) if !l.is_none() => {
            let (ids, shape) = ids_from_py(l, OP)?;
            if shape.len() != 1 || ids.iter().any(|&v| v < 0) {
                return Err(TfmError::value(
                    OP,
                    format!(
                        "lengths must be a 1-D array of non-negative integers, got shape {shape:?}"
                    ),
                )
                .into());
            }
            Some(ids.into_iter().map(|v| v as usize).collect())
        }
        _ => None,
    };
    let cfg = RnnConfig {
        cell,
        reverse,
        lengths,
    };
    let y = run(py, || {
        let w = RnnWeights {
            w_ih: &w_ih,
            w_hh: &w_hh,
            b_ih: b_ih.as_ref(),
            b_hh: b_hh.as_ref(),
        };
        rnn::rnn(&cfg, &x, &state, &w)
    })?;
    Ok(PyTensor::wrap(y))
}

/// The additive-attention scores `Σ_h v_h·tanh(q[b, i, h] + k[b, j, h])` of projected queries
/// (B, Tq, H) and keys (B, Tk, H) → (B, Tq, Tk).
#[pyfunction]
fn additive_attention_scores(
    py: Python<'_>,
    query: &Bound<'_, PyAny>,
    key: &Bound<'_, PyAny>,
    v: &Bound<'_, PyAny>,
) -> PyResult<PyTensor> {
    const OP: &str = "additive_attention";
    let (q, k, v) = (
        var_from_py(query, OP)?,
        var_from_py(key, OP)?,
        var_from_py(v, OP)?,
    );
    Ok(PyTensor::wrap(run(py, || additive_scores(&q, &k, &v))?))
}

/// `conv1d` with (left, right) zero padding apart: x (N, C_in, L), W (C_out, C_in / groups, K).
#[pyfunction]
#[pyo3(signature = (input, weight, bias = None, stride = 1, padding = (0, 0), dilation = 1, groups = 1))]
#[allow(clippy::too_many_arguments)]
fn conv1d(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    bias: Option<&Bound<'_, PyAny>>,
    stride: usize,
    padding: (usize, usize),
    dilation: usize,
    groups: usize,
) -> PyResult<PyTensor> {
    const OP: &str = "conv1d";
    let (x, w, b) = (
        var_from_py(input, OP)?,
        var_from_py(weight, OP)?,
        opt_var(bias, OP)?,
    );
    let cfg = Conv1dConfig {
        stride,
        padding,
        dilation,
        groups,
    };
    Ok(PyTensor::wrap(run(py, || {
        conv1d_op::conv1d(&x, &w, b.as_ref(), &cfg)
    })?))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(rnn_layer, m)?)?;
    m.add_function(wrap_pyfunction!(additive_attention_scores, m)?)?;
    m.add_function(wrap_pyfunction!(conv1d, m)?)?;
    Ok(())
}
