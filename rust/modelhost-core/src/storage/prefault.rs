//! Faulting pages in ahead of use, so the first request does not pay for it: mapped weights read in at load,
//! and buffers (the KV cache) that must really be taken when the model loads.

/// Read a mapped range in and fault it into the page tables, so the first request does not: one
/// `madvise(MADV_POPULATE_READ)` (Linux 5.14+), else one read per page.
pub fn populate(bytes: &[u8]) {
    if prefault(bytes.as_ptr(), bytes.len(), false) {
        return;
    }
    let mut acc = 0u8;
    for i in (0..bytes.len()).step_by(PAGE) {
        acc ^= bytes[i];
    }
    std::hint::black_box(acc);
}

/// Bytes per page for the prefault fallbacks (the smallest page size; a larger one only touches more).
const PAGE: usize = 4096;

/// Fault in the pages of `len` bytes at `start` with one `madvise` (`MADV_POPULATE_WRITE` if `write`,
/// else `MADV_POPULATE_READ`; Linux 5.14+). `false` where that is unavailable: the caller then touches
/// each page itself.
fn prefault(start: *const u8, len: usize, write: bool) -> bool {
    #[cfg(target_os = "linux")]
    {
        let start = start as usize;
        let aligned = start - start % PAGE;
        let advice = if write { libc::MADV_POPULATE_WRITE } else { libc::MADV_POPULATE_READ };
        // SAFETY: the caller's range is live memory of ours (rounded down to its first page, which it
        // shares with nothing it could harm); POPULATE_* only faults pages in, contents unchanged.
        unsafe { libc::madvise(aligned as *mut libc::c_void, len + (start - aligned), advice) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (start, len, write);
        false
    }
}

/// Zeros whose pages are resident now, as SPEC §5's "allocated up front" means: the memory is
/// really taken at load (and counted in RSS, as the estimate says) rather than faulted in during
/// generation. A large `vec![0; n]` is fresh zero pages from the kernel, so this only faults them in:
/// one `madvise(MADV_POPULATE_WRITE)` (Linux 5.14+), else one write per page.
pub fn resident_zeros(n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    if !prefault(v.as_ptr().cast(), std::mem::size_of_val(v.as_slice()), true) {
        for i in (0..n).step_by(PAGE / std::mem::size_of::<f32>()) {
            // SAFETY: in bounds; volatile so the store of a zero into zeroed memory is not optimised away.
            unsafe { std::ptr::write_volatile(v.as_mut_ptr().add(i), 0.0) };
        }
    }
    v
}
