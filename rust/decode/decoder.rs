//! Incremental decoding with a key/value cache. Each live sequence (a *row*) keeps, per layer,
//! the self-attention keys and values of every position it has seen, so a step costs one
//! position's work instead of re-running the whole prefix. Cross-attention keys and values are
//! computed once per source sentence ([`Memory`]) and shared by all rows decoding it (beams).
//!
//! [`Decoder::feed`] takes any number of new tokens per row: one per row while decoding, a
//! whole prompt when prefilling. All new positions go through each linear layer as one GEMM;
//! their keys and values are appended to the cache before attention, and the query at position
//! `p` attends to cache positions `0..=p`, which is exactly the causal mask of a full forward.
//!
//! A row's results do not depend on the other rows: every kernel here computes each row (each
//! query) on its own, in an order that does not depend on how many rows there are (the GEMM
//! guarantees it for its rows), so a sequence decodes to the same bits alone or in any batch.
//! The weights are packed for the GEMM once per decoder (`PackedWeights`): a step with a few
//! rows would otherwise spend more time packing them than multiplying. A quantized model's
//! int8 weights are packed once per weight and run on the integer GEMM (`cpu::qgemm`).

use super::llama;
use super::weights::{DecoderWeights, Linear, Norm, NormKind, SelfAttention, Weight, Window};
use crate::cpu::gemm::{dot, gemm_packed, Activation, Epilogue, MatRef, PackedB};
use crate::cpu::pool;
use crate::cpu::qgemm::{quantized_matmul, PackedQB};
use crate::cpu::simd::simd_kernel;
use crate::error::{Result, TfmError};
use crate::ops::layer_norm::layer_norm_forward;
use crate::ops::linear_attention::{FeatureMap, LinearAttentionState};
use crate::ops::rows::{exp_fast, split};
use rayon::prelude::*;
use std::sync::Arc;

const OP: &str = "decode";

/// A weight packed for its GEMM: float32, or int8 (packed once per weight and shared by every
/// decoder, see `QuantizedWeight::packed`).
enum Packed {
    F32(PackedB),
    Int8(Arc<PackedQB>),
}

/// Output features `rows` of `l` packed: q alone, or k and v, of a stacked in_proj, or all.
fn pack(l: &Linear, rows: std::ops::Range<usize>) -> Packed {
    match &l.weight {
        Weight::F32(t) => {
            let inp = t.shape()[1];
            let w = MatRef::row_major(&t.data()[rows.start * inp..rows.end * inp], rows.len(), inp);
            Packed::F32(PackedB::new(w.t()))
        }
        Weight::Int8(q) => Packed::Int8(q.packed(rows)),
    }
}

/// `act` applied after the integer GEMM (the float GEMM fuses it into its store).
fn apply(act: Activation, y: &mut [f32]) {
    if let Some(kind) = act.kind() {
        y.iter_mut().for_each(|v| *v = kind.apply(*v));
    }
}

/// `out (n, rows.len())` = `x (n, in)` · `W[rows]ᵀ` + `b[rows]`, then `act`, with `W[rows]`
/// packed (beforehand, or here for a one-off product such as the memory's keys and values).
/// Errors only for an int8 weight and a non-finite `x`.
fn linear_rows(
    x: &[f32],
    n: usize,
    l: &Linear,
    rows: std::ops::Range<usize>,
    packed: Option<&Packed>,
    act: Activation,
) -> Result<Vec<f32>> {
    let out = rows.len();
    if n == 0 {
        return Ok(Vec::new());
    }
    let bias = l.bias.as_ref().map(|b| &b.data()[rows.clone()]);
    let here;
    let packed = match packed {
        Some(p) => p,
        None => {
            here = pack(l, rows);
            &here
        }
    };
    match packed {
        Packed::F32(b) => {
            let inp = l.weight.shape()[1];
            let mut y = vec![0.0f32; n * out];
            let epilogue = Epilogue {
                bias,
                activation: act,
            };
            let a = MatRef::row_major(x, n, inp);
            gemm_packed(1.0, a, b, 0.0, &mut y, out, &epilogue, true);
            Ok(y)
        }
        Packed::Int8(b) => {
            let mut y = quantized_matmul(x, n, b, bias, true)?;
            apply(act, &mut y);
            Ok(y)
        }
    }
}

/// A whole linear layer, its weight packed beforehand.
fn linear(x: &[f32], n: usize, l: &Linear, packed: &Packed, act: Activation) -> Result<Vec<f32>> {
    linear_rows(x, n, l, 0..l.out_features(), Some(packed), act)
}

/// Every weight a decoding step multiplies by, packed for the GEMM.
struct PackedWeights {
    layers: Vec<PackedLayer>,
    head: Packed,
}

/// One layer's packed weights; `cross`: the q rows of the cross-attention in_proj (its k and v
/// are applied once, to the memory) and its out_proj. Pruned heads are absent from the weights,
/// so they cost nothing here.
struct PackedLayer {
    self_in: Packed,
    self_out: Packed,
    cross: Option<(Packed, Packed)>,
    ff1: Packed,
    ff2: Packed,
}

impl PackedWeights {
    fn new(w: &DecoderWeights) -> PackedWeights {
        let all = |l: &Linear| pack(l, 0..l.out_features());
        PackedWeights {
            layers: w
                .layers
                .iter()
                .map(|l| PackedLayer {
                    self_in: all(&l.self_in),
                    self_out: all(&l.self_out),
                    cross: l.cross.as_ref().map(|(qkv, out)| {
                        let a = l.cross_heads * w.head_dim;
                        (pack(qkv, 0..a), all(out))
                    }),
                    ff1: all(&l.ff1),
                    ff2: all(&l.ff2),
                })
                .collect(),
            head: all(&w.head),
        }
    }
}

/// `norm(x + residual)` over rows of width `d`; `(eps, kind)` as in [`DecoderWeights`].
fn norm(
    x: &[f32],
    residual: Option<&[f32]>,
    n: usize,
    d: usize,
    p: &Norm,
    eps: (f32, NormKind),
) -> Vec<f32> {
    let w = p.weight.as_ref().map(|t| t.data());
    let b = p.bias.as_ref().map(|t| t.data());
    match (eps.1, w, b) {
        (NormKind::Affine, Some(w), Some(b)) => {
            let mut y = x.to_vec();
            if let Some(r) = residual {
                y.iter_mut().zip(r).for_each(|(y, r)| *y += r);
            }
            for row in y.chunks_exact_mut(d) {
                for ((v, w), b) in row.iter_mut().zip(w).zip(b) {
                    *v = *v * w + b;
                }
            }
            y
        }
        (kind, w, b) => {
            layer_norm_forward(x, residual, n, d, w, b, eps.0, kind == NormKind::Layer).y
        }
    }
}

/// One query row `q (a)` attending, head by head, to the keys and values in rows `spans` (two
/// ranges, in order: a windowed layer's global rows and its window) of `keys`/`values`, rows of
/// `kv_heads·dh` (head `h` in columns `h·dh..(h+1)·dh`) → `out (a)`. `a = nhead·dh`; query head
/// `h` reads key/value head `h / (nhead / kv_heads)` (grouped-query attention; usually
/// `kv_heads = nhead`). `scores` is scratch space. Inlined into [`attend_simd`], which compiles
/// it for the CPU's vector instructions.
#[inline(always)]
fn attend(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    spans: &Spans,
    (nhead, kv_heads): (usize, usize),
    out: &mut [f32],
    scores: &mut Vec<f32>,
) {
    let d = q.len();
    let dh = d / nhead;
    let (dkv, group) = (kv_heads * dh, nhead / kv_heads);
    let scale = 1.0 / (dh as f32).sqrt();
    let rows = || spans[0].clone().chain(spans[1].clone());
    scores.resize(spans[0].len() + spans[1].len(), 0.0);
    out.fill(0.0);
    for h in 0..nhead {
        let cols = h * dh..(h + 1) * dh;
        let kv_cols = (h / group) * dh..(h / group + 1) * dh;
        let qh = &q[cols.clone()];
        let mut max = f32::NEG_INFINITY;
        for (j, s) in rows().zip(scores.iter_mut()) {
            *s = dot(qh, &keys[j * dkv..][kv_cols.clone()]) * scale;
            max = max.max(*s);
        }
        let mut total = 0.0f32;
        for s in scores.iter_mut() {
            *s = exp_fast(*s - max);
            total += *s;
        }
        let oh = &mut out[cols.clone()];
        for (j, &s) in rows().zip(scores.iter()) {
            let p = s / total;
            for (o, &v) in oh.iter_mut().zip(&values[j * dkv..][kv_cols.clone()]) {
                *o += p * v;
            }
        }
    }
}

simd_kernel! {
    /// [`attend`] on the CPU's vector instructions: the crate is built for baseline x86-64, so
    /// a plain function's dot products and sums would run on SSE2.
    fn attend_simd(
        q: &[f32],
        keys: &[f32],
        values: &[f32],
        spans: &Spans,
        heads: (usize, usize),
        out: &mut [f32],
        scores: &mut Vec<f32>,
    ) {
        attend(q, keys, values, spans, heads, out, scores)
    }
}

/// The rows a query attends: two ranges, the second empty unless a window leaves a gap after
/// the global rows.
type Spans = [std::ops::Range<usize>; 2];

/// Runs `attend` for every query (rows of `q`, each `d = nhead·dh` wide), in parallel when the
/// work is large enough. `kv(i)` gives query `i`'s keys, values and the rows it attends.
fn attend_all<'a>(
    q: &[f32],
    d: usize,
    nhead: (usize, usize),
    kv: impl Fn(usize) -> (&'a [f32], &'a [f32], Spans) + Sync,
) -> Vec<f32> {
    let n = q.len() / d;
    let mut out = vec![0.0f32; n * d];
    let work: usize = (0..n)
        .map(|i| kv(i).2.iter().map(|r| r.len()).sum::<usize>())
        .sum::<usize>()
        * d;
    let body = |(i, o): (usize, &mut [f32]), scores: &mut Vec<f32>| {
        let (k, v, spans) = kv(i);
        attend_simd(&q[i * d..][..d], k, v, &spans, nhead, o, scores);
    };
    if split(work) && n > 1 {
        pool::parallel(|| {
            out.par_chunks_mut(d)
                .enumerate()
                .for_each_init(Vec::new, |s, item| body(item, s))
        });
    } else {
        let mut scores = Vec::new();
        out.chunks_mut(d)
            .enumerate()
            .for_each(|item| body(item, &mut scores));
    }
    out
}

/// Cross-attention keys and values of one source sentence: per layer, `(k, v)` each `(s, a)`,
/// for its `s` non-padding positions only (padding is never attended to, so it is dropped).
#[derive(Clone, Debug)]
struct SourceKv {
    layers: Vec<(Vec<f32>, Vec<f32>)>,
    len: usize,
}

/// The encoder's output projected to every decoder layer's cross-attention keys and values,
/// once per source sentence.
#[derive(Clone, Debug)]
pub struct Memory {
    sources: Vec<SourceKv>,
}

impl Memory {
    /// `memory (B, S, d)` (the encoder output, flattened) and `key_padding (B, S)` (`true` =
    /// padding, as in PyTorch) → the per-source keys and values of every layer.
    pub fn new(
        w: &DecoderWeights,
        memory: &[f32],
        key_padding: &[bool],
        batch: usize,
        src_len: usize,
    ) -> Result<Memory> {
        let d = w.d_model();
        if memory.len() != batch * src_len * d || key_padding.len() != batch * src_len {
            return Err(TfmError::shape(
                OP,
                format!(
                    "memory has {} values and its padding mask {}; expected (B={batch}, S={src_len}, d={d}) and (B, S)",
                    memory.len(),
                    key_padding.len()
                ),
            ));
        }
        if !w.has_cross() {
            return Err(TfmError::value(
                OP,
                "this decoder has no cross-attention, so it takes no memory",
            ));
        }
        if let Some(b) =
            (0..batch).find(|&b| key_padding[b * src_len..][..src_len].iter().all(|&p| p))
        {
            return Err(TfmError::value(
                OP,
                format!("source {b} is all padding: there is nothing to attend to"),
            ));
        }
        if memory.iter().any(|v| !v.is_finite()) {
            return Err(TfmError::non_finite(OP, "the memory holds NaN or infinity"));
        }
        let kept: Vec<usize> = (0..batch * src_len).filter(|&i| !key_padding[i]).collect();
        let mut packed = Vec::with_capacity(kept.len() * d);
        for &i in &kept {
            packed.extend_from_slice(&memory[i * d..][..d]);
        }
        let lens: Vec<usize> = (0..batch)
            .map(|b| {
                key_padding[b * src_len..][..src_len]
                    .iter()
                    .filter(|&&p| !p)
                    .count()
            })
            .collect();
        let mut sources: Vec<SourceKv> = lens
            .iter()
            .map(|&len| SourceKv {
                layers: Vec::new(),
                len,
            })
            .collect();
        for layer in &w.layers {
            let (qkv, _) = layer
                .cross
                .as_ref()
                .expect("validated: every layer has cross-attention");
            let a = layer.cross_heads * w.head_dim;
            let kv = linear_rows(
                &packed,
                kept.len(),
                qkv,
                a..3 * a,
                None,
                Activation::Identity,
            )?;
            let mut row = 0;
            for src in sources.iter_mut() {
                let (mut k, mut v) = (
                    Vec::with_capacity(src.len * a),
                    Vec::with_capacity(src.len * a),
                );
                for r in row..row + src.len {
                    k.extend_from_slice(&kv[r * 2 * a..][..a]);
                    v.extend_from_slice(&kv[r * 2 * a + a..][..a]);
                }
                row += src.len;
                src.layers.push((k, v));
            }
        }
        Ok(Memory { sources })
    }

    pub fn num_sources(&self) -> usize {
        self.sources.len()
    }
}

/// One live sequence: the source it decodes (for cross-attention), its length, and per layer
/// its cached self-attention keys and values.
#[derive(Clone, Debug)]
struct Row {
    source: usize,
    len: usize,
    layers: Vec<LayerCache>,
}

/// One layer's cached keys and values, rows of the layer's key/value width: every position, or
/// for a windowed layer (`Window`) the global positions `0..global` followed by positions
/// `global + dropped ..` (the ones a later query can still see). A linear-attention layer keeps
/// its recurrent state instead (created at its first token).
#[derive(Clone, Debug, Default)]
struct LayerCache {
    k: Vec<f32>,
    v: Vec<f32>,
    dropped: usize,
    state: Option<LinearAttentionState>,
}

impl LayerCache {
    /// The cache rows query position `p` sees: all of `0..=p`, or for a window the global rows
    /// and the window's (contiguous after one token at a time; with a gap during a prefill).
    fn visible(&self, p: usize, window: Option<Window>) -> Spans {
        let Some(Window { left, global }) = window else {
            return [0..p + 1, 0..0];
        };
        let g = global.min(p + 1);
        let lo = p.saturating_sub(left).max(g);
        [0..g, lo - self.dropped..p + 1 - self.dropped]
    }

    /// Drops what no later query of a windowed layer sees: with `len` positions so far, the
    /// next query (at `len`) sees `len − left ..`, so older positions past the global ones go.
    fn evict(&mut self, len: usize, window: Option<Window>, akv: usize) {
        let Some(Window { left, global }) = window else {
            return;
        };
        let keep_from = len.saturating_sub(left).max(global);
        if keep_from > global + self.dropped {
            let (from, to) = (global.min(self.k.len() / akv), keep_from - self.dropped);
            self.k.drain(from * akv..to * akv);
            self.v.drain(from * akv..to * akv);
            self.dropped = keep_from - global;
        }
    }
}

/// Causal linear attention of the new queries (`qkv` rows `[q | k | v]`, each `heads·dh` wide,
/// rows in order and positions ascending within a row): each row's recurrent state absorbs its
/// tokens one by one and gives each one's output, as the full forward's prefix sums do.
fn linear_attention_step(
    rows: &mut [Row],
    queries: &[(usize, usize)],
    l: usize,
    qkv: &[f32],
    heads: usize,
    dh: usize,
) -> Result<Vec<f32>> {
    let a = heads * dh;
    let mut out = Vec::with_capacity(queries.len() * a);
    for (row, &(r, _)) in qkv.chunks_exact(3 * a).zip(queries) {
        let state = rows[r].layers[l]
            .state
            .get_or_insert_with(|| LinearAttentionState::new(heads, dh, dh, FeatureMap::Elu));
        out.extend(state.step(&row[..a], &row[a..2 * a], &row[2 * a..])?);
    }
    Ok(out)
}

/// The decoder with its cache: rows are created by [`Decoder::new`], advanced by
/// [`Decoder::feed`], and reordered, duplicated or dropped by [`Decoder::reorder`].
pub struct Decoder {
    w: Arc<DecoderWeights>,
    packed: PackedWeights,
    memory: Option<Arc<Memory>>,
    rows: Vec<Row>,
}

impl Decoder {
    /// A decoder with one empty row per entry of `sources` (the source sentence each row
    /// decodes; ignored, and may be all zeros, without memory).
    pub fn new(
        w: Arc<DecoderWeights>,
        memory: Option<Arc<Memory>>,
        sources: &[usize],
    ) -> Result<Decoder> {
        match &memory {
            None if w.has_cross() => {
                return Err(TfmError::value(
                    OP,
                    "this decoder attends to an encoder output: pass its memory",
                ))
            }
            Some(m) => {
                if let Some(&s) = sources.iter().find(|&&s| s >= m.num_sources()) {
                    return Err(TfmError::index(
                        OP,
                        format!(
                            "row source {s} is out of range for a memory of {} sources",
                            m.num_sources()
                        ),
                    ));
                }
            }
            None => {}
        }
        let layers = w.layers.len();
        let rows = sources
            .iter()
            .map(|&source| Row {
                source,
                len: 0,
                layers: vec![LayerCache::default(); layers],
            })
            .collect();
        Ok(Decoder {
            packed: PackedWeights::new(&w),
            w,
            memory,
            rows,
        })
    }

    pub fn weights(&self) -> &Arc<DecoderWeights> {
        &self.w
    }

    pub fn num_rows(&self) -> usize {
        self.rows.len()
    }

    /// Keeps row `parents[i]` as new row `i`: rows may be dropped (finished sequences leave the
    /// batch), reordered or duplicated (beams that share a prefix).
    pub fn reorder(&mut self, parents: &[usize]) -> Result<()> {
        if let Some(&p) = parents.iter().find(|&&p| p >= self.rows.len()) {
            return Err(TfmError::index(
                OP,
                format!("reorder: row {p} does not exist ({} rows)", self.rows.len()),
            ));
        }
        let mut uses = vec![0usize; self.rows.len()];
        for &p in parents {
            uses[p] += 1;
        }
        let mut old: Vec<Option<Row>> = std::mem::take(&mut self.rows)
            .into_iter()
            .map(Some)
            .collect();
        self.rows = parents
            .iter()
            .map(|&p| {
                uses[p] -= 1;
                // The last use takes the row; earlier ones copy it.
                if uses[p] == 0 {
                    old[p].take().expect("a row is taken once, at its last use")
                } else {
                    old[p].clone().expect("not yet taken")
                }
            })
            .collect();
        Ok(())
    }

    /// Appends `tokens[r]` (one or more ids) to each row `r` and returns the logits after each
    /// row's last new token, `(rows, V)`.
    pub fn feed(&mut self, tokens: &[Vec<u32>]) -> Result<Vec<f32>> {
        let w = Arc::clone(&self.w);
        let (d, dh, eps) = (w.d_model(), w.head_dim, (w.eps, w.norm));
        if tokens.len() != self.rows.len() {
            return Err(TfmError::shape(
                OP,
                format!(
                    "feed: {} token lists for {} rows",
                    tokens.len(),
                    self.rows.len()
                ),
            ));
        }
        // (row, position) of every new query, rows in order, positions ascending.
        let mut queries = Vec::new();
        for (r, (row, toks)) in self.rows.iter().zip(tokens).enumerate() {
            if toks.is_empty() {
                return Err(TfmError::value(OP, format!("feed: row {r} got no tokens")));
            }
            if row.len + toks.len() > w.max_len() {
                return Err(TfmError::value(
                    OP,
                    format!(
                        "row {r} would reach {} positions, more than the model's max_len={}",
                        row.len + toks.len(),
                        w.max_len()
                    ),
                ));
            }
            if let Some(&t) = toks.iter().find(|&&t| t as usize >= w.input_vocab()) {
                return Err(TfmError::index(
                    OP,
                    format!(
                        "token id {t} (row {r}) is outside the vocabulary [0, {})",
                        w.input_vocab()
                    ),
                ));
            }
            queries.extend((0..toks.len()).map(|i| (r, row.len + i)));
        }
        let n = queries.len();
        let flat: Vec<u32> = tokens.iter().flatten().copied().collect();
        let mut x = vec![0.0f32; n * d];
        let embed = w.embed.data();
        for (i, (&t, &(_, p))) in flat.iter().zip(&queries).enumerate() {
            let (o, e) = (&mut x[i * d..][..d], &embed[t as usize * d..][..d]);
            match &w.positions {
                Some(pos) => {
                    for ((o, &e), &pe) in o.iter_mut().zip(e).zip(&pos.data()[p * d..][..d]) {
                        *o = e * w.embed_scale + pe;
                    }
                }
                None => o
                    .iter_mut()
                    .zip(e)
                    .for_each(|(o, &e)| *o = e * w.embed_scale),
            }
        }
        // A sublayer's output joins the stream: post-LN `LN(x + y)`, pre-LN `x + y`.
        let residual = |x: Vec<f32>, y: Vec<f32>, p: &Norm| -> Vec<f32> {
            if w.norm_first {
                let mut x = x;
                x.iter_mut().zip(&y).for_each(|(a, b)| *a += b);
                x
            } else {
                norm(&x, Some(&y), n, d, p, eps)
            }
        };
        let pre = |x: &[f32], p: &Norm| -> Option<Vec<f32>> {
            w.norm_first.then(|| norm(x, None, n, d, p, eps))
        };
        for (l, (layer, packed)) in w.layers.iter().zip(&self.packed.layers).enumerate() {
            let (a, heads) = (layer.self_heads * dh, layer.self_heads);
            let kv_heads = w.kv_heads(heads);
            let akv = kv_heads * dh;
            let h = pre(&x, &layer.norm_self);
            let mut qkv = linear(
                h.as_deref().unwrap_or(&x),
                n,
                &layer.self_in,
                &packed.self_in,
                Activation::Identity,
            )?;
            if let Some(parts) = &w.llama {
                // q and k of each position turn together; v does not.
                for (row, &(_, p)) in qkv.chunks_exact_mut(a + 2 * akv).zip(&queries) {
                    llama::rotate(&mut row[..a + akv], dh, p, &parts.inv_freq);
                }
            }
            let att = if layer.attention == SelfAttention::Linear {
                linear_attention_step(&mut self.rows, &queries, l, &qkv, heads, dh)?
            } else {
                for (i, &(r, _)) in queries.iter().enumerate() {
                    let cache = &mut self.rows[r].layers[l];
                    let row = &qkv[i * (a + 2 * akv)..][..a + 2 * akv];
                    cache.k.extend_from_slice(&row[a..a + akv]);
                    cache.v.extend_from_slice(&row[a + akv..]);
                }
                let q: Vec<f32> = qkv
                    .chunks_exact(a + 2 * akv)
                    .flat_map(|c| &c[..a])
                    .copied()
                    .collect();
                let rows = &self.rows;
                let window = layer.attention.window();
                attend_all(&q, a, (heads, kv_heads), |i| {
                    let (r, p) = queries[i];
                    let cache = &rows[r].layers[l];
                    (&cache.k[..], &cache.v[..], cache.visible(p, window))
                })
            };
            let rows = &self.rows;

            x = residual(
                x,
                linear(
                    &att,
                    n,
                    &layer.self_out,
                    &packed.self_out,
                    Activation::Identity,
                )?,
                &layer.norm_self,
            );

            if let (Some((qkv_w, out_w)), Some(nc), Some((q_packed, out_packed))) =
                (&layer.cross, &layer.norm_cross, &packed.cross)
            {
                let memory = self
                    .memory
                    .as_ref()
                    .expect("checked in new: cross-attention has memory");
                let (a, heads) = (layer.cross_heads * dh, layer.cross_heads);
                let h = pre(&x, nc);
                let q = linear_rows(
                    h.as_deref().unwrap_or(&x),
                    n,
                    qkv_w,
                    0..a,
                    Some(q_packed),
                    Activation::Identity,
                )?;
                let att = attend_all(&q, a, (heads, heads), |i| {
                    let src = &memory.sources[rows[queries[i].0].source];
                    let (k, v) = &src.layers[l];
                    (k.as_slice(), v.as_slice(), [0..src.len, 0..0])
                });
                x = residual(
                    x,
                    linear(&att, n, out_w, out_packed, Activation::Identity)?,
                    nc,
                );
            }

            let h = pre(&x, &layer.norm_ff);
            let h = h.as_deref().unwrap_or(&x);
            let hidden = match &w.llama {
                Some(_) => llama::swiglu(
                    &linear(h, n, &layer.ff1, &packed.ff1, Activation::Identity)?,
                    layer.ff2.weight.shape()[1],
                ),
                None => linear(h, n, &layer.ff1, &packed.ff1, w.activation.into())?,
            };
            let ff = linear(&hidden, n, &layer.ff2, &packed.ff2, Activation::Identity)?;
            x = residual(x, ff, &layer.norm_ff);
        }
        for (row, toks) in self.rows.iter_mut().zip(tokens) {
            row.len += toks.len();
            for (cache, layer) in row.layers.iter_mut().zip(&w.layers) {
                let akv = w.kv_heads(layer.self_heads) * dh;
                cache.evict(row.len, layer.attention.window(), akv);
            }
        }
        // Only each row's last position needs logits.
        let mut last = Vec::with_capacity(self.rows.len() * d);
        let mut end = 0;
        for toks in tokens {
            end += toks.len();
            last.extend_from_slice(&x[(end - 1) * d..][..d]);
        }
        let rows = self.rows.len();
        let last = match &w.final_norm {
            Some(p) => norm(&last, None, rows, d, p, eps),
            None => last,
        };
        linear(
            &last,
            rows,
            &w.head,
            &self.packed.head,
            Activation::Identity,
        )
    }
}

#[cfg(test)]
mod window_tests {
    use super::*;

    /// A windowed layer's cache, filled with position numbers (one-wide rows), shows each query
    /// exactly the global positions and the last `left + 1` ones, whatever the feed sizes, and
    /// never holds more than `global + left` positions between feeds (the next query adds one).
    #[test]
    fn rolling_cache_shows_each_query_its_window_and_stays_bounded() {
        for (left, global) in [(0, 0), (1, 0), (3, 2), (5, 7), (4, 1)] {
            let window = Some(Window { left, global });
            for feed in [1usize, 2, 3, 7] {
                let mut cache = LayerCache::default();
                let mut len = 0;
                while len < 30 {
                    let n = feed.min(30 - len);
                    for p in len..len + n {
                        cache.k.push(p as f32);
                        cache.v.push(-(p as f32));
                    }
                    for p in len..len + n {
                        let want: Vec<f32> = (0..=p)
                            .filter(|&j| j < global || j + left >= p)
                            .map(|j| j as f32)
                            .collect();
                        let spans = cache.visible(p, window);
                        let rows = spans[0].clone().chain(spans[1].clone());
                        let k: Vec<f32> = rows.clone().map(|j| cache.k[j]).collect();
                        let v: Vec<f32> = rows.map(|j| cache.v[j]).collect();
                        assert_eq!(k, want, "left={left} global={global} feed={feed} p={p}");
                        assert!(v.iter().zip(&want).all(|(a, b)| *a == -b));
                    }
                    len += n;
                    cache.evict(len, window, 1);
                    assert!(cache.k.len() <= global + left, "{} rows", cache.k.len());
                }
            }
        }
    }
}
