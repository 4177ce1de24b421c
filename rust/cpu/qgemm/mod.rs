//! Integer matrix multiply for int8 inference: `C = dequant(A_u8 · W_s8ᵀ)` with `A` an `m×k`
//! matrix of activations quantized per row at run time and `W` an `n×k` weight matrix quantized
//! per output channel beforehand.
//!
//! Activations are asymmetric u8: `x ≈ s_i·(a − z_i)`, the range `[min(x,0), max(x,0)]` mapped
//! onto `0..=255` (zero is exact, and a ReLU output uses all 256 levels). Weights are symmetric
//! s8: `w ≈ t_j·q` with `t_j = max|w_j|/127`. Then
//! `Σ_k x·w ≈ s_i·t_j·(Σ_k a·q − z_i·Σ_k q)`: the integer product and the zero-point term (the
//! column sums of `q`, computed when packing), as oneDNN and CTranslate2 compensate theirs.
//! The store fuses that correction, the scales and the bias: `C = f32(acc − z_i·c_j)·(s_i·t_j) + b_j`
//! (a product then a sum, never an FMA, so that every path rounds alike).
//!
//! Paths, chosen at run time from the float GEMM's instruction set ([`QIsa::active`]):
//! - `kernel_vnni`: AVX-512 VNNI `vpdpbusd`, four u8×s8 products per 32-bit lane, exact in i32
//!   (the non-saturating form), 12×32 tiles;
//! - `kernel_avx2`: `vpmaddwd` on operands widened to 16 bits (weights stored widened,
//!   activations widened once per product), two products per lane, which cannot saturate
//!   (|255·128·2| < 2³¹; `vpmaddubsw` on bytes could), 6×16;
//! - `kernel_generic`: portable Rust.
//!
//! Every path computes the same integers, so they agree bit for bit, and a row's results do not
//! depend on the other rows (batch invariance, as the float GEMM). `tests.rs` checks each path
//! the CPU runs against an i32 reference and the portable path.

#[cfg(target_arch = "x86_64")]
mod kernel_avx2;
mod kernel_generic;
#[cfg(target_arch = "x86_64")]
mod kernel_vnni;
#[cfg(test)]
mod tests;

use crate::cpu::features::{active_isa, Isa};
use crate::cpu::pool::{self, SendPtr};
use crate::error::{Result, TfmError};
use rayon::prelude::*;
use std::ops::Range;

const OP: &str = "quantized_linear";

/// The integer GEMM's instruction-set paths.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QIsa {
    Generic,
    Avx2,
    Vnni,
}

impl QIsa {
    pub const ALL: [QIsa; 3] = [QIsa::Vnni, QIsa::Avx2, QIsa::Generic];

    pub fn name(self) -> &'static str {
        match self {
            QIsa::Generic => "generic",
            QIsa::Avx2 => "avx2",
            QIsa::Vnni => "avx512-vnni",
        }
    }

    pub fn is_supported(self) -> bool {
        match self {
            QIsa::Generic => true,
            #[cfg(target_arch = "x86_64")]
            QIsa::Avx2 => is_x86_feature_detected!("avx2"),
            #[cfg(target_arch = "x86_64")]
            QIsa::Vnni => {
                is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The path matching the float GEMM's ([`active_isa`], so `TFM_RS_ISA` and `set_isa` steer
    /// both): AVX-512 with VNNI takes `vpdpbusd`, AVX-512 without it or AVX2 the 16-bit path.
    pub fn active() -> QIsa {
        match active_isa() {
            Isa::Avx512 if QIsa::Vnni.is_supported() => QIsa::Vnni,
            Isa::Avx512 | Isa::Avx2 if QIsa::Avx2.is_supported() => QIsa::Avx2,
            _ => QIsa::Generic,
        }
    }

    /// Rows and columns of one tile.
    fn tile(self) -> (usize, usize) {
        match self {
            QIsa::Vnni => (12, 32),
            QIsa::Avx2 => (6, 16),
            QIsa::Generic => (4, 16),
        }
    }
}

/// `k` rounded up to a multiple of 4: the row stride of quantized activations and the depth of
/// packed weights (the padding multiplies zero weights).
pub fn padded_depth(k: usize) -> usize {
    k.div_ceil(4) * 4
}

/// The row stride of quantized activations: [`padded_depth`], plus one cache line where that is
/// a multiple of 512 bytes, whose rows would otherwise fall into the same few L1 sets (a tile
/// reads 12 rows at once).
pub fn row_stride(k: usize) -> usize {
    let kp = padded_depth(k);
    if kp.is_multiple_of(512) {
        kp + 64
    } else {
        kp
    }
}

/// Round half to even, as `numpy.rint`, for |x| < 2²²: adding and removing 1.5·2²³ leaves the
/// sum's rounding (to nearest, ties to even) to the FPU, in a form that vectorizes without SSE4.1.
#[inline]
fn rint(x: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0;
    (x + MAGIC) - MAGIC
}

/// Activations quantized per row: `data (rows, lda)` u8 with `lda = row_stride(k)`,
/// `x[i][q] ≈ scales[i]·(data[i][q] − zeros[i])`.
#[derive(Clone, Debug)]
pub struct QuantizedRows {
    pub data: Vec<u8>,
    pub rows: usize,
    pub k: usize,
    pub lda: usize,
    pub scales: Vec<f32>,
    pub zeros: Vec<i32>,
}

/// The scale and zero point of one row, and its quantized values written into `out`:
/// `clamp(rint(x·(1/s)) + z, 0, 255)`, the product by the reciprocal in f32 (a reference must
/// do the same to agree to the last bit), clamped before rounding so that `rint` stays exact.
fn quantize_row(x: &[f32], out: &mut [u8]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    if QIsa::active() == QIsa::Vnni {
        // SAFETY: the VNNI path implies AVX-512 F and BW.
        return unsafe { kernel_vnni::quantize_row(x, out) };
    }
    quantize_row_portable(x, out)
}

fn quantize_row_portable(x: &[f32], out: &mut [u8]) -> (f32, i32) {
    let (lo, hi) = x
        .iter()
        .fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let (scale, inv, zero) = row_params(lo, hi);
    for (o, &v) in out.iter_mut().zip(x) {
        *o = (rint((v * inv).clamp(-512.0, 512.0)) + zero as f32).clamp(0.0, 255.0) as u8;
    }
    (scale, zero)
}

/// A row's scale, its reciprocal and its zero point, from the row's range `[lo, hi]` ∋ 0.
fn row_params(lo: f32, hi: f32) -> (f32, f32, i32) {
    let scale = if hi > lo { (hi - lo) / 255.0 } else { 1.0 };
    let inv = 1.0 / scale;
    (scale, inv, rint((-lo * inv).clamp(0.0, 255.0)) as i32)
}

/// Quantizes `x (rows, k)` row by row (in parallel when large). Errors on NaN or infinity,
/// which have no integer image.
pub fn quantize_rows(x: &[f32], rows: usize, k: usize) -> Result<QuantizedRows> {
    if x.len() != rows * k {
        return Err(TfmError::shape(
            OP,
            format!("{} activations for ({rows}, {k})", x.len()),
        ));
    }
    if x.iter().any(|v| !v.is_finite()) {
        return Err(TfmError::non_finite(
            OP,
            "the input holds NaN or infinity, which int8 cannot represent",
        ));
    }
    let lda = row_stride(k);
    let mut data = vec![0u8; rows * lda];
    let mut params = vec![(0.0f32, 0i32); rows];
    if rows > 0 && k > 0 {
        type Item<'a> = ((&'a mut [u8], &'a mut (f32, i32)), &'a [f32]);
        let body = |((o, p), xr): Item<'_>| *p = quantize_row(xr, o);
        if rows * k >= 1 << 16 && pool::threads() > 1 {
            pool::parallel(|| {
                data.par_chunks_mut(lda)
                    .zip(params.par_iter_mut())
                    .zip(x.par_chunks(k))
                    .for_each(body)
            });
        } else {
            data.chunks_mut(lda)
                .zip(params.iter_mut())
                .zip(x.chunks(k))
                .for_each(body);
        }
    } else {
        params.fill((1.0, 0));
    }
    Ok(QuantizedRows {
        data,
        rows,
        k,
        lda,
        scales: params.iter().map(|p| p.0).collect(),
        zeros: params.iter().map(|p| p.1).collect(),
    })
}

/// A weight matrix `(rows, cols)` = `(out, in)` in int8 with one symmetric scale per row
/// (output channel): `w[j][q] ≈ scales[j]·data[j][q]`.
#[derive(Clone, Debug)]
pub struct QuantizedMatrix {
    pub data: Vec<i8>,
    pub rows: usize,
    pub cols: usize,
    pub scales: Vec<f32>,
}

impl QuantizedMatrix {
    /// Quantizes `w (rows, cols)`: `scale = max|w_j|/127` (1 for a zero row), values rounded
    /// half to even into −127..=127.
    pub fn quantize(w: &[f32], rows: usize, cols: usize) -> Result<QuantizedMatrix> {
        if w.len() != rows * cols {
            return Err(TfmError::shape(
                OP,
                format!("{} weights for ({rows}, {cols})", w.len()),
            ));
        }
        if w.iter().any(|v| !v.is_finite()) {
            return Err(TfmError::non_finite(
                OP,
                "the weight holds NaN or infinity, which int8 cannot represent",
            ));
        }
        let mut data = vec![0i8; rows * cols];
        let mut scales = vec![1.0f32; rows];
        for ((wr, qr), s) in w
            .chunks(cols.max(1))
            .zip(data.chunks_mut(cols.max(1)))
            .zip(scales.iter_mut())
        {
            let max = wr.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            if max > 0.0 {
                *s = max / 127.0;
            }
            for (q, &v) in qr.iter_mut().zip(wr) {
                *q = rint((v / *s).clamp(-127.0, 127.0)) as i8;
            }
        }
        Self::from_parts(data, rows, cols, scales)
    }

    /// Checks and wraps stored values (a checkpoint's): any i8, positive finite scales.
    pub fn from_parts(
        data: Vec<i8>,
        rows: usize,
        cols: usize,
        scales: Vec<f32>,
    ) -> Result<QuantizedMatrix> {
        if rows.checked_mul(cols) != Some(data.len()) || scales.len() != rows {
            return Err(TfmError::shape(
                OP,
                format!(
                    "int8 weight of {} values with {} scales, expected ({rows}, {cols}) and ({rows},)",
                    data.len(),
                    scales.len()
                ),
            ));
        }
        if let Some(s) = scales.iter().find(|s| !(s.is_finite() && **s > 0.0)) {
            return Err(TfmError::value(
                OP,
                format!("weight scales must be positive and finite, got {s}"),
            ));
        }
        Ok(QuantizedMatrix {
            data,
            rows,
            cols,
            scales,
        })
    }

    /// `scales[j]·data[j][q]` as f32.
    pub fn dequantize(&self) -> Vec<f32> {
        self.data
            .chunks(self.cols.max(1))
            .zip(&self.scales)
            .flat_map(|(r, &s)| r.iter().map(move |&q| q as f32 * s))
            .collect()
    }
}

/// Output rows `rows` of a [`QuantizedMatrix`] (all, or q alone / k and v of a stacked
/// attention projection), packed once for a path's kernel, with their column sums and scales
/// (both padded with zeros to whole tiles).
pub struct PackedQB {
    isa: QIsa,
    k: usize,
    n: usize,
    data: Vec<i8>,
    colsum: Vec<i32>,
    scales: Vec<f32>,
}

impl PackedQB {
    /// Packs for the active path.
    pub fn new(w: &QuantizedMatrix, rows: Range<usize>) -> PackedQB {
        Self::with_isa(QIsa::active(), w, rows)
    }

    /// Packs for `isa`. Panics if `rows` is out of range.
    pub fn with_isa(isa: QIsa, w: &QuantizedMatrix, rows: Range<usize>) -> PackedQB {
        assert!(rows.end <= w.rows && rows.start <= rows.end);
        let (k, n) = (w.cols, rows.len());
        let kp = padded_depth(k);
        let (_, nr) = isa.tile();
        let np = n.div_ceil(nr) * nr;
        let row = |j: usize| &w.data[(rows.start + j) * k..][..k];
        let mut colsum = vec![0i32; np];
        let mut scales = vec![0.0f32; np];
        for j in 0..n {
            colsum[j] = row(j).iter().map(|&q| q as i32).sum();
            scales[j] = w.scales[rows.start + j];
        }
        let data = match isa {
            // Panels of `nr` columns; within one, groups of 4 depths, each column's 4 bytes
            // together (a `vpdpbusd` lane).
            QIsa::Vnni => {
                let mut d = vec![0i8; np * kp];
                for j in 0..n {
                    let (p, c) = (j / nr, j % nr);
                    for (q, &v) in row(j).iter().enumerate() {
                        d[p * kp * nr + (q / 4) * 4 * nr + c * 4 + q % 4] = v;
                    }
                }
                d
            }
            // Panels of `nr` columns; within one, pairs of depths, each column's pair as two
            // little-endian i16 (a `vpmaddwd` lane).
            QIsa::Avx2 => {
                let mut d = vec![0i8; np * kp * 2];
                for j in 0..n {
                    let (p, c) = (j / nr, j % nr);
                    for (q, &v) in row(j).iter().enumerate() {
                        let at = 2 * (p * kp * nr + (q / 2) * 2 * nr + c * 2 + q % 2);
                        let [lo, hi] = (v as i16).to_le_bytes();
                        d[at] = lo as i8;
                        d[at + 1] = hi as i8;
                    }
                }
                d
            }
            // The rows as they are, each padded to `kp`.
            QIsa::Generic => {
                let mut d = vec![0i8; np * kp];
                for j in 0..n {
                    d[j * kp..][..k].copy_from_slice(row(j));
                }
                d
            }
        };
        PackedQB {
            isa,
            k,
            n,
            data,
            colsum,
            scales,
        }
    }

    pub fn isa(&self) -> QIsa {
        self.isa
    }

    /// `(k, n)`: the depth and the number of output columns.
    pub fn shape(&self) -> (usize, usize) {
        (self.k, self.n)
    }
}

/// Where a product goes: the raw corrected integers `Σ a·q − z_i·c_j` (tests), or the
/// dequantized f32 with an optional bias. Row-major with `n` columns.
pub enum Output<'a> {
    I32(&'a mut [i32]),
    F32 {
        c: &'a mut [f32],
        bias: Option<&'a [f32]>,
    },
}

/// What a kernel needs to compute and store one tile: rows `rows` of `A` from `a`, one panel of
/// `B`, and the store's pointers already offset to the tile.
pub(crate) struct Tile {
    /// The activations' first row: `u8`, or for the AVX2 path `i16` (see [`widen`]); `lda` is
    /// counted in those elements.
    pub a: *const u8,
    pub lda: usize,
    pub rows: usize,
    /// Valid columns (≤ the tile width; the panel is zero-padded beyond).
    pub cols: usize,
    pub kp: usize,
    pub b: *const i8,
    pub a_scales: *const f32,
    pub a_zeros: *const i32,
    pub colsum: *const i32,
    pub w_scales: *const f32,
    pub bias: *const f32,
    pub out_i32: *mut i32,
    pub out_f32: *mut f32,
    pub ldc: usize,
}

/// Which store a tile makes.
impl Tile {
    #[inline]
    pub fn is_f32(&self) -> bool {
        !self.out_f32.is_null()
    }
}

/// `p + at`, or null for null.
fn offset<T>(p: *mut T, at: usize) -> *mut T {
    if p.is_null() {
        p
    } else {
        p.wrapping_add(at)
    }
}

/// `a`'s rows as `i16`, `kp` to a row (the padding is zero), for the AVX2 kernel: widening once
/// costs `m·k` against the product's `m·n·k`, and lets the kernel broadcast a pair of
/// activations with one load instead of assembling it from two bytes for every tile.
fn widen(a: &QuantizedRows, kp: usize) -> Vec<i16> {
    let mut w = vec![0i16; a.rows * kp];
    for (wr, ar) in w.chunks_mut(kp.max(1)).zip(a.data.chunks(a.lda.max(1))) {
        wr.iter_mut()
            .zip(&ar[..kp])
            .for_each(|(w, &v)| *w = v as i16);
    }
    w
}

/// Multiply-adds below which threads do not pay.
const PARALLEL_MIN_MACS: usize = 1 << 18;
/// Tiles of rows of `A` one job covers at most, so that they stay in cache while the job's
/// panels of `B` stream past.
const BLOCK_TILES: usize = 8;

/// `a (m×k) · bᵀ` into `out (m×n)`; `parallel` uses the thread pool.
///
/// Errors when the shapes disagree; panics if this CPU cannot run `b`'s path.
pub fn qgemm(a: &QuantizedRows, b: &PackedQB, out: Output, parallel: bool) -> Result<()> {
    assert!(
        b.isa.is_supported(),
        "qgemm: this CPU cannot run the {} path",
        b.isa.name()
    );
    let (m, n) = (a.rows, b.n);
    let len = m * n;
    if a.k != b.k || a.lda < padded_depth(a.k) || a.data.len() != m * a.lda {
        return Err(TfmError::shape(
            OP,
            format!(
                "activations (rows {m}, depth {}) against weights of depth {}",
                a.k, b.k
            ),
        ));
    }
    let (out_i32, out_f32, bias) = match out {
        Output::I32(c) if c.len() == len => (c.as_mut_ptr(), std::ptr::null_mut(), None),
        Output::F32 { c, bias } if c.len() == len && bias.is_none_or(|b| b.len() == n) => {
            (std::ptr::null_mut(), c.as_mut_ptr(), bias)
        }
        _ => {
            return Err(TfmError::shape(
                OP,
                format!("output or bias does not fit ({m}, {n})"),
            ))
        }
    };
    if m == 0 || n == 0 {
        return Ok(());
    }
    let (mr, nr) = b.isa.tile();
    let kp = padded_depth(b.k);
    let panels = n.div_ceil(nr);
    let threads = if parallel { pool::threads().max(1) } else { 1 };
    // Row blocks of near-equal tile counts, as many as a multiple of the threads where there
    // are enough tiles: 43 tiles on 2 threads make 6 blocks of 7–8 tiles, not 5 of 8 and one
    // of 3, which left a thread idle for a fifth of the product.
    let tiles = m.div_ceil(mr);
    let mut blocks = tiles.div_ceil(BLOCK_TILES);
    if blocks > threads {
        blocks = blocks.next_multiple_of(threads).min(tiles);
    }
    let block_rows =
        |b: usize| (b * tiles / blocks * mr).min(m)..((b + 1) * tiles / blocks * mr).min(m);
    // Enough jobs for every thread, each a block of rows times a run of panels.
    let per_job = if threads > 1 && m * n * b.k >= PARALLEL_MIN_MACS {
        panels.div_ceil((2 * threads).div_ceil(blocks)).max(1)
    } else {
        panels
    };
    let runs = panels.div_ceil(per_job);
    let widened = (b.isa == QIsa::Avx2).then(|| widen(a, kp));
    let (o32, of32) = (SendPtr(out_i32), SendPtr(out_f32));
    let bias_ptr = SendPtr(bias.map_or(std::ptr::null_mut(), |b| b.as_ptr() as *mut f32));
    let job = |j: usize| {
        let (block, run) = (j / runs, j % runs);
        let rows = block_rows(block);
        for p in run * per_job..((run + 1) * per_job).min(panels) {
            let c0 = p * nr;
            let cols = nr.min(n - c0);
            for r0 in rows.clone().step_by(mr) {
                let at = r0 * n + c0;
                let (a_rows, lda) = match &widened {
                    Some(w) => (w[r0 * kp..].as_ptr().cast::<u8>(), kp),
                    None => (a.data[r0 * a.lda..].as_ptr(), a.lda),
                };
                let tile = Tile {
                    a: a_rows,
                    lda,
                    rows: mr.min(rows.end - r0),
                    cols,
                    kp,
                    b: b.data[p * nr * kp * if b.isa == QIsa::Avx2 { 2 } else { 1 }..].as_ptr(),
                    a_scales: a.scales[r0..].as_ptr(),
                    a_zeros: a.zeros[r0..].as_ptr(),
                    colsum: b.colsum[c0..].as_ptr(),
                    w_scales: b.scales[c0..].as_ptr(),
                    // SAFETY (the three offsets): c0 < n, the bias's length; `at` < m·n, the
                    // output's (both checked above).
                    bias: offset(bias_ptr.get(), c0).cast_const(),
                    out_i32: offset(o32.get(), at),
                    out_f32: offset(of32.get(), at),
                    ldc: n,
                };
                // SAFETY: the path is supported (asserted); the tile lies inside `a`, the
                // packed panel, the padded sums and scales, and the output (shapes checked).
                unsafe {
                    match b.isa {
                        #[cfg(target_arch = "x86_64")]
                        QIsa::Vnni => kernel_vnni::tile(&tile),
                        #[cfg(target_arch = "x86_64")]
                        QIsa::Avx2 => kernel_avx2::tile(&tile),
                        _ => kernel_generic::tile(&tile),
                    }
                }
            }
        }
    };
    let jobs = blocks * runs;
    if threads > 1 && jobs > 1 && m * n * b.k >= PARALLEL_MIN_MACS {
        pool::parallel(|| (0..jobs).into_par_iter().for_each(job));
    } else {
        (0..jobs).for_each(job);
    }
    Ok(())
}

/// `x (m×k) · Wᵀ + bias` for `W` packed beforehand: quantizes `x` per row, then [`qgemm`].
pub fn quantized_matmul(
    x: &[f32],
    m: usize,
    b: &PackedQB,
    bias: Option<&[f32]>,
    parallel: bool,
) -> Result<Vec<f32>> {
    let a = quantize_rows(x, m, b.k)?;
    // From the op-output pool: qgemm writes every element, and a fresh buffer the size of a
    // layer's output is a new mapping that page-faults on every call.
    let mut c = crate::cpu::alloc::output(m * b.n);
    qgemm(&a, b, Output::F32 { c: &mut c, bias }, parallel)?;
    Ok(c)
}
