//! One Adam/AdamW step on the GPU, in place on the parameter and its state buffers, with the
//! update of [`crate::optim::adam`] (`torch.optim.Adam`/`AdamW`): same hyperparameter checks,
//! same f64-derived scalars, same f32 elementwise arithmetic.

use super::check_len;
use super::gemm::u32_of;
use crate::desc::AdamConfig;
use crate::error::Result;
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::pipeline::{grid_elems, launch, shader, Arg};

const OP: &str = "gpu adam";
shader!(ADAM, "adam.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    flags: u32,
    step_size: f32,
    bias_correction2_sqrt: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    wd: f32,
    eps: f32,
    decay: f32,
}

/// The step: `param`, `exp_avg`, `exp_avg_sq` (and `max_exp_avg_sq`, required with amsgrad)
/// updated in place from `grad`; `step` counts from 1 (after this step's increment).
pub fn step(
    param: &GpuBuffer,
    exp_avg: &GpuBuffer,
    exp_avg_sq: &GpuBuffer,
    max_exp_avg_sq: Option<&GpuBuffer>,
    grad: &GpuBuffer,
    step: u64,
    cfg: &AdamConfig,
) -> Result<()> {
    cfg.check_step(step, max_exp_avg_sq.is_some())?;
    let n = param.len();
    check_len(OP, "grad", grad.len(), n)?;
    check_len(OP, "exp_avg", exp_avg.len(), n)?;
    check_len(OP, "exp_avg_sq", exp_avg_sq.len(), n)?;
    let placeholder;
    let vmax = match max_exp_avg_sq {
        Some(m) if cfg.amsgrad => {
            check_len(OP, "max_exp_avg_sq", m.len(), n)?;
            m
        }
        _ => {
            placeholder = GpuBuffer::zeros(1)?;
            &placeholder
        }
    };
    let t = step as f64;
    let flags = cfg.decoupled as u32
        | (cfg.amsgrad as u32) << 1
        | (cfg.maximize as u32) << 2
        | ((cfg.weight_decay != 0.0) as u32) << 3;
    let p = Params {
        n: u32_of(OP, "the parameter's size", n)?,
        flags,
        step_size: (cfg.lr / (1.0 - cfg.beta1.powf(t))) as f32,
        bias_correction2_sqrt: (1.0 - cfg.beta2.powf(t)).sqrt() as f32,
        beta2: cfg.beta2 as f32,
        one_minus_beta1: (1.0 - cfg.beta1) as f32,
        one_minus_beta2: (1.0 - cfg.beta2) as f32,
        wd: cfg.weight_decay as f32,
        eps: cfg.eps as f32,
        decay: (1.0 - cfg.lr * cfg.weight_decay) as f32,
    };
    let args = [
        Arg::In(grad),
        Arg::Out(param),
        Arg::Out(exp_avg),
        Arg::Out(exp_avg_sq),
        Arg::Out(vmax),
    ];
    launch(OP, &ADAM, "step", &p, &args, grid_elems(n))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::buffer::{download, upload};
    use crate::gpu::tests::{assert_rel, require_gpu};
    use crate::ops::test_support::rand_vec;
    use crate::optim::adam_step;

    /// `step` on host vectors, updated in place.
    fn step_host(
        param: &mut [f32],
        exp_avg: &mut [f32],
        exp_avg_sq: &mut [f32],
        max_exp_avg_sq: Option<&mut [f32]>,
        grad: &[f32],
        t: u64,
        cfg: &AdamConfig,
    ) -> Result<()> {
        let (p, m, v) = (upload(param)?, upload(exp_avg)?, upload(exp_avg_sq)?);
        let vmax = max_exp_avg_sq.as_deref().map(upload).transpose()?;
        step(&p, &m, &v, vmax.as_ref(), &upload(grad)?, t, cfg)?;
        param.copy_from_slice(&download(&p)?);
        exp_avg.copy_from_slice(&download(&m)?);
        exp_avg_sq.copy_from_slice(&download(&v)?);
        if let (Some(dst), Some(src)) = (max_exp_avg_sq, vmax) {
            dst.copy_from_slice(&download(&src)?);
        }
        Ok(())
    }

    #[test]
    fn adam_steps_match_cpu() {
        if !require_gpu("adam") {
            return;
        }
        let n = 1000;
        for (i, (decoupled, amsgrad, maximize, wd)) in [
            (false, false, false, 0.0),
            (true, false, false, 0.01),
            (false, true, true, 0.1),
            (true, true, false, 0.0),
        ]
        .into_iter()
        .enumerate()
        {
            let cfg = AdamConfig {
                lr: 1e-2,
                beta1: 0.9,
                beta2: 0.98,
                eps: 1e-8,
                weight_decay: wd,
                decoupled,
                amsgrad,
                maximize,
            };
            let init = rand_vec(i as u64, n, -1.0, 1.0);
            let (mut gp, mut gm, mut gv, mut gx) =
                (init.clone(), vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            let (mut cp, mut cm, mut cv, mut cx) =
                (init.clone(), vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            for t in 1..=3u64 {
                let grad = rand_vec(100 * i as u64 + t, n, -1.0, 1.0);
                step_host(&mut gp, &mut gm, &mut gv, Some(&mut gx), &grad, t, &cfg).unwrap();
                adam_step(&mut cp, &grad, &mut cm, &mut cv, Some(&mut cx), t, &cfg).unwrap();
            }
            assert_rel("param", &gp, &cp, 1e-5);
            assert_rel("exp_avg", &gm, &cm, 1e-5);
            assert_rel("exp_avg_sq", &gv, &cv, 1e-5);
        }
        let bad = AdamConfig {
            lr: -1.0,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            amsgrad: false,
            maximize: false,
        };
        assert!(step_host(&mut [0.0], &mut [0.0], &mut [0.0], None, &[0.0], 1, &bad).is_err());
    }
}
