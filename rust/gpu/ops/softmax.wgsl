// Softmax and log-softmax over rows, forward and backward, one workgroup per row (any length),
// with the semantics of rust/ops/softmax.rs: an optional additive mask of the input's shape
// (entries finite or −inf); a row with no entry above −inf gives zeros (softmax) or −inf
// (log-softmax), and masked entries get a zero gradient.

struct Params {
    rows: u32,
    cols: u32,
    log: u32,
    has_mask: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Forward: x. Backward: the forward's output y.
@group(0) @binding(1) var<storage, read> x: array<f32>;
// Forward: the mask (x again when there is none). Backward: the output gradient g.
@group(0) @binding(2) var<storage, read> aux: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

fn masked_input(i: u32) -> f32 {
    if (p.has_mask != 0u) {
        return x[i] + aux[i];
    }
    return x[i];
}

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var m = neg_inf();
    for (var j = lid; j < p.cols; j += WG) {
        m = max(m, masked_input(base + j));
    }
    m = reduce_max(lid, m);
    if (is_neg_inf(m)) {
        let fill = select(0.0, neg_inf(), p.log != 0u);
        for (var j = lid; j < p.cols; j += WG) {
            out[base + j] = fill;
        }
        return;
    }
    var s = 0.0;
    for (var j = lid; j < p.cols; j += WG) {
        let v = masked_input(base + j);
        if (!is_neg_inf(v)) {
            s += exp(v - m);
        }
    }
    s = reduce_sum(lid, s);
    let log_s = log(s);
    for (var j = lid; j < p.cols; j += WG) {
        let v = masked_input(base + j);
        if (p.log != 0u) {
            out[base + j] = select((v - m) - log_s, neg_inf(), is_neg_inf(v));
        } else {
            out[base + j] = select(exp(v - m) / s, 0.0, is_neg_inf(v));
        }
    }
}

// softmax: dx = y ∘ (g − Σ g∘y); log-softmax: dx = g − exp(y)·Σ g over entries with y > −inf.
@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wg, nwg);
    if (row >= p.rows) {
        return;
    }
    let base = row * p.cols;
    var s = 0.0;
    for (var j = lid; j < p.cols; j += WG) {
        let y = x[base + j];
        if (p.log != 0u) {
            if (!is_neg_inf(y)) {
                s += aux[base + j];
            }
        } else {
            s += aux[base + j] * y;
        }
    }
    s = reduce_sum(lid, s);
    for (var j = lid; j < p.cols; j += WG) {
        let y = x[base + j];
        let g = aux[base + j];
        if (p.log != 0u) {
            out[base + j] = select(g - exp(y) * s, 0.0, is_neg_inf(y));
        } else {
            out[base + j] = y * (g - s);
        }
    }
}
