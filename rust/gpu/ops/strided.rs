//! Strided views on the GPU, on tensors: [`gather`] (a permuted, sliced or broadcast view made
//! contiguous), [`scatter_into`] (its adjoint for views that do not repeat elements) and
//! [`sum_to`] (the adjoint of broadcasting). The same index arithmetic as
//! [`crate::ops::broadcast::gather_strided`], `scatter_strided` and `sum_to`, which test them.

use super::gemm::u32_of;
use crate::error::Result;
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::pipeline::{grid_elems, launch, shader, Arg};
use crate::gpu::GpuTensor;
use crate::shape::{contiguous_strides, numel};

const OP: &str = "gpu strided";
shader!(STRIDED, "strided.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    rank: u32,
    offset: u32,
    n_red: u32,
}

/// The index metadata as the shader's u32s (sizes and strides concatenated).
fn meta(parts: &[&[usize]]) -> Result<GpuBuffer> {
    let flat: Vec<u32> = parts
        .iter()
        .flat_map(|p| p.iter())
        .map(|&v| u32_of(OP, "a size or stride", v))
        .collect::<Result<_>>()?;
    GpuBuffer::from_slice(&flat)
}

/// A contiguous tensor of `shape` whose element `c` is `x`'s element at
/// `offset + Σ c[d]·strides[d]`.
pub fn gather(
    x: &GpuTensor,
    offset: usize,
    shape: &[usize],
    strides: &[usize],
) -> Result<GpuTensor> {
    let out = GpuTensor::zeros(shape)?;
    let n = numel(shape);
    if n == 0 {
        return Ok(out);
    }
    let p = Params {
        n: u32_of(OP, "the output's size", n)?,
        rank: shape.len() as u32,
        offset: u32_of(OP, "the offset", offset)?,
        n_red: 0,
    };
    let m = meta(&[shape, strides])?;
    let args = [Arg::In(&m), Arg::In(x.buffer()), Arg::Out(out.buffer())];
    launch(OP, &STRIDED, "gather", &p, &args, grid_elems(n))?;
    Ok(out)
}

/// Writes `x` (contiguous) into `out` at the view `(offset, x's shape, strides)`, which must not
/// repeat elements; the rest of `out` is left as it is.
pub fn scatter_into(
    out: &GpuBuffer,
    x: &GpuTensor,
    offset: usize,
    strides: &[usize],
) -> Result<()> {
    let n = x.numel();
    if n == 0 {
        return Ok(());
    }
    let p = Params {
        n: u32_of(OP, "the input's size", n)?,
        rank: x.ndim() as u32,
        offset: u32_of(OP, "the offset", offset)?,
        n_red: 0,
    };
    let m = meta(&[x.shape(), strides])?;
    let args = [Arg::In(&m), Arg::In(x.buffer()), Arg::Out(out)];
    launch(OP, &STRIDED, "scatter", &p, &args, grid_elems(n))
}

/// `g` summed down to `shape`, which `g`'s shape must broadcast from (checked by the caller,
/// [`crate::ops::broadcast::sum_to`]).
pub fn sum_to(g: &GpuTensor, shape: &[usize]) -> Result<GpuTensor> {
    let out = GpuTensor::zeros(shape)?;
    let rank = g.ndim();
    // `shape` aligned on the right to g's rank: kept sizes, and the sizes summed over.
    let lead = rank - shape.len();
    let kept: Vec<usize> = (0..rank)
        .map(|d| if d < lead { 1 } else { shape[d - lead] })
        .collect();
    let red: Vec<usize> = (0..rank)
        .map(|d| {
            if kept[d] == g.shape()[d] {
                1
            } else {
                g.shape()[d]
            }
        })
        .collect();
    let n = numel(shape);
    if n == 0 || g.numel() == 0 {
        return Ok(out);
    }
    if n == 1 && g.numel() > 4 * PARTIALS {
        let partials = GpuBuffer::zeros(PARTIALS)?;
        sum_strided(g.buffer(), g.numel(), &partials, PARTIALS)?;
        sum_strided(&partials, PARTIALS, out.buffer(), 1)?;
        return Ok(out);
    }
    let p = Params {
        n: u32_of(OP, "the output's size", n)?,
        rank: rank as u32,
        offset: 0,
        n_red: u32_of(OP, "the reduced size", numel(&red))?,
    };
    let m = meta(&[&kept, &red, &contiguous_strides(g.shape())])?;
    let args = [Arg::In(&m), Arg::In(g.buffer()), Arg::Out(out.buffer())];
    launch(OP, &STRIDED, "sum_to", &p, &args, grid_elems(n))?;
    Ok(out)
}

/// Partial sums of the first pass of a full reduction: enough invocations to spread a large
/// sum over the GPU, few enough for one invocation to add them up in the second pass.
const PARTIALS: usize = 1024;

/// `out[j] = Σ x[j + i·n]` over the `len` values of `x`, for `j < n`: one pass of a full sum.
fn sum_strided(x: &GpuBuffer, len: usize, out: &GpuBuffer, n: usize) -> Result<()> {
    let p = Params {
        n: u32_of(OP, "the partial sums", n)?,
        rank: 0,
        offset: 0,
        n_red: u32_of(OP, "the reduced size", len)?,
    };
    let unused = GpuBuffer::zeros(1)?;
    let args = [Arg::In(&unused), Arg::In(x), Arg::Out(out)];
    launch(OP, &STRIDED, "sum_strided", &p, &args, grid_elems(n))
}

/// `values` concatenated along `dim` into `out_shape` (checked by [`crate::ops::shape::cat`]):
/// each part scattered into its block of the output, a strided view of it.
pub fn cat(values: &[&GpuTensor], out_shape: &[usize], dim: usize) -> Result<GpuTensor> {
    let inner = numel(&out_shape[dim + 1..]);
    let strides = contiguous_strides(out_shape);
    let out = GpuTensor::zeros(out_shape)?;
    let mut start = 0;
    for v in values {
        scatter_into(out.buffer(), v, start * inner, &strides)?;
        start += v.shape()[dim];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::tests::{assert_rel, require_gpu};
    use crate::ops::broadcast::{gather_strided, scatter_strided};
    use crate::ops::test_support::rand_vec;
    use crate::tensor::Tensor;

    fn gpu(data: Vec<f32>, shape: &[usize]) -> GpuTensor {
        GpuTensor::from_host(&data, shape).unwrap()
    }

    #[test]
    fn gather_and_scatter_match_cpu_on_permutes_and_slices() {
        if !require_gpu("strided") {
            return;
        }
        // (source length, offset, view shape, view strides): a permute of (3, 17, 5), a
        // strided slice of a (127, 4) row block, a broadcast (for gather only), one element.
        type View = (usize, usize, Vec<usize>, Vec<usize>, bool);
        let views: [View; 4] = [
            (255, 0, vec![5, 3, 17], vec![1, 85, 5], true),
            (508, 8, vec![41, 4], vec![12, 1], true),
            (17, 0, vec![3, 17], vec![0, 1], false),
            (1, 0, vec![1], vec![1], true),
        ];
        for (i, (len, off, shape, strides, scatter)) in views.into_iter().enumerate() {
            let src = rand_vec(i as u64, len, -1.0, 1.0);
            let got = gather(&gpu(src.clone(), &[len]), off, &shape, &strides).unwrap();
            let want = gather_strided(&src, off, &shape, &strides);
            assert_eq!(got.to_vec().unwrap(), want, "gather {shape:?}");
            if scatter {
                let out = GpuTensor::zeros(&[len]).unwrap();
                let g = gpu(want.clone(), &shape);
                scatter_into(out.buffer(), &g, off, &strides).unwrap();
                let want = scatter_strided(&want, len, off, &shape, &strides);
                assert_eq!(out.to_vec().unwrap(), want, "scatter {shape:?}");
            }
        }
    }

    #[test]
    fn sum_to_matches_cpu() {
        if !require_gpu("sum_to") {
            return;
        }
        // The last two are full sums large enough for the two-pass reduction.
        let cases: [(Vec<usize>, Vec<usize>); 7] = [
            (vec![3, 17, 5], vec![17, 1]),
            (vec![127, 3], vec![3]),
            (vec![127, 3], vec![]),
            (vec![301, 17], vec![]),
            (vec![4099, 3], vec![1, 1]),
            (vec![2, 1, 17], vec![2, 1, 1]),
            (vec![4, 5], vec![4, 5]),
        ];
        for (i, (from, to)) in cases.into_iter().enumerate() {
            let g = rand_vec(i as u64, numel(&from), -1.0, 1.0);
            let host = Tensor::new(g.clone(), &from).unwrap();
            let want = crate::ops::broadcast::sum_to(&host, &to).unwrap();
            let got = sum_to(&gpu(g, &from), &to).unwrap();
            assert_eq!(got.shape(), want.shape());
            assert_rel(
                &format!("{from:?}→{to:?}"),
                &got.to_vec().unwrap(),
                want.data(),
                1e-5,
            );
        }
    }
}
