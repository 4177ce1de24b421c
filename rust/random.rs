//! Random numbers for dropout and initialization. Counter-based: the value for element `i` of a
//! call is a pure function of the call's seed and `i`, so masks do not depend on the thread
//! count or on the order threads run in, and a backward can regenerate its forward's mask from
//! the seed alone. A global generator hands each call a fresh seed; `manual_seed` resets it.

use std::sync::atomic::{AtomicU64, Ordering};

static STATE: AtomicU64 = AtomicU64::new(0x853c_49e6_748f_ea9b);

/// Restarts the seed sequence, making later runs reproducible.
pub fn manual_seed(seed: u64) {
    STATE.store(mix(seed ^ 0x9e37_79b9_7f4a_7c15), Ordering::Relaxed);
}

/// The generator's state, to save in a checkpoint (`set_state` restores it exactly).
pub fn state() -> u64 {
    STATE.load(Ordering::Relaxed)
}

pub fn set_state(state: u64) {
    STATE.store(state, Ordering::Relaxed);
}

/// A fresh seed for one random op.
pub fn next_seed() -> u64 {
    mix(STATE.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed))
}

/// SplitMix64's finalizer: a bijection on u64 whose output bits each depend on all input bits.
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// 32 random bits for element `index` of the call keyed by `seed`.
#[inline]
pub fn bits(seed: u64, index: u64) -> u32 {
    (mix(seed.wrapping_add(mix(index))) >> 32) as u32
}

/// A uniform sample in [0, 1) for element `index`.
#[inline]
pub fn uniform(seed: u64, index: u64) -> f32 {
    (bits(seed, index) >> 8) as f32 * (1.0 / (1u32 << 24) as f32)
}

/// Keep decisions come in groups of this many consecutive element indices, which share one
/// 64-bit hash (16 bits each): a quarter of a SplitMix round per element, where drawing 32
/// bits per element (as [`bits`] does) costs two.
pub const KEEP_GROUP: usize = 4;

/// The 64 random bits of keep group `group` (elements `4·group .. 4·group + 3`) of the call
/// keyed by `seed`: SplitMix64's output for state `seed + group·γ`. Element `i` of the group
/// uses bits `16·(i mod 4) ..`.
#[inline(always)]
pub fn keep_group_bits(seed: u64, group: u64) -> u64 {
    mix(seed.wrapping_add(group.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
}

/// The drop probability `p` on the 2⁻¹⁶ grid the keep decisions use: an element is kept when
/// its 16 bits are at least this (so p = 0 keeps all, p = 1 none). `p` is rounded to the
/// nearest multiple of 2⁻¹⁶ — a shift of at most 7.6e-6 in the keep rate.
#[inline(always)]
pub fn keep_threshold(p: f32) -> u32 {
    (p.clamp(0.0, 1.0) * 65536.0).round() as u32
}

/// Whether the element whose 16 random bits are `bits16` is kept against `threshold`.
#[inline(always)]
pub fn kept(bits16: u32, threshold: u32) -> bool {
    bits16 >= threshold
}

/// Whether dropout with drop probability `p` keeps element `index` of the call keyed by
/// `seed`: kept with probability 1 − p (p on the 2⁻¹⁶ grid of [`keep_threshold`]). A pure
/// function of `(seed, index, p)`; bulk users (dropout) compute the same decisions a group
/// of [`KEEP_GROUP`] at a time with [`keep_group_bits`].
#[inline]
pub fn keep(seed: u64, index: u64, p: f32) -> bool {
    let h = keep_group_bits(seed, index / KEEP_GROUP as u64);
    let bits16 = (h >> (16 * (index % KEEP_GROUP as u64))) as u32 & 0xffff;
    kept(bits16, keep_threshold(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keep_rate_matches_probability() {
        let kept = (0..100_000u64).filter(|&i| keep(42, i, 0.3)).count() as f64 / 100_000.0;
        assert!((kept - 0.7).abs() < 0.01, "kept {kept}");
        // The four elements of a group are independent draws: all four kept at rate 0.7⁴.
        let groups = (0..100_000u64).filter(|&g| (0..4).all(|k| keep(42, 4 * g + k, 0.3)));
        let all = groups.count() as f64 / 100_000.0;
        assert!((all - 0.7f64.powi(4)).abs() < 0.01, "all four kept {all}");
    }

    #[test]
    fn keep_extremes() {
        assert!((0..1000).all(|i| keep(7, i, 0.0)));
        assert!((0..1000).all(|i| !keep(7, i, 1.0)));
    }

    // `manual_seed` reproducibility is tested from Python, where no other test shares the
    // global generator concurrently.
    #[test]
    fn streams_differ_by_seed_and_index() {
        assert_eq!(bits(1, 5), bits(1, 5));
        assert_ne!(bits(1, 5), bits(2, 5));
        assert_ne!(bits(1, 5), bits(1, 6));
    }
}
