//! Optimizer steps matching `torch.optim` update for update: the slice-level kernels
//! ([`adam_step`], [`sgd_step`]) and their device dispatch on tensors ([`adam_update`],
//! [`sgd_update`]); the bindings own the parameter groups and state tensors and call one update
//! per parameter.
//!
//! Scalars derived from the hyperparameters (bias corrections, step sizes) are computed in f64
//! and rounded to f32 once, as PyTorch does with its Python-float hyperparameters; the
//! elementwise updates run in f32 over fixed-size chunks, in parallel for large parameters.

pub mod adam;
pub mod sgd;
mod update;

pub use adam::{adam_step, AdamConfig};
pub use sgd::{sgd_step, SgdConfig};
pub use update::{adam_update, sgd_update};

use crate::error::{Result, TfmError};

/// Elements per parallel task. Updates are elementwise, so the split never changes results.
const CHUNK: usize = 1 << 14;

/// A shape error unless the state slice `name` has the parameter's length.
fn check_len(op: &'static str, name: &str, len: usize, param_len: usize) -> Result<()> {
    if len != param_len {
        return Err(TfmError::shape(
            op,
            format!("{name} has {len} elements but the parameter has {param_len}"),
        ));
    }
    Ok(())
}

/// The gradient an update uses: `sign·g` (`sign` −1 with `maximize`) plus `wd·θ` for weight
/// decay folded into the gradient. A select, not `+ 0·θ` when there is none: that would turn
/// an infinite θ into NaN moments or updates.
#[inline(always)]
fn decayed_grad(g: f32, p: f32, sign: f32, wd: f32) -> f32 {
    let g = sign * g;
    if wd != 0.0 {
        g + wd * p
    } else {
        g
    }
}

/// Splits an optional state buffer like the parameter, into `chunks` pieces (all `None` when
/// the buffer is absent).
fn optional_chunks(buf: Option<&mut [f32]>, chunks: usize) -> Vec<Option<&mut [f32]>> {
    match buf {
        Some(b) => b.chunks_mut(CHUNK).map(Some).collect(),
        None => (0..chunks).map(|_| None).collect(),
    }
}
