//! Memory reserved up front and made resident as it is written: an anonymous private mapping, which the kernel
//! zero-fills page by page on first touch. A KV cache for the whole context costs nothing until the context
//! fills, so a second instance of a loaded model starts in a few milliseconds.

use std::io;
use std::marker::PhantomData;
use std::ptr::NonNull;

/// `len` values of `T`, zero bits until written (`T` must be a type for which zero bits are a value).
pub struct ZeroedPages<T: Copy> {
    ptr: NonNull<T>,
    len: usize,
    _owns: PhantomData<T>,
}

// SAFETY: the mapping is owned by this value alone (like a Box<[T]>); access follows Rust's borrow rules.
unsafe impl<T: Copy + Send> Send for ZeroedPages<T> {}
// SAFETY: as above; shared references only read.
unsafe impl<T: Copy + Sync> Sync for ZeroedPages<T> {}

impl<T: Copy> ZeroedPages<T> {
    /// Reserve `len` values. Fails (rather than aborting) when the kernel refuses the reservation.
    ///
    /// # Safety
    /// All-zero bits must be a valid `T` (integers, floats, `half::f16`).
    pub unsafe fn new(len: usize) -> io::Result<Self> {
        let bytes =
            len.checked_mul(std::mem::size_of::<T>()).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        if bytes == 0 {
            return Ok(ZeroedPages { ptr: NonNull::dangling(), len: 0, _owns: PhantomData });
        }
        // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Small pages: where transparent huge pages are always on, one write would make 2 MiB resident (for a
        // KV cache, every head's whole context after the first token). Advice only; failure changes nothing.
        #[cfg(target_os = "linux")]
        // SAFETY: advice on the mapping just made.
        unsafe {
            libc::madvise(ptr, bytes, libc::MADV_NOHUGEPAGE)
        };
        let ptr = NonNull::new(ptr.cast::<T>()).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(ZeroedPages { ptr, len, _owns: PhantomData })
    }

    /// The values.
    pub fn as_slice(&self) -> &[T] {
        // SAFETY: `len` values of a live mapping, zero or written (valid `T` by `new`'s contract).
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The values, for writing.
    pub fn as_mut_slice(&mut self) -> &mut [T] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T: Copy> Drop for ZeroedPages<T> {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping `new` made, of this size, unmapped once.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len * std::mem::size_of::<T>()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resident pages of the mapping (`mincore`), so other tests' allocations do not count.
    fn resident_pages(p: &ZeroedPages<u16>) -> usize {
        let bytes = p.len * 2;
        let mut vec = vec![0u8; bytes.div_ceil(4096)];
        // SAFETY: the range is the live mapping; `vec` has one byte per page.
        let rc = unsafe { libc::mincore(p.ptr.as_ptr().cast(), bytes, vec.as_mut_ptr()) };
        assert_eq!(rc, 0);
        vec.iter().filter(|&&b| b & 1 == 1).count()
    }

    #[test]
    fn pages_are_resident_only_once_written() {
        // SAFETY: zero bits are a u16.
        let mut pages = unsafe { ZeroedPages::<u16>::new(32 << 20) }.unwrap(); // 64 MiB
        assert_eq!(resident_pages(&pages), 0, "reserving made memory resident");
        for v in pages.as_mut_slice()[..1 << 20].iter_mut().step_by(2048) {
            *v = 1; // the first 2 MiB, one write per page
        }
        let resident = resident_pages(&pages);
        assert!((512..1024).contains(&resident), "{resident} pages resident after writing 512");
        assert!(pages.as_slice()[1 << 20..(1 << 20) + 4096].iter().all(|&v| v == 0));
        assert_eq!(pages.as_slice()[2048], 1);
    }
}
