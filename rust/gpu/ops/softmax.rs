//! Softmax and log-softmax over the last axis on the GPU, forward and backward, with the
//! semantics of [`crate::ops::softmax`]: `x (rows, C)` plus an optional additive mask of the
//! same shape (broadcast it first) → `y (rows, C)`; backward from the saved output.

use super::check_len;
use super::gemm::u32_of;
use crate::error::Result;
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::pipeline::{grid, launch, shader, Arg};
use crate::gpu::GpuTensor;

const OP: &str = "gpu softmax";
shader!(SOFTMAX, "softmax.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    cols: u32,
    log: u32,
    has_mask: u32,
}

fn params(rows: usize, cols: usize, log: bool, has_mask: bool) -> Result<Params> {
    u32_of(OP, "rows × cols", rows * cols)?;
    Ok(Params {
        rows: rows as u32,
        cols: cols as u32,
        log: log as u32,
        has_mask: has_mask as u32,
    })
}

/// `y ← softmax(x + mask)` (or log-softmax) over rows of `cols`; `y`, `x` and the mask
/// `(rows, cols)`.
pub fn forward(
    y: &GpuBuffer,
    x: &GpuBuffer,
    mask: Option<&GpuBuffer>,
    rows: usize,
    cols: usize,
    log: bool,
) -> Result<()> {
    check_len(OP, "x", x.len(), rows * cols)?;
    check_len(OP, "y", y.len(), rows * cols)?;
    if let Some(m) = mask {
        check_len(OP, "mask", m.len(), rows * cols)?;
    }
    let p = params(rows, cols, log, mask.is_some())?;
    let args = [Arg::In(x), Arg::In(mask.unwrap_or(x)), Arg::Out(y)];
    launch(OP, &SOFTMAX, "forward", &p, &args, grid(rows))
}

/// `dx ← softmax'(y)ᵀ g` (or log-softmax's) from the forward's output `y`; all `(rows, cols)`.
pub fn backward(
    dx: &GpuBuffer,
    y: &GpuBuffer,
    g: &GpuBuffer,
    rows: usize,
    cols: usize,
    log: bool,
) -> Result<()> {
    check_len(OP, "y", y.len(), rows * cols)?;
    check_len(OP, "g", g.len(), rows * cols)?;
    check_len(OP, "dx", dx.len(), rows * cols)?;
    let p = params(rows, cols, log, false)?;
    let args = [Arg::In(y), Arg::In(g), Arg::Out(dx)];
    launch(OP, &SOFTMAX, "backward", &p, &args, grid(rows))
}

/// [`forward`] on a GPU tensor `x (…, C)` with a host mask of `x`'s shape.
pub fn forward_tensor(x: &GpuTensor, mask: Option<&GpuTensor>, log: bool) -> Result<GpuTensor> {
    let (rows, cols) = x.rows_cols();
    let y = GpuTensor::zeros(x.shape())?;
    forward(
        y.buffer(),
        x.buffer(),
        mask.map(GpuTensor::buffer),
        rows,
        cols,
        log,
    )?;
    Ok(y)
}

/// [`backward`] on GPU tensors `g`, `y (…, C)`.
pub fn backward_tensor(g: &GpuTensor, y: &GpuTensor, log: bool) -> Result<GpuTensor> {
    let (rows, cols) = y.rows_cols();
    let dx = GpuTensor::zeros(y.shape())?;
    backward(dx.buffer(), y.buffer(), g.buffer(), rows, cols, log)?;
    Ok(dx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::buffer::{download, upload};
    use crate::gpu::tests::{assert_rel, require_gpu};
    use crate::ops::softmax::{softmax_backward, softmax_forward};
    use crate::ops::test_support::rand_vec;
    use crate::tensor::Tensor;

    /// `forward` from and to the host.
    fn forward_host(x: &[f32], mask: Option<&[f32]>, cols: usize, log: bool) -> Result<Vec<f32>> {
        let rows = x.len().checked_div(cols).unwrap_or(0);
        let y = GpuBuffer::zeros(x.len())?;
        let mask = mask.map(upload).transpose()?;
        forward(&y, &upload(x)?, mask.as_ref(), rows, cols, log)?;
        download(&y)
    }

    /// `backward` from and to the host.
    fn backward_host(y: &[f32], g: &[f32], cols: usize, log: bool) -> Result<Vec<f32>> {
        let rows = y.len().checked_div(cols).unwrap_or(0);
        let dx = GpuBuffer::zeros(y.len())?;
        backward(&dx, &upload(y)?, &upload(g)?, rows, cols, log)?;
        download(&dx)
    }

    #[test]
    fn softmax_matches_cpu_with_and_without_mask() {
        if !require_gpu("softmax") {
            return;
        }
        for (i, &(rows, cols)) in [(1, 1), (3, 17), (5, 300), (2, 1000)].iter().enumerate() {
            let n = rows * cols;
            let x = rand_vec(i as u64, n, -8.0, 8.0);
            let g = rand_vec(i as u64 + 9, n, -1.0, 1.0);
            // Every third entry masked, and the whole first row when there are several.
            let mask: Vec<f32> = (0..n)
                .map(|j| {
                    if j % 3 == 1 || (rows > 1 && j < cols) {
                        f32::NEG_INFINITY
                    } else {
                        0.0
                    }
                })
                .collect();
            let xt = Tensor::new(x.clone(), &[rows, cols]).unwrap();
            let mt = Tensor::new(mask.clone(), &[rows, cols]).unwrap();
            for log in [false, true] {
                for m in [None, Some(&mask)] {
                    let want = softmax_forward("softmax", &xt, m.map(|_| &mt), log).unwrap();
                    let got = forward_host(&x, m.map(|v| &v[..]), cols, log).unwrap();
                    assert_rel(
                        &format!("forward {rows}x{cols} log={log}"),
                        &got,
                        want.data(),
                        1e-4,
                    );
                    let gt = Tensor::new(g.clone(), &[rows, cols]).unwrap();
                    let want_dx = softmax_backward(&gt, &want, log).unwrap();
                    let got_dx = backward_host(want.data(), &g, cols, log).unwrap();
                    assert_rel(
                        &format!("backward {rows}x{cols} log={log}"),
                        &got_dx,
                        want_dx.data(),
                        1e-4,
                    );
                }
            }
        }
    }
}
