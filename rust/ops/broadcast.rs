//! NumPy-style broadcasting, shared by the elementwise ops and the reductions: mapping a
//! function over two broadcast operands, expanding a tensor to a larger shape, and its adjoint,
//! summing a gradient back down to an operand's shape.

use super::rows::{for_each_row, rows_mut, PAR_MIN};
use crate::cpu::simd::simd_kernel;
use crate::error::{Result, TfmError};
use crate::tensor::{broadcast_shapes, contiguous_strides, numel, shape_str, Tensor};
use rayon::prelude::*;

/// Strides (in elements) for reading a tensor of `shape` as if it had `out_shape`: 0 along
/// dimensions that broadcast.
pub(crate) fn broadcast_strides(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let strides = contiguous_strides(shape);
    let offset = out_shape.len() - shape.len();
    (0..out_shape.len())
        .map(|i| {
            if i < offset || shape[i - offset] == 1 {
                0
            } else {
                strides[i - offset]
            }
        })
        .collect()
}

/// Offset into a broadcast operand of the first element of output row `row` (a row is the last
/// dimension of the output).
pub(crate) fn row_offset(row: usize, out_shape: &[usize], strides: &[usize]) -> usize {
    let mut rem = row;
    let mut off = 0;
    for d in (0..out_shape.len().saturating_sub(1)).rev() {
        off += (rem % out_shape[d]) * strides[d];
        rem /= out_shape[d];
    }
    off
}

/// Elements per task of the same-shape fast paths of [`map1`] and [`map2`]; elementwise maps,
/// so the split never changes results.
const CHUNK: usize = 1 << 13;

simd_kernel! {
    /// `o = f(x)` over equally long slices, compiled for the current instruction set, so that
    /// an `f` made of plain arithmetic runs 16 (AVX-512) or 8 (AVX2) lanes wide.
    fn map1_chunk(o: &mut [f32], x: &[f32], f: &impl Fn(f32) -> f32) {
        for (o, &v) in o.iter_mut().zip(x) {
            *o = f(v);
        }
    }
}

simd_kernel! {
    /// `o = f(x, y)` over equally long slices; see [`map1_chunk`].
    fn map2_chunk(o: &mut [f32], x: &[f32], y: &[f32], f: &impl Fn(f32, f32) -> f32) {
        for ((o, &a), &b) in o.iter_mut().zip(x).zip(y) {
            *o = f(a, b);
        }
    }
}

/// `f(a, b)` elementwise over the broadcast shape of `a` and `b`.
pub fn map2(
    op: &'static str,
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Tensor> {
    let out_shape = broadcast_shapes(op, a.shape(), b.shape())?;
    let n = numel(&out_shape);
    let mut out = vec![0.0f32; n];
    let (ad, bd) = (a.data(), b.data());
    if a.shape() == b.shape() {
        for_each_row(
            rows_mut(&mut out, n.div_ceil(CHUNK), CHUNK),
            CHUNK,
            |c, o| {
                let (x, y) = (&ad[c * CHUNK..][..o.len()], &bd[c * CHUNK..][..o.len()]);
                map2_chunk(o, x, y, &f)
            },
        );
        return Tensor::new(out, &out_shape);
    }
    let inner = out_shape.last().copied().unwrap_or(1).max(1);
    let sa = broadcast_strides(a.shape(), &out_shape);
    let sb = broadcast_strides(b.shape(), &out_shape);
    let (sa_in, sb_in) = (
        sa.last().copied().unwrap_or(0),
        sb.last().copied().unwrap_or(0),
    );
    let body = |(row, o): (usize, &mut [f32])| {
        let (oa, ob) = (
            row_offset(row, &out_shape, &sa),
            row_offset(row, &out_shape, &sb),
        );
        for (j, v) in o.iter_mut().enumerate() {
            *v = f(ad[oa + j * sa_in], bd[ob + j * sb_in]);
        }
    };
    if n >= PAR_MIN {
        out.par_chunks_mut(inner).enumerate().for_each(body);
    } else {
        out.chunks_mut(inner).enumerate().for_each(body);
    }
    Tensor::new(out, &out_shape)
}

/// Reads `out_shape` elements from `src`, element `idx` at `offset + Σ idx[d]·strides[d]`:
/// a permuted, sliced or broadcast view made contiguous.
pub fn gather_strided(
    src: &[f32],
    offset: usize,
    out_shape: &[usize],
    strides: &[usize],
) -> Vec<f32> {
    let n = numel(out_shape);
    let mut out = vec![0.0f32; n];
    let inner = out_shape.last().copied().unwrap_or(1).max(1);
    let s_in = strides.last().copied().unwrap_or(0);
    let body = |(row, o): (usize, &mut [f32])| {
        let base = offset + row_offset(row, out_shape, strides);
        for (j, v) in o.iter_mut().enumerate() {
            *v = src[base + j * s_in];
        }
    };
    if n >= PAR_MIN {
        out.par_chunks_mut(inner).enumerate().for_each(body);
    } else {
        out.chunks_mut(inner).enumerate().for_each(body);
    }
    out
}

/// The adjoint of `gather_strided` for views that read each source element at most once
/// (permutes and slices): writes `g` back into a zero tensor of `src_len` elements.
pub fn scatter_strided(
    g: &[f32],
    src_len: usize,
    offset: usize,
    view_shape: &[usize],
    strides: &[usize],
) -> Vec<f32> {
    let mut out = vec![0.0f32; src_len];
    let inner = view_shape.last().copied().unwrap_or(1).max(1);
    let s_in = strides.last().copied().unwrap_or(0);
    for (row, gr) in g.chunks(inner).enumerate() {
        let base = offset + row_offset(row, view_shape, strides);
        for (j, &v) in gr.iter().enumerate() {
            out[base + j * s_in] = v;
        }
    }
    out
}

/// `f(x)` elementwise.
pub fn map1(x: &Tensor, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
    let n = x.numel();
    let mut out = vec![0.0f32; n];
    for_each_row(
        rows_mut(&mut out, n.div_ceil(CHUNK), CHUNK),
        CHUNK,
        |c, o| map1_chunk(o, &x.data()[c * CHUNK..][..o.len()], &f),
    );
    Tensor::new(out, x.shape()).expect("same number of elements")
}

/// `x` repeated along broadcast dimensions to `shape` (which `x` must broadcast to).
pub fn broadcast_to(op: &'static str, x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if x.shape() == shape {
        return Ok(x.clone());
    }
    if broadcast_shapes(op, x.shape(), shape)? != shape {
        return Err(TfmError::shape(
            op,
            format!(
                "cannot broadcast {} to {}",
                shape_str(x.shape()),
                shape_str(shape)
            ),
        ));
    }
    let strides = broadcast_strides(x.shape(), shape);
    Tensor::new(gather_strided(x.data(), 0, shape, &strides), shape)
}

/// The adjoint of broadcasting: sums `g` (of a broadcast shape) down to `shape`, over the
/// dimensions that were added or expanded from size 1.
pub fn sum_to(g: &Tensor, shape: &[usize]) -> Tensor {
    if g.shape() == shape {
        return g.clone();
    }
    let out_shape = g.shape().to_vec();
    let mut out = vec![0.0f32; numel(shape)];
    if out.is_empty() || g.numel() == 0 {
        return Tensor::new(out, shape).expect("sized to shape");
    }
    if out.len() == 1 {
        // A full reduction (`.sum()` of a loss): fixed chunks summed in parallel, partial sums
        // combined in chunk order, so the result does not depend on the thread count.
        let partial: Vec<f64> = g
            .data()
            .par_chunks(PAR_MIN)
            .map(|c| c.iter().map(|&v| v as f64).sum::<f64>())
            .collect();
        out[0] = partial.iter().sum::<f64>() as f32;
        return Tensor::new(out, shape).expect("sized to shape");
    }
    let inner = out_shape.last().copied().unwrap_or(1);
    let strides = broadcast_strides(shape, &out_shape);
    let s_in = strides.last().copied().unwrap_or(0);
    // Target rows are visited in order and repeatedly; accumulate in f64 so long reductions
    // (a bias gradient over batch × time) keep f32 accuracy.
    let mut acc = vec![0.0f64; out.len()];
    for (row, gr) in g.data().chunks(inner).enumerate() {
        let off = row_offset(row, &out_shape, &strides);
        for (j, &v) in gr.iter().enumerate() {
            acc[off + j * s_in] += v as f64;
        }
    }
    for (o, a) in out.iter_mut().zip(acc) {
        *o = a as f32;
    }
    Tensor::new(out, shape).expect("sized to shape")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map2_broadcasts_rows_and_columns() {
        let a = Tensor::new(vec![1.0, 2.0, 3.0], &[3, 1]).unwrap();
        let b = Tensor::new(vec![10.0, 20.0], &[2]).unwrap();
        let c = map2("add", &a, &b, |x, y| x + y).unwrap();
        assert_eq!(c.shape(), &[3, 2]);
        assert_eq!(c.data(), &[11.0, 21.0, 12.0, 22.0, 13.0, 23.0]);
    }

    #[test]
    fn sum_to_is_the_adjoint_of_broadcast_to() {
        let g = Tensor::new((0..12).map(|v| v as f32).collect(), &[2, 3, 2]).unwrap();
        let s = sum_to(&g, &[3, 1]);
        assert_eq!(
            s.data(),
            &[
                0.0 + 1.0 + 6.0 + 7.0,
                2.0 + 3.0 + 8.0 + 9.0,
                4.0 + 5.0 + 10.0 + 11.0
            ]
        );
        let e = broadcast_to("t", &s, &[2, 3, 2]).unwrap();
        assert_eq!(e.shape(), &[2, 3, 2]);
        assert_eq!(e.data()[1], s.data()[0]);
    }
}
