//! Embedding lookup: rows of a weight table gathered by integer id.
//!
//! Forward: `ids (ids_shape)`, `weight (V, D)` → `(ids_shape…, D)`. Saves the ids (as row
//! indices) and the table's shape. Backward scatter-adds the output gradient into a `(V, D)`
//! gradient; rows are grouped by id first (a counting sort that keeps position order), so each
//! gradient row is summed by one task in a fixed order: deterministic, whatever the thread
//! count. The `padding_idx` row gets no gradient, as in PyTorch.

use super::rows::{for_each_row, rows_mut};
use crate::autograd::{Backward, Var};
use crate::ensure_shape;
use crate::error::{Result, TfmError};
use crate::tensor::{contiguous_strides, numel, shape_str, Placed, Tensor};

const OP: &str = "embedding";

/// The multi-dimensional position of flat index `flat` in `shape`, as `(i, j, …)`.
fn position(flat: usize, shape: &[usize]) -> String {
    let parts: Vec<String> = contiguous_strides(shape)
        .iter()
        .zip(shape)
        .map(|(&s, &n)| (flat / s % n).to_string())
        .collect();
    format!("({})", parts.join(", "))
}

/// Checks every id against `0..v` before any work, returning them as row indices.
fn row_indices(ids: &[i64], ids_shape: &[usize], v: usize) -> Result<Vec<usize>> {
    ensure_shape!(
        ids.len() == numel(ids_shape),
        OP,
        "{} ids cannot fill the ids' shape {}",
        ids.len(),
        shape_str(ids_shape)
    );
    if let Some(bad) = ids.iter().position(|&id| id < 0 || id as u64 >= v as u64) {
        return Err(TfmError::index(
            OP,
            format!(
                "id {} at position {} is out of range for an embedding of {v} rows (ids must lie in [0, {v}))",
                ids[bad],
                position(bad, ids_shape)
            ),
        ));
    }
    Ok(ids.iter().map(|&id| id as usize).collect())
}

/// PyTorch's `padding_idx`: in `[-V, V)`, negative values counting back from `V`.
fn padding_row(padding_idx: Option<i64>, v: usize) -> Result<Option<usize>> {
    let Some(p) = padding_idx else {
        return Ok(None);
    };
    let v_i = v as i64;
    if !(-v_i..v_i).contains(&p) {
        return Err(TfmError::index(
            OP,
            format!("padding_idx {p} is out of range for an embedding of {v} rows (it must lie in [-{v}, {v}))"),
        ));
    }
    Ok(Some(if p < 0 { p + v_i } else { p } as usize))
}

/// Forward kernel: `ids (n,)` (valid row indices), `weight (V, D)` → `(n, D)`.
pub fn embedding_forward(ids: &[usize], weight: &[f32], d: usize) -> Vec<f32> {
    let mut out = crate::cpu::alloc::output(ids.len() * d);
    for_each_row(rows_mut(&mut out, ids.len(), d), d, |i, o| {
        o.copy_from_slice(&weight[ids[i] * d..][..d])
    });
    out
}

/// Backward kernel: `g (n, D)` → `dweight (V, D)` with `dweight[v] = Σ_{i: ids[i] = v} g[i]`,
/// summed in position order; the `padding` row stays zero.
pub fn embedding_backward(
    g: &[f32],
    ids: &[usize],
    v: usize,
    d: usize,
    padding: Option<usize>,
) -> Vec<f32> {
    // Counting sort of positions by id: positions of id `k` are `order[start[k]..start[k + 1]]`,
    // ascending.
    let mut start = vec![0usize; v + 1];
    ids.iter().for_each(|&id| start[id + 1] += 1);
    for k in 0..v {
        start[k + 1] += start[k];
    }
    let mut next = start.clone();
    let mut order = vec![0usize; ids.len()];
    for (i, &id) in ids.iter().enumerate() {
        order[next[id]] = i;
        next[id] += 1;
    }
    let mut dw = crate::cpu::alloc::zeros(v * d);
    // Average work per row: D for zeroing plus D per occurrence.
    let cost = d * (1 + ids.len() / v.max(1));
    for_each_row(rows_mut(&mut dw, v, d), cost, |k, row| {
        if Some(k) == padding {
            return;
        }
        for &i in &order[start[k]..start[k + 1]] {
            row.iter_mut()
                .zip(&g[i * d..][..d])
                .for_each(|(a, &b)| *a += b);
        }
    });
    dw
}

struct EmbeddingBackward {
    ids: Vec<usize>,
    v: usize,
    d: usize,
    padding: Option<usize>,
}

impl Backward for EmbeddingBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn backward(&self, g: &Tensor, _inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let dw = match Tensor::place(OP, [g])? {
            Placed::Cpu([g]) => Tensor::new(
                embedding_backward(g.data(), &self.ids, self.v, self.d, self.padding),
                &[self.v, self.d],
            )?,
            #[cfg(feature = "wgpu")]
            Placed::Gpu([g]) => {
                crate::gpu::ops::embedding::backward_tensor(g, &self.ids, self.v, self.padding)?
                    .into()
            }
        };
        Ok(vec![Some(dw)])
    }
}

/// Looks up `ids` (flat, row-major, of shape `ids_shape`) in `weight (V, D)`. Every id must lie
/// in `[0, V)`; `padding_idx` (in `[-V, V)`) names a row that receives no gradient.
pub fn embedding(
    ids: &[i64],
    ids_shape: &[usize],
    weight: &Var,
    padding_idx: Option<i64>,
) -> Result<Var> {
    let w = weight.value();
    ensure_shape!(
        w.ndim() == 2,
        OP,
        "the weight must be 2-D (V, D), got shape {}",
        shape_str(w.shape())
    );
    let (v, d) = (w.shape()[0], w.shape()[1]);
    let rows = row_indices(ids, ids_shape, v)?;
    let padding = padding_row(padding_idx, v)?;
    let out_shape: Vec<usize> = ids_shape.iter().copied().chain([d]).collect();
    let out = match Tensor::place(OP, [&w])? {
        Placed::Cpu([w]) => Tensor::new(embedding_forward(&rows, w.data(), d), &out_shape)?,
        #[cfg(feature = "wgpu")]
        Placed::Gpu([w]) => Tensor::from(crate::gpu::ops::embedding::forward_tensor(&rows, w)?)
            .reshape(&out_shape)?,
    };
    Ok(Var::from_op(
        out,
        vec![weight.clone()],
        EmbeddingBackward {
            ids: rows,
            v,
            d,
            padding,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::ops::test_support::*;

    /// f64 reference: a plain gather.
    fn reference(ids: &[i64], w: &[f64], d: usize) -> Vec<f64> {
        ids.iter()
            .flat_map(|&id| w[id as usize * d..][..d].to_vec())
            .collect()
    }

    /// Ids in `[0, v)` from the test generator, with repeats.
    fn rand_ids(seed: u64, n: usize, v: usize) -> Vec<i64> {
        rand_vec(seed, n, 0.0, v as f32)
            .into_iter()
            .map(|x| (x as i64).min(v as i64 - 1))
            .collect()
    }

    /// The gather is exact; the weight gradient vs finite differences of the reference
    /// (a sum of f32 values in position order: 1e-5 relative).
    #[test]
    fn matches_reference_on_odd_shapes() {
        let mut seed = 0;
        for ids_shape in [vec![1], vec![3], vec![17], vec![3, 17]] {
            for &(v, d) in &[(1usize, 3usize), (7, 1), (7, 17), (5, 127)] {
                seed += 3;
                let n = numel(&ids_shape);
                let ids = rand_ids(seed, n, v);
                let wd = rand_vec(seed + 1, v * d, -1.0, 1.0);
                let w = leaf(wd.clone(), &[v, d]);
                let y = embedding(&ids, &ids_shape, &w, None).unwrap();
                let w64 = to_f64(&wd);
                assert_eq!(
                    y.shape(),
                    ids_shape.iter().copied().chain([d]).collect::<Vec<_>>()
                );
                assert_close(
                    "forward",
                    y.value().data(),
                    &reference(&ids, &w64, d),
                    0.0,
                    0.0,
                );
                let g = rand_vec(seed + 2, n * d, -1.0, 1.0);
                let g64 = to_f64(&g);
                let fd = finite_diff(&w64, 1e-3, |p| dot(&g64, &reference(&ids, p, d)));
                assert_close("dweight", &grads(&y, &g, &[&w])[0], &fd, 1e-5, 1e-6);
            }
        }
    }

    #[test]
    fn padding_row_gets_no_gradient() {
        let ids = [0i64, 2, 2, 1, 2];
        for padding_idx in [2i64, -1] {
            let w = leaf((0..6).map(|v| v as f32).collect(), &[3, 2]);
            let y = embedding(&ids, &[5], &w, Some(padding_idx)).unwrap();
            // The forward still reads the padding row.
            assert_eq!(&y.value().data()[2..4], &[4.0, 5.0]);
            let dw = &grads(&y, &[1.0; 10], &[&w])[0];
            assert_eq!(dw, &vec![1.0, 1.0, 1.0, 1.0, 0.0, 0.0]);
        }
    }

    #[test]
    fn out_of_range_ids_are_named() {
        let w = leaf(vec![0.0; 8], &[4, 2]);
        for (bad, pos) in [(4i64, "(1, 0)"), (-1, "(1, 0)")] {
            let err = embedding(&[0, 1, bad, 3], &[2, 2], &w, None).err().unwrap();
            assert_eq!(err.kind, ErrorKind::Index);
            for part in [format!("id {bad}"), pos.to_string(), "4 rows".to_string()] {
                assert!(err.msg.contains(&part), "{} lacks {part}", err.msg);
            }
        }
        for p in [4i64, -5] {
            assert_eq!(
                embedding(&[0], &[1], &w, Some(p)).err().unwrap().kind,
                ErrorKind::Index
            );
        }
        assert_eq!(
            embedding(&[0, 1], &[3], &w, None).err().unwrap().kind,
            ErrorKind::Shape
        );
        assert_eq!(
            embedding(&[0], &[1], &leaf(vec![0.0; 4], &[4]), None)
                .err()
                .unwrap()
                .kind,
            ErrorKind::Shape
        );
    }

    #[test]
    fn empty_ids_give_empty_output_and_zero_gradient() {
        let w = leaf(vec![1.0; 6], &[3, 2]);
        let y = embedding(&[], &[2, 0], &w, None).unwrap();
        assert_eq!(y.shape(), vec![2, 0, 2]);
        assert_eq!(grads(&y, &[], &[&w])[0], vec![0.0; 6]);
    }

    #[test]
    fn gradient_does_not_depend_on_thread_count() {
        let (n, v, d) = (5000, 300, 64);
        let ids: Vec<usize> = rand_ids(1, n, v).into_iter().map(|i| i as usize).collect();
        let g = rand_vec(2, n * d, -1.0, 1.0);
        let one = with_threads(1, || embedding_backward(&g, &ids, v, d, Some(3)));
        let two = with_threads(2, || embedding_backward(&g, &ids, v, d, Some(3)));
        assert_eq!(one, two);
    }
}
