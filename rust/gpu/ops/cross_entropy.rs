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
use crate::tensor::Tensor;

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
pub(crate) fn forward_tensors(
    x: &Tensor,
    target: &[i64],
    cfg: LossConfig,
) -> Result<(Tensor, Tensor, GpuBuffer)> {
    let (n, c) = x.rows_cols();
    let target_buf = GpuBuffer::from_slice(&checked_targets(target, c, cfg.ignore_index)?)?;
    let (loss, lse) = (Tensor::gpu_zeros(&[n])?, Tensor::gpu_zeros(&[n])?);
    forward(
        loss.buffer(OP)?,
        lse.buffer(OP)?,
        x.buffer(OP)?,
        &target_buf,
        c,
        cfg.label_smoothing,
    )?;
    Ok((loss, lse, target_buf))
}

/// [`backward`] on GPU tensors: `dlogits` shaped as `logits`, from each row's share `w (N,)`
/// of the output gradient.
pub(crate) fn backward_tensor(
    logits: &Tensor,
    target: &GpuBuffer,
    lse: &Tensor,
    w: &Tensor,
    label_smoothing: f32,
) -> Result<Tensor> {
    let c = logits.shape().last().copied().unwrap_or(0);
    let dlogits = Tensor::gpu_zeros(logits.shape())?;
    backward(
        dlogits.buffer(OP)?,
        logits.buffer(OP)?,
        target,
        lse.buffer(OP)?,
        w.buffer(OP)?,
        c,
        label_smoothing,
    )?;
    Ok(dlogits)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::gpu::buffer::{download, upload};
    use crate::gpu::tests::{assert_rel, require_gpu};
    use crate::ops::cross_entropy::{cross_entropy, Reduction};
    use crate::ops::test_support::{grads, leaf, rand_vec};

    #[derive(Debug)]
    /// The loss and, when asked, the gradient of the reduced loss with respect to the logits.
    struct CrossEntropyOutput {
        /// `(N,)` for `Reduction::None`, else one value.
        loss: Vec<f32>,
        /// `(N, C)`, for an output gradient of ones.
        dlogits: Option<Vec<f32>>,
    }

    /// Cross entropy from host slices: `logits (N, C)`, `target (N,)`; with `grad`, also the
    /// gradient of the (reduced) loss, as its backward with an output gradient of ones.
    fn cross_entropy_host(
        logits: &[f32],
        target: &[i64],
        c: usize,
        ignore_index: i64,
        label_smoothing: f32,
        reduction: Reduction,
        grad: bool,
    ) -> Result<CrossEntropyOutput> {
        let n = target.len();
        check_len(OP, "logits", logits.len(), n * c)?;
        let t = checked_targets(target, c, ignore_index)?;
        let (x, tb) = (upload(logits)?, GpuBuffer::from_slice(&t)?);
        let (loss_b, lse_b) = (GpuBuffer::zeros(n)?, GpuBuffer::zeros(n)?);
        forward(&loss_b, &lse_b, &x, &tb, c, label_smoothing)?;
        let (rows, lse) = (download(&loss_b)?, download(&lse_b)?);
        let bad = |i: &usize| lse[*i].is_nan() || (lse[*i] == f32::NEG_INFINITY && t[*i] >= 0);
        if let Some(i) = (0..n).find(bad) {
            let what = if lse[i].is_nan() {
                "holds NaN or +inf"
            } else {
                "is -inf everywhere"
            };
            return Err(TfmError::non_finite(
                OP,
                format!("row {i} of the logits {what}"),
            ));
        }
        let counted = t.iter().filter(|&&t| t >= 0).count();
        let total: f64 = rows.iter().map(|&l| l as f64).sum();
        let (loss, w) = match reduction {
            Reduction::None => (rows, 1.0),
            Reduction::Sum => (vec![total as f32], 1.0),
            Reduction::Mean if counted == 0 => (vec![0.0], 0.0),
            Reduction::Mean => (vec![(total / counted as f64) as f32], 1.0 / counted as f32),
        };
        let dlogits = if grad {
            let d = GpuBuffer::zeros(n * c)?;
            backward(
                &d,
                &x,
                &tb,
                &lse_b,
                &upload(&vec![w; n])?,
                c,
                label_smoothing,
            )?;
            Some(download(&d)?)
        } else {
            None
        };
        Ok(CrossEntropyOutput { loss, dlogits })
    }

    #[test]
    fn cross_entropy_matches_cpu() {
        if !require_gpu("cross_entropy") {
            return;
        }
        for (i, &(n, c)) in [(1, 1), (3, 17), (9, 300), (4, 1000)].iter().enumerate() {
            let x = rand_vec(i as u64, n * c, -5.0, 5.0);
            let target: Vec<i64> = (0..n)
                .map(|k| {
                    if k % 3 == 2 {
                        -100
                    } else {
                        ((k * 5) % c) as i64
                    }
                })
                .collect();
            for eps in [0.0f32, 0.1] {
                for red in [Reduction::None, Reduction::Mean, Reduction::Sum] {
                    let xv = leaf(x.clone(), &[n, c]);
                    let want = cross_entropy(&xv, &target, -100, eps, red).unwrap();
                    let ones = vec![1.0f32; want.value().numel()];
                    let want_dx = grads(&want, &ones, &[&xv]).remove(0);
                    let got = cross_entropy_host(&x, &target, c, -100, eps, red, true).unwrap();
                    let what = format!("{n}x{c} eps={eps} {red:?}");
                    assert_rel(&what, &got.loss, want.value().data(), 1e-4);
                    assert_rel(&what, &got.dlogits.unwrap(), &want_dx, 1e-4);
                }
            }
        }
    }

    #[test]
    fn cross_entropy_errors() {
        if !require_gpu("cross_entropy") {
            return;
        }
        let bad_target =
            cross_entropy_host(&[0.0; 4], &[0, 2], 2, -100, 0.0, Reduction::Mean, false);
        assert_eq!(bad_target.unwrap_err().kind, ErrorKind::Index);
        let nan = cross_entropy_host(&[0.0, f32::NAN], &[0], 2, -100, 0.0, Reduction::Mean, false);
        assert_eq!(nan.unwrap_err().kind, ErrorKind::NonFinite);
    }
}
