//! Softmax and log-softmax along the last axis, with an optional additive mask.
//!
//! Forward: `x (…, C)`, `mask` broadcastable to `x`'s shape → `y (…, C)`; both save only their
//! output `y`. A row whose every entry is −inf after masking has no distribution: softmax gives
//! zeros there and log-softmax −inf, never NaN, and both pass back a zero gradient.

use super::broadcast::{broadcast_strides, row_offset};
use super::rows::{
    copy_row_max, exp_fast, exp_sum, for_each_row, lane_sum, row_max, rows_mut, sums_f64, BLOCK,
};
use crate::autograd::{Backward, Var};
use crate::cpu::simd::simd_kernel;
use crate::error::{Result, TfmError};
use crate::tensor::{broadcast_shapes, shape_str, CpuTensor, Placed, Tensor};

/// Reads a mask broadcast to a larger shape one row (last axis) at a time, without expanding
/// it: row `r` of the broadcast mask starts at `offset(r)` and steps by `inner_stride`.
struct BroadcastRows<'a> {
    data: &'a [f32],
    shape: Vec<usize>,
    /// Stride of the mask along each dimension of `shape`; 0 where it broadcasts.
    strides: Vec<usize>,
    inner_stride: usize,
}

impl<'a> BroadcastRows<'a> {
    /// The mask expanded to the input's shape and uploaded (the GPU kernel reads one value per
    /// element).
    #[cfg(feature = "wgpu")]
    fn expanded(&self) -> Result<crate::gpu::GpuTensor> {
        let data = super::broadcast::gather_strided(self.data, 0, &self.shape, &self.strides);
        crate::gpu::GpuTensor::from_host(&data, &self.shape)
    }

    fn new(op: &'static str, mask: &'a CpuTensor, shape: &[usize]) -> Result<Self> {
        let joint = broadcast_shapes(op, shape, mask.shape())?;
        if joint != shape {
            return Err(TfmError::shape(
                op,
                format!(
                    "mask of shape {} does not broadcast to the input's shape {}",
                    shape_str(mask.shape()),
                    shape_str(shape)
                ),
            ));
        }
        let strides = broadcast_strides(mask.shape(), shape);
        let inner_stride = strides.last().copied().unwrap_or(0);
        Ok(BroadcastRows {
            data: mask.data(),
            shape: shape.to_vec(),
            strides,
            inner_stride,
        })
    }

    fn offset(&self, row: usize) -> usize {
        row_offset(row, &self.shape, &self.strides)
    }
}

simd_kernel! {
    /// Softmax (or log-softmax, with `log`) of row `z` in place. A row with no entry above
    /// −inf becomes all zeros (or all −inf).
    pub(crate) fn softmax_row_in_place(z: &mut [f32], log: bool) {
        let m = row_max(z);
        normalize_row(z, m, log);
    }
}

simd_kernel! {
    /// [`softmax_row_in_place`] of a copy of `x` written to `z`: the copy and the maximum in
    /// one pass over `x` (the same bits).
    fn softmax_row_from(x: &[f32], z: &mut [f32], log: bool) {
        let m = copy_row_max(x, z);
        normalize_row(z, m, log);
    }
}

/// The rest of a softmax row once its maximum `m` is known. The exponentials are summed a
/// [`BLOCK`] at a time right after they are written (as [`super::rows::blocked_sum`] would sum them: f32
/// lanes per block, the block totals in f64), while the block is in L1.
#[inline(always)]
fn normalize_row(z: &mut [f32], m: f32, log: bool) {
    if m == f32::NEG_INFINITY {
        z.fill(if log { f32::NEG_INFINITY } else { 0.0 });
        return;
    }
    if log {
        // (z − m) first: exact for the entries near the max, which carry the probability
        // mass.
        let ln_s = exp_sum(z, m).ln() as f32;
        for v in z.iter_mut() {
            *v = (*v - m) - ln_s;
        }
    } else {
        let mut total = 0.0f64;
        for block in z.chunks_mut(BLOCK) {
            for v in block.iter_mut() {
                *v = exp_fast(*v - m);
            }
            total += lane_sum(block);
        }
        let inv = (1.0 / total) as f32;
        for v in z.iter_mut() {
            *v *= inv;
        }
    }
}

simd_kernel! {
    /// One row of the backward: `g`, `y` and `d` of one length. Sums in f64 lanes.
    fn softmax_grad_row(d: &mut [f32], g: &[f32], y: &[f32], log: bool) {
        let n = d.len();
        let (g, y) = (&g[..n], &y[..n]);
        if log {
            // Masked entries' outputs are constants, so their `g` does not enter the sum.
            let [gsum] = sums_f64([g, y], |[g, y]| {
                [if y == f32::NEG_INFINITY { 0.0 } else { g as f64 }]
            });
            let gsum = gsum as f32;
            for ((d, &g), &y) in d.iter_mut().zip(g).zip(y) {
                *d = if y == f32::NEG_INFINITY {
                    0.0
                } else {
                    g - exp_fast(y) * gsum
                };
            }
        } else {
            let [dot] = sums_f64([g, y], |[g, y]| [g as f64 * y as f64]);
            let dot = dot as f32;
            for ((d, &g), &y) in d.iter_mut().zip(g).zip(y) {
                *d = y * (g - dot);
            }
        }
    }
}

/// Forward kernel: `x (…, C)` plus the optional additive `mask` (broadcastable to `x`'s shape;
/// entries must be finite or −inf) → softmax or log-softmax over the last axis, same shape, on
/// `x`'s device. The mask, like token ids, is an argument read on the host whatever the device.
pub fn softmax_forward(
    op: &'static str,
    x: &Tensor,
    mask: Option<&Tensor>,
    log: bool,
) -> Result<Tensor> {
    let host_mask = mask.map(Tensor::to_host).transpose()?;
    let mask = match &host_mask {
        Some(m) => {
            let m = m.cpu(op)?;
            if let Some(i) = m
                .data()
                .iter()
                .position(|v| v.is_nan() || *v == f32::INFINITY)
            {
                return Err(TfmError::non_finite(
                    op,
                    format!("the additive mask holds {} at flat index {i}; entries must be finite or -inf", m.data()[i]),
                ));
            }
            Some(BroadcastRows::new(op, m, x.shape())?)
        }
        None => None,
    };
    let x = match Tensor::place(op, [x])? {
        Placed::Cpu([x]) => x,
        #[cfg(feature = "wgpu")]
        Placed::Gpu([x]) => {
            let mask = mask.as_ref().map(BroadcastRows::expanded).transpose()?;
            return Ok(crate::gpu::ops::softmax::forward_tensor(x, mask.as_ref(), log)?.into());
        }
    };
    let (rows, cols) = x.rows_cols();
    let xd = x.data();
    // A pooled buffer, each row copied by the thread that computes it: a fresh one costs a
    // page fault per 4 KiB, and a serial copy a pass over the input on one thread.
    let mut out = crate::cpu::alloc::output(xd.len());
    for_each_row(rows_mut(&mut out, rows, cols), cols, |r, z| {
        let x = &xd[r * cols..][..cols];
        match &mask {
            Some(m) => {
                let (off, step) = (m.offset(r), m.inner_stride);
                for (j, (v, &xv)) in z.iter_mut().zip(x).enumerate() {
                    *v = xv + m.data[off + j * step];
                }
                softmax_row_in_place(z, log);
            }
            None => softmax_row_from(x, z, log),
        }
    });
    Tensor::new(out, x.shape())
}

/// Backward kernel: `g` and the saved output `y`, both `(…, C)` → `dx (…, C)`.
/// softmax: `dx = y ∘ (g − Σ g∘y)`; log-softmax: `dx = g − exp(y)·Σ g`, where entries with
/// `y = −inf` (masked out, so constant in `x`) get 0 and are left out of `Σ g`: masked entries
/// and fully masked rows get a zero gradient where PyTorch would pass `g` through.
pub fn softmax_backward(g: &Tensor, y: &Tensor, log: bool) -> Result<Tensor> {
    let (g, y) = match Tensor::place("softmax", [g, y])? {
        Placed::Cpu([g, y]) => (g, y),
        #[cfg(feature = "wgpu")]
        Placed::Gpu([g, y]) => {
            return Ok(crate::gpu::ops::softmax::backward_tensor(g, y, log)?.into())
        }
    };
    let (rows, cols) = y.rows_cols();
    let mut dx = crate::cpu::alloc::output(y.numel());
    let (gd, yd) = (g.data(), y.data());
    for_each_row(rows_mut(&mut dx, rows, cols), cols, |r, d| {
        softmax_grad_row(d, &gd[r * cols..][..cols], &yd[r * cols..][..cols], log)
    });
    Tensor::new(dx, y.shape())
}

struct SoftmaxBackward {
    y: Tensor,
    log: bool,
}

impl Backward for SoftmaxBackward {
    fn name(&self) -> &'static str {
        if self.log {
            "log_softmax"
        } else {
            "softmax"
        }
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(softmax_backward(g, &self.y, self.log)?)])
    }
}

fn softmax_var(op: &'static str, x: &Var, mask: Option<&Tensor>, log: bool) -> Result<Var> {
    let y = softmax_forward(op, &x.value(), mask, log)?;
    Ok(Var::from_op(
        y.clone(),
        vec![x.clone()],
        SoftmaxBackward { y, log },
    ))
}

/// Softmax of `x + mask` over the last axis; see the module doc for masked rows.
pub fn softmax(x: &Var, mask: Option<&Tensor>) -> Result<Var> {
    softmax_var("softmax", x, mask, false)
}

/// Log-softmax of `x + mask` over the last axis; see the module doc for masked rows.
pub fn log_softmax(x: &Var, mask: Option<&Tensor>) -> Result<Var> {
    softmax_var("log_softmax", x, mask, true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::ops::test_support::*;

    /// f64 reference: (log-)softmax of `x + mask` row by row; −inf-only rows as documented.
    fn reference(x: &[f64], mask: &[f64], cols: usize, log: bool) -> Vec<f64> {
        let mut out = Vec::with_capacity(x.len());
        for (xr, mr) in x.chunks(cols).zip(mask.chunks(cols)) {
            let z: Vec<f64> = xr.iter().zip(mr).map(|(a, b)| a + b).collect();
            let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            if m == f64::NEG_INFINITY {
                out.extend(z.iter().map(|_| if log { f64::NEG_INFINITY } else { 0.0 }));
                continue;
            }
            let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            out.extend(
                z.iter()
                    .map(|v| if log { v - lse } else { (v - lse).exp() }),
            );
        }
        out
    }

    /// Forward and backward against the f64 reference, and backward against finite differences
    /// of it. Tolerances: forward 1e-5 relative (f32 rounding of O(C) terms summed in f64);
    /// gradients 1e-4 relative + 1e-5 absolute (f32 backward vs differences with h = 1e-4).
    fn check(rows: usize, cols: usize, mask: Option<(Vec<f32>, Vec<usize>)>, log: bool, seed: u64) {
        let xd = rand_vec(seed, rows * cols, -3.0, 3.0);
        let x = leaf(xd.clone(), &[rows, cols]);
        let mask_t = mask.map(|(d, s)| Tensor::new(d, &s).unwrap());
        let full_mask = match &mask_t {
            Some(m) => crate::ops::broadcast::broadcast_to("t", m, &[rows, cols])
                .unwrap()
                .data()
                .to_vec(),
            None => vec![0.0; rows * cols],
        };
        let (x64, m64) = (to_f64(&xd), to_f64(&full_mask));
        let y = if log {
            log_softmax(&x, mask_t.as_ref())
        } else {
            softmax(&x, mask_t.as_ref())
        }
        .unwrap();
        let want = reference(&x64, &m64, cols, log);
        assert_close("forward", y.value().data(), &want, 1e-5, 1e-6);

        let w = rand_vec(seed + 1, rows * cols, -1.0, 1.0);
        let gx = &grads(&y, &w, &[&x])[0];
        let w64 = to_f64(&w);
        // Only entries with finite outputs enter the loss: the gradient there is −inf-free.
        let wf: Vec<f64> = w64
            .iter()
            .zip(&want)
            .map(|(&w, &y)| if y.is_finite() { w } else { 0.0 })
            .collect();
        let fd = finite_diff(&x64, 1e-4, |p| {
            let y = reference(p, &m64, cols, log);
            wf.iter()
                .zip(&y)
                .map(|(w, y)| if *w == 0.0 { 0.0 } else { w * y })
                .sum()
        });
        let analytic = analytic_grad(&w64, &want, cols, log);
        assert_close("backward vs analytic", gx, &analytic, 1e-4, 1e-5);
        assert_close("backward vs finite differences", gx, &fd, 1e-4, 1e-5);
    }

    /// The analytic gradient in f64 from the output `y`, zero where `y = −inf`.
    fn analytic_grad(g: &[f64], y: &[f64], cols: usize, log: bool) -> Vec<f64> {
        let mut out = Vec::with_capacity(y.len());
        for (gr, yr) in g.chunks(cols).zip(y.chunks(cols)) {
            if log {
                let gsum: f64 = gr
                    .iter()
                    .zip(yr)
                    .filter(|(_, y)| y.is_finite())
                    .map(|(g, _)| g)
                    .sum();
                out.extend(gr.iter().zip(yr).map(|(g, y)| {
                    if y.is_finite() {
                        g - y.exp() * gsum
                    } else {
                        0.0
                    }
                }));
            } else {
                let d = dot(gr, yr);
                out.extend(gr.iter().zip(yr).map(|(g, y)| y * (g - d)));
            }
        }
        out
    }

    #[test]
    fn matches_reference_on_odd_shapes() {
        let mut seed = 10;
        for &rows in &[1, 3, 17] {
            for &cols in &[1, 3, 17, 127] {
                for log in [false, true] {
                    check(rows, cols, None, log, seed);
                    seed += 2;
                }
            }
        }
    }

    /// The op's row kernel (copy and maximum in one pass) gives the bits of the in-place one
    /// (decoding's), on widths off the vector width and across a sum block, with −inf and NaN.
    #[test]
    fn row_from_a_copy_equals_in_place() {
        for cols in [1, 3, 17, 127, 300, 1000] {
            for special in [None, Some(f32::NEG_INFINITY), Some(f32::NAN)] {
                let mut x = rand_vec(cols as u64, cols, -30.0, 30.0);
                if let Some(v) = special {
                    x[cols / 2] = v;
                }
                for log in [false, true] {
                    let mut want = x.clone();
                    softmax_row_in_place(&mut want, log);
                    let mut got = vec![0.0f32; cols];
                    softmax_row_from(&x, &mut got, log);
                    let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
                    assert_eq!(
                        bits(&got),
                        bits(&want),
                        "cols {cols}, {special:?}, log {log}"
                    );
                }
            }
        }
    }

    #[test]
    fn broadcast_masks_including_fully_masked_rows() {
        let ninf = f32::NEG_INFINITY;
        for log in [false, true] {
            // Per-column mask (C,): columns 0 and 2 masked everywhere.
            check(
                3,
                5,
                Some((vec![ninf, 0.0, ninf, 0.0, -1.5], vec![5])),
                log,
                1,
            );
            // Per-row mask (R, 1): row 1 fully masked.
            check(3, 4, Some((vec![0.0, ninf, 2.0], vec![3, 1])), log, 2);
            // A full (R, C) causal mask.
            let causal: Vec<f32> = (0..17 * 17)
                .map(|i| if i % 17 > i / 17 { ninf } else { 0.0 })
                .collect();
            check(17, 17, Some((causal, vec![17, 17])), log, 3);
        }
        let x = leaf(vec![1.0, 2.0], &[1, 2]);
        let y = softmax(&x, Some(&Tensor::full(&[2], ninf))).unwrap();
        assert_eq!(y.value().data(), &[0.0, 0.0]);
        assert_eq!(grads(&y, &[1.0, 3.0], &[&x])[0], vec![0.0, 0.0]);
    }

    #[test]
    fn mask_broadcasts_over_leading_dims_without_expanding() {
        // (B, H, T, T) scores with a (B, 1, 1, T) padding mask.
        let (b, h, t) = (2, 3, 4);
        let x = Tensor::new(rand_vec(7, b * h * t * t, -2.0, 2.0), &[b, h, t, t]).unwrap();
        let mask = Tensor::new(
            vec![
                0.0,
                0.0,
                f32::NEG_INFINITY,
                0.0,
                0.0,
                0.0,
                0.0,
                f32::NEG_INFINITY,
            ],
            &[b, 1, 1, t],
        )
        .unwrap();
        let y = softmax_forward("softmax", &x, Some(&mask), false).unwrap();
        let full = crate::ops::broadcast::broadcast_to("t", &mask, x.shape()).unwrap();
        let want = reference(&to_f64(x.data()), &to_f64(full.data()), t, false);
        assert_close("forward", y.data(), &want, 1e-5, 1e-6);
    }

    #[test]
    fn exp_fast_is_accurate_to_a_few_ulps() {
        let xs = rand_vec(3, 100_000, -87.0, 88.0)
            .into_iter()
            .chain(rand_vec(4, 10_000, -1.0, 1.0));
        for x in xs {
            let (got, want) = (exp_fast(x) as f64, (x as f64).exp());
            assert!(
                (got - want).abs() <= 2.5e-7 * want,
                "exp({x}) = {got}, want {want}"
            );
        }
        assert_eq!(exp_fast(0.0), 1.0);
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_fast(-100.0), 0.0);
        assert_eq!(exp_fast(89.0), f32::INFINITY);
        assert!(exp_fast(f32::NAN).is_nan());
    }

    #[test]
    fn large_logits_stay_finite() {
        let x = leaf(vec![1e4, -1e4, 0.0, 1e4 - 1.0], &[1, 4]);
        for log in [false, true] {
            let y = if log {
                log_softmax(&x, None)
            } else {
                softmax(&x, None)
            }
            .unwrap();
            assert!(
                y.value().data().iter().all(|v| v.is_finite()),
                "{:?}",
                y.value().data()
            );
            let want = reference(&[1e4, -1e4, 0.0, 1e4 - 1.0], &[0.0; 4], 4, log);
            assert_close("forward", y.value().data(), &want, 1e-5, 1e-6);
        }
    }

    #[test]
    fn large_input_takes_the_parallel_path() {
        let (rows, cols) = (100, 1000);
        let x = Tensor::new(rand_vec(5, rows * cols, -5.0, 5.0), &[rows, cols]).unwrap();
        let y1 = with_threads(1, || softmax_forward("softmax", &x, None, false).unwrap());
        let y2 = with_threads(2, || softmax_forward("softmax", &x, None, false).unwrap());
        assert_eq!(y1.data(), y2.data());
        let want = reference(&to_f64(x.data()), &vec![0.0; rows * cols], cols, false);
        assert_close("forward", y2.data(), &want, 1e-5, 1e-9);
    }

    #[test]
    fn errors_and_empty_inputs() {
        let x = leaf(vec![0.0; 6], &[2, 3]);
        let err = softmax(
            &x,
            Some(&Tensor::new(vec![0.0, f32::NAN, 0.0], &[3]).unwrap()),
        )
        .err()
        .unwrap();
        assert_eq!(err.kind, ErrorKind::NonFinite);
        let err = softmax(&x, Some(&Tensor::zeros(&[2]))).err().unwrap();
        assert_eq!(err.kind, ErrorKind::Shape);
        // A mask may not enlarge the input's shape.
        assert_eq!(
            softmax(&x, Some(&Tensor::zeros(&[4, 2, 3])))
                .err()
                .unwrap()
                .kind,
            ErrorKind::Shape
        );
        for shape in [[0usize, 3], [3, 0]] {
            let e = leaf(vec![], &shape);
            let y = log_softmax(&e, None).unwrap();
            assert_eq!(y.shape(), shape.to_vec());
            assert!(grads(&y, &[], &[&e])[0].is_empty());
        }
    }
}
