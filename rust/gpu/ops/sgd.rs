//! SGD on the GPU ([`crate::optim::sgd`]'s update, `torch.optim.SGD`'s), composed of the
//! elementwise kernels: a handful of passes over the parameter rather than one fused kernel,
//! which is fine for an optimizer that runs once per step.

use super::elementwise::{binary, scale};
use crate::desc::{BinaryOp, SgdConfig};
use crate::error::Result;
use crate::gpu::GpuTensor;

/// One step: the new parameter value and, with momentum, the new momentum buffer. `first_step`
/// says `buf` holds no history yet (it becomes the gradient).
pub fn step(
    param: &GpuTensor,
    grad: &GpuTensor,
    buf: Option<&GpuTensor>,
    first_step: bool,
    cfg: &SgdConfig,
) -> Result<(GpuTensor, Option<GpuTensor>)> {
    cfg.check_step(buf.is_some())?;
    crate::ensure_shape!(
        param.shape() == grad.shape(),
        "sgd_step",
        "the gradient's shape {:?} differs from the parameter's {:?}",
        grad.shape(),
        param.shape()
    );
    let add_scaled =
        |a: &GpuTensor, b: &GpuTensor, s: f64| binary(BinaryOp::Add, a, &scale(b, s as f32)?);
    let mut g = if cfg.maximize {
        scale(grad, -1.0)?
    } else {
        grad.clone()
    };
    if cfg.weight_decay != 0.0 {
        g = add_scaled(&g, param, cfg.weight_decay)?;
    }
    let mut new_buf = None;
    if cfg.momentum != 0.0 {
        let b = match buf {
            Some(b) if !first_step => {
                add_scaled(&scale(b, cfg.momentum as f32)?, &g, 1.0 - cfg.dampening)?
            }
            _ => g.clone(),
        };
        g = if cfg.nesterov {
            add_scaled(&g, &b, cfg.momentum)?
        } else {
            b.clone()
        };
        new_buf = Some(b);
    }
    Ok((add_scaled(param, &g, -cfg.lr)?, new_buf))
}
