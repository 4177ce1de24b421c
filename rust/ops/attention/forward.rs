//! The fused forward: for each block of `BR` query rows, an online softmax over blocks of `BC`
//! keys (FlashAttention), keeping a running row maximum `m`, row sum `l` and unnormalized
//! output; nothing `Tq × Tk` is ever stored.
//!
//! A block's scores are formed transposed, keys by queries (`K_j · Q_iᵀ`), so that the online
//! softmax runs down the keys with 16 queries per vector: its maxima and sums are then plain
//! vector operations instead of a horizontal reduction per row, which cost about as much as the
//! exponentials. Scores are kept in base 2 (see [`super::kernels::exp2`]).

use super::kernels::{
    block_matmul, dispatch, exp2, exp2_sub, round_up, Kernel, Operand, Prefetch, Scratch, Simd,
    LANES, MR,
};
use super::mask::{Along, StructuredMask, Tile};
use super::MaskedConfig;
use crate::cpu::{active_isa, pool};

/// Query rows per block.
pub(super) const BR: usize = 64;
/// Keys per block.
pub(super) const BC: usize = 64;
/// How far (in base-2 exponent) a row's maximum may pass the softmax's reference maximum
/// before the reference moves and the row's running sums are rescaled.
const LAZY: f32 = 8.0;

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
    cfg: &MaskedConfig,
) {
    attention_forward_masked(out, lse, q, k, v, cfg, None)
}

/// [`attention_forward`] under a structured mask too (`cfg` then has neither mask nor causal
/// flag): tiles the mask empties are skipped, full ones run unmasked, partial ones are masked
/// row by row from the mask's indices.
pub fn attention_forward_masked(
    out: &mut [f32],
    lse: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    cfg: &MaskedConfig,
    structured: Option<&StructuredMask>,
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
    let chunks = (4 * pool::threads()).div_ceil(bh).min(q_blocks).max(1);
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
                structured,
                head,
                row0,
                out,
                lse,
                q: &q_h[row0 * e..(row0 + rows) * e],
                k: k_h,
                v: v_h,
                next: [&[], &[], &[]],
            });
        }
    }
    for i in 1..tasks.len() {
        let (q, k, v) = (tasks[i].q, tasks[i].k, tasks[i].v);
        // The same head's k and v are cached already; prefetching them again costs nothing.
        tasks[i - 1].next = [q, k, v];
    }
    pool::for_each(tasks, |task| dispatch(isa, task));
}

/// Query rows `row0 .. row0 + lse.len()` of head `head`; `q`, `out` and `lse` are those rows,
/// `k` and `v` the whole head.
struct ForwardTask<'a> {
    cfg: &'a MaskedConfig<'a>,
    structured: Option<&'a StructuredMask>,
    head: usize,
    row0: usize,
    out: &'a mut [f32],
    lse: &'a mut [f32],
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    /// q, k, v of the next task, to prefetch.
    next: [&'a [f32]; 3],
}

impl Kernel for ForwardTask<'_> {
    type Output = ();

    #[inline(always)]
    fn run<S: Simd>(self) {
        let ForwardTask {
            cfg,
            structured,
            head,
            row0,
            out,
            lse,
            q,
            k,
            v,
            next,
        } = self;
        let (tq, tk, e, ev) = (cfg.tq, cfg.tk, cfg.e, cfg.ev);
        let evp = round_up(ev, LANES);
        let k_blocks = tk.div_ceil(BC);
        let q_blocks = lse.len().div_ceil(BR);
        let next = Prefetch {
            data: next,
            steps: q_blocks * k_blocks,
        };
        // k and v are read in place where the block product's padding allows: k's rows are
        // taken in fours (the last block's are copied, padded), v's columns in sixteens.
        let k_tail = tk % MR != 0;
        let v_packed = evp != ev;
        let mut scratch = Scratch::take(
            e * BR
                + BC * BR
                + BR * evp
                + usize::from(k_tail) * BC * e
                + usize::from(v_packed) * tk * evp,
        );
        // qt (E, BR): (log₂e·scale·q)ᵀ for one query block, zero past its rows.
        // st (BC, BR): scores transposed, then probabilities: key c, query r at [c·BR + r].
        // acc (BR, Evp): the unnormalized output. kl (BC, E): the last key block, padded.
        // vp (Tk, Evp): v with its columns padded.
        let [qt, st, acc, kl, vp] = scratch.carve([
            e * BR,
            BC * BR,
            BR * evp,
            usize::from(k_tail) * BC * e,
            usize::from(v_packed) * tk * evp,
        ]);
        if k_tail {
            let j0 = (k_blocks - 1) * BC;
            pack_rows(kl, &k[j0 * e..], tk - j0, e, e, 1.0);
        }
        let (vb, ldv): (&[f32], usize) = if v_packed {
            pack_rows(vp, v, tk, ev, evp, 1.0);
            (vp, evp)
        } else {
            (v, ev)
        };
        // Query lanes past a block's rows compute on zeros; keep them finite from the start.
        st.fill(0.0);
        let q_scale = cfg.scale * std::f32::consts::LOG2_E;
        let keep_scale = 1.0 / (1.0 - cfg.dropout_p);
        // Per query (lane r): the reference maximum `m` of the base-2 scores (within LAZY of
        // the running maximum), running sum `l` of 2^(s − m), this block's sums, and `alpha` =
        // 2^(m_old − m_new) that rescales l and acc when m moves.
        let mut m = [0.0f32; BR];
        let mut l = [0.0f32; BR];
        let mut sum = [0.0f32; BR];
        let mut alpha = [0.0f32; BR];
        let mut m_sub = [0.0f32; BR];

        for i0 in (0..lse.len()).step_by(BR) {
            let br = BR.min(lse.len() - i0);
            let (mr, nq) = (round_up(br, MR), round_up(br, LANES));
            let first = row0 + i0; // row of the head
            if br < BR {
                qt.fill(0.0);
            }
            crate::cpu::gemm::transpose(&q[i0 * e..], e, e, br, BR, qt, S::AVX512);
            qt.iter_mut().for_each(|x| *x *= q_scale);
            m.fill(f32::NEG_INFINITY);
            l.fill(0.0);
            // Causal: key blocks past the block's last row are all masked; skip them.
            let kb_end = if cfg.is_causal {
                k_blocks.min((first + br - 1) / BC + 1)
            } else {
                k_blocks
            };
            // Only the key blocks the mask may reach: O(T) tiles of a sparse mask, not T².
            let spans =
                super::reachable(structured, head, Along::Keys, (first, br), BC, (0, kb_end));
            // Whether acc holds a product yet: the first written key block writes it instead
            // of rescaling and adding to it.
            let mut started = false;
            for kb in next.walk(i0 / BR * k_blocks, k_blocks, &spans) {
                let j0 = kb * BC;
                let bc = BC.min(tk - j0);
                let class = super::tile_class(structured, head, (first, br), (j0, bc));
                if class == Tile::Empty {
                    continue;
                }
                let mc = round_up(bc, MR);
                let k_op = if k_tail && kb == k_blocks - 1 {
                    Operand::rows(kl, e, 0)
                } else {
                    Operand::rows(k, e, j0)
                };
                block_matmul::<S>((mc, nq, e), k_op, qt, BR, st, BR, false);
                super::mask_tile(
                    cfg,
                    structured,
                    class,
                    head,
                    (first, br, 1),
                    (j0, bc, BR),
                    st,
                );
                // The softmax runs down the keys with 16 queries per vector, so its row maxima
                // and sums are elementwise: no horizontal reductions.
                let mut m_new = m;
                for key in st[..bc * BR].chunks_exact(BR) {
                    for (mx, &s) in m_new.iter_mut().zip(key) {
                        *mx = if s > *mx { s } else { *mx };
                    }
                }
                for r in 0..BR {
                    // The reference m moves only when a row's maximum passes it by more than
                    // LAZY (as in FlashAttention-4): the probabilities, then up to 2^LAZY, stay
                    // far from overflow, and most key blocks after the first rescale nothing.
                    // A query with no key so far keeps m = −∞ and alpha = 1 (its acc and l are
                    // still 0), and subtracts 0 so that its masked scores give 0.
                    let moved = m_new[r] > m[r] + LAZY;
                    alpha[r] = exp2::<S>(if moved { m[r] - m_new[r] } else { 0.0 });
                    m[r] = if moved { m_new[r] } else { m[r] };
                    m_sub[r] = if m[r] == f32::NEG_INFINITY { 0.0 } else { m[r] };
                }
                sum.fill(0.0);
                for key in st[..bc * BR].chunks_exact_mut(BR) {
                    let lanes = key.chunks_exact_mut(16).zip(m_sub.chunks_exact(16));
                    for ((p, m), sm) in lanes.zip(sum.chunks_exact_mut(16)) {
                        let y = exp2_sub::<S>(p, m);
                        p.copy_from_slice(&y);
                        sm.iter_mut().zip(&y).for_each(|(sm, y)| *sm += y);
                    }
                }
                for r in 0..BR {
                    l[r] = l[r] * alpha[r] + sum[r];
                }
                if started {
                    for r in 0..br {
                        if alpha[r] != 1.0 {
                            acc[r * evp..(r + 1) * evp]
                                .iter_mut()
                                .for_each(|x| *x *= alpha[r]);
                        }
                    }
                }
                if cfg.dropout_p > 0.0 {
                    // The sums were taken before dropout: dropout acts on probabilities.
                    for (c, key) in st[..bc * BR].chunks_exact_mut(BR).enumerate() {
                        for (r, p) in key[..br].iter_mut().enumerate() {
                            let at = ((head * tq + first + r) * tk + j0 + c) as u64;
                            let kept = crate::random::keep(cfg.seed, at, cfg.dropout_p);
                            *p = if kept { *p * keep_scale } else { 0.0 };
                        }
                    }
                }
                block_matmul::<S>(
                    (mr, evp, bc),
                    Operand::transposed(st, BR),
                    &vb[j0 * ldv..],
                    ldv,
                    acc,
                    evp,
                    started,
                );
                started = true;
            }
            for r in 0..br {
                let o = &mut out[(i0 + r) * ev..(i0 + r + 1) * ev];
                if l[r] > 0.0 {
                    let inv = 1.0 / l[r];
                    o.iter_mut()
                        .zip(&acc[r * evp..])
                        .for_each(|(o, &a)| *o = a * inv);
                    lse[i0 + r] = (m[r] + l[r].log2()) * std::f32::consts::LN_2;
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
