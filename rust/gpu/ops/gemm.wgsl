// Tiled GEMM: C (batch, M, N) = alpha · op(A) · op(B) + beta · C, all row-major, where
// op(A) (M, K) is A (M, K) or, with trans_a, Aᵀ of A stored (K, M); op(B) (K, N) is B (K, N)
// or, with trans_b, Bᵀ of B stored (N, K). A batch stride of 0 broadcasts an operand.
//
// Each workgroup of 16×16 invocations computes a 128×128 tile of C, stepping through K in
// slices of 8: both operands' slices are staged in workgroup memory (A transposed, so that
// both are read along M and N), then each invocation accumulates an 8×8 register block. The
// block's rows are {4·ty + i, 64 + 4·ty + i} and its columns {4·tx + j, 64 + 4·tx + j}
// (i, j < 4): adjacent invocations read adjacent vec4s of the staged tiles, with no bank
// conflicts. Loads past M, N or K read zeros; stores past M or N are skipped, so any sizes
// work (1, 3, 17, 127, …).

struct Params {
    m: u32,
    n: u32,
    k: u32,
    trans_a: u32,
    trans_b: u32,
    stride_a: u32,
    stride_b: u32,
    stride_c: u32,
    alpha: f32,
    beta: f32,
    batch0: u32,
    _pad: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> c: array<f32>;

const BM: u32 = 128u;
const BN: u32 = 128u;
const BK: u32 = 8u;

// As[k · 32 + m / 4][m % 4] = op(A)[row0 + m, k0 + k]; Bs likewise along N.
var<workgroup> As: array<vec4<f32>, 256>;
var<workgroup> Bs: array<vec4<f32>, 256>;

fn load_a(base: u32, row: u32, kk: u32) -> f32 {
    if (row >= p.m || kk >= p.k) {
        return 0.0;
    }
    if (p.trans_a != 0u) {
        return a[base + kk * p.m + row];
    }
    return a[base + row * p.k + kk];
}

fn load_b(base: u32, kk: u32, col: u32) -> f32 {
    if (kk >= p.k || col >= p.n) {
        return 0.0;
    }
    if (p.trans_b != 0u) {
        return b[base + col * p.k + kk];
    }
    return b[base + kk * p.n + col];
}

@compute @workgroup_size(16, 16)
fn gemm(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_id) lid3: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let batch = wg.z + p.batch0;
    let base_a = batch * p.stride_a;
    let base_b = batch * p.stride_b;
    let base_c = batch * p.stride_c;
    let row0 = wg.y * BM;
    let col0 = wg.x * BN;
    let tx = lid3.x;
    let ty = lid3.y;

    var acc: array<vec4<f32>, 16>;
    for (var i = 0u; i < 16u; i++) {
        acc[i] = vec4<f32>(0.0);
    }

    for (var k0 = 0u; k0 < p.k; k0 += BK) {
        // Stage the slices: 1024 values of each operand, 4 per invocation, read along the
        // operand's contiguous dimension.
        if (p.trans_a != 0u) {
            let kk = t / 32u;
            let mq = (t % 32u) * 4u;
            As[kk * 32u + mq / 4u] = vec4<f32>(
                load_a(base_a, row0 + mq, k0 + kk),
                load_a(base_a, row0 + mq + 1u, k0 + kk),
                load_a(base_a, row0 + mq + 2u, k0 + kk),
                load_a(base_a, row0 + mq + 3u, k0 + kk),
            );
        } else {
            let m = t / 2u;
            let kq = (t % 2u) * 4u;
            for (var i = 0u; i < 4u; i++) {
                As[(kq + i) * 32u + m / 4u][m % 4u] = load_a(base_a, row0 + m, k0 + kq + i);
            }
        }
        if (p.trans_b != 0u) {
            let n = t / 2u;
            let kq = (t % 2u) * 4u;
            for (var i = 0u; i < 4u; i++) {
                Bs[(kq + i) * 32u + n / 4u][n % 4u] = load_b(base_b, k0 + kq + i, col0 + n);
            }
        } else {
            let kk = t / 32u;
            let nq = (t % 32u) * 4u;
            Bs[kk * 32u + nq / 4u] = vec4<f32>(
                load_b(base_b, k0 + kk, col0 + nq),
                load_b(base_b, k0 + kk, col0 + nq + 1u),
                load_b(base_b, k0 + kk, col0 + nq + 2u),
                load_b(base_b, k0 + kk, col0 + nq + 3u),
            );
        }
        workgroupBarrier();
        for (var kk = 0u; kk < BK; kk++) {
            let a0 = As[kk * 32u + ty];
            let a1 = As[kk * 32u + 16u + ty];
            let b0 = Bs[kk * 32u + tx];
            let b1 = Bs[kk * 32u + 16u + tx];
            for (var i = 0u; i < 4u; i++) {
                acc[2u * i] = fma(vec4<f32>(a0[i]), b0, acc[2u * i]);
                acc[2u * i + 1u] = fma(vec4<f32>(a0[i]), b1, acc[2u * i + 1u]);
                acc[8u + 2u * i] = fma(vec4<f32>(a1[i]), b0, acc[8u + 2u * i]);
                acc[8u + 2u * i + 1u] = fma(vec4<f32>(a1[i]), b1, acc[8u + 2u * i + 1u]);
            }
        }
        workgroupBarrier();
    }

    for (var r = 0u; r < 8u; r++) {
        let row = row0 + (r / 4u) * 64u + ty * 4u + r % 4u;
        if (row >= p.m) {
            continue;
        }
        for (var h = 0u; h < 2u; h++) {
            let v = acc[(r / 4u) * 8u + 2u * (r % 4u) + h];
            for (var j = 0u; j < 4u; j++) {
                let col = col0 + h * 64u + tx * 4u + j;
                if (col < p.n) {
                    let idx = base_c + row * p.n + col;
                    var out = p.alpha * v[j];
                    if (p.beta != 0.0) {
                        out += p.beta * c[idx];
                    }
                    c[idx] = out;
                }
            }
        }
    }
}
