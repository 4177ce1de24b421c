//! Adam and AdamW (`torch.optim.Adam`, `torch.optim.AdamW`), one parameter per call:
//!
//! ```text
//! g ← −grad if maximize else grad
//! AdamW: θ ← θ·(1 − lr·wd)          Adam: g ← g + wd·θ
//! m ← lerp(m, g, 1 − β1);  v ← β2·v + (1 − β2)·g²
//! amsgrad: v_max ← max(v_max, v) and v_max replaces v below
//! θ ← θ − (lr / (1 − β1^t)) · m / (√v / √(1 − β2^t) + eps)
//! ```
//!
//! As in PyTorch's implementation, AMSGrad keeps the maximum of the raw second moment (not of
//! the bias-corrected one, as its documentation's pseudo-code shows).

use super::{check_len, decayed_grad, optional_chunks, CHUNK};
use crate::cpu::simd::simd_kernel;
use crate::error::Result;
use crate::ops::rows::for_each_row;

pub use crate::desc::AdamConfig;

const OP: &str = "adam";

/// `torch.lerp(start, end, weight)` for a scalar weight, with PyTorch's two-sided formula.
#[inline(always)]
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if weight < 0.5 {
        start + weight * (end - start)
    } else {
        end - (end - start) * (1.0 - weight)
    }
}

/// One Adam/AdamW step for one parameter, in place. `step` is the step count after this step's
/// increment (1 on the first call). `max_exp_avg_sq` is required with `amsgrad` (and left
/// untouched without it). All slices must have the parameter's length.
pub fn adam_step(
    param: &mut [f32],
    grad: &[f32],
    exp_avg: &mut [f32],
    exp_avg_sq: &mut [f32],
    max_exp_avg_sq: Option<&mut [f32]>,
    step: u64,
    cfg: &AdamConfig,
) -> Result<()> {
    cfg.check_step(step, max_exp_avg_sq.is_some())?;
    let n = param.len();
    check_len(OP, "grad", grad.len(), n)?;
    check_len(OP, "exp_avg", exp_avg.len(), n)?;
    check_len(OP, "exp_avg_sq", exp_avg_sq.len(), n)?;
    let max_sq = if cfg.amsgrad { max_exp_avg_sq } else { None };
    if let Some(m) = &max_sq {
        check_len(OP, "max_exp_avg_sq", m.len(), n)?;
    }

    let t = step as f64;
    let k = Consts {
        step_size: (cfg.lr / (1.0 - cfg.beta1.powf(t))) as f32,
        bias_correction2_sqrt: (1.0 - cfg.beta2.powf(t)).sqrt() as f32,
        beta2: cfg.beta2 as f32,
        one_minus_beta1: (1.0 - cfg.beta1) as f32,
        one_minus_beta2: (1.0 - cfg.beta2) as f32,
        sign: if cfg.maximize { -1.0 } else { 1.0 },
        coupled_wd: if cfg.decoupled {
            0.0
        } else {
            cfg.weight_decay as f32
        },
        decay: if cfg.decoupled {
            (1.0 - cfg.lr * cfg.weight_decay) as f32
        } else {
            1.0
        },
        eps: cfg.eps as f32,
    };
    let chunks = n.div_ceil(CHUNK);
    let items: Vec<_> = param
        .chunks_mut(CHUNK)
        .zip(grad.chunks(CHUNK))
        .zip(exp_avg.chunks_mut(CHUNK))
        .zip(exp_avg_sq.chunks_mut(CHUNK))
        .zip(optional_chunks(max_sq, chunks))
        .collect();
    for_each_row(items, CHUNK, |_, ((((p, g), m), v), vmax)| {
        adam_chunk(p, g, m, v, vmax, &k)
    });
    Ok(())
}

/// The per-step constants of [`adam_step`]. A setting that does not apply takes its neutral
/// value (`sign` 1, `coupled_wd` 0, `decay` 1), which gives exactly what skipping it would:
/// the kernel has no per-element branches on the configuration, so it vectorizes.
struct Consts {
    step_size: f32,
    bias_correction2_sqrt: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    sign: f32,
    coupled_wd: f32,
    decay: f32,
    eps: f32,
}

impl Consts {
    /// `(θ, m, v)` after the moment updates (θ decayed for AdamW).
    #[inline(always)]
    fn moments(&self, p: f32, g: f32, m: f32, v: f32) -> (f32, f32, f32) {
        let g = decayed_grad(g, p, self.sign, self.coupled_wd);
        let m = lerp(m, g, self.one_minus_beta1);
        let v = v * self.beta2 + self.one_minus_beta2 * (g * g);
        (p * self.decay, m, v)
    }

    /// θ after the step, from the (decayed) θ, m and the second moment used.
    #[inline(always)]
    fn apply(&self, p: f32, m: f32, second: f32) -> f32 {
        let denom = second.sqrt() / self.bias_correction2_sqrt + self.eps;
        p + (-self.step_size * m) / denom
    }
}

simd_kernel! {
    /// One chunk of [`adam_step`]: the slices are the chunk's, all of one length.
    fn adam_chunk(
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
        vmax: Option<&mut [f32]>,
        k: &Consts,
    ) {
        let n = p.len();
        let (g, m, v) = (&g[..n], &mut m[..n], &mut v[..n]);
        match vmax {
            None => {
                for j in 0..n {
                    let (pj, mj, vj) = k.moments(p[j], g[j], m[j], v[j]);
                    (m[j], v[j]) = (mj, vj);
                    p[j] = k.apply(pj, mj, vj);
                }
            }
            Some(vm) => {
                let vm = &mut vm[..n];
                for j in 0..n {
                    let (pj, mj, vj) = k.moments(p[j], g[j], m[j], v[j]);
                    (m[j], v[j]) = (mj, vj);
                    vm[j] = vm[j].max(vj);
                    p[j] = k.apply(pj, mj, vm[j]);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::ops::test_support::*;

    /// The f64 reference, written from the pseudo-code of PyTorch's Adam and AdamW docs (with
    /// AMSGrad over the raw second moment, as the implementation does).
    struct Reference {
        theta: Vec<f64>,
        m: Vec<f64>,
        v: Vec<f64>,
        vmax: Vec<f64>,
    }

    impl Reference {
        fn step(&mut self, grad: &[f64], t: u64, c: &AdamConfig) {
            for (i, &gi) in grad.iter().enumerate() {
                let mut g = if c.maximize { -gi } else { gi };
                if c.decoupled {
                    self.theta[i] -= c.lr * c.weight_decay * self.theta[i];
                } else {
                    g += c.weight_decay * self.theta[i];
                }
                self.m[i] = c.beta1 * self.m[i] + (1.0 - c.beta1) * g;
                self.v[i] = c.beta2 * self.v[i] + (1.0 - c.beta2) * g * g;
                self.vmax[i] = self.vmax[i].max(self.v[i]);
                let m_hat = self.m[i] / (1.0 - c.beta1.powi(t as i32));
                let v = if c.amsgrad { self.vmax[i] } else { self.v[i] };
                let v_hat = v / (1.0 - c.beta2.powi(t as i32));
                self.theta[i] -= c.lr * m_hat / (v_hat.sqrt() + c.eps);
            }
        }
    }

    /// Five steps of every flag combination vs the reference: 1e-5 relative, 1e-6 absolute
    /// (f32 state rounded once per step; the update itself is a few ulps).
    #[test]
    fn matches_reference_for_every_variant() {
        for (k, &n) in [1usize, 3, 17, 127, 40_000].iter().enumerate() {
            for flags in 0..16u32 {
                let bit = |b: u32| flags & (1 << b) != 0;
                let cfg = AdamConfig {
                    lr: 1e-2,
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-8,
                    weight_decay: if bit(0) { 0.1 } else { 0.0 },
                    decoupled: bit(1),
                    amsgrad: bit(2),
                    maximize: bit(3),
                };
                let seed = 1000 * k as u64 + flags as u64 * 10;
                let mut p = rand_vec(seed, n, -1.0, 1.0);
                let (mut m, mut v, mut vmax) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
                let mut r = Reference {
                    theta: to_f64(&p),
                    m: vec![0.0; n],
                    v: vec![0.0; n],
                    vmax: vec![0.0; n],
                };
                for t in 1..=5 {
                    let g = rand_vec(seed + t, n, -1.0, 1.0);
                    adam_step(&mut p, &g, &mut m, &mut v, Some(&mut vmax), t, &cfg).unwrap();
                    r.step(&to_f64(&g), t, &cfg);
                }
                assert_close("param", &p, &r.theta, 1e-5, 1e-6);
                assert_close("exp_avg", &m, &r.m, 1e-5, 1e-6);
                assert_close("exp_avg_sq", &v, &r.v, 1e-5, 1e-9);
            }
        }
    }

    #[test]
    fn results_do_not_depend_on_thread_count() {
        let cfg = AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.01,
            decoupled: true,
            amsgrad: true,
            maximize: false,
        };
        let n = 100_001;
        let run = || {
            let mut p = rand_vec(1, n, -1.0, 1.0);
            let (mut m, mut v, mut vm) = (vec![0.0; n], vec![0.0; n], vec![0.0; n]);
            adam_step(
                &mut p,
                &rand_vec(2, n, -1.0, 1.0),
                &mut m,
                &mut v,
                Some(&mut vm),
                1,
                &cfg,
            )
            .unwrap();
            p
        };
        assert_eq!(with_threads(1, run), with_threads(2, run));
    }

    #[test]
    fn errors() {
        let cfg = AdamConfig {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
            decoupled: false,
            amsgrad: false,
            maximize: false,
        };
        let (mut p, mut m, mut v) = (vec![0.0; 3], vec![0.0; 3], vec![0.0; 3]);
        let err = adam_step(&mut p, &[0.0; 2], &mut m, &mut v, None, 1, &cfg)
            .err()
            .unwrap();
        assert_eq!(err.kind, ErrorKind::Shape);
        assert_eq!(
            adam_step(&mut p, &[0.0; 3], &mut m, &mut v, None, 0, &cfg)
                .err()
                .unwrap()
                .kind,
            ErrorKind::Value
        );
        let ams = AdamConfig {
            amsgrad: true,
            ..cfg
        };
        assert_eq!(
            adam_step(&mut p, &[0.0; 3], &mut m, &mut v, None, 1, &ams)
                .err()
                .unwrap()
                .kind,
            ErrorKind::Value
        );
        let bad = AdamConfig { beta2: 1.0, ..cfg };
        assert_eq!(
            adam_step(&mut p, &[0.0; 3], &mut m, &mut v, None, 1, &bad)
                .err()
                .unwrap()
                .kind,
            ErrorKind::Value
        );
        // Empty parameters are a no-op.
        adam_step(&mut [], &[], &mut [], &mut [], None, 1, &cfg).unwrap();
    }
}
