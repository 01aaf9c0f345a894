//! A SIGBUS guard for our file mappings.
//!
//! Reading a page of a mapped file that another process truncated away raises SIGBUS, which would kill
//! the interpreter. Each mapping registers its address range here; on a SIGBUS inside one, the handler
//! marks the mapping as damaged, maps anonymous zero pages over the rest of that range and returns, so
//! the faulting read completes (with zeros). The code that read the mapping checks `damaged` afterwards
//! and fails the request with a clear error. A SIGBUS anywhere else is handed back: the handler that was
//! installed before ours (Python's faulthandler, say), or the default action, is restored and the fault
//! happens again under it.
//!
//! The handler only reads atomics and calls `mmap`, `sigaction` and `raise`, which are system calls.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Mappings guarded at once; beyond this a mapping is unguarded (and `Guard::new` says so).
const SLOTS: usize = 1024;

struct Slot {
    used: AtomicBool,
    /// A sequence lock over `start` and `end`: odd while they change, so the handler never pairs one
    /// registration's start with another's end.
    version: AtomicUsize,
    /// First and one-past-last address; `start == 0` while the slot is free.
    start: AtomicUsize,
    end: AtomicUsize,
    damaged: AtomicBool,
}

impl Slot {
    fn set(&self, start: usize, end: usize) {
        self.version.fetch_add(1, Ordering::SeqCst);
        self.start.store(start, Ordering::SeqCst);
        self.end.store(end, Ordering::SeqCst);
        self.version.fetch_add(1, Ordering::SeqCst);
    }

    /// The registered range, if it was read whole.
    fn range(&self) -> Option<(usize, usize)> {
        let before = self.version.load(Ordering::SeqCst);
        let (start, end) = (self.start.load(Ordering::SeqCst), self.end.load(Ordering::SeqCst));
        let whole = before.is_multiple_of(2) && self.version.load(Ordering::SeqCst) == before;
        (whole && start != 0).then_some((start, end))
    }
}

#[allow(clippy::declare_interior_mutable_const)] // a template for the array below
const EMPTY: Slot = Slot {
    used: AtomicBool::new(false),
    version: AtomicUsize::new(0),
    start: AtomicUsize::new(0),
    end: AtomicUsize::new(0),
    damaged: AtomicBool::new(false),
};
static TABLE: [Slot; SLOTS] = [EMPTY; SLOTS];

/// One mapped range under the guard; unregisters on drop (before the range is unmapped).
#[derive(Debug)]
pub struct Guard {
    slot: usize,
}

impl Guard {
    /// Guard `len` bytes at `start` (a page-aligned mapping). `None` if no slot is free or the handler
    /// cannot be installed.
    pub fn new(start: *const u8, len: usize) -> Option<Guard> {
        if len == 0 || !install() {
            return None;
        }
        let page = page_size();
        let end = (start as usize).checked_add(len)?.checked_next_multiple_of(page)?;
        let slot = TABLE
            .iter()
            .position(|s| s.used.compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed).is_ok())?;
        let s = &TABLE[slot];
        s.damaged.store(false, Ordering::SeqCst);
        s.set(start as usize, end);
        Some(Guard { slot })
    }

    /// Whether a read hit pages the file no longer has (they read as zeros since).
    pub fn damaged(&self) -> bool {
        TABLE[self.slot].damaged.load(Ordering::Acquire)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let s = &TABLE[self.slot];
        s.set(0, 0);
        s.used.store(false, Ordering::Release);
    }
}

fn page_size() -> usize {
    static PAGE: AtomicUsize = AtomicUsize::new(0);
    match PAGE.load(Ordering::Relaxed) {
        0 => {
            // SAFETY: sysconf has no preconditions.
            let p = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(4096);
            PAGE.store(p, Ordering::Relaxed);
            p
        }
        p => p,
    }
}

/// The handler that was installed before ours, to pass foreign faults on to.
static PREVIOUS: AtomicPtr<libc::sigaction> = AtomicPtr::new(std::ptr::null_mut());

/// Put our handler on top, unless it already is: called for every new mapping, so a handler someone
/// installed after ours (e.g. `faulthandler.enable()`) is chained behind it rather than replacing it.
fn install() -> bool {
    static LOCK: Mutex<()> = Mutex::new(());
    let _lock = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    // SAFETY: plain sigaction calls with valid, zero-initialised structs; our handler is async-signal-safe.
    unsafe {
        let mut current: libc::sigaction = std::mem::zeroed();
        if libc::sigaction(libc::SIGBUS, std::ptr::null(), &mut current) != 0 {
            return false;
        }
        if current.sa_sigaction == on_sigbus as *const () as usize {
            return true;
        }
        let mut ours: libc::sigaction = std::mem::zeroed();
        ours.sa_sigaction = on_sigbus as *const () as usize;
        ours.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK;
        libc::sigemptyset(&mut ours.sa_mask);
        // The previous handler must be visible to the handler before ours can run. A replaced record is
        // leaked: a handler running right now may still read it, and it is a few bytes per re-install.
        PREVIOUS.store(Box::into_raw(Box::new(current)), Ordering::Release);
        libc::sigaction(libc::SIGBUS, &ours, std::ptr::null_mut()) == 0
    }
}

extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, _ctx: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    // A fault the kernel raised (si_code > 0) inside one of our mappings: zero pages over the lost tail.
    if code > 0 {
        for s in &TABLE {
            let Some((start, end)) = s.range() else { continue };
            if addr < start || addr >= end {
                continue;
            }
            let page = addr & !(page_size() - 1);
            if repair(s, page, end) {
                return;
            }
        }
    }
    // Not ours: put back what handled SIGBUS before us and let it happen again under that. A fault re-runs
    // when we return; a signal someone sent is sent again. Calling the previous handler from here instead
    // would loop with faulthandler, which re-raises after restoring *its* previous handler (ours).
    let previous = PREVIOUS.load(Ordering::Acquire);
    // SAFETY: `previous` is null or a leaked, never-freed sigaction; plain sigaction and raise calls.
    unsafe {
        if previous.is_null() {
            let mut default: libc::sigaction = std::mem::zeroed();
            default.sa_sigaction = libc::SIG_DFL;
            libc::sigaction(libc::SIGBUS, &default, std::ptr::null_mut());
        } else {
            libc::sigaction(libc::SIGBUS, previous, std::ptr::null_mut());
        }
        if code <= 0 {
            libc::raise(sig);
        }
    }
}

/// Replace the lost tail `[page, end)` of the mapping in `slot` with zero pages. False if the kernel refused.
fn repair(slot: &Slot, page: usize, end: usize) -> bool {
    // Damaged first: once the zero pages are in, any thread may read them, and it must then find the mapping
    // marked (it checks after reading). Marked without the zeros, a reader faults and comes here itself.
    slot.damaged.store(true, Ordering::SeqCst);
    #[cfg(test)]
    pause::between_steps(slot);
    // SAFETY: [page, end) lies inside a live read-only mapping that we own (its slot was read whole, and it
    // unregisters before unmapping); replacing its lost tail with zero pages is what makes the read safe to retry.
    let mapped = unsafe {
        libc::mmap(
            page as *mut libc::c_void,
            end - page,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
            -1,
            0,
        )
    };
    mapped != libc::MAP_FAILED
}

/// Tests only: hold the first repair of one armed slot between its two steps, to see what other threads see then.
#[cfg(test)]
mod pause {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

    use super::{Slot, TABLE};

    /// The armed slot's index + 1 (0: none).
    pub(super) static ARMED: AtomicUsize = AtomicUsize::new(0);
    pub(super) static REACHED: AtomicBool = AtomicBool::new(false);
    pub(super) static RELEASE: AtomicBool = AtomicBool::new(false);

    /// Spin (async-signal-safe: atomics only) until released, once, if `slot` is the armed one.
    pub(super) fn between_steps(slot: &Slot) {
        let index = TABLE.iter().position(|s| std::ptr::eq(s, slot)).map_or(0, |i| i + 1);
        if index != 0 && ARMED.compare_exchange(index, 0, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
            REACHED.store(true, Ordering::SeqCst);
            while !RELEASE.load(Ordering::SeqCst) {
                std::hint::spin_loop();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests truncate mapped files; one at a time, so the pause of one never catches the other's fault.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        static LOCK: Mutex<()> = Mutex::new(());
        LOCK.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A mapping of a 3-page temporary file called `name`, its guard, and the file's path.
    fn mapped_file(name: &str) -> (memmap2::Mmap, Guard, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!("mh-sigbus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, vec![7u8; 3 * 4096]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a read-only map of our own temporary file.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let guard = Guard::new(map.as_ptr(), map.len()).unwrap();
        (map, guard, path)
    }

    /// A byte of the mapping, read for real (volatile), faulting if its page is gone.
    fn read(map: &memmap2::Mmap, offset: usize) -> u8 {
        assert!(offset < map.len());
        // SAFETY: in bounds of the mapping; a lost page faults into our handler, which maps zeros over it.
        unsafe { std::ptr::read_volatile(map.as_ptr().add(offset)) }
    }

    /// Another thread that reads the zeros must also see the mapping marked damaged, or it would trust them: the
    /// handler marks the mapping before it maps the zero pages. Checked with the first repair held between its
    /// two steps while this thread reads the lost page and asks whether the mapping is damaged.
    #[test]
    fn a_thread_that_reads_the_zeros_sees_the_mapping_damaged() {
        let _serial = serial();
        let (map, guard, path) = mapped_file("race.bin");
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(100).unwrap();
        pause::REACHED.store(false, Ordering::SeqCst);
        pause::RELEASE.store(false, Ordering::SeqCst);
        pause::ARMED.store(guard.slot + 1, Ordering::SeqCst);
        let addr = map.as_ptr() as usize;
        let first_reader = std::thread::spawn(move || {
            // SAFETY: as `read`; the mapping outlives this thread (joined below).
            unsafe { std::ptr::read_volatile((addr + 2 * 4096 + 5) as *const u8) }
        });
        while !pause::REACHED.load(Ordering::SeqCst) {
            std::thread::yield_now();
        }
        let seen = read(&map, 2 * 4096 + 9);
        let damaged_when_seen = guard.damaged();
        pause::RELEASE.store(true, Ordering::SeqCst);
        assert_eq!(first_reader.join().unwrap(), 0);
        assert_eq!(seen, 0);
        assert!(damaged_when_seen, "a thread read the zero pages while the mapping was not yet marked damaged");
        drop((guard, map));
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_truncated_mapping_reads_zeros_and_is_marked_damaged() {
        let _serial = serial();
        let dir = std::env::temp_dir().join(format!("mh-sigbus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.bin");
        std::fs::write(&path, vec![7u8; 3 * 4096]).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: a read-only map of our own temporary file.
        let map = unsafe { memmap2::Mmap::map(&file) }.unwrap();
        let guard = Guard::new(map.as_ptr(), map.len()).unwrap();
        assert_eq!(map[8192], 7);
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(100).unwrap();
        // SAFETY: in bounds of the mapping; volatile so the read really happens.
        let after = unsafe { std::ptr::read_volatile(map.as_ptr().add(2 * 4096 + 5)) };
        assert_eq!(after, 0);
        assert!(guard.damaged());
        assert_eq!(map[10], 7, "the pages still in the file are untouched");
        drop(guard);
        drop(map);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
