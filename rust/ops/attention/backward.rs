//! The fused backward (FlashAttention-2): per head, for each key block and each query block that
//! can see it, recompute `P = exp(scale·q·kᵀ + mask − lse)` from the saved log-sum-exp, then
//!
//! ```text
//! dV_j += (P∘Z)ᵀ dO_i          Z: dropout's keep/(1 − p), or 1
//! dP    = (dO_i V_jᵀ) ∘ Z
//! dS    = P ∘ (dP − D_i)       D_i = rowsum(dO ∘ O), equal to rowsum(P ∘ dP)
//! dQ_i += scale · dS K_j
//! dK_j += scale · dS^T Q_i
//! ```
//!
//! A head runs on one thread, key blocks outermost, so its sums are formed in one fixed order.

use super::forward::{pack_rows, BC, BR};
use super::kernels::{
    block_matmul, dispatch, exp2_sub, round_up, Kernel, Operand, Prefetch, Scratch, Simd, LANES, MR,
};
use super::mask::{Along, StructuredMask, Tile};
use super::MaskedConfig;
use crate::cpu::{active_isa, pool};
use std::f32::consts::LOG2_E;

/// The fused attention backward.
///
/// - `dq` (BH, Tq, E), `dk` (BH, Tk, E), `dv` (BH, Tk, Ev): written (not accumulated).
/// - `dout` (BH, Tq, Ev): the gradient of the output.
/// - `q`, `k`, `v`, `out` (BH, Tq, Ev) and `lse` (BH, Tq): what [`super::attention_forward`]
///   took and produced, with the same `cfg` (mask, scale, flags, dropout seed).
///
/// Runs on the current rayon pool, one task per batch-head; results do not depend on the
/// thread count. Panics if a slice length does not match `cfg`.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    cfg: &MaskedConfig,
) {
    attention_backward_masked(dq, dk, dv, dout, q, k, v, out, lse, cfg, None)
}

/// [`attention_backward`] under the structured mask the forward ran with (see
/// [`super::attention_forward_masked`]): tiles it empties are skipped.
#[allow(clippy::too_many_arguments)]
pub fn attention_backward_masked(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    dout: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    lse: &[f32],
    cfg: &MaskedConfig,
    structured: Option<&StructuredMask>,
) {
    let (bh, tq, tk, e, ev) = (cfg.bh, cfg.tq, cfg.tk, cfg.e, cfg.ev);
    for (name, len, want) in [
        ("dq", dq.len(), bh * tq * e),
        ("dk", dk.len(), bh * tk * e),
        ("dv", dv.len(), bh * tk * ev),
        ("dout", dout.len(), bh * tq * ev),
        ("q", q.len(), bh * tq * e),
        ("k", k.len(), bh * tk * e),
        ("v", v.len(), bh * tk * ev),
        ("out", out.len(), bh * tq * ev),
        ("lse", lse.len(), bh * tq),
    ] {
        assert_eq!(len, want, "attention_backward: {name}");
    }
    let isa = active_isa();
    let mut tasks = Vec::with_capacity(bh);
    let (mut dq_rest, mut dk_rest, mut dv_rest) = (dq, dk, dv);
    for head in 0..bh {
        let (dq, rest) = std::mem::take(&mut dq_rest).split_at_mut(tq * e);
        dq_rest = rest;
        let (dk, rest) = std::mem::take(&mut dk_rest).split_at_mut(tk * e);
        dk_rest = rest;
        let (dv, rest) = std::mem::take(&mut dv_rest).split_at_mut(tk * ev);
        dv_rest = rest;
        tasks.push(BackwardTask {
            cfg,
            structured,
            head,
            dq,
            dk,
            dv,
            dout: &dout[head * tq * ev..(head + 1) * tq * ev],
            q: &q[head * tq * e..(head + 1) * tq * e],
            k: &k[head * tk * e..(head + 1) * tk * e],
            v: &v[head * tk * ev..(head + 1) * tk * ev],
            out: &out[head * tq * ev..(head + 1) * tq * ev],
            lse: &lse[head * tq..(head + 1) * tq],
            next: [&[], &[], &[], &[], &[]],
        });
    }
    for i in 1..tasks.len() {
        let t = &tasks[i];
        tasks[i - 1].next = [t.q, t.k, t.v, t.dout, t.out];
    }
    pool::for_each(tasks, |task| dispatch(isa, task));
}

/// One batch-head of the backward; every slice is that head's.
struct BackwardTask<'a> {
    cfg: &'a MaskedConfig<'a>,
    structured: Option<&'a StructuredMask>,
    head: usize,
    dq: &'a mut [f32],
    dk: &'a mut [f32],
    dv: &'a mut [f32],
    dout: &'a [f32],
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    out: &'a [f32],
    lse: &'a [f32],
    /// q, k, v, dout, out of the next head, to prefetch.
    next: [&'a [f32]; 5],
}

impl Kernel for BackwardTask<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self) {
        let BackwardTask {
            cfg,
            structured,
            head,
            dq,
            dk,
            dv,
            dout,
            q,
            k,
            v,
            out,
            lse,
            next,
        } = self;
        let (tq, tk, e, ev) = (cfg.tq, cfg.tk, cfg.e, cfg.ev);
        let (ep, evp) = (round_up(e, LANES), round_up(ev, LANES));
        let (q_blocks, k_blocks) = (tq.div_ceil(BR), tk.div_ceil(BC));
        let (tqp, tkp) = (q_blocks * BR, k_blocks * BC);
        let dropout = cfg.dropout_p > 0.0;
        let block = BR * BC;
        let dropout_block = if dropout { block } else { 0 };
        // The block products read whole LANES of columns and whole MR rows (as A operands and
        // accumulators). Where a head's q, k, dout or gradients already have that shape they
        // are used in place; otherwise through copies padded to it.
        let rows_q = tq % MR == 0;
        let rows_k = tk % MR == 0;
        let q_in_place = e == ep && rows_q;
        let k_in_place = e == ep;
        let dout_in_place = ev == evp && rows_q;
        let dk_in_place = e == ep && rows_k;
        let dv_in_place = ev == evp && rows_k;
        let unless = |in_place: bool, len: usize| if in_place { 0 } else { len };
        let lens = [
            unless(q_in_place, tqp * ep),     // qp (Tqp, Ep): q
            unless(k_in_place, tkp * ep),     // kp (Tkp, Ep): k
            e * BC,  // kt (E, BC): (log₂e·scale·k)ᵀ of the current key block
            ev * BC, // vt (Ev, BC): vᵀ of the current key block
            unless(dout_in_place, tqp * evp), // dop (Tqp, Evp): dO
            tq,      // d (Tq): D_i = rowsum(dO ∘ O)
            tq,      // lse2 (Tq): lse·log₂e, the base-2 log-sum-exp
            unless(q_in_place, tqp * ep), // dq_buf (Tqp, Ep)
            unless(dk_in_place, tkp * ep), // dk_buf (Tkp, Ep)
            unless(dv_in_place, tkp * evp), // dv_buf (Tkp, Evp)
            block,   // p (BR, BC): P
            dropout_block, // z (BR, BC): dropout's Z
            dropout_block, // pz (BR, BC): P∘Z
            block,   // ds (BR, BC): dP, then dS in place
        ];
        let mut scratch = Scratch::take(lens.iter().sum());
        let [qp, kp, kt, vt, dop, d, lse2, dq_buf, dk_buf, dv_buf, p, z, pz, ds] =
            scratch.carve(lens);
        let (qp, kp, dop) = (
            operand(q, tq, e, qp, q_in_place),
            operand(k, tk, e, kp, k_in_place),
            operand(dout, tq, ev, dop, dout_in_place),
        );
        // Scores in base 2, as the forward keeps them: the scale and log₂e go with kᵀ.
        let k_scale = cfg.scale * LOG2_E;
        for (l2, &l) in lse2.iter_mut().zip(lse) {
            *l2 = l * LOG2_E;
        }
        for (i, di) in d.iter_mut().enumerate() {
            *di = crate::cpu::gemm::dot(&dout[i * ev..(i + 1) * ev], &out[i * ev..(i + 1) * ev]);
        }
        let dq_acc: &mut [f32] = if q_in_place { &mut *dq } else { &mut *dq_buf };
        let dk_acc: &mut [f32] = if dk_in_place { &mut *dk } else { &mut *dk_buf };
        let dv_acc: &mut [f32] = if dv_in_place { &mut *dv } else { &mut *dv_buf };
        // Each accumulator's first product writes it (no zeroing pass); rows that no product
        // reaches are zeroed: the key blocks that no query sees (causal with Tk > Tq, or
        // masked out), and the query blocks that see no key.
        let mut dq_started = vec![false; q_blocks];
        let keep_scale = 1.0 / (1.0 - cfg.dropout_p);

        let next = Prefetch {
            data: next,
            steps: k_blocks * q_blocks,
        };
        for kb in 0..k_blocks {
            let j0 = kb * BC;
            let bc = BC.min(tk - j0);
            let (nc, mc) = (round_up(bc, LANES), round_up(bc, MR));
            // Causal: query blocks that end before this key block see none of it.
            let qb_start = if cfg.is_causal { j0 / BR } else { 0 };
            // Only the query blocks the mask lets see this key block. Those skipped are empty
            // tiles, left as the tile rule's would be: unwritten, zeroed below if nothing
            // else reaches them.
            let spans = super::reachable(
                structured,
                head,
                Along::Queries,
                (j0, bc),
                BR,
                (qb_start, q_blocks),
            );
            let mut k_started = false;
            for qb in next.walk(kb * q_blocks, q_blocks, &spans) {
                let i0 = qb * BR;
                let br = BR.min(tq - i0);
                let mr = round_up(br, MR);
                let class = super::tile_class(structured, head, (i0, br), (j0, bc));
                if class == Tile::Empty {
                    continue;
                }
                if !k_started {
                    // This block's kᵀ and vᵀ, packed when a query first sees it: per block, so
                    // they stay in cache however long the sequence (whole-head copies went
                    // to memory and back at 64k tokens).
                    pack_transposed_block::<S>(kt, k, tk, e, kb);
                    kt.iter_mut().for_each(|x| *x *= k_scale);
                    pack_transposed_block::<S>(vt, v, tk, ev, kb);
                }
                block_matmul::<S>((mr, nc, e), Operand::rows(qp, ep, i0), kt, BC, p, BC, false);
                super::mask_tile(cfg, structured, class, head, (i0, br, BC), (j0, bc, 1), p);
                // Padding keys get −∞ too, so that their (unused) gradients stay finite. The
                // exponentials run over whole rows of BC (the columns past nc are not read) so
                // that the loop has a fixed length.
                for row in p.chunks_exact_mut(BC).take(br) {
                    row[bc..nc].fill(f32::NEG_INFINITY);
                }
                for (row, &l) in p.chunks_exact_mut(BC).zip(&lse2[i0..i0 + br]) {
                    let l = [l; 16];
                    for s in row.chunks_exact_mut(16) {
                        let y = exp2_sub::<S>(s, &l);
                        s.copy_from_slice(&y);
                    }
                }
                if dropout {
                    for r in 0..br {
                        let base = ((head * tq + i0 + r) * tk + j0) as u64;
                        for c in 0..nc {
                            let kept = c < bc
                                && crate::random::keep(cfg.seed, base + c as u64, cfg.dropout_p);
                            z[r * BC + c] = if kept { keep_scale } else { 0.0 };
                            pz[r * BC + c] = p[r * BC + c] * z[r * BC + c];
                        }
                    }
                }
                // dP = dO_i V_jᵀ
                block_matmul::<S>(
                    (mr, nc, ev),
                    Operand::rows(dop, evp, i0),
                    vt,
                    BC,
                    ds,
                    BC,
                    false,
                );
                let pz_block: &[f32] = if dropout { pz } else { p };
                // dV_j += (P∘Z)ᵀ dO_i: depth is the block's valid query rows only.
                block_matmul::<S>(
                    (mc, evp, br),
                    Operand::transposed(pz_block, BC),
                    &dop[i0 * evp..],
                    evp,
                    &mut dv_acc[j0 * evp..],
                    evp,
                    k_started,
                );
                // dS is kept times the scale, which dQ and dK both take.
                let scale = cfg.scale;
                for r in 0..br {
                    let di = d[i0 + r];
                    let (p_row, ds_row) = (&p[r * BC..r * BC + nc], &mut ds[r * BC..r * BC + nc]);
                    if dropout {
                        let z_row = &z[r * BC..r * BC + nc];
                        ds_row
                            .iter_mut()
                            .zip(p_row)
                            .zip(z_row)
                            .for_each(|((g, &p), &z)| *g = scale * p * (*g * z - di));
                    } else {
                        ds_row
                            .iter_mut()
                            .zip(p_row)
                            .for_each(|(g, &p)| *g = scale * p * (*g - di));
                    }
                }
                // dK_j += (scale·dS)ᵀ Q_i; dQ_i += (scale·dS) K_j. (The order of the products keeps
                // each operand's two uses adjacent, while it is in L1.)
                block_matmul::<S>(
                    (mc, ep, br),
                    Operand::transposed(ds, BC),
                    &qp[i0 * ep..],
                    ep,
                    &mut dk_acc[j0 * ep..],
                    ep,
                    k_started,
                );
                block_matmul::<S>(
                    (mr, ep, bc),
                    Operand::rows(ds, BC, 0),
                    &kp[j0 * ep..],
                    ep,
                    &mut dq_acc[i0 * ep..],
                    ep,
                    dq_started[qb],
                );
                k_started = true;
                dq_started[qb] = true;
            }
            if !k_started {
                dk_acc[j0 * ep..(j0 + bc) * ep].fill(0.0);
                dv_acc[j0 * evp..(j0 + bc) * evp].fill(0.0);
            }
        }
        for (qb, _) in dq_started.iter().enumerate().filter(|(_, &s)| !s) {
            let end = ((qb + 1) * BR * ep).min(dq_acc.len());
            dq_acc[qb * BR * ep..end].fill(0.0);
        }
        for (out, buf, c, in_place) in [
            (dq, dq_buf, e, q_in_place),
            (dk, dk_buf, e, dk_in_place),
            (dv, dv_buf, ev, dv_in_place),
        ] {
            if !in_place {
                unpack_rows(out, buf, c, round_up(c, LANES));
            }
        }
    }
}

/// The first `dst.len() / c` rows of `src` (row stride `ld`), cut to `c` columns.
fn unpack_rows(dst: &mut [f32], src: &[f32], c: usize, ld: usize) {
    if c == 0 {
        return;
    }
    for (d, s) in dst.chunks_exact_mut(c.max(1)).zip(src.chunks_exact(ld)) {
        d.copy_from_slice(&s[..c]);
    }
}

/// Rows `b·BC .. b·BC + BC` of `x` (T, C) row-major into `dst` (C, BC) as their transpose, zero
/// past row T: the `C × BC` operand `x[b]ᵀ`.
fn pack_transposed_block<S: Simd>(dst: &mut [f32], x: &[f32], t: usize, c: usize, b: usize) {
    if c == 0 {
        return;
    }
    let valid = BC.min(t - b * BC);
    if valid < BC {
        dst.fill(0.0);
    }
    crate::cpu::gemm::transpose(&x[b * BC * c..], c, c, valid, BC, dst, S::AVX512);
}

/// `x` (T, C) itself when `in_place`, else `x` packed into `buf` with its rows padded to
/// `round_up(C, LANES)` columns.
#[inline(always)]
fn operand<'a>(x: &'a [f32], t: usize, c: usize, buf: &'a mut [f32], in_place: bool) -> &'a [f32] {
    if in_place {
        x
    } else {
        pack_rows(buf, x, t, c, round_up(c, LANES), 1.0);
        buf
    }
}
