//! Test helpers shared by the op and optimizer tests: deterministic data, tolerance checks,
//! finite differences, and running a backward with a given output gradient.

use crate::autograd::{backward, Var};
use crate::tensor::Tensor;

/// `n` values uniform in `[lo, hi)`, a pure function of `seed` (tests stay reproducible).
pub fn rand_vec(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n as u64)
        .map(|i| lo + (hi - lo) * crate::random::uniform(seed, i))
        .collect()
}

pub fn to_f64(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Asserts `|got − want| ≤ atol + rtol·|want|` elementwise; equal infinities pass.
pub fn assert_close(what: &str, got: &[f32], want: &[f64], rtol: f64, atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let g = g as f64;
        let ok = g == w || (g - w).abs() <= atol + rtol * w.abs();
        assert!(ok, "{what}: element {i}: got {g}, want {w}");
    }
}

/// Central differences `(f(x + h·e_i) − f(x − h·e_i)) / 2h` of an f64 scalar function.
pub fn finite_diff(x: &[f64], h: f64, f: impl Fn(&[f64]) -> f64) -> Vec<f64> {
    let mut p = x.to_vec();
    (0..x.len())
        .map(|i| {
            p[i] = x[i] + h;
            let up = f(&p);
            p[i] = x[i] - h;
            let down = f(&p);
            p[i] = x[i];
            (up - down) / (2.0 * h)
        })
        .collect()
}

/// `Σ w ∘ y`: the scalar whose gradient a backward seeded with `w` computes.
pub fn dot(w: &[f64], y: &[f64]) -> f64 {
    w.iter().zip(y).map(|(a, b)| a * b).sum()
}

pub fn leaf(data: Vec<f32>, shape: &[usize]) -> Var {
    Var::leaf(Tensor::new(data, shape).unwrap(), true)
}

/// Runs backward from `y` seeded with `w` (of `y`'s shape) and returns each leaf's gradient.
pub fn grads(y: &Var, w: &[f32], leaves: &[&Var]) -> Vec<Vec<f32>> {
    backward(y, Some(Tensor::new(w.to_vec(), &y.shape()).unwrap()), false).unwrap();
    leaves
        .iter()
        .map(|v| v.grad().expect("leaf got a gradient").data().to_vec())
        .collect()
}

/// Runs `f` in a pool of `threads` threads (to check results do not depend on the count).
pub fn with_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}
