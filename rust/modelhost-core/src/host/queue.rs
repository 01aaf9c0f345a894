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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[test]
    fn requests_run_one_at_a_time_in_arrival_order() {
        let queue = Arc::new(FifoQueue::default());
        let order = Arc::new(Mutex::new(Vec::new()));
        assert_eq!(queue.wait_turn(), 0, "an idle queue serves at once");
        let mut waiters = Vec::new();
        for id in 1..=3u64 {
            let (waiting, order) = (queue.clone(), order.clone());
            waiters.push(std::thread::spawn(move || {
                let ticket = waiting.wait_turn();
                order.lock().unwrap().push((id, ticket));
                waiting.done();
            }));
            // The next waiter arrives only once this one holds its ticket.
            while lock(&queue.tickets).0 <= id {
                std::thread::yield_now();
            }
        }
        assert!(order.lock().unwrap().is_empty(), "nobody runs while the first request is served");
        queue.done();
        for w in waiters {
            w.join().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![(1, 1), (2, 2), (3, 3)]);
    }
}
