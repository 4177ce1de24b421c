//! Every bf16 path against the float64 reference on bf16-rounded inputs, over the three layouts
//! the training code uses (`x·Wᵀ`, `G·W`, `Gᵀ·x`), awkward sizes (1, 3, 17, 127; odd `k`),
//! α/β, bias and activation, padded `ldc` and both threading modes.
//!
//! Tolerance: with exact bf16 products summed in f32, each element is within
//! `(k + 4)·2⁻²⁴·(|α|·Σ_p|a_ip·b_pj| + |β·c_old| + |bias_j|)` of the exact result (the classic
//! bound γ_k for recursive summation plus the scaling and the epilogue), for any summation order.

use super::*;
use crate::cpu::gemm::{gemm_reference, Activation};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, len: usize) -> Vec<f32> {
        (0..len).map(|_| self.next()).collect()
    }
}

fn paths() -> Vec<Bf16Path> {
    let mut all = vec![Bf16Path::Amx, Bf16Path::Native];
    all.extend(Isa::ALL.map(Bf16Path::Emulated));
    all.into_iter()
        .filter(|p| {
            let ok = p.is_supported();
            if !ok {
                println!("skipping the {} path: not supported by this CPU", p.name());
            }
            ok
        })
        .collect()
}

#[test]
fn rounding_is_to_nearest_even() {
    assert_eq!(bf16_bits(1.0), 0x3f80);
    assert_eq!(bf16_bits(-0.0), 0x8000);
    // 1 + 2⁻⁸ lies halfway between 1 and 1 + 2⁻⁷: ties go to the even mantissa (1).
    assert_eq!(bf16_bits(1.0 + 2f32.powi(-8)), 0x3f80);
    // 1 + 3·2⁻⁸ lies halfway between 1 + 2⁻⁷ (odd) and 1 + 2⁻⁶ (even).
    assert_eq!(bf16_bits(1.0 + 3.0 * 2f32.powi(-8)), 0x3f82);
    assert_eq!(bf16_bits(1.0 + 2f32.powi(-8) + 2f32.powi(-20)), 0x3f81);
    assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
    assert_eq!(round_bf16(f32::MAX), f32::INFINITY);
    assert!(round_bf16(f32::NAN).is_nan());
    // A NaN whose payload sits only in the low half must not become infinity.
    assert!(round_bf16(f32::from_bits(0x7f80_0001)).is_nan());
    // Subnormals are rounded, not flushed.
    assert_eq!(
        round_bf16(f32::from_bits(0x0001_0000)),
        f32::from_bits(0x0001_0000)
    );
}

/// `A` (`rows×cols`) for a layout: stored transposed for `Aᵀ·B`.
fn operand_a(d: &[f32], (rows, cols): (usize, usize), layout: u8) -> MatRef<'_> {
    if layout == 2 {
        MatRef::row_major(d, cols, rows).t()
    } else {
        MatRef::row_major(d, rows, cols)
    }
}

/// `B` (`rows×cols`) for a layout: stored transposed for `A·Bᵀ`.
fn operand_b(d: &[f32], (rows, cols): (usize, usize), layout: u8) -> MatRef<'_> {
    if layout == 1 {
        MatRef::row_major(d, cols, rows).t()
    } else {
        MatRef::row_major(d, rows, cols)
    }
}

/// `(m, n, k, layout)` products checked on every path; layout: 0 = A·B (row-major B),
/// 1 = A·Bᵀ (a linear forward), 2 = Aᵀ·B (a weight gradient).
#[allow(clippy::too_many_arguments)]
fn check(
    path: Bf16Path,
    (m, n, k): (usize, usize, usize),
    layout: u8,
    (alpha, beta): (f32, f32),
    bias: bool,
    activation: Activation,
    pad: usize,
    parallel: bool,
    seed: u64,
) {
    let mut rng = Rng(seed);
    let a_data = rng.vec(m * k);
    let b_data = rng.vec(k * n);
    let bias_v = rng.vec(n);
    let ldc = n + pad;
    let c0 = rng.vec((m.max(1) - 1) * ldc + n);
    let (a_raw, a_r) = (a_data.clone(), round_slice(&a_data));
    let (b_raw, b_r) = (b_data.clone(), round_slice(&b_data));
    let a_of = |d| operand_a(d, (m, k), layout);
    let b_of = |d| operand_b(d, (k, n), layout);
    let epi = Epilogue {
        bias: bias.then_some(&bias_v[..]),
        activation,
    };
    let mut c = c0.clone();
    gemm_bf16_with(
        path,
        alpha,
        a_of(&a_raw),
        b_of(&b_raw),
        beta,
        &mut c,
        ldc,
        &epi,
        parallel,
    );
    let mut want = c0.clone();
    gemm_reference(alpha, a_of(&a_r), b_of(&b_r), beta, &mut want, ldc, &epi);
    let (ar, br) = (a_of(&a_r), b_of(&b_r));
    let u = 2f32.powi(-24);
    for i in 0..m {
        for j in 0..n {
            let s: f32 = (0..k).map(|p| (ar.at(i, p) * br.at(p, j)).abs()).sum();
            let scale = alpha.abs() * s
                + (beta * c0[i * ldc + j]).abs()
                + if bias { bias_v[j].abs() } else { 0.0 };
            let tol = (k as f32 + 4.0) * u * scale * 1.2 + 1e-30;
            let (got, exp) = (c[i * ldc + j], want[i * ldc + j]);
            assert!(
                (got - exp).abs() <= tol,
                "{} {m}x{n}x{k} layout {layout} at ({i},{j}): {got} vs {exp} (tol {tol})",
                path.name()
            );
        }
        // The padding between rows is not written.
        if i + 1 < m {
            assert_eq!(
                &c[i * ldc + n..(i + 1) * ldc],
                &c0[i * ldc + n..(i + 1) * ldc]
            );
        }
    }
}

#[test]
fn matches_the_f64_reference_on_rounded_inputs() {
    let sizes = [1, 3, 17, 127];
    let mut seed = 1;
    for path in paths() {
        for &m in &sizes {
            for &n in &sizes {
                for &k in &[1, 3, 17, 127, 2] {
                    for layout in 0..3 {
                        seed += 1;
                        check(
                            path,
                            (m, n, k),
                            layout,
                            (1.0, 0.0),
                            false,
                            Activation::Identity,
                            0,
                            true,
                            seed,
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn alpha_beta_bias_activation_padding_and_threads() {
    let mut seed = 1000;
    for path in paths() {
        for &(m, n, k) in &[
            (33, 70, 1025),
            (200, 65, 301),
            (5, 300, 64),
            (300, 300, 300),
        ] {
            for layout in 0..3 {
                for &(parallel, act) in &[(true, Activation::Relu), (false, Activation::Gelu)] {
                    seed += 1;
                    check(
                        path,
                        (m, n, k),
                        layout,
                        (0.5, -1.5),
                        true,
                        act,
                        3,
                        parallel,
                        seed,
                    );
                }
            }
        }
    }
}

#[test]
fn bf16_differs_from_float32_where_rounding_matters() {
    // A product of values that bf16 cannot hold: the bf16 result must follow the rounded
    // inputs, not the float32 ones (a path that forgot to round would fail here).
    let (m, n, k) = (4, 40, 33);
    let mut rng = Rng(7);
    let (a, b) = (rng.vec(m * k), rng.vec(k * n));
    let mut exact = vec![0.0; m * n];
    gemm_reference(
        1.0,
        MatRef::row_major(&a, m, k),
        MatRef::row_major(&b, k, n),
        0.0,
        &mut exact,
        n,
        &Epilogue::default(),
    );
    for path in paths() {
        let mut c = vec![0.0; m * n];
        gemm_bf16_with(
            path,
            1.0,
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, k, n),
            0.0,
            &mut c,
            n,
            &Epilogue::default(),
            false,
        );
        let worst = c
            .iter()
            .zip(&exact)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max);
        assert!(
            worst > 1e-4,
            "{}: worst deviation from float32 {worst}",
            path.name()
        );
    }
}

#[test]
fn hardware_paths_agree_with_the_emulation() {
    let (m, n, k) = (150, 97, 1031);
    let mut rng = Rng(11);
    let (a, b) = (rng.vec(m * k), rng.vec(k * n));
    let run = |path| {
        let mut c = vec![0.0; m * n];
        gemm_bf16_with(
            path,
            1.0,
            MatRef::row_major(&a, m, k),
            MatRef::row_major(&b, n, k).t(),
            0.0,
            &mut c,
            n,
            &Epilogue::default(),
            true,
        );
        c
    };
    let emulated = run(Bf16Path::Emulated(Isa::Generic));
    for path in paths() {
        let worst = run(path)
            .iter()
            .zip(&emulated)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        // Both are within the summation bound of the exact value (|c| ≲ 30 here).
        assert!(worst < 1e-3, "{} vs emulated: {worst}", path.name());
    }
}

#[test]
#[should_panic(expected = "exceeds its buffer")]
fn a_view_past_its_buffer_panics() {
    let a = vec![1.0; 10];
    let b = vec![1.0; 12];
    let mut c = vec![0.0; 12];
    gemm_bf16(
        1.0,
        MatRef {
            data: &a,
            rows: 3,
            cols: 4,
            rs: 4,
            cs: 1,
        },
        MatRef::row_major(&b, 4, 3),
        0.0,
        &mut c,
        3,
        &Epilogue::default(),
        false,
    );
}

/// Timing harness: `cargo test --release gemm_bf16_timing -- --ignored --nocapture`.
#[test]
#[ignore]
fn gemm_bf16_timing() {
    use std::time::Instant;
    for &s in &[512usize, 1024, 2048] {
        let mut rng = Rng(3);
        let (a, b) = (rng.vec(s * s), rng.vec(s * s));
        let mut c = vec![0.0; s * s];
        for layout in 0..3 {
            let (av, bv) = match layout {
                0 => (MatRef::row_major(&a, s, s), MatRef::row_major(&b, s, s)),
                1 => (MatRef::row_major(&a, s, s), MatRef::row_major(&b, s, s).t()),
                _ => (MatRef::row_major(&a, s, s).t(), MatRef::row_major(&b, s, s)),
            };
            let mut best = [f64::MAX; 2];
            for _ in 0..5 {
                for (v, best) in best.iter_mut().enumerate() {
                    let t = Instant::now();
                    gemm_as(
                        [Precision::F32, Precision::Bf16][v],
                        1.0,
                        av,
                        bv,
                        0.0,
                        &mut c,
                        s,
                        &Epilogue::default(),
                        true,
                    );
                    *best = best.min(t.elapsed().as_secs_f64());
                }
            }
            let gf = |t: f64| 2.0 * (s * s * s) as f64 / t / 1e9;
            println!(
                "{s}³ layout {layout}: f32 {:.0} GFLOP/s, bf16 {:.0} GFLOP/s",
                gf(best[0]),
                gf(best[1])
            );
        }
    }
}
