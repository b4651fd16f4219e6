//! How the node loop and the WAL thread block on their channels: crossbeam's spin-and-yield
//! while the work comes back to back, a plain park when it does not.
//!
//! Why: crossbeam's `recv` spins and then calls `sched_yield` about four times before it
//! parks, and on a busy machine each yield is a context switch to another thread. That pays
//! when the next message comes within microseconds (many clients: the yield lets the thread
//! that is about to send run, and the message is picked up without a futex sleep and wake;
//! parking every time measured slower there, docs/PERFORMANCE.md, "Tried and reverted:
//! parking instead of crossbeam's spin-and-yield"), and is pure cost when the next message
//! comes a request's round trip later (one client). Otherwise the thread waits in
//! crossbeam's `Select`, which registers and parks at once; the sender's wake-up is
//! crossbeam's own either way.
//!
//! Which regime a thread is in is read from a moving average of how long its recent
//! `recv`s took, counting a message that was already queued as a wait of zero. The last wait
//! alone is a poor guide under load: on a saturated machine the yields themselves hand the
//! core away, so a wait that spun can take longer than the threshold while the channel is
//! rarely empty, and one such wait then made the next one park, paying a futex sleep and
//! wake between back-to-back events. Messages found queued pull the average down, so a
//! thread with a backlog keeps spinning; a thread that waits a round trip for every message
//! (one client) parks.

use crossbeam_channel::{Receiver, RecvError, Select};
use std::time::{Duration, Instant};

/// The moving average under which the next wait spins and yields before parking.
const SHORT_WAIT: Duration = Duration::from_micros(100);

/// The weight of the newest sample in the moving average: 1 / 2^`AVERAGE_SHIFT`.
const AVERAGE_SHIFT: u32 = 3;

/// Remembers how long the recent blocking waits on one channel were.
#[derive(Debug, Default)]
pub(super) struct AdaptiveWait {
    /// A moving average of the recent `recv`s' durations, in nanoseconds (an already
    /// queued message counts as zero).
    average_nanos: u64,
}

impl AdaptiveWait {
    /// Blocks for the next message on `channel`, like `Receiver::recv`.
    pub(super) fn recv<T>(&mut self, channel: &Receiver<T>) -> Result<T, RecvError> {
        if let Ok(message) = channel.try_recv() {
            self.record(0);
            return Ok(message);
        }
        let started = Instant::now();
        let message = if self.spins() {
            channel.recv()
        } else {
            // `Select`, not `select!`: the macro turns a lone `recv` arm back into `recv()`.
            let mut select = Select::new();
            select.recv(channel);
            select.select().recv(channel)
        };
        let waited = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.record(waited);
        message
    }

    /// Whether the next wait spins and yields before it parks.
    fn spins(&self) -> bool {
        self.average_nanos < SHORT_WAIT.as_nanos() as u64
    }

    fn record(&mut self, nanos: u64) {
        // Clamped so that one very long wait (an idle second) is forgotten after a few
        // back-to-back messages, not dozens, and so that a single long wait among queued
        // messages moves the average by half the threshold, not past it.
        let sample = nanos.min(4 * SHORT_WAIT.as_nanos() as u64);
        self.average_nanos =
            self.average_nanos - (self.average_nanos >> AVERAGE_SHIFT) + (sample >> AVERAGE_SHIFT);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_long_and_short_deliver_every_message_in_order_and_see_the_hang_up() {
        let (sender, receiver) = crossbeam_channel::unbounded::<u32>();
        let producer = std::thread::spawn(move || {
            for message in 0..200 {
                if message % 50 == 0 {
                    // Long enough that the next wait parks at once.
                    std::thread::sleep(Duration::from_millis(2));
                }
                sender.send(message).expect("receiver alive");
            }
        });
        let mut wait = AdaptiveWait::default();
        let mut received = Vec::new();
        while let Ok(message) = wait.recv(&receiver) {
            received.push(message);
        }
        producer.join().expect("producer");
        assert_eq!(received, (0..200).collect::<Vec<_>>());
    }

    #[test]
    fn queued_messages_keep_the_spin_and_long_waits_turn_it_off() {
        let mut wait = AdaptiveWait::default();
        assert!(wait.spins(), "a fresh thread spins");
        for _ in 0..20 {
            wait.record(Duration::from_millis(1).as_nanos() as u64);
        }
        assert!(
            !wait.spins(),
            "a thread that waits a round trip each time parks"
        );
        for _ in 0..40 {
            wait.record(0);
        }
        assert!(wait.spins(), "a backlog brings the spin back");
        // One long wait among queued messages does not make the next wait park.
        wait.record(Duration::from_millis(5).as_nanos() as u64);
        assert!(wait.spins());
    }
}
