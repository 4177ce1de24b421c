//! Embedding lookup on the GPU, with the semantics of [`crate::ops::embedding`]: `ids (n,)`,
//! `weight (V, D)` → `(n, D)`; the backward gives `dweight (V, D)`, summed per row in position
//! order (a gather over each id's positions, deterministic; see `embedding.wgsl`), with no
//! gradient for the padding row.

use super::check_len;
use super::gemm::u32_of;
use crate::error::{Result, TfmError};
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::pipeline::{grid_elems, launch, shader, Arg};
use crate::gpu::GpuTensor;

const OP: &str = "gpu embedding";
shader!(EMBEDDING, "embedding.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    d: u32,
    padding: u32,
}

/// Checks every id against `0..v` and converts them to the shader's u32.
pub fn checked_ids(ids: &[i64], v: usize) -> Result<Vec<u32>> {
    u32_of(OP, "the vocabulary", v)?;
    match ids.iter().position(|&id| id < 0 || id as u64 >= v as u64) {
        Some(i) => Err(TfmError::index(
            OP,
            format!("id {} at position {i} is out of range for an embedding of {v} rows (ids must lie in [0, {v}))", ids[i]),
        )),
        None => Ok(ids.iter().map(|&id| id as u32).collect()),
    }
}

/// `out[i] ← weight[ids[i]]`: `out (n, D)`, `ids (n,)` u32 (each below V), `weight (V, D)`.
pub fn forward(out: &GpuBuffer, ids: &GpuBuffer, weight: &GpuBuffer, d: usize) -> Result<()> {
    let n = ids.len();
    check_len(OP, "out", out.len(), n * d)?;
    if d == 0 || !weight.len().is_multiple_of(d) {
        return Err(TfmError::shape(
            OP,
            format!(
                "a weight of {} values is not a table of rows of {d}",
                weight.len()
            ),
        ));
    }
    let p = Params {
        rows: u32_of(OP, "n × D", n * d).map(|_| n as u32)?,
        d: d as u32,
        padding: u32::MAX,
    };
    launch(
        OP,
        &EMBEDDING,
        "forward",
        &p,
        &[Arg::In(ids), Arg::In(ids), Arg::In(weight), Arg::Out(out)],
        grid_elems(n * d),
    )
}

/// Positions grouped by id: `(start (V + 1,), order (n,))`, positions of id `k` being
/// `order[start[k] .. start[k + 1]]` in ascending order (a counting sort, as the CPU op).
pub fn group_by_id(ids: &[u32], v: usize) -> (Vec<u32>, Vec<u32>) {
    let mut start = vec![0u32; v + 1];
    ids.iter().for_each(|&id| start[id as usize + 1] += 1);
    for k in 0..v {
        start[k + 1] += start[k];
    }
    let mut next = start.clone();
    let mut order = vec![0u32; ids.len()];
    for (i, &id) in ids.iter().enumerate() {
        order[next[id as usize] as usize] = i as u32;
        next[id as usize] += 1;
    }
    (start, order)
}

/// `dweight (V, D) ← Σ_{i: ids[i] = v} g[i]` from [`group_by_id`]'s `start` and `order` and
/// `g (n, D)`; row `padding` stays zero.
pub fn backward(
    dweight: &GpuBuffer,
    g: &GpuBuffer,
    start: &GpuBuffer,
    order: &GpuBuffer,
    d: usize,
    padding: Option<usize>,
) -> Result<()> {
    let v = start.len().saturating_sub(1);
    check_len(OP, "dweight", dweight.len(), v * d)?;
    check_len(OP, "g", g.len(), order.len() * d)?;
    let p = Params {
        rows: u32_of(OP, "V × D", v * d).map(|_| v as u32)?,
        d: d as u32,
        padding: padding.map_or(u32::MAX, |p| p as u32),
    };
    launch(
        OP,
        &EMBEDDING,
        "backward",
        &p,
        &[
            Arg::In(start),
            Arg::In(order),
            Arg::In(g),
            Arg::Out(dweight),
        ],
        grid_elems(v * d),
    )
}

/// Rows `ids` (each below V, checked by [`crate::ops::embedding`]) of the GPU tensor
/// `weight (V, D)`: `(n, D)`.
pub fn forward_tensor(ids: &[usize], weight: &GpuTensor) -> Result<GpuTensor> {
    let d = weight.shape()[1];
    let out = GpuTensor::zeros(&[ids.len(), d])?;
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    forward(
        out.buffer(),
        &GpuBuffer::from_slice(&ids)?,
        weight.buffer(),
        d,
    )?;
    Ok(out)
}

/// The gradient `(V, D)` of the weight from `g (n, D)` on the GPU for the same `ids`; row
/// `padding` stays zero.
pub fn backward_tensor(
    g: &GpuTensor,
    ids: &[usize],
    v: usize,
    padding: Option<usize>,
) -> Result<GpuTensor> {
    let d = g.shape().last().copied().unwrap_or(1);
    let dw = GpuTensor::zeros(&[v, d])?;
    let ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
    let (start, order) = group_by_id(&ids, v);
    let (start, order) = (
        GpuBuffer::from_slice(&start)?,
        GpuBuffer::from_slice(&order)?,
    );
    backward(dw.buffer(), g.buffer(), &start, &order, d, padding)?;
    Ok(dw)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::buffer::{download, upload};
    use crate::gpu::tests::require_gpu;
    use crate::ops::embedding::{embedding_backward, embedding_forward};
    use crate::ops::test_support::rand_vec;

    /// `forward` from and to the host; checks the ids.
    fn forward_host(ids: &[i64], weight: &[f32], d: usize) -> Result<Vec<f32>> {
        let v = weight.len().checked_div(d).unwrap_or(0);
        let ids = checked_ids(ids, v)?;
        let out = GpuBuffer::zeros(ids.len() * d)?;
        forward(&out, &GpuBuffer::from_slice(&ids)?, &upload(weight)?, d)?;
        download(&out)
    }

    /// `backward` from and to the host: `dweight (v, d)`; `padding` a row index in `[0, v)`.
    fn backward_host(
        g: &[f32],
        ids: &[i64],
        v: usize,
        d: usize,
        padding: Option<usize>,
    ) -> Result<Vec<f32>> {
        let ids = checked_ids(ids, v)?;
        let (start, order) = group_by_id(&ids, v);
        let dw = GpuBuffer::zeros(v * d)?;
        backward(
            &dw,
            &upload(g)?,
            &GpuBuffer::from_slice(&start)?,
            &GpuBuffer::from_slice(&order)?,
            d,
            padding,
        )?;
        download(&dw)
    }

    #[test]
    fn embedding_matches_cpu_exactly() {
        if !require_gpu("embedding") {
            return;
        }
        for (i, &(n, v, d, pad)) in [
            (1, 1, 1, None),
            (37, 5, 3, Some(2)),
            (300, 50, 17, Some(0)),
            (5, 100, 64, None),
        ]
        .iter()
        .enumerate()
        {
            let ids: Vec<i64> = (0..n).map(|k| ((k * 7 + i * 3) % v) as i64).collect();
            let w = rand_vec(i as u64, v * d, -1.0, 1.0);
            let g = rand_vec(i as u64 + 1, n * d, -1.0, 1.0);
            let rows: Vec<usize> = ids.iter().map(|&x| x as usize).collect();
            assert_eq!(
                forward_host(&ids, &w, d).unwrap(),
                embedding_forward(&rows, &w, d)
            );
            assert_eq!(
                backward_host(&g, &ids, v, d, pad).unwrap(),
                embedding_backward(&g, &rows, v, d, pad)
            );
        }
        let err = forward_host(&[0, 3], &[0.0; 6], 2).unwrap_err();
        assert_eq!(err.kind, crate::error::ErrorKind::Index);
    }
}
