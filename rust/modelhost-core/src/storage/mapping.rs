//! Model files in memory: one shared read-only mapping per file (registered with the SIGBUS guard), or an
//! owned copy (`tryMmap: false`), and the checks that a mapped file is still what was mapped.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, Weak};

use memmap2::Mmap;

use super::progress::Progress;
use crate::error::{Error, Result};

/// Bytes per progress step when reading a file into owned memory.
const READ_CHUNK: usize = 4 << 20;

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
    guard: Option<super::sigbus::Guard>,
    path: PathBuf,
    pub(super) mmap: Mmap,
    /// (device, inode) of the file when it was mapped.
    identity: (u64, u64),
    /// How many `PageLock`s hold the pages locked (`mlock` does not nest: the last one unlocks).
    pub(super) locks: Mutex<usize>,
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
        guard: super::sigbus::Guard::new(mmap.as_ptr(), mmap.len()),
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

#[cfg(test)]
mod tests {
    use super::*;

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
