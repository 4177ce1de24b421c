// Strided copies and the broadcast reduction, one output element per invocation. A view is
// (shape, strides) over a flat buffer: element `c` (a multi-index) sits at
// `offset + Σ c[d]·strides[d]`. Permutes, slices and broadcasts are views; `sum_to` is the
// adjoint of a broadcast.

struct Params {
    // Elements of the output (gather, sum_to) or of the input (scatter).
    n: u32,
    rank: u32,
    offset: u32,
    // sum_to: elements summed per output.
    n_red: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
// gather/scatter: shape (rank), then strides (rank). sum_to: the output shape with reduced
// dims 1 (rank), the reduced dims with kept dims 1 (rank), then the input's strides (rank).
@group(0) @binding(1) var<storage, read> dims: array<u32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<f32>;

// Offset of row-major index `i` of the shape at dims[shape_at..] under the strides at
// dims[stride_at..].
fn view_offset(i: u32, shape_at: u32, stride_at: u32) -> u32 {
    var rem = i;
    var off = 0u;
    for (var d = p.rank; d > 0u; d = d - 1u) {
        let size = dims[shape_at + d - 1u];
        off = off + (rem % size) * dims[stride_at + d - 1u];
        rem = rem / size;
    }
    return off;
}

// out[i] = x[view(i)]
@compute @workgroup_size(WG)
fn gather(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wg, nwg) * WG + lid;
    if (i < p.n) {
        out[i] = x[p.offset + view_offset(i, 0u, p.rank)];
    }
}

// out[view(i)] = x[i]; the view must not repeat elements (permutes, slices, cat parts).
@compute @workgroup_size(WG)
fn scatter(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
           @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wg, nwg) * WG + lid;
    if (i < p.n) {
        out[p.offset + view_offset(i, 0u, p.rank)] = x[i];
    }
}

// Compensated (Kahan) summation: as accurate as the CPU's f64 accumulation for these lengths.
struct Kahan {
    acc: f32,
    lost: f32,
}

fn kahan_add(k: Kahan, v: f32) -> Kahan {
    let term = v - k.lost;
    let next = k.acc + term;
    return Kahan(next, (next - k.acc) - term);
}

// out[j] = Σ over the reduced dims of x at output position j, in index order. One invocation
// per output: right for bias gradients (many outputs); a full sum goes through sum_strided.
@compute @workgroup_size(WG)
fn sum_to(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let j = group_index(wg, nwg) * WG + lid;
    if (j < p.n) {
        let base = view_offset(j, 0u, 2u * p.rank);
        var k = Kahan(0.0, 0.0);
        for (var r = 0u; r < p.n_red; r = r + 1u) {
            k = kahan_add(k, x[base + view_offset(r, p.rank, 2u * p.rank)]);
        }
        out[j] = k.acc;
    }
}

// One pass of a full reduction of the p.n_red values of x into p.n partial sums:
// out[j] = Σ x[j + i·p.n]. Run with many outputs, then with one over the partials, so that a
// loss's `.sum()` is not one invocation walking the whole tensor. (dims is unused.)
@compute @workgroup_size(WG)
fn sum_strided(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
               @builtin(local_invocation_index) lid: u32) {
    let j = group_index(wg, nwg) * WG + lid;
    if (j < p.n) {
        var k = Kahan(0.0, 0.0);
        for (var i = j; i < p.n_red; i = i + p.n) {
            k = kahan_add(k, x[i]);
        }
        out[j] = k.acc;
    }
}
