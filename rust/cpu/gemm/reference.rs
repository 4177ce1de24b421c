//! The naive triple loop, accumulated in f64: the oracle every fast GEMM path is tested against.

use super::{Activation, Epilogue, MatRef};
use crate::cpu::math::{gelu_erf, gelu_tanh, silu};

pub fn gemm_reference(
    alpha: f32,
    a: MatRef,
    b: MatRef,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
    epilogue: &Epilogue,
) {
    assert_eq!(a.cols, b.rows, "gemm: inner dimensions differ");
    let (m, n, k) = (a.rows, b.cols, a.cols);
    for i in 0..m {
        for j in 0..n {
            let mut acc = 0.0f64;
            for p in 0..k {
                acc += a.at(i, p) as f64 * b.at(p, j) as f64;
            }
            let old = if beta == 0.0 {
                0.0
            } else {
                beta as f64 * c[i * ldc + j] as f64
            };
            let mut v = (alpha as f64 * acc + old) as f32;
            if let Some(bias) = epilogue.bias {
                v += bias[j];
            }
            c[i * ldc + j] = apply_activation(epilogue.activation, v);
        }
    }
}

pub fn apply_activation(act: Activation, v: f32) -> f32 {
    match act {
        Activation::Identity => v,
        Activation::Relu => v.max(0.0),
        Activation::Gelu => gelu_erf(v),
        Activation::GeluTanh => gelu_tanh(v),
        Activation::Silu => silu(v),
    }
}
