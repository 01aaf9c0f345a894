//! Model files in memory and the work of getting their bytes resident.
//!
//! One shared read-only mapping per file (or an owned copy), guarded against truncation by the SIGBUS
//! handler and checked after every read; page prefaulting and locking (`keepModelInMemory`); memory reserved
//! up front but resident only once written (`ZeroedPages`, the KV cache); and the progress reporting that runs
//! while weights are materialised. Nothing here knows a file format.

mod mapping;
mod page_lock;
mod prefault;
mod progress;
#[cfg(target_os = "linux")]
pub mod sigbus;
mod zeroed;

pub use mapping::{
    check_intact, check_unchanged, map_shared, mapped_file_count, open_model_file, read_owned, FileBytes, MappedFile,
};
pub use page_lock::{LockedPages, PageLock};
pub use prefault::populate;
pub use progress::{ChunkedLoad, Progress, ProgressFn};
pub use zeroed::ZeroedPages;
