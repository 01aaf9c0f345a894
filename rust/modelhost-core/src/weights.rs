//! Model files in memory: one shared read-only mapping per file, or an owned copy (`tryMmap: false`),
//! and the progress reporting that runs while weights are materialised from them.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use memmap2::Mmap;

use crate::error::{BoxError, Error, Result};

/// Bytes per progress step when reading a file into owned memory.
const READ_CHUNK: usize = 4 << 20;
/// The smallest progress increase worth a callback (SPEC §4: about every 1%).
const PROGRESS_STEP: f32 = 0.01;

/// A file's bytes: a shared read-only map, or an owned copy.
#[derive(Debug)]
pub enum FileBytes {
    /// Zero-copy mapping, shared by every user of the same file.
    Mapped(Arc<MappedFile>),
    /// Read into memory (`tryMmap: false`).
    Owned(Vec<u8>),
}

impl FileBytes {
    /// The whole file.
    pub fn as_slice(&self) -> &[u8] {
        match self {
            FileBytes::Mapped(m) => &m.mmap,
            FileBytes::Owned(v) => v,
        }
    }
}

/// A read-only memory map of one model file.
#[derive(Debug)]
pub struct MappedFile {
    /// Turns a read of pages truncated away into zeros and a flag instead of a fatal SIGBUS. Declared
    /// before `mmap` so that it unregisters before the range is unmapped.
    #[cfg(target_os = "linux")]
    guard: Option<crate::sigbus::Guard>,
    path: PathBuf,
    mmap: Mmap,
    /// (device, inode) of the file when it was mapped.
    identity: (u64, u64),
    /// How many `PageLock`s hold the pages locked (`mlock` does not nest: the last one unlocks).
    locks: Mutex<usize>,
}

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

#[cfg(unix)]
fn file_identity(m: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (m.dev(), m.ino())
}

#[cfg(not(unix))]
fn file_identity(_: &std::fs::Metadata) -> (u64, u64) {
    (0, 0)
}

fn same_file(now: &std::fs::Metadata, mapped: &MappedFile) -> bool {
    file_identity(now) == mapped.identity
}

/// Mappings replaced in the registry by a fresh mapping of a changed file, still alive for their users.
fn retired() -> &'static Mutex<Vec<Weak<MappedFile>>> {
    static RETIRED: OnceLock<Mutex<Vec<Weak<MappedFile>>>> = OnceLock::new();
    RETIRED.get_or_init(Default::default)
}

impl MappedFile {
    /// The mapped file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The mapped bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.mmap
    }

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

    /// `Err` naming the file if a read found pages it lost to a truncation (see `damaged`).
    pub fn check_intact(&self) -> Result<()> {
        if self.damaged() {
            return Err(Error::load(
                &self.path,
                "the file was truncated on disk while in use; unload this model and load it again",
            ));
        }
        Ok(())
    }

    /// Whether a read found pages the file lost to a truncation (they read as zeros since): everything
    /// computed from this mapping since it was made is suspect.
    pub fn damaged(&self) -> bool {
        #[cfg(target_os = "linux")]
        return self.guard.as_ref().is_some_and(|g| g.damaged());
        #[cfg(not(target_os = "linux"))]
        false
    }

    /// Tell the kernel the pages we copied from are no longer needed by this process, so the
    /// mapping stays (shared, cheap) without its pages counting twice in our RSS.
    pub fn release_pages(&self) {
        // SAFETY: the map is read-only and file-backed, so dropped pages are simply re-read from the
        // file if touched again; no data is lost. Advice only: failure changes nothing but RSS.
        let _ = unsafe { self.mmap.unchecked_advise(memmap2::UncheckedAdvice::DontNeed) };
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Weak<MappedFile>>> {
    static REGISTRY: OnceLock<Mutex<HashMap<PathBuf, Weak<MappedFile>>>> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// Open a regular, readable, non-empty model file, with errors that name it.
pub fn open_model_file(path: &Path) -> Result<(File, u64)> {
    let meta = std::fs::metadata(path).map_err(|e| Error::load(path, e.to_string()))?;
    if !meta.is_file() {
        return Err(Error::load(path, "not a regular file"));
    }
    if meta.len() == 0 {
        return Err(Error::load(path, "the file is empty"));
    }
    let file = File::open(path).map_err(|e| Error::load(path, e.to_string()))?;
    Ok((file, meta.len()))
}

/// Map `path` read-only, sharing the mapping with every other live user of the same file.
pub fn map_shared(path: &Path) -> Result<Arc<MappedFile>> {
    let canonical = path.canonicalize().map_err(|e| Error::load(path, e.to_string()))?;
    let mut reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(existing) = reg.get(&canonical).and_then(Weak::upgrade) {
        // Reuse only a mapping of the file as it is now: one truncated since it was mapped would raise
        // SIGBUS when its lost pages are read, and one replaced (renamed over) would hand out the old
        // file's bytes under the new file's name. Otherwise map afresh; the old mapping lives on for
        // its users, and the registry tracks the new one.
        // A mapping that already read lost pages (`damaged`) is never handed out again either: the file was
        // truncated and written back (e.g. `cp` over it), so its length can match again.
        if !existing.damaged()
            && std::fs::metadata(&canonical)
                .is_ok_and(|m| m.len() == existing.mmap.len() as u64 && same_file(&m, &existing))
        {
            return Ok(existing);
        }
        retired().lock().unwrap_or_else(|e| e.into_inner()).push(Arc::downgrade(&existing));
    }
    let (file, _) = open_model_file(&canonical)?;
    // SAFETY: the map is read-only and private to this process. If another process truncates the
    // file while it is mapped, touching the lost pages raises SIGBUS, which the guard turns into
    // zeros and `damaged()`; every reader checks `check_intact` after reading.
    let mmap = unsafe { Mmap::map(&file) }.map_err(|e| Error::load(path, e.to_string()))?;
    let identity = file.metadata().map(|m| file_identity(&m)).unwrap_or_default();
    let mapped = Arc::new(MappedFile {
        path: canonical.clone(),
        #[cfg(target_os = "linux")]
        guard: crate::sigbus::Guard::new(mmap.as_ptr(), mmap.len()),
        mmap,
        identity,
        locks: Mutex::new(0),
    });
    reg.retain(|_, w| w.strong_count() > 0);
    reg.insert(canonical, Arc::downgrade(&mapped));
    Ok(mapped)
}

/// How many distinct files are mapped right now (for tests and diagnostics).
pub fn mapped_file_count() -> usize {
    let reg = registry().lock().unwrap_or_else(|e| e.into_inner());
    let mut retired = retired().lock().unwrap_or_else(|e| e.into_inner());
    retired.retain(|w| w.strong_count() > 0);
    reg.values().filter(|w| w.strong_count() > 0).count() + retired.len()
}

/// Check, after reading mapped pages, that none of them was lost to a truncation of the file.
pub fn check_intact(bytes: &FileBytes) -> Result<()> {
    match bytes {
        FileBytes::Mapped(m) => m.check_intact(),
        FileBytes::Owned(_) => Ok(()),
    }
}

/// Check, just before touching mapped pages, that the file still has the length we mapped.
pub fn check_unchanged(bytes: &FileBytes) -> Result<()> {
    check_intact(bytes)?;
    if let FileBytes::Mapped(m) = bytes {
        let len = std::fs::metadata(&m.path).map_err(|e| Error::load(&m.path, e.to_string()))?.len();
        if len != m.mmap.len() as u64 {
            return Err(Error::load(
                &m.path,
                format!("the file changed size while loading ({} → {len} bytes)", m.mmap.len()),
            ));
        }
    }
    Ok(())
}

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
pub(crate) const PAGE: usize = 4096;

/// Fault in the pages of `len` bytes at `start` with one `madvise` (`MADV_POPULATE_WRITE` if `write`,
/// else `MADV_POPULATE_READ`; Linux 5.14+). `false` where that is unavailable: the caller then touches
/// each page itself.
pub(crate) fn prefault(start: *const u8, len: usize, write: bool) -> bool {
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

/// Read a whole file into owned memory in chunks, reporting progress over `[0, weight)` of the bar.
pub fn read_owned(path: &Path, progress: &mut Progress<'_>, weight: f32) -> Result<FileBytes> {
    let (mut file, len) = open_model_file(path)?;
    let len = usize::try_from(len).map_err(|_| Error::load(path, "file too large for this platform"))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(len).map_err(|_| Error::load(path, format!("cannot allocate {len} bytes")))?;
    buf.resize(len, 0);
    let mut done = 0;
    while done < len {
        let end = (done + READ_CHUNK).min(len);
        file.read_exact(&mut buf[done..end]).map_err(|e| Error::load(path, e.to_string()))?;
        done = end;
        progress.update(weight * done as f32 / len as f32)?;
    }
    Ok(FileBytes::Owned(buf))
}

/// The progress callback type: a fraction in `[0, 1]`; an error cancels the load.
pub type ProgressFn<'a> = dyn FnMut(f32) -> std::result::Result<(), BoxError> + 'a;

/// Throttled, monotone progress: 0.0 first, increases of at least 1%, exactly 1.0 last.
pub struct Progress<'a> {
    callback: Option<&'a mut ProgressFn<'a>>,
    last: f32,
}

impl<'a> Progress<'a> {
    /// Wrap an optional callback.
    pub fn new(callback: Option<&'a mut ProgressFn<'a>>) -> Self {
        Progress { callback, last: -1.0 }
    }

    fn send(&mut self, value: f32) -> Result<()> {
        self.last = value;
        match self.callback.as_mut() {
            Some(cb) => cb(value).map_err(Error::Cancelled),
            None => Ok(()),
        }
    }

    /// Report 0.0.
    pub fn start(&mut self) -> Result<()> {
        self.send(0.0)
    }

    /// Report `fraction` if it moved enough; 1.0 is kept for `finish`.
    pub fn update(&mut self, fraction: f32) -> Result<()> {
        let fraction = fraction.clamp(0.0, 0.999);
        if fraction - self.last >= PROGRESS_STEP {
            self.send(fraction)?;
        }
        Ok(())
    }

    /// Report exactly 1.0.
    pub fn finish(&mut self) -> Result<()> {
        self.send(1.0)
    }
}

/// Walks a list of byte spans, reporting progress as each span is materialised.
pub struct ChunkedLoad<'p, 'a> {
    progress: &'p mut Progress<'a>,
    total: u64,
    done: u64,
    base: f32,
    weight: f32,
}

impl<'p, 'a> ChunkedLoad<'p, 'a> {
    /// Progress over `[base, base + weight)` of the bar, for `total` bytes.
    pub fn new(progress: &'p mut Progress<'a>, total: u64, base: f32, weight: f32) -> Self {
        ChunkedLoad { progress, total: total.max(1), done: 0, base, weight }
    }

    /// Record `bytes` more as loaded; an error from the callback cancels.
    pub fn advance(&mut self, bytes: u64) -> Result<()> {
        self.done += bytes;
        let f = self.base + self.weight * (self.done as f32 / self.total as f32);
        self.progress.update(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_is_monotone_and_throttled() {
        let mut seen = Vec::new();
        {
            let mut cb = |v: f32| -> std::result::Result<(), BoxError> {
                seen.push(v);
                Ok(())
            };
            let mut p = Progress::new(Some(&mut cb));
            p.start().unwrap();
            let mut chunks = ChunkedLoad::new(&mut p, 10_000, 0.0, 1.0);
            for _ in 0..10_000 {
                chunks.advance(1).unwrap();
            }
            p.finish().unwrap();
        }
        assert_eq!(seen[0], 0.0);
        assert_eq!(*seen.last().unwrap(), 1.0);
        assert!(seen.windows(2).all(|w| w[1] > w[0]));
        assert!(seen.len() <= 102, "{} calls", seen.len());
    }

    #[test]
    fn callback_error_cancels() {
        let mut cb = |v: f32| -> std::result::Result<(), BoxError> {
            if v > 0.5 {
                Err("stop".into())
            } else {
                Ok(())
            }
        };
        let mut p = Progress::new(Some(&mut cb));
        p.start().unwrap();
        let err = (0..100).try_for_each(|i| p.update(i as f32 / 100.0)).unwrap_err();
        assert!(matches!(err, Error::Cancelled(_)));
    }

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

    #[test]
    fn mappings_are_shared() {
        let dir = std::env::temp_dir().join(format!("mh-weights-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        std::fs::write(&path, b"hello").unwrap();
        let a = map_shared(&path).unwrap();
        let b = map_shared(&path).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        assert!(map_shared(&dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
