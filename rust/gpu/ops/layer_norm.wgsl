// LayerNorm over rows, as rust/ops/layer_norm.rs: y = (x − mean)·rstd·weight + bias with the
// biased variance, saving each row's mean and rstd = 1/√(var + eps) for the backward.
// forward and backward_input: one workgroup per row (two passes over the row for the
// variance); backward_params: one invocation per column, summing over the rows in order.

struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    has_weight: u32,
    has_bias: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Forward: x. Backward: the forward's input x.
@group(0) @binding(1) var<storage, read> x: array<f32>;
// The weight (D,) (x again when there is none).
@group(0) @binding(2) var<storage, read> weight: array<f32>;
// Forward: the bias (D,). Backward: the output gradient g (rows, D).
@group(0) @binding(3) var<storage, read> aux: array<f32>;
// Forward: y (rows, D). backward_input: dx (rows, D). backward_params: dweight (D,).
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// Forward: written (rows,). Backward: read. backward_params writes dbias (D,) into `out2`.
@group(0) @binding(5) var<storage, read_write> mean: array<f32>;
@group(0) @binding(6) var<storage, read_write> rstd: array<f32>;
@group(0) @binding(7) var<storage, read_write> out2: array<f32>;

fn w_at(j: u32) -> f32 {
    return select(1.0, weight[j], p.has_weight != 0u);
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.d;
    let n = f32(p.d);
    var s = 0.0;
    for (var j = lid; j < p.d; j += WG) {
        s += x[base + j];
    }
    let mu = reduce_sum(lid, s) / n;
    var sq = 0.0;
    for (var j = lid; j < p.d; j += WG) {
        let c = x[base + j] - mu;
        sq += c * c;
    }
    let r = inverseSqrt(reduce_sum(lid, sq) / n + p.eps);
    for (var j = lid; j < p.d; j += WG) {
        var v = (x[base + j] - mu) * r * w_at(j);
        if (p.has_bias != 0u) {
            v += aux[j];
        }
        out[base + j] = v;
    }
    if (lid == 0u) {
        mean[row] = mu;
        rstd[row] = r;
    }
}

// dx = rstd·(ĝ − mean(ĝ) − x̂·mean(ĝ∘x̂)), ĝ = g∘weight, x̂ the normalized input.
@compute @workgroup_size(WG)
fn backward_input(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.d;
    let mu = mean[row];
    let r = rstd[row];
    var sg = 0.0;
    var sgx = 0.0;
    for (var j = lid; j < p.d; j += WG) {
        let gh = aux[base + j] * w_at(j);
        sg += gh;
        sgx += gh * (x[base + j] - mu) * r;
    }
    let n = f32(p.d);
    let mean_g = reduce_sum(lid, sg) / n;
    let mean_gx = reduce_sum(lid, sgx) / n;
    for (var j = lid; j < p.d; j += WG) {
        let xh = (x[base + j] - mu) * r;
        out[base + j] = r * (aux[base + j] * w_at(j) - mean_g - xh * mean_gx);
    }
}

// dweight = Σ_rows g∘x̂, dbias = Σ_rows g.
@compute @workgroup_size(WG)
fn backward_params(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                   @builtin(local_invocation_index) lid: u32) {
    let j = group_index(wg, nwg) * WG + lid;
    if (j >= p.d) {
        return;
    }
    var dw = 0.0;
    var db = 0.0;
    for (var row = 0u; row < p.rows; row++) {
        let i = row * p.d + j;
        let g = aux[i];
        dw += g * (x[i] - mean[row]) * rstd[row];
        db += g;
    }
    out[j] = dw;
    out2[j] = db;
}
