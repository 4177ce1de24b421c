//! Bindings of the optimizer updates behind `tfm_rs.optim`: each updates a parameter and its
//! state tensors in place.

use super::runtime::run;
use super::tensor::PyTensor;
use crate::autograd::Var;
use crate::error::{Result, TfmError};
use crate::ops::on_device;
use crate::optim::{adam_step as adam_kernel, sgd_step as sgd_kernel, AdamConfig, SgdConfig};
use crate::tensor::{Device, Tensor};
use pyo3::prelude::*;

/// The parameter's gradient; errors if it has none.
fn grad_of(param: &Var, op: &'static str) -> Result<Tensor> {
    param
        .grad()
        .ok_or_else(|| TfmError::value(op, "the parameter has no gradient"))
}

/// The device of a parameter, its gradient and its state tensors, which must agree.
fn device_of(op: &'static str, g: &Tensor, vars: &[&Var]) -> Result<Device> {
    Device::common(op, vars.iter().map(|v| v.device()).chain([g.device()]))
}

/// Errors if two state tensors are the same object (they are updated in place together).
fn distinct(op: &'static str, vars: &[&Var]) -> Result<()> {
    for (i, a) in vars.iter().enumerate() {
        if vars[i + 1..].iter().any(|b| a.same_as(b)) {
            return Err(TfmError::value(
                op,
                "a parameter and its optimizer state must be different tensors",
            ));
        }
    }
    Ok(())
}

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
        let mut all = vec![&p, &m, &v];
        all.extend(vmax.as_ref());
        distinct("adam_step", &all)?;
        let g = grad_of(&p, "adam_step")?;
        on_device!(device_of("adam_step", &g, &all)?,
            gpu: return p.update_value(|pv| m.update_value(|mv| v.update_value(|vv| {
                const OP: &str = "adam_step";
                let mut xv = vmax.as_ref().map(Var::value);
                let x = xv.as_mut().map(|x| x.buffer_mut(OP)).transpose()?;
                crate::gpu::ops::adam::step(
                    pv.buffer_mut(OP)?,
                    mv.buffer_mut(OP)?,
                    vv.buffer_mut(OP)?,
                    x,
                    g.buffer(OP)?,
                    step,
                    &cfg,
                )?;
                // The running maximum was updated in place (copied first if shared).
                match (&vmax, xv) {
                    (Some(var), Some(value)) => var.set_value(value),
                    _ => Ok(()),
                }
            }))),
            cpu: (),
        );
        p.update_value(|pv| {
            m.update_value(|mv| {
                v.update_value(|vv| match &vmax {
                    Some(x) => x.update_value(|xv| {
                        adam_kernel(
                            pv.data_mut(),
                            g.data(),
                            mv.data_mut(),
                            vv.data_mut(),
                            Some(xv.data_mut()),
                            step,
                            &cfg,
                        )
                    }),
                    None => adam_kernel(
                        pv.data_mut(),
                        g.data(),
                        mv.data_mut(),
                        vv.data_mut(),
                        None,
                        step,
                        &cfg,
                    ),
                })
            })
        })
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
    run(py, move || {
        let mut all = vec![&p];
        all.extend(buf.as_ref());
        distinct("sgd_step", &all)?;
        let g = grad_of(&p, "sgd_step")?;
        on_device!(device_of("sgd_step", &g, &all)?,
            gpu: {
                let b = buf.as_ref().map(Var::value);
                let (np, nb) = crate::gpu::ops::sgd::step(&p.value(), &g, b.as_ref(), first_step, &cfg)?;
                p.set_value(np)?;
                return match (&buf, nb) {
                    (Some(var), Some(value)) => var.set_value(value),
                    _ => Ok(()),
                };
            },
            cpu: (),
        );
        p.update_value(|pv| match &buf {
            Some(b) => b.update_value(|bv| {
                sgd_kernel(
                    pv.data_mut(),
                    g.data(),
                    Some(bv.data_mut()),
                    first_step,
                    &cfg,
                )
            }),
            None => sgd_kernel(pv.data_mut(), g.data(), None, first_step, &cfg),
        })
    })
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(adam_step, m)?)?;
    m.add_function(wrap_pyfunction!(sgd_step, m)?)?;
    Ok(())
}
