//! The op against f64 references: dense attention with shared QK and the diagonal masked when
//! one or two chunks make every key visible; for real hashing, the same rounds recomputed in
//! f64 from the kernel's sort orders (which gradients do not flow through), and that reference
//! against finite differences. Then determinism and the input checks.
//!
//! Tolerances, as the largest error over a tensor relative to its largest magnitude: forward
//! 1e-5, gradients 1e-4 (plus 1e-6 absolute); finite differences with h = 1e-5 on the f64 forms.

use super::*;
use crate::error::ErrorKind;
use crate::ops::test_support::{
    dot as wdot, finite_diff, grads, leaf, rand_vec, to_f64, with_threads,
};

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs())).max(1e-3);
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
    assert!(got.iter().all(|g| g.is_finite()), "{what}: non-finite");
    // 1e-6 absolute: a gradient that is exactly 0 (softmax over one key) comes out as rounding.
    assert!(
        err <= tol * scale + 1e-6,
        "{what}: error {err:e} relative to {scale:e} exceeds {tol:e}"
    );
}

fn keys64(x: &[f64], e: usize) -> Vec<f64> {
    x.chunks(e.max(1))
        .flat_map(|r| {
            let n = (r.iter().map(|v| v * v).sum::<f64>() + NORM_EPS as f64).sqrt();
            r.iter().map(move |v| v / n).collect::<Vec<_>>()
        })
        .collect()
}

/// Softmax over `pairs` (key positions, repeats counted) of query i's scores, or v_i if empty.
fn attend(
    x: &[f64],
    k: &[f64],
    v: &[f64],
    (e, ev): (usize, usize),
    i: usize,
    pairs: &[usize],
) -> Vec<f64> {
    if pairs.is_empty() {
        return v[i * ev..(i + 1) * ev].to_vec();
    }
    let scale = 1.0 / (e as f64).sqrt();
    let s: Vec<f64> = pairs
        .iter()
        .map(|&j| scale * (0..e).map(|d| x[i * e + d] * k[j * e + d]).sum::<f64>())
        .collect();
    let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let z: f64 = s.iter().map(|s| (s - m).exp()).sum();
    (0..ev)
        .map(|c| {
            pairs
                .iter()
                .zip(&s)
                .map(|(&j, s)| (s - m).exp() / z * v[j * ev + c])
                .sum()
        })
        .collect()
}

/// Whether key `j` of head `h` (of `t` keys) is padding.
fn padded(padding: Option<&[bool]>, h: usize, t: usize, j: usize) -> bool {
    padding.is_some_and(|p| p[h * t + j])
}

/// Dense attention with shared QK (keys normalised), no token attending itself unless it has
/// nothing else (the first token, causal), padding keys hidden, over (BH, T, ·).
fn dense(
    x: &[f64],
    v: &[f64],
    (bh, t, e, ev): (usize, usize, usize, usize),
    causal: bool,
    padding: Option<&[bool]>,
) -> Vec<f64> {
    let mut out = vec![];
    for h in 0..bh {
        let (xh, vh) = (
            &x[h * t * e..(h + 1) * t * e],
            &v[h * t * ev..(h + 1) * t * ev],
        );
        let k = keys64(xh, e);
        for i in 0..t {
            let pairs: Vec<usize> = (0..t)
                .filter(|&j| j != i && (!causal || j <= i) && !padded(padding, h, t, j))
                .collect();
            out.extend(attend(xh, &k, vh, (e, ev), i, &pairs));
        }
    }
    out
}

/// Calls `f(i, keys)` for every query position i of round `order` with the positions of the
/// keys it sees, as the module doc defines them (its own chunk and the previous one, not
/// itself, not padding `hidden(j)`, not later positions when causal), one query at a time.
fn visible(
    order: &[u32],
    s: &Sizes,
    hidden: impl Fn(usize) -> bool,
    mut f: impl FnMut(usize, &[usize]),
) {
    let c = s.opts.bucket_size;
    let mut keys = Vec::with_capacity(2 * c);
    for chunk in 0..s.n_chunks() {
        for &i in &order[chunk * c..(chunk + 1) * c] {
            let i = i as usize;
            keys.clear();
            for w in s.window(chunk) {
                keys.extend(
                    order[w * c..(w + 1) * c]
                        .iter()
                        .map(|&j| j as usize)
                        .filter(|&j| j != i && (!s.opts.causal || j <= i) && !hidden(j)),
                );
            }
            f(i, &keys);
        }
    }
}

/// The rounds of one call recomputed in f64, given each head's sort orders: every (round,
/// visible key) pair in one softmax.
fn rounds(x: &[f64], v: &[f64], s: &Sizes, orders: &[u32], padding: Option<&[bool]>) -> Vec<f64> {
    let (t, e, ev, nh) = (s.t, s.e, s.ev, s.opts.n_hashes);
    let mut out = vec![];
    for h in 0..s.bh {
        let (xh, vh) = (
            &x[h * t * e..(h + 1) * t * e],
            &v[h * t * ev..(h + 1) * t * ev],
        );
        let k = keys64(xh, e);
        let mut pairs = vec![vec![]; t];
        for r in 0..nh {
            let order = &orders[(h * nh + r) * t..(h * nh + r + 1) * t];
            let hidden = |j| padded(padding, h, t, j);
            visible(order, s, hidden, |i, keys| pairs[i].extend_from_slice(keys));
        }
        for (i, p) in pairs.iter().enumerate() {
            out.extend(attend(xh, &k, vh, (e, ev), i, p));
        }
    }
    out
}

struct Case {
    shape: [usize; 4],
    cfg: LshConfig,
    x: Vec<f32>,
    v: Vec<f32>,
    padding: Option<Vec<bool>>,
}

impl Case {
    /// The same case with the last `pad[h]` keys of head h as padding.
    fn padded(self, pad: &[usize]) -> Case {
        let [bh, t, _, _] = self.shape;
        let padding = (0..bh)
            .flat_map(|h| (0..t).map(move |j| j + pad[h] >= t))
            .collect();
        Case {
            padding: Some(padding),
            ..self
        }
    }
}

fn case(shape: [usize; 4], bucket_size: usize, n_hashes: usize, causal: bool) -> Case {
    let [bh, t, e, ev] = shape;
    Case {
        shape,
        cfg: LshConfig {
            n_hashes,
            bucket_size,
            causal,
            seed: 11,
        },
        x: rand_vec((t * 10 + e) as u64, bh * t * e, -1.5, 1.5),
        v: rand_vec((t * 10 + ev + 1) as u64, bh * t * ev, -1.0, 1.0),
        padding: None,
    }
}

/// Output, and gradients of Σ w·out, through the autograd op.
fn run(c: &Case, w: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let [bh, t, e, ev] = c.shape;
    let (x, v) = (
        leaf(c.x.clone(), &[bh, t, e]),
        leaf(c.v.clone(), &[bh, t, ev]),
    );
    let out = lsh_attention(&x, &v, &c.cfg, c.padding.clone()).unwrap();
    let o = out.value().data().to_vec();
    let mut g = grads(&out, w, &[&x, &v]);
    let dv = g.pop().unwrap();
    (o, g.pop().unwrap(), dv)
}

fn check_grads(c: &Case, f: impl Fn(&[f64], &[f64]) -> Vec<f64>, what: &str) {
    let [bh, t, _, ev] = c.shape;
    let w = rand_vec(5, bh * t * ev, -1.0, 1.0);
    let (out, dx, dv) = run(c, &w);
    let (x64, v64, w64) = (to_f64(&c.x), to_f64(&c.v), to_f64(&w));
    assert_close(&format!("forward {what}"), &out, &f(&x64, &v64), 1e-5);
    let nx = x64.len();
    let all: Vec<f64> = x64.iter().chain(&v64).cloned().collect();
    let want = finite_diff(&all, 1e-5, |p| wdot(&w64, &f(&p[..nx], &p[nx..])));
    assert_close(&format!("dqk {what}"), &dx, &want[..nx], 1e-4);
    assert_close(&format!("dv {what}"), &dv, &want[nx..], 1e-4);
}

#[test]
fn one_or_two_chunks_equal_dense_attention_with_the_diagonal_masked() {
    for (t, bucket) in [(1, 1), (3, 3), (17, 17), (34, 17), (6, 3), (2, 1)] {
        for (e, ev) in [(1, 1), (3, 17), (17, 3)] {
            for causal in [false, true] {
                for n_hashes in [1, 3] {
                    let c = case([2, t, e, ev], bucket, n_hashes, causal);
                    let what = format!(
                        "t={t} bucket={bucket} e={e} ev={ev} causal={causal} hashes={n_hashes}"
                    );
                    check_grads(&c, |x, v| dense(x, v, (2, t, e, ev), causal, None), &what);
                }
            }
        }
    }
}

#[test]
fn hashed_rounds_match_the_f64_rounds() {
    for (t, bucket, e, ev, n_hashes, causal) in [
        (32, 4, 3, 2, 3, false),
        (32, 4, 3, 2, 3, true),
        (24, 2, 5, 3, 2, false),
        (16, 1, 2, 2, 4, true),
    ] {
        let c = case([2, t, e, ev], bucket, n_hashes, causal);
        let (_, s) = check(&[2, t, e], &[2, t, ev], &c.cfg).unwrap();
        let rot = rotations(&s);
        let orders: Vec<u32> = (0..2)
            .flat_map(|h| {
                sort_orders(
                    &normalised(&c.x[h * t * e..(h + 1) * t * e], e, t).0,
                    &rot,
                    &s,
                )
            })
            .collect();
        // Several buckets really are used.
        assert!(
            orders.windows(2).any(|w| w[0] > w[1]),
            "t={t}: hashing sorted nothing"
        );
        let what = format!("t={t} bucket={bucket} e={e} ev={ev} hashes={n_hashes} causal={causal}");
        check_grads(&c, |x, v| rounds(x, v, &s, &orders, None), &what);
        // The same rounds with padding keys: the orders do not change (padding is still hashed).
        let c = c.padded(&[t / 3, 1]);
        let p = c.padding.clone();
        check_grads(
            &c,
            |x, v| rounds(x, v, &s, &orders, p.as_deref()),
            &format!("{what} padded"),
        );
    }
}

#[test]
fn padding_keys_are_hidden_from_every_query() {
    // One or two chunks: dense attention with the padding keys and the diagonal masked; head 1
    // keeps one real key, so its real query sees nothing and outputs its own value.
    for (t, bucket) in [(3, 3), (17, 17), (34, 17), (6, 3)] {
        for causal in [false, true] {
            for n_hashes in [1, 3] {
                let c = case([2, t, 3, 5], bucket, n_hashes, causal).padded(&[t / 2, t - 1]);
                let p = c.padding.clone();
                let what = format!("t={t} bucket={bucket} causal={causal} hashes={n_hashes}");
                check_grads(
                    &c,
                    |x, v| dense(x, v, (2, t, 3, 5), causal, p.as_deref()),
                    &what,
                );
            }
        }
    }
}

#[test]
fn seeded_runs_repeat_and_do_not_depend_on_the_thread_count() {
    let c = case([8, 256, 16, 8], 16, 4, false);
    let w = rand_vec(9, 8 * 256 * 8, -1.0, 1.0);
    let one = with_threads(1, || run(&c, &w));
    assert_eq!(one, with_threads(3, || run(&c, &w)));
    assert_eq!(one, run(&c, &w));
    let other = Case {
        cfg: LshConfig { seed: 12, ..c.cfg },
        ..case([8, 256, 16, 8], 16, 4, false)
    };
    assert_ne!(one.0, run(&other, &w).0, "another seed hashes differently");
}

#[test]
fn bad_input_is_an_error() {
    let t = |shape: &[usize]| leaf(vec![0.5; shape.iter().product()], shape);
    let kind = |x: &[usize], v: &[usize], bucket_size, n_hashes| {
        let cfg = LshConfig {
            n_hashes,
            bucket_size,
            causal: false,
            seed: 0,
        };
        match lsh_attention(&t(x), &t(v), &cfg, None) {
            Err(e) => e.kind,
            Ok(_) => panic!("qk {x:?} v {v:?} bucket {bucket_size} hashes {n_hashes}: no error"),
        }
    };
    assert_eq!(kind(&[2, 8, 4], &[2, 9, 4], 4, 1), ErrorKind::Shape);
    assert_eq!(kind(&[2, 8, 4], &[3, 8, 4], 4, 1), ErrorKind::Shape);
    assert_eq!(kind(&[4], &[4], 4, 1), ErrorKind::Shape);
    assert_eq!(kind(&[2, 10, 4], &[2, 10, 4], 4, 1), ErrorKind::Shape);
    assert_eq!(kind(&[2, 12, 4], &[2, 12, 4], 4, 1), ErrorKind::Value); // 3 buckets
    assert_eq!(kind(&[2, 8, 4], &[2, 8, 4], 0, 1), ErrorKind::Value);
    assert_eq!(kind(&[2, 8, 4], &[2, 8, 4], 4, 0), ErrorKind::Value);
    let cfg = LshConfig {
        n_hashes: 1,
        bucket_size: 4,
        causal: false,
        seed: 0,
    };
    let short = lsh_attention(&t(&[2, 8, 4]), &t(&[2, 8, 4]), &cfg, Some(vec![false; 15]));
    assert_eq!(short.err().map(|e| e.kind), Some(ErrorKind::Shape));
}
