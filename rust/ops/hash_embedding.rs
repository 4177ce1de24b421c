//! Hash embeddings (Svenstrup, Hansson and Winther, 2017): each id takes `k` rows of a shared
//! pool of `B` bucket vectors, chosen by `k` fixed hash functions, and sums them weighted by the
//! id's learned importance weights.
//!
//! Forward: `ids (ids_shape)`, `pool (B, D)`, optional `importance (V, k)` (all ones when
//! absent) → `(ids_shape…, D)`, `out[p] = Σ_i importance[id_p, i] · pool[h_i(id_p)]`.
//! Backward: `dpool[b] = Σ_{(p, i): h_i(id_p) = b} importance[id_p, i] · g[p]` (pairs grouped by
//! bucket first, as the embedding's backward groups by id, so each bucket row is summed by one
//! task in position order) and `dimportance[v, i] = Σ_{p: id_p = v} g[p] · pool[h_i(v)]`
//! (scattered in position order). Deterministic whatever the thread count.
//!
//! The hashes are a fixed integer mix (splitmix64's finalizer) of the id and a per-function key
//! derived from the seed: the same buckets on every run and platform, unlike a language's
//! built-in hash.

use super::rows::{for_each_row, rows_mut};
use crate::autograd::{Backward, Var};
use crate::error::{Result, TfmError};
use crate::tensor::{numel, shape_str, Device, Tensor};
use crate::{ensure_shape, ensure_value};

const OP: &str = "hash_embedding";

/// How ids map to buckets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketHash {
    /// `k` hash functions keyed by the seed.
    Seeded(u64),
    /// `h_i(id) = id mod B` for every `i`: with `k = 1` and `B ≥ V`, a plain embedding table
    /// (the baseline and the test oracle).
    Identity,
}

/// splitmix64's output function: a bijection on `u64` whose output bits each depend on every
/// input bit.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The bucket of `id` under hash function `i` of `hash`, in `[0, buckets)`.
pub fn bucket(hash: BucketHash, id: u64, i: usize, buckets: usize) -> usize {
    match hash {
        BucketHash::Identity => (id % buckets as u64) as usize,
        BucketHash::Seeded(seed) => {
            let key = mix64(seed.wrapping_add((i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)));
            (mix64(id ^ key) % buckets as u64) as usize
        }
    }
}

/// The buckets `(n, k)` of every id.
fn buckets_of(ids: &[usize], k: usize, hash: BucketHash, b: usize) -> Vec<usize> {
    ids.iter()
        .flat_map(|&id| (0..k).map(move |i| bucket(hash, id as u64, i, b)))
        .collect()
}

/// Forward kernel: `ids (n,)`, their buckets `(n, k)`, `pool (B, D)`, optional
/// `importance (V, k)` → `(n, D)`.
pub fn hash_embedding_forward(
    ids: &[usize],
    buckets: &[usize],
    k: usize,
    pool: &[f32],
    importance: Option<&[f32]>,
    d: usize,
) -> Vec<f32> {
    let mut out = crate::cpu::alloc::zeros(ids.len() * d);
    for_each_row(rows_mut(&mut out, ids.len(), d), k * d, |p, o| {
        for i in 0..k {
            let w = importance.map_or(1.0, |imp| imp[ids[p] * k + i]);
            let row = &pool[buckets[p * k + i] * d..][..d];
            o.iter_mut().zip(row).for_each(|(a, &r)| *a += w * r);
        }
    });
    out
}

/// Backward kernel: `g (n, D)` → `dpool (B, D)` and, with importance weights, `dimportance
/// (V, k)`.
#[allow(clippy::too_many_arguments)]
pub fn hash_embedding_backward(
    g: &[f32],
    ids: &[usize],
    buckets: &[usize],
    k: usize,
    pool: &[f32],
    importance: Option<&[f32]>,
    (b, d): (usize, usize),
    v: usize,
) -> (Vec<f32>, Option<Vec<f32>>) {
    // Counting sort of the (position, hash) pairs by bucket, keeping pair order.
    let mut start = vec![0usize; b + 1];
    buckets.iter().for_each(|&bk| start[bk + 1] += 1);
    for j in 0..b {
        start[j + 1] += start[j];
    }
    let mut next = start.clone();
    let mut order = vec![0usize; buckets.len()];
    for (pair, &bk) in buckets.iter().enumerate() {
        order[next[bk]] = pair;
        next[bk] += 1;
    }
    let mut dpool = crate::cpu::alloc::zeros(b * d);
    let cost = d * (1 + buckets.len() / b.max(1));
    for_each_row(rows_mut(&mut dpool, b, d), cost, |bk, row| {
        for &pair in &order[start[bk]..start[bk + 1]] {
            let p = pair / k;
            let w = importance.map_or(1.0, |imp| imp[ids[p] * k + pair % k]);
            row.iter_mut()
                .zip(&g[p * d..][..d])
                .for_each(|(a, &gv)| *a += w * gv);
        }
    });
    let dimportance = importance.map(|_| {
        // Dot products per pair in parallel, then a scatter in pair order.
        let mut dots = vec![0.0f32; buckets.len()];
        for_each_row(rows_mut(&mut dots, ids.len(), k), k * d, |p, out| {
            for (i, o) in out.iter_mut().enumerate() {
                let row = &pool[buckets[p * k + i] * d..][..d];
                *o = g[p * d..][..d]
                    .iter()
                    .zip(row)
                    .map(|(&a, &r)| a as f64 * r as f64)
                    .sum::<f64>() as f32;
            }
        });
        let mut di = vec![0.0f32; v * k];
        for (pair, &dv) in dots.iter().enumerate() {
            di[ids[pair / k] * k + pair % k] += dv;
        }
        di
    });
    (dpool, dimportance)
}

struct HashEmbeddingBackward {
    ids: Vec<usize>,
    buckets: Vec<usize>,
    k: usize,
    pool: Tensor,
    importance: Option<Tensor>,
}

impl Backward for HashEmbeddingBackward {
    fn name(&self) -> &'static str {
        OP
    }
    fn backward(&self, g: &Tensor, inputs: &[Var]) -> Result<Vec<Option<Tensor>>> {
        let (b, d) = (self.pool.shape()[0], self.pool.shape()[1]);
        let v = self.importance.as_ref().map_or(0, |t| t.shape()[0]);
        let (dpool, dimp) = hash_embedding_backward(
            g.cpu(OP)?.data(),
            &self.ids,
            &self.buckets,
            self.k,
            self.pool.cpu(OP)?.data(),
            Tensor::cpu_opt(OP, self.importance.as_ref())?,
            (b, d),
            v,
        );
        let mut grads = vec![Some(Tensor::new(dpool, &[b, d])?)];
        if let Some(di) = dimp {
            grads.push(Some(Tensor::new(di, &[v, self.k])?));
        }
        grads.resize(inputs.len(), None);
        Ok(grads)
    }
}

/// Looks up `ids` (flat, row-major, of shape `ids_shape`, each in `[0, num_embeddings)`) through
/// `num_hashes` hashes into `pool (B, D)`, weighted by `importance (num_embeddings, num_hashes)`
/// when given.
pub fn hash_embedding(
    ids: &[i64],
    ids_shape: &[usize],
    pool: &Var,
    importance: Option<&Var>,
    num_embeddings: usize,
    num_hashes: usize,
    hash: BucketHash,
) -> Result<Var> {
    let pv = pool.value();
    ensure_shape!(
        pv.ndim() == 2,
        OP,
        "the bucket pool must be 2-D (num_buckets, D), got shape {}",
        shape_str(pv.shape())
    );
    let (b, d) = (pv.shape()[0], pv.shape()[1]);
    ensure_value!(b > 0, OP, "num_buckets must be positive, got 0");
    ensure_value!(num_hashes > 0, OP, "num_hashes must be positive, got 0");
    ensure_value!(
        num_embeddings > 0,
        OP,
        "num_embeddings must be positive, got 0"
    );
    let iv = importance.map(Var::value);
    if let Some(t) = &iv {
        ensure_shape!(
            t.shape() == [num_embeddings, num_hashes],
            OP,
            "the importance weights have shape {}, expected ({num_embeddings}, {num_hashes})",
            shape_str(t.shape())
        );
    }
    ensure_shape!(
        ids.len() == numel(ids_shape),
        OP,
        "{} ids cannot fill the ids' shape {}",
        ids.len(),
        shape_str(ids_shape)
    );
    if let Some(&bad) = ids
        .iter()
        .find(|&&id| id < 0 || id as u64 >= num_embeddings as u64)
    {
        return Err(TfmError::index(
            OP,
            format!("id {bad} is out of range for num_embeddings={num_embeddings} (ids must lie in [0, {num_embeddings}))"),
        ));
    }
    let inputs: Vec<Var> = [Some(pool), importance]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if Device::common(OP, inputs.iter().map(Var::device))? != Device::Cpu {
        return Err(TfmError::device(
            OP,
            "hash embedding has no GPU kernel yet; run it on the CPU",
        ));
    }
    let rows: Vec<usize> = ids.iter().map(|&id| id as usize).collect();
    let buckets = buckets_of(&rows, num_hashes, hash, b);
    let out = hash_embedding_forward(
        &rows,
        &buckets,
        num_hashes,
        pv.cpu(OP)?.data(),
        Tensor::cpu_opt(OP, iv.as_ref())?,
        d,
    );
    let out_shape: Vec<usize> = ids_shape.iter().copied().chain([d]).collect();
    Ok(Var::from_op(
        Tensor::new(out, &out_shape)?,
        inputs,
        HashEmbeddingBackward {
            ids: rows,
            buckets,
            k: num_hashes,
            pool: pv,
            importance: iv,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;
    use crate::ops::test_support::*;

    /// f64 reference: the weighted sum of the hashed rows.
    fn reference(
        ids: &[i64],
        pool: &[f64],
        imp: &[f64],
        k: usize,
        d: usize,
        hash: BucketHash,
    ) -> Vec<f64> {
        let b = pool.len() / d;
        let mut out = vec![0.0; ids.len() * d];
        for (p, &id) in ids.iter().enumerate() {
            for i in 0..k {
                let row = bucket(hash, id as u64, i, b);
                for j in 0..d {
                    out[p * d + j] += imp[id as usize * k + i] * pool[row * d + j];
                }
            }
        }
        out
    }

    #[test]
    fn matches_reference_on_odd_shapes() {
        let mut seed = 11;
        for &(v, b, k, d) in &[
            (1usize, 1usize, 1usize, 3usize),
            (7, 3, 2, 1),
            (17, 5, 3, 17),
            (127, 17, 2, 127),
        ] {
            for n in [1usize, 3, 17] {
                seed += 4;
                let ids: Vec<i64> = rand_vec(seed, n, 0.0, v as f32)
                    .iter()
                    .map(|&x| (x as i64).min(v as i64 - 1))
                    .collect();
                let pd = rand_vec(seed + 1, b * d, -1.0, 1.0);
                let id = rand_vec(seed + 2, v * k, -1.0, 1.0);
                let (pool, imp) = (leaf(pd.clone(), &[b, d]), leaf(id.clone(), &[v, k]));
                let hash = BucketHash::Seeded(seed);
                let y = hash_embedding(&ids, &[n], &pool, Some(&imp), v, k, hash).unwrap();
                let (p64, i64_) = (to_f64(&pd), to_f64(&id));
                assert_close(
                    "forward",
                    y.value().data(),
                    &reference(&ids, &p64, &i64_, k, d, hash),
                    1e-6,
                    1e-6,
                );
                let g = rand_vec(seed + 3, n * d, -1.0, 1.0);
                let g64 = to_f64(&g);
                let got = grads(&y, &g, &[&pool, &imp]);
                let fd_pool = finite_diff(&p64, 1e-3, |p| {
                    dot(&g64, &reference(&ids, p, &i64_, k, d, hash))
                });
                assert_close("dpool", &got[0], &fd_pool, 1e-5, 1e-5);
                let fd_imp = finite_diff(&i64_, 1e-3, |q| {
                    dot(&g64, &reference(&ids, &p64, q, k, d, hash))
                });
                assert_close("dimportance", &got[1], &fd_imp, 1e-5, 1e-5);
            }
        }
    }

    /// splitmix64 started at state 0 first yields `mix64(0x9e3779b97f4a7c15)`, a published value.
    #[test]
    fn mix_is_splitmix64() {
        assert_eq!(mix64(0x9e37_79b9_7f4a_7c15), 0xe220_a839_7b1d_cdaf);
    }

    #[test]
    fn hashes_are_fixed_and_spread() {
        // Pinned values: a change to the hash would silently remap every trained model.
        let got: Vec<usize> = (0..4)
            .map(|id| bucket(BucketHash::Seeded(0), id, 0, 1000))
            .collect();
        let again: Vec<usize> = (0..4)
            .map(|id| bucket(BucketHash::Seeded(0), id, 0, 1000))
            .collect();
        assert_eq!(got, again);
        assert_eq!(got, PINNED.to_vec());
        // Different functions of one seed, and different seeds, pick different buckets.
        let f0: Vec<usize> = (0..64)
            .map(|id| bucket(BucketHash::Seeded(0), id, 0, 1 << 20))
            .collect();
        let f1: Vec<usize> = (0..64)
            .map(|id| bucket(BucketHash::Seeded(0), id, 1, 1 << 20))
            .collect();
        let s1: Vec<usize> = (0..64)
            .map(|id| bucket(BucketHash::Seeded(1), id, 0, 1 << 20))
            .collect();
        assert!(f0.iter().zip(&f1).all(|(a, b)| a != b));
        assert!(f0.iter().zip(&s1).all(|(a, b)| a != b));
        // Roughly uniform: 100k ids into 10 buckets, each within 3% of 10k.
        let mut counts = [0usize; 10];
        (0..100_000u64).for_each(|id| counts[bucket(BucketHash::Seeded(7), id, 1, 10)] += 1);
        assert!(
            counts.iter().all(|&c| (9_700..10_300).contains(&c)),
            "{counts:?}"
        );
    }

    const PINNED: [usize; 4] = [871, 807, 745, 819];

    #[test]
    fn gradient_does_not_depend_on_thread_count() {
        let (n, v, b, k, d) = (5000, 300, 64, 2, 64);
        let ids: Vec<usize> = (0..n).map(|i| (i * 7919) % v).collect();
        let buckets = buckets_of(&ids, k, BucketHash::Seeded(3), b);
        let (g, pool, imp) = (
            rand_vec(1, n * d, -1.0, 1.0),
            rand_vec(2, b * d, -1.0, 1.0),
            rand_vec(3, v * k, -1.0, 1.0),
        );
        let run = || hash_embedding_backward(&g, &ids, &buckets, k, &pool, Some(&imp), (b, d), v);
        assert_eq!(with_threads(1, run), with_threads(2, run));
    }

    #[test]
    fn errors() {
        let pool = leaf(vec![0.0; 8], &[4, 2]);
        let kind = |r: Result<Var>| r.err().unwrap().kind;
        let h = BucketHash::Seeded(0);
        assert_eq!(
            kind(hash_embedding(&[5], &[1], &pool, None, 5, 2, h)),
            ErrorKind::Index
        );
        assert_eq!(
            kind(hash_embedding(&[-1], &[1], &pool, None, 5, 2, h)),
            ErrorKind::Index
        );
        assert_eq!(
            kind(hash_embedding(
                &[0],
                &[1],
                &leaf(vec![], &[0, 2]),
                None,
                5,
                2,
                h
            )),
            ErrorKind::Value
        );
        assert_eq!(
            kind(hash_embedding(&[0], &[1], &pool, None, 5, 0, h)),
            ErrorKind::Value
        );
        let imp = leaf(vec![1.0; 5], &[5, 1]);
        assert_eq!(
            kind(hash_embedding(&[0], &[1], &pool, Some(&imp), 5, 2, h)),
            ErrorKind::Shape
        );
        assert_eq!(
            kind(hash_embedding(&[0, 1], &[3], &pool, None, 5, 2, h)),
            ErrorKind::Shape
        );
    }
}
