//! Binding of batch norm: moves PyTorch's channel-at-axis-1 layouts `(N, C)` / `(N, C, L)`,
//! and the channels-last `(N, T, C)` of the padding-aware form, onto the core's `(rows, C)`.

use super::convert::{host_tensor_from_py, ids_from_py, var_from_py};
use super::runtime::run;
use super::tensor::PyTensor;
use crate::autograd::Var;
use crate::error::TfmError;
use crate::ops::batch_norm as bn;
use crate::ops::shape;
use crate::tensor::Tensor;
use pyo3::prelude::*;

const OP: &str = "batch_norm";

fn opt_var(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Var>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(var_from_py(o, OP)?)),
        _ => Ok(None),
    }
}

/// `(y, batch_mean, batch_var)`: the batch's mean and unbiased variance `(C,)` when batch
/// statistics were used. `keep` (integers, nonzero = counts in the statistics) has the input's
/// shape without the channel axis; `channels_last` says where the channels are.
#[pyfunction]
#[pyo3(signature = (input, keep, weight, bias, running_mean, running_var, use_batch_stats, eps, channels_last))]
#[allow(clippy::too_many_arguments)]
fn batch_norm(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    keep: Option<&Bound<'_, PyAny>>,
    weight: Option<&Bound<'_, PyAny>>,
    bias: Option<&Bound<'_, PyAny>>,
    running_mean: Option<&Bound<'_, PyAny>>,
    running_var: Option<&Bound<'_, PyAny>>,
    use_batch_stats: bool,
    eps: f32,
    channels_last: bool,
) -> PyResult<(PyTensor, Option<PyTensor>, Option<PyTensor>)> {
    let x = var_from_py(input, OP)?;
    let (w, b) = (opt_var(weight)?, opt_var(bias)?);
    let keep = match keep {
        Some(k) if !k.is_none() => Some(ids_from_py(k, OP)?.0.iter().map(|&v| v != 0).collect()),
        _ => None,
    };
    let running = match (running_mean, running_var) {
        (Some(m), Some(v)) if !m.is_none() && !v.is_none() => {
            Some((host_tensor_from_py(m, OP)?, host_tensor_from_py(v, OP)?))
        }
        _ => None,
    };
    let (y, mean, var) = run(py, || {
        let dims = x.shape();
        let nd = dims.len();
        let ok = if channels_last {
            nd >= 2
        } else {
            nd == 2 || nd == 3
        };
        if !ok {
            let want = if channels_last {
                "(N, T, C)"
            } else {
                "(N, C) or (N, C, L)"
            };
            return Err(TfmError::shape(
                OP,
                format!("expected a {want} input, got shape {dims:?}"),
            ));
        }
        let c = if channels_last { dims[nd - 1] } else { dims[1] };
        let full: Vec<isize> = dims.iter().map(|&s| s as isize).collect();
        let rows = if !channels_last && nd == 3 {
            shape::reshape(&shape::permute(&x, &[0, 2, 1])?, &[-1, c as isize])?
        } else {
            shape::reshape(&x, &[-1, c as isize])?
        };
        let stats = running.as_ref().map(|(m, v)| (m.data(), v.data()));
        let out = bn::batch_norm(
            &rows,
            keep,
            w.as_ref(),
            b.as_ref(),
            stats,
            use_batch_stats,
            eps,
        )?;
        let y = if !channels_last && nd == 3 {
            let nlc = [full[0], full[2], full[1]];
            shape::permute(&shape::reshape(&out.y, &nlc)?, &[0, 2, 1])?
        } else {
            shape::reshape(&out.y, &full)?
        };
        let vector = |v: Option<Vec<f32>>| v.map(|v| Tensor::new(v, &[c])).transpose();
        Ok((y, vector(out.batch_mean)?, vector(out.batch_var)?))
    })?;
    let wrap_const = |t: Option<Tensor>| t.map(|t| PyTensor::wrap(Var::constant(t)));
    Ok((PyTensor::wrap(y), wrap_const(mean), wrap_const(var)))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(batch_norm, m)?)?;
    Ok(())
}
