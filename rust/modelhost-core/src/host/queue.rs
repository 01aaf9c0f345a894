//! The per-instance request queue: one request at a time, in arrival order (SPEC §4).

use std::sync::{Condvar, Mutex};

use super::lock;

/// A FIFO lock: requests to one instance run one at a time, in arrival order.
#[derive(Default)]
pub(super) struct FifoQueue {
    tickets: Mutex<(u64, u64)>,
    turn: Condvar,
}

impl FifoQueue {
    /// Take a ticket and wait until it is served; returns the ticket.
    pub(super) fn wait_turn(&self) -> u64 {
        let mut t = lock(&self.tickets);
        let mine = t.0;
        t.0 += 1;
        while t.1 != mine {
            t = self.turn.wait(t).unwrap_or_else(|e| e.into_inner());
        }
        mine
    }

    /// The request being served is done: serve the next ticket.
    pub(super) fn done(&self) {
        lock(&self.tickets).1 += 1;
        self.turn.notify_all();
    }
}
