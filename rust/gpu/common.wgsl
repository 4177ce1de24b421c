// Shared by every tfm_rs shader (pipeline.rs compiles it in front of each file): the grid
// index, workgroup reductions, IEEE infinities, and the counter-based RNG of rust/random.rs.

// Invocations per workgroup of the row and elementwise kernels (pipeline::WG).
const WG: u32 = 256u;

// Index of this workgroup along the one logical axis that pipeline::grid folds into x and y.
fn group_index(wg: vec3<u32>, nwg: vec3<u32>) -> u32 {
    return wg.x + wg.y * nwg.x;
}

// Infinities cannot be written as literals (WGSL constants must be finite); a bit pattern
// read through a function argument is not folded.
fn f32_from_bits(bits: u32) -> f32 {
    return bitcast<f32>(bits);
}
fn neg_inf() -> f32 {
    return f32_from_bits(0xff800000u);
}
fn pos_inf() -> f32 {
    return f32_from_bits(0x7f800000u);
}
// True only for −inf (every finite f32 is ≥ −FLT_MAX); robust to drivers that fold
// comparisons with infinities.
fn is_neg_inf(x: f32) -> bool {
    return x < -3.4028235e38;
}

// ---- workgroup reductions over WG values, one per invocation. The result is read with
// workgroupUniformLoad, so callers may branch on it without breaking uniformity.

var<workgroup> red: array<f32, WG>;
var<workgroup> red_out: f32;

fn reduce_sum(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = red[lid] + red[lid + s];
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        red_out = red[0];
    }
    return workgroupUniformLoad(&red_out);
}

fn reduce_max(lid: u32, v: f32) -> f32 {
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if (lid < s) {
            red[lid] = max(red[lid], red[lid + s]);
        }
        workgroupBarrier();
    }
    if (lid == 0u) {
        red_out = red[0];
    }
    return workgroupUniformLoad(&red_out);
}

// ---- 64-bit integers as vec2<u32>(low, high), for SplitMix64 exactly as rust/random.rs.

fn mul_wide(a: u32, b: u32) -> vec2<u32> {
    let a0 = a & 0xffffu;
    let a1 = a >> 16u;
    let b0 = b & 0xffffu;
    let b1 = b >> 16u;
    let p00 = a0 * b0;
    let p01 = a0 * b1;
    let p10 = a1 * b0;
    let p11 = a1 * b1;
    let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
    return vec2<u32>((p00 & 0xffffu) | (mid << 16u), p11 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u));
}

fn mul64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = mul_wide(a.x, b.x);
    return vec2<u32>(lo.x, lo.y + a.x * b.y + a.y * b.x);
}

fn add64(a: vec2<u32>, b: vec2<u32>) -> vec2<u32> {
    let lo = a.x + b.x;
    return vec2<u32>(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}

// z ^ (z >> s) for 0 < s < 32.
fn xor_shr64(z: vec2<u32>, s: u32) -> vec2<u32> {
    return vec2<u32>(z.x ^ ((z.x >> s) | (z.y << (32u - s))), z.y ^ (z.y >> s));
}

// random::mix, SplitMix64's finalizer.
fn splitmix(z0: vec2<u32>) -> vec2<u32> {
    var z = mul64(xor_shr64(z0, 30u), vec2<u32>(0x1ce4e5b9u, 0xbf58476du));
    z = mul64(xor_shr64(z, 27u), vec2<u32>(0x133111ebu, 0x94d049bbu));
    return xor_shr64(z, 31u);
}

// random::keep: whether element `index` of the call keyed by `seed` is kept against the
// 16-bit `threshold` (random::keep_threshold). Groups of 4 consecutive indices share one hash.
fn rng_keep(seed: vec2<u32>, index: vec2<u32>, threshold: u32) -> bool {
    let group = vec2<u32>((index.x >> 2u) | (index.y << 30u), index.y >> 2u);
    let h = splitmix(add64(seed, mul64(group, vec2<u32>(0x7f4a7c15u, 0x9e3779b9u))));
    let k = index.x & 3u;
    let word = select(h.y, h.x, k < 2u);
    let bits16 = (word >> (16u * (k & 1u))) & 0xffffu;
    return bits16 >= threshold;
}
