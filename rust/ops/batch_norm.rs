//! Batch normalization: per-channel statistics over the rows of `x (R, C)`, optionally over a
//! subset of the rows (the padding-aware form for `(N, T, C)` sequences, whose padded positions
//! must not move the statistics).
//!
//! Forward: `x (R, C)`, optional `keep (R,)` (rows that count in the statistics; all when
//! absent), optional `weight (C,)`, `bias (C,)` → `y (R, C)`,
//! `y = (x − mean)/√(var + eps) · weight + bias`. With batch statistics (training, or no running
//! statistics) `mean` and the biased `var` are those of the kept rows, computed in f64 in two
//! passes, and the forward also returns the unbiased variance for the running estimate, as
//! PyTorch; otherwise `mean`/`var` are the given running statistics. Rows outside `keep` are
//! normalized with the same statistics, so every output is defined, but they do not take part in
//! them: their gradient passes through the affine map only.
//!
//! Backward (batch statistics, `n` kept rows, `x̂` the normalized input, `ĝ = g ∘ weight`):
//! `dx = rstd · (ĝ − Σ_rows ĝ / n − x̂ · Σ_rows (ĝ ∘ x̂) / n)` on kept rows (every row's output
//! depends on the statistics, so the sums run over all rows) and `rstd · ĝ` on the others; with running statistics `dx = rstd · ĝ` everywhere. `dweight = Σ_rows g ∘ x̂`,
//! `dbias = Σ_rows g`. Every per-channel sum runs in f64 over fixed chunks of whole rows, the
//! chunks' partials added in order: deterministic, whatever the thread count.
//!
//! The `(N, C)` / `(N, C, L)` layouts of PyTorch's `BatchNorm1d` are moved onto `(R, C)` by the
//! binding.

use super::rows::{column_sums, for_each_row, rows_mut};
use crate::autograd::{Backward, Var};
use crate::cpu::simd::simd_kernel;
use crate::error::{Result, TfmError};
use crate::tensor::{shape_str, Device, Tensor};
use crate::{ensure_shape, ensure_value};
use std::sync::Arc;

const OP: &str = "batch_norm";

/// Per-channel statistics the normalization uses, in f64.
#[derive(Clone, Debug, Default)]
pub struct ChannelStats {
    pub mean: Vec<f64>,
    pub rstd: Vec<f64>,
}

simd_kernel! {
    /// One chunk of rows of `x (rows, C)` added into per-channel sums `o (C,)`: of `x` (no
    /// `mean`) or of `(x − mean)²`, over the rows selected by `keep` (all when `None`).
    fn add_rows(o: &mut [f64], x: &[f32], mean: Option<&[f64]>, keep: Option<&[bool]>) {
        let c = o.len();
        for (r, xr) in x.chunks_exact(c).enumerate() {
            if keep.is_some_and(|k| !k[r]) {
                continue;
            }
            match mean {
                None => {
                    for (o, &v) in o.iter_mut().zip(xr) {
                        *o += v as f64;
                    }
                }
                Some(m) => {
                    for ((o, &v), &m) in o.iter_mut().zip(xr).zip(m) {
                        let d = v as f64 - m;
                        *o += d * d;
                    }
                }
            }
        }
    }
}

/// Mean and biased variance per channel of the rows of `x (rows, C)` selected by `keep`, and the
/// number of rows selected. Two passes in f64, so that a large mean relative to the spread keeps
/// full accuracy; each over whole rows in fixed chunks ([`column_sums`]).
pub fn batch_stats(
    x: &[f32],
    rows: usize,
    c: usize,
    keep: Option<&[bool]>,
) -> (Vec<f64>, Vec<f64>, usize) {
    let n = keep.map_or(rows, |k| k.iter().filter(|&&k| k).count());
    let inv = 1.0 / n.max(1) as f64;
    let pass = |mean: Option<&[f64]>| {
        let mut sums = column_sums(rows, c, |rs, o| {
            let keep = keep.map(|k| &k[rs.clone()]);
            add_rows(o, &x[rs.start * c..rs.end * c], mean, keep);
        });
        sums.iter_mut().for_each(|v| *v *= inv);
        sums
    };
    if c == 0 {
        return (Vec::new(), Vec::new(), n);
    }
    let mean = pass(None);
    let var = pass(Some(&mean));
    (mean, var, n)
}

simd_kernel! {
    /// One row: `y = ((x − mean) · rstd) · weight + bias`, the normalization in f64.
    fn normalize_row(
        y: &mut [f32],
        x: &[f32],
        mean: &[f64],
        rstd: &[f64],
        weight: Option<&[f32]>,
        bias: Option<&[f32]>,
    ) {
        let c = y.len();
        let (x, mean, rstd) = (&x[..c], &mean[..c], &rstd[..c]);
        if let (Some(w), Some(b)) = (weight, bias) {
            // The common affine case in one loop (the same operations as the three below).
            let (w, b) = (&w[..c], &b[..c]);
            for j in 0..c {
                y[j] = ((x[j] as f64 - mean[j]) * rstd[j]) as f32 * w[j] + b[j];
            }
            return;
        }
        for j in 0..c {
            y[j] = ((x[j] as f64 - mean[j]) * rstd[j]) as f32;
        }
        if let Some(w) = weight {
            let w = &w[..c];
            for j in 0..c {
                y[j] *= w[j];
            }
        }
        if let Some(b) = bias {
            let b = &b[..c];
            for j in 0..c {
                y[j] += b[j];
            }
        }
    }
}

/// Forward kernel: `x (rows, C)` normalized per channel with `stats` → `y (rows, C)`.
pub fn batch_norm_forward(
    x: &[f32],
    rows: usize,
    c: usize,
    stats: &ChannelStats,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut y = crate::cpu::alloc::output(rows * c);
    for_each_row(rows_mut(&mut y, rows, c), c, |r, yr| {
        normalize_row(yr, &x[r * c..][..c], &stats.mean, &stats.rstd, weight, bias)
    });
    y
}

simd_kernel! {
    /// One chunk of rows of the backward's per-channel sums: `o (2C)` gets `[Σ g ∘ x̂, Σ g]`.
    fn grad_sums_rows(o: &mut [f64], g: &[f32], x: &[f32], mean: &[f64], rstd: &[f64]) {
        let (gx, gs) = o.split_at_mut(o.len() / 2);
        let c = gx.len();
        for (gr, xr) in g.chunks_exact(c).zip(x.chunks_exact(c)) {
            let sums = gx.iter_mut().zip(gs.iter_mut());
            let stats = mean.iter().zip(rstd);
            for (((gx, gs), (&gv, &xv)), (&m, &r)) in sums.zip(gr.iter().zip(xr)).zip(stats) {
                let gv = gv as f64;
                *gx += gv * ((xv as f64 - m) * r);
                *gs += gv;
            }
        }
    }
}

simd_kernel! {
    /// One row of the input gradient: `dx = (g − shift − (x − mean)·slope)·scale`, or `g·scale`
    /// for a row the statistics did not depend on (`centre` None), in f64.
    fn dx_row(dx: &mut [f32], g: &[f32], x: &[f32], scale: &[f64], centre: Option<(&[f64], &[f64], &[f64])>) {
        let c = dx.len();
        let (g, x, scale) = (&g[..c], &x[..c], &scale[..c]);
        match centre {
            Some((mean, shift, slope)) => {
                let (mean, shift, slope) = (&mean[..c], &shift[..c], &slope[..c]);
                for j in 0..c {
                    let v = g[j] as f64 - shift[j] - (x[j] as f64 - mean[j]) * slope[j];
                    dx[j] = (v * scale[j]) as f32;
                }
            }
            None => {
                for j in 0..c {
                    dx[j] = (g[j] as f64 * scale[j]) as f32;
                }
            }
        }
    }
}

/// The gradients of [`batch_norm_forward`] for `x (rows, C)`: `dx (rows, C)` and the per-channel sums
/// `(Σ g ∘ x̂, Σ g)` over all rows (`dweight`, `dbias`). `batch` says whether the statistics
/// were the kept rows' own (then they depend on `x`), `n` is the number of kept rows.
pub fn batch_norm_backward(
    g: &[f32],
    x: &[f32],
    (rows, c): (usize, usize),
    stats: &ChannelStats,
    weight: Option<&[f32]>,
    keep: Option<&[bool]>,
    batch: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let ChannelStats { mean, rstd } = stats;
    let kept = |r: usize| keep.is_none_or(|k| k[r]);
    let n = (0..rows).filter(|&r| kept(r)).count().max(1) as f64;
    // [Σ g x̂, Σ g] over all rows: every output depends on the statistics.
    let sums = if c == 0 {
        Vec::new()
    } else {
        column_sums(rows, 2 * c, |rs, o| {
            let span = rs.start * c..rs.end * c;
            grad_sums_rows(o, &g[span.clone()], &x[span], mean, rstd);
        })
    };
    let (sum_gx, sum_g) = sums.split_at(c.min(sums.len()));
    // dx = (g − (Σg + x̂·Σgx̂)/n)·w·rstd, with the per-channel factors taken out of the row loop.
    let scale: Vec<f64> = (0..c)
        .map(|j| weight.map_or(1.0, |w| w[j] as f64) * rstd[j])
        .collect();
    let shift: Vec<f64> = sum_g.iter().map(|s| s / n).collect();
    let slope: Vec<f64> = (0..c).map(|j| rstd[j] * sum_gx[j] / n).collect();
    let mut dx = crate::cpu::alloc::output(rows * c);
    for_each_row(rows_mut(&mut dx, rows, c), 2 * c, |r, out| {
        let (gr, xr) = (&g[r * c..][..c], &x[r * c..][..c]);
        let centre = (batch && kept(r)).then_some((mean.as_slice(), &shift[..], &slope[..]));
        dx_row(out, gr, xr, &scale, centre);
    });
    let dweight = sum_gx.iter().map(|&s| s as f32).collect();
    let dbias = sum_g.iter().map(|&s| s as f32).collect();
    (dx, dweight, dbias)
}

struct BatchNormBackward {
    x: Tensor,
    stats: Arc<ChannelStats>,
    weight: Option<Tensor>,
    keep: Option<Arc<Vec<bool>>>,
    batch: bool,
    has_weight: bool,
    has_bias: bool,
}

impl Backward for BatchNormBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn backward(&self, g: &Tensor, inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let (rows, c) = self.x.rows_cols();
        let (dx, dw, db) = batch_norm_backward(
            g.cpu(OP)?.data(),
            self.x.cpu(OP)?.data(),
            (rows, c),
            &self.stats,
            Tensor::cpu_opt(OP, self.weight.as_ref())?,
            self.keep.as_ref().map(|k| k.as_slice()),
            self.batch,
        );
        let mut grads = vec![Some(Tensor::new(dx, &[rows, c])?)];
        if self.has_weight {
            grads.push(Some(Tensor::new(dw, &[c])?));
        }
        if self.has_bias {
            grads.push(Some(Tensor::new(db, &[c])?));
        }
        grads.resize(inputs.len(), None);
        Ok(grads)
    }
}

/// The output of [`batch_norm`]: the normalized `y (R, C)` and, when batch statistics were
/// used, the batch mean and unbiased variance per channel (for the running estimates).
pub struct BatchNormOutput {
    pub y: Var,
    pub batch_mean: Option<Vec<f32>>,
    pub batch_var: Option<Vec<f32>>,
}

/// Batch norm of `x (R, C)` over its rows (those with `keep[r]` when given). `running` holds the
/// running mean and variance `(C,)` each; they normalize when `use_batch_stats` is false (eval),
/// and batch statistics, which need at least two kept rows, are used otherwise.
pub fn batch_norm(
    x: &Var,
    keep: Option<Vec<bool>>,
    weight: Option<&Var>,
    bias: Option<&Var>,
    running: Option<(&[f32], &[f32])>,
    use_batch_stats: bool,
    eps: f32,
) -> Result<BatchNormOutput> {
    let xv = x.value();
    ensure_shape!(
        xv.ndim() == 2,
        OP,
        "the input must be 2-D (rows, channels), got shape {}",
        shape_str(xv.shape())
    );
    ensure_value!(
        eps.is_finite() && eps >= 0.0,
        OP,
        "eps must be finite and non-negative, got {eps}"
    );
    let (rows, c) = (xv.shape()[0], xv.shape()[1]);
    let (wv, bv) = (weight.map(Var::value), bias.map(Var::value));
    for (name, p) in [("weight", &wv), ("bias", &bv)] {
        if let Some(p) = p {
            ensure_shape!(
                p.shape() == [c],
                OP,
                "{name} has shape {}, but the input has {c} channels",
                shape_str(p.shape())
            );
        }
    }
    if let Some(k) = &keep {
        ensure_shape!(
            k.len() == rows,
            OP,
            "the padding mask selects among {} positions, but the input has {rows}",
            k.len()
        );
    }
    let inputs: Vec<Var> = [Some(x), weight, bias]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if Device::common(OP, inputs.iter().map(Var::device))? != Device::Cpu {
        return Err(TfmError::device(
            OP,
            "batch norm has no GPU kernel yet; run it on the CPU",
        ));
    }
    let (stats, batch_mean, batch_var) = if use_batch_stats {
        let (mean, var, n) = batch_stats(xv.cpu(OP)?.data(), rows, c, keep.as_deref());
        ensure_value!(
            n > 1,
            OP,
            "expected more than 1 value per channel when training, got {n} (input of shape {})",
            shape_str(xv.shape())
        );
        let unbiased = var.iter().map(|v| (v * n as f64 / (n - 1) as f64) as f32);
        let stats = ChannelStats {
            rstd: var.iter().map(|v| 1.0 / (v + eps as f64).sqrt()).collect(),
            mean: mean.clone(),
        };
        let mean32 = mean.iter().map(|&m| m as f32).collect();
        (stats, Some(mean32), Some(unbiased.collect()))
    } else {
        let Some((rm, rv)) = running else {
            return Err(TfmError::value(
                OP,
                "evaluation with running statistics needs running_mean and running_var",
            ));
        };
        for (name, s) in [("running_mean", rm), ("running_var", rv)] {
            ensure_shape!(
                s.len() == c,
                OP,
                "{name} has {} values, but the input has {c} channels",
                s.len()
            );
        }
        let stats = ChannelStats {
            mean: rm.iter().map(|&m| m as f64).collect(),
            rstd: rv
                .iter()
                .map(|&v| 1.0 / (v as f64 + eps as f64).sqrt())
                .collect(),
        };
        (stats, None, None)
    };
    let y = batch_norm_forward(
        xv.cpu(OP)?.data(),
        rows,
        c,
        &stats,
        Tensor::cpu_opt(OP, wv.as_ref())?,
        Tensor::cpu_opt(OP, bv.as_ref())?,
    );
    let saved = BatchNormBackward {
        stats: Arc::new(stats),
        weight: wv,
        keep: keep.map(Arc::new),
        batch: use_batch_stats,
        has_weight: weight.is_some(),
        has_bias: bias.is_some(),
        x: xv.clone(),
    };
    Ok(BatchNormOutput {
        y: Var::from_op(Tensor::new(y, xv.shape())?, inputs, saved),
        batch_mean,
        batch_var,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::ops::test_support::*;

    const EPS: f32 = 1e-5;

    /// f64 reference over the kept rows (`batch`), or with the given `(mean, var)`.
    fn reference(
        x: &[f64],
        c: usize,
        keep: &[bool],
        w: &[f64],
        b: &[f64],
        fixed: Option<(&[f64], &[f64])>,
    ) -> Vec<f64> {
        let rows = x.len() / c;
        let mut out = vec![0.0; x.len()];
        for j in 0..c {
            let (mean, var) = match fixed {
                Some((m, v)) => (m[j], v[j]),
                None => {
                    let col: Vec<f64> = (0..rows)
                        .filter(|&r| keep[r])
                        .map(|r| x[r * c + j])
                        .collect();
                    let m = col.iter().sum::<f64>() / col.len() as f64;
                    let v = col.iter().map(|v| (v - m).powi(2)).sum::<f64>() / col.len() as f64;
                    (m, v)
                }
            };
            for r in 0..rows {
                out[r * c + j] = (x[r * c + j] - mean) / (var + EPS as f64).sqrt() * w[j] + b[j];
            }
        }
        out
    }

    /// Forward vs the f64 reference (1e-5); gradients vs finite differences of it (h = 1e-3,
    /// 1e-4 relative and absolute: f32 sums of O(rows) terms of size O(1)).
    fn check(rows: usize, c: usize, masked: bool, batch: bool, seed: u64) {
        let n = rows * c;
        let xd = rand_vec(seed, n, -2.0, 2.0);
        let (wd, bd) = (
            rand_vec(seed + 1, c, 0.5, 1.5),
            rand_vec(seed + 2, c, -0.5, 0.5),
        );
        let keep: Vec<bool> = (0..rows).map(|r| !masked || r % 3 != 1).collect();
        let (rm, rv) = (
            rand_vec(seed + 3, c, -0.5, 0.5),
            rand_vec(seed + 4, c, 0.5, 2.0),
        );
        let (x, w, b) = (
            leaf(xd.clone(), &[rows, c]),
            leaf(wd.clone(), &[c]),
            leaf(bd.clone(), &[c]),
        );
        let out = batch_norm(
            &x,
            masked.then(|| keep.clone()),
            Some(&w),
            Some(&b),
            Some((&rm, &rv)),
            batch,
            EPS,
        )
        .unwrap();
        let (x64, w64, b64) = (to_f64(&xd), to_f64(&wd), to_f64(&bd));
        let (rm64, rv64) = (to_f64(&rm), to_f64(&rv));
        let fixed = (!batch).then_some((&rm64[..], &rv64[..]));
        let want = reference(&x64, c, &keep, &w64, &b64, fixed);
        assert_close("forward", out.y.value().data(), &want, 1e-5, 1e-5);
        if batch {
            // The unbiased variance of each kept column.
            let k = keep.iter().filter(|&&k| k).count() as f64;
            let var: Vec<f64> = (0..c)
                .map(|j| {
                    let col: Vec<f64> = (0..rows)
                        .filter(|&r| keep[r])
                        .map(|r| x64[r * c + j])
                        .collect();
                    let m = col.iter().sum::<f64>() / k;
                    col.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (k - 1.0)
                })
                .collect();
            assert_close(
                "unbiased var",
                out.batch_var.as_ref().unwrap(),
                &var,
                1e-6,
                1e-6,
            );
        }
        let g = rand_vec(seed + 5, n, -1.0, 1.0);
        let g64 = to_f64(&g);
        let got = grads(&out.y, &g, &[&x, &w, &b]);
        let loss =
            |x: &[f64], w: &[f64], b: &[f64]| dot(&g64, &reference(x, c, &keep, w, b, fixed));
        let h = 1e-3;
        let fd_x = finite_diff(&x64, h, |p| loss(p, &w64, &b64));
        assert_close("dx", &got[0], &fd_x, 1e-4, 1e-4);
        let fd_w = finite_diff(&w64, h, |p| loss(&x64, p, &b64));
        assert_close("dweight", &got[1], &fd_w, 1e-4, 1e-4);
        let fd_b = finite_diff(&b64, h, |p| loss(&x64, &w64, p));
        assert_close("dbias", &got[2], &fd_b, 1e-4, 1e-4);
    }

    #[test]
    fn matches_reference_on_odd_shapes() {
        let mut seed = 7;
        for &rows in &[3, 17, 127] {
            for &c in &[1, 3, 17, 127] {
                for (masked, batch) in [(false, true), (true, true), (false, false)] {
                    // Two kept rows of three make a near-zero variance in some channel: a
                    // gradient of size 1/σ that finite differences cannot resolve.
                    if masked && rows == 3 {
                        continue;
                    }
                    check(rows, c, masked, batch, seed);
                    seed += 6;
                }
            }
        }
    }

    #[test]
    fn gradients_do_not_depend_on_thread_count() {
        let (rows, c) = (500, 300);
        let x = Tensor::new(rand_vec(3, rows * c, -1.0, 1.0), &[rows, c]).unwrap();
        let run = || {
            let (xv, w) = (Var::leaf(x.clone(), true), leaf(vec![1.0; c], &[c]));
            let out = batch_norm(&xv, None, Some(&w), None, None, true, EPS).unwrap();
            grads(&out.y, &rand_vec(4, rows * c, -1.0, 1.0), &[&xv, &w])
        };
        assert_eq!(with_threads(1, run), with_threads(2, run));
    }

    #[test]
    fn errors() {
        let x = leaf(vec![0.0; 6], &[2, 3]);
        let kind = |r: Result<BatchNormOutput>| r.err().unwrap().kind;
        let bad = leaf(vec![1.0; 2], &[2]);
        assert_eq!(
            kind(batch_norm(&x, None, Some(&bad), None, None, true, EPS)),
            ErrorKind::Shape
        );
        assert_eq!(
            kind(batch_norm(
                &leaf(vec![0.0; 3], &[3]),
                None,
                None,
                None,
                None,
                true,
                EPS
            )),
            ErrorKind::Shape
        );
        assert_eq!(
            kind(batch_norm(
                &x,
                Some(vec![true]),
                None,
                None,
                None,
                true,
                EPS
            )),
            ErrorKind::Shape
        );
        // One value per channel in training; a mask that keeps one row is the same case.
        let one = leaf(vec![0.0; 3], &[1, 3]);
        assert_eq!(
            kind(batch_norm(&one, None, None, None, None, true, EPS)),
            ErrorKind::Value
        );
        assert_eq!(
            kind(batch_norm(
                &x,
                Some(vec![true, false]),
                None,
                None,
                None,
                true,
                EPS
            )),
            ErrorKind::Value
        );
        assert_eq!(
            kind(batch_norm(&x, None, None, None, None, false, EPS)),
            ErrorKind::Value
        );
        assert_eq!(
            kind(batch_norm(&x, None, None, None, None, true, -1.0)),
            ErrorKind::Value
        );
        let short = [0.0f32; 2];
        assert_eq!(
            kind(batch_norm(
                &x,
                None,
                None,
                None,
                Some((&short, &short)),
                false,
                EPS
            )),
            ErrorKind::Shape
        );
        // Evaluation with running statistics works on a batch of one.
        let rs = [0.0f32; 3];
        let ones = [1.0f32; 3];
        assert!(batch_norm(&one, None, None, None, Some((&rs, &ones)), false, EPS).is_ok());
    }
}
