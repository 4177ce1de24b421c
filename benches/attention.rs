//! Fused attention on the `sdpa` workload of `../shared/bench/reference_torch.py`: B=4, H=8,
//! head dim 64, T in (128, 512, 1024), causal and not; forward alone and forward + backward
//! (the backward seeded with ones, as `out.sum().backward()` does). Runs in the tfm_rs pool
//! (`TFM_RS_NUM_THREADS`, default: all cores).
//!
//! `cargo bench --bench attention`; filter with e.g. `-- T512`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use std::hint::black_box;
use tfm_rs::autograd::{backward, Var};
use tfm_rs::cpu::pool;
use tfm_rs::ops::attention::scaled_dot_product_attention;
use tfm_rs::tensor::Tensor;

fn input(shape: &[usize], seed: u64) -> Var {
    let n = shape.iter().product::<usize>() as u64;
    let data = (0..n)
        .map(|i| 2.0 * tfm_rs::random::uniform(seed, i) - 1.0)
        .collect();
    Var::leaf(Tensor::new(data, shape).unwrap(), true)
}

fn sdpa(c: &mut Criterion) {
    let mut group = c.benchmark_group("sdpa");
    group.sample_size(10);
    for t in [128, 512, 1024] {
        for causal in [false, true] {
            let shape = [4, 8, t, 64];
            let (q, k, v) = (input(&shape, 1), input(&shape, 2), input(&shape, 3));
            let ones = Tensor::full(&shape, 1.0);
            let id = format!("T{t}{}", if causal { "_causal" } else { "" });
            group.bench_function(BenchmarkId::new("fwd", &id), |b| {
                b.iter(|| {
                    pool::install(|| {
                        scaled_dot_product_attention(&q, &k, &v, None, 0.0, causal, None).unwrap()
                    })
                    .unwrap()
                })
            });
            group.bench_function(BenchmarkId::new("fwd_bwd", &id), |b| {
                b.iter(|| {
                    pool::install(|| {
                        let out = scaled_dot_product_attention(&q, &k, &v, None, 0.0, causal, None)
                            .unwrap();
                        backward(&out, Some(ones.clone()), false).unwrap();
                    })
                    .unwrap();
                    black_box(q.grad());
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, sdpa);
criterion_main!(benches);
