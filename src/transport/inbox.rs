//! The node loop's inbox: a bounded crossbeam channel whose receiver sleeps on a parker
//! instead of inside `Receiver::recv`.
//!
//! Why: a blocking `crossbeam_channel::Receiver::recv` spins and then calls `sched_yield`
//! several times before it parks. On a machine where other threads are runnable (the other
//! nodes, the clients) every yield hands the core away, and an event that arrives meanwhile
//! waits for the scheduler to come back to the loop instead of waking it. The profile in
//! docs/PERFORMANCE.md counted 11.8 `sched_yield`s per request on the leader at one client,
//! and 18-27% of the leader loop's wall time inside them. Here the receiver takes what is
//! queued with `try_recv` and, when nothing is, parks at once (a futex wait, no spinning);
//! each send unparks it, which costs one atomic swap unless the receiver is actually asleep.
//!
//! The channel stays a crossbeam channel: bounded, so a loop that falls behind pushes back
//! on the transport threads (and ZeroMQ's queues behind them on clients and peers).
//!
//! What it must not do: lose a wake-up. A send always lands in the channel before the
//! unpark, and an unpark that comes before the park makes the park return at once, so the
//! receiver never sleeps with an event queued. A sender dropping unparks too, so the
//! receiver sees the channel disconnect.

use super::Disconnected;
use crossbeam_channel::{Receiver, SendTimeoutError, Sender, TryRecvError};
use crossbeam_utils::sync::{Parker, Unparker};
use std::time::Duration;

/// A producer's end. Clone one per producing thread.
pub struct InboxSender<T> {
    /// `None` only while dropping: the channel end is released before the final unpark.
    channel: Option<Sender<T>>,
    /// `None` for a plain channel (tests that receive with crossbeam's own `Receiver`).
    waker: Option<Unparker>,
}

/// The consumer's end, used by one thread: the node loop.
pub struct InboxReceiver<T> {
    channel: Receiver<T>,
    parker: Parker,
}

/// A bounded inbox holding at most `capacity` items.
pub fn inbox<T>(capacity: usize) -> (InboxSender<T>, InboxReceiver<T>) {
    let (sender, receiver) = crossbeam_channel::bounded(capacity);
    let parker = Parker::new();
    let sender = InboxSender {
        channel: Some(sender),
        waker: Some(parker.unparker().clone()),
    };
    (
        sender,
        InboxReceiver {
            channel: receiver,
            parker,
        },
    )
}

impl<T> InboxSender<T> {
    fn channel(&self) -> &Sender<T> {
        self.channel
            .as_ref()
            .expect("the channel end is only taken in drop")
    }

    fn wake(&self) {
        if let Some(waker) = &self.waker {
            waker.unpark();
        }
    }

    /// Queues `item`, waiting while the inbox is full, and wakes the receiver.
    pub fn send(&self, item: T) -> Result<(), Disconnected> {
        self.channel().send(item).map_err(|_| Disconnected)?;
        self.wake();
        Ok(())
    }

    /// Like [`InboxSender::send`], but gives the item back after `timeout` of a full inbox.
    pub fn send_timeout(&self, item: T, timeout: Duration) -> Result<(), SendTimeoutError<T>> {
        self.channel().send_timeout(item, timeout)?;
        self.wake();
        Ok(())
    }
}

impl<T> Clone for InboxSender<T> {
    fn clone(&self) -> InboxSender<T> {
        InboxSender {
            channel: self.channel.clone(),
            waker: self.waker.clone(),
        }
    }
}

impl<T> Drop for InboxSender<T> {
    fn drop(&mut self) {
        // Release the channel end first: if it was the last, the receiver wakes to find the
        // channel disconnected.
        drop(self.channel.take());
        self.wake();
    }
}

/// A plain channel end, with nobody to wake: for tests whose receiver is a crossbeam
/// `Receiver`.
impl<T> From<Sender<T>> for InboxSender<T> {
    fn from(channel: Sender<T>) -> InboxSender<T> {
        InboxSender {
            channel: Some(channel),
            waker: None,
        }
    }
}

impl<T> InboxReceiver<T> {
    /// The next item, sleeping until one comes; `Err` once every sender is gone and the
    /// inbox is empty.
    pub fn recv(&self) -> Result<T, Disconnected> {
        loop {
            match self.channel.try_recv() {
                Ok(item) => return Ok(item),
                Err(TryRecvError::Disconnected) => return Err(Disconnected),
                Err(TryRecvError::Empty) => self.parker.park(),
            }
        }
    }

    /// The next item if one is queued.
    pub fn try_recv(&self) -> Result<T, TryRecvError> {
        self.channel.try_recv()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn a_sleeping_receiver_wakes_for_each_item_in_order() {
        let (sender, receiver) = inbox::<u32>(4);
        let producer = std::thread::spawn(move || {
            for item in 0..1000 {
                if item % 100 == 0 {
                    // Give the receiver time to fall asleep now and then.
                    std::thread::sleep(Duration::from_millis(2));
                }
                sender.send(item).expect("the receiver is alive");
            }
        });
        let received: Vec<u32> = (0..1000)
            .map(|_| receiver.recv().expect("the producer sends 1000"))
            .collect();
        assert_eq!(received, (0..1000).collect::<Vec<_>>());
        producer.join().expect("the producer finishes");
        assert_eq!(
            receiver.recv(),
            Err(Disconnected),
            "the last sender is gone"
        );
    }

    #[test]
    fn dropping_the_last_sender_wakes_a_sleeping_receiver() {
        let (sender, receiver) = inbox::<u32>(1);
        let clone = sender.clone();
        let started = Instant::now();
        let dropper = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            drop(clone);
            std::thread::sleep(Duration::from_millis(20));
            drop(sender);
        });
        assert_eq!(receiver.recv(), Err(Disconnected));
        assert!(
            started.elapsed() >= Duration::from_millis(40),
            "woke before the last sender was dropped"
        );
        dropper.join().expect("the dropper finishes");
    }

    #[test]
    fn a_full_inbox_gives_the_item_back_after_the_timeout() {
        let (sender, receiver) = inbox::<u32>(1);
        sender.send(1).expect("room for one");
        match sender.send_timeout(2, Duration::from_millis(10)) {
            Err(SendTimeoutError::Timeout(2)) => {}
            other => panic!("expected the item back, got {other:?}"),
        }
        assert_eq!(receiver.try_recv(), Ok(1));
        assert_eq!(receiver.try_recv(), Err(TryRecvError::Empty));
    }
}
