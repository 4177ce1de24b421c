// Fused scaled dot-product attention, forward and backward, as rust/ops/attention:
// out = dropout(softmax(scale·q·kᵀ + mask)) · v per batch-head h, with q (BH, Tq, E),
// k (BH, Tk, E), v (BH, Tk, Ev), out (BH, Tq, Ev), and the row log-sum-exp saved (+inf for a
// query row that no key may attend, whose output is 0).
//
// Straightforward tiling (FlashAttention's loop order, not its tensor-core blocking): one
// invocation per query row (forward, dq) or key row (dk, dv), 64 rows per workgroup; the other
// side's rows stream through workgroup memory BC at a time, and the softmax is online
// (forward) or recomputed from the saved lse (backward), so nothing Tq × Tk is stored.
// Head dims up to MAX_D; each invocation keeps its rows in private arrays. MAX_D and BC come
// from the variant the host picks (attention.rs): the smallest MAX_D of 32, 64, 128 that fits
// the head, with BC·MAX_D = 2048 (16 KiB of tiles), so that small heads spill fewer registers
// and stream more rows per tile.
//
// The mask is the CPU op's AttnMask: value at (h, i, j) = mask[offsets[h] + i·row_stride +
// j·col_stride]; causal masks j > i (top-left aligned). Dropout keeps element (h, i, j) iff
// random::keep(seed, (h·Tq + i)·Tk + j, p) — the CPU's decisions.

struct Params {
    bh: u32,
    tq: u32,
    tk: u32,
    e: u32,
    ev: u32,
    scale: f32,
    causal: u32,
    has_mask: u32,
    row_stride: u32,
    col_stride: u32,
    // Dropout: on when threshold > 0; kept values scaled by dropout_scale.
    threshold: u32,
    dropout_scale: f32,
    seed: vec2<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> q: array<f32>;
@group(0) @binding(2) var<storage, read> k: array<f32>;
@group(0) @binding(3) var<storage, read> v: array<f32>;
@group(0) @binding(4) var<storage, read> mask: array<f32>;
@group(0) @binding(5) var<storage, read> offsets: array<u32>;
// Backward: the output gradient dout (BH, Tq, Ev) (forward: q again).
@group(0) @binding(6) var<storage, read> dout: array<f32>;
// Forward: written. Backward (delta): read.
@group(0) @binding(7) var<storage, read_write> o: array<f32>;
// lse (BH·Tq) then, from the backward's delta kernel, delta = rowsum(dout ∘ out) (BH·Tq).
@group(0) @binding(8) var<storage, read_write> stats: array<f32>;
// Backward: dq, or dk and dv.
@group(0) @binding(9) var<storage, read_write> grad_a: array<f32>;
@group(0) @binding(10) var<storage, read_write> grad_b: array<f32>;

const BR: u32 = 64u;
var<workgroup> tile_a: array<f32, BC * MAX_D>;
var<workgroup> tile_b: array<f32, BC * MAX_D>;

fn mask_value(h: u32, i: u32, j: u32) -> f32 {
    if (p.causal != 0u && j > i) {
        return neg_inf();
    }
    if (p.has_mask != 0u) {
        return mask[offsets[h] + i * p.row_stride + j * p.col_stride];
    }
    return 0.0;
}

// Dropout's factor for (h, i, j): 1 without dropout, else dropout_scale or 0.
fn keep_factor(h: u32, i: u32, j: u32) -> f32 {
    if (p.threshold == 0u) {
        return 1.0;
    }
    let index = add64(mul_wide(h * p.tq + i, p.tk), vec2<u32>(j, 0u));
    return select(0.0, p.dropout_scale, rng_keep(p.seed, index, p.threshold));
}

// Element (r, d) of head h of x (BH·t, dim) — x one of q, k, v, dout — or 0 past t or dim.
fn tile_value(x_is: u32, h: u32, r: u32, t: u32, dim: u32, d: u32) -> f32 {
    if (r >= t || d >= dim) {
        return 0.0;
    }
    let at = (h * t + r) * dim + d;
    switch x_is {
        case 0u: { return q[at]; }
        case 1u: { return k[at]; }
        case 2u: { return v[at]; }
        default: { return dout[at]; }
    }
}

// Rows r0 .. r0 + BC of head h: of a (dim_a wide) into tile_a, of b (dim_b) into tile_b.
fn load_tiles(a_is: u32, b_is: u32, h: u32, r0: u32, t: u32, dim_a: u32, dim_b: u32, lid: u32) {
    for (var idx = lid; idx < BC * MAX_D; idx += BR) {
        let r = r0 + idx / MAX_D;
        let d = idx % MAX_D;
        tile_a[idx] = tile_value(a_is, h, r, t, dim_a, d);
        tile_b[idx] = tile_value(b_is, h, r, t, dim_b, d);
    }
}

// A private row: element d of row r of head h of x (as tile_value), zeros unless `live`.
fn load_row(dst: ptr<function, array<f32, MAX_D>>, x_is: u32, h: u32, r: u32, t: u32, dim: u32, live: bool) {
    for (var d = 0u; d < dim; d++) {
        (*dst)[d] = select(0.0, tile_value(x_is, h, r, t, dim, d), live);
    }
}

// scale · (row · tile_a row c) + mask(h, i, j): the masked, scaled score of query i, key j.
fn score(row: ptr<function, array<f32, MAX_D>>, c: u32, h: u32, i: u32, j: u32) -> f32 {
    var s = 0.0;
    for (var d = 0u; d < p.e; d++) {
        s += (*row)[d] * tile_a[c * MAX_D + d];
    }
    return s * p.scale + mask_value(h, i, j);
}

// The keys the query block `qb` needs: all of them, or with a causal mask those up to its
// last query.
fn key_end(qb: u32) -> u32 {
    if (p.causal != 0u) {
        return min(p.tk, qb * BR + BR);
    }
    return p.tk;
}

const Q: u32 = 0u;
const K: u32 = 1u;
const V: u32 = 2u;
const DOUT: u32 = 3u;

@compute @workgroup_size(BR)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.y;
    let i = wg.x * BR + lid;
    let live = i < p.tq;
    let row = h * p.tq + i;
    var qrow: array<f32, MAX_D>;
    var acc: array<f32, MAX_D>;
    load_row(&qrow, Q, h, i, p.tq, p.e, live);
    var m = neg_inf();
    var l = 0.0;
    let kend = key_end(wg.x);
    for (var j0 = 0u; j0 < kend; j0 += BC) {
        load_tiles(K, V, h, j0, p.tk, p.e, p.ev, lid);
        workgroupBarrier();
        for (var c = 0u; c < BC && live; c++) {
            let j = j0 + c;
            if (j >= p.tk) {
                break;
            }
            let s = score(&qrow, c, h, i, j);
            if (is_neg_inf(s)) {
                continue;
            }
            let m_new = max(m, s);
            let corr = select(exp(m - m_new), 0.0, is_neg_inf(m));
            let pj = exp(s - m_new);
            l = l * corr + pj;
            let pz = pj * keep_factor(h, i, j);
            for (var d = 0u; d < p.ev; d++) {
                acc[d] = acc[d] * corr + pz * tile_b[c * MAX_D + d];
            }
            m = m_new;
        }
        workgroupBarrier();
    }
    if (!live) {
        return;
    }
    for (var d = 0u; d < p.ev; d++) {
        o[row * p.ev + d] = select(0.0, acc[d] / l, l > 0.0);
    }
    stats[row] = select(pos_inf(), m + log(l), l > 0.0);
}

// delta = rowsum(dout ∘ out), one invocation per query row, into stats[BH·Tq ..].
@compute @workgroup_size(WG)
fn backward_delta(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let row = group_index(wg, nwg) * WG + lid;
    let rows = p.bh * p.tq;
    if (row >= rows) {
        return;
    }
    var s = 0.0;
    for (var d = 0u; d < p.ev; d++) {
        s += dout[row * p.ev + d] * o[row * p.ev + d];
    }
    stats[rows + row] = s;
}

// dq_i = scale · Σ_j ds_ij k_j, ds_ij = p_ij (z_ij dout_i·v_j − delta_i).
@compute @workgroup_size(BR)
fn backward_dq(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.y;
    let i = wg.x * BR + lid;
    let row = h * p.tq + i;
    var lse = pos_inf();
    var delta = 0.0;
    if (i < p.tq) {
        lse = stats[row];
        delta = stats[p.bh * p.tq + row];
    }
    // Rows past Tq, and rows that attend no key, only help load tiles.
    let live = i < p.tq && lse < 3.4028235e38;
    var qrow: array<f32, MAX_D>;
    var drow: array<f32, MAX_D>;
    var dq: array<f32, MAX_D>;
    load_row(&qrow, Q, h, i, p.tq, p.e, live);
    load_row(&drow, DOUT, h, i, p.tq, p.ev, live);
    let kend = key_end(wg.x);
    for (var j0 = 0u; j0 < kend; j0 += BC) {
        load_tiles(K, V, h, j0, p.tk, p.e, p.ev, lid);
        workgroupBarrier();
        for (var c = 0u; c < BC && live; c++) {
            let j = j0 + c;
            if (j >= p.tk) {
                break;
            }
            let s = score(&qrow, c, h, i, j);
            if (is_neg_inf(s)) {
                continue;
            }
            let pj = exp(s - lse);
            var dp = 0.0;
            for (var d = 0u; d < p.ev; d++) {
                dp += drow[d] * tile_b[c * MAX_D + d];
            }
            let ds = pj * (dp * keep_factor(h, i, j) - delta) * p.scale;
            for (var d = 0u; d < p.e; d++) {
                dq[d] += ds * tile_a[c * MAX_D + d];
            }
        }
        workgroupBarrier();
    }
    if (i < p.tq) {
        for (var d = 0u; d < p.e; d++) {
            grad_a[row * p.e + d] = dq[d];
        }
    }
}

// dv_j = Σ_i p_ij z_ij dout_i, dk_j = scale · Σ_i ds_ij q_i.
@compute @workgroup_size(BR)
fn backward_dkv(@builtin(workgroup_id) wg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let h = wg.y;
    let j = wg.x * BR + lid;
    let live = j < p.tk;
    let col = h * p.tk + j;
    var krow: array<f32, MAX_D>;
    var vrow: array<f32, MAX_D>;
    var dk: array<f32, MAX_D>;
    var dv: array<f32, MAX_D>;
    load_row(&krow, K, h, j, p.tk, p.e, live);
    load_row(&vrow, V, h, j, p.tk, p.ev, live);
    // With a causal mask, queries before this block's first key see none of its keys.
    var istart = 0u;
    if (p.causal != 0u) {
        istart = wg.x * BR;
    }
    for (var i0 = istart; i0 < p.tq; i0 += BC) {
        load_tiles(Q, DOUT, h, i0, p.tq, p.e, p.ev, lid);
        workgroupBarrier();
        for (var c = 0u; c < BC && live; c++) {
            let i = i0 + c;
            if (i >= p.tq) {
                break;
            }
            let lse = stats[h * p.tq + i];
            if (!(lse < 3.4028235e38)) {
                continue;
            }
            let s = score(&krow, c, h, i, j);
            if (is_neg_inf(s)) {
                continue;
            }
            let pj = exp(s - lse);
            let z = keep_factor(h, i, j);
            var dp = 0.0;
            for (var d = 0u; d < p.ev; d++) {
                dv[d] += pj * z * tile_b[c * MAX_D + d];
                dp += tile_b[c * MAX_D + d] * vrow[d];
            }
            let ds = pj * (dp * z - stats[p.bh * p.tq + h * p.tq + i]) * p.scale;
            for (var d = 0u; d < p.e; d++) {
                dk[d] += ds * tile_a[c * MAX_D + d];
            }
        }
        workgroupBarrier();
    }
    if (live) {
        for (var d = 0u; d < p.e; d++) {
            grad_a[col * p.e + d] = dk[d];
        }
        for (var d = 0u; d < p.ev; d++) {
            grad_b[col * p.ev + d] = dv[d];
        }
    }
}
