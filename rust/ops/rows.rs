//! Row-wise building blocks shared by the ops that work one row (last axis) at a time —
//! softmax, LayerNorm, cross-entropy, embedding, dropout, the optimizers: splitting into rows,
//! running rows in parallel without making results depend on the thread count, and fast,
//! accurate row reductions.

pub(crate) use crate::cpu::math::{exp_fast, sigmoid, tanh_fast};
use crate::cpu::pool;
use rayon::prelude::*;

pub(crate) use crate::cpu::pool::PAR_MIN;

/// Whether `n` elements of work are split across threads (in `pool::parallel`).
pub(crate) fn split(n: usize) -> bool {
    n >= PAR_MIN && pool::threads() > 1
}

/// Splits `data` into `rows` rows of `cols` values. Unlike `chunks_mut`, this also works for
/// `cols == 0` (every row is then empty), so ops need no special case for a zero-width axis.
pub(crate) fn rows_mut<T>(data: &mut [T], rows: usize, cols: usize) -> Vec<&mut [T]> {
    if cols == 0 {
        (0..rows).map(|_| <&mut [T]>::default()).collect()
    } else {
        data.chunks_mut(cols).collect()
    }
}

/// Runs `f(i, item)` for every item, each costing about `cost` elements of work, across the
/// thread pool when the total reaches [`PAR_MIN`]. Items are disjoint (rows or chunks of
/// the outputs, zipped with per-row side outputs), and each is handled by exactly one call in a
/// fixed order within it, so results never depend on the thread count.
pub(crate) fn for_each_row<T: Send>(
    items: Vec<T>,
    cost: usize,
    f: impl Fn(usize, T) + Sync + Send,
) {
    if split(items.len().saturating_mul(cost)) {
        pool::parallel(|| {
            items
                .into_par_iter()
                .enumerate()
                .for_each(|(i, item)| f(i, item))
        });
    } else {
        items
            .into_iter()
            .enumerate()
            .for_each(|(i, item)| f(i, item));
    }
}

/// Rows per partial sum of [`column_sums`].
const ROW_CHUNK: usize = 32;

/// Per-column sums in f64 over `rows` rows (LayerNorm's parameter gradients, BatchNorm's
/// statistics and gradients): `add(range, partial)` adds rows `range` (a fixed chunk of
/// [`ROW_CHUNK`], read whole) into a zeroed `partial` of `width` f64, and the chunks' partials are
/// then added in chunk order. Rows are read whole because a walk down 64-column blocks of rows
/// 1-4 KB apart stalled on every row; the fixed chunks keep the result independent of the thread
/// count.
pub(crate) fn column_sums(
    rows: usize,
    width: usize,
    add: impl Fn(std::ops::Range<usize>, &mut [f64]) + Sync + Send,
) -> Vec<f64> {
    let chunks = rows.div_ceil(ROW_CHUNK);
    let mut partial = vec![0.0f64; chunks * width];
    for_each_row(
        rows_mut(&mut partial, chunks, width),
        ROW_CHUNK * width,
        |i, part| add(i * ROW_CHUNK..rows.min((i + 1) * ROW_CHUNK), part),
    );
    let mut total = vec![0.0f64; width];
    for part in partial.chunks_exact(width.max(1)) {
        for (t, &p) in total.iter_mut().zip(part) {
            *t += p;
        }
    }
    total
}

/// Independent accumulators in the row reductions below: a single float accumulator makes each
/// step wait for the previous one (and forbids SIMD sums); explicit lanes do not. 16 f32 lanes
/// fill one AVX-512 register (two AVX2, four SSE ones), and the same lanes on every path keep
/// results identical across instruction sets.
pub(crate) const LANES: usize = 16;

/// Values per block of [`blocked_sum`] and of the one-pass cross-entropy row: 16 per lane, small
/// enough to stay in L1 between a block's passes and to bound f32 rounding in a block's sum.
pub(crate) const BLOCK: usize = 16 * LANES;

/// The largest entry of `z`: NaN if any entry is NaN (so NaN inputs give NaN rows, as in
/// PyTorch), −inf for an empty or all −inf row. `#[inline(always)]`, as all the helpers here,
/// so that a `simd_kernel!` body compiles them with its instruction set.
#[inline(always)]
pub(crate) fn row_max(z: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let mut chunks = z.chunks_exact(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            lanes[k] = max_keep_nan(lanes[k], c[k]);
        }
    }
    let mut m = f32::NEG_INFINITY;
    for &v in chunks.remainder().iter().chain(&lanes) {
        m = max_keep_nan(m, v);
    }
    m
}

/// `z ← x` and [`row_max`]`(x)` in one pass (the same lanes, in the same order, so the same
/// result): the softmax forward's copy of its input row.
#[inline(always)]
pub(crate) fn copy_row_max(x: &[f32], z: &mut [f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; LANES];
    let n = z.len();
    let whole = n / LANES * LANES;
    for (zc, xc) in z[..whole]
        .chunks_exact_mut(LANES)
        .zip(x[..whole].chunks_exact(LANES))
    {
        for k in 0..LANES {
            zc[k] = xc[k];
            lanes[k] = max_keep_nan(lanes[k], xc[k]);
        }
    }
    let mut m = f32::NEG_INFINITY;
    for (zv, &v) in z[whole..].iter_mut().zip(&x[whole..n]) {
        *zv = v;
        m = max_keep_nan(m, v);
    }
    for &v in &lanes {
        m = max_keep_nan(m, v);
    }
    m
}

/// The larger of `m` and `v`, NaN winning (so NaN rows give NaN, as in PyTorch).
#[inline(always)]
fn max_keep_nan(m: f32, v: f32) -> f32 {
    if v > m || v.is_nan() {
        v
    } else {
        m
    }
}

/// `Σ z` in f32 lanes, the lane totals added in f64. Meant for short runs (a [`BLOCK`]).
///
/// The helpers here use `for` loops, not `fold`/`for_each`/`sum` with closures: those iterator
/// methods are separate functions that LLVM may decline to inline into a kernel's trampoline,
/// and would then run at baseline width (profiled: most of the time of a cross-entropy row).
#[inline(always)]
pub(crate) fn lane_sum(z: &[f32]) -> f64 {
    let mut lanes = [0.0f32; LANES];
    let mut chunks = z.chunks_exact(LANES);
    for c in &mut chunks {
        for k in 0..LANES {
            lanes[k] += c[k];
        }
    }
    let mut total = 0.0f64;
    for &v in chunks.remainder().iter().chain(&lanes) {
        total += v as f64;
    }
    total
}

/// `Σ f(z_j)`: blocks of [`BLOCK`] values are mapped into a buffer (a plain loop, which
/// compiles to SIMD code even for a branchy `f`) and summed in f32 lanes, and the block totals
/// in f64, so the rounding error stays at one block's (16 terms per lane) even for 32k-wide
/// rows.
#[inline(always)]
pub(crate) fn blocked_sum(z: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut buf = [0.0f32; BLOCK];
    let mut total = 0.0f64;
    for block in z.chunks(BLOCK) {
        let buf = &mut buf[..block.len()];
        for (b, &v) in buf.iter_mut().zip(block) {
            *b = f(v);
        }
        total += lane_sum(buf);
    }
    total
}

/// `Σ exp(z_j − m)` for `m ≥ max(z)`.
#[inline(always)]
pub(crate) fn exp_sum(z: &[f32], m: f32) -> f64 {
    blocked_sum(z, |v| exp_fast(v - m))
}

/// `[Σ_i f(xs[0][i], …)[0], …, Σ_i f(…)[K-1]]` over `i < xs[0].len()` (the other slices at
/// least as long), each sum in 8 f64 lanes (one AVX-512 register) times [`F64_CHAINS`]
/// independent accumulators: the f64 row statistics of LayerNorm and the softmax backward,
/// vectorized without giving up f64 accumulation. `f` gets values, not indices: indexing the
/// rows inside it kept a bounds check per element, and the loop compiled to scalar code.
#[inline(always)]
pub(crate) fn sums_f64<const M: usize, const K: usize>(
    xs: [&[f32]; M],
    f: impl Fn([f32; M]) -> [f64; K],
) -> [f64; K] {
    const L: usize = 8;
    const BLOCK: usize = L * F64_CHAINS;
    let n = xs.first().map_or(0, |x| x.len());
    let xs = xs.map(|x| &x[..n]);
    let mut acc = [[[0.0f64; L]; K]; F64_CHAINS];
    let whole = n / BLOCK * BLOCK;
    for i in (0..whole).step_by(BLOCK) {
        let block: [&[f32; BLOCK]; M] =
            xs.map(|x| x[i..i + BLOCK].try_into().expect("a whole block"));
        // Lane `l` of chain `c` takes element `c·L + l` of the block: the layout that vectorizes.
        for (c, chain) in acc.iter_mut().enumerate() {
            for l in 0..L {
                let v = f(block.map(|b| b[c * L + l]));
                for k in 0..K {
                    chain[k][l] += v[k];
                }
            }
        }
    }
    let mut out = [0.0f64; K];
    for chain in &acc {
        for (o, lanes) in out.iter_mut().zip(chain) {
            for &v in lanes {
                *o += v;
            }
        }
    }
    for i in whole..n {
        let v = f(xs.map(|x| x[i]));
        for k in 0..K {
            out[k] += v[k];
        }
    }
    out
}

/// Independent accumulators of [`sums_f64`]: with one, every step waits out the previous
/// add's latency.
const F64_CHAINS: usize = 4;

/// `Σ a_i b_i` in [`LANES`] independent accumulators (a single accumulator would make each
/// step wait for the previous one); the same order on every instruction set.
#[inline(always)]
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            lanes[l] += x[l] * y[l];
        }
    }
    let mut s = 0.0;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        s += x * y;
    }
    for l in lanes {
        s += l;
    }
    s
}

/// `y += α·x`.
#[inline(always)]
pub(crate) fn axpy(y: &mut [f32], alpha: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += alpha * x;
    }
}

/// Every `simd_kernel!` row kernel under every instruction set the host supports, against
/// f64 references (the per-op tests cover edge cases on the default path), and bit for bit
/// against the baseline path, as the dispatch promises (no FMA contraction, same lane order).
#[cfg(test)]
mod isa_tests {
    use crate::cpu::simd::for_each_isa;
    use crate::ops::test_support::*;
    use crate::ops::{activation, cross_entropy as ce, dropout, layer_norm as ln, softmax};
    use crate::optim::{adam_step, sgd_step, AdamConfig, SgdConfig};
    use crate::tensor::Tensor;

    /// Outputs of every kernel on odd shapes (remainders of every lane and block loop).
    fn run_all() -> Vec<Vec<f32>> {
        let (n, c) = (5, 1000);
        let x = rand_vec(1, n * c, -8.0, 8.0);
        let xt = Tensor::new(x.clone(), &[n, c]).unwrap();
        let g = rand_vec(2, n * c, -1.0, 1.0);
        let gt = Tensor::new(g.clone(), &[n, c]).unwrap();
        let mut out = Vec::new();
        for log in [false, true] {
            let y = softmax::softmax_forward("softmax", &xt, None, log).unwrap();
            out.push(
                softmax::softmax_backward(&gt, &y, log)
                    .unwrap()
                    .data()
                    .to_vec(),
            );
            out.push(y.data().to_vec());
        }
        let target = [3, -100, 999, 0, 517];
        let cfg = ce::LossConfig {
            ignore_index: -100,
            label_smoothing: 0.1,
        };
        let rows = ce::cross_entropy_forward(&x, &target, c, cfg).unwrap();
        out.push(rows.iter().map(|r| r.loss as f32).collect());
        let lse: Vec<f64> = rows.iter().map(|r| r.lse).collect();
        out.push(ce::cross_entropy_backward(
            &x, &target, &lse, &[0.5; 5], c, cfg,
        ));
        let d = 77;
        let (w, b) = (rand_vec(3, d, 0.5, 1.5), rand_vec(4, d, -1.0, 1.0));
        let f = ln::layer_norm_forward(
            &x[..n * d],
            Some(&g[..n * d]),
            n,
            d,
            Some(&w),
            Some(&b),
            1e-5,
            true,
        );
        let s = f.sum.unwrap();
        out.push(ln::layer_norm_backward_input(
            &g[..n * d],
            &s,
            &f.stats,
            d,
            Some(&w),
            true,
        ));
        let (dw, db) = ln::layer_norm_backward_params(&g[..n * d], &s, &f.stats, d);
        out.extend([f.y, dw, db]);
        out.push(dropout::dropout_apply(&x[..4999], 9, 0.3));
        for kind in [
            activation::ActivationKind::Gelu,
            activation::ActivationKind::GeluTanh,
        ] {
            out.push(
                activation::activation_forward(kind, &xt)
                    .unwrap()
                    .data()
                    .to_vec(),
            );
            out.push(
                activation::activation_backward(kind, &gt, &xt)
                    .unwrap()
                    .data()
                    .to_vec(),
            );
        }
        let (mut p, mut m, mut v) = (x[..999].to_vec(), vec![0.0; 999], vec![0.0; 999]);
        let acfg = AdamConfig {
            lr: 1e-2,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
            decoupled: true,
            amsgrad: false,
            maximize: false,
        };
        adam_step(&mut p, &g[..999], &mut m, &mut v, None, 1, &acfg).unwrap();
        let scfg = SgdConfig {
            lr: 0.1,
            momentum: 0.9,
            dampening: 0.0,
            weight_decay: 0.01,
            nesterov: true,
            maximize: false,
        };
        sgd_step(&mut p, &g[..999], Some(&mut m), false, &scfg).unwrap();
        out.extend([p, m, v]);
        out
    }

    /// f64 references for the row math: softmax, cross-entropy losses, LayerNorm, GELU.
    fn check_against_references(got: &[Vec<f32>]) {
        let (n, c) = (5, 1000);
        let x = to_f64(&rand_vec(1, n * c, -8.0, 8.0));
        let mut soft = Vec::new();
        let mut losses = Vec::new();
        let target = [3i64, -100, 999, 0, 517];
        for (row, &t) in x.chunks(c).zip(&target) {
            let m = row.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + row.iter().map(|v| (v - m).exp()).sum::<f64>().ln();
            soft.extend(row.iter().map(|v| (v - lse).exp()));
            let mean = row.iter().sum::<f64>() / c as f64;
            losses.push(if t < 0 {
                0.0
            } else {
                0.9 * (lse - row[t as usize]) + 0.1 * (lse - mean)
            });
        }
        assert_close("softmax", &got[1], &soft, 1e-5, 1e-7);
        assert_close("cross-entropy loss", &got[4], &losses, 1e-5, 1e-6);
        let gelu: Vec<f64> = x
            .iter()
            .map(|&v| v * 0.5 * (1.0 + libm::erf(v / 2f64.sqrt())))
            .collect();
        assert_close("gelu", &got[11], &gelu, 1e-5, 1e-6);
        let d = 77;
        let g = to_f64(&rand_vec(2, n * c, -1.0, 1.0));
        let (w, b) = (
            to_f64(&rand_vec(3, d, 0.5, 1.5)),
            to_f64(&rand_vec(4, d, -1.0, 1.0)),
        );
        let mut y = Vec::new();
        for r in 0..n {
            let s: Vec<f64> = (0..d).map(|j| x[r * d + j] + g[r * d + j]).collect();
            let mean = s.iter().sum::<f64>() / d as f64;
            let var = s.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / d as f64;
            y.extend((0..d).map(|j| (s[j] - mean) / (var + 1e-5).sqrt() * w[j] + b[j]));
        }
        assert_close("layer_norm", &got[7], &y, 1e-5, 1e-6);
    }

    #[test]
    fn every_supported_instruction_set_matches_the_references_and_the_baseline() {
        let mut outputs = Vec::new();
        for_each_isa(|isa| {
            let got = run_all();
            check_against_references(&got);
            outputs.push((isa, got));
        });
        for pair in outputs.windows(2) {
            let ((a, x), (b, y)) = (&pair[0], &pair[1]);
            assert!(
                x == y,
                "the {} and {} paths differ bit-wise",
                a.name(),
                b.name()
            );
        }
    }
}
