//! The row-wise ops on the shapes a Transformer training step gives them, each forward +
//! backward through autograd (the backward seeded with ones, as `out.sum().backward()` does):
//! softmax `(4096, 1024)`, add_layer_norm and rms_norm `(3072, 256)` and `(4096, 1024)`, cross entropy
//! (label smoothing 0.1, mean) on `(1536, 8000)` and `(4096, 32000)` logits, dropout (p = 0.1)
//! on 393 216 and 4 194 304 elements, GELU (erf) on `(3072, 1024)`. Runs in the tfm_rs pool
//! (`TFM_RS_NUM_THREADS`, default: all cores; `TFM_RS_ISA` picks the instruction set).
//!
//! `cargo bench --bench ops`; filter with e.g. `-- cross_entropy`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use tfm_rs::autograd::{backward, Var};
use tfm_rs::cpu::pool;
use tfm_rs::ops::{activation, cross_entropy, dropout, layer_norm, softmax};
use tfm_rs::tensor::Tensor;

fn input(shape: &[usize], seed: u64, scale: f32) -> Var {
    let n = shape.iter().product::<usize>() as u64;
    let data = (0..n)
        .map(|i| scale * (2.0 * tfm_rs::random::uniform(seed, i) - 1.0))
        .collect();
    Var::leaf(Tensor::new(data, shape).unwrap(), true)
}

/// Times `op` forward alone and forward + backward (seeded with ones) on `x`.
fn fwd_and_bwd(c: &mut Criterion, group: &str, id: &str, x: &Var, op: impl Fn(&Var) -> Var + Sync) {
    let mut g = c.benchmark_group(group);
    g.sample_size(10);
    g.bench_function(BenchmarkId::new("fwd", id), |b| {
        b.iter(|| pool::install(|| black_box(op(x))).unwrap())
    });
    g.bench_function(BenchmarkId::new("fwd_bwd", id), |b| {
        b.iter(|| {
            pool::install(|| {
                let y = op(x);
                let ones = Tensor::full(&y.shape(), 1.0);
                backward(&y, Some(ones), false).unwrap();
            })
            .unwrap();
            // Dropped each time: accumulating into the last call's gradient would add a pass.
            black_box(x.grad());
            x.set_grad(None).unwrap();
        })
    });
    g.finish();
}

fn ops(c: &mut Criterion) {
    let x = input(&[4096, 1024], 1, 4.0);
    fwd_and_bwd(c, "softmax", "4096x1024", &x, |x| {
        softmax::softmax(x, None).unwrap()
    });

    for (rows, d) in [(3072, 256), (4096, 1024)] {
        let (x, r) = (input(&[rows, d], 2, 1.0), input(&[rows, d], 3, 1.0));
        let (w, bias) = (input(&[d], 4, 1.0), input(&[d], 5, 1.0));
        fwd_and_bwd(c, "add_layer_norm", &format!("{rows}x{d}"), &x, |x| {
            layer_norm::add_layer_norm(x, &r, Some(&w), Some(&bias), 1e-5).unwrap()
        });
        fwd_and_bwd(c, "rms_norm", &format!("{rows}x{d}"), &x, |x| {
            layer_norm::rms_norm(x, Some(&w), 1e-5).unwrap()
        });
    }

    for (n, classes) in [(1536, 8000), (4096, 32000)] {
        let x = input(&[n, classes], 6, 6.0);
        let target: Vec<i64> = (0..n as u64)
            .map(|i| (tfm_rs::random::bits(7, i) as usize % classes) as i64)
            .collect();
        fwd_and_bwd(c, "cross_entropy", &format!("{n}x{classes}"), &x, |x| {
            cross_entropy::cross_entropy(x, &target, -100, 0.1, cross_entropy::Reduction::Mean)
                .unwrap()
        });
    }

    for n in [393_216, 4_194_304] {
        let x = input(&[n], 8, 1.0);
        fwd_and_bwd(c, "dropout", &n.to_string(), &x, |x| {
            dropout::dropout(x, 0.1, true).unwrap()
        });
    }

    let x = input(&[3072, 1024], 9, 3.0);
    fwd_and_bwd(c, "gelu", "3072x1024", &x, |x| {
        activation::gelu(x, false).unwrap()
    });
}

criterion_group!(benches, ops);
criterion_main!(benches);
