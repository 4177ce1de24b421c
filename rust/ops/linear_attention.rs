//! Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs").
//!
//! Softmax attention's similarity `exp(q·k)` is replaced by a kernel `φ(q)·φ(k)` with a positive
//! feature map, `φ(x) = elu(x) + 1`, so that the sums over keys factor:
//!
//! ```text
//! out_t = φ(q_t)ᵀ S / φ(q_t)·z,   S = Σ_s φ(k_s) v_sᵀ  (E × Ev),   z = Σ_s φ(k_s)  (E)
//! ```
//!
//! over all keys (non-causal), or over `s ≤ t` (causal: S and z are prefix sums, updated one
//! token at a time). Shapes as scaled dot-product attention: q (…, Tq, E), k (…, Tk, E),
//! v (…, Tk, Ev) → (…, Tq, Ev); causal needs Tq = Tk. Time O(T·E·Ev) instead of O(T²·E); the
//! state is one E × Ev matrix and one E vector per head, whatever T.
//!
//! The causal form is a recurrence, so a decoder can generate with O(1) memory per token:
//! [`LinearAttentionState::step`] absorbs one token and reads its output with the same code the
//! full forward runs, so stepping T tokens gives bit for bit the outputs of the full forward.
//!
//! The backward never stores the T per-token states: with `a_t = g_t / den_t` and
//! `b_t = −g_t·out_t / den_t` (the gradients of the numerator and denominator),
//! `∂φ(q_t) = S_t a_t + z_t b_t` needs the prefix sums again (a forward sweep recomputes them),
//! and `∂φ(k_s) = R_s v_s + r_s`, `∂v_s = R_sᵀ φ(k_s)` need the suffix sums
//! `R_s = Σ_{t≥s} φ(q_t) a_tᵀ`, `r_s = Σ_{t≥s} φ(q_t) b_t` (a reverse sweep). Non-causal takes
//! the totals instead of prefix and suffix sums.
//!
//! ```
//! use tfm_rs::{autograd::{backward, Var}, ops, tensor::Tensor};
//! use ops::linear_attention::{linear_attention, FeatureMap};
//! let qkv = |n| Var::leaf(Tensor::new((0..n).map(|i| (i as f32 * 0.37).sin()).collect(), &[2, 5, 4]).unwrap(), true);
//! let (q, k, v) = (qkv(40), qkv(40), qkv(40));
//! let out = linear_attention(&q, &k, &v, true, FeatureMap::Elu, None).unwrap();
//! assert_eq!(out.shape(), vec![2, 5, 4]);
//! backward(&ops::reduce::sum(&out, &[], false).unwrap(), None, false).unwrap();
//! assert_eq!(q.grad().unwrap().shape(), &[2, 5, 4]);
//! ```

use crate::autograd::{Backward, Var};
use crate::cpu::simd::simd_kernel;
use crate::error::{Result, TfmError};
use crate::ops::attention::check_shapes;
use crate::ops::rows::{axpy, dot, for_each_row};
use crate::tensor::{shape_str, Device, Tensor};

const OP: &str = "linear_attention";

/// The positive feature map φ applied to queries and keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FeatureMap {
    /// `elu(x) + 1`: x + 1 for x > 0, eˣ otherwise; positive, so denominators are too.
    Elu,
}

impl FeatureMap {
    /// The map named `name` ("elu"); a value error naming the choices otherwise.
    pub fn parse(name: &str) -> Result<FeatureMap> {
        match name {
            "elu" => Ok(FeatureMap::Elu),
            other => Err(TfmError::value(
                OP,
                format!("feature_map must be \"elu\", got {other:?}"),
            )),
        }
    }

    #[inline(always)]
    fn apply(self, x: f32) -> f32 {
        match self {
            FeatureMap::Elu => {
                if x > 0.0 {
                    x + 1.0
                } else {
                    x.exp()
                }
            }
        }
    }

    /// φ'(x).
    #[inline(always)]
    fn derivative(self, x: f32) -> f32 {
        match self {
            FeatureMap::Elu => {
                if x > 0.0 {
                    1.0
                } else {
                    x.exp()
                }
            }
        }
    }
}

/// Sizes and flags of one linear attention call.
#[derive(Clone, Copy, Debug)]
pub struct LinearAttentionConfig {
    /// Batch × heads: the product of the leading dimensions.
    pub bh: usize,
    pub tq: usize,
    pub tk: usize,
    /// Query/key width E and value width Ev.
    pub e: usize,
    pub ev: usize,
    /// Query t sees keys s ≤ t (then tq = tk).
    pub causal: bool,
    pub feature_map: FeatureMap,
}

/// Adds one token to the running sums of a head: `s` (E × Ev) += f vᵀ, `z` (E) += w·f. The
/// forward sums `φ(k) vᵀ` and `φ(k)` (w = 1); the backward `φ(q) aᵀ` and `φ(q) b` (w = b).
#[inline(always)]
fn absorb(s: &mut [f32], z: &mut [f32], f: &[f32], v: &[f32], w: f32) {
    let ev = v.len();
    for (i, &f) in f.iter().enumerate() {
        axpy(&mut s[i * ev..(i + 1) * ev], f, v);
        z[i] += w * f;
    }
}

/// `out = φ(q)ᵀ s / φ(q)·z`, or zeros where the denominator is 0 (no key, or E = 0), as
/// softmax attention gives zeros to a row with no key. Returns the denominator.
#[inline(always)]
fn read(out: &mut [f32], s: &[f32], z: &[f32], fq: &[f32]) -> f32 {
    let ev = out.len();
    let den = dot(fq, z);
    out.fill(0.0);
    if den == 0.0 {
        return den;
    }
    for (i, &f) in fq.iter().enumerate() {
        axpy(out, f, &s[i * ev..(i + 1) * ev]);
    }
    let inv = 1.0 / den;
    out.iter_mut().for_each(|o| *o *= inv);
    den
}

fn feature(map: FeatureMap, x: &[f32]) -> Vec<f32> {
    x.iter().map(|&x| map.apply(x)).collect()
}

/// φ of the keys (Tk × E), with the rows of padding keys (`padding[j]`) zero: such a key then
/// adds nothing to `S` or `z`, which is what leaving it out means.
fn key_features(map: FeatureMap, k: &[f32], e: usize, padding: Option<&[bool]>) -> Vec<f32> {
    let mut fk = feature(map, k);
    for (row, _) in fk
        .chunks_mut(e.max(1))
        .zip(padding.into_iter().flatten())
        .filter(|(_, &p)| p)
    {
        row.fill(0.0);
    }
    fk
}

simd_kernel! {
    /// One head's forward: `out` (Tq, Ev) from q (Tq, E), k (Tk, E), v (Tk, Ev), leaving out
    /// the keys `padding` marks.
    fn head_forward(
        out: &mut [f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        padding: Option<&[bool]>,
        cfg: &LinearAttentionConfig,
    ) {
        let (e, ev) = (cfg.e, cfg.ev);
        let (fq, fk) = (feature(cfg.feature_map, q), key_features(cfg.feature_map, k, e, padding));
        let (mut s, mut z) = (vec![0.0f32; e * ev], vec![0.0f32; e]);
        if !cfg.causal {
            for j in 0..cfg.tk {
                absorb(&mut s, &mut z, &fk[j * e..(j + 1) * e], &v[j * ev..(j + 1) * ev], 1.0);
            }
        }
        for t in 0..cfg.tq {
            if cfg.causal {
                absorb(&mut s, &mut z, &fk[t * e..(t + 1) * e], &v[t * ev..(t + 1) * ev], 1.0);
            }
            read(&mut out[t * ev..(t + 1) * ev], &s, &z, &fq[t * e..(t + 1) * e]);
        }
    }
}

simd_kernel! {
    /// One head's backward (see the module doc): gradients of q, k, v from the output's
    /// gradient `g` (Tq, Ev), the inputs and the saved output.
    #[allow(clippy::too_many_arguments)]
    fn head_backward(
        dq: &mut [f32],
        dk: &mut [f32],
        dv: &mut [f32],
        g: &[f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        out: &[f32],
        padding: Option<&[bool]>,
        cfg: &LinearAttentionConfig,
    ) {
        let (e, ev, map) = (cfg.e, cfg.ev, cfg.feature_map);
        let (fq, fk) = (feature(map, q), key_features(map, k, e, padding));
        // Sweep over queries: S_t, z_t (prefix sums or totals) give den_t, a_t, b_t, ∂φ(q_t).
        let (mut s, mut z) = (vec![0.0f32; e * ev], vec![0.0f32; e]);
        if !cfg.causal {
            for j in 0..cfg.tk {
                absorb(&mut s, &mut z, &fk[j * e..(j + 1) * e], &v[j * ev..(j + 1) * ev], 1.0);
            }
        }
        let mut a = vec![0.0f32; cfg.tq * ev];
        let mut b = vec![0.0f32; cfg.tq];
        for t in 0..cfg.tq {
            if cfg.causal {
                absorb(&mut s, &mut z, &fk[t * e..(t + 1) * e], &v[t * ev..(t + 1) * ev], 1.0);
            }
            let (fq_t, dq_t) = (&fq[t * e..(t + 1) * e], &mut dq[t * e..(t + 1) * e]);
            let den = dot(fq_t, &z);
            if den == 0.0 {
                dq_t.fill(0.0);
                continue;
            }
            let (g_t, a_t) = (&g[t * ev..(t + 1) * ev], &mut a[t * ev..(t + 1) * ev]);
            let inv = 1.0 / den;
            for (a, &g) in a_t.iter_mut().zip(g_t) {
                *a = g * inv;
            }
            b[t] = -dot(g_t, &out[t * ev..(t + 1) * ev]) * inv;
            for i in 0..e {
                let d = dot(&s[i * ev..(i + 1) * ev], a_t) + z[i] * b[t];
                dq_t[i] = d * map.derivative(q[t * e + i]);
            }
        }
        // Sweep over keys, last to first: R_j, r_j (suffix sums or totals) give ∂φ(k_j), ∂v_j.
        let (mut r_mat, mut r) = (s, z);
        r_mat.fill(0.0);
        r.fill(0.0);
        if !cfg.causal {
            for t in 0..cfg.tq {
                absorb(&mut r_mat, &mut r, &fq[t * e..(t + 1) * e], &a[t * ev..(t + 1) * ev], b[t]);
            }
        }
        for j in (0..cfg.tk).rev() {
            if cfg.causal {
                let fq_j = &fq[j * e..(j + 1) * e];
                absorb(&mut r_mat, &mut r, fq_j, &a[j * ev..(j + 1) * ev], b[j]);
            }
            let (fk_j, v_j) = (&fk[j * e..(j + 1) * e], &v[j * ev..(j + 1) * ev]);
            let dv_j = &mut dv[j * ev..(j + 1) * ev];
            dv_j.fill(0.0);
            // A padding key's φ is the constant 0: no gradient reaches it.
            let padded = padding.is_some_and(|p| p[j]);
            for (i, &f) in fk_j.iter().enumerate() {
                let row = &r_mat[i * ev..(i + 1) * ev];
                axpy(dv_j, f, row);
                dk[j * e + i] = if padded {
                    0.0
                } else {
                    (dot(row, v_j) + r[i]) * map.derivative(k[j * e + i])
                };
            }
        }
    }
}

/// Splits `data` into `n` consecutive chunks of `len` (which may be 0).
fn chunks(data: &mut [f32], n: usize, len: usize) -> Vec<&mut [f32]> {
    crate::ops::rows::rows_mut(data, n, len)
}

/// The linear attention forward: `out` (BH, Tq, Ev) from q (BH, Tq, E), k (BH, Tk, E),
/// v (BH, Tk, Ev), over batch×heads in parallel (each head computed the same way whatever the
/// thread count); `padding` (BH, Tk), `true` for keys left out (a query with no key left gets
/// zeros). Panics if a slice length does not match `cfg`.
pub fn linear_attention_forward(
    out: &mut [f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    padding: Option<&[bool]>,
    cfg: &LinearAttentionConfig,
) {
    let LinearAttentionConfig {
        bh, tq, tk, e, ev, ..
    } = *cfg;
    assert_eq!(q.len(), bh * tq * e, "linear_attention_forward: q");
    assert_eq!(k.len(), bh * tk * e, "linear_attention_forward: k");
    assert_eq!(v.len(), bh * tk * ev, "linear_attention_forward: v");
    assert_eq!(out.len(), bh * tq * ev, "linear_attention_forward: out");
    assert!(
        padding.is_none_or(|p| p.len() == bh * tk),
        "linear_attention_forward: padding"
    );
    let cost = (tq + tk) * e * ev.max(1);
    for_each_row(chunks(out, bh, tq * ev), cost, |h, out| {
        head_forward(
            out,
            &q[h * tq * e..(h + 1) * tq * e],
            &k[h * tk * e..(h + 1) * tk * e],
            &v[h * tk * ev..(h + 1) * tk * ev],
            padding.map(|p| &p[h * tk..(h + 1) * tk]),
            cfg,
        )
    });
}

/// The linear attention backward: `dq`, `dk`, `dv` (shaped as q, k, v) from the output
/// gradient `g` (BH, Tq, Ev), the inputs, the saved output `out` and the forward's `padding`
/// (padding keys get zero gradients). Memory per head: the
/// feature maps of q and k, and `g / den` (O(T·E)); never a per-token state.
#[allow(clippy::too_many_arguments)]
pub fn linear_attention_backward(
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
    g: &[f32],
    q: &[f32],
    k: &[f32],
    v: &[f32],
    out: &[f32],
    padding: Option<&[bool]>,
    cfg: &LinearAttentionConfig,
) {
    let LinearAttentionConfig {
        bh, tq, tk, e, ev, ..
    } = *cfg;
    assert_eq!(g.len(), bh * tq * ev, "linear_attention_backward: g");
    assert!(
        padding.is_none_or(|p| p.len() == bh * tk),
        "linear_attention_backward: padding"
    );
    assert_eq!(out.len(), bh * tq * ev, "linear_attention_backward: out");
    assert_eq!(dq.len(), q.len(), "linear_attention_backward: dq");
    assert_eq!(dk.len(), k.len(), "linear_attention_backward: dk");
    assert_eq!(dv.len(), v.len(), "linear_attention_backward: dv");
    let items: Vec<_> = chunks(dq, bh, tq * e)
        .into_iter()
        .zip(chunks(dk, bh, tk * e))
        .zip(chunks(dv, bh, tk * ev))
        .collect();
    let cost = 2 * (tq + tk) * e * ev.max(1);
    for_each_row(items, cost, |h, ((dq, dk), dv)| {
        let (qs, ks, vs) = (h * tq * e, h * tk * e, h * tk * ev);
        head_backward(
            dq,
            dk,
            dv,
            &g[h * tq * ev..(h + 1) * tq * ev],
            &q[qs..qs + tq * e],
            &k[ks..ks + tk * e],
            &v[vs..vs + tk * ev],
            &out[h * tq * ev..(h + 1) * tq * ev],
            padding.map(|p| &p[h * tk..(h + 1) * tk]),
            cfg,
        )
    });
}

/// The recurrent state of causal linear attention, for decoding one token at a time with
/// O(E·Ev) memory per head whatever the length: `S` (BH, E, Ev) and `z` (BH, E).
#[derive(Clone, Debug)]
pub struct LinearAttentionState {
    bh: usize,
    e: usize,
    ev: usize,
    feature_map: FeatureMap,
    s: Vec<f32>,
    z: Vec<f32>,
}

simd_kernel! {
    /// One token of every head: absorb φ(k), v, then read φ(q)'s output.
    #[allow(clippy::too_many_arguments)]
    fn step_heads(
        out: &mut [f32],
        s: &mut [f32],
        z: &mut [f32],
        q: &[f32],
        k: &[f32],
        v: &[f32],
        sizes: [usize; 3],
        map: FeatureMap,
    ) {
        let [bh, e, ev] = sizes;
        for h in 0..bh {
            let (s, z) = (&mut s[h * e * ev..(h + 1) * e * ev], &mut z[h * e..(h + 1) * e]);
            let (fq, fk) = (
                feature(map, &q[h * e..(h + 1) * e]),
                feature(map, &k[h * e..(h + 1) * e]),
            );
            absorb(s, z, &fk, &v[h * ev..(h + 1) * ev], 1.0);
            read(&mut out[h * ev..(h + 1) * ev], s, z, &fq);
        }
    }
}

impl LinearAttentionState {
    /// An empty state (no token seen) for `bh` heads of query/key width `e`, value width `ev`.
    pub fn new(bh: usize, e: usize, ev: usize, feature_map: FeatureMap) -> LinearAttentionState {
        LinearAttentionState {
            bh,
            e,
            ev,
            feature_map,
            s: vec![0.0; bh * e * ev],
            z: vec![0.0; bh * e],
        }
    }

    /// `S` (BH, E, Ev): Σ φ(k) vᵀ over the tokens seen.
    pub fn s(&self) -> &[f32] {
        &self.s
    }

    /// `z` (BH, E): Σ φ(k) over the tokens seen.
    pub fn z(&self) -> &[f32] {
        &self.z
    }

    /// Feeds one token per head — q, k (BH, E), v (BH, Ev) — and returns its output (BH, Ev),
    /// equal to that position's row of the causal [`linear_attention_forward`] over all tokens
    /// fed so far. A shape error if a length does not match the state.
    pub fn step(&mut self, q: &[f32], k: &[f32], v: &[f32]) -> Result<Vec<f32>> {
        let (bh, e, ev) = (self.bh, self.e, self.ev);
        crate::ensure_shape!(
            q.len() == bh * e && k.len() == bh * e && v.len() == bh * ev,
            OP,
            "a decoding step takes q, k of {bh}×{e} values and v of {bh}×{ev} (one token per head); got {}, {}, {}",
            q.len(),
            k.len(),
            v.len()
        );
        let mut out = vec![0.0f32; bh * ev];
        step_heads(
            &mut out,
            &mut self.s,
            &mut self.z,
            q,
            k,
            v,
            [bh, e, ev],
            self.feature_map,
        );
        Ok(out)
    }
}

/// Linear attention `φ(Q)(φ(K)ᵀV)` normalised by `φ(Q)(φ(K)ᵀ1)`, on `Var`s.
///
/// - q (…, Tq, E), k (…, Tk, E), v (…, Tk, Ev) with equal leading dimensions → (…, Tq, Ev).
/// - `causal`: query t sees keys s ≤ t; needs Tq = Tk.
/// - `key_padding`: the keys to leave out, `true` per (…, Tk) position of k (PyTorch's
///   `key_padding_mask` convention), flattened.
///
/// Errors: shape (shapes that do not fit, causal with Tq ≠ Tk, a padding mask of another
/// length), device (GPU tensors: there is no GPU kernel). Saves q, k, v, the output and the
/// padding mask.
pub fn linear_attention(
    q: &Var,
    k: &Var,
    v: &Var,
    causal: bool,
    feature_map: FeatureMap,
    key_padding: Option<Vec<bool>>,
) -> Result<Var> {
    let (qv, kv, vv) = (q.value(), k.value(), v.value());
    let (batch, [tq, tk, e, ev]) = check_shapes(OP, qv.shape(), kv.shape(), vv.shape())?;
    crate::ensure_shape!(
        !causal || tq == tk,
        OP,
        "causal linear attention needs as many queries as keys; got q {}, k {}",
        shape_str(qv.shape()),
        shape_str(kv.shape())
    );
    if Device::common(OP, [qv.device(), kv.device(), vv.device()])? != Device::Cpu {
        return Err(TfmError::device(
            OP,
            "linear_attention has no GPU kernel; move q, k, v to the CPU with .to(\"cpu\")",
        ));
    }
    let cfg = LinearAttentionConfig {
        bh: batch.iter().product(),
        tq,
        tk,
        e,
        ev,
        causal,
        feature_map,
    };
    if let Some(p) = &key_padding {
        crate::ensure_shape!(
            p.len() == cfg.bh * tk,
            OP,
            "key_padding_mask has {} values; k {} needs one per key ({})",
            p.len(),
            shape_str(kv.shape()),
            cfg.bh * tk
        );
    }
    let mut out = crate::cpu::alloc::output(cfg.bh * tq * ev);
    linear_attention_forward(
        &mut out,
        qv.cpu(OP)?.data(),
        kv.cpu(OP)?.data(),
        vv.cpu(OP)?.data(),
        key_padding.as_deref(),
        &cfg,
    );
    let out_shape: Vec<usize> = batch.iter().copied().chain([tq, ev]).collect();
    let out = Tensor::new(out, &out_shape)?;
    let saved = LinearAttentionBackward {
        q: qv,
        k: kv,
        v: vv,
        out: out.clone(),
        key_padding,
        cfg,
    };
    Ok(Var::from_op(
        out,
        vec![q.clone(), k.clone(), v.clone()],
        saved,
    ))
}

/// What the forward saved: its inputs, its output, the padding mask and its sizes.
struct LinearAttentionBackward {
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    key_padding: Option<Vec<bool>>,
    cfg: LinearAttentionConfig,
}

impl Backward for LinearAttentionBackward {
    fn name(&self) -> &'static str {
        OP
    }

    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let g = g.to_host()?;
        let mut dq = crate::cpu::alloc::output(self.q.numel());
        let mut dk = crate::cpu::alloc::output(self.k.numel());
        let mut dv = crate::cpu::alloc::output(self.v.numel());
        linear_attention_backward(
            &mut dq,
            &mut dk,
            &mut dv,
            g.cpu(OP)?.data(),
            self.q.cpu(OP)?.data(),
            self.k.cpu(OP)?.data(),
            self.v.cpu(OP)?.data(),
            self.out.cpu(OP)?.data(),
            self.key_padding.as_deref(),
            &self.cfg,
        );
        Ok(vec![
            Some(Tensor::new(dq, self.q.shape())?),
            Some(Tensor::new(dk, self.k.shape())?),
            Some(Tensor::new(dv, self.v.shape())?),
        ])
    }
}

#[cfg(test)]
mod tests;
