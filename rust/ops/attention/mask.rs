//! Structured attention masks: a description of which keys each query may attend (causal,
//! sliding window, global tokens, key padding, BigBird block-sparse, a dense boolean fallback,
//! and their `&` / `|` compositions) that the fused kernels read per tile instead of as an
//! `L × S` matrix.
//!
//! - [`MaskSpec`]: what the user asked for, before the sizes are known (built by the bindings
//!   from `tfm_rs.masks`).
//! - [`StructuredMask`]: a spec resolved against (batch, L, S), checked. The kernels ask it for
//!   a tile's [`Tile`] class — empty tiles are skipped, full tiles run unmasked — and, for
//!   partial tiles only, for one row of allowed flags at a time, computed from the indices.
//! - [`StructuredMask::reach`]: for a block of queries, the key blocks whose tiles can be
//!   non-empty (and the transpose, for the backward's key-block-major loop), so that the
//!   kernels walk O(T) tiles of a sparse mask instead of classifying all T².
//! - [`StructuredMask::allowed`]: the element-wise predicate, written independently of the
//!   tile and row code, as the oracle of the tests and of [`StructuredMask::explain`]'s counts.
//!
//! Every term's row and tile rules are arithmetic on indices (intervals, sorted index lists,
//! per-sample prefix counts, hashed random blocks), so no term costs memory in `L × S`, except
//! the dense fallback, which is the user's own array, read in place through broadcast strides.

use super::HostMask;
use crate::error::{Result, TfmError};
use crate::tensor::Tensor;

const OP: &str = "scaled_dot_product_attention";

/// Keys per row that [`StructuredMask::row`] fills at a time (the kernels' key block).
pub const ROW: usize = 64;

/// A structured mask before the sizes are known. "Allowed" (True) means the query attends the
/// key, as PyTorch's boolean `attn_mask`.
#[derive(Clone, Debug)]
pub enum MaskSpec {
    /// Query `i` attends key `j ≤ i` (upper-left alignment), or `j ≤ i + S − L` (lower-right:
    /// the last query sees every key, as when L new queries follow S − L cached keys).
    Causal {
        lower_right: bool,
    },
    /// `i − left ≤ j ≤ i + right`, on the same alignment as [`MaskSpec::Causal`].
    Window {
        left: usize,
        right: usize,
        lower_right: bool,
    },
    /// Rows and columns at these indices attend, and are attended, everywhere.
    Global {
        indices: Vec<usize>,
    },
    /// Key `j` of sample `b` takes part iff `valid[b·S + j]`; `samples` rows of S flags. The
    /// sample is the first of the leading (batch) dimensions of q, k, v.
    KeyPadding {
        samples: usize,
        valid: Vec<bool>,
    },
    /// BigBird on blocks of `block` tokens: query block `a` attends key block `b` iff either is
    /// among the first `global` blocks, `|a − b| ≤ window`, or `b` is one of the `random` key
    /// blocks drawn for `a` from `seed` ([`random_block`]; the same in training and evaluation).
    BlockSparse {
        block: usize,
        window: usize,
        global: usize,
        random: usize,
        seed: u64,
    },
    /// A dense mask broadcastable to (…, L, S): 0 where allowed, −∞ where not (booleans as the
    /// bindings convert them). Its values are not added: only whether they are −∞ counts.
    Dense(Tensor),
    And(Box<MaskSpec>, Box<MaskSpec>),
    Or(Box<MaskSpec>, Box<MaskSpec>),
}

/// A tile's class: every pair masked, some masked, none masked. Ordered so that `&` is the
/// minimum of two classes and `|` the maximum (a conservative `Partial` is always correct).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Tile {
    Empty,
    Partial,
    Full,
}

/// Counts over every tile of every sample: allowed pairs and the tiles' classes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MaskStats {
    pub allowed: u64,
    pub full: u64,
    pub partial: u64,
    pub empty: u64,
}

/// The direction of a [`StructuredMask::reach`] question.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Along {
    /// Which key blocks a range of queries may attend (the forward's inner loop).
    Keys,
    /// Which query blocks may attend a range of keys (the backward's inner loop).
    Queries,
}

/// Sorted, disjoint, non-adjacent half-open ranges of block indices.
pub(super) type Spans = Vec<(usize, usize)>;

/// The axis that a [`StructuredMask::reach`] answer indexes: `extent` elements (L or S) in
/// blocks of `width`, the last one short.
#[derive(Clone, Copy)]
struct Grid {
    width: usize,
    extent: usize,
}

impl Grid {
    fn all(self) -> Spans {
        self.span(0, self.extent).into_iter().collect()
    }

    /// The blocks holding elements `lo..hi` that lie on the axis.
    fn span(self, lo: usize, hi: usize) -> Option<(usize, usize)> {
        let hi = hi.min(self.extent);
        (lo < hi).then(|| (lo / self.width, hi.div_ceil(self.width)))
    }
}

/// Spans from ranges in any order, overlapping or touching.
fn merge(mut spans: Spans) -> Spans {
    spans.sort_unstable();
    let mut out: Spans = Vec::with_capacity(spans.len());
    for (lo, hi) in spans {
        match out.last_mut() {
            Some(last) if lo <= last.1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out
}

fn intersect(a: &[(usize, usize)], b: &[(usize, usize)]) -> Spans {
    let (mut x, mut y) = (0, 0);
    let mut out = Vec::new();
    while x < a.len() && y < b.len() {
        let (lo, hi) = (a[x].0.max(b[y].0), a[x].1.min(b[y].1));
        if lo < hi {
            out.push((lo, hi));
        }
        // The range that ends first meets nothing further in the other list.
        if a[x].1 < b[y].1 {
            x += 1;
        } else {
            y += 1;
        }
    }
    out
}

/// A [`MaskSpec`] resolved against the sizes of one call.
pub struct StructuredMask {
    node: Node,
    pub tq: usize,
    pub tk: usize,
}

enum Node {
    /// `lo ≤ j − i ≤ hi`.
    Band {
        lo: i64,
        hi: i64,
    },
    /// Sorted, without duplicates.
    Global(Vec<usize>),
    Keys {
        /// Batch-heads per sample: head `h` reads sample `h / heads_per_sample`.
        heads_per_sample: usize,
        samples: usize,
        tk: usize,
        valid: Vec<bool>,
        /// `prefix[b·(S+1) + j]`: valid keys of sample b before key j.
        prefix: Vec<u32>,
    },
    Blocks {
        block: usize,
        window: usize,
        global: usize,
        random: usize,
        seed: u64,
        key_blocks: usize,
        /// The random draws transposed, for [`Node::reach`] along the queries: the query
        /// blocks that drew key block `kb` are `drawers[drawn[kb]..drawn[kb + 1]]`. Linear in
        /// L; without it the random term would admit every query block.
        drawn: Vec<usize>,
        drawers: Vec<usize>,
    },
    Dense(HostMask),
    And(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
}

/// The `t`-th random key block of query block `qb` (of `key_blocks`): a SplitMix64 hash of the
/// seed and the pair, so that it needs no table and is the same in every call, thread and
/// device. `tfm_rs.masks` computes the same function in NumPy.
pub fn random_block(seed: u64, qb: usize, t: usize, random: usize, key_blocks: usize) -> usize {
    let x = seed.wrapping_add(
        ((qb as u64)
            .wrapping_mul(random as u64)
            .wrapping_add(t as u64)
            .wrapping_add(1))
        .wrapping_mul(0x9E37_79B9_7F4A_7C15),
    );
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % key_blocks.max(1) as u64) as usize
}

impl MaskSpec {
    /// Checks the spec against q, k, v's leading dimensions `batch` and (L, S) = (tq, tk).
    pub fn resolve(&self, batch: &[usize], tq: usize, tk: usize) -> Result<StructuredMask> {
        let bh: usize = batch.iter().product();
        Ok(StructuredMask {
            node: self.node(batch, bh, tq, tk)?,
            tq,
            tk,
        })
    }

    fn node(&self, batch: &[usize], bh: usize, tq: usize, tk: usize) -> Result<Node> {
        let offset = |lower_right: bool| {
            if lower_right {
                tk as i64 - tq as i64
            } else {
                0
            }
        };
        Ok(match self {
            MaskSpec::Causal { lower_right } => Node::Band {
                lo: i64::MIN / 2,
                hi: offset(*lower_right),
            },
            MaskSpec::Window {
                left,
                right,
                lower_right,
            } => {
                let o = offset(*lower_right);
                Node::Band {
                    lo: o - (*left).min(1 << 40) as i64,
                    hi: o + (*right).min(1 << 40) as i64,
                }
            }
            MaskSpec::Global { indices } => {
                if let Some(&bad) = indices.iter().find(|&&g| g >= tq.max(tk)) {
                    return Err(TfmError::index(
                        OP,
                        format!("global token index {bad} is out of range for L = {tq}, S = {tk}"),
                    ));
                }
                let mut sorted = indices.clone();
                sorted.sort_unstable();
                sorted.dedup();
                Node::Global(sorted)
            }
            MaskSpec::KeyPadding { samples, valid } => {
                let samples = *samples;
                if samples == 0 || valid.len() != samples * tk {
                    return Err(TfmError::shape(
                        OP,
                        format!(
                            "key padding mask has {} flags for {samples} sample(s); the keys need (samples, S = {tk})",
                            valid.len()
                        ),
                    ));
                }
                if samples != 1 && batch.first() != Some(&samples) {
                    return Err(TfmError::shape(
                        OP,
                        format!(
                            "key padding mask has {samples} samples but q's leading dimensions are {batch:?}; the first must be {samples} (or the mask have 1 sample)"
                        ),
                    ));
                }
                let mut prefix = Vec::with_capacity(samples * (tk + 1));
                for b in 0..samples {
                    let mut n = 0u32;
                    prefix.push(0);
                    for &ok in &valid[b * tk..(b + 1) * tk] {
                        n += u32::from(ok);
                        prefix.push(n);
                    }
                }
                Node::Keys {
                    heads_per_sample: (bh / samples).max(1),
                    samples,
                    tk,
                    valid: valid.clone(),
                    prefix,
                }
            }
            MaskSpec::BlockSparse {
                block,
                window,
                global,
                random,
                seed,
            } => {
                crate::ensure_value!(*block > 0, OP, "block_sparse: block_size must be positive");
                let key_blocks = tk.div_ceil(*block);
                // Without keys there is nothing to draw (and `random_block` would name block 0).
                let query_blocks = if key_blocks == 0 {
                    0
                } else {
                    tq.div_ceil(*block)
                };
                let draws =
                    |qb| (0..*random).map(move |t| random_block(*seed, qb, t, *random, key_blocks));
                // A counting sort of the (key block, query block) draws by key block.
                let mut drawn = vec![0; key_blocks + 1];
                for kb in (0..query_blocks).flat_map(draws) {
                    drawn[kb + 1] += 1;
                }
                for kb in 0..key_blocks {
                    drawn[kb + 1] += drawn[kb];
                }
                let mut fill = drawn.clone();
                let mut drawers = vec![0; drawn[key_blocks]];
                for qb in 0..query_blocks {
                    for kb in draws(qb) {
                        drawers[fill[kb]] = qb;
                        fill[kb] += 1;
                    }
                }
                Node::Blocks {
                    block: *block,
                    window: *window,
                    global: *global,
                    random: *random,
                    seed: *seed,
                    key_blocks,
                    drawn,
                    drawers,
                }
            }
            MaskSpec::Dense(t) => Node::Dense(HostMask::new(OP, t, batch, tq, tk)?),
            MaskSpec::And(a, b) => Node::And(
                Box::new(a.node(batch, bh, tq, tk)?),
                Box::new(b.node(batch, bh, tq, tk)?),
            ),
            MaskSpec::Or(a, b) => Node::Or(
                Box::new(a.node(batch, bh, tq, tk)?),
                Box::new(b.node(batch, bh, tq, tk)?),
            ),
        })
    }
}

impl StructuredMask {
    /// Whether query `i` attends key `j` in batch-head `head`: the definition, pair by pair.
    pub fn allowed(&self, head: usize, i: usize, j: usize) -> bool {
        self.node.allowed(head, i, j)
    }

    /// The class of the tile of queries `rows` and keys `cols` (half-open, non-empty).
    pub fn tile(&self, head: usize, rows: (usize, usize), cols: (usize, usize)) -> Tile {
        self.node.tile(head, rows, cols)
    }

    /// The blocks of `width` keys that queries `from` may attend ([`Along::Keys`]), or of
    /// `width` queries that may attend keys `from` ([`Along::Queries`]); `from` half-open and
    /// non-empty. Conservative: every tile of `from` against a block outside the spans is
    /// [`Tile::Empty`] by [`StructuredMask::tile`] (and so by [`StructuredMask::allowed`]);
    /// blocks inside may be empty too, for the tile rule to find.
    pub(super) fn reach(
        &self,
        head: usize,
        along: Along,
        from: (usize, usize),
        width: usize,
    ) -> Spans {
        debug_assert!(from.0 < from.1 && width > 0);
        let extent = match along {
            Along::Keys => self.tk,
            Along::Queries => self.tq,
        };
        self.node.reach(head, along, from, Grid { width, extent })
    }

    /// `out[c]` = whether query `i` attends key `j0 + c`, for `c < out.len() ≤ ROW`.
    pub fn row(&self, head: usize, i: usize, j0: usize, out: &mut [bool]) {
        debug_assert!(out.len() <= ROW);
        self.node.row(head, i, j0, out)
    }

    /// Sets the scores of a tile that the mask hides to −∞. `s[r·rs + c·cs]` holds query
    /// `i0 + r` against key `j0 + c` (the layout of `AttentionConfig::mask_block`), `rows` and
    /// `cols` at most [`ROW`]. The flags are gathered first and applied along the contiguous
    /// axis with a select, which vectorizes (a branch per masked score cost more than the
    /// tile's products).
    #[inline(always)]
    pub(super) fn mask_block(
        &self,
        head: usize,
        (i0, rows, rs): (usize, usize, usize),
        (j0, cols, cs): (usize, usize, usize),
        s: &mut [f32],
    ) {
        debug_assert!(rows <= ROW && cols <= ROW);
        let mut ok = [[false; ROW]; ROW];
        for (r, row) in ok.iter_mut().enumerate().take(rows) {
            self.row(head, i0 + r, j0, &mut row[..cols]);
        }
        let select = |x: f32, keep: bool| if keep { x } else { f32::NEG_INFINITY };
        if cs == 1 {
            for (r, row) in ok.iter().enumerate().take(rows) {
                let line = &mut s[r * rs..r * rs + cols];
                line.iter_mut()
                    .zip(&row[..cols])
                    .for_each(|(x, &k)| *x = select(*x, k));
            }
        } else {
            debug_assert_eq!(rs, 1, "mask_block: neither axis is contiguous");
            for c in 0..cols {
                let line = &mut s[c * cs..c * cs + rows];
                line.iter_mut()
                    .enumerate()
                    .for_each(|(r, x)| *x = select(*x, ok[r][c]));
            }
        }
    }

    /// Allowed pairs and tile classes over `heads` batch-heads, with tiles of `tile` queries
    /// by `tile` keys (the kernels': 64).
    pub fn explain(&self, heads: usize, tile: usize) -> MaskStats {
        let tile = tile.max(1);
        let mut stats = MaskStats::default();
        let mut ok = [false; ROW];
        for head in 0..heads {
            for i0 in (0..self.tq).step_by(tile) {
                let i1 = (i0 + tile).min(self.tq);
                // The tiles `reach` leaves out are empty by the tile rule: counted, not visited.
                let spans = self.reach(head, Along::Keys, (i0, i1), tile);
                let visited: usize = spans.iter().map(|(lo, hi)| hi - lo).sum();
                stats.empty += (self.tk.div_ceil(tile) - visited) as u64;
                for j0 in spans
                    .iter()
                    .flat_map(|&(lo, hi)| lo..hi)
                    .map(|jb| jb * tile)
                {
                    let j1 = (j0 + tile).min(self.tk);
                    match self.tile(head, (i0, i1), (j0, j1)) {
                        Tile::Empty => stats.empty += 1,
                        Tile::Full => {
                            stats.full += 1;
                            stats.allowed += ((i1 - i0) * (j1 - j0)) as u64;
                        }
                        Tile::Partial => {
                            stats.partial += 1;
                            for i in i0..i1 {
                                for c0 in (j0..j1).step_by(ROW) {
                                    let n = ROW.min(j1 - c0);
                                    self.row(head, i, c0, &mut ok[..n]);
                                    stats.allowed += ok[..n].iter().filter(|&&a| a).count() as u64;
                                }
                            }
                        }
                    }
                }
            }
        }
        stats
    }
}

/// A key-padding node's running counts of valid keys (`tk + 1` values, from 0) for the sample
/// of batch-head `head`.
fn sample_counts(
    prefix: &[u32],
    (heads_per_sample, samples, tk): (usize, usize, usize),
    head: usize,
) -> &[u32] {
    let s = (head / heads_per_sample) % samples;
    &prefix[s * (tk + 1)..(s + 1) * (tk + 1)]
}

/// How many elements of the sorted `set` lie in `lo..hi`.
fn count_in(set: &[usize], lo: usize, hi: usize) -> usize {
    set.partition_point(|&g| g < hi) - set.partition_point(|&g| g < lo)
}

fn blocks_allowed(
    (window, global, random, seed, key_blocks): (usize, usize, usize, u64, usize),
    qb: usize,
    kb: usize,
) -> bool {
    qb < global
        || kb < global
        || qb.abs_diff(kb) <= window
        || (0..random).any(|t| random_block(seed, qb, t, random, key_blocks) == kb)
}

impl Node {
    fn allowed(&self, head: usize, i: usize, j: usize) -> bool {
        match self {
            Node::Band { lo, hi } => {
                let d = j as i64 - i as i64;
                *lo <= d && d <= *hi
            }
            Node::Global(g) => g.binary_search(&i).is_ok() || g.binary_search(&j).is_ok(),
            Node::Keys {
                heads_per_sample,
                samples,
                tk,
                valid,
                ..
            } => valid[(head / heads_per_sample) % samples * tk + j],
            Node::Blocks {
                block,
                window,
                global,
                random,
                seed,
                key_blocks,
                ..
            } => blocks_allowed(
                (*window, *global, *random, *seed, *key_blocks),
                i / block,
                j / block,
            ),
            Node::Dense(m) => {
                let (v, l) = (m.view(), &m.layout);
                v.data[l.head_offsets[head] + i * l.row_stride + j * l.col_stride]
                    != f32::NEG_INFINITY
            }
            Node::And(a, b) => a.allowed(head, i, j) && b.allowed(head, i, j),
            Node::Or(a, b) => a.allowed(head, i, j) || b.allowed(head, i, j),
        }
    }

    fn tile(&self, head: usize, (i0, i1): (usize, usize), (j0, j1): (usize, usize)) -> Tile {
        match self {
            Node::Band { lo, hi } => {
                // j − i over the tile ranges from j0 − (i1 − 1) to (j1 − 1) − i0.
                let (dmin, dmax) = (j0 as i64 - (i1 as i64 - 1), j1 as i64 - 1 - i0 as i64);
                if dmax < *lo || dmin > *hi {
                    Tile::Empty
                } else if *lo <= dmin && dmax <= *hi {
                    Tile::Full
                } else {
                    Tile::Partial
                }
            }
            Node::Global(g) => {
                let (rows, cols) = (count_in(g, i0, i1), count_in(g, j0, j1));
                if rows == i1 - i0 || cols == j1 - j0 {
                    Tile::Full
                } else if rows == 0 && cols == 0 {
                    Tile::Empty
                } else {
                    Tile::Partial
                }
            }
            Node::Keys {
                heads_per_sample,
                samples,
                tk,
                prefix,
                ..
            } => {
                let p = sample_counts(prefix, (*heads_per_sample, *samples, *tk), head);
                let n = (p[j1] - p[j0]) as usize;
                if n == 0 {
                    Tile::Empty
                } else if n == j1 - j0 {
                    Tile::Full
                } else {
                    Tile::Partial
                }
            }
            Node::Blocks {
                block,
                window,
                global,
                random,
                seed,
                key_blocks,
                ..
            } => {
                let params = (*window, *global, *random, *seed, *key_blocks);
                let (mut any, mut all) = (false, true);
                for qb in i0 / block..=(i1 - 1) / block {
                    for kb in j0 / block..=(j1 - 1) / block {
                        let ok = blocks_allowed(params, qb, kb);
                        any |= ok;
                        all &= ok;
                    }
                }
                match (any, all) {
                    (false, _) => Tile::Empty,
                    (true, true) => Tile::Full,
                    _ => Tile::Partial,
                }
            }
            Node::Dense(_) => Tile::Partial,
            Node::And(a, b) => {
                let t = a.tile(head, (i0, i1), (j0, j1));
                if t == Tile::Empty {
                    t
                } else {
                    t.min(b.tile(head, (i0, i1), (j0, j1)))
                }
            }
            Node::Or(a, b) => {
                let t = a.tile(head, (i0, i1), (j0, j1));
                if t == Tile::Full {
                    t
                } else {
                    t.max(b.tile(head, (i0, i1), (j0, j1)))
                }
            }
        }
    }

    fn reach(&self, head: usize, along: Along, (a0, a1): (usize, usize), grid: Grid) -> Spans {
        match self {
            Node::Band { lo, hi } => {
                // Queries a0..a1 attend keys a0 + lo ..= a1 − 1 + hi; keys a0..a1 are attended by
                // queries a0 − hi ..= a1 − 1 − lo: the same with the band negated.
                let (lo, hi) = match along {
                    Along::Keys => (*lo, *hi),
                    Along::Queries => (-*hi, -*lo),
                };
                let on_axis = |x: i64| x.clamp(0, grid.extent as i64) as usize;
                let (from, to) = (on_axis(a0 as i64 + lo), on_axis(a1 as i64 + hi));
                grid.span(from, to).into_iter().collect()
            }
            Node::Global(g) => {
                if count_in(g, a0, a1) > 0 {
                    return grid.all();
                }
                // The blocks holding global indices, jumping from each to the next block's.
                let mut spans = Vec::new();
                let mut at = 0;
                while at < g.len() && g[at] < grid.extent {
                    let b = g[at] / grid.width;
                    spans.push((b, b + 1));
                    at = g.partition_point(|&x| x < (b + 1) * grid.width);
                }
                merge(spans)
            }
            Node::Keys {
                heads_per_sample,
                samples,
                tk,
                prefix,
                ..
            } => {
                let p = sample_counts(prefix, (*heads_per_sample, *samples, *tk), head);
                match along {
                    // From the first valid key to the last: exact when the valid keys are one run
                    // (padding at either end).
                    Along::Keys => {
                        let n = p[*tk];
                        if n == 0 {
                            return Vec::new();
                        }
                        let first = p.partition_point(|&x| x < 1) - 1;
                        grid.span(first, p.partition_point(|&x| x < n))
                            .into_iter()
                            .collect()
                    }
                    // Every query sees the same keys: all of them see a valid key, or none.
                    Along::Queries if p[a1] > p[a0] => grid.all(),
                    Along::Queries => Vec::new(),
                }
            }
            Node::Blocks {
                block,
                window,
                global,
                random,
                seed,
                key_blocks,
                drawn,
                drawers,
            } => {
                // The rule is symmetric in (query block, key block) but for the random draws.
                let (b0, b1) = (a0 / block, (a1 - 1) / block);
                if b0 < *global {
                    return grid.all();
                }
                let blocks = |lo: usize, hi: usize| {
                    grid.span(lo.saturating_mul(*block), hi.saturating_mul(*block))
                };
                let near = (
                    b0.saturating_sub(*window),
                    b1.saturating_add(*window).saturating_add(1),
                );
                let mut spans: Spans = [(0, *global), near]
                    .into_iter()
                    .filter_map(|(lo, hi)| blocks(lo, hi))
                    .collect();
                let one = |b: usize| blocks(b, b + 1);
                match along {
                    Along::Keys => spans.extend(
                        (b0..=b1)
                            .flat_map(|qb| {
                                (0..*random)
                                    .map(move |t| random_block(*seed, qb, t, *random, *key_blocks))
                            })
                            .filter_map(one),
                    ),
                    // The draws are grouped by key block: those of b0..=b1 are one slice.
                    Along::Queries => spans.extend(
                        drawers[drawn[b0]..drawn[b1 + 1]]
                            .iter()
                            .filter_map(|&b| one(b)),
                    ),
                }
                merge(spans)
            }
            Node::Dense(_) => grid.all(),
            Node::And(a, b) => {
                let spans = a.reach(head, along, (a0, a1), grid);
                if spans.is_empty() {
                    spans
                } else {
                    intersect(&spans, &b.reach(head, along, (a0, a1), grid))
                }
            }
            Node::Or(a, b) => {
                let mut spans = a.reach(head, along, (a0, a1), grid);
                if spans != grid.all() {
                    spans.extend(b.reach(head, along, (a0, a1), grid));
                }
                merge(spans)
            }
        }
    }

    fn row(&self, head: usize, i: usize, j0: usize, out: &mut [bool]) {
        let n = out.len();
        match self {
            Node::Band { lo, hi } => {
                // Allowed c: lo + i − j0 ≤ c ≤ hi + i − j0.
                let base = i as i64 - j0 as i64;
                let a = (lo + base).clamp(0, n as i64) as usize;
                let b = (hi + base + 1).clamp(0, n as i64) as usize;
                out.fill(false);
                if a < b {
                    out[a..b].fill(true);
                }
            }
            Node::Global(g) => {
                let row_global = g.binary_search(&i).is_ok();
                out.fill(row_global);
                if !row_global {
                    let from = g.partition_point(|&x| x < j0);
                    for &x in g[from..].iter().take_while(|&&x| x < j0 + n) {
                        out[x - j0] = true;
                    }
                }
            }
            Node::Keys {
                heads_per_sample,
                samples,
                tk,
                valid,
                ..
            } => {
                let s = (head / heads_per_sample) % samples;
                out.copy_from_slice(&valid[s * tk + j0..s * tk + j0 + n]);
            }
            Node::Blocks {
                block,
                window,
                global,
                random,
                seed,
                key_blocks,
                ..
            } => {
                let params = (*window, *global, *random, *seed, *key_blocks);
                let qb = i / block;
                let mut c = 0;
                while c < n {
                    let kb = (j0 + c) / block;
                    let end = ((kb + 1) * block - j0).min(n);
                    out[c..end].fill(blocks_allowed(params, qb, kb));
                    c = end;
                }
            }
            Node::Dense(m) => {
                let (v, l) = (m.view(), &m.layout);
                let base = l.head_offsets[head] + i * l.row_stride + j0 * l.col_stride;
                for (c, o) in out.iter_mut().enumerate() {
                    *o = v.data[base + c * l.col_stride] != f32::NEG_INFINITY;
                }
            }
            Node::And(a, b) => {
                a.row(head, i, j0, out);
                if out.iter().any(|&x| x) {
                    let mut tmp = [false; ROW];
                    b.row(head, i, j0, &mut tmp[..n]);
                    out.iter_mut().zip(&tmp).for_each(|(o, &t)| *o &= t);
                }
            }
            Node::Or(a, b) => {
                a.row(head, i, j0, out);
                if !out.iter().all(|&x| x) {
                    let mut tmp = [false; ROW];
                    b.row(head, i, j0, &mut tmp[..n]);
                    out.iter_mut().zip(&tmp).for_each(|(o, &t)| *o |= t);
                }
            }
        }
    }
}
