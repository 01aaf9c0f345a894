//! Weights locked in RAM (`keepModelInMemory`): the pages of a shared mapping, counted across the models
//! that share it, and a model's own copies.

use std::sync::Arc;

use super::mapping::MappedFile;

/// The pages of a whole mapping locked in RAM (`keepModelInMemory` for weights used in place); counted,
/// so that models sharing the mapping do not unlock each other's pages.
#[derive(Debug)]
pub struct PageLock(Arc<MappedFile>);

impl Drop for PageLock {
    fn drop(&mut self) {
        let mut n = self.0.locks.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        if *n == 0 {
            // SAFETY: unlocking the live mapping we locked (this lock holds it alive).
            unsafe { libc::munlock(self.0.mmap.as_ptr().cast(), self.0.mmap.len()) };
        }
    }
}

impl MappedFile {
    /// Lock the whole mapping's pages in RAM until the returned lock (and every other) is dropped.
    pub fn lock_pages(self: &Arc<Self>) -> std::io::Result<PageLock> {
        let mut n = self.locks.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: locking a live read-only mapping of ours; only residency changes.
        if *n == 0 && unsafe { libc::mlock(self.mmap.as_ptr().cast(), self.mmap.len()) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        *n += 1;
        Ok(PageLock(self.clone()))
    }
}

/// Weight pages locked in RAM (`keepModelInMemory`), unlocked on drop.
pub struct LockedPages(Vec<(usize, usize)>);

impl LockedPages {
    /// Lock every non-empty region; on failure, what was locked so far is unlocked again.
    pub fn lock(regions: &[&[u8]]) -> std::io::Result<Self> {
        let mut locked = LockedPages(Vec::with_capacity(regions.len()));
        for r in regions.iter().filter(|r| !r.is_empty()) {
            // SAFETY: the region is a live allocation owned by the model, which outlives this lock.
            if unsafe { libc::mlock(r.as_ptr().cast(), r.len()) } != 0 {
                return Err(std::io::Error::last_os_error()); // `locked` unlocks what it holds
            }
            locked.0.push((r.as_ptr() as usize, r.len()));
        }
        Ok(locked)
    }
}

impl Drop for LockedPages {
    fn drop(&mut self) {
        for &(ptr, len) in &self.0 {
            // SAFETY: unlocking a range we locked; the memory is still allocated (`locked` drops first).
            unsafe { libc::munlock(ptr as *const libc::c_void, len) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::mapping::map_shared;

    #[test]
    fn page_locks_on_a_shared_mapping_are_counted() {
        let dir = std::env::temp_dir().join(format!("mh-locks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        std::fs::write(&path, vec![1u8; 64 << 10]).unwrap();
        let map = map_shared(&path).unwrap();
        let count = || *map.locks.lock().unwrap();
        let (a, b) = (map.lock_pages().unwrap(), map.lock_pages().unwrap());
        assert_eq!(count(), 2);
        drop(a); // one model unloads: the other's pages stay locked
        assert_eq!(count(), 1);
        drop(b);
        assert_eq!(count(), 0);
        drop(map);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
