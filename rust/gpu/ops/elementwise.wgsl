// Elementwise arithmetic, one element per invocation, with the formulas of
// rust/ops/elementwise.rs: binary ops over broadcast operands, unary maps and their backward.

struct Params {
    n: u32,
    // binary: the output's rank; unary: unused.
    rank: u32,
    // binary: 0 add, 1 sub, 2 mul, 3 div. unary: 0 neg, 1 exp, 2 log, 3 sqrt, 4 tanh,
    // 5 pow(x, s), 6 scale (x·s).
    kind: u32,
    s: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
// binary: the output shape (rank), then a's and b's broadcast strides (rank each).
@group(0) @binding(1) var<storage, read> dims: array<u32>;
// binary: a, b. unary forward: x, x. unary backward: x (the input), y (the output).
@group(0) @binding(2) var<storage, read> a: array<f32>;
@group(0) @binding(3) var<storage, read> b: array<f32>;
// unary backward: the output gradient (the others bind a here).
@group(0) @binding(4) var<storage, read> g: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;

fn index(wg: vec3<u32>, nwg: vec3<u32>, lid: u32) -> u32 {
    return group_index(wg, nwg) * WG + lid;
}

@compute @workgroup_size(WG)
fn binary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
          @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i >= p.n) {
        return;
    }
    var rem = i;
    var ia = 0u;
    var ib = 0u;
    for (var d = p.rank; d > 0u; d = d - 1u) {
        let size = dims[d - 1u];
        let c = rem % size;
        rem = rem / size;
        ia = ia + c * dims[p.rank + d - 1u];
        ib = ib + c * dims[2u * p.rank + d - 1u];
    }
    let u = a[ia];
    let v = b[ib];
    switch p.kind {
        case 0u: { out[i] = u + v; }
        case 1u: { out[i] = u - v; }
        case 2u: { out[i] = u * v; }
        default: { out[i] = u / v; }
    }
}

// tanh without the overflow of (e^2x − 1)/(e^2x + 1) at large |x|.
fn stable_tanh(x: f32) -> f32 {
    let e = exp(-2.0 * abs(x));
    return sign(x) * (1.0 - e) / (1.0 + e);
}

// sin and cos of x in the quadrant (k mod 4) after x = k·π/2 + r, |r| ≤ π/4: WGSL's builtins
// promise only 2^-11 absolute error, and only on [−π, π] (positional encodings reach thousands).
// π/2 in three parts (Cephes' split), so that k·part is exact for |k| < 2^16; then the Cephes
// sinf/cosf polynomials on r.
fn sin_cos(x: f32) -> vec2<f32> {
    let k = round(x * 0.63661977236758134);
    var r = fma(-k, 1.5703125, x);
    r = fma(-k, 4.837512969970703125e-4, r);
    r = fma(-k, 7.54978995489188216e-8, r);
    let z = r * r;
    let sr = fma(r * z, fma(z, fma(z, -1.9515295891e-4, 8.3321608736e-3), -1.6666654611e-1), r);
    let cr = fma(z * z, fma(z, fma(z, 2.443315711809948e-5, -1.388731625493765e-3), 4.166664568298827e-2),
                 fma(-0.5, z, 1.0));
    switch (i32(k) & 3) {
        case 0: { return vec2<f32>(sr, cr); }
        case 1: { return vec2<f32>(cr, -sr); }
        case 2: { return vec2<f32>(-sr, -cr); }
        default: { return vec2<f32>(-cr, sr); }
    }
}

// x^s as Rust's powf: WGSL's pow is undefined for x < 0, so integral exponents take the sign
// from the parity.
fn powf(x: f32, s: f32) -> f32 {
    if (s == 0.0) {
        return 1.0;
    }
    let m = pow(abs(x), s);
    if (x >= 0.0) {
        return m;
    }
    if (floor(s) != s) {
        return f32_from_bits(0x7fc00000u);
    }
    let odd = (i32(abs(s)) & 1) == 1;
    return select(m, -m, odd);
}

fn unary_f(x: f32) -> f32 {
    switch p.kind {
        case 0u: { return -x; }
        case 1u: { return exp(x); }
        case 2u: { return log(x); }
        case 3u: { return sqrt(x); }
        case 4u: { return stable_tanh(x); }
        case 5u: { return powf(x, p.s); }
        case 6u: { return 1.0 / (1.0 + exp(-x)); }
        case 7u: { return abs(x); }
        case 8u: { return sin_cos(x).x; }
        case 9u: { return sin_cos(x).y; }
        default: { return x * p.s; }
    }
}

@compute @workgroup_size(WG)
fn unary(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
         @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i < p.n) {
        out[i] = unary_f(a[i]);
    }
}

// out = g · f'(x), from the input x (binding a) and the output y (binding b).
@compute @workgroup_size(WG)
fn unary_backward(@builtin(workgroup_id) wg: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>,
                  @builtin(local_invocation_index) lid: u32) {
    let i = index(wg, nwg, lid);
    if (i >= p.n) {
        return;
    }
    let x = a[i];
    let y = b[i];
    let gi = g[i];
    switch p.kind {
        case 0u: { out[i] = -gi; }
        case 1u: { out[i] = gi * y; }
        case 2u: { out[i] = gi / x; }
        case 3u: { out[i] = gi * 0.5 / y; }
        case 4u: { out[i] = gi * (1.0 - y * y); }
        case 5u: { out[i] = gi * p.s * powf(x, p.s - 1.0); }
        case 6u: { out[i] = gi * y * (1.0 - y); }
        case 7u: { out[i] = gi * sign(x); }
        case 8u: { out[i] = gi * sin_cos(x).y; }
        case 9u: { out[i] = -(gi * sin_cos(x).x); }
        default: { out[i] = gi * p.s; }
    }
}
