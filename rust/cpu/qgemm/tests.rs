use super::*;

/// A small deterministic generator (xorshift), so that failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn f32(&mut self) -> f32 {
        (self.below(1 << 24) as f32 / (1 << 24) as f32) * 2.0 - 1.0
    }
}

/// Activations with the given values (row-major `m×k`), zero points and scales, laid out as
/// `quantize_rows` lays them out.
fn rows_of(values: &[u8], m: usize, k: usize, zeros: Vec<i32>, scales: Vec<f32>) -> QuantizedRows {
    let lda = row_stride(k);
    let mut data = vec![0u8; m * lda];
    for i in 0..m {
        data[i * lda..][..k].copy_from_slice(&values[i * k..][..k]);
    }
    QuantizedRows {
        data,
        rows: m,
        k,
        lda,
        scales,
        zeros,
    }
}

/// `Σ_q a·w − z_i·Σ_q w` in i64 (then i32: every test value fits).
fn reference(a: &QuantizedRows, w: &QuantizedMatrix) -> Vec<i32> {
    let (m, n, k) = (a.rows, w.rows, a.k);
    let mut c = vec![0i32; m * n];
    for i in 0..m {
        for j in 0..n {
            let (mut dot, mut sum) = (0i64, 0i64);
            for q in 0..k {
                let wq = w.data[j * k + q] as i64;
                dot += a.data[i * a.lda + q] as i64 * wq;
                sum += wq;
            }
            let v = dot - a.zeros[i] as i64 * sum;
            c[i * n + j] = i32::try_from(v).expect("test values fit in i32");
        }
    }
    c
}

/// The f32 store of every path, from the reference integers.
fn reference_f32(a: &QuantizedRows, w: &QuantizedMatrix, bias: Option<&[f32]>) -> Vec<f32> {
    let n = w.rows;
    reference(a, w)
        .iter()
        .enumerate()
        .map(|(at, &v)| {
            let (i, j) = (at / n, at % n);
            let y = v as f32 * (a.scales[i] * w.scales[j]);
            bias.map_or(y, |b| y + b[j])
        })
        .collect()
}

fn supported() -> Vec<QIsa> {
    let all: Vec<QIsa> = QIsa::ALL.into_iter().filter(|i| i.is_supported()).collect();
    eprintln!(
        "qgemm paths tested: {:?}",
        all.iter().map(|i| i.name()).collect::<Vec<_>>()
    );
    all
}

enum Values {
    Random,
    /// Activations 255 and weights −128 (the largest product of each sign pairing), zero
    /// points at either end.
    Extreme,
}

fn case(
    rng: &mut Rng,
    m: usize,
    n: usize,
    k: usize,
    values: Values,
) -> (QuantizedRows, QuantizedMatrix) {
    let (a, w, zeros): (Vec<u8>, Vec<i8>, Vec<i32>) = match values {
        Values::Random => (
            (0..m * k).map(|_| rng.below(256) as u8).collect(),
            (0..n * k)
                .map(|_| (rng.below(256) as i32 - 128) as i8)
                .collect(),
            (0..m).map(|_| rng.below(256) as i32).collect(),
        ),
        Values::Extreme => (
            (0..m * k)
                .map(|i| if i % 3 == 0 { 0 } else { 255 })
                .collect(),
            (0..n * k)
                .map(|i| if i % 5 == 0 { 127 } else { -128 })
                .collect(),
            (0..m).map(|i| if i % 2 == 0 { 0 } else { 255 }).collect(),
        ),
    };
    let scales = (0..m).map(|_| 0.01 + rng.f32().abs()).collect();
    let w_scales = (0..n).map(|_| 0.001 + rng.f32().abs() * 0.1).collect();
    (
        rows_of(&a, m, k, zeros, scales),
        QuantizedMatrix::from_parts(w, n, k, w_scales).unwrap(),
    )
}

// Row counts cover every AVX2 tile height (1..=6) and a second block of rows (96 + 4).
const SIZES: [usize; 7] = [1, 2, 3, 17, 33, 100, 127];
const DEPTHS: [usize; 10] = [1, 2, 3, 4, 5, 17, 63, 127, 258, 512];

#[test]
fn every_path_matches_the_integer_reference_bit_for_bit() {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for isa in supported() {
        for &m in &SIZES {
            for &n in &SIZES {
                for &k in &DEPTHS {
                    for values in [Values::Random, Values::Extreme] {
                        let (a, w) = case(&mut rng, m, n, k, values);
                        let b = PackedQB::with_isa(isa, &w, 0..n);
                        let mut c = vec![7i32; m * n];
                        qgemm(&a, &b, Output::I32(&mut c), true).unwrap();
                        assert_eq!(c, reference(&a, &w), "{} m={m} n={n} k={k}", isa.name());
                    }
                }
            }
        }
    }
}

#[test]
fn every_path_stores_the_same_floats_as_the_portable_one() {
    let mut rng = Rng(12345);
    for isa in supported() {
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 17, 5),
            (17, 127, 63),
            (127, 33, 258),
            (13, 40, 7),
        ] {
            let (a, w) = case(&mut rng, m, n, k, Values::Random);
            let bias: Vec<f32> = (0..n).map(|_| rng.f32()).collect();
            for bias in [None, Some(bias.as_slice())] {
                let run = |isa: QIsa| {
                    let b = PackedQB::with_isa(isa, &w, 0..n);
                    let mut c = vec![f32::NAN; m * n];
                    qgemm(&a, &b, Output::F32 { c: &mut c, bias }, true).unwrap();
                    c
                };
                let got = run(isa);
                let want = reference_f32(&a, &w, bias);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert_eq!(bits(&got), bits(&want), "{} m={m} n={n} k={k}", isa.name());
                assert_eq!(bits(&got), bits(&run(QIsa::Generic)), "{}", isa.name());
            }
        }
    }
}

#[test]
fn large_sums_need_no_saturation() {
    // 255·(−128) summed over k = 4097 is −133_730_560: far beyond i16, and beyond what
    // `vpmaddubsw`'s saturating pairs could hold, well inside i32.
    let (m, n, k) = (3, 17, 4097);
    let a = rows_of(&vec![255u8; m * k], m, k, vec![0; m], vec![1.0; m]);
    let w = QuantizedMatrix::from_parts(vec![-128i8; n * k], n, k, vec![1.0; n]).unwrap();
    for isa in supported() {
        let b = PackedQB::with_isa(isa, &w, 0..n);
        let mut c = vec![0i32; m * n];
        qgemm(&a, &b, Output::I32(&mut c), false).unwrap();
        assert!(
            c.iter().all(|&v| v == -255 * 128 * k as i32),
            "{}",
            isa.name()
        );
    }
}

#[test]
fn a_row_range_packs_those_output_channels() {
    let mut rng = Rng(777);
    let (a, w) = case(&mut rng, 5, 48, 19, Values::Random);
    let full = reference(&a, &w);
    for isa in supported() {
        let b = PackedQB::with_isa(isa, &w, 16..37);
        let mut c = vec![0i32; 5 * 21];
        qgemm(&a, &b, Output::I32(&mut c), false).unwrap();
        for i in 0..5 {
            assert_eq!(
                &c[i * 21..][..21],
                &full[i * 48 + 16..][..21],
                "{}",
                isa.name()
            );
        }
    }
}

#[test]
fn rows_do_not_depend_on_the_batch_or_the_threads() {
    let mut rng = Rng(4242);
    let (m, n, k) = (200, 300, 70);
    let x: Vec<f32> = (0..m * k).map(|_| rng.f32() * 3.0).collect();
    let w: Vec<f32> = (0..n * k).map(|_| rng.f32()).collect();
    let w = QuantizedMatrix::quantize(&w, n, k).unwrap();
    let b = PackedQB::new(&w, 0..n);
    let all = quantized_matmul(&x, m, &b, None, true).unwrap();
    let serial = quantized_matmul(&x, m, &b, None, false).unwrap();
    assert_eq!(all, serial);
    for i in [0, 1, 99, 199] {
        let one = quantized_matmul(&x[i * k..][..k], 1, &b, None, true).unwrap();
        assert_eq!(one, all[i * n..][..n]);
    }
}

#[test]
fn quantization_round_trips_within_half_a_step() {
    let mut rng = Rng(99);
    for &k in &[1usize, 3, 17, 127] {
        let x: Vec<f32> = (0..3 * k).map(|_| rng.f32() * 5.0 + 1.0).collect();
        let q = quantize_rows(&x, 3, k).unwrap();
        for i in 0..3 {
            let (s, z) = (q.scales[i], q.zeros[i]);
            for j in 0..k {
                let back = s * (q.data[i * q.lda + j] as i32 - z) as f32;
                assert!((back - x[i * k + j]).abs() <= 0.5001 * s + 1e-6, "k={k}");
            }
            // Zero is representable exactly.
            assert!((0..=255).contains(&z));
        }
        let w = QuantizedMatrix::quantize(&x, 3, k).unwrap();
        let back = w.dequantize();
        for (j, (b, v)) in back.iter().zip(&x).enumerate() {
            assert!((b - v).abs() <= 0.5001 * w.scales[j / k], "k={k}");
        }
    }
    let zero = quantize_rows(&[0.0; 4], 1, 4).unwrap();
    assert_eq!((zero.scales[0], zero.zeros[0]), (1.0, 0));
}

#[test]
fn bad_input_is_an_error() {
    assert!(quantize_rows(&[1.0, f32::NAN], 1, 2).is_err());
    assert!(quantize_rows(&[1.0; 5], 2, 3).is_err());
    assert!(QuantizedMatrix::quantize(&[f32::INFINITY], 1, 1).is_err());
    assert!(QuantizedMatrix::from_parts(vec![0; 6], 2, 3, vec![1.0]).is_err());
    assert!(QuantizedMatrix::from_parts(vec![0; 6], 2, 3, vec![1.0, 0.0]).is_err());
    let w = QuantizedMatrix::from_parts(vec![1; 6], 2, 3, vec![1.0; 2]).unwrap();
    let b = PackedQB::new(&w, 0..2);
    assert!(quantized_matmul(&[1.0; 4], 1, &b, None, false).is_err());
    assert!(quantized_matmul(&[1.0; 3], 1, &b, Some(&[1.0; 3]), false).is_err());
}

#[test]
fn an_empty_depth_gives_the_bias() {
    let w = QuantizedMatrix::quantize(&[], 3, 0).unwrap();
    for isa in supported() {
        let b = PackedQB::with_isa(isa, &w, 0..3);
        let y = quantized_matmul(&[], 2, &b, Some(&[1.0, 2.0, 3.0]), false).unwrap();
        assert_eq!(y, [1.0, 2.0, 3.0, 1.0, 2.0, 3.0], "{}", isa.name());
    }
}

#[cfg(target_arch = "x86_64")]
#[test]
fn vectorized_activation_quantization_equals_the_portable_one() {
    if !QIsa::Vnni.is_supported() {
        eprintln!("skipped: no AVX-512 VNNI on this CPU");
        return;
    }
    let mut rng = Rng(31337);
    for &k in &[1usize, 3, 15, 16, 17, 127, 512] {
        for spread in [1e-30f32, 1e-3, 1.0, 1e6] {
            let mut x: Vec<f32> = (0..k).map(|_| rng.f32() * spread).collect();
            x[k / 2] = 0.0;
            if k > 2 {
                x[1] = x[1].abs() + 0.5 * spread; // ties and the ends of the range
                x[2] = -x[1];
            }
            let (mut a, mut b) = (vec![0u8; k], vec![0u8; k]);
            let pa = quantize_row_portable(&x, &mut a);
            // SAFETY: VNNI implies AVX-512 F and BW (checked above).
            let pb = unsafe { kernel_vnni::quantize_row(&x, &mut b) };
            assert_eq!(
                (pa.0.to_bits(), pa.1),
                (pb.0.to_bits(), pb.1),
                "k={k} spread={spread}"
            );
            assert_eq!(a, b, "k={k} spread={spread}");
        }
    }
}
