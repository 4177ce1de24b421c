//! Binding of the hash embedding.

use super::convert::{ids_from_py, var_from_py};
use super::runtime::run;
use super::tensor::PyTensor;
use crate::ops::hash_embedding::{self as he, BucketHash};
use pyo3::prelude::*;

const OP: &str = "hash_embedding";

/// `importance` may be `None` (unit weights); `seed = None` selects the identity hash.
#[pyfunction]
#[pyo3(signature = (input, weight, importance, num_embeddings, num_hashes, seed))]
fn hash_embedding(
    py: Python<'_>,
    input: &Bound<'_, PyAny>,
    weight: &Bound<'_, PyAny>,
    importance: Option<&Bound<'_, PyAny>>,
    num_embeddings: usize,
    num_hashes: usize,
    seed: Option<u64>,
) -> PyResult<PyTensor> {
    let (ids, ids_shape) = ids_from_py(input, OP)?;
    let pool = var_from_py(weight, OP)?;
    let imp = match importance {
        Some(i) if !i.is_none() => Some(var_from_py(i, OP)?),
        _ => None,
    };
    let hash = seed.map_or(BucketHash::Identity, BucketHash::Seeded);
    let y = run(py, || {
        he::hash_embedding(
            &ids,
            &ids_shape,
            &pool,
            imp.as_ref(),
            num_embeddings,
            num_hashes,
            hash,
        )
    })?;
    Ok(PyTensor::wrap(y))
}

pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(hash_embedding, m)?)?;
    Ok(())
}
