//! Model files in memory and the work of getting their bytes resident.
//!
//! One shared read-only mapping per file (or an owned copy), guarded against truncation by the SIGBUS
//! handler and checked after every read; page prefaulting and locking (`keepModelInMemory`); and the
//! progress reporting that runs while weights are materialised. Nothing here knows a file format.

mod mapping;
mod page_lock;
mod prefault;
mod progress;
#[cfg(target_os = "linux")]
pub mod sigbus;

pub use mapping::{
    check_intact, check_unchanged, map_shared, mapped_file_count, open_model_file, read_owned, FileBytes, MappedFile,
};
pub use page_lock::{LockedPages, PageLock};
pub use prefault::{populate, resident_zeros};
pub use progress::{ChunkedLoad, Progress, ProgressFn};
