//! The GPU backend (feature `wgpu`): WGSL compute shaders through wgpu (Vulkan, Metal, DX12),
//! for the same ops as the CPU kernels, forward and backward.
//!
//! - [`context`]: the process's one device, created on first use; [`is_available`], [`info`].
//! - [`buffer`]: [`GpuBuffer`], storage of 4-byte elements with upload and download.
//! - [`tensor`]: [`GpuTensor`], a shared buffer with a shape: what the op kernels take and
//!   return, and what `crate::tensor::Tensor` holds for GPU values.
//! - [`pipeline`]: pipelines compiled once per (shader, entry point) and cached; [`pipeline::launch`],
//!   the one call an op's host code makes; `common.wgsl`, compiled in front of every shader.
//! - [`timing`]: kernel timings on device-resident buffers, for the benchmarks.
//! - [`ops`]: one host file per op with its `.wgsl` beside it. Each op has a buffer-level
//!   function (device in, device out) and is tested against the CPU op; tensors reach these
//!   kernels through `Tensor::to_device`, never through host slices.
//!
//! The backend sits below the tensor type and the ops: it names [`crate::desc`],
//! [`crate::shape`] and [`crate::cpu`], never `crate::tensor`, `crate::ops` or
//! `crate::autograd` (a test in `lib.rs` checks the import order).
//!
//! Every failure is a [`TfmError`](crate::TfmError): `ErrorKind::Device` when there is no
//! adapter or the GPU rejects or loses work, the usual kinds for bad shapes or arguments.
//! Nothing panics into the caller.
//!
//! ```no_run
//! # fn main() -> tfm_rs::Result<()> {
//! if tfm_rs::gpu::is_available() {
//!     let x = tfm_rs::gpu::buffer::upload(&[-1.0, 2.0])?;
//!     let y = tfm_rs::gpu::GpuBuffer::zeros(2)?;
//!     tfm_rs::gpu::ops::activation::forward(tfm_rs::desc::ActivationKind::Relu, &y, &x)?;
//!     assert_eq!(tfm_rs::gpu::buffer::download(&y)?, vec![0.0, 2.0]);
//! }
//! # Ok(()) }
//! ```

pub mod buffer;
pub mod context;
pub mod ops;
pub mod pipeline;
pub mod tensor;
pub mod timing;

pub use buffer::GpuBuffer;
pub use tensor::GpuTensor;

pub use context::{info, is_available, GpuInfo};

#[cfg(test)]
pub(crate) mod tests {
    /// Whether the GPU tests can run; prints why not. With `TFM_RS_REQUIRE_GPU=1` (set by
    /// `scripts/test.sh` where a Vulkan driver is installed) a missing GPU fails the test
    /// instead, so that CI cannot pass by skipping.
    pub fn require_gpu(what: &str) -> bool {
        match super::context::gpu() {
            Ok(_) => true,
            Err(e) if std::env::var("TFM_RS_REQUIRE_GPU").as_deref() == Ok("1") => {
                panic!("{what}: TFM_RS_REQUIRE_GPU=1 but there is no GPU: {e}")
            }
            Err(e) => {
                eprintln!("skipping GPU test {what}: {e}");
                false
            }
        }
    }

    /// Asserts `|got − want| ≤ rtol·(|want| + rms(want))` elementwise: relative, with a floor
    /// at the data's scale so that values near zero from cancellation do not fail.
    pub fn assert_rel(what: &str, got: &[f32], want: &[f32], rtol: f64) {
        assert_eq!(got.len(), want.len(), "{what}: length");
        let rms = (want.iter().map(|&w| (w as f64).powi(2)).sum::<f64>()
            / want.len().max(1) as f64)
            .sqrt();
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            let (g, w) = (g as f64, w as f64);
            let ok = g == w || (g - w).abs() <= rtol * (w.abs() + rms);
            assert!(ok, "{what}: element {i}: got {g}, want {w}");
        }
    }
}
