//! Shutdown of the node loop (PROTOCOL.md §7): on SIGTERM/SIGINT stop taking requests, let
//! a leader hand leadership to its most up-to-date peer so the cluster does not wait out an
//! election timeout, answer what is left, make what was acknowledged durable, and stop the
//! transports. A second signal stops waiting.

use super::Event;
use super::NodeLoop;
use crate::protocol::ErrorCode;
use crate::raft::Role;
use crossbeam_channel::Receiver;
use std::time::{Duration, Instant};

/// How long a leader that was asked to stop waits for its leadership transfer (and for the
/// requests in flight to be answered) before giving up (PROTOCOL.md §7: exit within ~1 s).
const SHUTDOWN_TRANSFER_WAIT: Duration = Duration::from_millis(300);

pub(super) struct Shutdown {
    /// Stop waiting at this instant, whatever is still in flight.
    give_up_at: Instant,
}

impl NodeLoop {
    /// SIGTERM/SIGINT: stop taking requests; a leader hands leadership to its most
    /// up-to-date peer so the cluster does not wait out an election timeout. A second
    /// signal stops waiting.
    pub(super) fn on_shutdown(&mut self) {
        let now = Instant::now();
        if let Some(shutdown) = &mut self.shutdown {
            log::info!("second signal: stopping now");
            shutdown.give_up_at = now;
            return;
        }
        log::info!("shutting down");
        self.shutdown = Some(Shutdown {
            give_up_at: now + SHUTDOWN_TRANSFER_WAIT,
        });
        if self.halted || self.core.role() != Role::Leader {
            return;
        }
        let status = self.core.status();
        let Some(target) = status
            .progress
            .iter()
            .filter(|progress| progress.id != self.config.id)
            .max_by_key(|progress| progress.match_index)
        else {
            return; // A single-node cluster: nobody to hand over to.
        };
        match self.core.transfer_leader(target.id) {
            Ok(()) => log::info!("handing leadership to node {}", target.id),
            Err(error) => log::info!("cannot hand leadership to node {}: {error}", target.id),
        }
    }

    /// Shutdown may complete once this node no longer leads (or never did) and nothing it
    /// started is unanswered, or when the wait is over.
    pub(super) fn shutdown_done(&self) -> bool {
        let Some(shutdown) = &self.shutdown else {
            return false;
        };
        let is_leader = !self.halted && self.core.role() == Role::Leader;
        let single_node = self.config.cluster.node_count() == 1;
        let settled = self.pending.is_empty() && (!is_leader || single_node);
        settled || Instant::now() >= shutdown.give_up_at
    }

    /// Answers what is left, makes what was acknowledged durable, and stops the transports.
    pub(super) fn finish(mut self, events: &Receiver<Event>) {
        self.answer_waiters_at_exit();
        for request in std::mem::take(&mut self.awaiting_clock) {
            self.fail(
                request.ticket,
                ErrorCode::ShuttingDown,
                "the node is shutting down; nothing was done, retry on another node",
            );
        }
        for ticket in self.pending.take_all() {
            self.fail(
                ticket,
                ErrorCode::ShuttingDown,
                "the node is shutting down; the outcome is unknown",
            );
        }
        if let Some(thread) = self.wal.stop() {
            // The thread writes what is queued, then exits; it may be blocked reporting to
            // our channel meanwhile, so keep emptying it (nothing in it matters any more).
            while !thread.is_finished() {
                let _ = events.recv_timeout(Duration::from_millis(1));
            }
            match thread.join() {
                // Everything acknowledged was synced before its reply; this catches the
                // lazily persisted commit index.
                Ok(Some(mut store)) if !self.halted => {
                    if let Some(hard_state) = self.pipeline.take_unwritten_hard_state() {
                        if let Err(error) = store.set_hard_state(&hard_state) {
                            log::error!("final hard state write failed: {error}");
                        }
                    }
                    if let Err(error) = store.sync() {
                        log::error!("final sync failed: {error}");
                    }
                }
                Ok(_) => {}
                Err(_) => log::error!("the WAL thread panicked"),
            }
        }
        self.clients.flush();
        self.clients.stop();
        self.peers.stop();
    }
}
