//! LayerNorm over the last axis on the GPU, with the semantics of [`crate::ops::layer_norm`]:
//! `x (rows, D)`, optional `weight (D,)`, `bias (D,)` → `y (rows, D)`, saving `mean (rows,)`
//! and `rstd (rows,)`; the backward gives `dx (rows, D)` and `dweight`, `dbias` `(D,)`.

use super::gemm::u32_of;
use super::{check_len, check_lens};
use crate::error::Result;
use crate::gpu::buffer::GpuBuffer;
use crate::gpu::pipeline::{grid, grid_elems, launch, shader, Arg};
use crate::gpu::GpuTensor;

const OP: &str = "gpu layer_norm";
shader!(LAYER_NORM, "layer_norm.wgsl");

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    rows: u32,
    d: u32,
    eps: f32,
    has_weight: u32,
    has_bias: u32,
}

fn params(
    rows: usize,
    d: usize,
    eps: f32,
    weight: Option<&GpuBuffer>,
    bias: Option<&GpuBuffer>,
) -> Result<Params> {
    u32_of(OP, "rows × D", rows * d)?;
    if let Some(w) = weight {
        check_len(OP, "weight", w.len(), d)?;
    }
    if let Some(b) = bias {
        check_len(OP, "bias", b.len(), d)?;
    }
    Ok(Params {
        rows: rows as u32,
        d: d as u32,
        eps,
        has_weight: weight.is_some() as u32,
        has_bias: bias.is_some() as u32,
    })
}

/// The forward: writes `y (rows, D)`, `mean (rows,)`, `rstd (rows,)`.
#[allow(clippy::too_many_arguments)]
pub fn forward(
    y: &GpuBuffer,
    mean: &GpuBuffer,
    rstd: &GpuBuffer,
    x: &GpuBuffer,
    weight: Option<&GpuBuffer>,
    bias: Option<&GpuBuffer>,
    rows: usize,
    d: usize,
    eps: f32,
) -> Result<()> {
    check_len(OP, "x", x.len(), rows * d)?;
    check_len(OP, "y", y.len(), rows * d)?;
    check_len(OP, "mean", mean.len(), rows)?;
    check_len(OP, "rstd", rstd.len(), rows)?;
    let p = params(rows, d, eps, weight, bias)?;
    let unused = GpuBuffer::zeros(1)?;
    let args = [
        Arg::In(x),
        Arg::In(weight.unwrap_or(x)),
        Arg::In(bias.unwrap_or(x)),
        Arg::Out(y),
        Arg::Out(mean),
        Arg::Out(rstd),
        Arg::Out(&unused),
    ];
    launch(OP, &LAYER_NORM, "forward", &p, &args, grid(rows))
}

/// The backward for the input: writes `dx (rows, D)` from the output gradient `g (rows, D)`
/// and what the forward took and saved.
#[allow(clippy::too_many_arguments)]
pub fn backward_input(
    dx: &GpuBuffer,
    g: &GpuBuffer,
    x: &GpuBuffer,
    mean: &GpuBuffer,
    rstd: &GpuBuffer,
    weight: Option<&GpuBuffer>,
    rows: usize,
    d: usize,
) -> Result<()> {
    check_lens(
        OP,
        &[
            ("x", x, rows * d),
            ("g", g, rows * d),
            ("dx", dx, rows * d),
            ("mean", mean, rows),
            ("rstd", rstd, rows),
        ],
    )?;
    let p = params(rows, d, 0.0, weight, None)?;
    let unused = GpuBuffer::zeros(1)?;
    let args = [
        Arg::In(x),
        Arg::In(weight.unwrap_or(x)),
        Arg::In(g),
        Arg::Out(dx),
        Arg::Out(mean),
        Arg::Out(rstd),
        Arg::Out(&unused),
    ];
    launch(OP, &LAYER_NORM, "backward_input", &p, &args, grid(rows))
}

/// The backward for the parameters: writes `dweight (D,)` and `dbias (D,)`, each summed over
/// the rows.
#[allow(clippy::too_many_arguments)]
pub fn backward_params(
    dweight: &GpuBuffer,
    dbias: &GpuBuffer,
    g: &GpuBuffer,
    x: &GpuBuffer,
    mean: &GpuBuffer,
    rstd: &GpuBuffer,
    rows: usize,
    d: usize,
) -> Result<()> {
    check_lens(
        OP,
        &[
            ("x", x, rows * d),
            ("g", g, rows * d),
            ("mean", mean, rows),
            ("rstd", rstd, rows),
            ("dweight", dweight, d),
            ("dbias", dbias, d),
        ],
    )?;
    let p = params(rows, d, 0.0, None, None)?;
    let args = [
        Arg::In(x),
        Arg::In(x),
        Arg::In(g),
        Arg::Out(dweight),
        Arg::Out(mean),
        Arg::Out(rstd),
        Arg::Out(dbias),
    ];
    launch(OP, &LAYER_NORM, "backward_params", &p, &args, grid_elems(d))
}

/// [`forward`] on GPU tensors: `s (…, D)` → `(y (…, D), mean (rows,), rstd (rows,))`.
pub(crate) fn forward_tensors(
    s: &GpuTensor,
    weight: Option<&GpuTensor>,
    bias: Option<&GpuTensor>,
    eps: f32,
) -> Result<(GpuTensor, GpuTensor, GpuTensor)> {
    let (rows, d) = s.rows_cols();
    let y = GpuTensor::zeros(s.shape())?;
    let (mean, rstd) = (GpuTensor::zeros(&[rows])?, GpuTensor::zeros(&[rows])?);
    forward(
        y.buffer(),
        mean.buffer(),
        rstd.buffer(),
        s.buffer(),
        weight.map(GpuTensor::buffer),
        bias.map(GpuTensor::buffer),
        rows,
        d,
        eps,
    )?;
    Ok((y, mean, rstd))
}

/// [`backward_input`] on GPU tensors: `ds` shaped as `s`.
pub(crate) fn backward_input_tensor(
    g: &GpuTensor,
    s: &GpuTensor,
    mean: &GpuTensor,
    rstd: &GpuTensor,
    weight: Option<&GpuTensor>,
) -> Result<GpuTensor> {
    let (rows, d) = s.rows_cols();
    let ds = GpuTensor::zeros(s.shape())?;
    backward_input(
        ds.buffer(),
        g.buffer(),
        s.buffer(),
        mean.buffer(),
        rstd.buffer(),
        weight.map(GpuTensor::buffer),
        rows,
        d,
    )?;
    Ok(ds)
}

/// [`backward_params`] on GPU tensors: `(dweight, dbias)`, each `(D,)`.
pub(crate) fn backward_params_tensors(
    g: &GpuTensor,
    s: &GpuTensor,
    mean: &GpuTensor,
    rstd: &GpuTensor,
) -> Result<(GpuTensor, GpuTensor)> {
    let (rows, d) = s.rows_cols();
    let (dw, db) = (GpuTensor::zeros(&[d])?, GpuTensor::zeros(&[d])?);
    backward_params(
        dw.buffer(),
        db.buffer(),
        g.buffer(),
        s.buffer(),
        mean.buffer(),
        rstd.buffer(),
        rows,
        d,
    )?;
    Ok((dw, db))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gpu::buffer::{download, upload};
    use crate::gpu::tests::{assert_rel, require_gpu};
    use crate::ops::layer_norm::{
        layer_norm_backward_input, layer_norm_backward_params, layer_norm_forward,
    };
    use crate::ops::test_support::rand_vec;

    /// What `forward_host` returns: `y (rows, D)`, `mean (rows,)`, `rstd (rows,)`.
    struct LayerNormOutput {
        y: Vec<f32>,
        mean: Vec<f32>,
        rstd: Vec<f32>,
    }

    /// `forward` from and to the host; `x` holds whole rows of `d`.
    fn forward_host(
        x: &[f32],
        weight: Option<&[f32]>,
        bias: Option<&[f32]>,
        d: usize,
        eps: f32,
    ) -> Result<LayerNormOutput> {
        let rows = x.len().checked_div(d).unwrap_or(0);
        let (y, mean, rstd) = (
            GpuBuffer::zeros(x.len())?,
            GpuBuffer::zeros(rows)?,
            GpuBuffer::zeros(rows)?,
        );
        let (w, b) = (
            weight.map(upload).transpose()?,
            bias.map(upload).transpose()?,
        );
        forward(
            &y,
            &mean,
            &rstd,
            &upload(x)?,
            w.as_ref(),
            b.as_ref(),
            rows,
            d,
            eps,
        )?;
        Ok(LayerNormOutput {
            y: download(&y)?,
            mean: download(&mean)?,
            rstd: download(&rstd)?,
        })
    }

    /// `backward_input` and `backward_params` from and to the host: `(dx, dweight, dbias)`.
    fn backward_host(
        g: &[f32],
        x: &[f32],
        mean: &[f32],
        rstd: &[f32],
        weight: Option<&[f32]>,
        d: usize,
    ) -> Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
        let rows = mean.len();
        let (dx, dw, db) = (
            GpuBuffer::zeros(x.len())?,
            GpuBuffer::zeros(d)?,
            GpuBuffer::zeros(d)?,
        );
        let (g, x) = (upload(g)?, upload(x)?);
        let (mean, rstd) = (upload(mean)?, upload(rstd)?);
        let w = weight.map(upload).transpose()?;
        backward_input(&dx, &g, &x, &mean, &rstd, w.as_ref(), rows, d)?;
        backward_params(&dw, &db, &g, &x, &mean, &rstd, rows, d)?;
        Ok((download(&dx)?, download(&dw)?, download(&db)?))
    }

    #[test]
    fn layer_norm_matches_cpu() {
        if !require_gpu("layer_norm") {
            return;
        }
        for (i, &(rows, d)) in [(1, 1), (3, 17), (7, 300), (2, 1030)].iter().enumerate() {
            let s = i as u64 * 10;
            // An offset mean, so that the centered sums matter.
            let x = rand_vec(s, rows * d, 2.0, 4.0);
            let g = rand_vec(s + 1, rows * d, -1.0, 1.0);
            let w = rand_vec(s + 2, d, 0.5, 1.5);
            let b = rand_vec(s + 3, d, -1.0, 1.0);
            for (weight, bias) in [
                (None, None),
                (Some(&w[..]), Some(&b[..])),
                (Some(&w[..]), None),
            ] {
                let want = layer_norm_forward(&x, None, rows, d, weight, bias, 1e-5, true);
                let got = forward_host(&x, weight, bias, d, 1e-5).unwrap();
                let what = format!("{rows}x{d} weight={}", weight.is_some());
                assert_rel(&what, &got.y, &want.y, 1e-4);
                let means: Vec<f32> = want.stats.iter().map(|s| s.mean as f32).collect();
                let rstds: Vec<f32> = want.stats.iter().map(|s| s.rstd as f32).collect();
                assert_rel(&what, &got.mean, &means, 1e-5);
                assert_rel(&what, &got.rstd, &rstds, 1e-4);
                let want_dx = layer_norm_backward_input(&g, &x, &want.stats, d, weight, true);
                let (want_dw, want_db) = layer_norm_backward_params(&g, &x, &want.stats, d);
                let (dx, dw, db) = backward_host(&g, &x, &got.mean, &got.rstd, weight, d).unwrap();
                assert_rel(&what, &dx, &want_dx, 1e-4);
                assert_rel(&what, &dw, &want_dw, 1e-4);
                assert_rel(&what, &db, &want_db, 1e-4);
            }
        }
    }
}
