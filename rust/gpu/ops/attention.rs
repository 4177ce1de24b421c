//! Fused scaled dot-product attention on the GPU, forward and backward, with the CPU kernels'
//! configuration ([`AttentionConfig`]: sizes, scale, causal flag, the broadcast additive mask,
//! dropout probability and seed) and results: `out (BH, Tq, Ev)` and the row log-sum-exp
//! `lse (BH, Tq)`; the backward recomputes the probabilities from q, k and lse. Head dims
//! `E`, `Ev` up to 128. See `attention.wgsl` for the tiling.

use super::check_lens;
use super::gemm::u32_of;
use crate::desc::{AttentionConfig, MaskLayout};
use crate::ensure_value;
use crate::error::Result;
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::pipeline::{grid_elems, launch, shader, Arg, Shader};
use crate::gpu::GpuTensor;
use crate::random::keep_threshold;

const OP: &str = "gpu attention";
// One variant per head-size class: MAX_D × BC = 2048 floats per tile.
shader!(
    ATTENTION_32,
    "attention.wgsl",
    "d32",
    "const MAX_D: u32 = 32u; const BC: u32 = 64u;"
);
shader!(
    ATTENTION_64,
    "attention.wgsl",
    "d64",
    "const MAX_D: u32 = 64u; const BC: u32 = 32u;"
);
shader!(
    ATTENTION_128,
    "attention.wgsl",
    "d128",
    "const MAX_D: u32 = 128u; const BC: u32 = 16u;"
);

/// The variant for the larger of the head dims (checked against [`MAX_HEAD_DIM`] first).
fn variant(cfg: &AttentionConfig) -> &'static Shader {
    match cfg.e.max(cfg.ev) {
        0..=32 => &ATTENTION_32,
        33..=64 => &ATTENTION_64,
        _ => &ATTENTION_128,
    }
}

/// The largest head dimension the kernels take (`MAX_D` in the shader).
pub const MAX_HEAD_DIM: usize = 128;
/// Rows per workgroup (`BR`).
const ROWS: usize = 64;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    bh: u32,
    tq: u32,
    tk: u32,
    e: u32,
    ev: u32,
    scale: f32,
    causal: u32,
    has_mask: u32,
    row_stride: u32,
    col_stride: u32,
    threshold: u32,
    dropout_scale: f32,
    seed: [u32; 2],
    _pad: [u32; 2],
}

/// The uniform parameters and the mask's data and head offsets, uploaded.
pub struct Prepared {
    params: Params,
    mask: GpuTensor,
    offsets: GpuBuffer,
}

/// Checks `cfg` against the kernels' limits and uploads its parameters and the mask's offsets;
/// the mask's values are already on the GPU.
pub fn prepare(cfg: &AttentionConfig, mask: Option<(&GpuTensor, &MaskLayout)>) -> Result<Prepared> {
    ensure_value!(
        cfg.e <= MAX_HEAD_DIM && cfg.ev <= MAX_HEAD_DIM,
        OP,
        "head dimensions E = {}, Ev = {} exceed the GPU kernels' limit of {MAX_HEAD_DIM}",
        cfg.e,
        cfg.ev
    );
    ensure_value!(
        (0.0..1.0).contains(&cfg.dropout_p),
        OP,
        "dropout_p must lie in [0, 1), got {}",
        cfg.dropout_p
    );
    ensure_value!(
        cfg.bh <= 65_535,
        OP,
        "{} batch-heads exceed one dispatch's 65 535 workgroups",
        cfg.bh
    );
    for (what, n) in [
        ("BH·Tq·E", cfg.bh * cfg.tq * cfg.e),
        ("BH·Tk·E", cfg.bh * cfg.tk * cfg.e),
        ("BH·Tq·Ev", cfg.bh * cfg.tq * cfg.ev),
        ("BH·Tk·Ev", cfg.bh * cfg.tk * cfg.ev),
        ("2·BH·Tq", 2 * cfg.bh * cfg.tq),
    ] {
        u32_of(OP, what, n)?;
    }
    let has_mask = mask.is_some();
    let (mask, offsets, row_stride, col_stride) = match mask {
        Some((values, m)) => {
            let offsets: Vec<u32> = m
                .head_offsets
                .iter()
                .map(|&o| u32_of(OP, "a mask offset", o))
                .collect::<Result<_>>()?;
            (
                values.clone(),
                GpuBuffer::from_slice(&offsets)?,
                u32_of(OP, "the mask's row stride", m.row_stride)?,
                u32_of(OP, "the mask's column stride", m.col_stride)?,
            )
        }
        None => (GpuTensor::zeros(&[1])?, GpuBuffer::zeros(1)?, 0, 0),
    };
    let dropout = cfg.dropout_p > 0.0;
    let params = Params {
        bh: cfg.bh as u32,
        tq: cfg.tq as u32,
        tk: cfg.tk as u32,
        e: cfg.e as u32,
        ev: cfg.ev as u32,
        scale: cfg.scale,
        causal: cfg.is_causal as u32,
        has_mask: has_mask as u32,
        row_stride,
        col_stride,
        threshold: if dropout {
            keep_threshold(cfg.dropout_p).max(1)
        } else {
            0
        },
        dropout_scale: (1.0 / (1.0 - cfg.dropout_p as f64)) as f32,
        seed: [cfg.seed as u32, (cfg.seed >> 32) as u32],
        _pad: [0; 2],
    };
    Ok(Prepared {
        params,
        mask,
        offsets,
    })
}

fn blocks(t: usize, bh: usize) -> [u32; 3] {
    [t.div_ceil(ROWS).max(1) as u32, bh as u32, 1]
}

/// Checks the forward's buffers against `cfg`'s sizes.
fn check_io(
    cfg: &AttentionConfig,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    out: &GpuBuffer,
    lse: &GpuBuffer,
) -> Result<()> {
    let (bh, tq, tk, e, ev) = (cfg.bh, cfg.tq, cfg.tk, cfg.e, cfg.ev);
    check_lens(
        OP,
        &[
            ("q", q, bh * tq * e),
            ("k", k, bh * tk * e),
            ("v", v, bh * tk * ev),
            ("out", out, bh * tq * ev),
            ("lse", lse, bh * tq),
        ],
    )
}

/// The forward: writes `out (BH, Tq, Ev)` and `lse (BH, Tq)` from `q (BH, Tq, E)`,
/// `k (BH, Tk, E)`, `v (BH, Tk, Ev)`, with `cfg`'s parameters and mask uploaded by [`prepare`]
/// (the autograd op keeps them for its backward).
pub fn forward(
    pr: &Prepared,
    out: &GpuBuffer,
    lse: &GpuBuffer,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    cfg: &AttentionConfig,
) -> Result<()> {
    check_io(cfg, q, k, v, out, lse)?;
    let (bh, tq) = (cfg.bh, cfg.tq);
    if bh * tq == 0 {
        return Ok(());
    }
    let (ga, gb) = (GpuBuffer::zeros(1)?, GpuBuffer::zeros(1)?);
    let args = [
        Arg::In(q),
        Arg::In(k),
        Arg::In(v),
        Arg::In(pr.mask.buffer()),
        Arg::In(&pr.offsets),
        Arg::In(q),
        Arg::Out(out),
        Arg::Out(lse),
        Arg::Out(&ga),
        Arg::Out(&gb),
    ];
    launch(
        OP,
        variant(cfg),
        "forward",
        &pr.params,
        &args,
        blocks(tq, bh),
    )
}

/// The backward: writes `dq`, `dk`, `dv` (shaped as q, k, v) from `dout (BH, Tq, Ev)` and what
/// the forward took and produced, with the same `cfg` and its [`prepare`]d upload.
#[allow(clippy::too_many_arguments)]
pub fn backward(
    pr: &Prepared,
    dq: &GpuBuffer,
    dk: &GpuBuffer,
    dv: &GpuBuffer,
    dout: &GpuBuffer,
    q: &GpuBuffer,
    k: &GpuBuffer,
    v: &GpuBuffer,
    out: &GpuBuffer,
    lse: &GpuBuffer,
    cfg: &AttentionConfig,
) -> Result<()> {
    check_io(cfg, q, k, v, out, lse)?;
    let (bh, tq, tk, e, ev) = (cfg.bh, cfg.tq, cfg.tk, cfg.e, cfg.ev);
    check_lens(
        OP,
        &[
            ("dq", dq, bh * tq * e),
            ("dk", dk, bh * tk * e),
            ("dv", dv, bh * tk * ev),
            ("dout", dout, bh * tq * ev),
        ],
    )?;
    if bh == 0 {
        return Ok(());
    }
    // lse (copied on the device), then delta = rowsum(dout ∘ out) from `backward_delta`.
    let stats = GpuBuffer::zeros(2 * bh * tq)?;
    stats.copy_from(lse)?;
    let unused = GpuBuffer::zeros(1)?;
    let args = |ga, gb| {
        [
            Arg::In(q),
            Arg::In(k),
            Arg::In(v),
            Arg::In(pr.mask.buffer()),
            Arg::In(&pr.offsets),
            Arg::In(dout),
            Arg::Out(out),
            Arg::Out(&stats),
            Arg::Out(ga),
            Arg::Out(gb),
        ]
    };
    launch(
        OP,
        variant(cfg),
        "backward_delta",
        &pr.params,
        &args(&unused, dq),
        grid_elems(bh * tq),
    )?;
    launch(
        OP,
        variant(cfg),
        "backward_dq",
        &pr.params,
        &args(dq, &unused),
        blocks(tq, bh),
    )?;
    launch(
        OP,
        variant(cfg),
        "backward_dkv",
        &pr.params,
        &args(dk, dv),
        blocks(tk, bh),
    )
}

/// [`prepare`] and [`forward`] on GPU tensors: the output `(…, Tq, Ev)` shaped `out_shape`, the
/// row log-sum-exp `(BH·Tq)` and the prepared parameters and mask, which
/// [`backward_tensors`] takes so that the mask is uploaded once.
pub(crate) fn forward_tensors(
    [q, k, v]: [&GpuTensor; 3],
    out_shape: &[usize],
    cfg: &AttentionConfig,
    mask: Option<(&GpuTensor, &MaskLayout)>,
) -> Result<(GpuTensor, GpuBuffer, Prepared)> {
    let out = GpuTensor::zeros(out_shape)?;
    let lse = GpuBuffer::zeros(cfg.bh * cfg.tq)?;
    let prepared = prepare(cfg, mask)?;
    forward(
        &prepared,
        out.buffer(),
        &lse,
        q.buffer(),
        k.buffer(),
        v.buffer(),
        cfg,
    )?;
    Ok((out, lse, prepared))
}

/// [`backward`] on GPU tensors: `[dq, dk, dv]` shaped as `q`, `k`, `v`; `cfg` gives the sizes
/// and flags (the mask is in `prepared`).
#[allow(clippy::too_many_arguments)]
pub(crate) fn backward_tensors(
    prepared: &Prepared,
    g: &GpuTensor,
    [q, k, v]: [&GpuTensor; 3],
    out: &GpuTensor,
    lse: &GpuBuffer,
    cfg: &AttentionConfig,
) -> Result<[GpuTensor; 3]> {
    let [dq, dk, dv] = [q, k, v].map(|t| GpuTensor::zeros(t.shape()));
    let (dq, dk, dv) = (dq?, dk?, dv?);
    backward(
        prepared,
        dq.buffer(),
        dk.buffer(),
        dv.buffer(),
        g.buffer(),
        q.buffer(),
        k.buffer(),
        v.buffer(),
        out.buffer(),
        lse,
        cfg,
    )?;
    Ok([dq, dk, dv])
}

#[cfg(test)]
mod tests;
