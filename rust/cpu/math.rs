//! Scalar math that the kernels inline into their SIMD loops: a branch-free `exp`, the normal
//! CDF and the GELU forms with their derivatives. Below the ops and the GEMM epilogue, which
//! both apply them.

/// ln of the smallest normal f32.
const LO: f32 = -87.336_55;

/// `eˣ` to about 1 ulp (Cephes' `expf` polynomial), in branch-free arithmetic that compiles to
/// SIMD code in the row loops, unlike the libm call behind `f32::exp`: softmax and cross
/// entropy over 32k-wide vocabularies spend most of their time here. Results below f32's
/// normal range flush to 0 (so −inf gives 0); NaN gives NaN.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const HI: f32 = 88.722_84; // ln of the largest f32
    let (er, n) = exp_reduced(x.clamp(LO, HI));
    // 2ⁿ in two factors: n reaches 128 at the top of the range, beyond one factor's exponent.
    let half = n >> 1;
    let y = er * pow2(half) * pow2(n - half);
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        y
    }
}

/// `eˣ = er·2ⁿ`: the reduction `x = n·ln 2 + r`, |r| ≤ ln 2 / 2, and `er = eʳ` by the
/// polynomial, for `x` within `exp_fast`'s range.
#[inline(always)]
fn exp_reduced(x: f32) -> (f32, i32) {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // Adding 1.5·2²³ rounds to an integer, which then sits in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    // ln 2 split in two so that n·LN2_HI is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let t = x * LOG2E + ROUND;
    let n = t.to_bits() as i32 - ROUND.to_bits() as i32;
    let nf = t - ROUND;
    let r = nf.mul_add(-LN2_LO, nf.mul_add(-LN2_HI, x));
    // Fused multiply-adds, as in `normal_cdf`.
    let p = r.mul_add(1.987_569_1e-4, 1.398_199_9e-3);
    let p = r.mul_add(p, 8.333_452e-3);
    let p = r.mul_add(p, 4.166_579_6e-2);
    let p = r.mul_add(p, 0.166_666_65);
    let p = r.mul_add(p, 0.5);
    ((p * r).mul_add(r, r) + 1.0, n)
}

/// `2ᵏ` for −126 ≤ k ≤ 127.
#[inline(always)]
fn pow2(k: i32) -> f32 {
    f32::from_bits(((k + 127) << 23) as u32)
}

/// `eˣ` where it only feeds `1/(1 + eˣ)` (the sigmoid, tanh): with the argument clamped to
/// ±|LO| that ratio is still exact to f32 wherever it is a normal float, and 2ⁿ is one factor
/// (n ≤ 126), so this is [`exp_fast`]'s bits on [LO, −LO] (its scalings by 2ⁿ are exact)
/// without its second scaling and range selects. NaN gives NaN.
#[inline(always)]
fn exp_for_ratio(x: f32) -> f32 {
    let (er, n) = exp_reduced(x.clamp(LO, -LO));
    er * pow2(n)
}

/// `1/(1 + e^{−v})`, exact limits 0 and 1 at the tails (0 from v < LO, where the true value
/// is below the smallest normal f32).
#[inline(always)]
pub fn sigmoid(v: f32) -> f32 {
    let s = 1.0 / (1.0 + exp_for_ratio(-v));
    if v < LO {
        0.0
    } else {
        s
    }
}

/// `tanh x` as `1 − 2/(1 + e^{2x})` (so it vectorizes, unlike libm's): exactly ±1 at the ends,
/// NaN stays NaN; absolute error about 1e-7 (relative error grows near 0, where the result is
/// small).
#[inline(always)]
pub fn tanh_fast(x: f32) -> f32 {
    1.0 - 2.0 / (1.0 + exp_for_ratio(2.0 * x))
}

/// Where [`sin_cos`] stays exact in its reduction (`k·π/2` with `|k| < 2¹⁶`); beyond it, use
/// libm's (whose reduction is exact for every argument).
pub const SIN_COS_REDUCED: f32 = 65536.0;

/// `(sin x, cos x)` for `|x| ≤ SIN_COS_REDUCED`, branch-free so that it vectorizes: `x = k·π/2 +
/// r` with π/2 in three parts (Cephes' split, each step a fused multiply-add, so `r` is exact up
/// to one rounding per part), Cephes' `sinf`/`cosf` polynomials on `|r| ≤ π/4`, and the
/// quadrant `k mod 4` picking and signing them. Absolute error about 1e-7. The GPU shader
/// (`elementwise.wgsl`) computes the same.
#[inline(always)]
pub fn sin_cos(x: f32) -> (f32, f32) {
    // Rounded to an integer by adding 1.5·2²³, which leaves k in the low mantissa bits (as in
    // `exp_reduced`): `round` is a libm call and `as i32` a saturating conversion, both of which
    // kept the loop scalar.
    let shifted = x.mul_add(std::f32::consts::FRAC_2_PI, 12_582_912.0);
    let k = shifted - 12_582_912.0;
    let r = (-k).mul_add(1.570_312_5, x);
    let r = (-k).mul_add(4.837_513e-4, r);
    let r = (-k).mul_add(7.549_79e-8, r);
    let z = r * r;
    let sr = (r * z).mul_add(
        z.mul_add(z.mul_add(-1.951_529_6e-4, 8.332_161e-3), -1.666_665_5e-1),
        r,
    );
    let cr = (z * z).mul_add(
        z.mul_add(z.mul_add(2.443_315_7e-5, -1.388_731_6e-3), 4.166_664_6e-2),
        (-0.5f32).mul_add(z, 1.0),
    );
    // k mod 4 (two's complement in the mantissa; for NaN, r is NaN anyway).
    let q = shifted.to_bits() & 3;
    let (s, c) = if q & 1 == 0 { (sr, cr) } else { (cr, sr) };
    let s = if q & 2 == 0 { s } else { -s };
    let c = if (q + 1) & 2 == 0 { c } else { -c };
    (s, c)
}

// The scalar functions are `#[inline(always)]` and branch-free (libm's `erff`/`tanhf` are
// calls that no loop can vectorize), so that the `map1`/`map2` kernels compile them into 16-
// or 8-lane SIMD code for the active instruction set.

const K: f32 = 0.797_884_6; // √(2/π)
const C: f32 = 0.044715;
const INV_SQRT_2PI: f32 = 0.398_942_3; // 1/√(2π)

/// `Φ(x)`, the standard normal CDF, to a few f32 ulps relative on both tails:
/// `Φ(−|x|) = ½·erfc(|x|/√2)` with Numerical Recipes' `erfcc` (Chebyshev fit,
/// `erfc(z) = t·exp(−z² + P(t))`, `t = 1/(1 + z/2)`, fractional error < 1.2e-7 for z ≥ 0) on
/// `exp_fast`, and `Φ(x) = 1 − Φ(−x)` for x ≥ 0. NaN gives NaN.
#[inline(always)]
pub fn normal_cdf(x: f32) -> f32 {
    let z = x.abs() * std::f32::consts::FRAC_1_SQRT_2;
    let t = 1.0 / (1.0 + 0.5 * z);
    // Fused multiply-adds: one rounding per step, and half the instructions of Horner's rule
    // written out (Rust never contracts `a + t·p` by itself).
    let p = t.mul_add(0.170_872_77, -0.822_152_23);
    let p = t.mul_add(p, 1.488_515_9);
    let p = t.mul_add(p, -1.135_204);
    let p = t.mul_add(p, 0.278_868_07);
    let p = t.mul_add(p, -0.186_288_06);
    let p = t.mul_add(p, 0.096_784_18);
    let p = t.mul_add(p, 0.374_091_96);
    let p = t.mul_add(p, 1.000_023_7);
    let p = t.mul_add(p, -1.265_512_2);
    let lower = 0.5 * t * exp_fast(p - z * z);
    if x < 0.0 {
        lower
    } else {
        1.0 - lower
    }
}

/// `x · Φ(x)` with the exact normal CDF (PyTorch's `approximate='none'`).
#[inline(always)]
pub fn gelu_erf(x: f32) -> f32 {
    x * normal_cdf(x)
}

/// `0.5·x·(1 + tanh(u))`, `u = √(2/π)·(x + 0.044715·x³)`, computed as `x·σ(2u)` (the same
/// value: `½(1 + tanh u) = σ(2u)`), which keeps full relative precision on the negative tail.
#[inline(always)]
pub fn gelu_tanh(x: f32) -> f32 {
    x * sigmoid(2.0 * K * (x + C * x * x * x))
}

/// `x·σ(x)` (SiLU).
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// d/dx of [`silu`]: `σ(x)·(1 + x·(1 − σ(x)))`.
#[inline(always)]
pub fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

/// The error function, to f32 precision (|error| < 2e-7).
#[inline]
pub fn erf(x: f32) -> f32 {
    libm::erff(x)
}

/// d/dx of [`gelu_erf`]: `Φ(x) + x·φ(x)`.
#[inline(always)]
pub fn gelu_erf_grad(x: f32) -> f32 {
    normal_cdf(x) + x * INV_SQRT_2PI * exp_fast(-0.5 * x * x)
}

/// d/dx of [`gelu_tanh`]: `0.5·(1 + t) + 0.5·x·(1 − t²)·√(2/π)·(1 + 3·0.044715·x²)` with
/// `t = tanh(u)`; with `s = σ(2u)`, `0.5·(1 + t) = s` and `1 − t² = 4·s·(1 − s)`.
#[inline(always)]
pub fn gelu_tanh_grad(x: f32) -> f32 {
    let s = sigmoid(2.0 * K * (x + C * x * x * x));
    s + 2.0 * x * s * (1.0 - s) * K * (1.0 + 3.0 * C * x * x)
}
