// One Adam/AdamW step in place, one element per invocation, as rust/optim/adam.rs (the
// scalars — step size, bias corrections, decay — come precomputed from the host in f64,
// rounded once to f32, as there).

struct Params {
    n: u32,
    // bit 0: decoupled (AdamW), bit 1: amsgrad, bit 2: maximize, bit 3: weight decay ≠ 0.
    flags: u32,
    step_size: f32,
    bias_correction2_sqrt: f32,
    beta2: f32,
    one_minus_beta1: f32,
    one_minus_beta2: f32,
    wd: f32,
    eps: f32,
    decay: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> grad: array<f32>;
@group(0) @binding(2) var<storage, read_write> param: array<f32>;
@group(0) @binding(3) var<storage, read_write> exp_avg: array<f32>;
@group(0) @binding(4) var<storage, read_write> exp_avg_sq: array<f32>;
// With amsgrad: the running maximum of exp_avg_sq (else a 1-element placeholder).
@group(0) @binding(5) var<storage, read_write> max_exp_avg_sq: array<f32>;

// torch.lerp's two-sided formula.
fn lerp(start: f32, end: f32, weight: f32) -> f32 {
    if (weight < 0.5) {
        return start + weight * (end - start);
    }
    return end - (end - start) * (1.0 - weight);
}

@compute @workgroup_size(WG)
fn step(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
        @builtin(local_invocation_index) lid: u32) {
    let j = group_index(wg, nwg) * WG + lid;
    if (j >= p.n) {
        return;
    }
    var g = grad[j];
    if ((p.flags & 4u) != 0u) {
        g = -g;
    }
    var theta = param[j];
    if ((p.flags & 8u) != 0u) {
        if ((p.flags & 1u) != 0u) {
            theta *= p.decay;
        } else {
            g += p.wd * theta;
        }
    }
    let m = lerp(exp_avg[j], g, p.one_minus_beta1);
    let v = exp_avg_sq[j] * p.beta2 + p.one_minus_beta2 * (g * g);
    exp_avg[j] = m;
    exp_avg_sq[j] = v;
    var second = v;
    if ((p.flags & 2u) != 0u) {
        second = max(max_exp_avg_sq[j], v);
        max_exp_avg_sq[j] = second;
    }
    let denom = sqrt(second) / p.bias_correction2_sqrt + p.eps;
    param[j] = theta + (-p.step_size * m) / denom;
}
