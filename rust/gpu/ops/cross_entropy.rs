//! Cross entropy from logits on the GPU, with the semantics of [`crate::ops::cross_entropy`]
//! (PyTorch's): `logits (N, C)`, class targets `(N,)` with `ignore_index` and label smoothing
//! → per-row losses and log-sum-exps; the backward gives `dlogits (N, C)` from each row's
//! share `w (N,)` of the output gradient. The reduction and the autograd wiring are the op's,
//! in [`crate::ops::cross_entropy`], which keeps everything on the device and reduces with the
//! compensated `sum_to`.

use super::gemm::u32_of;
use super::{check_len, check_lens};
use crate::desc::LossConfig;
use crate::ensure_value;
use crate::error::{Result, TfmError};
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::pipeline::{grid, grid_elems, launch, shader, Arg};
use crate::gpu::GpuTensor;

const OP: &str = "gpu cross_entropy";
shader!(CROSS_ENTROPY, "cross_entropy.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    c: u32,
    eps: f32,
}

fn params(n: usize, c: usize, eps: f32) -> Result<Params> {
    ensure_value!(
        (0.0..=1.0).contains(&eps),
        OP,
        "label_smoothing must lie in [0, 1], got {eps}"
    );
    u32_of(OP, "N × C", n * c)?;
    Ok(Params {
        n: n as u32,
        c: c as u32,
        eps,
    })
}

/// The shader's targets: each class as is, `ignore_index` as −1; any other value is an index
/// error naming its position.
pub fn checked_targets(target: &[i64], c: usize, ignore_index: i64) -> Result<Vec<i32>> {
    u32_of(OP, "C", c)?;
    target
        .iter()
        .enumerate()
        .map(|(i, &t)| match t {
            t if t == ignore_index => Ok(-1),
            t if (0..c as i64).contains(&t) && t <= i32::MAX as i64 => Ok(t as i32),
            t => Err(TfmError::index(OP, format!("target {t} at position {i} is out of range for {c} classes (targets must lie in [0, {c}) or equal ignore_index {ignore_index})"))),
        })
        .collect()
}

/// Writes `loss (N,)` and `lse (N,)` from `logits (N, C)` and targets `(N,)` (i32 from
/// [`checked_targets`]).
pub fn forward(
    loss: &GpuBuffer,
    lse: &GpuBuffer,
    logits: &GpuBuffer,
    target: &GpuBuffer,
    c: usize,
    eps: f32,
) -> Result<()> {
    let n = target.len();
    check_len(OP, "logits", logits.len(), n * c)?;
    check_len(OP, "loss", loss.len(), n)?;
    check_len(OP, "lse", lse.len(), n)?;
    let p = params(n, c, eps)?;
    let args = [
        Arg::In(logits),
        Arg::In(target),
        Arg::In(logits),
        Arg::Out(loss),
        Arg::Out(lse),
    ];
    launch(OP, &CROSS_ENTROPY, "forward", &p, &args, grid(n))
}

/// Writes `dlogits (N, C)` from the forward's `logits`, targets and `lse`, and each row's
/// weight `w (N,)` (the output gradient's share of that row).
pub fn backward(
    dlogits: &GpuBuffer,
    logits: &GpuBuffer,
    target: &GpuBuffer,
    lse: &GpuBuffer,
    w: &GpuBuffer,
    c: usize,
    eps: f32,
) -> Result<()> {
    let n = target.len();
    check_lens(
        OP,
        &[
            ("logits", logits, n * c),
            ("dlogits", dlogits, n * c),
            ("lse", lse, n),
            ("w", w, n),
        ],
    )?;
    let p = params(n, c, eps)?;
    let args = [
        Arg::In(logits),
        Arg::In(target),
        Arg::In(w),
        Arg::Out(dlogits),
        Arg::Out(lse),
    ];
    launch(OP, &CROSS_ENTROPY, "backward", &p, &args, grid_elems(n * c))
}

/// [`forward`] on a GPU tensor `x (N, C)` (or `(C,)`): the loss per row `(N,)`, the
/// log-sum-exp per row `(N,)` and the checked targets on the GPU, which [`backward_tensor`] takes.
/// NaN or +inf logits, or a counted row of −inf ones, are a non-finite error as on the CPU: the
/// check reads the N log-sum-exps back (N floats, against the N × C logits the op reads).
pub(crate) fn forward_tensors(
    x: &GpuTensor,
    target: &[i64],
    cfg: LossConfig,
) -> Result<(GpuTensor, GpuTensor, GpuBuffer)> {
    let (n, c) = x.rows_cols();
    let target_buf = GpuBuffer::from_slice(&checked_targets(target, c, cfg.ignore_index)?)?;
    let (loss, lse) = (GpuTensor::zeros(&[n])?, GpuTensor::zeros(&[n])?);
    forward(
        loss.buffer(),
        lse.buffer(),
        x.buffer(),
        &target_buf,
        c,
        cfg.label_smoothing,
    )?;
    let lse_host = lse.to_vec()?;
    LossConfig::check_lse(
        OP,
        n,
        |i| lse_host[i] as f64,
        |i| target[i] != cfg.ignore_index,
    )?;
    Ok((loss, lse, target_buf))
}

/// [`backward`] on GPU tensors: `dlogits` shaped as `logits`, from each row's share `w (N,)`
/// of the output gradient.
pub(crate) fn backward_tensor(
    logits: &GpuTensor,
    target: &GpuBuffer,
    lse: &GpuTensor,
    w: &GpuTensor,
    label_smoothing: f32,
) -> Result<GpuTensor> {
    let c = logits.shape().last().copied().unwrap_or(0);
    let dlogits = GpuTensor::zeros(logits.shape())?;
    backward(
        dlogits.buffer(),
        logits.buffer(),
        target,
        lse.buffer(),
        w.buffer(),
        c,
        label_smoothing,
    )?;
    Ok(dlogits)
}
