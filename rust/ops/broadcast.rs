//! NumPy-style broadcasting, shared by the elementwise ops and the reductions: mapping a
//! function over two broadcast operands, expanding a tensor to a larger shape, and its adjoint,
//! summing a gradient back down to an operand's shape.

use super::rows::{for_each_row, rows_mut, split, PAR_MIN};
use crate::cpu::gemm::transpose;
use crate::cpu::pool::{self, SendPtr};
use crate::cpu::simd::simd_kernel;
use crate::error::{Result, TfmError};
pub(crate) use crate::shape::{broadcast_strides, row_offset};
use crate::tensor::{broadcast_shapes, numel, shape_str, CpuTensor, Device, Placed, Tensor};
use rayon::prelude::*;

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
    a: &CpuTensor,
    b: &CpuTensor,
    f: impl Fn(f32, f32) -> f32 + Sync,
) -> Result<Tensor> {
    let out_shape = broadcast_shapes(op, a.shape(), b.shape())?;
    let n = numel(&out_shape);
    let mut out = crate::cpu::alloc::output(n);
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
    if split(n) {
        pool::parallel(|| out.par_chunks_mut(inner).enumerate().for_each(body));
    } else {
        out.chunks_mut(inner).enumerate().for_each(body);
    }
    Tensor::new(out, &out_shape)
}

/// Whether the view `(shape, strides)` reads one non-empty run of consecutive elements (a slice
/// along the first dimension, say).
fn contiguous_run(shape: &[usize], strides: &[usize]) -> bool {
    let (runs, run_strides) = coalesce(shape, strides);
    numel(shape) > 0 && runs.len() == 1 && run_strides[0] == 1
}

/// Merges adjacent dimensions that are laid out back to back in the source (stride of the
/// outer equals size × stride of the inner) and drops size-1 dimensions, so that e.g. a slice
/// along the outermost dimension becomes one contiguous run. Same elements, same order.
pub(crate) fn coalesce(shape: &[usize], strides: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut cs: Vec<usize> = Vec::with_capacity(shape.len());
    let mut st: Vec<usize> = Vec::with_capacity(shape.len());
    for (&n, &s) in shape.iter().zip(strides) {
        if n == 1 {
            continue;
        }
        match (cs.last_mut(), st.last_mut()) {
            (Some(pn), Some(ps)) if *ps == n * s => {
                *pn *= n;
                *ps = s;
            }
            _ => {
                cs.push(n);
                st.push(s);
            }
        }
    }
    if cs.is_empty() {
        cs.push(1);
        st.push(1);
    }
    (cs, st)
}

/// Rows per rayon task in the strided copies: about `PAR_MIN / 4` elements each.
fn rows_per_task(inner: usize) -> usize {
    (PAR_MIN / 4 / inner.max(1)).max(1)
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
    if n == 0 {
        return Vec::new();
    }
    let (shape, strides) = coalesce(out_shape, strides);
    let inner = *shape.last().expect("coalesce keeps one dimension");
    let s_in = *strides.last().expect("coalesce keeps one dimension");
    let mut out = crate::cpu::alloc::output(n);
    if shape.len() == 1 && s_in == 1 {
        out.copy_from_slice(&src[offset..offset + n]);
        return out;
    }
    if shape.len() == 1 && s_in == 0 {
        // One value everywhere (the seed gradient of a `.sum()`, broadcast back).
        let value = src[offset];
        if split(n) {
            pool::parallel(|| out.par_chunks_mut(PAR_MIN).for_each(|o| o.fill(value)));
        } else {
            out.fill(value);
        }
        return out;
    }
    let nd = shape.len();
    if nd >= 2 && strides[nd - 2] == 1 && s_in > 1 {
        // The last two dimensions swapped (`x.t()`, `transpose(-2, -1)`): an element-by-element
        // walk down the source's columns touched a new cache line (and soon a new page) per
        // element; blocked transposes read whole lines and write whole rows.
        let block = shape[nd - 2] * inner;
        let items: Vec<(usize, usize, &mut [f32])> = out
            .chunks_mut(block)
            .enumerate()
            .flat_map(|(b, o)| {
                o.chunks_mut(TRANSPOSE_ROWS * inner)
                    .enumerate()
                    .map(move |(i, o)| (b, i * TRANSPOSE_ROWS, o))
            })
            .collect();
        let avx512 = crate::cpu::simd::current_isa() == crate::cpu::Isa::Avx512;
        let body = |(b, r0, o): (usize, usize, &mut [f32])| {
            // Output rows r0.. of block b are source columns r0.. (stride 1), each `inner` long
            // at stride `s_in`.
            let base = offset + row_offset(b, &shape[..nd - 1], &strides[..nd - 1]) + r0;
            let depth = o.len() / inner;
            transpose(&src[base..], s_in, depth, inner, inner, o, avx512);
        };
        if split(n) {
            pool::parallel(|| items.into_par_iter().for_each(body));
        } else {
            items.into_iter().for_each(body);
        }
        return out;
    }
    let body = |(row, o): (usize, &mut [f32])| {
        let base = offset + row_offset(row, &shape, &strides);
        if s_in == 1 {
            o.copy_from_slice(&src[base..base + inner]);
        } else if s_in == 0 {
            o.fill(src[base]);
        } else {
            for (j, v) in o.iter_mut().enumerate() {
                *v = src[base + j * s_in];
            }
        }
    };
    if split(n) {
        pool::parallel(|| {
            out.par_chunks_mut(inner)
                .with_min_len(rows_per_task(inner))
                .enumerate()
                .for_each(body)
        });
    } else {
        out.chunks_mut(inner).enumerate().for_each(body);
    }
    out
}

/// Output rows per task of a transposing gather: 64 rows of a 1024-wide output are 256 KB
/// written while their source lines stream in.
const TRANSPOSE_ROWS: usize = 64;

/// The adjoint of `gather_strided` for views that read each source element at most once
/// (permutes and slices): writes `g` back into a zero tensor of `src_len` elements.
pub fn scatter_strided(
    g: &[f32],
    src_len: usize,
    offset: usize,
    view_shape: &[usize],
    strides: &[usize],
) -> Vec<f32> {
    if contiguous_run(view_shape, strides) {
        // One contiguous run (a slice along the first dimension): zeros around a copy, each
        // element written once.
        let mut out = crate::cpu::alloc::output(src_len);
        let (before, rest) = out.split_at_mut(offset);
        let (run, after) = rest.split_at_mut(g.len());
        before.fill(0.0);
        run.copy_from_slice(g);
        after.fill(0.0);
        return out;
    }
    let mut out = crate::cpu::alloc::zeros(src_len);
    put_strided::<false>(&mut out, g, offset, view_shape, strides);
    out
}

/// `g` written (`ADD` false) or added (`ADD` true) into `out` at the view
/// `(offset, view_shape, strides)`, which must read each element of `out` at most once.
fn put_strided<const ADD: bool>(
    out: &mut [f32],
    g: &[f32],
    offset: usize,
    view_shape: &[usize],
    strides: &[usize],
) {
    let n = g.len();
    if n == 0 {
        return;
    }
    let put = |dst: &mut [f32], src: &[f32]| {
        if ADD {
            dst.iter_mut().zip(src).for_each(|(d, &s)| *d += s);
        } else {
            dst.copy_from_slice(src);
        }
    };
    let (shape, strides) = coalesce(view_shape, strides);
    let inner = *shape.last().expect("coalesce keeps one dimension");
    let s_in = *strides.last().expect("coalesce keeps one dimension");
    if shape.len() == 1 && s_in == 1 {
        put(&mut out[offset..offset + n], g);
        return;
    }
    // Every written index is checked against the allocation, so the raw writes stay in bounds.
    let last = offset
        + shape
            .iter()
            .zip(&strides)
            .map(|(&d, &s)| (d - 1) * s)
            .sum::<usize>();
    assert!(last < out.len(), "scatter_strided: view exceeds the source");
    let dst = SendPtr(out.as_mut_ptr());
    let body = |(row, gr): (usize, &[f32])| {
        let base = offset + row_offset(row, &shape, &strides);
        let p = dst;
        // SAFETY: `base + j·s_in ≤ last < out.len()`, and the view reads each source element at
        // most once (permutes and slices), so rows write disjoint elements.
        unsafe {
            if s_in == 1 {
                put(p.slice(base, inner), gr);
            } else {
                for (j, &v) in gr.iter().enumerate() {
                    let d = p.at(base + j * s_in);
                    *d = if ADD { *d + v } else { v };
                }
            }
        }
    };
    if split(n) {
        pool::parallel(|| {
            g.par_chunks(inner)
                .with_min_len(rows_per_task(inner))
                .enumerate()
                .for_each(body)
        });
    } else {
        g.chunks(inner).enumerate().for_each(body);
    }
}

/// `f(x)` elementwise.
pub fn map1(x: &CpuTensor, f: impl Fn(f32) -> f32 + Sync) -> Tensor {
    let n = x.numel();
    let mut out = crate::cpu::alloc::output(n);
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
    gather(x, 0, shape, &broadcast_strides(x.shape(), shape))
}

/// A contiguous tensor of `shape` read from `x` at `offset + Σ idx[d]·strides[d]` (see
/// [`gather_strided`]), on `x`'s device. On the host, a view that is one contiguous run of
/// `x` (a slice along the first dimension, say) may share `x`'s buffer ([`CpuTensor::part`]).
pub fn gather(x: &Tensor, offset: usize, shape: &[usize], strides: &[usize]) -> Result<Tensor> {
    match Tensor::place("gather", [x])? {
        Placed::Cpu([x]) => {
            if contiguous_run(shape, strides) && offset + numel(shape) <= x.numel() {
                return Ok(x.part(offset, shape).into());
            }
            Tensor::new(gather_strided(x.data(), offset, shape, strides), shape)
        }
        #[cfg(feature = "wgpu")]
        Placed::Gpu([x]) => Ok(crate::gpu::ops::strided::gather(x, offset, shape, strides)?.into()),
    }
}

/// The adjoint of [`gather`] for views that read each element at most once: `g` written into
/// zeros of `src_shape` (see [`scatter_strided`]), on `g`'s device.
pub fn scatter(
    g: &Tensor,
    src_shape: &[usize],
    offset: usize,
    strides: &[usize],
) -> Result<Tensor> {
    match Tensor::place("scatter", [g])? {
        Placed::Cpu([g]) => Tensor::new(
            scatter_strided(g.data(), numel(src_shape), offset, g.shape(), strides),
            src_shape,
        ),
        #[cfg(feature = "wgpu")]
        Placed::Gpu([g]) => {
            let out = crate::gpu::GpuTensor::zeros(src_shape)?;
            crate::gpu::ops::strided::scatter_into(out.buffer(), g, offset, strides)?;
            Ok(out.into())
        }
    }
}

/// [`scatter`] added into `acc` (a tensor of the source's shape) in place, so that a gradient
/// summed from several slices of one tensor is not materialized whole for each. Whether it did:
/// GPU tensors take the [`scatter`] path.
pub fn scatter_add(acc: &mut Tensor, g: &Tensor, offset: usize, strides: &[usize]) -> Result<bool> {
    if acc.device() != Device::Cpu || g.device() != Device::Cpu {
        return Ok(false);
    }
    let g = g.cpu("scatter")?;
    put_strided::<true>(
        acc.cpu_mut("scatter")?.data_mut(),
        g.data(),
        offset,
        g.shape(),
        strides,
    );
    Ok(true)
}

/// The adjoint of broadcasting: sums `g` (of a broadcast shape) down to `shape`, over the
/// dimensions that were added or expanded from size 1.
pub fn sum_to(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    match Tensor::place("sum_to", [g])? {
        Placed::Cpu([g]) => Ok(sum_to_host(g, shape)),
        #[cfg(feature = "wgpu")]
        Placed::Gpu([g]) => Ok(crate::gpu::ops::strided::sum_to(g, shape)?.into()),
    }
}

/// `Σ x` in f64, in 8 independent lanes over whole chunks: vectorized conversion and adds, where
/// one serial chain of f64 adds ran at 2 GB/s.
fn f64_lane_sum(x: &[f32]) -> f64 {
    let mut lanes = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v as f64;
        }
    }
    let tail: f64 = chunks.remainder().iter().map(|&v| v as f64).sum();
    lanes.iter().sum::<f64>() + tail
}

simd_kernel! {
    /// `acc += x` elementwise, widening to f64.
    fn add_f64(acc: &mut [f64], x: &[f32]) {
        for (a, &v) in acc.iter_mut().zip(x) {
            *a += v as f64;
        }
    }
}

fn sum_to_host(g: &CpuTensor, shape: &[usize]) -> Tensor {
    let out_shape = g.shape().to_vec();
    let mut out = crate::cpu::alloc::zeros(numel(shape));
    if out.is_empty() || g.numel() == 0 {
        return Tensor::new(out, shape).expect("sized to shape");
    }
    if out.len() == 1 {
        // A full reduction (`.sum()` of a loss): fixed chunks summed in parallel, partial sums
        // combined in chunk order, so the result does not depend on the thread count.
        let data = g.data();
        let partial: Vec<f64> = if split(data.len()) {
            pool::parallel(|| data.par_chunks(PAR_MIN).map(f64_lane_sum).collect())
        } else {
            data.chunks(PAR_MIN).map(f64_lane_sum).collect()
        };
        out[0] = partial.iter().sum::<f64>() as f32;
        return Tensor::new(out, shape).expect("sized to shape");
    }
    let inner = out_shape.last().copied().unwrap_or(1);
    let strides = broadcast_strides(shape, &out_shape);
    let s_in = strides.last().copied().unwrap_or(0);
    // Target rows are visited in order and repeatedly; accumulate in f64 so long reductions
    // (a bias gradient over batch × time) keep f32 accuracy.
    let mut acc = vec![0.0f64; out.len()];
    let rows = g.data().chunks(inner);
    if s_in == 0 {
        // The last dimension is summed: each row's sum in vectorized lanes (rows in parallel),
        // then added to its target in row order, so that results do not depend on threads.
        let sums: Vec<f64> = if split(g.numel()) {
            pool::parallel(|| g.data().par_chunks(inner).map(f64_lane_sum).collect())
        } else {
            rows.map(f64_lane_sum).collect()
        };
        for (row, sum) in sums.into_iter().enumerate() {
            acc[row_offset(row, &out_shape, &strides)] += sum;
        }
    } else {
        // The last dimension is kept (stride 1): a contiguous row added to a contiguous target.
        for (row, gr) in rows.enumerate() {
            let off = row_offset(row, &out_shape, &strides);
            add_f64(&mut acc[off..][..inner], gr);
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

    /// Element-by-element reference for `gather_strided` / `scatter_strided`.
    fn naive_offsets(offset: usize, shape: &[usize], strides: &[usize]) -> Vec<usize> {
        (0..numel(shape))
            .map(|flat| {
                let (mut rem, mut off) = (flat, offset);
                for d in (0..shape.len()).rev() {
                    off += (rem % shape[d]) * strides[d];
                    rem /= shape[d];
                }
                off
            })
            .collect()
    }

    #[test]
    fn strided_gather_and_scatter_match_the_naive_walk() {
        // (source shape, view shape, view strides, offset): permutes (inner contiguous or not),
        // slices along outer/inner dims with steps, size-1 dims, broadcasts, and sizes past
        // PAR_MIN so the parallel paths run.
        type Case = (Vec<usize>, Vec<usize>, Vec<usize>, usize);
        let cases: Vec<Case> = vec![
            (vec![2, 3, 4], vec![4, 3, 2], vec![1, 4, 12], 0),
            (vec![2, 3, 4], vec![3, 2, 4], vec![4, 12, 1], 0),
            (vec![3, 5, 4], vec![1, 5, 4], vec![20, 4, 1], 40),
            (vec![3, 5, 4], vec![3, 2, 4], vec![20, 8, 1], 4),
            (vec![3, 5, 4], vec![3, 5, 2], vec![20, 4, 2], 1),
            (vec![6], vec![1, 1, 6], vec![6, 6, 1], 0),
            (vec![1], vec![], vec![], 0),
            (
                vec![8, 24, 3, 4, 64],
                vec![8, 4, 24, 64],
                vec![18432, 64, 768, 1],
                256,
            ),
            (
                vec![3, 8, 4, 24, 64],
                vec![1, 8, 4, 24, 64],
                vec![73728, 9216, 1536, 64, 1],
                73728,
            ),
            (vec![8, 24, 768], vec![8, 24, 256], vec![18432, 768, 1], 512),
            (
                vec![64, 4, 24, 64],
                vec![64, 24, 4, 64],
                vec![6144, 64, 1536, 1],
                0,
            ),
            (vec![300, 200], vec![200, 300], vec![1, 200], 0),
            // The last two dimensions swapped (blocked transposes): odd sizes, several blocks,
            // blocks of more than one task's rows, and a sliced source at an offset.
            (vec![3, 17, 127], vec![3, 127, 17], vec![2159, 1, 127], 0),
            (vec![2, 150, 70], vec![2, 70, 150], vec![10500, 1, 70], 0),
            (vec![130, 300], vec![299, 129], vec![1, 300], 301),
            (vec![1, 3], vec![3, 1], vec![1, 3], 0),
            // Contiguous runs at the start and in the middle (slices along the first dimension).
            (vec![5, 4], vec![3, 4], vec![4, 1], 0),
            (vec![5, 4], vec![2, 4], vec![4, 1], 8),
        ];
        for (src_shape, shape, strides, offset) in cases {
            let len = numel(&src_shape);
            let src: Vec<f32> = (0..len).map(|i| i as f32 * 0.5 - 3.0).collect();
            let offs = naive_offsets(offset, &shape, &strides);
            let want: Vec<f32> = offs.iter().map(|&o| src[o]).collect();
            let got = gather_strided(&src, offset, &shape, &strides);
            assert_eq!(got, want, "gather {shape:?} {strides:?}");
            let g: Vec<f32> = (0..offs.len()).map(|i| i as f32 + 1.0).collect();
            let mut want = vec![0.0f32; len];
            for (&o, &v) in offs.iter().zip(&g) {
                want[o] = v;
            }
            let got = scatter_strided(&g, len, offset, &shape, &strides);
            assert_eq!(got, want, "scatter {shape:?} {strides:?}");
        }
        // Broadcast views (zero strides) through gather.
        let src = [1.0f32, 2.0, 3.0];
        let got = gather_strided(&src, 0, &[2, 3, 2], &[0, 1, 0]);
        assert_eq!(
            got,
            vec![1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0]
        );
        assert_eq!(coalesce(&[4, 1, 3, 2], &[6, 99, 2, 1]), (vec![24], vec![1]));
        assert_eq!(coalesce(&[2, 3], &[0, 0]), (vec![6], vec![0]));
    }

    #[test]
    fn map2_broadcasts_rows_and_columns() {
        let a = Tensor::new(vec![1.0, 2.0, 3.0], &[3, 1]).unwrap();
        let b = Tensor::new(vec![10.0, 20.0], &[2]).unwrap();
        let c = map2("add", a.cpu("t").unwrap(), b.cpu("t").unwrap(), |x, y| {
            x + y
        })
        .unwrap();
        assert_eq!(c.shape(), &[3, 2]);
        assert_eq!(c.data(), &[11.0, 21.0, 12.0, 22.0, 13.0, 23.0]);
    }

    #[test]
    fn sum_to_is_the_adjoint_of_broadcast_to() {
        let g = Tensor::new((0..12).map(|v| v as f32).collect(), &[2, 3, 2]).unwrap();
        let s = sum_to(&g, &[3, 1]).unwrap();
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
