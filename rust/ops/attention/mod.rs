//! Fused scaled dot-product attention (FlashAttention-2 on the CPU).
//!
//! `out = dropout(softmax(scale · q·kᵀ + mask)) · v`, with shapes
//! q (…, Tq, E), k (…, Tk, E), v (…, Tk, Ev) → out (…, Tq, Ev), where `…` (any rank, 0 included)
//! is equal for all three and `scale` defaults to 1/√E.
//!
//! The forward never forms the `Tq × Tk` scores of a head: it streams key blocks through an
//! online softmax and saves only the output and the per-row log-sum-exp. The backward
//! recomputes the probabilities block by block from q, k and that log-sum-exp. Memory is linear
//! in T: a few per-thread blocks and packed copies of one head's q, k, v.
//!
//! - [`scaled_dot_product_attention`]: the autograd op on `Var`s.
//! - [`attention_forward`] / [`attention_backward`]: the slice kernels, argument order
//!   (outputs, saved values, inputs, sizes) as llm.c writes its layers.
//! - [`attention_with_weights`]: the same semantics composed of differentiable ops, returning
//!   the weights too (T×T memory; for inspection).
//! - [`attention_forward_reference`] / [`attention_backward_reference`]: the naive f64
//!   oracle that materializes the scores; used by the tests.
//!
//! ```
//! use tfm_rs::{autograd::{backward, Var}, ops, tensor::Tensor};
//! let qkv = |n| Var::leaf(Tensor::new((0..n).map(|i| (i as f32 * 0.37).sin()).collect(), &[2, 5, 4]).unwrap(), true);
//! let (q, k, v) = (qkv(40), qkv(40), qkv(40));
//! let out = ops::attention::scaled_dot_product_attention(&q, &k, &v, None, 0.0, true, None).unwrap();
//! assert_eq!(out.shape(), vec![2, 5, 4]);
//! backward(&ops::reduce::sum(&out, &[], false).unwrap(), None, false).unwrap();
//! assert_eq!(q.grad().unwrap().shape(), &[2, 5, 4]);
//! ```

mod backward;
mod explicit;
mod forward;
mod kernels;
mod mask;
#[cfg(test)]
mod mask_tests;
mod reference;
#[cfg(test)]
mod tests;

pub use backward::{attention_backward, attention_backward_masked};
pub use explicit::attention_with_weights;
pub use forward::{attention_forward, attention_forward_masked};
pub use mask::{random_block, MaskSpec, MaskStats, StructuredMask, Tile};
use mask::{Along, Spans};
pub use reference::{attention_backward_reference, attention_forward_reference};

use crate::autograd::{Backward, Var};
pub use crate::desc::{AttentionConfig, MaskLayout};

/// A mask's host values with their layout: what the CPU kernels read.
#[derive(Clone, Copy, Debug)]
pub struct AttnMask<'a> {
    pub data: &'a [f32],
    pub layout: &'a MaskLayout,
}

/// The CPU kernels' arguments: the configuration and, if any, the mask's host values. Derefs to
/// the configuration.
#[derive(Clone, Copy, Debug)]
pub struct MaskedConfig<'a> {
    pub cfg: AttentionConfig,
    pub mask: Option<AttnMask<'a>>,
}

impl std::ops::Deref for MaskedConfig<'_> {
    type Target = AttentionConfig;
    fn deref(&self) -> &AttentionConfig {
        &self.cfg
    }
}
use crate::error::{Result, TfmError};
use crate::ops::broadcast::{broadcast_strides, row_offset};
use crate::tensor::{shape_str, CpuTensor, Device, Tensor};

const OP: &str = "scaled_dot_product_attention";

// The CPU kernels' mask arithmetic; the descriptor itself lives in `desc`.
impl MaskedConfig<'_> {
    /// The additive mask value at (head, i, j): the mask's, −∞ above the causal diagonal, else 0.
    pub fn mask_value(&self, head: usize, i: usize, j: usize) -> f32 {
        if self.is_causal && j > i {
            return f32::NEG_INFINITY;
        }
        self.mask.map_or(0.0, |m| {
            let l = m.layout;
            m.data[l.head_offsets[head] + i * l.row_stride + j * l.col_stride]
        })
    }

    /// Adds the mask to a block of scores, in base 2 (times `log₂e`, as the kernels keep
    /// scores), and sets the scores the causal flag hides to −∞. `s[r·rs + c·cs]` holds query
    /// `i0 + r` against key `j0 + c`, for `r < rows`, `c < cols`. One of `rs`, `cs` must be 1:
    /// the inner loops run along that axis.
    #[inline(always)]
    fn mask_block(
        &self,
        head: usize,
        (i0, rows, rs): (usize, usize, usize),
        (j0, cols, cs): (usize, usize, usize),
        s: &mut [f32],
    ) {
        let mask = self.mask.map(|m| {
            let l = m.layout;
            let base = l.head_offsets[head] + i0 * l.row_stride + j0 * l.col_stride;
            (m.data, base, l.row_stride, l.col_stride)
        });
        if cs == 1 {
            for r in 0..rows {
                let line = &mut s[r * rs..r * rs + cols];
                if let Some((data, base, row_stride, col_stride)) = mask {
                    add_mask_line(line, data, base + r * row_stride, col_stride);
                }
                if self.is_causal {
                    // Keys j > i are hidden: c ≥ i0 + r + 1 − j0.
                    let visible = (i0 + r + 1).saturating_sub(j0).min(cols);
                    line[visible..].fill(f32::NEG_INFINITY);
                }
            }
        } else {
            debug_assert_eq!(rs, 1, "mask_block: neither axis is contiguous");
            for c in 0..cols {
                let line = &mut s[c * cs..c * cs + rows];
                if let Some((data, base, row_stride, col_stride)) = mask {
                    add_mask_line(line, data, base + c * col_stride, row_stride);
                }
                if self.is_causal {
                    // Queries i < j are hidden: r < j0 + c − i0.
                    let hidden = (j0 + c).saturating_sub(i0).min(rows);
                    line[..hidden].fill(f32::NEG_INFINITY);
                }
            }
        }
    }
}

/// The class of the tile of `rows = (i0, count)` queries and `cols = (j0, count)` keys: the
/// structured mask's, or partial (masked by `MaskedConfig::mask_block`) without one.
#[inline(always)]
fn tile_class(
    structured: Option<&StructuredMask>,
    head: usize,
    (i0, rows): (usize, usize),
    (j0, cols): (usize, usize),
) -> Tile {
    structured.map_or(Tile::Partial, |m| {
        m.tile(head, (i0, i0 + rows), (j0, j0 + cols))
    })
}

/// The blocks of `width` along `along` within `start..end` that a tile's `from = (first,
/// count)` may meet: those the structured mask's [`StructuredMask::reach`] admits, or all of
/// them without one.
fn reachable(
    structured: Option<&StructuredMask>,
    head: usize,
    along: Along,
    (first, count): (usize, usize),
    width: usize,
    (start, end): (usize, usize),
) -> Spans {
    structured
        .map_or_else(
            || vec![(start, end)],
            |m| m.reach(head, along, (first, first + count), width),
        )
        .into_iter()
        .map(|(lo, hi)| (lo.max(start), hi.min(end)))
        .filter(|(lo, hi)| lo < hi)
        .collect()
}

/// Masks a block of scores (laid out as for `MaskedConfig::mask_block`) of a tile of class
/// `class`: by the structured mask if there is one (full tiles untouched), else by `cfg`.
#[inline(always)]
fn mask_tile(
    cfg: &MaskedConfig,
    structured: Option<&StructuredMask>,
    class: Tile,
    head: usize,
    rows: (usize, usize, usize),
    cols: (usize, usize, usize),
    s: &mut [f32],
) {
    match structured {
        Some(m) if class == Tile::Partial => m.mask_block(head, rows, cols, s),
        Some(_) => {}
        None => cfg.mask_block(head, rows, cols, s),
    }
}

/// `line[n] += log₂e · data[base + n·stride]`; a stride of 0 (a broadcast axis, such as the
/// queries of a key-padding mask) adds one value to the whole line.
#[inline(always)]
fn add_mask_line(line: &mut [f32], data: &[f32], base: usize, stride: usize) {
    use std::f32::consts::LOG2_E;
    let n = line.len();
    match stride {
        0 => {
            let x = LOG2_E * data[base];
            line.iter_mut().for_each(|s| *s += x);
        }
        1 => line
            .iter_mut()
            .zip(&data[base..base + n])
            .for_each(|(s, &x)| *s += LOG2_E * x),
        _ => line
            .iter_mut()
            .enumerate()
            .for_each(|(n, s)| *s += LOG2_E * data[base + n * stride]),
    }
}

/// A mask tensor (on the host, whatever the device of q, k, v) with the offsets that read it
/// broadcast to (…, Tq, Tk).
pub(crate) struct HostMask {
    mask: CpuTensor,
    pub(crate) layout: MaskLayout,
}

impl HostMask {
    /// Checks that `mask` broadcasts to `batch + (tq, tk)` and holds no NaN or +∞.
    fn new(
        op: &'static str,
        mask: &Tensor,
        batch: &[usize],
        tq: usize,
        tk: usize,
    ) -> Result<HostMask> {
        let host = mask.to_host()?;
        let mask = host.cpu(op)?;
        let target: Vec<usize> = batch.iter().copied().chain([tq, tk]).collect();
        let ms = mask.shape();
        let offset = target.len().checked_sub(ms.len());
        let fits =
            offset.is_some_and(|o| ms.iter().zip(&target[o..]).all(|(&m, &t)| m == t || m == 1));
        if !fits {
            return Err(TfmError::shape(
                op,
                format!(
                    "attn_mask of shape {} cannot be broadcast to (..., Tq, Tk) = {}",
                    shape_str(ms),
                    shape_str(&target)
                ),
            ));
        }
        if let Some(bad) = mask
            .data()
            .iter()
            .find(|x| x.is_nan() || **x == f32::INFINITY)
        {
            return Err(TfmError::non_finite(
                op,
                format!("attn_mask holds {bad}; an additive mask takes finite values or -inf (masked out)"),
            ));
        }
        // Strides over the target's dimensions, 0 where the mask is missing or broadcast.
        let strides = broadcast_strides(ms, &target);
        let n = target.len();
        // Offset of each batch-head: the row offset over (…, Tq), whose last axis is skipped.
        let bh: usize = batch.iter().product();
        let head_offsets = (0..bh)
            .map(|h| row_offset(h, &target[..n - 1], &strides[..n - 1]))
            .collect();
        Ok(HostMask {
            mask: mask.clone(),
            layout: MaskLayout {
                head_offsets,
                row_stride: strides[n - 2],
                col_stride: strides[n - 1],
            },
        })
    }

    pub(crate) fn view(&self) -> AttnMask<'_> {
        AttnMask {
            data: self.mask.data(),
            layout: &self.layout,
        }
    }

    /// The values uploaded to the GPU, with their layout, for the GPU kernels.
    #[cfg(feature = "wgpu")]
    fn to_gpu(&self) -> Result<(crate::gpu::GpuTensor, &MaskLayout)> {
        let values = crate::gpu::GpuTensor::from_host(self.mask.data(), self.mask.shape())?;
        Ok((values, &self.layout))
    }
}

/// The leading (batch) dimensions and (Tq, Tk, E, Ev), after checking that the shapes fit.
pub(crate) fn check_shapes(
    op: &'static str,
    q: &[usize],
    k: &[usize],
    v: &[usize],
) -> Result<(Vec<usize>, [usize; 4])> {
    let fits = q.len() >= 2
        && k.len() == q.len()
        && v.len() == q.len()
        && q[..q.len() - 2] == k[..k.len() - 2]
        && k[..k.len() - 2] == v[..v.len() - 2]
        && q[q.len() - 1] == k[k.len() - 1]
        && k[k.len() - 2] == v[v.len() - 2];
    if !fits {
        return Err(TfmError::shape(
            op,
            format!(
                "expected q (..., Tq, E), k (..., Tk, E), v (..., Tk, Ev) with equal leading dimensions; got q {}, k {}, v {}",
                shape_str(q),
                shape_str(k),
                shape_str(v)
            ),
        ));
    }
    let n = q.len();
    Ok((
        q[..n - 2].to_vec(),
        [q[n - 2], k[n - 2], q[n - 1], v[n - 1]],
    ))
}

/// Validated attention arguments: leading dims, (Tq, Tk, E, Ev), the scale, the mask layout.
struct Checked {
    batch: Vec<usize>,
    dims: [usize; 4],
    scale: f32,
    mask: Option<HostMask>,
}

/// The argument checks shared by the fused and the explicit attention (`op` names the caller
/// in errors): shapes, mask broadcast and values, dropout probability, scale.
fn check_arguments(
    op: &'static str,
    [q, k, v]: [&[usize]; 3],
    attn_mask: Option<&Tensor>,
    dropout_p: f32,
    is_causal: bool,
    scale: Option<f32>,
) -> Result<Checked> {
    let (batch, dims) = check_shapes(op, q, k, v)?;
    let [tq, tk, e, _] = dims;
    crate::ensure_value!(
        (0.0..1.0).contains(&dropout_p),
        op,
        "dropout_p must be in [0, 1), got {dropout_p}"
    );
    let scale = scale.unwrap_or_else(|| default_scale(e));
    crate::ensure_value!(scale.is_finite(), op, "scale must be finite, got {scale}");
    crate::ensure_value!(
        !(is_causal && attn_mask.is_some()),
        op,
        "is_causal and attn_mask cannot both be given (as in PyTorch); add the causal mask to attn_mask instead"
    );
    let mask = attn_mask
        .map(|m| HostMask::new(op, m, &batch, tq, tk))
        .transpose()?;
    Ok(Checked {
        batch,
        dims,
        scale,
        mask,
    })
}

/// 1/√E; 1 for E = 0, where every score is an empty sum (0) and any finite scale gives the same.
fn default_scale(e: usize) -> f32 {
    if e == 0 {
        1.0
    } else {
        1.0 / (e as f32).sqrt()
    }
}

/// `dropout(softmax(scale·q·kᵀ + attn_mask)) · v`, as PyTorch's
/// `F.scaled_dot_product_attention`.
///
/// - q (…, Tq, E), k (…, Tk, E), v (…, Tk, Ev) with equal leading dimensions → (…, Tq, Ev).
/// - `attn_mask`: additive, broadcastable to (…, Tq, Tk), −∞ to mask out (boolean masks are
///   converted by the bindings); read in place, never expanded.
/// - `is_causal`: query i attends keys j ≤ i. Like PyTorch, giving it together with `attn_mask`
///   is an error (fold the causal mask into `attn_mask` instead).
/// - `dropout_p` in [0, 1): dropout on the probabilities, kept values scaled by 1/(1 − p).
/// - `scale`: defaults to 1/√E (1 for E = 0); must be finite.
///
/// A query row that no key may attend gives zeros, and zero gradients. Errors: shape (shapes
/// that do not fit), value (dropout_p, scale, causal with a mask), non-finite (NaN or +∞ in
/// the mask). Saves q, k, v, the output, the row log-sum-exp, the mask and the dropout seed.
pub fn scaled_dot_product_attention(
    q: &Var,
    k: &Var,
    v: &Var,
    attn_mask: Option<&Tensor>,
    dropout_p: f32,
    is_causal: bool,
    scale: Option<f32>,
) -> Result<Var> {
    attention_op(q, k, v, attn_mask, None, dropout_p, is_causal, scale)
}

/// [`scaled_dot_product_attention`] under a structured mask ([`MaskSpec`]: causal, sliding
/// window, global tokens, key padding, block-sparse, dense, and their compositions) by the
/// block-skipping fused kernels: tiles the mask empties cost nothing, forward and backward,
/// and no `Tq × Tk` matrix is formed (except a dense term's own array, read in place).
///
/// Errors as [`scaled_dot_product_attention`], plus: index (a global token past L and S),
/// shape (a key padding mask whose samples or keys do not fit q, k, v; a dense term that does
/// not broadcast), value (block size 0), device (q, k, v on the GPU: no GPU kernel takes
/// structured masks; nothing is copied to the host silently).
pub fn scaled_dot_product_attention_structured(
    q: &Var,
    k: &Var,
    v: &Var,
    mask: &MaskSpec,
    dropout_p: f32,
    scale: Option<f32>,
) -> Result<Var> {
    attention_op(q, k, v, None, Some(mask), dropout_p, false, scale)
}

#[allow(clippy::too_many_arguments)]
fn attention_op(
    q: &Var,
    k: &Var,
    v: &Var,
    attn_mask: Option<&Tensor>,
    structured: Option<&MaskSpec>,
    dropout_p: f32,
    is_causal: bool,
    scale: Option<f32>,
) -> Result<Var> {
    let (qv, kv, vv) = (q.value(), k.value(), v.value());
    let Checked {
        batch,
        dims: [tq, tk, e, ev],
        scale,
        mask,
    } = check_arguments(
        OP,
        [qv.shape(), kv.shape(), vv.shape()],
        attn_mask,
        dropout_p,
        is_causal,
        scale,
    )?;
    let device = Device::common(OP, [qv.device(), kv.device(), vv.device()])?;
    let structured = structured
        .map(|m| m.resolve(&batch, tq, tk).map(std::sync::Arc::new))
        .transpose()?;
    let bh = batch.iter().product();
    let seed = if dropout_p > 0.0 {
        crate::random::next_seed()
    } else {
        0
    };
    let cfg = AttentionConfig {
        bh,
        tq,
        tk,
        e,
        ev,
        scale,
        is_causal,
        dropout_p,
        seed,
    };

    let out_shape: Vec<usize> = batch.iter().copied().chain([tq, ev]).collect();
    #[cfg(feature = "wgpu")]
    if device == Device::Gpu {
        if structured.is_some() {
            return Err(TfmError::device(
                OP,
                "structured masks run on the CPU kernels only; move q, k, v to the CPU (or pass mask.to_dense(L, S) for the dense GPU kernel)",
            ));
        }
        let mask = mask.as_ref().map(HostMask::to_gpu).transpose()?;
        let (out, lse, prepared) = crate::gpu::ops::attention::forward_tensors(
            [qv.gpu(OP)?, kv.gpu(OP)?, vv.gpu(OP)?],
            &out_shape,
            &cfg,
            mask.as_ref().map(|(values, layout)| (values, *layout)),
        )?;
        let out = Tensor::from(out);
        let saved = SdpaBackward {
            q: qv,
            k: kv,
            v: vv,
            out: out.clone(),
            saved: Saved::Gpu { lse, prepared },
            cfg,
        };
        return Ok(Var::from_op(
            out,
            vec![q.clone(), k.clone(), v.clone()],
            saved,
        ));
    }
    #[cfg(not(feature = "wgpu"))]
    let _ = device;
    let mut out = crate::cpu::alloc::output(bh * tq * ev);
    let mut lse = vec![0.0f32; bh * tq];
    attention_forward_masked(
        &mut out,
        &mut lse,
        qv.cpu(OP)?.data(),
        kv.cpu(OP)?.data(),
        vv.cpu(OP)?.data(),
        &MaskedConfig {
            cfg,
            mask: mask.as_ref().map(HostMask::view),
        },
        structured.as_deref(),
    );
    let out = Tensor::new(out, &out_shape)?;
    let saved = SdpaBackward {
        q: qv,
        k: kv,
        v: vv,
        out: out.clone(),
        saved: Saved::Host {
            lse,
            mask,
            structured,
        },
        cfg,
    };
    Ok(Var::from_op(
        out,
        vec![q.clone(), k.clone(), v.clone()],
        saved,
    ))
}

/// [`scaled_dot_product_attention`] at `precision`. bf16: q, k and v are rounded to bf16 (the
/// gradients pass through the rounding) and the fused kernel computes on them in f32, so the
/// score products have bf16 inputs and f32 accumulation; the probabilities stay f32 (the
/// kernel has no bf16 form, so this costs, not saves, time).
#[allow(clippy::too_many_arguments)]
pub fn scaled_dot_product_attention_with(
    q: &Var,
    k: &Var,
    v: &Var,
    attn_mask: Option<&Tensor>,
    dropout_p: f32,
    is_causal: bool,
    scale: Option<f32>,
    precision: crate::desc::Precision,
) -> Result<Var> {
    let [q, k, v] = cast_inputs([q, k, v], precision)?;
    scaled_dot_product_attention(&q, &k, &v, attn_mask, dropout_p, is_causal, scale)
}

/// [`scaled_dot_product_attention_structured`] at `precision`, as
/// [`scaled_dot_product_attention_with`].
pub fn scaled_dot_product_attention_structured_with(
    q: &Var,
    k: &Var,
    v: &Var,
    mask: &MaskSpec,
    dropout_p: f32,
    scale: Option<f32>,
    precision: crate::desc::Precision,
) -> Result<Var> {
    let [q, k, v] = cast_inputs([q, k, v], precision)?;
    scaled_dot_product_attention_structured(&q, &k, &v, mask, dropout_p, scale)
}

/// q, k and v rounded to `precision`, the gradients passing through the rounding.
fn cast_inputs(qkv: [&Var; 3], precision: crate::desc::Precision) -> Result<[Var; 3]> {
    let [q, k, v] = qkv.map(|x| crate::ops::autocast::cast(OP, x, precision));
    Ok([q?, k?, v?])
}

/// What the forward saved besides its inputs and output, on their device.
enum Saved {
    /// The row log-sum-exp `(BH, Tq)` and the mask (additive or structured).
    Host {
        lse: Vec<f32>,
        mask: Option<HostMask>,
        structured: Option<std::sync::Arc<StructuredMask>>,
    },
    /// The row log-sum-exp on the GPU, and the parameters and mask as uploaded by the forward.
    #[cfg(feature = "wgpu")]
    Gpu {
        lse: crate::gpu::GpuBuffer,
        prepared: crate::gpu::ops::attention::Prepared,
    },
}

/// What the forward saved: inputs, output, row log-sum-exp (BH, Tq), mask, sizes, flags, seed.
struct SdpaBackward {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    saved: Saved,
    /// Everything but the mask view, which borrows from the saved mask.
    cfg: AttentionConfig,
}

impl Backward for SdpaBackward {
    fn name(&self) -> &'static str {
        OP
    }

    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let (lse, mask, structured) = match &self.saved {
            Saved::Host {
                lse,
                mask,
                structured,
            } => (lse, mask, structured.as_deref()),
            #[cfg(feature = "wgpu")]
            Saved::Gpu { lse, prepared } => {
                let crate::tensor::Placed::Gpu([g, q, k, v, out]) =
                    Tensor::place(OP, [g, &self.q, &self.k, &self.v, &self.out])?
                else {
                    return Err(TfmError::device(
                        OP,
                        "expected GPU tensors, got CPU tensors",
                    ));
                };
                let grads = crate::gpu::ops::attention::backward_tensors(
                    prepared,
                    g,
                    [q, k, v],
                    out,
                    lse,
                    &self.cfg,
                )?;
                return Ok(grads.map(|t| Some(t.into())).to_vec());
            }
        };
        let cfg = MaskedConfig {
            cfg: self.cfg,
            mask: mask.as_ref().map(HostMask::view),
        };
        let mut dq = crate::cpu::alloc::output(self.q.numel());
        let mut dk = crate::cpu::alloc::output(self.k.numel());
        let mut dv = crate::cpu::alloc::output(self.v.numel());
        attention_backward_masked(
            &mut dq,
            &mut dk,
            &mut dv,
            g.cpu(OP)?.data(),
            self.q.cpu(OP)?.data(),
            self.k.cpu(OP)?.data(),
            self.v.cpu(OP)?.data(),
            self.out.cpu(OP)?.data(),
            lse,
            &cfg,
            structured,
        );
        Ok(vec![
            Some(Tensor::new(dq, self.q.shape())?),
            Some(Tensor::new(dk, self.k.shape())?),
            Some(Tensor::new(dv, self.v.shape())?),
        ])
    }
}
