//! The kernels against the explicit quadratic form in f64 (`φ(Q)φ(K)ᵀ` as a T × T matrix,
//! masked for causal, rows normalised), the gradients against finite differences of that form,
//! decoding steps against the full forward, and the op's input checks.
//!
//! Tolerances, as the largest error over a tensor divided by its largest magnitude: forward
//! 2e-5 (f32 sums over up to 127 tokens), gradients 1e-4; finite differences use h = 1e-5 on
//! the f64 form, whose own error is ~1e-9.

use super::*;
use crate::autograd::backward;
use crate::error::ErrorKind;
use crate::ops::test_support::{dot as wdot, finite_diff, leaf, rand_vec, to_f64, with_threads};

const FWD_TOL: f64 = 2e-5;
const GRAD_TOL: f64 = 1e-4;

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs())).max(1e-3);
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
    assert!(got.iter().all(|g| g.is_finite()), "{what}: non-finite");
    assert!(
        err / scale <= tol,
        "{what}: error {err:e} relative to {scale:e} exceeds {tol:e}"
    );
}

fn phi(x: f64) -> f64 {
    if x > 0.0 {
        x + 1.0
    } else {
        x.exp()
    }
}

/// The explicit form in f64: `A = φ(Q)φ(K)ᵀ` (T × T, causal: s ≤ t), out = A V / A 1, over the
/// keys `padding` (BH, Tk) does not mark.
fn reference(
    q: &[f64],
    k: &[f64],
    v: &[f64],
    c: &LinearAttentionConfig,
    padding: Option<&[bool]>,
) -> Vec<f64> {
    let (tq, tk, e, ev) = (c.tq, c.tk, c.e, c.ev);
    let mut out = vec![0.0; c.bh * tq * ev];
    for h in 0..c.bh {
        for t in 0..tq {
            let mut num = vec![0.0; ev];
            let mut den = 0.0;
            for s in 0..tk {
                if (c.causal && s > t) || padding.is_some_and(|p| p[h * tk + s]) {
                    continue;
                }
                let a: f64 = (0..e)
                    .map(|i| phi(q[(h * tq + t) * e + i]) * phi(k[(h * tk + s) * e + i]))
                    .sum();
                den += a;
                for j in 0..ev {
                    num[j] += a * v[(h * tk + s) * ev + j];
                }
            }
            for j in 0..ev {
                out[(h * tq + t) * ev + j] = if den == 0.0 { 0.0 } else { num[j] / den };
            }
        }
    }
    out
}

struct Case {
    cfg: LinearAttentionConfig,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
}

fn case(bh: usize, tq: usize, tk: usize, e: usize, ev: usize, causal: bool) -> Case {
    let seed = (bh * 1000 + tq * 100 + tk * 10 + e + ev) as u64;
    Case {
        cfg: LinearAttentionConfig {
            bh,
            tq,
            tk,
            e,
            ev,
            causal,
            feature_map: FeatureMap::Elu,
        },
        q: rand_vec(seed, bh * tq * e, -2.0, 2.0),
        k: rand_vec(seed + 1, bh * tk * e, -2.0, 2.0),
        v: rand_vec(seed + 2, bh * tk * ev, -1.0, 1.0),
    }
}

fn forward(c: &Case) -> Vec<f32> {
    let mut out = vec![f32::NAN; c.cfg.bh * c.cfg.tq * c.cfg.ev];
    linear_attention_forward(&mut out, &c.q, &c.k, &c.v, None, &c.cfg);
    out
}

/// (Tq, Tk, E, Ev, causal) over awkward sizes; Tq = Tk where causal.
fn shapes() -> Vec<(usize, usize, usize, usize, bool)> {
    let mut s = vec![];
    for t in [1, 3, 17, 127] {
        for (e, ev) in [(1, 1), (3, 17), (17, 3), (64, 64)] {
            s.push((t, t, e, ev, true));
            s.push((t, t, e, ev, false));
        }
    }
    s.extend([(5, 17, 3, 4, false), (17, 1, 4, 3, false)]);
    s
}

#[test]
fn forward_matches_explicit_form() {
    for (tq, tk, e, ev, causal) in shapes() {
        let c = case(3, tq, tk, e, ev, causal);
        let want = reference(&to_f64(&c.q), &to_f64(&c.k), &to_f64(&c.v), &c.cfg, None);
        let what = format!("forward tq={tq} tk={tk} e={e} ev={ev} causal={causal}");
        assert_close(&what, &forward(&c), &want, FWD_TOL);
    }
}

/// The kernel backward (with `padding`) against finite differences of the f64 explicit form,
/// for the loss `Σ w·out` with `w` drawn from `seed`; returns `(dk, dv)`.
fn check_gradients(
    c: &Case,
    padding: Option<&[bool]>,
    seed: u64,
    what: &str,
) -> (Vec<f32>, Vec<f32>) {
    let cfg = c.cfg;
    let w = rand_vec(seed, cfg.bh * cfg.tq * cfg.ev, -1.0, 1.0);
    let w64 = to_f64(&w);
    let (nq, nk) = (c.q.len(), c.k.len());
    let x: Vec<f64> = to_f64(&c.q)
        .into_iter()
        .chain(to_f64(&c.k))
        .chain(to_f64(&c.v))
        .collect();
    let want = finite_diff(&x, 1e-5, |x| {
        let (q, rest) = x.split_at(nq);
        let (k, v) = rest.split_at(nk);
        wdot(&w64, &reference(q, k, v, &cfg, padding))
    });
    let mut out = vec![f32::NAN; cfg.bh * cfg.tq * cfg.ev];
    linear_attention_forward(&mut out, &c.q, &c.k, &c.v, padding, &cfg);
    let (mut dq, mut dk, mut dv) = (
        vec![f32::NAN; nq],
        vec![f32::NAN; nk],
        vec![f32::NAN; c.v.len()],
    );
    linear_attention_backward(
        &mut dq, &mut dk, &mut dv, &w, &c.q, &c.k, &c.v, &out, padding, &cfg,
    );
    assert_close(&format!("dq {what}"), &dq, &want[..nq], GRAD_TOL);
    assert_close(&format!("dk {what}"), &dk, &want[nq..nq + nk], GRAD_TOL);
    assert_close(&format!("dv {what}"), &dv, &want[nq + nk..], GRAD_TOL);
    (dk, dv)
}

#[test]
fn gradients_match_finite_differences() {
    for (tq, tk, e, ev, causal) in [
        (1, 1, 1, 1, true),
        (3, 3, 3, 2, true),
        (17, 17, 4, 3, true),
        (3, 3, 3, 2, false),
        (4, 7, 3, 5, false),
        (17, 17, 2, 3, false),
    ] {
        let c = case(2, tq, tk, e, ev, causal);
        check_gradients(
            &c,
            None,
            7,
            &format!("tq={tq} tk={tk} e={e} ev={ev} causal={causal}"),
        );
    }
}

#[test]
fn autograd_op_matches_kernels_and_reshapes() {
    let c = case(6, 17, 17, 3, 5, true);
    let (q, k, v) = (
        leaf(c.q.clone(), &[2, 3, 17, 3]),
        leaf(c.k.clone(), &[2, 3, 17, 3]),
        leaf(c.v.clone(), &[2, 3, 17, 5]),
    );
    let out = linear_attention(&q, &k, &v, true, FeatureMap::Elu, None).unwrap();
    assert_eq!(out.shape(), vec![2, 3, 17, 5]);
    assert_eq!(out.value().data(), &forward(&c)[..]);
    let w = rand_vec(3, out.value().numel(), -1.0, 1.0);
    backward(
        &out,
        Some(Tensor::new(w.clone(), &out.shape()).unwrap()),
        false,
    )
    .unwrap();
    let mut dq = vec![0.0; c.q.len()];
    let (mut dk, mut dv) = (dq.clone(), vec![0.0; c.v.len()]);
    linear_attention_backward(
        &mut dq,
        &mut dk,
        &mut dv,
        &w,
        &c.q,
        &c.k,
        &c.v,
        &forward(&c),
        None,
        &c.cfg,
    );
    assert_eq!(q.grad().unwrap().data(), &dq[..]);
    assert_eq!(k.grad().unwrap().data(), &dk[..]);
    assert_eq!(v.grad().unwrap().data(), &dv[..]);
}

#[test]
fn decoding_steps_equal_the_causal_forward() {
    for (t, e, ev) in [(1, 1, 1), (17, 3, 5), (127, 64, 64)] {
        let c = case(4, t, t, e, ev, true);
        let full = forward(&c);
        let mut state = LinearAttentionState::new(4, e, ev, FeatureMap::Elu);
        let mut stepped = vec![0.0f32; full.len()];
        for s in 0..t {
            // Token s of every head, gathered from the (BH, T, ·) layout.
            let pick = |x: &[f32], w: usize| -> Vec<f32> {
                (0..4)
                    .flat_map(|h| x[(h * t + s) * w..(h * t + s + 1) * w].to_vec())
                    .collect()
            };
            let out = state
                .step(&pick(&c.q, e), &pick(&c.k, e), &pick(&c.v, ev))
                .unwrap();
            for h in 0..4 {
                stepped[(h * t + s) * ev..(h * t + s + 1) * ev]
                    .copy_from_slice(&out[h * ev..(h + 1) * ev]);
            }
        }
        // The same code on the same sums in the same order: identical, not merely close.
        assert_eq!(stepped, full, "t={t} e={e} ev={ev}");
        assert_eq!(state.z().len(), 4 * e);
        assert_eq!(state.s().len(), 4 * e * ev);
    }
    let mut state = LinearAttentionState::new(2, 3, 4, FeatureMap::Elu);
    let err = state.step(&[0.0; 6], &[0.0; 6], &[0.0; 7]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Shape);
}

#[test]
fn results_do_not_depend_on_the_thread_count() {
    let c = case(8, 127, 127, 17, 9, true);
    let w = rand_vec(5, c.cfg.bh * 127 * 9, -1.0, 1.0);
    let run = |threads| {
        with_threads(threads, || {
            let out = forward(&c);
            let mut dq = vec![0.0; c.q.len()];
            let mut dk = dq.clone();
            let mut dv = vec![0.0; c.v.len()];
            linear_attention_backward(
                &mut dq, &mut dk, &mut dv, &w, &c.q, &c.k, &c.v, &out, None, &c.cfg,
            );
            (out, dq, dk, dv)
        })
    };
    assert_eq!(run(1), run(3));
}

#[test]
fn empty_and_zero_width_inputs() {
    // No keys (non-causal) or E = 0: every denominator is 0, so outputs and gradients are 0.
    for (tq, tk, e, ev) in [(3, 0, 2, 2), (3, 3, 0, 2), (0, 0, 2, 2)] {
        let c = case(2, tq, tk, e, ev, false);
        assert!(forward(&c).iter().all(|&x| x == 0.0));
    }
}

#[test]
fn bad_input_is_an_error() {
    let t = |shape: &[usize]| leaf(vec![0.5; shape.iter().product()], shape);
    let kind = |q: &[usize], k: &[usize], v: &[usize], causal| match linear_attention(
        &t(q),
        &t(k),
        &t(v),
        causal,
        FeatureMap::Elu,
        None,
    ) {
        Err(e) => e.kind,
        Ok(_) => panic!("q {q:?} k {k:?} v {v:?} causal {causal}: no error"),
    };
    assert_eq!(
        kind(&[2, 3, 4], &[2, 3, 5], &[2, 3, 4], false),
        ErrorKind::Shape
    );
    assert_eq!(
        kind(&[2, 3, 4], &[3, 3, 4], &[3, 3, 4], false),
        ErrorKind::Shape
    );
    assert_eq!(
        kind(&[2, 3, 4], &[2, 5, 4], &[2, 5, 4], true),
        ErrorKind::Shape
    );
    assert_eq!(kind(&[4], &[4], &[4], false), ErrorKind::Shape);
    assert_eq!(
        FeatureMap::parse("relu").unwrap_err().kind,
        ErrorKind::Value
    );
    let x = t(&[2, 3, 4]);
    let wrong_padding = linear_attention(&x, &x, &x, false, FeatureMap::Elu, Some(vec![false; 5]));
    assert_eq!(wrong_padding.err().map(|e| e.kind), Some(ErrorKind::Shape));
}

/// Padding keys are left out: the forward equals the explicit form without them (a head whose
/// keys are all padding gives zeros), and the gradients equal finite differences of that form
/// (exactly 0 for a padding key's k and v).
#[test]
fn key_padding_leaves_keys_out() {
    for (t, e, ev, causal) in [
        (1, 2, 3, true),
        (3, 3, 2, true),
        (17, 4, 3, true),
        (17, 4, 3, false),
        (5, 1, 1, false),
    ] {
        let c = case(3, t, t, e, ev, causal);
        let cfg = c.cfg;
        // Head 0: every third key; head 1: the last two (right padding); head 2: all of them.
        let padding: Vec<bool> = (0..3 * t)
            .map(|i| match i / t {
                0 => i % 3 == 1,
                1 => i % t + 2 >= t,
                _ => true,
            })
            .collect();
        let mut out = vec![f32::NAN; cfg.bh * t * ev];
        linear_attention_forward(&mut out, &c.q, &c.k, &c.v, Some(&padding), &cfg);
        let what = format!("t={t} e={e} ev={ev} causal={causal}");
        let (q64, k64, v64) = (to_f64(&c.q), to_f64(&c.k), to_f64(&c.v));
        let want = reference(&q64, &k64, &v64, &cfg, Some(&padding));
        assert_close(&format!("forward {what}"), &out, &want, FWD_TOL);
        assert!(
            out[2 * t * ev..].iter().all(|&o| o == 0.0),
            "{what}: all-padding head"
        );
        let (dk, dv) = check_gradients(&c, Some(&padding), 9, &what);
        for (j, _) in padding.iter().enumerate().filter(|(_, &p)| p) {
            assert!(
                dk[j * e..(j + 1) * e].iter().all(|&g| g == 0.0),
                "{what}: dk of padding key {j}"
            );
            assert!(
                dv[j * ev..(j + 1) * ev].iter().all(|&g| g == 0.0),
                "{what}: dv of padding key {j}"
            );
        }
    }
}
