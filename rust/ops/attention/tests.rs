//! The fused kernels against the f64 reference, the reference against finite differences, and
//! the op's input checks.
//!
//! Tolerances, as the largest error over a tensor divided by its largest magnitude (floored at
//! 1e-3): forward 1e-5, gradients 1e-4 (f32 sums over up to 200 keys, against f64).

use super::*;
use crate::autograd::backward;
use crate::error::ErrorKind;
use crate::random::uniform;

pub(super) const FWD_TOL: f64 = 1e-5;
pub(super) const GRAD_TOL: f64 = 1e-4;

/// Deterministic values uniform in (−magnitude, magnitude).
pub(super) fn data(n: usize, seed: u64, magnitude: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (2.0 * uniform(seed, i as u64) - 1.0) * magnitude)
        .collect()
}

pub(super) fn to_f64(x: &[f32]) -> Vec<f64> {
    x.iter().map(|&v| v as f64).collect()
}

/// Largest error relative to the largest magnitude of `want` (at least 1e-3, for gradients that
/// are exactly 0 and come out as rounding noise); asserts it is within `tol`.
pub(super) fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let scale = want.iter().fold(0.0f64, |m, w| m.max(w.abs())).max(1e-3);
    let err = got
        .iter()
        .zip(want)
        .fold(0.0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
    assert!(
        got.iter().all(|g| g.is_finite()),
        "{what}: non-finite values"
    );
    assert!(
        err / scale <= tol,
        "{what}: error {err:e} relative to max |value| {scale:e} exceeds {tol:e}"
    );
}

/// One test case: shapes, options and the inputs they determine.
struct Case {
    batch: Vec<usize>,
    tq: usize,
    tk: usize,
    e: usize,
    ev: usize,
    causal: bool,
    mask: Option<Tensor>,
    /// q and k are drawn with this magnitude (large values give large logits).
    magnitude: f32,
    scale: Option<f32>,
}

impl Case {
    fn new(batch: &[usize], tq: usize, tk: usize, e: usize, ev: usize, causal: bool) -> Case {
        Case {
            batch: batch.to_vec(),
            tq,
            tk,
            e,
            ev,
            causal,
            mask: None,
            magnitude: 1.0,
            scale: None,
        }
    }

    fn shape(&self, rows: usize, cols: usize) -> Vec<usize> {
        self.batch.iter().copied().chain([rows, cols]).collect()
    }

    fn inputs(&self) -> [Tensor; 4] {
        let make = |rows, cols, seed, mag| {
            let shape = self.shape(rows, cols);
            Tensor::new(data(shape.iter().product(), seed, mag), &shape).unwrap()
        };
        [
            make(self.tq, self.e, 1, self.magnitude),
            make(self.tk, self.e, 2, self.magnitude),
            make(self.tk, self.ev, 3, 1.0),
            make(self.tq, self.ev, 4, 1.0), // the output gradient
        ]
    }

    /// Runs the op and its backward through autograd and compares all four results with the
    /// reference. `tol_scale` loosens both tolerances.
    fn check(&self, tol_scale: f64) {
        let [q, k, v, dout] = self.inputs();
        let vars = [&q, &k, &v].map(|t| Var::leaf(t.clone(), true));
        let out = scaled_dot_product_attention(
            &vars[0],
            &vars[1],
            &vars[2],
            self.mask.as_ref(),
            0.0,
            self.causal,
            self.scale,
        )
        .unwrap();
        assert_eq!(out.shape(), self.shape(self.tq, self.ev));
        backward(&out, Some(dout.clone()), false).unwrap();

        let mask = self
            .mask
            .as_ref()
            .map(|m| HostMask::new(OP, m, &self.batch, self.tq, self.tk).unwrap());
        let cfg = MaskedConfig {
            cfg: AttentionConfig {
                bh: self.batch.iter().product(),
                tq: self.tq,
                tk: self.tk,
                e: self.e,
                ev: self.ev,
                scale: self.scale.unwrap_or_else(|| default_scale(self.e)),
                is_causal: self.causal,
                dropout_p: 0.0,
                seed: 0,
            },
            mask: mask.as_ref().map(HostMask::view),
        };
        let [want_out, want_dq, want_dk, want_dv] = reference(&cfg, &q, &k, &v, &dout);
        let what = format!(
            "batch {:?} Tq {} Tk {} E {} Ev {} causal {}",
            self.batch, self.tq, self.tk, self.e, self.ev, self.causal
        );
        assert_close(
            &format!("out, {what}"),
            out.value().data(),
            &want_out,
            FWD_TOL * tol_scale,
        );
        assert_close(
            &format!("dq, {what}"),
            vars[0].grad().unwrap().data(),
            &want_dq,
            GRAD_TOL * tol_scale,
        );
        assert_close(
            &format!("dk, {what}"),
            vars[1].grad().unwrap().data(),
            &want_dk,
            GRAD_TOL * tol_scale,
        );
        assert_close(
            &format!("dv, {what}"),
            vars[2].grad().unwrap().data(),
            &want_dv,
            GRAD_TOL * tol_scale,
        );
    }
}

/// The reference's out, dq, dk, dv for f32 inputs.
fn reference(
    cfg: &MaskedConfig,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    dout: &Tensor,
) -> [Vec<f64>; 4] {
    let (q, k, v, dout) = (
        to_f64(q.data()),
        to_f64(k.data()),
        to_f64(v.data()),
        to_f64(dout.data()),
    );
    let mut out = vec![0.0; cfg.bh * cfg.tq * cfg.ev];
    let mut lse = vec![0.0; cfg.bh * cfg.tq];
    attention_forward_reference(&mut out, &mut lse, &q, &k, &v, cfg);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    attention_backward_reference(&mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, cfg);
    [out, dq, dk, dv]
}

#[test]
fn matches_reference_over_shapes() {
    let shapes: [(&[usize], usize, usize, usize, usize); 8] = [
        (&[], 1, 1, 1, 1),
        (&[2], 3, 17, 3, 17),
        (&[2, 3], 17, 3, 17, 3),
        (&[2], 127, 127, 64, 64),
        (&[1, 2], 200, 127, 17, 64),
        (&[], 127, 200, 64, 1),
        (&[2], 200, 200, 64, 64),
        (&[3], 1, 200, 3, 17),
    ];
    for (batch, tq, tk, e, ev) in shapes {
        for causal in [false, true] {
            Case::new(batch, tq, tk, e, ev, causal).check(1.0);
        }
    }
}

/// A mask of `shape` with values in (−3, 3) and about a fifth −∞.
fn random_mask(shape: &[usize], seed: u64) -> Tensor {
    let n: usize = shape.iter().product();
    let vals = (0..n as u64)
        .map(|i| {
            if uniform(seed + 1, i) < 0.2 {
                f32::NEG_INFINITY
            } else {
                6.0 * uniform(seed, i) - 3.0
            }
        })
        .collect();
    Tensor::new(vals, shape).unwrap()
}

#[test]
fn masks_of_every_broadcast_shape() {
    let (b, h, tq, tk) = (2, 3, 70, 90);
    let shapes: [&[usize]; 6] = [
        &[tq, tk],
        &[b, 1, 1, tk],
        &[b, h, tq, tk],
        &[tk],
        &[h, 1, tk],
        &[1, h, tq, 1],
    ];
    for (n, shape) in shapes.into_iter().enumerate() {
        let mut case = Case::new(&[b, h], tq, tk, 16, 24, false);
        case.mask = Some(random_mask(shape, 10 + n as u64));
        case.check(1.0);
    }
}

#[test]
fn fully_masked_rows_give_zeros_and_finite_grads() {
    let (b, tq, tk) = (2, 20, 70);
    // Row 5 of every batch sees no key; batch 1 sees no key at all in rows ≥ 10.
    let mut m = random_mask(&[b, 1, tq, tk], 7).to_vec().unwrap();
    for bi in 0..b {
        for i in 0..tq {
            if i == 5 || (bi == 1 && i >= 10) {
                m[(bi * tq + i) * tk..(bi * tq + i + 1) * tk].fill(f32::NEG_INFINITY);
            }
        }
    }
    let mut case = Case::new(&[b, 2], tq, tk, 8, 8, false);
    case.mask = Some(Tensor::new(m, &[b, 1, tq, tk]).unwrap());
    case.check(1.0);
    let [q, k, v, _] = case.inputs();
    let vars = [q, k, v].map(|t| Var::leaf(t, true));
    let out = scaled_dot_product_attention(
        &vars[0],
        &vars[1],
        &vars[2],
        case.mask.as_ref(),
        0.0,
        false,
        None,
    )
    .unwrap();
    let row = |bi: usize, h: usize, i: usize| ((bi * 2 + h) * tq + i) * 8;
    assert!(out.value().data()[row(0, 1, 5)..row(0, 1, 6)]
        .iter()
        .all(|&x| x == 0.0));
    assert!(out.value().data()[row(1, 0, 10)..row(1, 1, 0)]
        .iter()
        .all(|&x| x == 0.0));
    backward(
        &crate::ops::reduce::sum(&out, &[], false).unwrap(),
        None,
        false,
    )
    .unwrap();
    for var in &vars {
        assert!(var.grad().unwrap().data().iter().all(|g| g.is_finite()));
    }
    // Every key masked (Tk = 0 behaves the same way).
    let empty = Case::new(&[2], 3, 0, 4, 5, false);
    let [q, k, v, _] = empty.inputs();
    let out = scaled_dot_product_attention(
        &Var::constant(q),
        &Var::constant(k),
        &Var::constant(v),
        None,
        0.0,
        false,
        None,
    )
    .unwrap();
    assert_eq!(out.value().data(), &[0.0; 30]);
}

#[test]
fn large_logits_stay_finite() {
    // |q·k| up to about 1e4. An f32 score of that size is off by about 1e-3 from the f64 one,
    // which moves the near-tied probabilities by as much: hence the looser tolerance.
    for causal in [false, true] {
        let mut case = Case::new(&[2], 65, 80, 64, 32, causal);
        case.magnitude = 25.0;
        case.scale = Some(1.0);
        case.check(100.0);
    }
}

#[test]
fn running_maximum_that_keeps_growing() {
    // Scores that rise along the keys by about 5 (base 2) per key block, fall, and saw-tooth:
    // the online softmax's reference maximum moves at some blocks and stays at others.
    let (tq, tk, e, ev) = (3, 300, 2, 5);
    let a = 5.0 / (64.0 * std::f32::consts::LOG2_E);
    let q = [1.0, 0.0, -1.0, 0.0, 0.0, 1.0];
    let k: Vec<f32> = (0..tk)
        .flat_map(|j| [a * j as f32, a * (j % 100) as f32 * 1.7])
        .collect();
    let v: Vec<f32> = (0..tk * ev).map(|i| uniform(5, i as u64) - 0.5).collect();
    let dout: Vec<f32> = (0..tq * ev).map(|i| uniform(6, i as u64) - 0.5).collect();
    let t = |data: &[f32], rows: usize, cols: usize| {
        Tensor::new(data.to_vec(), &[1, rows, cols]).unwrap()
    };
    for causal in [false, true] {
        let cfg = MaskedConfig {
            cfg: AttentionConfig {
                bh: 1,
                tq,
                tk,
                e,
                ev,
                scale: 1.0,
                is_causal: causal,
                dropout_p: 0.0,
                seed: 0,
            },
            mask: None,
        };
        let got = fused(&cfg, &q, &k, &v, &dout);
        let want = reference(
            &cfg,
            &t(&q, tq, e),
            &t(&k, tk, e),
            &t(&v, tk, ev),
            &t(&dout, tq, ev),
        );
        assert_close("out", &got[0], &want[0], FWD_TOL);
        for (g, w) in got[1..].iter().zip(&want[1..]) {
            assert_close("grad", g, w, GRAD_TOL);
        }
    }
}

/// Fused forward and backward on raw slices, with a dropout seed the test chooses.
fn fused(cfg: &MaskedConfig, q: &[f32], k: &[f32], v: &[f32], dout: &[f32]) -> [Vec<f32>; 4] {
    let mut out = vec![0.0; cfg.bh * cfg.tq * cfg.ev];
    let mut lse = vec![0.0; cfg.bh * cfg.tq];
    attention_forward(&mut out, &mut lse, q, k, v, cfg);
    let (mut dq, mut dk, mut dv) = (vec![0.0; q.len()], vec![0.0; k.len()], vec![0.0; v.len()]);
    attention_backward(&mut dq, &mut dk, &mut dv, dout, q, k, v, &out, &lse, cfg);
    [out, dq, dk, dv]
}

#[test]
fn dropout_uses_one_mask_forward_and_backward() {
    for causal in [false, true] {
        let cfg = MaskedConfig {
            cfg: AttentionConfig {
                bh: 3,
                tq: 100,
                tk: 77,
                e: 20,
                ev: 12,
                scale: 0.3,
                is_causal: causal,
                dropout_p: 0.3,
                seed: 99,
            },
            mask: None,
        };
        let case = Case::new(&[3], cfg.tq, cfg.tk, cfg.e, cfg.ev, causal);
        let [q, k, v, dout] = case.inputs();
        let got = fused(&cfg, q.data(), k.data(), v.data(), dout.data());
        let want = reference(&cfg, &q, &k, &v, &dout);
        assert_close("dropout out", &got[0], &want[0], FWD_TOL);
        for (name, g, w) in [
            ("dq", &got[1], &want[1]),
            ("dk", &got[2], &want[2]),
            ("dv", &got[3], &want[3]),
        ] {
            assert_close(name, g, w, GRAD_TOL);
        }
    }
}

#[test]
fn results_do_not_depend_on_thread_count() {
    let cfg = MaskedConfig {
        cfg: AttentionConfig {
            bh: 2,
            tq: 300,
            tk: 260,
            e: 32,
            ev: 16,
            scale: 0.2,
            is_causal: true,
            dropout_p: 0.1,
            seed: 5,
        },
        mask: None,
    };
    let [q, k, v, dout] = Case::new(&[2], cfg.tq, cfg.tk, cfg.e, cfg.ev, true).inputs();
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| fused(&cfg, q.data(), k.data(), v.data(), dout.data()))
    };
    let one = run(1);
    for threads in [2, 3, 8] {
        assert_eq!(run(threads), one, "{threads} threads");
    }
}

#[test]
fn reference_gradient_matches_finite_differences() {
    let (bh, tq, tk, e, ev) = (2, 3, 4, 3, 2);
    let mask = random_mask(&[tq, tk], 3);
    let layout = HostMask::new(OP, &mask, &[bh], tq, tk).unwrap();
    let cfg = MaskedConfig {
        cfg: AttentionConfig {
            bh,
            tq,
            tk,
            e,
            ev,
            scale: 0.7,
            is_causal: false,
            dropout_p: 0.25,
            seed: 11,
        },
        mask: Some(layout.view()),
    };
    let mut x: Vec<Vec<f64>> = [bh * tq * e, bh * tk * e, bh * tk * ev]
        .iter()
        .enumerate()
        .map(|(s, &n)| to_f64(&data(n, 20 + s as u64, 1.0)))
        .collect();
    let w = to_f64(&data(bh * tq * ev, 30, 1.0));
    // loss = Σ out ∘ w, so d(loss)/d(out) = w.
    let loss = |x: &[Vec<f64>]| {
        let (mut out, mut lse) = (vec![0.0; w.len()], vec![0.0; bh * tq]);
        attention_forward_reference(&mut out, &mut lse, &x[0], &x[1], &x[2], &cfg);
        out.iter().zip(&w).map(|(o, w)| o * w).sum::<f64>()
    };
    let mut grads: Vec<Vec<f64>> = x.iter().map(|t| vec![0.0; t.len()]).collect();
    let [dq, dk, dv] = &mut grads[..] else {
        unreachable!()
    };
    attention_backward_reference(dq, dk, dv, &w, &x[0], &x[1], &x[2], &cfg);
    let h = 1e-6;
    for t in 0..3 {
        for i in 0..x[t].len() {
            let orig = x[t][i];
            x[t][i] = orig + h;
            let up = loss(&x);
            x[t][i] = orig - h;
            let down = loss(&x);
            x[t][i] = orig;
            let fd = (up - down) / (2.0 * h);
            assert!(
                (fd - grads[t][i]).abs() < 1e-7 * (1.0 + fd.abs()),
                "input {t} element {i}: fd {fd}, analytic {}",
                grads[t][i]
            );
        }
    }
}

#[test]
fn bad_inputs_return_the_right_error() {
    let v = |shape: &[usize]| Var::constant(Tensor::zeros(shape));
    let sdpa =
        |q: &[usize], k: &[usize], vv: &[usize], mask: Option<&Tensor>, p: f32, causal: bool| {
            scaled_dot_product_attention(&v(q), &v(k), &v(vv), mask, p, causal, None)
                .map(|_| ())
                .unwrap_err()
                .kind
        };
    let (q, k) = ([2, 3, 5, 8], [2, 3, 7, 8]);
    assert_eq!(
        sdpa(&q, &[2, 4, 7, 8], &[2, 4, 7, 6], None, 0.0, false),
        ErrorKind::Shape
    ); // batch dims
    assert_eq!(
        sdpa(&q, &[2, 3, 7, 9], &[2, 3, 7, 6], None, 0.0, false),
        ErrorKind::Shape
    ); // E
    assert_eq!(
        sdpa(&q, &k, &[2, 3, 6, 6], None, 0.0, false),
        ErrorKind::Shape
    ); // Tk
    assert_eq!(sdpa(&[8], &[8], &[8], None, 0.0, false), ErrorKind::Shape); // rank < 2
    assert_eq!(
        sdpa(&q, &[3, 7, 8], &[3, 7, 6], None, 0.0, false),
        ErrorKind::Shape
    ); // rank differs
    for p in [1.0, -0.1, f32::NAN, 2.0] {
        assert_eq!(
            sdpa(&q, &k, &[2, 3, 7, 6], None, p, false),
            ErrorKind::Value,
            "dropout_p {p}"
        );
    }
    assert_eq!(
        sdpa(
            &q,
            &k,
            &[2, 3, 7, 6],
            Some(&Tensor::zeros(&[5, 7])),
            0.0,
            true
        ),
        ErrorKind::Value
    );
    for bad in [&[5, 6][..], &[3, 3, 5, 7], &[1, 2, 3, 5, 7]] {
        assert_eq!(
            sdpa(&q, &k, &[2, 3, 7, 6], Some(&Tensor::zeros(bad)), 0.0, false),
            ErrorKind::Shape,
            "mask {bad:?}"
        );
    }
    for bad in [f32::NAN, f32::INFINITY] {
        let mut m = vec![0.0; 35];
        m[12] = bad;
        let mask = Tensor::new(m, &[5, 7]).unwrap();
        assert_eq!(
            sdpa(&q, &k, &[2, 3, 7, 6], Some(&mask), 0.0, false),
            ErrorKind::NonFinite
        );
    }
    let scale_err = scaled_dot_product_attention(
        &v(&q),
        &v(&k),
        &v(&[2, 3, 7, 6]),
        None,
        0.0,
        false,
        Some(f32::NAN),
    );
    assert_eq!(scale_err.map(|_| ()).unwrap_err().kind, ErrorKind::Value);
}

#[test]
fn zero_sized_dimensions() {
    for (tq, tk, e, ev) in [(0, 5, 4, 3), (5, 0, 4, 3), (5, 6, 0, 3), (5, 6, 4, 0)] {
        let case = Case::new(&[2], tq, tk, e, ev, false);
        case.check(1.0);
    }
}

#[test]
fn fast_exp2_is_accurate_and_exactly_zero_when_masked() {
    use super::kernels::{exp2, Generic, Lanes, Simd};
    type Avx512 = Lanes<16, 4, true>;
    // Over the whole range of normal results, at integers and half-integers (where the
    // reduction switches), the masked and the special values. At −126 both 0 and 2^−126 pass.
    let mut xs: Vec<f32> = (-25_200..=25_400).map(|i| i as f32 * 0.005).collect();
    xs.extend([-126.0, -127.0, -200.0, -1e30, f32::NEG_INFINITY, f32::NAN]);
    xs.resize(xs.len().div_ceil(16) * 16, 0.0);
    let by_lanes = |f: unsafe fn([f32; 16]) -> [f32; 16]| -> Vec<f32> {
        // SAFETY: only called for instruction sets this CPU has (checked below).
        xs.chunks(16)
            .flat_map(|c| unsafe { f(c.try_into().unwrap()) })
            .collect()
    };
    let mut evaluations = vec![
        (
            "generic",
            xs.iter().map(|&x| exp2::<Generic>(x)).collect::<Vec<_>>(),
        ),
        ("fma", xs.iter().map(|&x| exp2::<Avx512>(x)).collect()),
    ];
    if crate::cpu::Isa::Avx512.is_supported() {
        evaluations.push(("avx512", by_lanes(Avx512::exp2_x16)));
    } else {
        eprintln!("skipping the AVX-512 exp2: this CPU cannot run it");
    }
    for (name, got) in evaluations {
        for (&x, &y) in xs.iter().zip(&got) {
            if x.is_nan() {
                assert!(y.is_nan(), "{name}: exp2(NaN) = {y}");
            } else if x <= -127.0 {
                assert_eq!(y, 0.0, "{name}: exp2({x})");
            } else if x > -126.0 {
                let want = (x as f64).exp2();
                let err = ((y as f64 - want) / want).abs();
                assert!(err < 2e-7, "{name}: exp2({x}) = {y}, want {want}");
            }
        }
    }
}

#[test]
fn every_supported_instruction_set_agrees() {
    use crate::cpu::{set_isa, Isa};
    let cfg = MaskedConfig {
        cfg: AttentionConfig {
            bh: 2,
            tq: 90,
            tk: 70,
            e: 40,
            ev: 24,
            scale: 0.2,
            is_causal: true,
            dropout_p: 0.0,
            seed: 0,
        },
        mask: None,
    };
    let [q, k, v, dout] = Case::new(&[2], cfg.tq, cfg.tk, cfg.e, cfg.ev, true).inputs();
    let want = reference(&cfg, &q, &k, &v, &dout);
    let before = crate::cpu::active_isa();
    for isa in Isa::ALL {
        if !isa.is_supported() {
            eprintln!("skipping the {} path: this CPU cannot run it", isa.name());
            continue;
        }
        set_isa(isa).unwrap();
        let got = fused(&cfg, q.data(), k.data(), v.data(), dout.data());
        set_isa(before).unwrap();
        assert_close(&format!("{} out", isa.name()), &got[0], &want[0], FWD_TOL);
        for (g, w) in got[1..].iter().zip(&want[1..]) {
            assert_close(&format!("{} grad", isa.name()), g, w, GRAD_TOL);
        }
    }
}
