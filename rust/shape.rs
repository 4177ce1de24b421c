//! Shape arithmetic shared by every op and both backends: element counts, strides,
//! broadcasting (the shapes and the strides that read an operand broadcast), negative dims.
//! Below `tensor`, `ops` and `gpu` in the import order (it imports only the error type), so
//! the GPU kernels lay out broadcasts without importing the CPU ops; `tensor` re-exports it.

use crate::error::{Result, TfmError};

pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

/// Size of the last dimension and the number of rows before it (1 for a scalar).
pub fn rows_cols(shape: &[usize]) -> (usize, usize) {
    let cols = shape.last().copied().unwrap_or(1);
    (numel(&shape[..shape.len().saturating_sub(1)]), cols)
}

pub fn shape_str(shape: &[usize]) -> String {
    match shape {
        [d] => format!("({d},)"),
        _ => {
            let parts: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
            format!("({})", parts.join(", "))
        }
    }
}

/// Row-major strides, in elements.
pub fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

/// NumPy broadcasting: shapes are aligned on the right; each pair of sizes must be equal or 1.
pub fn broadcast_shapes(op: &'static str, a: &[usize], b: &[usize]) -> Result<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n {
            a[i + a.len() - n]
        } else {
            1
        };
        let db = if i + b.len() >= n {
            b[i + b.len() - n]
        } else {
            1
        };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(TfmError::shape(
                    op,
                    format!(
                        "shapes {} and {} cannot be broadcast together",
                        shape_str(a),
                        shape_str(b)
                    ),
                ))
            }
        };
    }
    Ok(out)
}

/// Maps a possibly negative dimension index onto `0..ndim`.
pub fn normalize_dim(op: &'static str, dim: isize, ndim: usize) -> Result<usize> {
    let d = if dim < 0 { dim + ndim as isize } else { dim };
    if d < 0 || d >= ndim as isize {
        return Err(TfmError::index(
            op,
            format!("dimension {dim} is out of range for a tensor with {ndim} dimensions"),
        ));
    }
    Ok(d as usize)
}

/// Strides (in elements) for reading a tensor of `shape` as if it had `out_shape`: 0 along
/// dimensions that broadcast.
pub fn broadcast_strides(shape: &[usize], out_shape: &[usize]) -> Vec<usize> {
    let strides = contiguous_strides(shape);
    let offset = out_shape.len() - shape.len();
    (0..out_shape.len())
        .map(|i| {
            if i < offset || shape[i - offset] == 1 {
                0
            } else {
                strides[i - offset]
            }
        })
        .collect()
}

/// Offset into a broadcast operand of the first element of output row `row` (a row is the last
/// dimension of the output).
pub fn row_offset(row: usize, out_shape: &[usize], strides: &[usize]) -> usize {
    let mut rem = row;
    let mut off = 0;
    for d in (0..out_shape.len().saturating_sub(1)).rev() {
        off += (rem % out_shape[d]) * strides[d];
        rem /= out_shape[d];
    }
    off
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_follows_numpy() {
        assert_eq!(
            broadcast_shapes("t", &[2, 1, 3], &[4, 1]).unwrap(),
            vec![2, 4, 3]
        );
        assert_eq!(broadcast_shapes("t", &[], &[5]).unwrap(), vec![5]);
        assert!(broadcast_shapes("t", &[2, 3], &[4]).is_err());
    }

    #[test]
    fn strides_and_dims() {
        assert_eq!(contiguous_strides(&[2, 3, 4]), vec![12, 4, 1]);
        assert_eq!(normalize_dim("t", -1, 3).unwrap(), 2);
        assert!(normalize_dim("t", 3, 3).is_err());
        assert!(normalize_dim("t", -4, 3).is_err());
    }
}
