//! SGD with optional momentum, dampening, Nesterov momentum and weight decay
//! (`torch.optim.SGD`), one parameter per call:
//!
//! ```text
//! g ← −grad if maximize else grad;  g ← g + wd·θ
//! momentum ≠ 0:  b ← g on the first step, else b ← μ·b + (1 − τ)·g
//!                g ← g + μ·b if nesterov else b
//! θ ← θ − lr·g
//! ```
//!
//! `maximize` negates the gradient first, as PyTorch's implementation does (its documentation's
//! pseudo-code flips the sign of the final update instead, which differs once weight decay is
//! on).

use super::{check_len, decayed_grad, optional_chunks, CHUNK};
use crate::cpu::simd::simd_kernel;
use crate::error::Result;
use crate::ops::rows::for_each_row;

pub use crate::desc::SgdConfig;

const OP: &str = "sgd";

/// One SGD step for one parameter, in place. With momentum, `momentum_buffer` (the parameter's
/// length) is required; `first_step` says it holds no history yet (PyTorch's `None` buffer) and
/// is to be set to the gradient. Without momentum the buffer is ignored.
pub fn sgd_step(
    param: &mut [f32],
    grad: &[f32],
    momentum_buffer: Option<&mut [f32]>,
    first_step: bool,
    cfg: &SgdConfig,
) -> Result<()> {
    cfg.check_step(momentum_buffer.is_some())?;
    let n = param.len();
    check_len(OP, "grad", grad.len(), n)?;
    let buf = match momentum_buffer {
        Some(b) if cfg.momentum != 0.0 => {
            check_len(OP, "momentum_buffer", b.len(), n)?;
            Some(b)
        }
        _ => None,
    };
    let k = Consts {
        lr: cfg.lr as f32,
        momentum: cfg.momentum as f32,
        one_minus_dampening: (1.0 - cfg.dampening) as f32,
        sign: if cfg.maximize { -1.0 } else { 1.0 },
        wd: cfg.weight_decay as f32,
        nesterov: cfg.nesterov,
        first_step,
    };
    let items: Vec<_> = param
        .chunks_mut(CHUNK)
        .zip(grad.chunks(CHUNK))
        .zip(optional_chunks(buf, n.div_ceil(CHUNK)))
        .collect();
    for_each_row(items, CHUNK, |_, ((p, g), b)| sgd_chunk(p, g, b, &k));
    Ok(())
}

/// The per-step constants of [`sgd_step`] (`sign` −1 with `maximize`).
struct Consts {
    lr: f32,
    momentum: f32,
    one_minus_dampening: f32,
    sign: f32,
    wd: f32,
    nesterov: bool,
    first_step: bool,
}

simd_kernel! {
    /// One chunk of [`sgd_step`]; the branches on the configuration are the same for every
    /// element, so each loop vectorizes.
    fn sgd_chunk(p: &mut [f32], g: &[f32], b: Option<&mut [f32]>, k: &Consts) {
        let n = p.len();
        let g = &g[..n];
        match b {
            None => {
                for j in 0..n {
                    p[j] += -k.lr * decayed_grad(g[j], p[j], k.sign, k.wd);
                }
            }
            Some(b) => {
                let b = &mut b[..n];
                for j in 0..n {
                    let gj = decayed_grad(g[j], p[j], k.sign, k.wd);
                    b[j] = if k.first_step {
                        gj
                    } else {
                        b[j] * k.momentum + k.one_minus_dampening * gj
                    };
                    let step = if k.nesterov { gj + k.momentum * b[j] } else { b[j] };
                    p[j] += -k.lr * step;
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

    /// The f64 reference from the pseudo-code of PyTorch's SGD docs, with `maximize` applied to
    /// the gradient first as the implementation does.
    fn reference(theta: &mut [f64], b: &mut [f64], grad: &[f64], t: u64, c: &SgdConfig) {
        for i in 0..theta.len() {
            let mut g = if c.maximize { -grad[i] } else { grad[i] };
            if c.weight_decay != 0.0 {
                g += c.weight_decay * theta[i];
            }
            if c.momentum != 0.0 {
                b[i] = if t > 1 {
                    c.momentum * b[i] + (1.0 - c.dampening) * g
                } else {
                    g
                };
                g = if c.nesterov {
                    g + c.momentum * b[i]
                } else {
                    b[i]
                };
            }
            theta[i] -= c.lr * g;
        }
    }

    /// Five steps of each variant vs the reference: 1e-5 relative, 1e-6 absolute.
    #[test]
    fn matches_reference_for_every_variant() {
        let variants = [
            (0.0, 0.0, false),
            (0.9, 0.0, false),
            (0.9, 0.1, false),
            (0.9, 0.0, true),
        ];
        for (k, &n) in [1usize, 3, 17, 127, 40_000].iter().enumerate() {
            for (vi, &(momentum, dampening, nesterov)) in variants.iter().enumerate() {
                for (wd, maximize) in [(0.0, false), (0.01, true), (0.01, false)] {
                    let cfg = SgdConfig {
                        lr: 0.1,
                        momentum,
                        dampening,
                        weight_decay: wd,
                        nesterov,
                        maximize,
                    };
                    let seed = 100 * k as u64 + 10 * vi as u64;
                    let mut p = rand_vec(seed, n, -1.0, 1.0);
                    let mut b = vec![0.0; n];
                    let (mut rt, mut rb) = (to_f64(&p), vec![0.0; n]);
                    for t in 1..=5 {
                        let g = rand_vec(seed + t, n, -1.0, 1.0);
                        sgd_step(&mut p, &g, Some(&mut b), t == 1, &cfg).unwrap();
                        reference(&mut rt, &mut rb, &to_f64(&g), t, &cfg);
                    }
                    assert_close("param", &p, &rt, 1e-5, 1e-6);
                    if momentum != 0.0 {
                        assert_close("momentum_buffer", &b, &rb, 1e-5, 1e-6);
                    }
                }
            }
        }
    }

    #[test]
    fn errors() {
        let cfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.0,
            nesterov: false,
            maximize: false,
        };
        let mut p = vec![0.0; 3];
        assert_eq!(
            sgd_step(&mut p, &[0.0; 3], None, true, &cfg)
                .err()
                .unwrap()
                .kind,
            ErrorKind::Value
        );
        assert_eq!(
            sgd_step(&mut p, &[0.0; 4], Some(&mut [0.0; 3]), true, &cfg)
                .err()
                .unwrap()
                .kind,
            ErrorKind::Shape
        );
        assert_eq!(
            sgd_step(&mut p, &[0.0; 3], Some(&mut [0.0; 2]), true, &cfg)
                .err()
                .unwrap()
                .kind,
            ErrorKind::Shape
        );
        let bad = SgdConfig {
            nesterov: true,
            dampening: 0.5,
            ..cfg
        };
        assert_eq!(
            sgd_step(&mut p, &[0.0; 3], Some(&mut [0.0; 3]), true, &bad)
                .err()
                .unwrap()
                .kind,
            ErrorKind::Value
        );
        // Plain SGD needs no buffer.
        let plain = SgdConfig {
            momentum: 0.0,
            ..cfg
        };
        sgd_step(&mut p, &[1.0; 3], None, true, &plain).unwrap();
        assert_eq!(p, vec![-0.1; 3]);
    }
}
