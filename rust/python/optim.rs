//! Bindings of the optimizer updates behind `tfm_rs.optim`: each converts its arguments and
//! calls one update of `crate::optim`, which updates a parameter and its state tensors in place
//! on their device.

use super::runtime::run;
use super::tensor::PyTensor;
use crate::optim::{adam_update, sgd_update, AdamConfig, SgdConfig};
use pyo3::prelude::*;

#[pyfunction]
#[pyo3(signature = (param, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay, decoupled, amsgrad, maximize))]
#[allow(clippy::too_many_arguments)]
fn adam_step(
    py: Python<'_>,
    param: &PyTensor,
    exp_avg: &PyTensor,
    exp_avg_sq: &PyTensor,
    max_exp_avg_sq: Option<&PyTensor>,
    step: u64,
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
    decoupled: bool,
    amsgrad: bool,
    maximize: bool,
) -> PyResult<()> {
    let cfg = AdamConfig {
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        decoupled,
        amsgrad,
        maximize,
    };
    let (p, m, v, vmax) = (
        param.var.clone(),
        exp_avg.var.clone(),
        exp_avg_sq.var.clone(),
        max_exp_avg_sq.map(|t| t.var.clone()),
    );
    run(py, move || {
        adam_update(&p, &m, &v, vmax.as_ref(), step, &cfg)
    })
}

#[pyfunction]
#[pyo3(signature = (param, momentum_buffer, first_step, lr, momentum, dampening, weight_decay, nesterov, maximize))]
#[allow(clippy::too_many_arguments)]
fn sgd_step(
    py: Python<'_>,
    param: &PyTensor,
    momentum_buffer: Option<&PyTensor>,
    first_step: bool,
    lr: f64,
    momentum: f64,
    dampening: f64,
    weight_decay: f64,
    nesterov: bool,
    maximize: bool,
) -> PyResult<()> {
    let cfg = SgdConfig {
        lr,
        momentum,
        dampening,
        weight_decay,
        nesterov,
        maximize,
    };
    let (p, buf) = (param.var.clone(), momentum_buffer.map(|t| t.var.clone()));
    run(py, move || sgd_update(&p, buf.as_ref(), first_step, &cfg))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(adam_step, m)?)?;
    m.add_function(wrap_pyfunction!(sgd_step, m)?)?;
    Ok(())
}
