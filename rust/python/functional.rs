//! Bindings of the ops behind `tfm_rs.functional` (whose Python wrappers give PyTorch's
//! signatures and docstrings).

use super::convert::var_from_py;
use super::runtime::run;
use super::tensor::PyTensor;
use crate::autograd::Var;
use crate::ops::{linear as linear_op, matmul as matmul_op};
use pyo3::prelude::*;

fn opt_var(obj: Option<&Bound<'_, PyAny>>, op: &'static str) -> PyResult<Option<Var>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(var_from_py(o, op)?)),
        _ => Ok(None),
    }
}

#[pyfunction]
#[pyo3(signature = (input, weight, bias = None))]
fn linear(py: Python<'_>, input: &Bound<'_, PyAny>, weight: &Bound<'_, PyAny>, bias: Option<&Bound<'_, PyAny>>) -> PyResult<PyTensor> {
    let (x, w, b) = (var_from_py(input, "linear")?, var_from_py(weight, "linear")?, opt_var(bias, "linear")?);
    Ok(PyTensor::wrap(run(py, || linear_op::linear(&x, &w, b.as_ref()))?))
}

#[pyfunction]
fn matmul(py: Python<'_>, input: &Bound<'_, PyAny>, other: &Bound<'_, PyAny>) -> PyResult<PyTensor> {
    let (a, b) = (var_from_py(input, "matmul")?, var_from_py(other, "matmul")?);
    Ok(PyTensor::wrap(run(py, || matmul_op::matmul(&a, &b))?))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(linear, m)?)?;
    m.add_function(wrap_pyfunction!(matmul, m)?)?;
    Ok(())
}
