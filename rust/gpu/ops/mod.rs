//! The GPU ops, one host file per op with its WGSL beside it; each is tested against the CPU
//! op of the same name in `crate::ops`. Argument order as the CPU kernels: outputs, saved
//! values, inputs, sizes.
//!
//! Two layers per op, as far as it needs them: buffer-level kernels (device in, device out) and
//! functions on [`GpuTensor`](crate::gpu::GpuTensor)s that the op in `crate::ops` calls with the
//! operands `Tensor::place` gave it. Nothing here imports `crate::tensor`, `crate::ops` or
//! `crate::autograd` (a test in `lib.rs` checks the import order): kinds and configurations
//! come from [`crate::desc`], shape arithmetic from [`crate::shape`]. The tests upload their
//! inputs, call the kernel and compare the download with the CPU op; the device-resident
//! autograd graphs are tested from `crate::ops` (`ops/gpu_tests.rs`).

pub mod activation;
pub mod adam;
pub mod attention;
pub mod cross_entropy;
pub mod dropout;
pub mod elementwise;
pub mod embedding;
pub mod gemm;
pub mod layer_norm;
pub mod sgd;
pub mod softmax;
pub mod strided;

use crate::error::{Result, TfmError};
use crate::gpu::buffer::GpuBuffer;

/// A shape error unless buffer `what` holds `want` values.
pub(crate) fn check_len(op: &'static str, what: &str, len: usize, want: usize) -> Result<()> {
    if len == want {
        Ok(())
    } else {
        Err(TfmError::shape(
            op,
            format!("{what} holds {len} values where {want} are needed"),
        ))
    }
}

/// [`check_len`] for each `(name, buffer, wanted length)`.
pub(crate) fn check_lens(op: &'static str, buffers: &[(&str, &GpuBuffer, usize)]) -> Result<()> {
    buffers
        .iter()
        .try_for_each(|&(what, buf, want)| check_len(op, what, buf.len(), want))
}
