// Inverted dropout, forward and backward alike (the op is linear): out_i = v_i · scale when
// element i is kept, else v_i · 0, with the keep decision of rust/random.rs (rng_keep in
// common.wgsl) — the same masks as the CPU op for the same seed.

struct Params {
    n: u32,
    threshold: u32,
    scale: f32,
    _pad: u32,
    seed: vec2<u32>,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> v: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;

@compute @workgroup_size(WG)
fn apply(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = group_index(wg, nwg) * WG + lid;
    if (i < p.n) {
        // Multiplying by 0 rather than writing 0 keeps NaN and ±inf visible, as on the CPU.
        out[i] = v[i] * select(0.0, p.scale, rng_keep(p.seed, vec2<u32>(i, 0u), p.threshold));
    }
}
