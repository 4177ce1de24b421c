//! The optimizer updates on whichever device a parameter lives: one call per parameter, with its
//! gradient and state tensors, updated in place. The kernels are the slice-level steps of
//! [`adam`] and [`sgd`] on the CPU and `crate::gpu::ops::{adam, sgd}` on the GPU; the bindings
//! only convert their arguments and call [`adam_update`] or [`sgd_update`].

use super::{adam_step, sgd_step, AdamConfig, SgdConfig};
use crate::autograd::Var;
use crate::error::{Result, TfmError};
use crate::tensor::{Device, Tensor};

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

/// One Adam/AdamW step of the parameter `p` from its gradient, updating it and its state `m`
/// (exp_avg), `v` (exp_avg_sq) and, with amsgrad, `vmax` (max_exp_avg_sq) in place; all on one
/// device. `step` counts from 1.
pub fn adam_update(
    p: &Var,
    m: &Var,
    v: &Var,
    vmax: Option<&Var>,
    step: u64,
    cfg: &AdamConfig,
) -> Result<()> {
    let mut all = vec![p, m, v];
    all.extend(vmax);
    distinct("adam_step", &all)?;
    let g = grad_of(p, "adam_step")?;
    let device = device_of("adam_step", &g, &all)?;
    #[cfg(feature = "wgpu")]
    if device == Device::Gpu {
        return p.update_value(|pv| {
            m.update_value(|mv| {
                v.update_value(|vv| {
                    const OP: &str = "adam_step";
                    let mut xv = vmax.map(Var::value);
                    let x = match xv.as_mut() {
                        Some(x) => Some(x.gpu_mut(OP)?.buffer_mut()?),
                        None => None,
                    };
                    crate::gpu::ops::adam::step(
                        pv.gpu_mut(OP)?.buffer_mut()?,
                        mv.gpu_mut(OP)?.buffer_mut()?,
                        vv.gpu_mut(OP)?.buffer_mut()?,
                        x,
                        g.gpu(OP)?.buffer(),
                        step,
                        cfg,
                    )?;
                    // The running maximum was updated in place (copied first if shared).
                    match (vmax, xv) {
                        (Some(var), Some(value)) => var.set_value(value),
                        _ => Ok(()),
                    }
                })
            })
        });
    }
    #[cfg(not(feature = "wgpu"))]
    let _ = device;
    const OP: &str = "adam_step";
    let g = g.cpu(OP)?.data();
    p.update_value(|pv| {
        m.update_value(|mv| {
            v.update_value(|vv| {
                let (pv, mv, vv) = (pv.cpu_mut(OP)?, mv.cpu_mut(OP)?, vv.cpu_mut(OP)?);
                match vmax {
                    Some(x) => x.update_value(|xv| {
                        let xv = xv.cpu_mut(OP)?.data_mut();
                        adam_step(
                            pv.data_mut(),
                            g,
                            mv.data_mut(),
                            vv.data_mut(),
                            Some(xv),
                            step,
                            cfg,
                        )
                    }),
                    None => adam_step(
                        pv.data_mut(),
                        g,
                        mv.data_mut(),
                        vv.data_mut(),
                        None,
                        step,
                        cfg,
                    ),
                }
            })
        })
    })
}

/// One SGD step of the parameter `p` from its gradient, updating it and the momentum buffer
/// `buf` in place (required with momentum; `first_step` says it holds no history yet); both on
/// one device.
pub fn sgd_update(p: &Var, buf: Option<&Var>, first_step: bool, cfg: &SgdConfig) -> Result<()> {
    let mut all = vec![p];
    all.extend(buf);
    distinct("sgd_step", &all)?;
    let g = grad_of(p, "sgd_step")?;
    let device = device_of("sgd_step", &g, &all)?;
    #[cfg(feature = "wgpu")]
    if device == Device::Gpu {
        let b = buf.map(Var::value);
        const OP: &str = "sgd_step";
        let pv = p.value();
        let (np, nb) = crate::gpu::ops::sgd::step(
            pv.gpu(OP)?,
            g.gpu(OP)?,
            b.as_ref().map(|b| b.gpu(OP)).transpose()?,
            first_step,
            cfg,
        )?;
        p.set_value(np.into())?;
        return match (buf, nb) {
            (Some(var), Some(value)) => var.set_value(value.into()),
            _ => Ok(()),
        };
    }
    #[cfg(not(feature = "wgpu"))]
    let _ = device;
    const OP: &str = "sgd_step";
    let g = g.cpu(OP)?.data();
    p.update_value(|pv| {
        let pv = pv.cpu_mut(OP)?.data_mut();
        match buf {
            Some(b) => b.update_value(|bv| {
                sgd_step(pv, g, Some(bv.cpu_mut(OP)?.data_mut()), first_step, cfg)
            }),
            None => sgd_step(pv, g, None, first_step, cfg),
        }
    })
}
