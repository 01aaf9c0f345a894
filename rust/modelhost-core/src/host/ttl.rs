//! Idle TTLs: a core-only background thread (never calls Python) that unloads an instance once it has been idle
//! for its TTL. A request in flight, a stream included, is never evicted.

use std::sync::Weak;
use std::time::{Duration, Instant};

use super::{lock, SharedHost};

/// How long the TTL thread sleeps when no instance has a deadline.
const TTL_IDLE_WAIT: Duration = Duration::from_secs(60);

/// The TTL thread: unload instances idle past their TTL, sleeping until the next deadline or a change.
pub(super) fn ttl_loop(shared: Weak<SharedHost>) {
    loop {
        let Some(shared) = shared.upgrade() else { return };
        let mut st = lock(&shared.table);
        if st.closed {
            return;
        }
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        let mut expired = Vec::new();
        st.instances.retain(|i| {
            let a = lock(&i.activity);
            match i.ttl {
                Some(ttl) if a.in_flight == 0 => {
                    let deadline = a.last_used + ttl;
                    if deadline <= now {
                        expired.push(i.clone());
                        return false;
                    }
                    next = Some(next.map_or(deadline, |n| n.min(deadline)));
                    true
                }
                _ => true,
            }
        });
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
