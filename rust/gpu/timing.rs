//! Kernel timings on device-resident buffers, for the benchmarks: each case uploads its
//! operands once, then times launches followed by a wait for the queue (so a figure includes
//! submission and synchronization, not host↔device copies).

use super::buffer::GpuBuffer;
use super::context::gpu;
use super::ops::{attention, gemm};
use crate::desc::AttentionConfig;
use crate::error::Result;
use std::time::Instant;

/// The best wall time of `repeats` runs of `f` (after one warm-up run, which also compiles the
/// pipelines), each waited for.
pub fn best_seconds(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    let g = gpu()?;
    f()?;
    g.wait("gpu timing")?;
    let mut best = f64::INFINITY;
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        f()?;
        g.wait("gpu timing")?;
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

fn filled(n: usize) -> Result<GpuBuffer> {
    let data: Vec<f32> = (0..n).map(|i| ((i % 17) as f32 - 8.0) / 16.0).collect();
    GpuBuffer::from_slice(&data)
}

/// Best seconds of one (batched) GEMM of shape `s`.
pub fn time_gemm(s: &gemm::GemmShape, repeats: usize) -> Result<f64> {
    let a = filled(s.m * s.k * if s.batched_a { s.batch } else { 1 })?;
    let b = filled(s.k * s.n * if s.batched_b { s.batch } else { 1 })?;
    let c = GpuBuffer::zeros(s.batch * s.m * s.n)?;
    best_seconds(repeats, || gemm::gemm(&c, &a, &b, s, 1.0, 0.0))
}

/// Best seconds of the attention forward, or forward + backward, for `cfg` (no mask).
pub fn time_attention(cfg: &AttentionConfig, with_backward: bool, repeats: usize) -> Result<f64> {
    let (bh, tq, tk, e, ev) = (cfg.bh, cfg.tq, cfg.tk, cfg.e, cfg.ev);
    let (q, k, v) = (
        filled(bh * tq * e)?,
        filled(bh * tk * e)?,
        filled(bh * tk * ev)?,
    );
    let (out, lse) = (GpuBuffer::zeros(bh * tq * ev)?, GpuBuffer::zeros(bh * tq)?);
    let dout = filled(bh * tq * ev)?;
    let (dq, dk, dv) = (
        GpuBuffer::zeros(bh * tq * e)?,
        GpuBuffer::zeros(bh * tk * e)?,
        GpuBuffer::zeros(bh * tk * ev)?,
    );
    best_seconds(repeats, || {
        // Once per forward (+ backward), as the autograd op uploads its parameters.
        let pr = attention::prepare(cfg, None)?;
        attention::forward(&pr, &out, &lse, &q, &k, &v, cfg)?;
        if with_backward {
            attention::backward(&pr, &dq, &dk, &dv, &dout, &q, &k, &v, &out, &lse, cfg)?;
        }
        Ok(())
    })
}
