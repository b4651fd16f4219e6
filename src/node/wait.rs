//! How the node loop and the WAL thread block on their channels: crossbeam's spin-and-yield
//! while the work comes back to back, a plain park when it does not.
//!
//! Why: crossbeam's `recv` spins and then calls `sched_yield` about four times before it
//! parks, and on a busy machine each yield is a context switch to another thread. That pays
//! when the next message comes within microseconds (many clients: the yield lets the thread
//! that is about to send run, and the message is picked up without a futex sleep and wake;
//! parking every time measured slower there, docs/PERFORMANCE.md, "Tried and reverted:
//! parking instead of crossbeam's spin-and-yield"), and is pure cost when the next message
//! comes a request's round trip later (one client). So a thread keeps the spin-and-yield only
//! while its last wait was short, and otherwise waits in crossbeam's `Select`, which
//! registers and parks at once; the sender's wake-up is crossbeam's own either way.

use crossbeam_channel::{Receiver, RecvError, Select};
use std::time::{Duration, Instant};

/// A wait that lasted less than this was "short": the next message came while the thread
/// could as well have kept looking.
const SHORT_WAIT: Duration = Duration::from_micros(100);

/// Remembers whether the last blocking wait on one channel was short.
#[derive(Debug)]
pub(super) struct AdaptiveWait {
    last_wait_short: bool,
}

impl Default for AdaptiveWait {
    fn default() -> AdaptiveWait {
        AdaptiveWait {
            last_wait_short: true,
        }
    }
}

impl AdaptiveWait {
    /// Blocks for the next message on `channel`, like `Receiver::recv`.
    pub(super) fn recv<T>(&mut self, channel: &Receiver<T>) -> Result<T, RecvError> {
        if let Ok(message) = channel.try_recv() {
            return Ok(message);
        }
        let started = Instant::now();
        let message = if self.last_wait_short {
            channel.recv()
        } else {
            // `Select`, not `select!`: the macro turns a lone `recv` arm back into `recv()`.
            let mut select = Select::new();
            select.recv(channel);
            select.select().recv(channel)
        };
        self.last_wait_short = started.elapsed() < SHORT_WAIT;
        message
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
}
