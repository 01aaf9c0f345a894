//! Running a forward pass on rayon's workers, kept awake through its many short parallel loops.

/// What a forward pass runs, which decides how it uses the pool and the quantized kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// Prompt tokens of a language model: the quantized products on the GEMM where it takes their type (see
    /// `panel::forward_pass` and `panel::worth_it`), the workers left to sleep between its loops, which are
    /// long enough that polling would only burn a core.
    Prompt(PromptRows),
    /// One generated token: the row kernels, and the workers kept awake through its ~200 short loops, where a
    /// sleeping worker's wake-up would cost most.
    Decode,
    /// An embedding model's batches (f32 kernels only), workers kept awake: between its ~60 matrix products per
    /// batch are short serial steps (layer norms, attention of short sequences, pooling).
    Encode,
}

/// Where a prompt pass's tokens sit in the prompt evaluated: llama.cpp rounds some products by the row count of
/// its batch (its GEMV for the last `rows % 4` rows of Q4_K and Q2_K, `vec_dot` for Q3_K, Q5_K and Q6_K under 8
/// rows), and the kernels follow it as for the whole prompt in one batch, whatever chunks it is evaluated in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptRows {
    /// This pass's first token, counted in the prompt.
    pub first: usize,
    /// The prompt's tokens (those evaluated, after any cached prefix).
    pub total: usize,
    /// This pass's tokens.
    pub chunk: usize,
}

/// Run the forward pass `f` of kind `pass` on the pool (see `on_pool`), with the kernels it takes.
pub fn run_pass<R: Send>(pass: Pass, f: impl FnOnce() -> R + Send) -> R {
    let prompt = match pass {
        Pass::Prompt(rows) => Some(rows),
        Pass::Decode | Pass::Encode => None,
    };
    on_pool(prompt.is_none(), || {
        #[cfg(target_arch = "x86_64")]
        return super::panel::forward_pass(prompt, f);
        #[cfg(not(target_arch = "x86_64"))]
        f()
    })
}

/// Run `f` on a rayon worker; with `keep_awake`, the pool's other workers poll for work until it returns.
///
/// A forward pass is many parallel loops with serial steps between them. Called from outside the pool,
/// the caller would be a third thread competing with the two workers for two cores. And an idle rayon worker falls asleep within microseconds, so a pass made of hundreds of short
/// loops (decoding one token) pays a wake-up per loop, slow in a VM: `keep_awake` has the other workers
/// poll rayon for work, yielding the core while none is queued, as llama.cpp's threads spin during a pass.
/// If a polling worker is descheduled, the others run its share: rayon's loops are work-stealing.
///
/// A poller never runs on a thread that is inside a pass (two instances decoding at once): rayon may hand
/// a waiting thread any queued job, and a poller stacked on top of one pass, waiting for another whose
/// thread holds the first pass's poller, would never return.
fn on_pool<R: Send>(keep_awake: bool, f: impl FnOnce() -> R + Send) -> R {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicBool, Ordering};
    thread_local!(static IN_PASS: Cell<bool> = const { Cell::new(false) });
    let done = AtomicBool::new(false);
    rayon::scope(|s| {
        for _ in 1..if keep_awake { rayon::current_num_threads() } else { 1 } {
            s.spawn(|_| {
                if IN_PASS.get() {
                    return;
                }
                while !done.load(Ordering::Acquire) {
                    if rayon::yield_now() != Some(rayon::Yield::Executed) {
                        std::thread::yield_now();
                    }
                }
            });
        }
        // Restored on unwind too, and `done` set, so a panic in `f` releases the pollers.
        struct EndOfPass<'a>(bool, &'a AtomicBool);
        impl Drop for EndOfPass<'_> {
            fn drop(&mut self) {
                IN_PASS.set(self.0);
                self.1.store(true, Ordering::Release);
            }
        }
        let _end = EndOfPass(IN_PASS.replace(true), &done);
        f()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Many short parallel loops, as a decoding pass is.
    fn pass(seed: u64) -> u64 {
        use rayon::prelude::*;
        (0..50).map(|i| (0..64u64).into_par_iter().map(|j| j * i + seed).sum::<u64>()).sum()
    }

    #[test]
    fn passes_on_the_pool_from_several_threads_finish() {
        // Two callers keeping the workers awake at once (two instances decoding): no pass may wait on
        // another's poller. A deadlock here hangs the test.
        let callers: Vec<_> = (0..3u64)
            .map(|t| std::thread::spawn(move || (0..200).map(|i| on_pool(true, || pass(t * 1000 + i))).sum::<u64>()))
            .collect();
        let expected: Vec<u64> = (0..3u64).map(|t| (0..200).map(|i| pass(t * 1000 + i)).sum()).collect();
        let got: Vec<u64> = callers.into_iter().map(|c| c.join().unwrap()).collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn a_panicking_pass_releases_the_pool() {
        let caught = std::panic::catch_unwind(|| on_pool(true, || -> u64 { panic!("boom") }));
        assert!(caught.is_err());
        assert_eq!(on_pool(true, || pass(1)), pass(1), "the pool still works");
    }
}
