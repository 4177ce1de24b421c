//! Inverted dropout on the GPU with the CPU's masks: element `i` of the call keyed by `seed` is
//! kept iff `random::keep(seed, i, p)` (SplitMix64 computed on u32 pairs in `common.wgsl`),
//! kept values are scaled by `1/(1 − p)`. Forward and backward are the same map (pass the
//! output gradient as `v` with the forward's seed).

use super::check_len;
use super::gemm::u32_of;
use crate::ensure_value;
use crate::error::Result;
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::pipeline::{grid_elems, launch, shader, Arg};
use crate::gpu::GpuTensor;
use crate::random::keep_threshold;

const OP: &str = "gpu dropout";
shader!(DROPOUT, "dropout.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    threshold: u32,
    scale: f32,
    _pad: u32,
    seed: [u32; 2],
}

/// `out ← v ∘ mask(seed, p) / (1 − p)`; `p` in `[0, 1)`.
pub fn apply(out: &GpuBuffer, v: &GpuBuffer, seed: u64, p: f64) -> Result<()> {
    ensure_value!(
        (0.0..1.0).contains(&p),
        OP,
        "dropout probability has to be in [0, 1), got {p}"
    );
    check_len(OP, "out", out.len(), v.len())?;
    let params = Params {
        n: u32_of(OP, "the length", v.len())?,
        threshold: keep_threshold(p as f32),
        scale: (1.0 / (1.0 - p)) as f32,
        _pad: 0,
        seed: [seed as u32, (seed >> 32) as u32],
    };
    launch(
        OP,
        &DROPOUT,
        "apply",
        &params,
        &[Arg::In(v), Arg::Out(out)],
        grid_elems(v.len()),
    )
}

/// [`apply`] on a GPU tensor; `p = 1` drops everything (the kernel's scale would be infinite),
/// as the CPU op.
pub fn apply_tensor(v: &GpuTensor, seed: u64, p: f64) -> Result<GpuTensor> {
    let out = GpuTensor::zeros(v.shape())?;
    if p < 1.0 {
        apply(out.buffer(), v.buffer(), seed, p)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::buffer::{download, upload};
    use crate::gpu::tests::require_gpu;
    use crate::ops::dropout::dropout_apply;
    use crate::ops::test_support::rand_vec;

    /// [`apply`] from and to the host.
    fn apply_host(v: &[f32], seed: u64, p: f64) -> Result<Vec<f32>> {
        let out = GpuBuffer::zeros(v.len())?;
        apply(&out, &upload(v)?, seed, p)?;
        download(&out)
    }

    #[test]
    fn dropout_masks_equal_the_cpu_masks() {
        if !require_gpu("dropout") {
            return;
        }
        for (n, seed, p) in [
            (1usize, 1u64, 0.5),
            (4099, 0x1234_5678_9abc_def0, 0.1),
            (1000, u64::MAX, 0.9),
            (10, 3, 0.0),
        ] {
            let v = rand_vec(seed, n, 0.5, 1.5);
            let got = apply_host(&v, seed, p).unwrap();
            assert_eq!(got, dropout_apply(&v, seed, p), "n={n} seed={seed} p={p}");
        }
        assert!(apply_host(&[1.0], 0, 1.0).is_err());
    }
}
