// Embedding gather and its backward, as rust/ops/embedding.rs. The backward has no float
// atomics to scatter with: it gathers instead, one invocation per element of dweight (V, D),
// summing the output gradient over the positions of its id — `order[start[v] .. start[v+1]]`,
// positions grouped by id in ascending order (a counting sort made by the host) — so each
// sum runs in position order, as on the CPU: deterministic, bit for bit the CPU's result.

struct Params {
    // Forward: the number of ids n. Backward: the vocabulary V.
    rows: u32,
    d: u32,
    // Backward: the row that gets no gradient, or 0xffffffff.
    padding: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// Forward: ids (n,). Backward: start (V + 1,).
@group(0) @binding(1) var<storage, read> index: array<u32>;
// Backward: order (n,) (forward: ids again).
@group(0) @binding(2) var<storage, read> order: array<u32>;
// Forward: weight (V, D). Backward: g (n, D).
@group(0) @binding(3) var<storage, read> src: array<f32>;
// Forward: out (n, D). Backward: dweight (V, D).
@group(0) @binding(4) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn forward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let e = group_index(wg, nwg) * WG + lid;
    if (e >= p.rows * p.d) {
        return;
    }
    let i = e / p.d;
    out[e] = src[index[i] * p.d + e % p.d];
}

@compute @workgroup_size(WG)
fn backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
            @builtin(local_invocation_index) lid: u32) {
    let e = group_index(wg, nwg) * WG + lid;
    if (e >= p.rows * p.d) {
        return;
    }
    let v = e / p.d;
    let c = e % p.d;
    var acc = 0.0;
    if (v != p.padding) {
        for (var k = index[v]; k < index[v + 1u]; k++) {
            acc += src[order[k] * p.d + c];
        }
    }
    out[e] = acc;
}
