// GELU (erf and tanh forms), ReLU and SiLU, forward and backward, one element per invocation; the
// same formulas as rust/ops/activation.rs (Φ via Numerical Recipes' erfc, the tanh form as
// x·σ(2u)).

struct Params {
    n: u32,
    // 0: ReLU, 1: GELU (erf), 2: GELU (tanh), 3: SiLU, as ActivationKind.
    kind: u32,
}

@group(0) @binding(0) var<uniform> p: Params;

const K: f32 = 0.7978846;   // √(2/π)
const C: f32 = 0.044715;
const INV_SQRT_2PI: f32 = 0.3989423;

fn normal_cdf(x: f32) -> f32 {
    let z = abs(x) * 0.70710678;
    let t = 1.0 / (1.0 + 0.5 * z);
    var q = -0.82215223 + t * 0.17087277;
    q = 1.4885159 + t * q;
    q = -1.135204 + t * q;
    q = 0.27886807 + t * q;
    q = -0.18628806 + t * q;
    q = 0.09678418 + t * q;
    q = 0.37409196 + t * q;
    q = 1.0000237 + t * q;
    q = -1.2655122 + t * q;
    let lower = 0.5 * t * exp(q - z * z);
    return select(1.0 - lower, lower, x < 0.0);
}

fn sigmoid(v: f32) -> f32 {
    return 1.0 / (1.0 + exp(-v));
}

fn act(x: f32) -> f32 {
    switch p.kind {
        case 0u: {
            return select(x, 0.0, x <= 0.0);
        }
        case 1u: {
            return x * normal_cdf(x);
        }
        case 3u: {
            return x * sigmoid(x);
        }
        default: {
            return x * sigmoid(2.0 * K * (x + C * x * x * x));
        }
    }
}

fn act_grad(x: f32) -> f32 {
    switch p.kind {
        case 0u: {
            return select(0.0, 1.0, x > 0.0);
        }
        case 1u: {
            return normal_cdf(x) + x * INV_SQRT_2PI * exp(-0.5 * x * x);
        }
        case 3u: {
            let s = sigmoid(x);
            return s * (1.0 + x * (1.0 - s));
        }
        default: {
            let s = sigmoid(2.0 * K * (x + C * x * x * x));
            return s + 2.0 * x * s * (1.0 - s) * K * (1.0 + 3.0 * C * x * x);
        }
    }
}

@group(0) @binding(1) var<storage, read> x: array<f32>;
// The output gradient (backward only; the forward binds x here too).
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// out = act(x)
@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wg, nwg) * WG + lid;
    if (i < p.n) {
        out[i] = act(x[i]);
    }
}

// out = g ∘ act'(x)
@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wg, nwg) * WG + lid;
    if (i < p.n) {
        out[i] = g[i] * act_grad(x[i]);
    }
}
