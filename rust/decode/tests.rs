//! Decoding checked against an independent float64 decoder that re-runs the whole prefix (no
//! cache), and the searches against brute force.

use super::*;
use crate::ops::activation::ActivationKind;
use crate::ops::test_support::rand_vec;
use crate::tensor::CpuTensor;
use std::sync::Arc;

struct Dims {
    vocab: usize,
    d: usize,
    head_dim: usize,
    ff: usize,
    /// Per layer, the heads of its self- and cross-attention (fewer than `d / head_dim` where
    /// heads were pruned).
    heads: &'static [(usize, usize)],
    max_len: usize,
}

fn t(seed: u64, shape: &[usize], scale: f32) -> CpuTensor {
    let n = shape.iter().product();
    CpuTensor::new(rand_vec(seed, n, -scale, scale), shape).unwrap()
}

fn lin(seed: u64, out: usize, inp: usize, bias: bool) -> Linear {
    let s = 1.0 / (inp as f32).sqrt();
    Linear {
        weight: Weight::F32(t(seed, &[out, inp], s * 1.7)),
        bias: bias.then(|| t(seed + 1, &[out], 0.1)),
    }
}

fn norm(seed: u64, d: usize) -> Norm {
    let w = rand_vec(seed, d, 0.8, 1.2);
    Norm {
        weight: Some(CpuTensor::new(w, &[d]).unwrap()),
        bias: Some(t(seed + 1, &[d], 0.1)),
    }
}

fn weights(dm: &Dims, cross: bool, norm_first: bool, seed: u64) -> Arc<DecoderWeights> {
    let d = dm.d;
    let layers = (1..)
        .zip(dm.heads)
        .map(|(l, &(self_heads, cross_heads))| {
            let s = seed + 100 * l;
            let (a, ac) = (self_heads * dm.head_dim, cross_heads * dm.head_dim);
            Layer {
                attention: SelfAttention::Dense,
                self_heads,
                self_in: lin(s, 3 * a, d, true),
                self_out: lin(s + 10, d, a, true),
                cross_heads: if cross { cross_heads } else { 0 },
                cross: cross.then(|| (lin(s + 20, 3 * ac, d, true), lin(s + 30, d, ac, true))),
                norm_self: norm(s + 40, d),
                norm_cross: cross.then(|| norm(s + 50, d)),
                norm_ff: norm(s + 60, d),
                ff1: lin(s + 70, dm.ff, d, true),
                ff2: lin(s + 80, d, dm.ff, false),
            }
        })
        .collect();
    let w = DecoderWeights {
        head_dim: dm.head_dim,
        norm_first,
        activation: if norm_first {
            ActivationKind::Gelu
        } else {
            ActivationKind::Relu
        },
        eps: 1e-5,
        norm: NormKind::Layer,
        embed: t(seed + 1, &[dm.vocab, d], 1.0),
        embed_scale: (d as f32).sqrt() * 0.5,
        positions: Some(t(seed + 2, &[dm.max_len, d], 0.5)),
        layers,
        final_norm: norm_first.then(|| norm(seed + 3, d)),
        head: lin(seed + 4, dm.vocab, d, !norm_first),
        llama: None,
    };
    w.validate().unwrap();
    Arc::new(w)
}

// ---------------------------------------------------------------- the float64 reference

type M = Vec<Vec<f64>>;

fn f64s(t: &CpuTensor) -> Vec<f64> {
    t.data().iter().map(|&v| v as f64).collect()
}

fn ref_linear(x: &M, l: &Linear, rows: std::ops::Range<usize>) -> M {
    let inp = l.weight.shape()[1];
    let w = match &l.weight {
        Weight::F32(t) => f64s(t),
        Weight::Int8(q) => q.matrix.dequantize().iter().map(|&v| v as f64).collect(),
    };
    let b = l.bias.as_ref().map(f64s);
    x.iter()
        .map(|xi| {
            rows.clone()
                .map(|o| {
                    (0..inp).map(|j| xi[j] * w[o * inp + j]).sum::<f64>()
                        + b.as_ref().map_or(0.0, |b| b[o])
                })
                .collect()
        })
        .collect()
}

/// LayerNorm, or with `NormKind::Affine` the per-channel `x·w + b`.
fn ref_norm(x: &M, p: &Norm, eps: f64, kind: NormKind) -> M {
    let w = p.weight.as_ref().map(f64s);
    let b = p.bias.as_ref().map(f64s);
    x.iter()
        .map(|r| {
            let d = r.len() as f64;
            let (mean, var) = match kind {
                NormKind::Affine => (0.0, 1.0 - eps),
                _ => {
                    let mean = r.iter().sum::<f64>() / d;
                    (
                        mean,
                        r.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / d,
                    )
                }
            };
            r.iter()
                .enumerate()
                .map(|(j, v)| {
                    (v - mean) / (var + eps).sqrt() * w.as_ref().map_or(1.0, |w| w[j])
                        + b.as_ref().map_or(0.0, |b| b[j])
                })
                .collect()
        })
        .collect()
}

/// Multi-head attention of queries `q` over keys/values (heads of width `dh`); query `i` sees
/// keys `0..visible(i)`.
fn ref_attention(q: &M, k: &M, v: &M, dh: usize, visible: impl Fn(usize) -> usize) -> M {
    let d = q[0].len();
    let nhead = d / dh;
    q.iter()
        .enumerate()
        .map(|(i, qi)| {
            let mut out = vec![0.0; d];
            for h in 0..nhead {
                let c = h * dh..(h + 1) * dh;
                let s: Vec<f64> = (0..visible(i))
                    .map(|j| c.clone().map(|x| qi[x] * k[j][x]).sum::<f64>() / (dh as f64).sqrt())
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for (j, ej) in e.iter().enumerate() {
                    for x in c.clone() {
                        out[x] += ej / z * v[j][x];
                    }
                }
            }
            out
        })
        .collect()
}

fn add(a: &M, b: &M) -> M {
    a.iter()
        .zip(b)
        .map(|(x, y)| x.iter().zip(y).map(|(p, q)| p + q).collect())
        .collect()
}

/// Logits `(T, V)` of the whole sequence `tokens`, every position recomputed from scratch.
fn ref_logits(w: &DecoderWeights, tokens: &[u32], memory: Option<&M>) -> M {
    let d = w.d_model();
    let (emb, pos) = (
        f64s(&w.embed),
        f64s(w.positions.as_ref().expect("a position table")),
    );
    let (eps, kind) = (w.eps as f64, w.norm);
    let act = |v: f64| match w.activation {
        ActivationKind::Relu => v.max(0.0),
        _ => w.activation.apply(v as f32) as f64,
    };
    let mut x: M = tokens
        .iter()
        .enumerate()
        .map(|(p, &t)| {
            (0..d)
                .map(|j| emb[t as usize * d + j] * w.embed_scale as f64 + pos[p * d + j])
                .collect()
        })
        .collect();
    let block = |x: &M, p: &Norm, f: &dyn Fn(&M) -> M| -> M {
        if w.norm_first {
            add(x, &f(&ref_norm(x, p, eps, kind)))
        } else {
            ref_norm(&add(x, &f(x)), p, eps, kind)
        }
    };
    for l in &w.layers {
        let (a, ac, dh) = (
            l.self_heads * w.head_dim,
            l.cross_heads * w.head_dim,
            w.head_dim,
        );
        x = block(&x, &l.norm_self, &|h| {
            let (q, k, v) = (
                ref_linear(h, &l.self_in, 0..a),
                ref_linear(h, &l.self_in, a..2 * a),
                ref_linear(h, &l.self_in, 2 * a..3 * a),
            );
            ref_linear(&ref_attention(&q, &k, &v, dh, |i| i + 1), &l.self_out, 0..d)
        });
        if let (Some((qkv, out)), Some(nc)) = (&l.cross, &l.norm_cross) {
            let mem = memory.unwrap();
            x = block(&x, nc, &|h| {
                let q = ref_linear(h, qkv, 0..ac);
                let (k, v) = (
                    ref_linear(mem, qkv, ac..2 * ac),
                    ref_linear(mem, qkv, 2 * ac..3 * ac),
                );
                ref_linear(&ref_attention(&q, &k, &v, dh, |_| mem.len()), out, 0..d)
            });
        }
        x = block(&x, &l.norm_ff, &|h| {
            let hidden: M = ref_linear(h, &l.ff1, 0..l.ff1.weight.shape()[0])
                .into_iter()
                .map(|r| r.into_iter().map(act).collect())
                .collect();
            ref_linear(&hidden, &l.ff2, 0..d)
        });
    }
    if let Some(p) = &w.final_norm {
        x = ref_norm(&x, p, eps, kind);
    }
    ref_linear(&x, &w.head, 0..w.vocab())
}

fn ref_log_softmax(z: &[f64]) -> Vec<f64> {
    let m = z.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let lse = m + z.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
    z.iter().map(|v| v - lse).collect()
}

fn assert_rows_close(what: &str, got: &[f32], want: &[f64], rtol: f64) {
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= rtol * scale,
            "{what}: logit {i}: got {g}, want {w} (scale {scale})"
        );
    }
}

/// A memory with padding: source 0 has 3 real positions of 5, source 1 all 5.
fn memory_of(w: &DecoderWeights, seed: u64) -> (Vec<f32>, Vec<bool>, Vec<M>) {
    let (b, s, d) = (2, 5, w.d_model());
    let mem = rand_vec(seed, b * s * d, -1.0, 1.0);
    let pad: Vec<bool> = (0..b * s).map(|i| i / s == 0 && i % s >= 3).collect();
    let per_source = (0..b)
        .map(|bi| {
            (0..s)
                .filter(|&p| !pad[bi * s + p])
                .map(|p| {
                    mem[(bi * s + p) * d..][..d]
                        .iter()
                        .map(|&v| v as f64)
                        .collect()
                })
                .collect()
        })
        .collect();
    (mem, pad, per_source)
}

const DIMS: Dims = Dims {
    vocab: 19,
    d: 24,
    head_dim: 8,
    ff: 17,
    heads: &[(3, 3), (3, 3)],
    max_len: 12,
};

/// `DIMS` with heads pruned unevenly: one layer keeps a single self-attention head, another a
/// single cross-attention head.
const PRUNED: Dims = Dims {
    heads: &[(1, 2), (3, 1), (2, 3)],
    ..DIMS
};

#[test]
fn cached_steps_match_full_recompute() {
    for (dims, cross, norm_first, kind) in [
        (&DIMS, true, false, NormKind::Layer),
        (&DIMS, true, true, NormKind::Layer),
        (&DIMS, false, true, NormKind::Layer),
        (&DIMS, false, false, NormKind::Layer),
        (&PRUNED, true, false, NormKind::Layer),
        (&PRUNED, false, true, NormKind::Layer),
        (&DIMS, true, false, NormKind::Affine),
        (&DIMS, false, true, NormKind::Affine),
    ] {
        let mut w = weights(dims, cross, norm_first, 7);
        Arc::make_mut(&mut w).norm = kind;
        let (mem, pad, per_source) = memory_of(&w, 99);
        let memory = cross.then(|| Arc::new(Memory::new(&w, &mem, &pad, 2, 5).unwrap()));
        let mut dec = Decoder::new(Arc::clone(&w), memory, &[0, 1]).unwrap();
        let seqs: [Vec<u32>; 2] = [vec![1, 5, 18, 0, 7, 7, 3], vec![1, 2, 9, 11, 4, 0, 6]];
        // Row 0 takes a 3-token prefill then single tokens; row 1 goes one token at a time.
        let mut fed = [0usize, 0usize];
        while fed[0] < seqs[0].len() {
            let take = [if fed[0] == 0 { 3 } else { 1 }, 1];
            let toks: Vec<Vec<u32>> = (0..2)
                .map(|r| seqs[r][fed[r]..fed[r] + take[r]].to_vec())
                .collect();
            let logits = dec.feed(&toks).unwrap();
            for r in 0..2 {
                fed[r] += take[r];
                let want = ref_logits(&w, &seqs[r][..fed[r]], cross.then(|| &per_source[r]));
                let v = w.vocab();
                assert_rows_close(
                    &format!(
                        "heads {:?} cross={cross} norm_first={norm_first} {kind:?} row {r} len {}",
                        dims.heads, fed[r]
                    ),
                    &logits[r * v..][..v],
                    want.last().unwrap(),
                    2e-5,
                );
            }
        }
    }
}

#[test]
fn head_counts_must_match_the_weights() {
    let w = weights(&PRUNED, true, false, 5);
    let with = |f: &dyn Fn(&mut DecoderWeights)| {
        let mut bad = (*w).clone();
        f(&mut bad);
        bad.validate().unwrap_err().to_string()
    };
    let msg = with(&|b| b.layers[0].self_heads = 2);
    assert!(
        msg.contains("layer 0 self-attention (2 heads of width 8) in_proj"),
        "{msg}"
    );
    let msg = with(&|b| b.layers[1].cross_heads = 3);
    assert!(msg.contains("layer 1 cross-attention (3 heads"), "{msg}");
    assert!(with(&|b| b.layers[2].self_heads = 0).contains("at least one head"));
    assert!(with(&|b| b.layers[2].self_heads = usize::MAX / 2).contains("at least one head"));
    assert!(with(&|b| b.head_dim = 0).contains("head_dim"));
    let msg = with(&|b| {
        b.layers[0].cross = None;
        b.layers[0].norm_cross = None;
    });
    assert!(msg.contains("cross-attention heads"), "{msg}");
}

#[test]
fn reorder_keeps_each_rows_cache() {
    let w = weights(&DIMS, false, true, 3);
    let mut dec = Decoder::new(Arc::clone(&w), None, &[0, 0, 0]).unwrap();
    dec.feed(&[vec![1, 2], vec![3], vec![4, 5, 6]]).unwrap();
    dec.reorder(&[2, 0, 2]).unwrap();
    let logits = dec.feed(&[vec![7], vec![8], vec![9]]).unwrap();
    let v = w.vocab();
    for (r, seq) in [vec![4u32, 5, 6, 7], vec![1, 2, 8], vec![4, 5, 6, 9]]
        .iter()
        .enumerate()
    {
        let want = ref_logits(&w, seq, None);
        assert_rows_close(
            &format!("row {r}"),
            &logits[r * v..][..v],
            want.last().unwrap(),
            2e-5,
        );
    }
    assert!(dec.reorder(&[3]).is_err());
}

#[test]
fn feed_rejects_bad_input() {
    let w = weights(&DIMS, true, false, 3);
    assert!(
        Decoder::new(Arc::clone(&w), None, &[0]).is_err(),
        "cross-attention needs memory"
    );
    let (mem, pad, _) = memory_of(&w, 1);
    let memory = Arc::new(Memory::new(&w, &mem, &pad, 2, 5).unwrap());
    assert!(
        Decoder::new(Arc::clone(&w), Some(Arc::clone(&memory)), &[2]).is_err(),
        "source out of range"
    );
    let mut dec = Decoder::new(Arc::clone(&w), Some(memory), &[0]).unwrap();
    assert_eq!(
        dec.feed(&[vec![19]]).unwrap_err().kind,
        crate::ErrorKind::Index
    );
    assert!(dec.feed(&[vec![]]).is_err());
    assert!(dec.feed(&[vec![1; 13]]).is_err(), "longer than max_len");
    let all_pad = vec![true; 10];
    assert!(Memory::new(&w, &mem, &all_pad, 2, 5).is_err());
    let mut nan = mem.clone();
    nan[3] = f32::NAN;
    assert_eq!(
        Memory::new(&w, &nan, &pad, 2, 5).unwrap_err().kind,
        crate::ErrorKind::NonFinite
    );
}

// ---------------------------------------------------------------- searches

const EOS: u32 = 2;

fn lm(vocab: usize, seed: u64) -> Arc<DecoderWeights> {
    weights(
        &Dims {
            vocab,
            d: 16,
            head_dim: 8,
            ff: 16,
            heads: &[(2, 0)],
            max_len: 16,
        },
        false,
        true,
        seed,
    )
}

fn run(
    w: &Arc<DecoderWeights>,
    prompts: Vec<Vec<u32>>,
    max_new: usize,
    cfg: SearchConfig,
) -> Vec<Vec<Hypothesis>> {
    let n = prompts.len();
    Search::new(Arc::clone(w), None, prompts, vec![max_new; n], cfg)
        .unwrap()
        .run()
        .unwrap()
}

/// The reference log-probability of `tokens` continuing `prompt`.
fn ref_log_prob(w: &DecoderWeights, prompt: &[u32], tokens: &[u32]) -> f64 {
    let mut seq = prompt.to_vec();
    seq.extend_from_slice(tokens);
    let logits = ref_logits(w, &seq, None);
    tokens
        .iter()
        .enumerate()
        .map(|(i, &t)| ref_log_softmax(&logits[prompt.len() - 1 + i])[t as usize])
        .sum()
}

#[test]
fn greedy_picks_the_reference_argmax_and_scores_are_log_probs() {
    let w = lm(11, 5);
    let prompts = vec![vec![1, 4, 7], vec![3]];
    let out = run(
        &w,
        prompts.clone(),
        6,
        SearchConfig {
            eos: Some(EOS),
            ..Default::default()
        },
    );
    for (p, hyps) in prompts.iter().zip(&out) {
        let h = &hyps[0];
        assert!(!h.tokens.is_empty() && h.tokens.len() <= 6);
        assert!(
            h.tokens[..h.tokens.len() - 1].iter().all(|&t| t != EOS),
            "nothing follows EOS"
        );
        let mut seq = p.clone();
        for &t in &h.tokens {
            let logits = ref_logits(&w, &seq, None);
            let last = logits.last().unwrap();
            let best = (0..last.len())
                .max_by(|&a, &b| last[a].partial_cmp(&last[b]).unwrap().then(b.cmp(&a)))
                .unwrap();
            assert_eq!(t as usize, best);
            seq.push(t);
        }
        assert!((h.log_prob - ref_log_prob(&w, p, &h.tokens)).abs() < 1e-4);
    }
}

/// Every sequence of up to `max_new` tokens that ends in EOS or at the limit, with its
/// penalized score — the space beam search explores.
fn brute_force(
    w: &DecoderWeights,
    prompt: &[u32],
    max_new: usize,
    alpha: f64,
) -> Vec<(Vec<u32>, f64)> {
    let vocab = w.vocab() as u32;
    let mut all = Vec::new();
    let mut stack = vec![(Vec::<u32>::new(), 0.0f64)];
    while let Some((toks, lp)) = stack.pop() {
        let mut seq = prompt.to_vec();
        seq.extend_from_slice(&toks);
        let lps = ref_log_softmax(ref_logits(w, &seq, None).last().unwrap());
        for t in 0..vocab {
            let mut next = toks.clone();
            next.push(t);
            let s = lp + lps[t as usize];
            if t == EOS || next.len() == max_new {
                all.push((
                    next.clone(),
                    s / ((5.0 + next.len() as f64) / 6.0).powf(alpha),
                ));
            } else {
                stack.push((next, s));
            }
        }
    }
    all.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
    all
}

#[test]
fn wide_beam_search_finds_the_exact_n_best() {
    // With as many beams as sequences, pruning cannot lose anything: the returned n-best must
    // be the true n-best, which also tests that the search stops neither early nor late.
    let w = lm(4, 11);
    for alpha in [0.0, 0.6, 2.0, -0.5] {
        let cfg = SearchConfig {
            num_beams: 27,
            num_return_sequences: 5,
            length_penalty: alpha,
            eos: Some(EOS),
            ..Default::default()
        };
        let got = &run(&w, vec![vec![1, 3]], 4, cfg)[0];
        let want = brute_force(&w, &[1, 3], 4, alpha);
        assert_eq!(got.len(), 5);
        for (g, (tokens, score)) in got.iter().zip(&want) {
            assert_eq!(&g.tokens, tokens, "alpha {alpha}");
            assert!(
                (g.score - score).abs() < 1e-4,
                "alpha {alpha}: score {} vs {score}",
                g.score
            );
            assert!((g.log_prob - ref_log_prob(&w, &[1, 3], tokens)).abs() < 1e-4);
        }
    }
}

#[test]
fn beam_of_one_is_greedy_and_batches_do_not_interact() {
    let w = lm(13, 21);
    let prompts: Vec<Vec<u32>> = vec![vec![1], vec![5, 6, 7], vec![9, 9], vec![4]];
    let greedy = run(
        &w,
        prompts.clone(),
        8,
        SearchConfig {
            eos: Some(EOS),
            ..Default::default()
        },
    );
    let beam1 = run(
        &w,
        prompts.clone(),
        8,
        SearchConfig {
            num_beams: 1,
            eos: Some(EOS),
            ..Default::default()
        },
    );
    assert_eq!(greedy, beam1);
    let cfg4 = SearchConfig {
        num_beams: 4,
        num_return_sequences: 2,
        length_penalty: 0.6,
        eos: Some(EOS),
        ..Default::default()
    };
    let batched = run(&w, prompts.clone(), 8, cfg4.clone());
    for (i, p) in prompts.iter().enumerate() {
        let alone = run(&w, vec![p.clone()], 8, cfg4.clone());
        assert_eq!(alone[0].len(), 2);
        for (a, b) in alone[0].iter().zip(&batched[i]) {
            assert_eq!(a.tokens, b.tokens);
            assert!((a.score - b.score).abs() < 1e-5);
        }
        for h in &batched[i] {
            assert!(h.tokens[..h.tokens.len() - 1].iter().all(|&t| t != EOS));
            let lp = ref_log_prob(&w, p, &h.tokens);
            assert!((h.score - lp / ((5.0 + h.tokens.len() as f64) / 6.0).powf(0.6)).abs() < 1e-4);
        }
    }
}

#[test]
fn sampling_is_reproducible_and_follows_top_k() {
    let w = lm(17, 8);
    let cfg = SearchConfig {
        do_sample: true,
        num_return_sequences: 3,
        top_k: 2,
        temperature: 0.7,
        seed: 42,
        eos: Some(EOS),
        ..Default::default()
    };
    let prompts = vec![vec![1u32, 3], vec![4]];
    let a = run(&w, prompts.clone(), 7, cfg.clone());
    assert_eq!(
        a,
        run(&w, prompts.clone(), 7, cfg.clone()),
        "same seed, same samples"
    );
    // Input 0 alone draws exactly what it drew in the batch (the log-probabilities may differ
    // in the last bits: a batch of 6 rows and one of 3 take different GEMM paths).
    let alone = run(&w, vec![prompts[0].clone()], 7, cfg.clone());
    for (x, y) in a[0].iter().zip(&alone[0]) {
        assert_eq!(x.tokens, y.tokens);
        assert!((x.log_prob - y.log_prob).abs() < 1e-5);
    }
    assert_ne!(
        a,
        run(
            &w,
            prompts.clone(),
            7,
            SearchConfig {
                seed: 43,
                ..cfg.clone()
            }
        )
    );
    for (p, hyps) in prompts.iter().zip(&a) {
        assert_eq!(hyps.len(), 3);
        for h in hyps {
            let mut seq = p.clone();
            for &t in &h.tokens {
                let last = ref_logits(&w, &seq, None).pop().unwrap();
                let above = last.iter().filter(|&&v| v > last[t as usize]).count();
                assert!(above < 2, "token {t} is outside the top 2");
                seq.push(t);
            }
        }
    }
    // top_p so small that only the most likely token survives: sampling becomes greedy.
    let tiny_p = run(
        &w,
        prompts.clone(),
        7,
        SearchConfig {
            top_p: 1e-6,
            num_return_sequences: 1,
            ..cfg
        },
    );
    let greedy = run(
        &w,
        prompts,
        7,
        SearchConfig {
            eos: Some(EOS),
            ..Default::default()
        },
    );
    for (s, g) in tiny_p.iter().zip(&greedy) {
        assert_eq!(s[0].tokens, g[0].tokens);
    }
}

#[test]
fn processors_block_repeats() {
    let w = lm(7, 2);
    let cfg = SearchConfig {
        no_repeat_ngram_size: 2,
        ..Default::default()
    };
    let out = run(&w, vec![vec![1, 3, 1]], 12, cfg);
    let mut seq = vec![1u32, 3, 1];
    seq.extend(&out[0][0].tokens);
    let bigrams: Vec<_> = seq.windows(2).collect();
    for (i, b) in bigrams.iter().enumerate() {
        assert!(!bigrams[..i].contains(b), "bigram {b:?} repeats in {seq:?}");
    }
    // CTRL's penalty: positive logits of seen tokens are divided, negative ones multiplied.
    let penalized = |z: &[f64]| ref_log_softmax(z);
    let want = penalized(&[1.0, -2.0, 0.5, 3.0]);
    let mut z = vec![2.0f32, -1.0, 0.5, 3.0];
    let cfg = SearchConfig {
        repetition_penalty: 2.0,
        ..Default::default()
    };
    super::search::log_probs(&mut z, &[0, 1, 0], &cfg);
    crate::ops::test_support::assert_close("repetition penalty", &z, &want, 1e-6, 1e-6);
}

#[test]
fn limits_and_edge_cases() {
    let w = lm(9, 4);
    let cfg = || SearchConfig {
        eos: Some(EOS),
        ..Default::default()
    };
    let zero = run(&w, vec![vec![1]], 0, cfg());
    assert_eq!(
        zero[0],
        vec![Hypothesis {
            tokens: vec![],
            log_prob: 0.0,
            score: 0.0
        }]
    );
    // Prompts that fill the table exactly may still generate one token (never fed back).
    assert_eq!(run(&w, vec![vec![1; 16]], 1, cfg())[0][0].tokens.len(), 1);
    let err = |prompts: Vec<Vec<u32>>, max_new: usize, c: SearchConfig| {
        Search::new(Arc::clone(&w), None, prompts, vec![max_new], c)
            .err()
            .expect("should be refused")
    };
    assert!(err(vec![vec![1; 16]], 2, cfg()).msg.contains("max_len=16"));
    assert!(err(vec![vec![1; 17]], 0, cfg()).msg.contains("max_len"));
    assert_eq!(err(vec![vec![9]], 3, cfg()).kind, crate::ErrorKind::Index);
    assert!(err(vec![vec![]], 3, cfg()).msg.contains("empty"));
    let bad_configs = [
        (
            SearchConfig {
                num_beams: 0,
                ..cfg()
            },
            "num_beams",
        ),
        (
            SearchConfig {
                do_sample: true,
                top_p: 0.0,
                ..cfg()
            },
            "top_p",
        ),
        (
            SearchConfig {
                do_sample: true,
                top_p: 1.5,
                ..cfg()
            },
            "top_p",
        ),
        (
            SearchConfig {
                do_sample: true,
                temperature: -1.0,
                ..cfg()
            },
            "temperature",
        ),
        (
            SearchConfig {
                num_beams: 2,
                num_return_sequences: 3,
                ..cfg()
            },
            "num_return_sequences",
        ),
    ];
    for (config, field) in bad_configs {
        let msg = err(vec![vec![1]], 3, config).msg;
        assert!(msg.contains(field), "{field}: {msg}");
    }
    assert_eq!(
        err(
            vec![vec![1]],
            3,
            SearchConfig {
                eos: Some(9),
                ..cfg()
            }
        )
        .kind,
        crate::ErrorKind::Index
    );
    // Members that finish at different steps: each stops at its own EOS or limit.
    let out = run(&w, (0..6).map(|i| vec![i as u32 % 9]).collect(), 5, cfg());
    for hyps in &out {
        let t = &hyps[0].tokens;
        assert!(t.len() == 5 || t.last() == Some(&EOS));
    }
}
