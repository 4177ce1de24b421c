// Cross entropy from logits (N, C) with class targets, label smoothing ε and ignored rows, as
// rust/ops/cross_entropy.rs: loss_i = (1 − ε)·(lse_i − x[i, t_i]) + ε·(lse_i − mean_c x[i, c]),
// 0 for an ignored row (target < 0 here: the host maps ignore_index to −1).
// forward: one workgroup per row, writing the row's loss and log-sum-exp (NaN for a row with
// NaN or +inf, −inf for a row of −inf: the host turns both into errors).
// backward: one invocation per logit, dx = w_i·(exp(x − lse_i) − ε/C) − w_i·(1 − ε)·[c = t_i].

struct Params {
    n: u32,
    c: u32,
    eps: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> targets: array<i32>;
// Backward: each row's weight w (N,) (forward: x again).
@group(0) @binding(3) var<storage, read> w: array<f32>;
// Forward: loss (N,). Backward: dx (N, C).
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
// Forward: written. Backward: read.
@group(0) @binding(5) var<storage, read_write> lse: array<f32>;

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wg, nwg);
    if (row >= p.n) {
        return;
    }
    let base = row * p.c;
    var m = neg_inf();
    var bad = false;
    for (var j = lid; j < p.c; j += WG) {
        let v = x[base + j];
        // NaN fails every comparison; +inf is above every finite value.
        bad = bad || !(v <= 3.4028235e38);
        m = max(m, v);
    }
    let any_bad = reduce_max(lid, select(0.0, 1.0, bad));
    m = reduce_max(lid, m);
    var s = 0.0;
    var sx = 0.0;
    for (var j = lid; j < p.c; j += WG) {
        let v = x[base + j];
        if (!is_neg_inf(v)) {
            s += exp(v - m);
        }
        sx += v;
    }
    s = reduce_sum(lid, s);
    sx = reduce_sum(lid, sx);
    if (lid != 0u) {
        return;
    }
    if (any_bad > 0.0) {
        lse[row] = f32_from_bits(0x7fc00000u);
        out[row] = 0.0;
        return;
    }
    if (is_neg_inf(m)) {
        lse[row] = m;
        out[row] = 0.0;
        return;
    }
    let l = m + log(s);
    lse[row] = l;
    let t = targets[row];
    var loss = 0.0;
    if (t >= 0) {
        // Each term only when its weight is nonzero: a −inf logit makes its term infinite.
        if (p.eps < 1.0) {
            loss += (1.0 - p.eps) * (l - x[base + u32(t)]);
        }
        if (p.eps > 0.0) {
            loss += p.eps * (l - sx / f32(p.c));
        }
    }
    out[row] = loss;
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let e = group_index(wg, nwg) * WG + lid;
    if (e >= p.n * p.c) {
        return;
    }
    let row = e / p.c;
    let t = targets[row];
    if (t < 0) {
        out[e] = 0.0;
        return;
    }
    let wi = w[row];
    var d = wi * (exp(x[e] - lse[row]) - p.eps / f32(p.c));
    if (u32(t) == e % p.c) {
        d -= wi * (1.0 - p.eps);
    }
    out[e] = d;
}
