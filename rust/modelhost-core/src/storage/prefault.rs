//! Faulting pages in ahead of use, so the first request does not pay for it: mapped weights read in at load.

/// Read a mapped range in and fault it into the page tables, so the first request does not: one
/// `madvise(MADV_POPULATE_READ)` (Linux 5.14+), else one read per page.
pub fn populate(bytes: &[u8]) {
    if prefault(bytes.as_ptr(), bytes.len()) {
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

/// Fault in the pages of `len` bytes at `start` with one `madvise(MADV_POPULATE_READ)` (Linux 5.14+).
/// `false` where that is unavailable: the caller then touches each page itself.
fn prefault(start: *const u8, len: usize) -> bool {
    #[cfg(target_os = "linux")]
    {
        let start = start as usize;
        let aligned = start - start % PAGE;
        // SAFETY: the caller's range is live memory of ours (rounded down to its first page, which it
        // shares with nothing it could harm); POPULATE_READ only faults pages in, contents unchanged.
        unsafe { libc::madvise(aligned as *mut libc::c_void, len + (start - aligned), libc::MADV_POPULATE_READ) == 0 }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (start, len);
        false
    }
}
