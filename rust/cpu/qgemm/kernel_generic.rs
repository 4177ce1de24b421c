//! The portable path: one dot product per output, on the weights' rows as they are.

use super::Tile;

/// The store every path makes, for one element: the zero-point correction, then (for a float
/// output) `f32(acc)·(s_i·t_j) + b_j`, a product and a sum.
///
/// # Safety
/// `t`'s pointers are valid for row `r` and column `c` of the tile.
#[inline]
pub(super) unsafe fn store(t: &Tile, r: usize, c: usize, acc: i32) {
    let v = acc.wrapping_sub((*t.a_zeros.add(r)).wrapping_mul(*t.colsum.add(c)));
    if t.is_f32() {
        let mut y = v as f32 * (*t.a_scales.add(r) * *t.w_scales.add(c));
        if !t.bias.is_null() {
            y += *t.bias.add(c);
        }
        *t.out_f32.add(r * t.ldc + c) = y;
    } else {
        *t.out_i32.add(r * t.ldc + c) = v;
    }
}

/// # Safety
/// As [`super::qgemm`] guarantees: `t` lies inside its buffers.
pub(super) unsafe fn tile(t: &Tile) {
    for r in 0..t.rows {
        let a = std::slice::from_raw_parts(t.a.add(r * t.lda), t.kp);
        for c in 0..t.cols {
            let w = std::slice::from_raw_parts(t.b.add(c * t.kp), t.kp);
            let acc = a
                .iter()
                .zip(w)
                .fold(0i32, |s, (&x, &q)| s.wrapping_add(x as i32 * q as i32));
            store(t, r, c, acc);
        }
    }
}
