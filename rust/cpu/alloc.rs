//! Zeroed f32 buffers for large outputs. A fresh multi-megabyte `vec![0.0; n]` is a new mmap
//! whose 4 KiB pages all fault on first write (the 49 MB logits gradient of a vocabulary-sized
//! cross-entropy takes ~12 000 faults). On Linux, buffers of at least [`HUGE_MIN`] bytes are
//! marked `MADV_HUGEPAGE` before they are touched, so where transparent huge pages are enabled
//! ("madvise" or "always") they fault in 2 MiB at a time. Purely advisory: contents and
//! behaviour are those of `vec![0.0; n]`.

/// Buffers of at least this many bytes get the huge-page advice.
pub const HUGE_MIN: usize = 16 << 20;

#[cfg(target_os = "linux")]
extern "C" {
    fn madvise(addr: *mut core::ffi::c_void, len: usize, advice: i32) -> i32;
}

#[cfg(target_os = "linux")]
const MADV_HUGEPAGE: i32 = 14;

/// `vec![0.0f32; n]`, advised onto transparent huge pages when large (see the module docs).
pub fn zeros(n: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    #[cfg(target_os = "linux")]
    if n * 4 >= HUGE_MIN {
        const HUGE: usize = 2 << 20;
        let start = v.as_mut_ptr() as usize;
        let (lo, hi) = (start.next_multiple_of(HUGE), (start + n * 4) / HUGE * HUGE);
        if hi > lo {
            // SAFETY: [lo, hi) lies inside `v`'s allocation; MADV_HUGEPAGE only changes how
            // the kernel backs those pages (their contents stay zero), and failure is harmless.
            unsafe {
                madvise(lo as *mut core::ffi::c_void, hi - lo, MADV_HUGEPAGE);
            }
        }
    }
    v
}

#[cfg(test)]
mod tests {
    #[test]
    fn zeros_are_zero_at_every_size() {
        for n in [
            0,
            1,
            1000,
            super::HUGE_MIN / 4 - 1,
            super::HUGE_MIN / 4 + 12345,
            3 << 20,
        ] {
            let v = super::zeros(n);
            assert_eq!(v.len(), n);
            assert!(v.iter().all(|&x| x == 0.0));
        }
    }
}
