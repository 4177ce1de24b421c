//! LSH attention (Kitaev et al. 2020, "Reformer: The Efficient Transformer").
//!
//! Queries and keys are one projection `x` (…, T, E); keys are its rows normalised,
//! `k_j = x_j / √(|x_j|² + ε)`, so that a token's key points where its query does. Each of
//! `n_hashes` rounds hashes the keys with a random rotation R (E × n_buckets/2, Gaussian,
//! drawn from `seed`): `bucket = argmax [kR, −kR]`, so nearby directions share a bucket. The
//! tokens are sorted by (bucket, position) and cut into chunks of `bucket_size`; each chunk's
//! queries attend to the keys of their own chunk and of the previous one (cyclically), scores
//! `x_i·k_j / √E`. A token does not attend to itself unless nothing else is visible to it (its
//! key is its own query's nearest). Causal: only keys at positions j ≤ i. Key padding: keys
//! marked as padding are hidden from every query; they are still hashed and sorted, so they
//! take chunk places (as in the Reformer), but no query attends to them.
//!
//! The rounds combine by log-sum-exp: round r gives an output o_r and a log-sum-exp ℓ_r over its
//! visible keys, and `out = Σ_r exp(ℓ_r − ℓ) o_r`, `ℓ = log Σ_r exp ℓ_r` — a softmax over all
//! (round, key) pairs, so a key seen in several rounds weighs more, as in the Reformer paper
//! without its duplicate correction. A token that sees no other key in any round outputs its
//! own value.
//!
//! Sizes: T must be a multiple of `bucket_size`, and `n_buckets = T / bucket_size` (the
//! Reformer's choice: buckets as large as chunks on average) must be 1 or even, as the
//! rotation hash makes buckets in ± pairs. Time O(n_hashes · T · bucket_size · E) instead of
//! O(T² · E); memory O(n_hashes · T · Ev) for the per-round outputs.
//!
//! With one or two chunks every query sees every key, whatever the hash: the result is dense
//! attention with shared QK and the diagonal masked, which the tests use as the oracle.
//!
//! ```
//! use tfm_rs::{autograd::{backward, Var}, ops, tensor::Tensor};
//! use ops::lsh_attention::{lsh_attention, LshConfig};
//! let t = |n, s: &[usize]| Var::leaf(Tensor::new((0..n).map(|i| (i as f32 * 0.37).sin()).collect(), s).unwrap(), true);
//! let (qk, v) = (t(2 * 16 * 4, &[2, 16, 4]), t(2 * 16 * 3, &[2, 16, 3]));
//! let cfg = LshConfig { n_hashes: 2, bucket_size: 4, causal: false, seed: 0 };
//! let out = lsh_attention(&qk, &v, &cfg, None).unwrap();
//! assert_eq!(out.shape(), vec![2, 16, 3]);
//! backward(&ops::reduce::sum(&out, &[], false).unwrap(), None, false).unwrap();
//! assert_eq!(qk.grad().unwrap().shape(), &[2, 16, 4]);
//! ```

use crate::autograd::{Backward, Var};
use crate::cpu::gemm::{gemm, Epilogue, MatRef};
use crate::cpu::simd::simd_kernel;
use crate::error::{Result, TfmError};
use crate::ops::rows::{axpy, dot, exp_fast, for_each_row, rows_mut};
use crate::tensor::{shape_str, Device, Tensor};

const OP: &str = "lsh_attention";

/// Added to |x|² before the square root when normalising keys, so a zero row stays finite.
const NORM_EPS: f32 = 1e-6;

/// The options of [`lsh_attention`].
#[derive(Clone, Copy, Debug)]
pub struct LshConfig {
    /// Hash rounds (≥ 1); more rounds miss fewer near neighbours.
    pub n_hashes: usize,
    /// Tokens per chunk (≥ 1); T must be a multiple of it.
    pub bucket_size: usize,
    /// Query i sees keys j ≤ i only.
    pub causal: bool,
    /// Draws the rotations: equal seeds hash alike, in training and evaluation.
    pub seed: u64,
}

/// Sizes of one call: heads, tokens, widths, buckets and the options.
#[derive(Clone, Copy, Debug)]
struct Sizes {
    bh: usize,
    t: usize,
    e: usize,
    ev: usize,
    n_buckets: usize,
    scale: f32,
    opts: LshConfig,
}

impl Sizes {
    fn n_chunks(&self) -> usize {
        self.t / self.opts.bucket_size
    }

    /// The chunks whose keys chunk `c` sees: itself and the previous one (cyclically), once
    /// each.
    fn window(&self, c: usize) -> impl Iterator<Item = usize> {
        let n = self.n_chunks();
        let prev = (c + n - 1) % n;
        std::iter::once(c).chain((prev != c).then_some(prev))
    }
}

/// The rotations of every round, (n_hashes, E, n_buckets/2): standard normal values drawn by
/// Box–Muller from `seed` and each value's index, so they depend on nothing else.
fn rotations(s: &Sizes) -> Vec<f32> {
    let n = s.opts.n_hashes * s.e * (s.n_buckets / 2);
    (0..n as u64)
        .map(|i| {
            let u1 = 1.0 - crate::random::uniform(s.opts.seed, 2 * i) as f64;
            let u2 = crate::random::uniform(s.opts.seed, 2 * i + 1) as f64;
            ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
        })
        .collect()
}

/// The keys: rows of `x` (T, E) divided by `√(|x|² + ε)`; also returns those norms.
fn normalised(x: &[f32], e: usize, t: usize) -> (Vec<f32>, Vec<f32>) {
    let mut k = x.to_vec();
    let mut norms = vec![0.0f32; t];
    for (row, n) in rows_mut(&mut k, t, e).into_iter().zip(&mut norms) {
        *n = (dot(row, row) + NORM_EPS).sqrt();
        let inv = 1.0 / *n;
        row.iter_mut().for_each(|v| *v *= inv);
    }
    (k, norms)
}

/// Each round's order of the positions, sorted by (bucket, position): (n_hashes, T).
fn sort_orders(k: &[f32], rot: &[f32], s: &Sizes) -> Vec<u32> {
    let (t, e, half) = (s.t, s.e, s.n_buckets / 2);
    let mut orders = Vec::with_capacity(s.opts.n_hashes * t);
    let mut bucket = vec![0usize; t];
    let mut proj = vec![0.0f32; half];
    for r in 0..s.opts.n_hashes {
        let rot = &rot[r * e * half..(r + 1) * e * half];
        for (i, b) in bucket.iter_mut().enumerate() {
            if half == 0 {
                *b = 0;
                continue;
            }
            proj.fill(0.0);
            for (d, &kd) in k[i * e..(i + 1) * e].iter().enumerate() {
                axpy(&mut proj, kd, &rot[d * half..(d + 1) * half]);
            }
            // argmax over [proj, −proj], the first on ties.
            let (mut best, mut arg) = (f32::NEG_INFINITY, 0);
            for (j, &p) in proj.iter().enumerate() {
                if p > best {
                    (best, arg) = (p, j);
                }
            }
            for (j, &p) in proj.iter().enumerate() {
                if -p > best {
                    (best, arg) = (-p, half + j);
                }
            }
            *b = arg;
        }
        // Counting sort: stable, so positions stay ascending within a bucket.
        let mut start = vec![0usize; s.n_buckets + 1];
        bucket.iter().for_each(|&b| start[b + 1] += 1);
        for b in 0..s.n_buckets {
            start[b + 1] += start[b];
        }
        let mut order = vec![0u32; t];
        for (i, &b) in bucket.iter().enumerate() {
            order[start[b]] = i as u32;
            start[b] += 1;
        }
        orders.extend(order);
    }
    orders
}

/// One chunk of one round, gathered so that its products are GEMMs: the query positions
/// (`c`), the key positions they see (own chunk, then the previous one: `nk` ≤ 2c), the
/// queries `q` (c, E), keys `k` (nk, E) and values `v` (nk, Ev) copied out of the head, and the
/// scaled scores `s` (c, nk) with −∞ where a key is hidden (the query itself, a padding key,
/// or a later position when causal).
#[derive(Default)]
struct Chunk {
    qpos: Vec<usize>,
    kpos: Vec<usize>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    s: Vec<f32>,
}

impl Chunk {
    /// Gathers chunk `chunk` of round order `order` from x (T, E), the normalised keys (T, E) and
    /// v (T, Ev), and computes its scores; `padding` (T) marks the head's padding keys.
    #[allow(clippy::too_many_arguments)]
    fn load(
        &mut self,
        chunk: usize,
        order: &[u32],
        x: &[f32],
        keys: &[f32],
        v: &[f32],
        padding: Option<&[bool]>,
        s: &Sizes,
    ) {
        let (c, e, ev) = (s.opts.bucket_size, s.e, s.ev);
        let rows = |w: usize| order[w * c..(w + 1) * c].iter().map(|&j| j as usize);
        self.qpos.clear();
        self.qpos.extend(rows(chunk));
        self.kpos.clear();
        for w in s.window(chunk) {
            self.kpos.extend(rows(w));
        }
        gather(&mut self.q, x, &self.qpos, e);
        gather(&mut self.k, keys, &self.kpos, e);
        gather(&mut self.v, v, &self.kpos, ev);
        let nk = self.kpos.len();
        self.s.resize(c * nk, 0.0);
        gemm(
            s.scale,
            MatRef::row_major(&self.q, c, e),
            MatRef::row_major(&self.k, nk, e).t(),
            0.0,
            &mut self.s,
            nk,
            &Epilogue::default(),
            false,
        );
        for (row, &i) in self.s.chunks_mut(nk.max(1)).zip(&self.qpos) {
            for (sc, &j) in row.iter_mut().zip(&self.kpos) {
                if j == i || (s.opts.causal && j > i) || padding.is_some_and(|p| p[j]) {
                    *sc = f32::NEG_INFINITY;
                }
            }
        }
    }
}

/// `dst` ← the rows `pos` of `src` (rows of `width`), one after another.
fn gather(dst: &mut Vec<f32>, src: &[f32], pos: &[usize], width: usize) {
    dst.clear();
    for &j in pos {
        dst.extend_from_slice(&src[j * width..(j + 1) * width]);
    }
}

/// Row `a` of `rows` (row-major, `width` wide) added into row `pos[a]` of `dst`, for every a.
fn scatter_add(dst: &mut [f32], rows: &[f32], pos: &[usize], width: usize) {
    for (row, &j) in rows.chunks(width.max(1)).zip(pos) {
        axpy(&mut dst[j * width..(j + 1) * width], 1.0, row);
    }
}

/// `c (m, n) ← a (m, k) · b (k, n)`, row-major, one thread (the heads are the parallel loop).
fn matmul(c: &mut Vec<f32>, a: MatRef, b: MatRef) {
    c.resize(a.rows * b.cols, 0.0);
    gemm(1.0, a, b, 0.0, c, b.cols, &Epilogue::default(), false);
}

simd_kernel! {
    /// One head's forward: `out` (T, Ev) and `lse` (T; −∞ where the token saw only itself)
    /// from x (T, E), v (T, Ev), the round orders (n_hashes, T) and the padding keys (T). Each
    /// chunk is two GEMMs (scores, then probabilities times values) around a row softmax.
    fn head_forward(
        out: &mut [f32],
        lse: &mut [f32],
        x: &[f32],
        v: &[f32],
        orders: &[u32],
        padding: Option<&[bool]>,
        s: &Sizes,
    ) {
        let (t, e, ev, nh) = (s.t, s.e, s.ev, s.opts.n_hashes);
        let (keys, _) = normalised(x, e, t);
        // Per round: log-sum-exp (−∞ if no key) and normalised output.
        let mut lse_r = vec![f32::NEG_INFINITY; nh * t];
        let mut out_r = vec![0.0f32; nh * t * ev];
        let (mut ch, mut o) = (Chunk::default(), Vec::new());
        for r in 0..nh {
            for chunk in 0..s.n_chunks() {
                ch.load(chunk, &orders[r * t..(r + 1) * t], x, &keys, v, padding, s);
                let nk = ch.kpos.len();
                for (row, &i) in ch.s.chunks_mut(nk.max(1)).zip(&ch.qpos) {
                    let m = row.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x));
                    if m == f32::NEG_INFINITY {
                        row.fill(0.0);
                        continue;
                    }
                    row.iter_mut().for_each(|p| *p = exp_fast(*p - m));
                    let sum: f32 = row.iter().sum();
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|p| *p *= inv);
                    lse_r[r * t + i] = m + sum.ln();
                }
                let c = ch.qpos.len();
                matmul(&mut o, MatRef::row_major(&ch.s, c, nk), MatRef::row_major(&ch.v, nk, ev));
                for (row, &i) in o.chunks(ev.max(1)).zip(&ch.qpos) {
                    out_r[(r * t + i) * ev..(r * t + i + 1) * ev].copy_from_slice(row);
                }
            }
        }
        for i in 0..t {
            let m = (0..nh).fold(f32::NEG_INFINITY, |m, r| m.max(lse_r[r * t + i]));
            let o = &mut out[i * ev..(i + 1) * ev];
            if m == f32::NEG_INFINITY {
                o.copy_from_slice(&v[i * ev..(i + 1) * ev]);
                lse[i] = m;
                continue;
            }
            let sum: f32 = (0..nh).map(|r| (lse_r[r * t + i] - m).exp()).sum();
            let total = m + sum.ln();
            o.fill(0.0);
            for r in 0..nh {
                let w = (lse_r[r * t + i] - total).exp();
                axpy(o, w, &out_r[(r * t + i) * ev..(r * t + i + 1) * ev]);
            }
            lse[i] = total;
        }
    }
}

simd_kernel! {
    /// One head's backward: `dx` (T, E), `dv` (T, Ev) from the output gradient `g` (T, Ev),
    /// x, v, the saved output, log-sum-exp and orders. The combined output is one softmax over
    /// all (round, key) pairs with log-sum-exp `lse`, so each pair's gradient is the usual
    /// `p (g_i·v_j − g_i·out_i)`, whichever round it came from. Per chunk: the scores again,
    /// then four GEMMs (dV, dP, dQ, dK) whose rows are added back at their positions.
    #[allow(clippy::too_many_arguments)]
    fn head_backward(
        dx: &mut [f32],
        dv: &mut [f32],
        g: &[f32],
        x: &[f32],
        v: &[f32],
        out: &[f32],
        lse: &[f32],
        orders: &[u32],
        padding: Option<&[bool]>,
        s: &Sizes,
    ) {
        let (t, e, ev) = (s.t, s.e, s.ev);
        let (keys, norms) = normalised(x, e, t);
        dx.fill(0.0);
        dv.fill(0.0);
        let mut dk = vec![0.0f32; t * e];
        let delta: Vec<f32> = (0..t)
            .map(|i| dot(&g[i * ev..(i + 1) * ev], &out[i * ev..(i + 1) * ev]))
            .collect();
        let (mut ch, mut gq, mut dp, mut tmp) = (Chunk::default(), Vec::new(), Vec::new(), Vec::new());
        for r in 0..s.opts.n_hashes {
            for chunk in 0..s.n_chunks() {
                ch.load(chunk, &orders[r * t..(r + 1) * t], x, &keys, v, padding, s);
                let (c, nk) = (ch.qpos.len(), ch.kpos.len());
                gather(&mut gq, g, &ch.qpos, ev);
                // P = exp(S − lse_i); a token that saw nothing (lse −∞) has no pairs.
                for (row, &i) in ch.s.chunks_mut(nk.max(1)).zip(&ch.qpos) {
                    if lse[i] == f32::NEG_INFINITY {
                        row.fill(0.0);
                    } else {
                        row.iter_mut().for_each(|p| *p = exp_fast(*p - lse[i]));
                    }
                }
                let p = MatRef::row_major(&ch.s, c, nk);
                matmul(&mut tmp, p.t(), MatRef::row_major(&gq, c, ev));
                scatter_add(dv, &tmp, &ch.kpos, ev);
                matmul(&mut dp, MatRef::row_major(&gq, c, ev), MatRef::row_major(&ch.v, nk, ev).t());
                // dS = scale · P ∘ (dP − δ_i), in place of dP.
                for ((drow, prow), &i) in dp.chunks_mut(nk.max(1)).zip(ch.s.chunks(nk.max(1))).zip(&ch.qpos) {
                    for (d, &p) in drow.iter_mut().zip(prow) {
                        *d = s.scale * p * (*d - delta[i]);
                    }
                }
                let ds = MatRef::row_major(&dp, c, nk);
                matmul(&mut tmp, ds, MatRef::row_major(&ch.k, nk, e));
                scatter_add(dx, &tmp, &ch.qpos, e);
                matmul(&mut tmp, ds.t(), MatRef::row_major(&ch.q, c, e));
                scatter_add(&mut dk, &tmp, &ch.kpos, e);
            }
        }
        for i in 0..t {
            if lse[i] == f32::NEG_INFINITY {
                // Attended only itself: out_i = v_i.
                axpy(&mut dv[i * ev..(i + 1) * ev], 1.0, &g[i * ev..(i + 1) * ev]);
            }
            // Through k = x / n, n = √(|x|² + ε): dx += dk / n − k (k·dk) / n.
            let (ki, dki) = (&keys[i * e..(i + 1) * e], &dk[i * e..(i + 1) * e]);
            let (inv, kd) = (1.0 / norms[i], dot(ki, dki));
            let dxi = &mut dx[i * e..(i + 1) * e];
            axpy(dxi, inv, dki);
            axpy(dxi, -kd * inv, ki);
        }
    }
}

/// Checks the shapes and options; returns the leading dimensions and the sizes.
fn check(qk: &[usize], v: &[usize], opts: &LshConfig) -> Result<(Vec<usize>, Sizes)> {
    let n = qk.len();
    crate::ensure_shape!(
        n >= 2 && v.len() == n && qk[..n - 1] == v[..n - 1],
        OP,
        "expected qk (..., T, E) and v (..., T, Ev) with equal leading dimensions; got qk {}, v {}",
        shape_str(qk),
        shape_str(v)
    );
    let (t, e, ev) = (qk[n - 2], qk[n - 1], v[n - 1]);
    let c = opts.bucket_size;
    crate::ensure_value!(c >= 1, OP, "bucket_size must be at least 1, got 0");
    crate::ensure_value!(opts.n_hashes >= 1, OP, "n_hashes must be at least 1, got 0");
    crate::ensure_shape!(
        t % c == 0,
        OP,
        "the sequence length {t} is not a multiple of bucket_size {c}; pad the sequence (and mask the padding out of the loss) or pick a bucket_size that divides it"
    );
    let n_buckets = t / c;
    crate::ensure_value!(
        n_buckets <= 1 || n_buckets.is_multiple_of(2),
        OP,
        "T / bucket_size = {t} / {c} = {n_buckets} buckets; the rotation hash makes buckets in ± pairs, so their number must be even (or 1)"
    );
    let scale = if e == 0 { 1.0 } else { 1.0 / (e as f32).sqrt() };
    let sizes = Sizes {
        bh: qk[..n - 2].iter().product(),
        t,
        e,
        ev,
        n_buckets,
        scale,
        opts: *opts,
    };
    Ok((qk[..n - 2].to_vec(), sizes))
}

/// Reformer LSH self-attention with shared queries and keys, on `Var`s (see the module doc).
///
/// - qk (…, T, E), v (…, T, Ev) with equal leading dimensions → (…, T, Ev).
/// - T a multiple of `cfg.bucket_size`, T / bucket_size = 1 or even.
/// - `key_padding`: the keys to hide, `true` per (…, T) position (PyTorch's
///   `key_padding_mask` convention), flattened.
///
/// Results depend on the seed only: not on the thread count (heads run in parallel, each the
/// same way). Errors: shape (shapes, T not a multiple of bucket_size, a padding mask of another
/// length), value (zero sizes, an odd number of buckets), non-finite (a NaN or ±∞ in qk),
/// device (GPU tensors: there is no GPU kernel).
pub fn lsh_attention(
    qk: &Var,
    v: &Var,
    cfg: &LshConfig,
    key_padding: Option<Vec<bool>>,
) -> Result<Var> {
    let (xv, vv) = (qk.value(), v.value());
    let (batch, s) = check(xv.shape(), vv.shape(), cfg)?;
    if let Some(p) = &key_padding {
        crate::ensure_shape!(
            p.len() == s.bh * s.t,
            OP,
            "key_padding_mask has {} values; qk {} needs one per key ({})",
            p.len(),
            shape_str(xv.shape()),
            s.bh * s.t
        );
    }
    if Device::common(OP, [xv.device(), vv.device()])? != Device::Cpu {
        return Err(TfmError::device(
            OP,
            "lsh_attention has no GPU kernel; move qk and v to the CPU with .to(\"cpu\")",
        ));
    }
    // A NaN or infinite query/key has no bucket and no log-sum-exp to rank rounds by: it would
    // be silently read as "sees nothing" and output its own value.
    if let Some(i) = xv.cpu(OP)?.data().iter().position(|x| !x.is_finite()) {
        return Err(TfmError::non_finite(
            OP,
            format!("qk holds a non-finite value at flat index {i}; LSH cannot hash it"),
        ));
    }
    let (t, e, ev) = (s.t, s.e, s.ev);
    let rot = rotations(&s);
    let mut out = crate::cpu::alloc::output(s.bh * t * ev);
    let mut lse = vec![0.0f32; s.bh * t];
    let mut orders = vec![0u32; s.bh * s.opts.n_hashes * t];
    let items: Vec<_> = rows_mut(&mut out, s.bh, t * ev)
        .into_iter()
        .zip(rows_mut(&mut lse, s.bh, t))
        .zip(orders.chunks_mut((s.opts.n_hashes * t).max(1)))
        .collect();
    let (x, vd) = (xv.cpu(OP)?.data(), vv.cpu(OP)?.data());
    let cost = s.opts.n_hashes * t * (2 * s.opts.bucket_size + s.n_buckets) * (e + ev).max(1);
    for_each_row(items, cost, |h, ((out, lse), order)| {
        let xh = &x[h * t * e..(h + 1) * t * e];
        let (k, _) = normalised(xh, e, t);
        order.copy_from_slice(&sort_orders(&k, &rot, &s));
        let padding = key_padding.as_deref().map(|p| &p[h * t..(h + 1) * t]);
        head_forward(
            out,
            lse,
            xh,
            &vd[h * t * ev..(h + 1) * t * ev],
            order,
            padding,
            &s,
        );
    });
    let out_shape: Vec<usize> = batch.iter().copied().chain([t, ev]).collect();
    let out = Tensor::new(out, &out_shape)?;
    let saved = LshBackward {
        x: xv,
        v: vv,
        out: out.clone(),
        lse,
        orders,
        key_padding,
        sizes: s,
    };
    Ok(Var::from_op(out, vec![qk.clone(), v.clone()], saved))
}

/// What the forward saved: inputs, output, log-sum-exp (BH, T), round orders
/// (BH, n_hashes, T), the padding keys (BH, T) and sizes.
struct LshBackward {
    x: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Vec<f32>,
    orders: Vec<u32>,
    key_padding: Option<Vec<bool>>,
    sizes: Sizes,
}

impl Backward for LshBackward {
    fn name(&self) -> &'static str {
        OP
    }

    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let s = &self.sizes;
        let (t, e, ev, nh) = (s.t, s.e, s.ev, s.opts.n_hashes);
        let g = g.to_host()?;
        let mut dx = crate::cpu::alloc::output(self.x.numel());
        let mut dv = crate::cpu::alloc::output(self.v.numel());
        let items: Vec<_> = rows_mut(&mut dx, s.bh, t * e)
            .into_iter()
            .zip(rows_mut(&mut dv, s.bh, t * ev))
            .collect();
        let (gd, x, v, out) = (
            g.cpu(OP)?.data(),
            self.x.cpu(OP)?.data(),
            self.v.cpu(OP)?.data(),
            self.out.cpu(OP)?.data(),
        );
        let cost = 2 * nh * t * 2 * s.opts.bucket_size * (e + ev).max(1);
        for_each_row(items, cost, |h, (dx, dv)| {
            let (xs, vs) = (h * t * e..(h + 1) * t * e, h * t * ev..(h + 1) * t * ev);
            head_backward(
                dx,
                dv,
                &gd[vs.clone()],
                &x[xs],
                &v[vs.clone()],
                &out[vs],
                &self.lse[h * t..(h + 1) * t],
                &self.orders[h * nh * t..(h + 1) * nh * t],
                self.key_padding.as_deref().map(|p| &p[h * t..(h + 1) * t]),
                s,
            );
        });
        Ok(vec![
            Some(Tensor::new(dx, self.x.shape())?),
            Some(Tensor::new(dv, self.v.shape())?),
        ])
    }
}

#[cfg(test)]
mod tests;
