//! Layer normalization over the last axis, the fused residual form `layer_norm(x + residual)`,
//! and RMS normalization (Zhang & Sennrich 2019), which is the same computation without
//! centring: one kernel serves both, so their backward passes cannot drift apart.
//!
//! Forward: `x (…, D)` (plus `residual (…, D)`), optional `weight (D,)` and `bias (D,)` →
//! `y (…, D)`, `y = (s − mean)/√(var + eps) · weight + bias` with `s = x (+ residual)` and the
//! biased variance, as PyTorch; RMS norm takes `mean = 0`, so `var` is the mean square and there
//! is no bias. Saves `s`, the weight, and per row the mean and 1/std, computed in f64 (two passes
//! over a row that is already in cache) so that rows with a large mean relative to their spread
//! keep full f32 accuracy; the per-element passes run in f32 around them ([`Normalizer`]).

#[cfg(feature = "wgpu")]
use super::elementwise::{binary_forward, BinaryOp};
use super::rows::{column_sums, for_each_row, rows_mut, sums_f64};
use crate::autograd::{Backward, Var};
use crate::cpu::pool::SendPtr;
use crate::cpu::simd::simd_kernel;
use crate::error::{Result, TfmError};
use crate::tensor::{shape_str, Device, Tensor};
use crate::{ensure_shape, ensure_value};
use std::sync::Arc;

/// Per-row statistics saved for backward.
#[derive(Clone, Copy, Debug, Default)]
pub struct RowStats {
    pub mean: f64,
    pub rstd: f64,
}

/// `x̂ = (v − mean)·rstd` in f32 arithmetic (twice the lanes of f64): the mean as a sum of
/// two f32s, so that `v − hi` is exact for values near a large mean (Sterbenz) and `lo` then
/// corrects it. About 2 ulp of x̂, where the f64 products gave 0.5.
#[derive(Clone, Copy)]
struct Normalizer {
    hi: f32,
    lo: f32,
    r: f32,
}

impl Normalizer {
    #[inline(always)]
    fn new(st: RowStats) -> Normalizer {
        let hi = st.mean as f32;
        Normalizer {
            hi,
            lo: (st.mean - hi as f64) as f32,
            r: st.rstd as f32,
        }
    }

    #[inline(always)]
    fn apply(self, v: f32) -> f32 {
        ((v - self.hi) - self.lo) * self.r
    }
}

simd_kernel! {
    /// Normalizes one row `s (D,)` into `y (D,)` and returns its statistics; with a residual
    /// `res`, first `s ← x + res` (`s` is then written, `x` read) in the same kernel call.
    fn normalize_row(
        x: &[f32],
        res_s: Option<(&[f32], &mut [f32])>,
        y: &mut [f32],
        weight: Option<&[f32]>,
        bias: Option<&[f32]>,
        eps: f32,
        center: bool,
    ) -> RowStats {
        let d = y.len();
        let s: &[f32] = match res_s {
            Some((res, s)) => {
                for ((s, &a), &b) in s.iter_mut().zip(x).zip(res) {
                    *s = a + b;
                }
                s
            }
            None => x,
        };
        let s = &s[..d];
        let n = d as f64;
        let mean = if center {
            let [sum] = sums_f64([s], |[v]| [v as f64]);
            sum / n
        } else {
            0.0
        };
        let [sq] = sums_f64([s], |[v]| [(v as f64 - mean) * (v as f64 - mean)]);
        let rstd = 1.0 / (sq / n + eps as f64).sqrt();
        let stats = RowStats { mean, rstd };
        let norm = Normalizer::new(stats);
        // Separate loops per weight/bias presence, so that each is a plain vectorizable map.
        let xhat = |v: f32| norm.apply(v);
        match (weight, bias) {
            (Some(w), Some(b)) => {
                let (w, b) = (&w[..d], &b[..d]);
                for j in 0..d {
                    y[j] = xhat(s[j]) * w[j] + b[j];
                }
            }
            _ => {
                for (j, (o, &v)) in y.iter_mut().zip(s).enumerate() {
                    *o = xhat(v) * weight.map_or(1.0, |w| w[j]) + bias.map_or(0.0, |b| b[j]);
                }
            }
        }
        stats
    }
}

/// The output of [`layer_norm_forward`].
pub struct LayerNormForward {
    /// `(rows, D)`.
    pub y: Vec<f32>,
    /// `x + residual` `(rows, D)`, only when a residual was given.
    pub sum: Option<Vec<f32>>,
    /// `(rows,)`.
    pub stats: Vec<RowStats>,
}

/// Forward kernel: `x (rows, D)`, optional `residual (rows, D)` added first (in the same pass
/// over each row), optional `weight (D,)`, `bias (D,)`; `center` false gives RMS norm.
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_forward(
    x: &[f32],
    residual: Option<&[f32]>,
    rows: usize,
    d: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
    center: bool,
) -> LayerNormForward {
    let mut y = crate::cpu::alloc::output(rows * d);
    let mut sum = residual.map(|_| crate::cpu::alloc::output(rows * d));
    let mut stats = vec![RowStats::default(); rows];
    let sum_rows: Vec<Option<&mut [f32]>> = match sum.as_mut() {
        Some(s) => rows_mut(s, rows, d).into_iter().map(Some).collect(),
        None => (0..rows).map(|_| None).collect(),
    };
    let items: Vec<_> = rows_mut(&mut y, rows, d)
        .into_iter()
        .zip(sum_rows)
        .zip(stats.iter_mut())
        .collect();
    for_each_row(items, d, |r, ((y, sum), st)| {
        let res_s = residual.zip(sum).map(|(res, s)| (&res[r * d..][..d], s));
        *st = normalize_row(&x[r * d..][..d], res_s, y, weight, bias, eps, center);
    });
    LayerNormForward { y, sum, stats }
}

/// One row's terms of the parameter gradients, `Σ g ∘ ŝ` into `aw` and `Σ g` into `ab`: the
/// products in f32 (x̂ through the two-part mean), the sums in f64.
#[inline(always)]
fn add_param_terms(aw: &mut [f64], ab: &mut [f64], g: &[f32], s: &[f32], norm: Normalizer) {
    for (((aw, ab), &g), &s) in aw.iter_mut().zip(ab.iter_mut()).zip(g).zip(s) {
        *aw += (g * norm.apply(s)) as f64;
        *ab += g as f64;
    }
}

simd_kernel! {
    /// One row of [`layer_norm_backward_input`]: `out`, `g`, `s` (and `weight`) of length D;
    /// with `params` (2·D, f64), also adds the row's parameter-gradient terms
    /// ([`add_param_terms`]) while the row is in cache.
    fn input_grad_row(
        out: &mut [f32],
        g: &[f32],
        s: &[f32],
        st: RowStats,
        weight: Option<&[f32]>,
        center: bool,
        params: Option<&mut [f64]>,
    ) {
        let d = out.len();
        let (g, s) = (&g[..d], &s[..d]);
        // A unit weight when absent, so that one loop serves both cases.
        let ones;
        let w = match weight {
            Some(w) => &w[..d],
            None => {
                ones = vec![1.0f32; d];
                &ones[..]
            }
        };
        // The products in f32 (x̂ through the two-part mean, as below), the sums in f64: the
        // rounding of each f32 product is far below the sums' f32 result, and f64 products
        // cost half the lanes plus a conversion per operand.
        let norm = Normalizer::new(st);
        let [sum_g, sum_gs] = sums_f64([g, w, s], |[g, w, s]| {
            let gh = g * w;
            [gh as f64, (gh * norm.apply(s)) as f64]
        });
        // Without centring the mean does not depend on the input, so its gradient term drops.
        let mean_g = if center { sum_g / d as f64 } else { 0.0 } as f32;
        let mean_gs = (sum_gs / d as f64) as f32;
        for j in 0..d {
            out[j] = norm.r * ((g[j] * w[j] - mean_g) - norm.apply(s[j]) * mean_gs);
        }
        if let Some(part) = params {
            let (aw, ab) = part.split_at_mut(d);
            add_param_terms(aw, ab, g, s, norm);
        }
    }
}

/// Backward kernel for the input: `g (rows, D)`, the saved input `s (rows, D)`, stats and
/// weight → `ds (rows, D)` = `rstd · (ĝ − mean(ĝ) − ŝ · mean(ĝ ∘ ŝ))` with `ĝ = g ∘ weight` and
/// `ŝ` the normalized input; both means in f64. RMS norm (`center` false) drops `mean(ĝ)`.
pub fn layer_norm_backward_input(
    g: &[f32],
    s: &[f32],
    stats: &[RowStats],
    d: usize,
    weight: Option<&[f32]>,
    center: bool,
) -> Vec<f32> {
    let rows = stats.len();
    let mut ds = crate::cpu::alloc::output(rows * d);
    for_each_row(rows_mut(&mut ds, rows, d), d, |r, out| {
        input_grad_row(
            out,
            &g[r * d..][..d],
            &s[r * d..][..d],
            stats[r],
            weight,
            center,
            None,
        )
    });
    ds
}

/// [`layer_norm_backward_input`] and [`layer_norm_backward_params`] in one pass over `g` and
/// `s` (each row's parameter terms added while it is in cache), with the same results bit for
/// bit: `(ds, dweight, dbias)`.
pub fn layer_norm_backward(
    g: &[f32],
    s: &[f32],
    stats: &[RowStats],
    d: usize,
    weight: Option<&[f32]>,
    center: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let rows = stats.len();
    let mut ds = crate::cpu::alloc::output(rows * d);
    if d == 0 {
        return (ds, Vec::new(), Vec::new());
    }
    let out = SendPtr(ds.as_mut_ptr());
    let total = column_sums(rows, 2 * d, |range, part| {
        for r in range {
            // SAFETY: row r of ds belongs to this chunk of rows alone.
            let row = unsafe { out.slice(r * d, d) };
            let (g, s) = (&g[r * d..][..d], &s[r * d..][..d]);
            input_grad_row(row, g, s, stats[r], weight, center, Some(&mut *part));
        }
    });
    let (dw, db) = total.split_at(d);
    (ds, narrow(dw), narrow(db))
}

fn narrow(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

simd_kernel! {
    /// One chunk of rows of [`layer_norm_backward_params`]: `part` (2·D, f64) gets
    /// `[Σ g ∘ ŝ, Σ g]` over the rows of `g` and `s` (whole rows of D), in row order.
    fn param_grad_rows(part: &mut [f64], g: &[f32], s: &[f32], stats: &[RowStats]) {
        let (aw, ab) = part.split_at_mut(part.len() / 2);
        let d = aw.len();
        for ((g, s), st) in g.chunks_exact(d).zip(s.chunks_exact(d)).zip(stats) {
            add_param_terms(aw, ab, g, s, Normalizer::new(*st));
        }
    }
}

/// Backward kernel for the parameters: `(dweight, dbias)`, each `(D,)`, with
/// `dweight = Σ_rows g ∘ ŝ` and `dbias = Σ_rows g`, in f64, over whole rows in fixed chunks
/// ([`column_sums`]).
pub fn layer_norm_backward_params(
    g: &[f32],
    s: &[f32],
    stats: &[RowStats],
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    if d == 0 {
        return (Vec::new(), Vec::new());
    }
    let total = column_sums(stats.len(), 2 * d, |rows, part| {
        let span = rows.start * d..rows.end * d;
        param_grad_rows(part, &g[span.clone()], &s[span], &stats[rows]);
    });
    let (dw, db) = total.split_at(d);
    (narrow(dw), narrow(db))
}

/// The row statistics the forward saved, on the device of the values: f64 on the host (the CPU
/// backward reads them in f64), f32 tensors `(rows,)` on the GPU.
enum SavedStats {
    Host(Arc<Vec<RowStats>>),
    #[cfg(feature = "wgpu")]
    Gpu {
        mean: crate::gpu::GpuTensor,
        rstd: crate::gpu::GpuTensor,
    },
}

struct LayerNormBackward {
    name: &'static str,
    /// The normalized input `s = x (+ residual)`.
    s: Tensor,
    stats: SavedStats,
    weight: Option<Tensor>,
    has_residual: bool,
    has_bias: bool,
    center: bool,
}

impl LayerNormBackward {
    fn input_grad(&self, g: &Tensor) -> Result<Tensor> {
        match &self.stats {
            SavedStats::Host(stats) => {
                let d = self.s.shape().last().copied().unwrap_or(1);
                let w = Tensor::cpu_opt(self.name, self.weight.as_ref())?;
                let (g, s) = (g.cpu(self.name)?, self.s.cpu(self.name)?);
                let ds = layer_norm_backward_input(g.data(), s.data(), stats, d, w, self.center);
                Tensor::new(ds, s.shape())
            }
            #[cfg(feature = "wgpu")]
            SavedStats::Gpu { mean, rstd } => {
                Ok(crate::gpu::ops::layer_norm::backward_input_tensor(
                    g.gpu(self.name)?,
                    self.s.gpu(self.name)?,
                    mean,
                    rstd,
                    self.weight.as_ref().map(|w| w.gpu(self.name)).transpose()?,
                )?
                .into())
            }
        }
    }

    fn param_grads(&self, g: &Tensor) -> Result<(Tensor, Tensor)> {
        match &self.stats {
            SavedStats::Host(stats) => {
                let d = self.s.shape().last().copied().unwrap_or(1);
                let (g, s) = (g.cpu(self.name)?, self.s.cpu(self.name)?);
                let (dw, db) = layer_norm_backward_params(g.data(), s.data(), stats, d);
                Ok((Tensor::new(dw, &[d])?, Tensor::new(db, &[d])?))
            }
            #[cfg(feature = "wgpu")]
            SavedStats::Gpu { mean, rstd } => {
                let (dw, db) = crate::gpu::ops::layer_norm::backward_params_tensors(
                    g.gpu(self.name)?,
                    self.s.gpu(self.name)?,
                    mean,
                    rstd,
                )?;
                Ok((dw.into(), db.into()))
            }
        }
    }

    /// Both gradients: in one pass on the host ([`layer_norm_backward`]), else as above.
    fn input_and_param_grads(&self, g: &Tensor) -> Result<(Tensor, (Tensor, Tensor))> {
        match &self.stats {
            SavedStats::Host(stats) => {
                let d = self.s.shape().last().copied().unwrap_or(1);
                let w = Tensor::cpu_opt(self.name, self.weight.as_ref())?;
                let (g, s) = (g.cpu(self.name)?, self.s.cpu(self.name)?);
                let (ds, dw, db) =
                    layer_norm_backward(g.data(), s.data(), stats, d, w, self.center);
                let params = (Tensor::new(dw, &[d])?, Tensor::new(db, &[d])?);
                Ok((Tensor::new(ds, s.shape())?, params))
            }
            #[cfg(feature = "wgpu")]
            SavedStats::Gpu { .. } => Ok((self.input_grad(g)?, self.param_grads(g)?)),
        }
    }
}

impl Backward for LayerNormBackward {
    fn name(&self) -> &'static str {
        self.name
    }
    fn backward(&self, g: &Tensor, inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        // inputs: x, [residual], [weight], [bias]
        let n_x = 1 + self.has_residual as usize;
        let need_ds = inputs[..n_x].iter().any(Var::requires_grad);
        let need_params = inputs[n_x..].iter().any(Var::requires_grad);
        let (ds, params) = match (need_ds, need_params) {
            (true, true) => {
                let (ds, params) = self.input_and_param_grads(g)?;
                (Some(ds), Some(params))
            }
            (true, false) => (Some(self.input_grad(g)?), None),
            (false, true) => (None, Some(self.param_grads(g)?)),
            (false, false) => (None, None),
        };
        let (mut dweight, mut dbias) = (None, None);
        if let Some((dw, db)) = params {
            if self.weight.is_some() {
                dweight = Some(dw);
            }
            if self.has_bias {
                dbias = Some(db);
            }
        }
        Ok(grads_by_input(
            inputs.len(),
            self.has_residual,
            ds,
            dweight,
            dbias,
        ))
    }
}

/// The gradients in the order of the op's inputs, `x, [residual], [weight], [bias]`: `ds` for `x` and for the residual (which enters the sum
/// unchanged), then the parameter gradients that were computed; `None` for the rest.
fn grads_by_input(
    n_inputs: usize,
    has_residual: bool,
    ds: Option<Tensor>,
    dweight: Option<Tensor>,
    dbias: Option<Tensor>,
) -> Vec<Option<Tensor>> {
    let mut grads = vec![ds; 1 + has_residual as usize];
    grads.extend(dweight.map(Some));
    grads.extend(dbias.map(Some));
    grads.resize(n_inputs, None);
    grads
}

fn layer_norm_var(
    op: &'static str,
    x: &Var,
    residual: Option<&Var>,
    weight: Option<&Var>,
    bias: Option<&Var>,
    eps: f32,
    center: bool,
) -> Result<Var> {
    let xv = x.value();
    ensure_shape!(
        xv.ndim() >= 1,
        op,
        "the input must have at least one dimension, got a scalar"
    );
    ensure_value!(
        eps.is_finite() && eps >= 0.0,
        op,
        "eps must be finite and non-negative, got {eps}"
    );
    let (rows, d) = xv.rows_cols();
    let rv = residual.map(Var::value);
    if let Some(r) = &rv {
        ensure_shape!(
            r.shape() == xv.shape(),
            op,
            "the residual's shape {} differs from the input's shape {}",
            shape_str(r.shape()),
            shape_str(xv.shape())
        );
    }
    let (wv, bv) = (weight.map(Var::value), bias.map(Var::value));
    for (name, p) in [("weight", &wv), ("bias", &bv)] {
        if let Some(p) = p {
            if p.shape() != [d] {
                return Err(TfmError::shape(
                    op,
                    format!(
                        "{name} has shape {}, but the input's last dimension needs ({d},)",
                        shape_str(p.shape())
                    ),
                ));
            }
        }
    }
    let inputs: Vec<Var> = [Some(x), residual, weight, bias]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let device = Device::common(op, inputs.iter().map(Var::device))?;
    #[cfg(feature = "wgpu")]
    if device == Device::Gpu {
        if !center {
            return Err(TfmError::device(
                op,
                "has no GPU kernel yet; move the tensors to the CPU with .to(\"cpu\")",
            ));
        }
        let s = match &rv {
            Some(r) => binary_forward(BinaryOp::Add, &xv, r)?,
            None => xv,
        };
        let (y, mean, rstd) = crate::gpu::ops::layer_norm::forward_tensors(
            s.gpu(op)?,
            wv.as_ref().map(|t| t.gpu(op)).transpose()?,
            bv.as_ref().map(|t| t.gpu(op)).transpose()?,
            eps,
        )?;
        let y = Tensor::from(y);
        let saved = LayerNormBackward {
            name: op,
            s,
            stats: SavedStats::Gpu { mean, rstd },
            weight: wv,
            has_residual: residual.is_some(),
            has_bias: bias.is_some(),
            center,
        };
        return Ok(Var::from_op(y, inputs, saved));
    }
    #[cfg(not(feature = "wgpu"))]
    let _ = device;
    let fwd = layer_norm_forward(
        xv.cpu(op)?.data(),
        Tensor::cpu_opt(op, rv.as_ref())?,
        rows,
        d,
        Tensor::cpu_opt(op, wv.as_ref())?,
        Tensor::cpu_opt(op, bv.as_ref())?,
        eps,
        center,
    );
    let y = Tensor::new(fwd.y, xv.shape())?;
    let s = match fwd.sum {
        Some(sum) => Tensor::new(sum, xv.shape())?,
        None => xv,
    };
    let saved = LayerNormBackward {
        name: op,
        s,
        stats: SavedStats::Host(Arc::new(fwd.stats)),
        weight: wv,
        has_residual: residual.is_some(),
        has_bias: bias.is_some(),
        center,
    };
    Ok(Var::from_op(y, inputs, saved))
}

/// Layer norm over the last axis of `x (…, D)` with optional `weight (D,)` and `bias (D,)`.
pub fn layer_norm(x: &Var, weight: Option<&Var>, bias: Option<&Var>, eps: f32) -> Result<Var> {
    layer_norm_var("layer_norm", x, None, weight, bias, eps, true)
}

/// RMS norm over the last axis of `x (…, D)`: `x / √(mean(x²) + eps) · weight`, with an optional
/// `weight (D,)` (PyTorch's `rms_norm`; Llama's normalization).
pub fn rms_norm(x: &Var, weight: Option<&Var>, eps: f32) -> Result<Var> {
    layer_norm_var("rms_norm", x, None, weight, None, eps, false)
}

/// `layer_norm(x + residual)` in one pass per row; `x` and `residual` must have one shape, and
/// both receive the same gradient.
pub fn add_layer_norm(
    x: &Var,
    residual: &Var,
    weight: Option<&Var>,
    bias: Option<&Var>,
    eps: f32,
) -> Result<Var> {
    layer_norm_var("add_layer_norm", x, Some(residual), weight, bias, eps, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::ops::test_support::*;

    const EPS: f32 = 1e-5;

    /// f64 reference: layer norm of `x + r` row by row.
    fn reference(x: &[f64], r: &[f64], w: &[f64], b: &[f64], d: usize) -> Vec<f64> {
        reference_norm(x, r, w, b, d, true)
    }

    /// f64 reference: layer norm (or, without `center`, RMS norm) of `x + r` row by row.
    fn reference_norm(
        x: &[f64],
        r: &[f64],
        w: &[f64],
        b: &[f64],
        d: usize,
        center: bool,
    ) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len());
        for (xr, rr) in x.chunks(d).zip(r.chunks(d)) {
            let s: Vec<f64> = xr.iter().zip(rr).map(|(a, b)| a + b).collect();
            let mean = if center {
                s.iter().sum::<f64>() / d as f64
            } else {
                0.0
            };
            let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            let rstd = 1.0 / (var + EPS as f64).sqrt();
            out.extend(
                s.iter()
                    .enumerate()
                    .map(|(j, v)| (v - mean) * rstd * w[j] + b[j]),
            );
        }
        out
    }

    /// Forward vs the f64 reference (1e-5 relative); every gradient vs finite differences of it
    /// (h = 1e-3 on O(1) data; 1e-4 relative + 1e-4 absolute, as the f32 gradients sum O(D)
    /// terms of size O(1) and the differences carry O(h²) truncation error).
    fn check(rows: usize, d: usize, fused: bool, seed: u64) {
        let n = rows * d;
        let (xd, rd) = (
            rand_vec(seed, n, -2.0, 2.0),
            rand_vec(seed + 1, n, -1.0, 1.0),
        );
        let (wd, bd) = (
            rand_vec(seed + 2, d, 0.5, 1.5),
            rand_vec(seed + 3, d, -0.5, 0.5),
        );
        let (x, r) = (leaf(xd.clone(), &[rows, d]), leaf(rd.clone(), &[rows, d]));
        let (w, b) = (leaf(wd.clone(), &[d]), leaf(bd.clone(), &[d]));
        let y = if fused {
            add_layer_norm(&x, &r, Some(&w), Some(&b), EPS)
        } else {
            layer_norm(&x, Some(&w), Some(&b), EPS)
        }
        .unwrap();
        let r64 = if fused { to_f64(&rd) } else { vec![0.0; n] };
        let (x64, w64, b64) = (to_f64(&xd), to_f64(&wd), to_f64(&bd));
        assert_close(
            "forward",
            y.value().data(),
            &reference(&x64, &r64, &w64, &b64, d),
            1e-5,
            1e-5,
        );

        let g = rand_vec(seed + 4, n, -1.0, 1.0);
        let g64 = to_f64(&g);
        let got = grads(&y, &g, &[&x, &w, &b]);
        let loss = |x: &[f64], w: &[f64], b: &[f64]| dot(&g64, &reference(x, &r64, w, b, d));
        let h = 1e-3;
        assert_close(
            "dx",
            &got[0],
            &finite_diff(&x64, h, |p| loss(p, &w64, &b64)),
            1e-4,
            1e-4,
        );
        assert_close(
            "dweight",
            &got[1],
            &finite_diff(&w64, h, |p| loss(&x64, p, &b64)),
            1e-4,
            1e-4,
        );
        assert_close(
            "dbias",
            &got[2],
            &finite_diff(&b64, h, |p| loss(&x64, &w64, p)),
            1e-4,
            1e-4,
        );
        if fused {
            assert_eq!(
                r.grad().unwrap().data(),
                &got[0][..],
                "residual gets the input's gradient"
            );
        }
    }

    #[test]
    fn matches_reference_on_odd_shapes() {
        let mut seed = 100;
        for &rows in &[1, 3, 17] {
            for &d in &[1, 3, 17, 127] {
                for fused in [false, true] {
                    check(rows, d, fused, seed);
                    seed += 5;
                }
            }
        }
        // More rows than one partial sum of the parameter gradients holds (32 + 32 + 11).
        for &d in &[3, 17] {
            check(75, d, false, seed);
            seed += 5;
        }
    }

    /// RMS norm: forward vs the f64 reference (1e-5 relative), dx and dweight vs finite
    /// differences of it (tolerances as in [`check`]); rows with a mean far from zero, where
    /// forgetting that RMS norm does not centre would show.
    #[test]
    fn rms_norm_matches_reference_on_odd_shapes() {
        let mut seed = 300;
        for &rows in &[1, 3, 17] {
            for &d in &[1, 3, 17, 127] {
                let n = rows * d;
                let (xd, wd) = (
                    rand_vec(seed, n, -1.0, 3.0),
                    rand_vec(seed + 1, d, 0.5, 1.5),
                );
                seed += 3;
                let (x, w) = (leaf(xd.clone(), &[rows, d]), leaf(wd.clone(), &[d]));
                let y = rms_norm(&x, Some(&w), EPS).unwrap();
                let (x64, w64, zeros) = (to_f64(&xd), to_f64(&wd), vec![0.0; n]);
                let refn = |x: &[f64], w: &[f64]| reference_norm(x, &zeros, w, &zeros, d, false);
                assert_close("forward", y.value().data(), &refn(&x64, &w64), 1e-5, 1e-5);
                let g = rand_vec(seed + 2, n, -1.0, 1.0);
                let g64 = to_f64(&g);
                let got = grads(&y, &g, &[&x, &w]);
                let loss = |x: &[f64], w: &[f64]| dot(&g64, &refn(x, w));
                let h = 1e-3;
                let want_dx = finite_diff(&x64, h, |p| loss(p, &w64));
                assert_close("dx", &got[0], &want_dx, 1e-4, 1e-4);
                let want_dw = finite_diff(&w64, h, |p| loss(&x64, p));
                assert_close("dweight", &got[1], &want_dw, 1e-4, 1e-4);
            }
        }
        let bad = leaf(vec![1.0; 2], &[2]);
        let x = leaf(vec![0.0; 6], &[2, 3]);
        assert_eq!(
            rms_norm(&x, Some(&bad), EPS).err().unwrap().kind,
            ErrorKind::Shape
        );
    }

    /// The one-pass backward (both gradients) gives the bits of the two separate passes, on
    /// row counts on both sides of a column-sum chunk and widths off the vector width.
    #[test]
    fn one_pass_backward_equals_the_separate_passes() {
        for (rows, d) in [(1, 1), (3, 17), (33, 127), (70, 5)] {
            let n = rows * d;
            let (x, g) = (rand_vec(1, n, -2.0, 2.0), rand_vec(2, n, -1.0, 1.0));
            let w = rand_vec(3, d, 0.5, 1.5);
            for (weight, center) in [(Some(&w[..]), true), (None, true), (Some(&w[..]), false)] {
                let f = layer_norm_forward(&x, None, rows, d, weight, None, EPS, center);
                let (ds, dw, db) = layer_norm_backward(&g, &x, &f.stats, d, weight, center);
                let want_ds = layer_norm_backward_input(&g, &x, &f.stats, d, weight, center);
                let (want_dw, want_db) = layer_norm_backward_params(&g, &x, &f.stats, d);
                assert_eq!(ds, want_ds, "ds, {rows}x{d}");
                assert_eq!((dw, db), (want_dw, want_db), "params, {rows}x{d}");
            }
        }
    }

    #[test]
    fn without_affine_parameters() {
        let xd = rand_vec(1, 3 * 5, -1.0, 1.0);
        let x = leaf(xd.clone(), &[3, 5]);
        let y = layer_norm(&x, None, None, EPS).unwrap();
        let want = reference(&to_f64(&xd), &[0.0; 15], &[1.0; 5], &[0.0; 5], 5);
        assert_close("forward", y.value().data(), &want, 1e-5, 1e-5);
        let gx = &grads(&y, &[1.0; 15], &[&x])[0];
        // y sums to 0 per row whatever x is, so a constant output gradient gives dx = 0.
        assert_close("dx", gx, &[0.0; 15], 0.0, 1e-5);
    }

    #[test]
    fn large_mean_keeps_accuracy() {
        // f32 single-pass statistics would lose the spread of these rows entirely.
        let xd: Vec<f32> = (0..64).map(|i| 1e4 + (i % 8) as f32 * 0.01).collect();
        let y = layer_norm(&leaf(xd.clone(), &[8, 8]), None, None, EPS).unwrap();
        let want = reference(&to_f64(&xd), &[0.0; 64], &[1.0; 8], &[0.0; 8], 8);
        assert_close("forward", y.value().data(), &want, 1e-5, 1e-5);
    }

    /// Rows of mean 1000 and spread 0.1 (rstd ≈ 35), forward and gradients: the f32 passes
    /// subtract the mean in two parts, which keeps x̂ to a few ulp. Tolerances as in [`check`],
    /// the absolute ones scaled by rstd (the gradients' size), h by the spread.
    #[test]
    fn large_mean_keeps_accuracy_forward_and_backward() {
        let (rows, d) = (3, 17);
        let n = rows * d;
        let xd: Vec<f32> = rand_vec(7, n, -0.05, 0.05)
            .iter()
            .map(|v| 1000.0 + v)
            .collect();
        let (wd, bd) = (rand_vec(8, d, 0.5, 1.5), rand_vec(9, d, -0.5, 0.5));
        let (x, w, b) = (
            leaf(xd.clone(), &[rows, d]),
            leaf(wd.clone(), &[d]),
            leaf(bd.clone(), &[d]),
        );
        let y = layer_norm(&x, Some(&w), Some(&b), EPS).unwrap();
        let (x64, w64, b64, zeros) = (to_f64(&xd), to_f64(&wd), to_f64(&bd), vec![0.0; n]);
        let want = reference(&x64, &zeros, &w64, &b64, d);
        assert_close("forward", y.value().data(), &want, 1e-5, 1e-5);
        let g = rand_vec(10, n, -1.0, 1.0);
        let g64 = to_f64(&g);
        let got = grads(&y, &g, &[&x, &w]);
        let loss = |x: &[f64], w: &[f64]| dot(&g64, &reference(x, &zeros, w, &b64, d));
        let want_dx = finite_diff(&x64, 1e-5, |p| loss(p, &w64));
        assert_close("dx", &got[0], &want_dx, 1e-4, 35.0 * 1e-4);
        let want_dw = finite_diff(&w64, 1e-3, |p| loss(&x64, p));
        assert_close("dweight", &got[1], &want_dw, 1e-4, 1e-4);
    }

    #[test]
    fn parameter_gradients_do_not_depend_on_thread_count() {
        let (rows, d) = (300, 200);
        let x = Tensor::new(rand_vec(3, rows * d, -1.0, 1.0), &[rows, d]).unwrap();
        let run = || {
            let (xv, w) = (Var::leaf(x.clone(), true), leaf(vec![1.0; d], &[d]));
            let y = layer_norm(&xv, Some(&w), None, EPS).unwrap();
            let g = rand_vec(4, rows * d, -1.0, 1.0);
            grads(&y, &g, &[&xv, &w])
        };
        assert_eq!(with_threads(1, run), with_threads(2, run));
    }

    #[test]
    fn errors_and_empty_inputs() {
        let x = leaf(vec![0.0; 6], &[2, 3]);
        let bad = leaf(vec![1.0; 2], &[2]);
        assert_eq!(
            layer_norm(&x, Some(&bad), None, EPS).err().unwrap().kind,
            ErrorKind::Shape
        );
        assert_eq!(
            layer_norm(&x, None, Some(&bad), EPS).err().unwrap().kind,
            ErrorKind::Shape
        );
        assert_eq!(
            add_layer_norm(&x, &leaf(vec![0.0; 3], &[3]), None, None, EPS)
                .err()
                .unwrap()
                .kind,
            ErrorKind::Shape
        );
        assert_eq!(
            layer_norm(&leaf(vec![1.0], &[]), None, None, EPS)
                .err()
                .unwrap()
                .kind,
            ErrorKind::Shape
        );
        assert_eq!(
            layer_norm(&x, None, None, -1.0).err().unwrap().kind,
            ErrorKind::Value
        );
        for shape in [[0usize, 4], [4, 0]] {
            let e = leaf(vec![], &shape);
            let w = leaf(vec![1.0; shape[1]], &[shape[1]]);
            let y = layer_norm(&e, Some(&w), None, EPS).unwrap();
            assert_eq!(y.shape(), shape.to_vec());
            let got = grads(&y, &[], &[&e, &w]);
            assert!(got[0].is_empty());
            assert!(got[1].iter().all(|&v| v == 0.0));
        }
    }
}
