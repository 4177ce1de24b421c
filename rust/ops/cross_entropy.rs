//! Cross entropy from logits with class-index targets, label smoothing and ignored positions,
//! with PyTorch's semantics (`F.cross_entropy`).
//!
//! Forward: `logits (N, C)` or `(C,)`, `target (N,)` (or one target) → the loss per position
//! `(N,)` (or `()`) for `Reduction::None`, else a scalar. With `ε` the label smoothing and
//! `log p = log_softmax(logits)` (fused, never materialized):
//! `loss_i = (1 − ε)·(−log p[i, t_i]) + ε·mean_c(−log p[i, c])`. Positions whose target is
//! `ignore_index` contribute 0 and are left out of the mean's denominator. A mean over a batch
//! with every position ignored is 0 with a zero gradient, where PyTorch gives NaN.
//!
//! Saves the logits (shared, not copied) and each row's log-sum-exp in f64; the backward
//! recomputes `softmax = exp(logits − lse)`, one exp per element, rather than keeping an
//! `(N, C)` softmax alive between forward and backward.

use super::rows::{exp_fast, exp_sum, for_each_row, lane_sum, row_max, rows_mut, BLOCK};
use crate::autograd::{Backward, Var};
use crate::cpu::simd::simd_kernel;
use crate::error::{Result, TfmError};
use crate::tensor::{shape_str, Tensor};
use crate::{ensure_shape, ensure_value};

pub use crate::desc::{LossConfig, Reduction};

const OP: &str = "cross_entropy";

/// One row of the forward: its loss (0 when ignored) and log-sum-exp.
#[derive(Clone, Copy, Debug, Default)]
pub struct RowLoss {
    pub loss: f64,
    pub lse: f64,
}

/// Checks every target before any work: each is `ignore_index` or a class in `[0, C)`.
fn check_targets(target: &[i64], c: usize, ignore_index: i64) -> Result<()> {
    match target.iter().position(|&t| t != ignore_index && !(0..c as i64).contains(&t)) {
        Some(i) => Err(TfmError::index(
            OP,
            format!(
                "target {} at position {i} is out of range for {c} classes (targets must lie in [0, {c}) or equal ignore_index {ignore_index})",
                target[i]
            ),
        )),
        None => Ok(()),
    }
}

simd_kernel! {
    /// Loss of one row `x (C,)` with target `t`, plus its log-sum-exp, in one pass over the
    /// row: per [`BLOCK`] (which stays in L1 between its passes) the block max, then
    /// `Σ exp(x − m)` against the running max `m` (the running sum rescaled by `exp(m_old − m)`
    /// when the max grows, which happens a handful of times per row) and, with smoothing,
    /// `Σ x`. The lse is NaN when the row holds NaN or +inf, and −inf when every logit is
    /// −inf; the caller turns both into errors.
    fn row_loss(x: &[f32], t: i64, cfg: LossConfig) -> RowLoss {
        let eps = cfg.label_smoothing as f64;
        let (mut m, mut sum, mut sum_x) = (f32::NEG_INFINITY, 0.0f64, 0.0f64);
        for block in x.chunks(BLOCK) {
            let mb = row_max(block);
            if mb.is_nan() || mb == f32::INFINITY {
                return RowLoss { loss: 0.0, lse: f64::NAN };
            }
            if mb > m {
                // exp(−inf) = 0 drops the empty sum of an all −inf prefix.
                sum *= (m as f64 - mb as f64).exp();
                m = mb;
            }
            if m != f32::NEG_INFINITY {
                sum += exp_sum(block, m);
            }
            if eps > 0.0 {
                sum_x += lane_sum(block);
            }
        }
        if m == f32::NEG_INFINITY {
            return RowLoss { loss: 0.0, lse: f64::NEG_INFINITY };
        }
        let lse = m as f64 + sum.ln();
        if t == cfg.ignore_index {
            return RowLoss { loss: 0.0, lse };
        }
        // Each term only when its weight is nonzero: a −inf logit makes its term infinite.
        let mut loss = 0.0;
        if eps < 1.0 {
            loss += (1.0 - eps) * (lse - x[t as usize] as f64);
        }
        if eps > 0.0 {
            loss += eps * (lse - sum_x / x.len() as f64);
        }
        RowLoss { loss, lse }
    }
}

simd_kernel! {
    /// One row of the backward: `d = w·(exp(x − lse) − smooth)`, then `d[t] −= w·(1 − ε)`;
    /// each output written once. `lse` comes as an f32 pair `hi + lo`: logits near lse (the
    /// ones with probability mass) subtract its high part exactly, so their difference keeps
    /// f32 precision even at ~1e4, where a plain f32 lse would keep only three decimals.
    fn grad_row(d: &mut [f32], x: &[f32], t: usize, lse: f64, w: f32, eps: f32) {
        let smooth = eps / x.len() as f32;
        let hi = lse as f32;
        let lo = (lse - hi as f64) as f32;
        for (d, &v) in d.iter_mut().zip(x) {
            *d = w * (exp_fast((v - hi) - lo) - smooth);
        }
        d[t] -= w * (1.0 - eps);
    }
}

/// Forward kernel: `logits (N, C)`, `target (N,)` (already checked) → per-row loss and lse,
/// or a non-finite error naming the first row with a NaN or +inf logit, or a counted row whose
/// logits are all −inf.
pub fn cross_entropy_forward(
    logits: &[f32],
    target: &[i64],
    c: usize,
    cfg: LossConfig,
) -> Result<Vec<RowLoss>> {
    let mut rows = vec![RowLoss::default(); target.len()];
    for_each_row(rows.iter_mut().collect(), c, |i, out| {
        *out = row_loss(&logits[i * c..][..c], target[i], cfg)
    });
    LossConfig::check_lse(
        OP,
        rows.len(),
        |i| rows[i].lse,
        |i| target[i] != cfg.ignore_index,
    )?;
    Ok(rows)
}

/// Backward kernel: `dlogits (N, C)` with
/// `dlogits[i, c] = w_i · (softmax[i, c] − ε/C − (1 − ε)·[c = t_i])`, 0 on ignored rows, where
/// `w (N,)` is each row's share of the output gradient.
pub fn cross_entropy_backward(
    logits: &[f32],
    target: &[i64],
    lse: &[f64],
    w: &[f32],
    c: usize,
    cfg: LossConfig,
) -> Vec<f32> {
    let n = target.len();
    let mut dx = crate::cpu::alloc::output(n * c);
    for_each_row(rows_mut(&mut dx, n, c), c, |i, d| {
        let t = target[i];
        if t == cfg.ignore_index {
            d.fill(0.0);
        } else {
            let x = &logits[i * c..][..c];
            grad_row(d, x, t as usize, lse[i], w[i], cfg.label_smoothing);
        }
    });
    dx
}

/// What the forward saved besides the logits, on the device of the logits.
enum Saved {
    /// The targets and each row's log-sum-exp in f64.
    Host { target: Vec<i64>, lse: Vec<f64> },
    /// The checked targets and each row's log-sum-exp `(N,)`, on the GPU.
    #[cfg(feature = "wgpu")]
    Gpu {
        target: crate::gpu::GpuBuffer,
        lse: crate::gpu::GpuTensor,
    },
}

struct CrossEntropyBackward {
    logits: Tensor,
    saved: Saved,
    cfg: LossConfig,
    reduction: Reduction,
    /// Positions not ignored: the mean's denominator.
    counted: usize,
}

impl Backward for CrossEntropyBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let n = self.logits.rows_cols().0;
        match &self.saved {
            Saved::Host { target, lse } => {
                let (g, logits) = (g.cpu(OP)?, self.logits.cpu(OP)?);
                let w = match self.reduction {
                    Reduction::None => g.data().to_vec(),
                    Reduction::Sum => vec![g.data()[0]; n],
                    // An all-ignored mean has no row to pass a gradient to (every row is skipped).
                    Reduction::Mean => vec![g.data()[0] / self.counted.max(1) as f32; n],
                };
                let c = self.logits.shape().last().copied().unwrap_or(0);
                let dx = cross_entropy_backward(logits.data(), target, lse, &w, c, self.cfg);
                Ok(vec![Some(Tensor::new(dx, logits.shape())?)])
            }
            #[cfg(feature = "wgpu")]
            Saved::Gpu { target, lse } => {
                use super::broadcast::broadcast_to;
                // Each row's share of the output gradient, as on the host.
                let w = match self.reduction {
                    Reduction::None => g.reshape(&[n])?,
                    Reduction::Sum => broadcast_to(OP, g, &[n])?,
                    Reduction::Mean => super::elementwise::scale(
                        &broadcast_to(OP, g, &[n])?,
                        1.0 / self.counted.max(1) as f32,
                    )?,
                };
                let dx = crate::gpu::ops::cross_entropy::backward_tensor(
                    self.logits.gpu(OP)?,
                    target,
                    lse,
                    w.gpu(OP)?,
                    self.cfg.label_smoothing,
                )?;
                Ok(vec![Some(dx.into())])
            }
        }
    }
}

/// Cross entropy of `logits (N, C)` (or `(C,)`) against class indices `target` (N values, or
/// one); see the module doc for the formula, ignored positions and the all-ignored mean.
pub fn cross_entropy(
    logits: &Var,
    target: &[i64],
    ignore_index: i64,
    label_smoothing: f32,
    reduction: Reduction,
) -> Result<Var> {
    let x = logits.value();
    ensure_shape!(
        matches!(x.ndim(), 1 | 2),
        OP,
        "logits must be (N, C) or (C,), got shape {}",
        shape_str(x.shape())
    );
    let (n, c) = x.rows_cols();
    ensure_shape!(
        target.len() == n,
        OP,
        "{} targets given for logits of shape {} (one per row needed)",
        target.len(),
        shape_str(x.shape())
    );
    ensure_value!(
        (0.0..=1.0).contains(&label_smoothing),
        OP,
        "label_smoothing must lie in [0, 1], got {label_smoothing}"
    );
    check_targets(target, c, ignore_index)?;
    let cfg = LossConfig {
        ignore_index,
        label_smoothing,
    };
    let counted = target.iter().filter(|&&t| t != ignore_index).count();
    #[cfg(feature = "wgpu")]
    if x.device() == crate::tensor::Device::Gpu {
        use super::broadcast::sum_to;
        let (loss, lse, target) =
            crate::gpu::ops::cross_entropy::forward_tensors(x.gpu(OP)?, target, cfg)?;
        let loss = Tensor::from(loss);
        let out = match reduction {
            Reduction::None if x.ndim() == 2 => loss,
            Reduction::None => loss.reshape(&[])?,
            Reduction::Sum => sum_to(&loss, &[])?,
            // An all-ignored mean is 0, as on the host (every row's loss is 0).
            Reduction::Mean => {
                super::elementwise::scale(&sum_to(&loss, &[])?, 1.0 / counted.max(1) as f32)?
            }
        };
        let saved = CrossEntropyBackward {
            logits: x,
            saved: Saved::Gpu { target, lse },
            cfg,
            reduction,
            counted,
        };
        return Ok(Var::from_op(out, vec![logits.clone()], saved));
    }
    let rows = cross_entropy_forward(x.cpu(OP)?.data(), target, c, cfg)?;
    // Sums in row order in f64: deterministic, and accurate over thousands of rows.
    let total: f64 = rows.iter().map(|r| r.loss).sum();
    let out = match reduction {
        Reduction::None => {
            let shape: &[usize] = if x.ndim() == 2 { &[n] } else { &[] };
            Tensor::new(rows.iter().map(|r| r.loss as f32).collect(), shape)?
        }
        Reduction::Sum => Tensor::scalar(total as f32),
        Reduction::Mean => Tensor::scalar(if counted == 0 {
            0.0
        } else {
            (total / counted as f64) as f32
        }),
    };
    let saved = CrossEntropyBackward {
        logits: x,
        saved: Saved::Host {
            target: target.to_vec(),
            lse: rows.iter().map(|r| r.lse).collect(),
        },
        cfg,
        reduction,
        counted,
    };
    Ok(Var::from_op(out, vec![logits.clone()], saved))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::ops::test_support::*;

    const IGNORE: i64 = -100;

    /// f64 reference written from PyTorch's definition: per-row losses, then the reduction.
    fn reference(x: &[f64], target: &[i64], c: usize, eps: f64, reduction: Reduction) -> Vec<f64> {
        let mut losses = Vec::new();
        for (row, &t) in x.chunks(c).zip(target) {
            if t == IGNORE {
                losses.push(0.0);
                continue;
            }
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            let logp: Vec<f64> = row.iter().map(|v| v - lse).collect();
            let smooth = -logp.iter().sum::<f64>() / c as f64;
            losses.push((1.0 - eps) * -logp[t as usize] + eps * smooth);
        }
        let counted = target.iter().filter(|&&t| t != IGNORE).count();
        let total: f64 = losses.iter().sum();
        match reduction {
            Reduction::None => losses,
            Reduction::Sum => vec![total],
            Reduction::Mean => vec![if counted == 0 {
                0.0
            } else {
                total / counted as f64
            }],
        }
    }

    /// Targets in `[0, c)`, every fourth one ignored.
    fn targets(seed: u64, n: usize, c: usize) -> Vec<i64> {
        let raw = rand_vec(seed, n, 0.0, c as f32);
        raw.iter()
            .enumerate()
            .map(|(i, &v)| {
                if i % 4 == 1 {
                    IGNORE
                } else {
                    (v as i64).min(c as i64 - 1)
                }
            })
            .collect()
    }

    /// Forward 1e-5 relative; the gradient vs finite differences of the f64 reference
    /// (h = 1e-3) at 1e-4 relative + 1e-5 absolute.
    fn check(n: usize, c: usize, eps: f32, reduction: Reduction, seed: u64) {
        let xd = rand_vec(seed, n * c, -4.0, 4.0);
        let t = targets(seed + 1, n, c);
        let x = leaf(xd.clone(), &[n, c]);
        let y = cross_entropy(&x, &t, IGNORE, eps, reduction).unwrap();
        let x64 = to_f64(&xd);
        let want = reference(&x64, &t, c, eps as f64, reduction);
        assert_close("forward", y.value().data(), &want, 1e-5, 1e-6);
        let g = rand_vec(seed + 2, want.len(), 0.5, 1.5);
        let g64 = to_f64(&g);
        let fd = finite_diff(&x64, 1e-3, |p| {
            dot(&g64, &reference(p, &t, c, eps as f64, reduction))
        });
        assert_close("dlogits", &grads(&y, &g, &[&x])[0], &fd, 1e-4, 1e-5);
    }

    #[test]
    fn matches_reference_on_odd_shapes() {
        let mut seed = 200;
        for &n in &[1, 3, 17] {
            for &c in &[1, 3, 17, 127] {
                for (eps, reduction) in [
                    (0.0, Reduction::Mean),
                    (0.1, Reduction::None),
                    (1.0, Reduction::Sum),
                    (0.3, Reduction::Mean),
                ] {
                    check(n, c, eps, reduction, seed);
                    seed += 3;
                }
            }
        }
    }

    #[test]
    fn one_dimensional_logits_and_in_range_ignore_index() {
        let x = leaf(vec![1.0, 2.0, 0.5], &[3]);
        let y = cross_entropy(&x, &[1], IGNORE, 0.0, Reduction::None).unwrap();
        assert_eq!(y.shape(), Vec::<usize>::new());
        assert_close(
            "forward",
            y.value().data(),
            &reference(&[1.0, 2.0, 0.5], &[1], 3, 0.0, Reduction::None),
            1e-6,
            0.0,
        );
        // ignore_index may be a real class: those positions are skipped.
        let x = leaf(vec![1.0, 2.0, 0.5, 0.0], &[2, 2]);
        let y = cross_entropy(&x, &[0, 1], 1, 0.0, Reduction::None).unwrap();
        assert_eq!(y.value().data()[1], 0.0);
        assert!(y.value().data()[0] > 0.0);
    }

    #[test]
    fn large_logits_stay_finite() {
        let xd = vec![1e4, -1e4, 0.0, 1e4 - 2.0, -1e4, 1e4];
        let x = leaf(xd.clone(), &[2, 3]);
        let y = cross_entropy(&x, &[0, 1], IGNORE, 0.1, Reduction::Mean).unwrap();
        let want = reference(&to_f64(&xd), &[0, 1], 3, 0.1, Reduction::Mean);
        assert_close("forward", y.value().data(), &want, 1e-5, 0.0);
        let g = &grads(&y, &[1.0], &[&x])[0];
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
        // Row 0: p = (1, 0, 0) to f32 precision; d = (p − ε/3 − (1 − ε)·onehot) / 2.
        assert_close(
            "dlogits row 0",
            &g[..3],
            &[0.1 / 3.0, -0.1 / 6.0, -0.1 / 6.0],
            1e-5,
            1e-6,
        );
    }

    #[test]
    fn all_ignored_batch_is_zero_not_nan() {
        for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
            let x = leaf(vec![0.3; 6], &[2, 3]);
            let y = cross_entropy(&x, &[IGNORE, IGNORE], IGNORE, 0.2, reduction).unwrap();
            assert!(y.value().data().iter().all(|&v| v == 0.0));
            let w = vec![1.0; y.value().numel()];
            assert_eq!(grads(&y, &w, &[&x])[0], vec![0.0; 6]);
        }
    }

    #[test]
    fn errors() {
        let x = leaf(vec![0.0; 6], &[2, 3]);
        let err = cross_entropy(&x, &[0, 3], IGNORE, 0.0, Reduction::Mean)
            .err()
            .unwrap();
        assert_eq!(err.kind, ErrorKind::Index);
        assert!(err.msg.contains("target 3 at position 1"), "{}", err.msg);
        assert_eq!(
            cross_entropy(&x, &[-1, 0], IGNORE, 0.0, Reduction::Mean)
                .err()
                .unwrap()
                .kind,
            ErrorKind::Index
        );
        assert_eq!(
            cross_entropy(&x, &[0], IGNORE, 0.0, Reduction::Mean)
                .err()
                .unwrap()
                .kind,
            ErrorKind::Shape
        );
        for eps in [-0.1, 1.5, f32::NAN] {
            assert_eq!(
                cross_entropy(&x, &[0, 1], IGNORE, eps, Reduction::Mean)
                    .err()
                    .unwrap()
                    .kind,
                ErrorKind::Value
            );
        }
        assert_eq!(
            cross_entropy(
                &leaf(vec![0.0; 8], &[2, 2, 2]),
                &[0, 1],
                IGNORE,
                0.0,
                Reduction::Mean
            )
            .err()
            .unwrap()
            .kind,
            ErrorKind::Shape
        );
        for bad in [f32::NAN, f32::INFINITY] {
            let x = leaf(vec![0.0, 1.0, 2.0, 3.0, bad, 5.0], &[2, 3]);
            let err = cross_entropy(&x, &[0, IGNORE], IGNORE, 0.0, Reduction::Mean)
                .err()
                .unwrap();
            assert_eq!(err.kind, ErrorKind::NonFinite);
            assert!(err.msg.contains("row 1"), "{}", err.msg);
        }
        let x = leaf(vec![f32::NEG_INFINITY; 3], &[1, 3]);
        assert_eq!(
            cross_entropy(&x, &[0], IGNORE, 0.0, Reduction::Mean)
                .err()
                .unwrap()
                .kind,
            ErrorKind::NonFinite
        );
    }

    #[test]
    fn empty_batch() {
        let x = leaf(vec![], &[0, 5]);
        let y = cross_entropy(&x, &[], IGNORE, 0.1, Reduction::Mean).unwrap();
        assert_eq!(y.value().data(), &[0.0]);
        assert!(grads(&y, &[1.0], &[&x])[0].is_empty());
        let y = cross_entropy(&leaf(vec![], &[0, 5]), &[], IGNORE, 0.0, Reduction::None).unwrap();
        assert_eq!(y.shape(), vec![0]);
    }

    #[test]
    fn wide_vocabulary_is_deterministic_across_thread_counts() {
        let (n, c) = (64, 3001);
        let x = Tensor::new(rand_vec(8, n * c, -6.0, 6.0), &[n, c]).unwrap();
        let t = targets(9, n, c);
        let run = || {
            let xv = Var::leaf(x.clone(), true);
            let y = cross_entropy(&xv, &t, IGNORE, 0.1, Reduction::Mean).unwrap();
            let loss = y.value().data()[0];
            (loss, grads(&y, &[1.0], &[&xv]))
        };
        let (one, two) = (with_threads(1, run), with_threads(2, run));
        assert_eq!(one, two);
        let want = reference(&to_f64(x.data()), &t, c, 0.1, Reduction::Mean);
        assert_close("forward", &[one.0], &want, 1e-5, 0.0);
    }
}
