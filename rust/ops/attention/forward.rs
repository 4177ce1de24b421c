//! The fused forward: for each block of `BR` query rows, an online softmax over blocks of `BC`
//! keys (FlashAttention), keeping a running row maximum `m`, row sum `l` and unnormalized
//! output; nothing `Tq × Tk` is ever stored.

use super::kernels::{
    block_matmul, dispatch, exp_in_place, exp_sub_sum, round_up, row_max, Kernel, Operand, Scratch,
    Simd, LANES, MR,
};
use super::AttentionConfig;
use crate::cpu::active_isa;
use rayon::prelude::*;

/// Query rows per block.
pub(super) const BR: usize = 64;
/// Keys per block.
pub(super) const BC: usize = 64;

/// The fused attention forward.
///
/// - `out` (BH, Tq, Ev): `dropout(softmax(scale·q·kᵀ + mask)) · v`; zeros for a query row
///   that no key may attend.
/// - `lse` (BH, Tq): saved for the backward; the natural log-sum-exp of each row of scaled,
///   masked scores, or +∞ for a row with no key (so that `exp(s − lse)` is 0 there).
/// - `q` (BH, Tq, E), `k` (BH, Tk, E), `v` (BH, Tk, Ev); sizes, mask, flags in `cfg`.
///
/// Runs on the current rayon pool, over batch×heads and, when those are fewer than a few per
/// thread, over chunks of query blocks too. Every query row is computed the same way whatever
/// the split, so results do not depend on the thread count.
///
/// Panics if a slice length does not match `cfg`.
pub fn attention_forward(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cfg: &AttentionConfig,
) {
    let (bh, tq, tk, e, ev) = (cfg.bh, cfg.tq, cfg.tk, cfg.e, cfg.ev);
    assert_eq!(q.len(), bh * tq * e, "attention_forward: q");
    assert_eq!(k.len(), bh * tk * e, "attention_forward: k");
    assert_eq!(v.len(), bh * tk * ev, "attention_forward: v");
    assert_eq!(out.len(), bh * tq * ev, "attention_forward: out");
    assert_eq!(lse.len(), bh * tq, "attention_forward: lse");
    if bh == 0 {
        return;
    }
    let isa = active_isa();
    // Enough tasks for work stealing to even out causal rows of unequal length.
    let q_blocks = tq.div_ceil(BR);
    let chunks = (4 * rayon::current_num_threads())
        .div_ceil(bh)
        .min(q_blocks)
        .max(1);
    let chunk_rows = (q_blocks.div_ceil(chunks) * BR).max(BR);
    let mut tasks = Vec::new();
    let (mut out_rest, mut lse_rest) = (out, lse);
    for head in 0..bh {
        let (q_h, k_h, v_h) = (
            &q[head * tq * e..(head + 1) * tq * e],
            &k[head * tk * e..(head + 1) * tk * e],
            &v[head * tk * ev..(head + 1) * tk * ev],
        );
        for row0 in (0..tq).step_by(chunk_rows) {
            let rows = chunk_rows.min(tq - row0);
            let (out, rest) = std::mem::take(&mut out_rest).split_at_mut(rows * ev);
            out_rest = rest;
            let (lse, rest) = std::mem::take(&mut lse_rest).split_at_mut(rows);
            lse_rest = rest;
            tasks.push(ForwardTask {
                cfg,
                head,
                row0,
                out,
                lse,
                q: &q_h[row0 * e..(row0 + rows) * e],
                k: k_h,
                v: v_h,
            });
        }
    }
    tasks.into_par_iter().for_each(|task| dispatch(isa, task));
}

/// Query rows `row0 .. row0 + lse.len()` of head `head`; `q`, `out` and `lse` are those rows,
/// `k` and `v` the whole head.
struct ForwardTask<'a> {
    cfg: &'a AttentionConfig<'a>,
    head: usize,
    row0: usize,
    out: &'a mut [f32],
    lse: &'a mut [f32],
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
}

impl Kernel for ForwardTask<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self) {
        let ForwardTask {
            cfg,
            head,
            row0,
            out,
            lse,
            q,
            k,
            v,
        } = self;
        let (tq, tk, e, ev) = (cfg.tq, cfg.tk, cfg.e, cfg.ev);
        let (ep, evp) = (round_up(e, LANES), round_up(ev, LANES));
        let k_blocks = tk.div_ceil(BC);
        let mut scratch = Scratch::take(k_blocks * BC * (e + evp) + BR * (ep + BC + evp));
        // kt (k_blocks, E, BC): kᵀ per key block, so the score product reads B rows contiguously.
        // vp (k_blocks·BC, Evp): v padded to whole blocks and LANES columns.
        // qs (BR, Ep): scale·q for one query block. s (BR, BC): scores, then probabilities.
        // acc (BR, Evp): the unnormalized output.
        let [kt, vp, qs, s, acc] = scratch.carve([
            k_blocks * e * BC,
            k_blocks * BC * evp,
            BR * ep,
            BR * BC,
            BR * evp,
        ]);
        pack_transposed_blocks(kt, k, tk, e);
        pack_rows(vp, v, tk, ev, evp, 1.0);
        let mut m = [0.0f32; BR]; // running row max
        let mut l = [0.0f32; BR]; // running row sum of exp(s − m)
        let mut m_new = [0.0f32; BR]; // row max after this key block
        let mut alpha = [0.0f32; BR]; // exp(m − m_new): rescales l and acc
        let keep_scale = 1.0 / (1.0 - cfg.dropout_p);

        for i0 in (0..lse.len()).step_by(BR) {
            let br = BR.min(lse.len() - i0);
            let mr = round_up(br, MR);
            let first = row0 + i0; // row of the head
            qs.fill(0.0);
            for r in 0..br {
                for (d, &x) in qs[r * ep..r * ep + e]
                    .iter_mut()
                    .zip(&q[(i0 + r) * e..(i0 + r + 1) * e])
                {
                    *d = cfg.scale * x;
                }
            }
            acc.fill(0.0);
            m.fill(f32::NEG_INFINITY);
            l.fill(0.0);
            // Causal: key blocks past the block's last row are all masked; skip them.
            let kb_end = if cfg.is_causal {
                k_blocks.min((first + br - 1) / BC + 1)
            } else {
                k_blocks
            };
            for kb in 0..kb_end {
                let j0 = kb * BC;
                let bc = BC.min(tk - j0);
                let nc = round_up(bc, LANES);
                block_matmul::<S>(
                    (mr, nc, e),
                    Operand::rows(qs, ep, 0),
                    &kt[kb * e * BC..],
                    BC,
                    s,
                    BC,
                    false,
                );
                // In phases over all rows rather than row by row, so that the rows' dependency
                // chains (reduce, then exp, then reduce) overlap and the rescale factors take
                // one vector exp per 16 rows.
                for r in 0..br {
                    let row = &mut s[r * BC..r * BC + nc];
                    cfg.mask_scores(head, first + r, j0, bc, row);
                    m_new[r] = m[r].max(row_max(row));
                }
                for r in 0..BR {
                    // A row with no key so far keeps alpha = 1 (its acc and l are still 0).
                    alpha[r] = if m_new[r] == f32::NEG_INFINITY {
                        0.0
                    } else {
                        m[r] - m_new[r]
                    };
                }
                exp_in_place::<S>(&mut alpha);
                for r in 0..br {
                    let row = &mut s[r * BC..r * BC + nc];
                    if m_new[r] == f32::NEG_INFINITY {
                        row.fill(0.0);
                        continue;
                    }
                    l[r] = l[r] * alpha[r] + exp_sub_sum::<S>(row, m_new[r]);
                    if alpha[r] != 1.0 {
                        acc[r * evp..(r + 1) * evp]
                            .iter_mut()
                            .for_each(|x| *x *= alpha[r]);
                    }
                    if cfg.dropout_p > 0.0 {
                        // The row sum l was taken before dropout: dropout acts on probabilities.
                        let base = ((head * tq + first + r) * tk + j0) as u64;
                        for (c, p) in row[..bc].iter_mut().enumerate() {
                            let kept =
                                crate::random::keep(cfg.seed, base + c as u64, cfg.dropout_p);
                            *p = if kept { *p * keep_scale } else { 0.0 };
                        }
                    }
                }
                m = m_new;
                block_matmul::<S>(
                    (mr, evp, bc),
                    Operand::rows(s, BC, 0),
                    &vp[j0 * evp..],
                    evp,
                    acc,
                    evp,
                    true,
                );
            }
            for r in 0..br {
                let o = &mut out[(i0 + r) * ev..(i0 + r + 1) * ev];
                if l[r] > 0.0 {
                    let inv = 1.0 / l[r];
                    o.iter_mut()
                        .zip(&acc[r * evp..])
                        .for_each(|(o, &a)| *o = a * inv);
                    lse[i0 + r] = m[r] + l[r].ln();
                } else {
                    o.fill(0.0);
                    lse[i0 + r] = f32::INFINITY;
                }
            }
        }
    }
}

/// `x` (T, C) row-major into all of `dst`: rows of `cols` ≥ C values, each times `scale`, zero
/// in the padding columns and in the rows past T.
#[inline(always)] // into the SIMD trampolines, to be vectorized for their instruction set
pub(super) fn pack_rows(dst: &mut [f32], x: &[f32], t: usize, c: usize, cols: usize, scale: f32) {
    if cols == 0 {
        return;
    }
    for (r, row) in dst.chunks_exact_mut(cols).enumerate() {
        let src: &[f32] = if r < t { &x[r * c..(r + 1) * c] } else { &[] };
        let (valid, pad) = row.split_at_mut(src.len());
        valid.iter_mut().zip(src).for_each(|(d, &s)| *d = scale * s);
        pad.fill(0.0);
    }
}

/// `x` (T, C) row-major into all of `dst` as its transpose cut into blocks of `BC` rows of `x`:
/// `(ceil(T/BC), C, BC)`, zero past row T. Block `b` is then the `C × BC` operand `x[b]ᵀ`.
/// Written row by row of `dst`, so the writes are contiguous and the reads strided.
#[inline(always)]
pub(super) fn pack_transposed_blocks(dst: &mut [f32], x: &[f32], t: usize, c: usize) {
    for (bd, row) in dst.chunks_exact_mut(BC).enumerate() {
        let (b, d) = (bd / c, bd % c);
        let valid = BC.min(t - b * BC);
        let src = x[b * BC * c + d..].iter().step_by(c);
        row[..valid].iter_mut().zip(src).for_each(|(v, &x)| *v = x);
        row[valid..].fill(0.0);
    }
}
