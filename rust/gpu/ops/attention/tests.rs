//! The GPU attention against the CPU's fused kernels: causal, key-padding and general
//! broadcast masks, dropout (same decisions), rows that attend no key, awkward sizes.

use super::*;
use crate::gpu::buffer::{download, upload};
use crate::gpu::tests::{assert_rel, require_gpu};
use crate::ops::attention::{attention_backward, attention_forward, AttnMask, MaskedConfig};
use crate::ops::test_support::rand_vec;

/// [`prepare`] with the mask's values uploaded, as the op does.
fn prepared(cfg: &MaskedConfig) -> Result<Prepared> {
    let values = cfg
        .mask
        .map(|m| GpuTensor::from_host(m.data, &[m.data.len()]))
        .transpose()?;
    prepare(cfg, values.as_ref().zip(cfg.mask.map(|m| m.layout)))
}

/// `forward` from and to the host: `(out, lse)`.
fn forward_host(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cfg: &MaskedConfig,
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (out, lse) = (
        GpuBuffer::zeros(cfg.bh * cfg.tq * cfg.ev)?,
        GpuBuffer::zeros(cfg.bh * cfg.tq)?,
    );
    forward(
        &prepared(cfg)?,
        &out,
        &lse,
        &upload(q)?,
        &upload(k)?,
        &upload(v)?,
        cfg,
    )?;
    Ok((download(&out)?, download(&lse)?))
}

/// `backward` from and to the host: `(dq, dk, dv)`.
#[allow(clippy::too_many_arguments)]
fn backward_host(
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    cfg: &MaskedConfig,
) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
    let dq = GpuBuffer::zeros(q.len())?;
    let dk = GpuBuffer::zeros(k.len())?;
    let dv = GpuBuffer::zeros(v.len())?;
    backward(
        &prepared(cfg)?,
        &dq,
        &dk,
        &dv,
        &upload(dout)?,
        &upload(q)?,
        &upload(k)?,
        &upload(v)?,
        &upload(out)?,
        &upload(lse)?,
        cfg,
    )?;
    Ok((download(&dq)?, download(&dk)?, download(&dv)?))
}

struct Case {
    bh: usize,
    tq: usize,
    tk: usize,
    e: usize,
    ev: usize,
    causal: bool,
    dropout_p: f32,
    /// Key padding: for each batch-head, keys at or past this count are masked out
    /// (row stride 0, one row of Tk per head); fully padded heads test empty rows.
    valid_keys: Option<Vec<usize>>,
}

fn check(c: &Case, seed: u64) {
    let (bh, tq, tk, e, ev) = (c.bh, c.tq, c.tk, c.e, c.ev);
    let q = rand_vec(seed, bh * tq * e, -1.0, 1.0);
    let k = rand_vec(seed + 1, bh * tk * e, -1.0, 1.0);
    let v = rand_vec(seed + 2, bh * tk * ev, -1.0, 1.0);
    let dout = rand_vec(seed + 3, bh * tq * ev, -1.0, 1.0);
    let mask_data: Vec<f32> = match &c.valid_keys {
        Some(valid) => (0..bh * tk)
            .map(|x| {
                if x % tk < valid[x / tk] {
                    0.0
                } else {
                    f32::NEG_INFINITY
                }
            })
            .collect(),
        None => vec![],
    };
    let layout = MaskLayout {
        head_offsets: (0..bh).map(|h| h * tk).collect(),
        row_stride: 0,
        col_stride: 1,
    };
    let cfg = AttentionConfig {
        bh,
        tq,
        tk,
        e,
        ev,
        scale: 1.0 / (e as f32).sqrt(),
        is_causal: c.causal,
        dropout_p: c.dropout_p,
        seed: 0x5eed_0000_0000_0001 + seed,
    };
    let cfg = MaskedConfig {
        cfg,
        mask: c.valid_keys.as_ref().map(|_| AttnMask {
            data: &mask_data,
            layout: &layout,
        }),
    };
    let (mut out, mut lse) = (vec![0.0; bh * tq * ev], vec![0.0; bh * tq]);
    attention_forward(&mut out, &mut lse, &q, &k, &v, &cfg);
    let (got_out, got_lse) = forward_host(&q, &k, &v, &cfg).unwrap();
    let what = format!(
        "bh={bh} tq={tq} tk={tk} e={e} ev={ev} causal={} p={} mask={}",
        c.causal,
        c.dropout_p,
        c.valid_keys.is_some()
    );
    assert_rel(&format!("out {what}"), &got_out, &out, 1e-4);
    assert_rel(&format!("lse {what}"), &got_lse, &lse, 1e-4);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    attention_backward(
        &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &cfg,
    );
    let (gq, gk, gv) = backward_host(&dout, &q, &k, &v, &got_out, &got_lse, &cfg).unwrap();
    assert_rel(&format!("dq {what}"), &gq, &dq, 1e-4);
    assert_rel(&format!("dk {what}"), &gk, &dk, 1e-4);
    assert_rel(&format!("dv {what}"), &gv, &dv, 1e-4);
}

fn case(bh: usize, tq: usize, tk: usize, e: usize, ev: usize, causal: bool) -> Case {
    Case {
        bh,
        tq,
        tk,
        e,
        ev,
        causal,
        dropout_p: 0.0,
        valid_keys: None,
    }
}

#[test]
fn attention_matches_cpu_on_awkward_shapes() {
    if !require_gpu("attention") {
        return;
    }
    for (i, c) in [
        case(1, 1, 1, 1, 1, false),
        case(3, 17, 33, 8, 5, false),
        case(2, 70, 70, 16, 16, true),
        case(2, 5, 19, 3, 7, true),
        case(1, 3, 80, 128, 128, false),
        case(2, 9, 40, 48, 64, true),
        case(1, 5, 7, 33, 20, false),
    ]
    .iter()
    .enumerate()
    {
        check(c, 10 * i as u64);
    }
}

#[test]
fn attention_key_padding_and_empty_rows() {
    if !require_gpu("attention") {
        return;
    }
    let c = Case {
        valid_keys: Some(vec![20, 0, 1, 7]),
        ..case(4, 9, 20, 8, 8, false)
    };
    check(&c, 1);
    let c = Case {
        valid_keys: Some(vec![3, 70]),
        ..case(2, 66, 70, 4, 4, true)
    };
    check(&c, 2);
}

#[test]
fn attention_dropout_uses_the_cpu_decisions() {
    if !require_gpu("attention") {
        return;
    }
    check(
        &Case {
            dropout_p: 0.3,
            ..case(2, 17, 21, 8, 4, false)
        },
        3,
    );
    check(
        &Case {
            dropout_p: 0.5,
            ..case(1, 33, 33, 4, 4, true)
        },
        4,
    );
}

#[test]
fn attention_rejects_large_heads() {
    if !require_gpu("attention") {
        return;
    }
    let cfg = MaskedConfig {
        cfg: AttentionConfig {
            bh: 1,
            tq: 1,
            tk: 1,
            e: 129,
            ev: 1,
            scale: 1.0,
            is_causal: false,
            dropout_p: 0.0,
            seed: 0,
        },
        mask: None,
    };
    let err = forward_host(&[0.0; 129], &[0.0; 129], &[0.0], &cfg).unwrap_err();
    assert_eq!(err.kind, crate::error::ErrorKind::Value);
}
