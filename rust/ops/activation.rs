//! GELU (erf and tanh forms) and ReLU.

/// `x · Φ(x)` with the exact normal CDF.
#[inline]
pub fn gelu_erf(x: f32) -> f32 {
    0.5 * x * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// `0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³)))`.
#[inline]
pub fn gelu_tanh(x: f32) -> f32 {
    const K: f32 = 0.797_884_6; // √(2/π)
    0.5 * x * (1.0 + (K * (x + 0.044715 * x * x * x)).tanh())
}

/// The error function, to f32 precision (|error| < 2e-7).
#[inline]
pub fn erf(x: f32) -> f32 {
    libm::erff(x)
}
