//! Idle TTLs: a core-only background thread (never calls Python) that unloads an instance once it has been idle
//! for its TTL. A request in flight, a stream included, is never evicted.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::instance::Instance;
use super::{lock, SharedHost};

/// How long the TTL thread sleeps when no instance has a deadline.
const TTL_IDLE_WAIT: Duration = Duration::from_secs(60);

/// When an instance expires: `ttl` after its last use ended, never while a request is in flight or without a TTL
/// (or one so long that the deadline does not exist).
fn deadline(ttl: Option<Duration>, in_flight: usize, last_used: Instant) -> Option<Instant> {
    ttl.filter(|_| in_flight == 0).and_then(|t| last_used.checked_add(t))
}

/// Of one deadline per instance, the indices of those passed at `now`, and the earliest one still ahead.
fn sweep(deadlines: &[Option<Instant>], now: Instant) -> (Vec<usize>, Option<Instant>) {
    let expired = (0..deadlines.len()).filter(|&n| deadlines[n].is_some_and(|d| d <= now)).collect();
    let next = deadlines.iter().flatten().filter(|&&d| d > now).min().copied();
    (expired, next)
}

/// The TTL thread: unload instances idle past their TTL, sleeping until the next deadline or a change.
pub(super) fn ttl_loop(shared: Weak<SharedHost>) {
    loop {
        let Some(shared) = shared.upgrade() else { return };
        let mut st = lock(&shared.table);
        if st.closed {
            return;
        }
        let deadlines: Vec<Option<Instant>> = st
            .instances
            .iter()
            .map(|i| {
                let a = lock(&i.activity);
                deadline(i.ttl, a.in_flight, a.last_used)
            })
            .collect();
        let (expired, next) = sweep(&deadlines, Instant::now());
        let expired: Vec<Arc<Instance>> = expired.into_iter().rev().map(|n| st.remove(n)).collect();
        for e in &expired {
            e.mark_unloaded("its TTL expired");
        }
        let version = st.version + u64::from(!expired.is_empty());
        if !expired.is_empty() {
            shared.notify(&mut st);
        }
        drop(st);
        drop(expired); // freeing a model can take a while: not under the lock
        let st = lock(&shared.table);
        if st.version != version || st.closed {
            continue;
        }
        let timeout = next.map_or(TTL_IDLE_WAIT, |d| d.saturating_duration_since(Instant::now()));
        let _unused = shared.changed.wait_timeout(st, timeout).unwrap_or_else(|e| e.into_inner());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_is_the_ttl_after_the_last_use_and_none_while_busy_or_without_a_ttl() {
        let used = Instant::now();
        let ttl = Some(Duration::from_secs(5));
        assert_eq!(deadline(ttl, 0, used), Some(used + Duration::from_secs(5)));
        assert_eq!(deadline(ttl, 1, used), None, "a request in flight is never evicted");
        assert_eq!(deadline(None, 0, used), None, "no TTL: never");
        assert_eq!(deadline(Some(Duration::MAX), 0, used), None, "a deadline past the end of time: never");
    }

    #[test]
    fn a_sweep_takes_the_passed_deadlines_and_waits_for_the_earliest_ahead() {
        let now = Instant::now();
        let at = |s: i64| {
            if s < 0 {
                now - Duration::from_secs(s.unsigned_abs())
            } else {
                now + Duration::from_secs(s as u64)
            }
        };
        let deadlines = [Some(at(-3)), None, Some(at(7)), Some(at(0)), Some(at(2)), None];
        assert_eq!(sweep(&deadlines, now), (vec![0, 3], Some(at(2))));
        assert_eq!(sweep(&[None, None], now), (vec![], None));
        assert_eq!(sweep(&[], now), (vec![], None));
    }
}
