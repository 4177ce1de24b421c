//! Every instruction-set path against `gemm_reference`, over layouts, awkward sizes, α/β,
//! epilogues, padded `ldc` and both threading modes.
//!
//! Tolerance: float32 accumulation of `k` products has error at most about `k·ε·Σ|a_ip·b_pj|`
//! in the worst case and far less for random data, so each element must satisfy
//! `|c − ref| ≤ 1e-5·(|α|·Σ_p|a_ip·b_pj| + |β·c_old| + |bias_j|) + 1e-6`. The activations are
//! 1-Lipschitz up to ~1.13 (GELU), so the same bound holds after them.

use super::*;
use crate::cpu::features::Isa;

/// A small deterministic generator (no dev-dependency needed): uniform in [-1, 1).
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

fn isas() -> Vec<Isa> {
    Isa::ALL
        .into_iter()
        .filter(|isa| {
            let ok = isa.is_supported();
            if !ok {
                println!("skipping {}: not supported by this CPU", isa.name());
            }
            ok
        })
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Layout {
    /// `A·B`, both row-major.
    Nn,
    /// `A·Bᵀ`, `B` stored as row-major `n×k`.
    Nt,
    /// `Aᵀ·B`, `A` stored as row-major `k×m`.
    Tn,
    /// `Aᵀ·Bᵀ`.
    Tt,
}

impl Layout {
    /// `A` (m×k) and `B` (k×n) over buffers of `m·k` and `k·n` elements, stored as the layout says.
    fn views<'a>(
        self,
        a: &'a [f32],
        b: &'a [f32],
        m: usize,
        n: usize,
        k: usize,
    ) -> (MatRef<'a>, MatRef<'a>) {
        let (an, at) = (MatRef::row_major(a, m, k), MatRef::row_major(a, k, m).t());
        let (bn, bt) = (MatRef::row_major(b, k, n), MatRef::row_major(b, n, k).t());
        match self {
            Layout::Nn => (an, bn),
            Layout::Nt => (an, bt),
            Layout::Tn => (at, bn),
            Layout::Tt => (at, bt),
        }
    }
}

const LAYOUTS: [Layout; 4] = [Layout::Nn, Layout::Nt, Layout::Tn, Layout::Tt];

/// One test case; runs `isa` against the reference and checks every element.
#[derive(Clone, Copy, Debug)]
struct Case {
    m: usize,
    n: usize,
    k: usize,
    layout: Layout,
    alpha: f32,
    beta: f32,
    bias: bool,
    act: Activation,
    ldc_pad: usize,
    parallel: bool,
}

impl Case {
    fn new(m: usize, n: usize, k: usize) -> Case {
        Case {
            m,
            n,
            k,
            layout: Layout::Nn,
            alpha: 1.0,
            beta: 0.0,
            bias: false,
            act: Activation::Identity,
            ldc_pad: 0,
            parallel: false,
        }
    }

    fn check(&self, isa: Isa) {
        let Case { m, n, k, .. } = *self;
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (m * 131 + n * 17 + k) as u64);
        let a_data = rng.vec(m * k);
        let b_data = rng.vec(k * n);
        let (a, b) = self.layout.views(&a_data, &b_data, m, n, k);
        let bias_data = rng.vec(n);
        let ep = Epilogue {
            bias: self.bias.then_some(&bias_data[..]),
            activation: self.act,
        };
        let ldc = n + self.ldc_pad;
        let c_len = if m == 0 { 0 } else { (m - 1) * ldc + n };
        // β = 0 must ignore C entirely, so fill it with NaN there.
        let c0 = if self.beta == 0.0 {
            vec![f32::NAN; c_len]
        } else {
            rng.vec(c_len)
        };
        let mut got = c0.clone();
        gemm_with_isa(
            isa,
            self.alpha,
            a,
            b,
            self.beta,
            &mut got,
            ldc,
            &ep,
            self.parallel,
        );
        let mut want = c0.clone();
        gemm_reference(self.alpha, a, b, self.beta, &mut want, ldc, &ep);
        for i in 0..m {
            for (j, bias_j) in bias_data.iter().enumerate() {
                let idx = i * ldc + j;
                let mag: f32 = (0..k).map(|p| (a.at(i, p) * b.at(p, j)).abs()).sum();
                let old = if self.beta == 0.0 {
                    0.0
                } else {
                    (self.beta * c0[idx]).abs()
                };
                let scale =
                    self.alpha.abs() * mag + old + if self.bias { bias_j.abs() } else { 0.0 };
                let (g, w) = (got[idx], want[idx]);
                assert!(
                    (g - w).abs() <= 1e-5 * scale + 1e-6,
                    "{} {self:?}: C[{i},{j}] = {g}, reference {w} (scale {scale})",
                    isa.name()
                );
            }
            // Padding between rows (ldc > n) must be left alone.
            for j in n..ldc.min(c_len.saturating_sub(i * ldc)) {
                let idx = i * ldc + j;
                assert!(
                    got[idx].to_bits() == c0[idx].to_bits(),
                    "{} {self:?}: padding C[{i},{j}] changed",
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn gemm_sizes_and_layouts() {
    // 16 and 29: rows cut into balanced panels (AVX-512: 8 + 8 and 10 + 10 + 9).
    let sizes = [0, 1, 3, 16, 17, 29, 31, 65];
    for isa in isas() {
        for layout in LAYOUTS {
            for &m in &sizes {
                for &n in &sizes {
                    for &k in &sizes {
                        Case {
                            layout,
                            ..Case::new(m, n, k)
                        }
                        .check(isa);
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_larger_than_one_block() {
    // Crosses KC (512 on the SIMD paths: k = 600 runs as two slices of 300), MC, NR and NC (1024
    // or 2048) boundaries, with edges that are not tile multiples, plus matrix-vector shapes big
    // enough to run in parallel.
    for isa in isas() {
        for layout in LAYOUTS {
            for parallel in [false, true] {
                Case {
                    layout,
                    parallel,
                    ..Case::new(127, 301, 600)
                }
                .check(isa);
            }
        }
        for (m, n, k) in [
            (1000, 77, 300),
            (33, 1030, 520),
            (40, 2100, 64),
            (1, 1000, 1000),
            (1000, 1, 600),
            (1, 3000, 1500),
            (2500, 1, 1500),
            (3, 3000, 700),
            (4, 1030, 520),
        ] {
            Case {
                parallel: true,
                beta: 0.5,
                bias: true,
                ..Case::new(m, n, k)
            }
            .check(isa);
        }
    }
}

#[test]
fn gemm_power_of_two_and_odd_leading_dimensions() {
    // Every layout with leading dimensions (k for row-major A and for Bᵀ, m or n for the others)
    // that are powers of two — whose rows share a few cache sets, the case a transposing pack
    // reads — and odd ones next to them; m and n are not tile multiples so edges run as well.
    for isa in isas() {
        for layout in LAYOUTS {
            for (m, n, k) in [
                (45, 70, 512),
                (45, 70, 521),
                (256, 37, 256),
                (129, 1024, 33),
            ] {
                for parallel in [false, true] {
                    Case {
                        layout,
                        parallel,
                        ..Case::new(m, n, k)
                    }
                    .check(isa);
                }
            }
        }
    }
}

/// `C`'s rows `rows` of the product `A[rows]·B` (+ β·C + bias, activation), computed with `B`
/// packed beforehand when `packed` is given.
#[allow(clippy::too_many_arguments)]
fn product_rows(
    isa: Isa,
    layout: Layout,
    a_full: &[f32],
    m_full: usize,
    b_data: &[f32],
    (k, n): (usize, usize),
    rows: std::ops::Range<usize>,
    parallel: bool,
    packed: Option<&PackedB>,
) -> Vec<f32> {
    // A's rows `rows` as a view of the same layout, made from a copy of just those rows.
    let m = rows.len();
    let (a_all, _) = layout.views(a_full, b_data, m_full, n, k);
    let mut a_data = vec![0.0; m * k];
    let (rs, cs) = {
        let (a, _) = layout.views(&a_data, b_data, m, n, k);
        (a.rs, a.cs)
    };
    for i in 0..m {
        for q in 0..k {
            a_data[i * rs + q * cs] = a_all.at(rows.start + i, q);
        }
    }
    let (a, b) = layout.views(&a_data, b_data, m, n, k);
    let bias: Vec<f32> = (0..n).map(|j| (j % 7) as f32 * 0.1 - 0.3).collect();
    let ep = Epilogue {
        bias: Some(&bias),
        activation: Activation::Gelu,
    };
    let mut c: Vec<f32> = (0..m * n)
        .map(|i| ((rows.start * n + i) % 11) as f32 * 0.25 - 1.0)
        .collect();
    match packed {
        Some(p) => gemm_packed(0.75, a, p, 0.5, &mut c, n, &ep, parallel),
        None => gemm_with_isa(isa, 0.75, a, b, 0.5, &mut c, n, &ep, parallel),
    }
    c
}

#[test]
fn a_row_does_not_depend_on_the_other_rows() {
    // A decoding step's row gives the same bits alone, among a few rows (beams, a small batch:
    // the few-rows path, thin and partial tiles), in full tiles and in row bands on several
    // threads, so a decoded sentence does not depend on what else is in the batch (nor a
    // recurrent step's row on its batch chunk). k = 700 takes two k-slices.
    let mut rng = Rng(5);
    for isa in isas() {
        for layout in LAYOUTS {
            for (n, k) in [(700, 300), (77, 700)] {
                let m_full = 300;
                let a = rng.vec(m_full * k);
                let b = rng.vec(k * n);
                let alone: Vec<Vec<f32>> = (0..m_full)
                    .map(|i| {
                        product_rows(isa, layout, &a, m_full, &b, (k, n), i..i + 1, false, None)
                    })
                    .collect();
                for (rows, parallel) in [
                    (0..2, false),
                    (5..9, true),
                    (10..23, false),
                    (30..44, true),
                    (60..76, false),
                    (3..20, true),
                    (50..79, true),
                    (0..300, true),
                    (0..300, false),
                ] {
                    let got = product_rows(
                        isa,
                        layout,
                        &a,
                        m_full,
                        &b,
                        (k, n),
                        rows.clone(),
                        parallel,
                        None,
                    );
                    for (r, row) in rows.clone().zip(got.chunks_exact(n)) {
                        assert!(
                            row.iter().zip(&alone[r]).all(|(x, y)| x.to_bits() == y.to_bits()),
                            "{} {layout:?} n={n} k={k}: row {r} of rows {rows:?} (parallel {parallel}) differs from the row alone",
                            isa.name()
                        );
                    }
                }
            }
        }
    }
}

#[test]
fn packed_b_gives_the_same_bits() {
    let isa = crate::cpu::features::active_isa();
    let mut rng = Rng(9);
    for layout in [Layout::Nn, Layout::Nt] {
        for (n, k) in [(2100, 300), (77, 1100), (1, 40)] {
            let m_full = 300;
            let a = rng.vec(m_full * k);
            let b = rng.vec(k * n);
            let (_, b_view) = layout.views(&a, &b, m_full, n, k);
            // The packed buffer comes from the pool: its stale NaNs must all be overwritten.
            crate::cpu::alloc::recycle(vec![f32::NAN; 2 * k * n.next_multiple_of(32)]);
            let packed = PackedB::new(b_view);
            for rows in [0..1, 0..3, 0..14, 3..40, 0..300] {
                for parallel in [false, true] {
                    let run = |p| {
                        product_rows(
                            isa,
                            layout,
                            &a,
                            m_full,
                            &b,
                            (k, n),
                            rows.clone(),
                            parallel,
                            p,
                        )
                    };
                    let (want, got) = (run(None), run(Some(&packed)));
                    assert!(
                        want.iter()
                            .zip(&got)
                            .all(|(x, y)| x.to_bits() == y.to_bits()),
                        "{layout:?} n={n} k={k} rows {rows:?} parallel {parallel}"
                    );
                }
            }
        }
    }
}

#[test]
fn partial_and_thin_tiles_match_the_micro_kernels_bit_for_bit() {
    fn check<K: driver::MicroKernel>(name: &str) {
        const MAX_PANELS: usize = 4;
        let mut rng = Rng(3);
        let ldc = MAX_PANELS * K::NR;
        for k in [1, 7, 300] {
            let a = rng.vec(k * K::MR);
            let b = rng.vec(MAX_PANELS * k * K::NR);
            for beta in [0.0, 0.7] {
                let c0 = rng.vec(K::MR * ldc);
                let run = |rows: usize, panels: usize| {
                    let mut c = c0.clone();
                    for q in 0..panels {
                        // SAFETY: the buffers hold the tile's operands; the caller checked the ISA.
                        unsafe {
                            let (b, c) = (b[q * k * K::NR..].as_ptr(), c[q * K::NR..].as_mut_ptr());
                            K::tile(rows, k, a.as_ptr(), b, c, ldc, -1.25, beta)
                        };
                    }
                    c
                };
                let full = run(K::MR, MAX_PANELS);
                for rows in 1..K::MR {
                    let panels = thin::panels_per_tile(rows);
                    let mut got = vec![run(rows, panels)];
                    if panels > 1 {
                        let mut c = c0.clone();
                        // SAFETY: as above, for `rows` rows and `panels` panels.
                        unsafe {
                            let (a, b, p) = (a.as_ptr(), b.as_ptr(), c.as_mut_ptr());
                            thin::tile_panels::<K>(rows, k, a, b, p, ldc, -1.25, beta)
                        };
                        got.push(c);
                    }
                    for (kind, got) in ["partial", "thin"].iter().zip(&got) {
                        for (i, (x, y)) in got.iter().zip(&full).enumerate() {
                            let inside = i / ldc < rows && i % ldc < panels * K::NR;
                            let want = if inside { y } else { &c0[i] };
                            assert_eq!(
                                x.to_bits(),
                                want.to_bits(),
                                "{name}: {kind} tile of {rows} rows x {panels} panels, k={k}, beta={beta}: element {i}"
                            );
                        }
                    }
                }
            }
        }
    }
    for isa in isas() {
        match isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => check::<kernel_avx512::Avx512>("avx512"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => check::<kernel_avx2::Avx2>("avx2"),
            _ => check::<kernel_generic::Generic>("generic"),
        }
    }
}

#[test]
fn gemm_alpha_beta_ldc() {
    for isa in isas() {
        for (alpha, beta) in [(1.0, 0.0), (2.5, 0.0), (1.0, 1.0), (-0.5, 2.0), (0.0, 0.75)] {
            for layout in [Layout::Nn, Layout::Tt] {
                for ldc_pad in [0, 5] {
                    for parallel in [false, true] {
                        let case = Case {
                            layout,
                            alpha,
                            beta,
                            ldc_pad,
                            parallel,
                            ..Case::new(45, 70, 300)
                        };
                        case.check(isa);
                    }
                }
            }
        }
    }
}

#[test]
fn gemm_epilogues() {
    let acts = [
        Activation::Identity,
        Activation::Relu,
        Activation::Gelu,
        Activation::GeluTanh,
        Activation::Silu,
    ];
    for isa in isas() {
        for act in acts {
            for bias in [false, true] {
                for beta in [0.0, 1.0] {
                    // k = 300 spans two k-slices: the epilogue must run once, after the last.
                    Case {
                        act,
                        bias,
                        beta,
                        ..Case::new(29, 50, 300)
                    }
                    .check(isa);
                    // k = 0: C ← act(β·C + bias).
                    Case {
                        act,
                        bias,
                        beta,
                        ..Case::new(5, 9, 0)
                    }
                    .check(isa);
                }
            }
        }
    }
}

#[test]
fn gemm_general_strides() {
    // Views contiguous along neither axis (every 2nd element), so packing takes its
    // general strided path, and the matrix-vector path must hand such views to it.
    for isa in isas() {
        for (m, n, k) in [(37, 45, 70), (1, 45, 70), (37, 1, 70)] {
            let mut rng = Rng(11);
            let a_data = rng.vec(m * k * 2);
            let b_data = rng.vec(k * n * 2);
            let a = MatRef {
                data: &a_data,
                rows: m,
                cols: k,
                rs: 2 * k,
                cs: 2,
            };
            let b = MatRef {
                data: &b_data,
                rows: k,
                cols: n,
                rs: 2,
                cs: 2 * k,
            };
            let mut got = vec![0.0; m * n];
            let mut want = vec![0.0; m * n];
            let ep = Epilogue::default();
            gemm_with_isa(isa, 1.0, a, b, 0.0, &mut got, n, &ep, true);
            gemm_reference(1.0, a, b, 0.0, &mut want, n, &ep);
            for (g, w) in got.iter().zip(&want) {
                // Inputs lie in [-1, 1), so Σ|a·b| ≤ k bounds the tolerance scale.
                assert!(
                    (g - w).abs() <= 1e-5 * k as f32,
                    "{}: {m}x{n}x{k}: {g} vs {w}",
                    isa.name()
                );
            }
        }
    }
}

#[test]
fn gemm_big_parallel_matches_serial() {
    // 2-thread splitting of both row blocks and column panels must give bit-identical results;
    // the last shape spans several column blocks and k-slices of a `B` packed once for all row
    // bands, with a ragged last block.
    for isa in isas() {
        for (m, n, k) in [(1100, 600, 300), (20, 3000, 200), (300, 2117, 1100)] {
            let mut rng = Rng(7);
            let a = rng.vec(m * k);
            let b = rng.vec(k * n);
            let (a, b) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
            let mut serial = vec![0.0; m * n];
            let mut par = vec![0.0; m * n];
            let ep = Epilogue::default();
            gemm_with_isa(isa, 1.0, a, b, 0.0, &mut serial, n, &ep, false);
            gemm_with_isa(isa, 1.0, a, b, 0.0, &mut par, n, &ep, true);
            assert!(
                serial == par,
                "{}: parallel result differs from serial for {m}x{n}x{k}",
                isa.name()
            );
        }
    }
}

#[test]
fn gemm_nested_in_parallel_loop() {
    // Callers run gemm inside their own rayon loops (per batch or attention block), with either
    // flag. Work stealing may then start one gemm on a thread that is inside another one; the
    // thread-local packing buffers must cope, and every result must match a lone call.
    use rayon::prelude::*;
    let (m, n, k) = (300, 200, 600);
    let mut rng = Rng(3);
    let (a, b) = (rng.vec(m * k), rng.vec(k * n));
    let (av, bv) = (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n));
    let ep = Epilogue::default();
    let mut want = vec![0.0; m * n];
    gemm(1.0, av, bv, 0.0, &mut want, n, &ep, false);
    for parallel in [false, true] {
        let outs: Vec<Vec<f32>> = (0..8)
            .into_par_iter()
            .map(|_| {
                let mut c = vec![0.0; m * n];
                gemm(1.0, av, bv, 0.0, &mut c, n, &ep, parallel);
                c
            })
            .collect();
        assert!(
            outs.iter().all(|c| *c == want),
            "nested gemm (parallel={parallel}) differs"
        );
    }
}

#[test]
fn gemm_empty_k_ignores_strides() {
    // k == 0 views hold no elements, so their strides are arbitrary and their buffers may be
    // empty (these strides would send m == 1 / n == 1 down the dot-product path): only C ← act(β·C + bias) may happen, on every path (including matrix–vector).
    for isa in isas() {
        for (m, n) in [(1, 5), (4, 1), (3, 6)] {
            let a = MatRef {
                data: &[],
                rows: m,
                cols: 0,
                rs: 9,
                cs: 1,
            };
            let b = MatRef {
                data: &[],
                rows: 0,
                cols: n,
                rs: 1,
                cs: 5,
            };
            let mut c = vec![2.0; m * n];
            let bias = vec![1.0; n];
            let ep = Epilogue {
                bias: Some(&bias),
                activation: Activation::Relu,
            };
            gemm_with_isa(isa, 1.0, a, b, -1.0, &mut c, n, &ep, true);
            assert!(
                c.iter().all(|&v| v == 0.0),
                "{}: {m}x{n}x0 gave {c:?}",
                isa.name()
            );
        }
    }
}

#[test]
#[should_panic(expected = "does not fit")]
fn gemm_rejects_short_c() {
    let a = vec![0.0; 6];
    let mut c = vec![0.0; 3];
    gemm(
        1.0,
        MatRef::row_major(&a, 2, 3),
        MatRef::row_major(&a, 3, 2),
        0.0,
        &mut c,
        2,
        &Epilogue::default(),
        false,
    );
}

#[test]
#[should_panic(expected = "exceeds its buffer")]
fn gemm_rejects_short_view() {
    let a = vec![0.0; 5];
    let mut c = vec![0.0; 4];
    gemm(
        1.0,
        MatRef::row_major(&a, 2, 3),
        MatRef::row_major(&a, 3, 2),
        0.0,
        &mut c,
        2,
        &Epilogue::default(),
        false,
    );
}

/// Throughput harness: `TFM_GEMM_SIZES="1024,2048x512x2048:nt" cargo test --release gemm_timing
/// -- --ignored --nocapture` (sizes `N` or `MxKxN`, optional layout `:nn|:nt|:tn|:tt`;
/// `TFM_GEMM_ISA=avx512` runs one path). Prints the best GFLOP/s of several runs per ISA, on 1
/// thread and on the rayon pool.
#[test]
#[ignore]
fn gemm_timing() {
    let sizes = std::env::var("TFM_GEMM_SIZES").unwrap_or_else(|_| "256,512,1024,2048".into());
    let isa_filter = std::env::var("TFM_GEMM_ISA").ok();
    for spec in sizes.split(',') {
        let (spec, layout) = spec.split_once(':').unwrap_or((spec, "nn"));
        let layout = match layout {
            "nn" => Layout::Nn,
            "nt" => Layout::Nt,
            "tn" => Layout::Tn,
            "tt" => Layout::Tt,
            other => panic!("unknown layout {other}"),
        };
        let dims: Vec<usize> = spec
            .split('x')
            .map(|d| d.trim().parse().expect("size"))
            .collect();
        let (m, k, n) = match dims[..] {
            [s] => (s, s, s),
            [m, k, n] => (m, k, n),
            _ => panic!("sizes are N or MxKxN"),
        };
        let mut rng = Rng(1);
        let a = rng.vec(m * k);
        let b = rng.vec(k * n);
        let (a, b) = layout.views(&a, &b, m, n, k);
        let mut c = vec![0.0; m * n];
        for isa in isas() {
            if isa_filter.as_deref().is_some_and(|f| f != isa.name()) {
                continue;
            }
            for parallel in [false, true] {
                let flops = 2.0 * (m * n * k) as f64;
                let reps = ((2e10 / flops) as usize).clamp(3, 200);
                let mut best = f64::INFINITY;
                let mut best_cpu = f64::INFINITY;
                for _ in 0..reps {
                    let t = std::time::Instant::now();
                    let cpu0 = thread_cpu_seconds();
                    gemm_with_isa(
                        isa,
                        1.0,
                        a,
                        b,
                        0.0,
                        &mut c,
                        n,
                        &Epilogue::default(),
                        parallel,
                    );
                    best = best.min(t.elapsed().as_secs_f64());
                    best_cpu = best_cpu.min(thread_cpu_seconds() - cpu0);
                }
                let threads = if parallel {
                    rayon::current_num_threads()
                } else {
                    1
                };
                // On one thread, on-CPU time discounts preemption by other processes.
                let cpu = if parallel {
                    String::new()
                } else {
                    format!(" ({:.1} on-CPU)", flops / best_cpu / 1e9)
                };
                println!(
                    "{} {m}x{k}x{n}:{layout:?} threads={threads}: {:.1} GFLOP/s{cpu}",
                    isa.name(),
                    flops / best / 1e9
                );
            }
        }
    }
}

/// This thread's CPU time, from `clock_gettime(CLOCK_THREAD_CPUTIME_ID)` (0 off Linux).
fn thread_cpu_seconds() -> f64 {
    #[cfg(target_os = "linux")]
    {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        extern "C" {
            fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
        }
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: `ts` is a valid timespec (64-bit Linux layout) for the call to fill.
        if unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0 {
            return ts.sec as f64 + ts.nsec as f64 * 1e-9;
        }
    }
    0.0
}
