//! SGEMM throughput: `cargo bench --bench gemm`. Throughput is reported as elements = FLOPs
//! (`2·m·n·k` per call), so criterion's "Kelem/s"/"Gelem/s" read directly as FLOP/s.
//!
//! Each case runs on one thread (`parallel = false`) and on the rayon pool (`parallel = true`,
//! every core). The instruction set is the detected one; force another with `TFM_RS_ISA=avx2`.
//! Filter as usual, e.g. `cargo bench --bench gemm -- 'square/t1'`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use std::time::Duration;
use tfm_rs::cpu::gemm::{gemm_packed, PackedB};
use tfm_rs::cpu::{gemm, Epilogue, MatRef};

/// Deterministic values in [-1, 1) without a dev-dependency on `rand`.
fn fill(len: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// How `A` (m×k) and `B` (k×n) are stored; the transposed ones are free `MatRef::t` views.
#[derive(Clone, Copy)]
enum Layout {
    /// `A·B`: activations × weights stored `in×out`.
    Nn,
    /// `A·Bᵀ`: `nn.Linear` weights stored `out×in`, or `Q·Kᵀ`.
    Nt,
    /// `Aᵀ·B`: weight gradients, `Xᵀ·dY`.
    Tn,
}

impl Layout {
    fn name(self) -> &'static str {
        match self {
            Layout::Nn => "nn",
            Layout::Nt => "nt",
            Layout::Tn => "tn",
        }
    }
}

fn bench_case(c: &mut Criterion, group: &str, m: usize, k: usize, n: usize, layout: Layout) {
    let a = fill(m * k, 1);
    let b = fill(k * n, 2);
    let (av, bv) = match layout {
        Layout::Nn => (MatRef::row_major(&a, m, k), MatRef::row_major(&b, k, n)),
        Layout::Nt => (MatRef::row_major(&a, m, k), MatRef::row_major(&b, n, k).t()),
        Layout::Tn => (MatRef::row_major(&a, k, m).t(), MatRef::row_major(&b, k, n)),
    };
    let mut out = vec![0.0f32; m * n];
    let ep = Epilogue::default();
    let mut g = c.benchmark_group(group);
    g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
    // Large products take ~0.1 s per call: 10 samples keep the whole suite to a few minutes.
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    for (tag, parallel) in [("t1", false), ("pool", true)] {
        let id = BenchmarkId::new(format!("{}/{tag}", layout.name()), format!("{m}x{k}x{n}"));
        g.bench_function(id, |bench| {
            bench.iter(|| {
                gemm(
                    1.0,
                    black_box(av),
                    black_box(bv),
                    0.0,
                    &mut out,
                    n,
                    &ep,
                    parallel,
                )
            })
        });
    }
    g.finish();
}

fn square(c: &mut Criterion) {
    for s in [256, 512, 1024, 2048] {
        bench_case(c, "square", s, s, s, Layout::Nn);
    }
}

/// A Transformer-base feed-forward projection: 2048 tokens, d_model 512 → d_ff 2048, in the
/// three layouts training uses (forward `X·W` / `X·Wᵀ`, weight gradient `Xᵀ·dY`).
fn transformer(c: &mut Criterion) {
    for layout in [Layout::Nn, Layout::Nt, Layout::Tn] {
        bench_case(c, "transformer", 2048, 512, 2048, layout);
    }
}

/// Products of a few rows against a right-hand side packed once, one thread: a decoding step
/// for a few beams or a small batch, and a recurrent step of a batch share (16 rows, H = 256,
/// against the four gates' `W_hhᵀ`). Row counts that are not multiples of the kernel's `MR`
/// exercise its partial tiles.
fn few_rows(c: &mut Criterion) {
    let (k, n) = (256, 1024);
    let w = fill(n * k, 2);
    let packed = PackedB::new(MatRef::row_major(&w, n, k).t());
    let ep = Epilogue::default();
    let mut g = c.benchmark_group("few_rows");
    for m in [1, 4, 8, 16, 24] {
        let a = fill(m * k, 1);
        let mut out = vec![0.0f32; m * n];
        g.throughput(Throughput::Elements(2 * (m * n * k) as u64));
        g.bench_function(
            BenchmarkId::new("packed/t1", format!("{m}x{k}x{n}")),
            |bench| {
                bench.iter(|| {
                    let av = black_box(MatRef::row_major(&a, m, k));
                    gemm_packed(1.0, av, &packed, 0.0, &mut out, n, &ep, false)
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, square, transformer, few_rows);
criterion_main!(benches);
