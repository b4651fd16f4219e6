//! Checkers of the replicated state machine (`rrmq::queue::Queue`): client sessions make
//! every operation take effect exactly once, and all replicas hold the same state at the
//! same applied index.
//!
//! A [`Reference`] queue applies the committed history once, in order, as it grows. What
//! each entry *did* is read from the outside — the queue's message count going up or down
//! and the outcome — never from the session table, so [`ExactlyOnce`] is independent of the
//! code it checks: a PUT's message is enqueued at most once, a GET pops at most one message
//! (the front of a model FIFO kept from those effects), a retry of an applied command gets
//! the first reply and has no effect, and `SESSION_EXPIRED` only appears where a session can
//! have been forgotten. Every node's application of an index must then give the outcome and
//! counters the reference got there ([`Reference::check_replica`], cheap, every entry),
//! and whole-state digests at checkpoints, snapshots and the end of the run must agree
//! ([`StateDigests`]).
//!
//! The version 2 commands (PROTOCOL.md §8, §10) are followed by a model of the queue
//! ([`Model`]): per topic its messages in order, each ready or under a lease (receipt,
//! deadline, deliveries so far). A first execution's outcome says what it did (the
//! messages and receipts a leased or batch GET handed out, the receipts an ACK or NACK
//! found stale) and the model checks that this was possible: a GET hands out the topic's
//! next ready messages in order, so a NACKed or expired message is handed out again before
//! every message put after it; a receipt is refused exactly when it names no live lease;
//! `EndLeases` gives back the leases due, earliest deadline first, and a message at its
//! delivery limit moves to the end of its dead-letter topic or is discarded. After every
//! version 2 entry the reference's live leases must be the model's, and never two on one
//! message ([`ExactlyOnce::check_leases`]); after every entry the message count must be the
//! model's; at the end every message put must be exactly one of acked once, popped once,
//! held (ready, leased or dead-lettered) or discarded and counted
//! ([`ExactlyOnce::check_fates`]), and each topic must hold the model's messages in order.
//! This model stands in for a linearizability check of the new operations: it runs on the
//! committed history, where the order is the log's.
//!
//! The documented exception (`src/queue/mod.rs`: a client forgotten while its first command
//! was unanswered has that command applied again) is kept out of the workload: a client
//! instance's seq 1 is always a `CreateTopic`, which moves no message, and only its reply may
//! then differ between executions.

use super::trace::ReplySummary;
use super::workload::{command_key, decode, message_id, CommandKey};
use super::{property, Violation};
use rrmq::protocol::{Delivery, ErrorCode, Outcome, TopicSettings};
use rrmq::queue::{Command, LoggedCommand, Queue, QueueConfig, QueueStats};
use rrmq::raft::{Entry, EntryPayload, LogIndex, NodeId};
use std::collections::{BTreeMap, HashMap, HashSet};

/// Whole-state digests are compared at every index divisible by this (digests cost a full
/// encoding of the state; the outcome and counters are compared at every index).
pub const DIGEST_EVERY_ENTRIES: u64 = 16;

/// What applying one committed entry gave the reference.
struct Applied {
    /// `None` for a no-op, which the queue never sees.
    outcome: Option<Outcome>,
    stats: QueueStats,
}

/// The state machine applied once along the committed history.
pub struct Reference {
    queue: Queue,
    /// Per history index (the first is 1).
    records: Vec<Applied>,
    pub exactly_once: ExactlyOnce,
    pub digests: StateDigests,
}

impl Reference {
    pub fn new(config: QueueConfig) -> Reference {
        let sessions_max = config.sessions_max;
        Reference {
            queue: Queue::new(config),
            records: Vec::new(),
            exactly_once: ExactlyOnce::new(sessions_max),
            digests: StateDigests::default(),
        }
    }

    pub fn applied(&self) -> LogIndex {
        LogIndex(self.records.len() as u64)
    }

    /// Applies the committed entry at `index`, the next one.
    pub fn apply(&mut self, index: LogIndex, entry: &Entry) -> Result<(), Violation> {
        assert_eq!(
            index,
            self.applied().next(),
            "the reference applies in order"
        );
        let outcome = match &entry.payload {
            EntryPayload::Noop | EntryPayload::Membership(_) => None,
            EntryPayload::Command(_) => {
                let Some(command) = decode(entry) else {
                    return Err(Violation::new(
                        property::CLIENT_ORACLE,
                        format!("committed entry {} is not a queue command", entry.id()),
                    ));
                };
                let before = self.queue.stats();
                let outcome = self.queue.apply_command(index, &command);
                let after = self.queue.stats();
                self.exactly_once
                    .observe(index, &command, &outcome, &before, &after)?;
                if !matches!(
                    command.command,
                    Command::CreateTopic { .. } | Command::Put { .. } | Command::Get { .. }
                ) {
                    self.exactly_once.check_leases(&self.queue)?;
                }
                Some(outcome)
            }
        };
        self.records.push(Applied {
            outcome,
            stats: self.queue.stats(),
        });
        if index.0.is_multiple_of(DIGEST_EVERY_ENTRIES) {
            self.digests.check(index, self.queue.digest(), None)?;
        }
        Ok(())
    }

    /// Node `node` applied `index` to its own queue, getting `outcome` (`None`: a no-op) and
    /// then `stats`: the reference got the same there.
    pub fn check_replica(
        &self,
        node: NodeId,
        index: LogIndex,
        outcome: Option<&Outcome>,
        stats: &QueueStats,
    ) -> Result<(), Violation> {
        let Some(applied) = self.record(index) else {
            return Err(Violation::new(
                property::REPLICA_STATE,
                format!(
                    "n{node} applied {index}, beyond the reference ({})",
                    self.applied()
                ),
            ));
        };
        if applied.outcome.as_ref() != outcome || applied.stats != *stats {
            return Err(Violation::new(
                property::REPLICA_STATE,
                format!(
                    "n{node} applying {index} got {} and {stats:?}; applying the committed \
                     history gives {} and {:?}",
                    brief(outcome),
                    brief(applied.outcome.as_ref()),
                    applied.stats
                ),
            ));
        }
        Ok(())
    }

    /// The whole state of node `node`, which has applied up to `index`, as a digest: equal
    /// to every other digest taken at `index`, and its counters to the reference's there.
    pub fn check_state(
        &mut self,
        node: NodeId,
        index: LogIndex,
        queue: &Queue,
    ) -> Result<(), Violation> {
        if index > LogIndex::ZERO {
            let Some(applied) = self.record(index) else {
                return Err(Violation::new(
                    property::REPLICA_STATE,
                    format!("n{node} holds a state at {index}, beyond the reference"),
                ));
            };
            if applied.stats != queue.stats() {
                return Err(Violation::new(
                    property::REPLICA_STATE,
                    format!(
                        "n{node}'s state at {index} has {:?}, the committed history gives {:?}",
                        queue.stats(),
                        applied.stats
                    ),
                ));
            }
        }
        self.digests.check(index, queue.digest(), Some(node))
    }

    /// At the end of a run: the reference's own digest, and its messages against the model
    /// of what the operations' effects left.
    pub fn finish(&mut self) -> Result<(), Violation> {
        let index = self.applied();
        self.digests.check(index, self.queue.digest(), None)?;
        self.exactly_once.check_fates(&self.queue)?;
        self.exactly_once.check_leases(&self.queue)?;
        self.exactly_once.check_contents(&self.queue)
    }

    fn record(&self, index: LogIndex) -> Option<&Applied> {
        let position = usize::try_from(index.0).ok()?.checked_sub(1)?;
        self.records.get(position)
    }
}

/// The first digest seen at each applied index, and who had it.
#[derive(Default)]
pub struct StateDigests {
    first: HashMap<LogIndex, (u32, Option<NodeId>)>,
    pub compared: u64,
}

impl StateDigests {
    /// `who` is `None` for the reference.
    pub fn check(
        &mut self,
        index: LogIndex,
        digest: u32,
        who: Option<NodeId>,
    ) -> Result<(), Violation> {
        let (first, first_who) = *self.first.entry(index).or_insert((digest, who));
        self.compared += 1;
        if first != digest {
            let name = |who: Option<NodeId>| {
                who.map_or("the reference".to_string(), |id| format!("n{id}"))
            };
            return Err(Violation::new(
                property::REPLICA_STATE,
                format!(
                    "state at applied index {index}: {} has digest {digest:08x}, {} had {first:08x}",
                    name(who),
                    name(first_who)
                ),
            ));
        }
        Ok(())
    }
}

/// Exactly-once semantics of the operations, from their effects along the committed history.
pub struct ExactlyOnce {
    sessions_max: usize,
    /// Message id -> where its PUT took effect, and which operation that was.
    enqueued: HashMap<u64, (LogIndex, CommandKey)>,
    /// What each topic must hold, in the topic's order, with each message's lease.
    model: Model,
    /// Message id -> where a GET popped it.
    popped: HashMap<u64, LogIndex>,
    /// Message id -> where an ACK deleted it.
    acked: HashMap<u64, LogIndex>,
    /// GET -> the message it popped, and where.
    popped_by: HashMap<CommandKey, (u64, LogIndex)>,
    /// The latest time the applied log carries (the queue's lease clock): a grant or TOUCH
    /// stamped behind it starts at it instead, keeping its length.
    clock_ms: u64,
    /// Session command -> its first outcome other than `SESSION_EXPIRED`, and where.
    first_outcome: HashMap<CommandKey, (Outcome, LogIndex)>,
    /// Per client instance: the highest seq seen in the history.
    highest_seq: HashMap<u64, u64>,
    session_clients: HashSet<u64>,
    pub replays: u64,
    pub expired: u64,
    /// Commands refused with `QUOTA` where they were applied (replays not counted).
    pub quota_refusals: u64,
    pub counts: LeaseCounts,
}

/// How often the version 2 paths were taken, so a run that stopped taking them shows.
#[derive(Clone, Copy, Debug, Default)]
pub struct LeaseCounts {
    pub leases_granted: u64,
    pub acks: u64,
    pub given_back: u64,
    pub dead_lettered: u64,
}

fn brief(outcome: Option<&Outcome>) -> String {
    outcome.map_or("(a no-op)".to_string(), |outcome| {
        ReplySummary::of(outcome).to_string()
    })
}

fn is_expired(outcome: &Outcome) -> bool {
    matches!(outcome, Outcome::Failed(error) if error.code == ErrorCode::SessionExpired)
}

impl ExactlyOnce {
    pub fn new(sessions_max: usize) -> ExactlyOnce {
        ExactlyOnce {
            sessions_max,
            enqueued: HashMap::new(),
            model: Model::default(),
            popped: HashMap::new(),
            acked: HashMap::new(),
            popped_by: HashMap::new(),
            clock_ms: 0,
            first_outcome: HashMap::new(),
            highest_seq: HashMap::new(),
            session_clients: HashSet::new(),
            replays: 0,
            expired: 0,
            quota_refusals: 0,
            counts: LeaseCounts::default(),
        }
    }

    /// Whether some session can have been forgotten by now: more clients than the table
    /// holds have opened one.
    pub fn evictions_possible(&self) -> bool {
        self.session_clients.len() > self.sessions_max
    }

    /// Whether `key` is the documented exception: a client's first command, whose session
    /// may have been forgotten before it was answered, and which is then executed again.
    pub fn executed_again_allowed(&self, key: CommandKey) -> bool {
        matches!(key, CommandKey::Session { seq, .. } if seq <= 1) && self.evictions_possible()
    }

    /// The committed entry at `index` carried `command`; applying it gave `outcome` and moved
    /// the queue's counters from `before` to `after`.
    pub fn observe(
        &mut self,
        index: LogIndex,
        command: &LoggedCommand,
        outcome: &Outcome,
        before: &QueueStats,
        after: &QueueStats,
    ) -> Result<(), Violation> {
        let violation = |detail: String| Err(Violation::new(property::EXACTLY_ONCE, detail));
        let answered = ReplySummary::of(outcome);
        let Some(key) = command_key(command) else {
            return Err(Violation::new(
                property::CLIENT_ORACLE,
                format!("committed entry {index} carries {command:?}, which no client sent"),
            ));
        };
        let change = after.messages as i64 - before.messages as i64;
        let first_execution = match key {
            CommandKey::Session { .. } => {
                !is_expired(outcome) && !self.first_outcome.contains_key(&key)
            }
            CommandKey::Unkeyed(_) | CommandKey::Probe(_) | CommandKey::LeaseEnd(_) => true,
        };
        if let (Command::CreateTopic { topic }, Outcome::Done) = (&command.command, outcome) {
            self.model.create(topic, &TopicSettings::default());
        }
        match (&command.command, change) {
            (Command::CreateTopic { .. } | Command::Put { .. } | Command::Get { .. }, 0) => {}
            (Command::Put { topic, message }, 1) => {
                let Some(id) = message_id(message) else {
                    return violation(format!("{key} at {index} put a message without an id"));
                };
                if *outcome != Outcome::Done {
                    return violation(format!(
                        "{key} at {index} enqueued m{id} but answered {answered}"
                    ));
                }
                self.enqueue(index, key, topic, id)?;
            }
            (Command::Get { topic }, -1) => {
                let Outcome::Message(payload) = outcome else {
                    return violation(format!(
                        "{key} at {index} popped a message but answered {answered}"
                    ));
                };
                let id = message_id(payload);
                let front = self.model.take_ready(topic, 1);
                if id.is_none() || front != [id.unwrap_or_default()] {
                    return violation(format!(
                        "{key} at {index} popped {id:?} from {topic}, whose next ready message \
                         is {front:?}: a message lost, duplicated or reordered"
                    ));
                }
                let id = id.expect("checked above");
                self.pop(index, topic, id)?;
                if let Some((earlier, at)) = self.popped_by.insert(key, (id, index)) {
                    return violation(format!(
                        "GET {key} popped twice: m{earlier} at {at} and m{id} at {index}"
                    ));
                }
            }
            (Command::CreateTopic { .. } | Command::Put { .. } | Command::Get { .. }, change) => {
                return violation(format!(
                    "{key} at {index} changed the message count by {change}"
                ))
            }
            // Version 2: the effects follow from the outcome of a first execution; a replay
            // or a refusal has none.
            _ if first_execution => self.apply_v2(index, key, &command.command, outcome)?,
            _ => {}
        }
        if self.model.total != after.messages {
            return violation(format!(
                "after {key} at {index} the queue holds {} messages; the operations' effects \
                 leave {}",
                after.messages, self.model.total
            ));
        }
        if first_execution
            && matches!(outcome, Outcome::Failed(error) if error.code == ErrorCode::Quota)
        {
            self.quota_refusals += 1;
        }
        if first_execution {
            // A first execution does what it answers: Done for a PUT that enqueued, a
            // message for a GET that popped it.
            let consistent = match &command.command {
                Command::Put { .. } => (*outcome == Outcome::Done) == (change == 1),
                Command::Get { .. } => matches!(outcome, Outcome::Message(_)) == (change == -1),
                Command::CreateTopic { .. } => true,
                // The workload does not send the version 2 commands yet.
                _ => true,
            };
            if !consistent {
                return violation(format!(
                    "{key} at {index} answered {answered} but changed the message count by \
                     {change}"
                ));
            }
        }
        let CommandKey::Session { client, seq } = key else {
            return Ok(());
        };
        if is_expired(outcome) {
            self.expired += 1;
            let stale = self
                .highest_seq
                .get(&client)
                .is_some_and(|&high| high > seq);
            if !stale && !self.evictions_possible() {
                return violation(format!(
                    "{key} at {index} was refused SESSION_EXPIRED, but it is the client's \
                     newest seq and no session can have been forgotten ({} clients, \
                     sessions_max {})",
                    self.session_clients.len(),
                    self.sessions_max
                ));
            }
        } else if let Some((first, at)) = self.first_outcome.get(&key) {
            self.replays += 1;
            // The documented exception: a first command whose session was forgotten is
            // executed again. Only its reply may differ: seq 1 is a CreateTopic.
            if !self.executed_again_allowed(key) && (outcome != first || change != 0) {
                let first = ReplySummary::of(first);
                return violation(format!(
                    "retry of {key} at {index} answered {answered} (changing the message \
                     count by {change}); it first answered {first} at {at}"
                ));
            }
        } else {
            self.first_outcome.insert(key, (outcome.clone(), index));
        }
        let high = self.highest_seq.entry(client).or_insert(seq);
        *high = (*high).max(seq);
        self.session_clients.insert(client);
        Ok(())
    }

    /// A node answered `key` (carrying `command`) with `outcome`, from the entry at `index`:
    /// the answer must tell the truth about what the operation did.
    pub fn check_reply(
        &self,
        node: NodeId,
        key: CommandKey,
        command: &LoggedCommand,
        index: LogIndex,
        outcome: &Outcome,
    ) -> Result<(), Violation> {
        let violation = |detail: String| Err(Violation::new(property::EXACTLY_ONCE, detail));
        if is_expired(outcome) {
            return Ok(());
        }
        let answer = ReplySummary::of(outcome);
        if let Some((first, at)) = self.first_outcome.get(&key) {
            if outcome != first && !self.executed_again_allowed(key) {
                let first = ReplySummary::of(first);
                return violation(format!(
                    "n{node} answered {key} (entry {index}) with {answer}, its first \
                     execution at {at} with {first}"
                ));
            }
        }
        match &command.command {
            Command::Put { message, .. } => {
                let id = message_id(message);
                let took_effect = id.is_some_and(|id| self.enqueued.contains_key(&id));
                if (*outcome == Outcome::Done) != took_effect {
                    return violation(format!(
                        "n{node} answered PUT {key} (entry {index}) with {answer}, but its \
                         message {id:?} {} enqueued",
                        if took_effect { "was" } else { "was never" }
                    ));
                }
            }
            Command::Get { .. } => {
                let popped = self.popped_by.get(&key).map(|&(id, _)| id);
                let answered = match outcome {
                    Outcome::Message(payload) => message_id(payload),
                    _ => None,
                };
                if popped != answered {
                    return violation(format!(
                        "n{node} answered GET {key} (entry {index}) with {answered:?}, but it \
                         popped {popped:?}"
                    ));
                }
            }
            Command::CreateTopic { .. } => {}
            // The workload does not send the version 2 commands yet.
            _ => {}
        }
        Ok(())
    }

    /// The queue holds exactly the messages the model holds, in each topic's order.
    pub fn check_contents(&self, queue: &Queue) -> Result<(), Violation> {
        let held = contents(queue);
        let mut topics: Vec<&String> = held.keys().chain(self.model.topics.keys()).collect();
        topics.sort();
        topics.dedup();
        for topic in topics {
            let held_ids = held.get(topic).cloned().unwrap_or_default();
            let expected: Vec<Option<u64>> = self
                .model
                .topics
                .get(topic)
                .map(|model| model.held.iter().map(|held| Some(held.id)).collect())
                .unwrap_or_default();
            if held_ids != expected {
                return Err(Violation::new(
                    property::EXACTLY_ONCE,
                    format!(
                        "topic {topic} holds {held_ids:?}; the operations' effects leave \
                         {expected:?}"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// No message is held under two live leases, and the queue's live leases are the
    /// model's: checked on the reference's state after every version 2 entry.
    pub fn check_leases(&self, queue: &Queue) -> Result<(), Violation> {
        let violation = |detail: String| Err(Violation::new(property::LEASES, detail));
        let mut holders: HashMap<u64, String> = HashMap::new();
        let mut live = Vec::new();
        for (topic, receipt, deadline_ms) in queue.leases_due(u64::MAX) {
            let Some(&id) = self.model.receipt_ids.get(&receipt) else {
                return violation(format!(
                    "{topic} has a live lease {receipt:?} that no leased GET was answered with"
                ));
            };
            if let Some(other) = holders.insert(id, receipt.clone()) {
                return violation(format!(
                    "m{id} is held under two live leases at once: {other:?} and {receipt:?}"
                ));
            }
            live.push((topic.to_string(), receipt, deadline_ms));
        }
        live.sort();
        let mut expected = self.model.live_leases();
        expected.sort();
        if live != expected {
            return violation(format!(
                "the queue's live leases are {live:?}; the operations' effects leave {expected:?}"
            ));
        }
        Ok(())
    }

    /// At the end: every message put is exactly one of acked (once), popped (once), still
    /// held (ready or leased, in its topic or, once, in a dead-letter topic) or discarded
    /// (and counted by its topic).
    pub fn check_fates(&self, queue: &Queue) -> Result<(), Violation> {
        let violation = |detail: String| Err(Violation::new(property::FATES, detail));
        let mut fates: HashMap<u64, Vec<String>> = HashMap::new();
        for (topic, ids) in contents(queue) {
            for id in ids {
                let Some(id) = id else {
                    return violation(format!("{topic} holds a message without an id"));
                };
                fates
                    .entry(id)
                    .or_default()
                    .push(format!("held in {topic}"));
            }
        }
        for (id, at) in &self.acked {
            fates.entry(*id).or_default().push(format!("acked at {at}"));
        }
        for (id, at) in &self.popped {
            fates
                .entry(*id)
                .or_default()
                .push(format!("popped at {at}"));
        }
        for (id, at) in &self.model.discarded {
            fates
                .entry(*id)
                .or_default()
                .push(format!("discarded at {at}"));
        }
        for (id, fate) in &fates {
            if !self.enqueued.contains_key(id) {
                return violation(format!("m{id} was never put, but is {fate:?}"));
            }
        }
        for id in self.enqueued.keys() {
            let fate = fates.get(id).map_or(&[][..], Vec::as_slice);
            if fate.len() != 1 {
                return violation(format!(
                    "m{id} was put; at the end it is {fate:?}, not exactly one of acked, \
                     popped, held, dead-lettered or discarded"
                ));
            }
        }
        for detail in queue.topic_details() {
            let counted = self
                .model
                .topics
                .get(&detail.name)
                .map_or(0, |model| model.discarded);
            if detail.discarded != counted {
                return violation(format!(
                    "{} counts {} discarded messages; {counted} were",
                    detail.name, detail.discarded
                ));
            }
        }
        Ok(())
    }

    fn enqueue(
        &mut self,
        index: LogIndex,
        key: CommandKey,
        topic: &str,
        id: u64,
    ) -> Result<(), Violation> {
        if let Some((at, by)) = self.enqueued.insert(id, (index, key)) {
            return Err(Violation::new(
                property::EXACTLY_ONCE,
                format!("message m{id} took effect twice: {by} at {at}, {key} at {index}"),
            ));
        }
        if !self.model.push(topic, id) {
            return Err(Violation::new(
                property::EXACTLY_ONCE,
                format!("{key} at {index} put m{id} into {topic}, which was never created"),
            ));
        }
        Ok(())
    }

    fn pop(&mut self, index: LogIndex, topic: &str, id: u64) -> Result<(), Violation> {
        self.model.remove(topic, id);
        if let Some(at) = self.popped.insert(id, index) {
            return Err(Violation::new(
                property::EXACTLY_ONCE,
                format!("m{id} popped twice from {topic}: at {at} and at {index}"),
            ));
        }
        Ok(())
    }

    /// Hands out `delivered` from `topic` under leases ending at `deadline_ms`: they must be
    /// its first ready messages in its order (returned messages keep their place), each
    /// delivered once more than before, under a receipt never seen before.
    fn lease(
        &mut self,
        index: LogIndex,
        key: CommandKey,
        topic: &str,
        delivered: &[Delivery],
        deadline_ms: u64,
    ) -> Result<(), Violation> {
        let ids: Vec<Option<u64>> = delivered.iter().map(|d| message_id(&d.message)).collect();
        let next: Vec<Option<u64>> = self
            .model
            .take_ready(topic, delivered.len())
            .into_iter()
            .map(Some)
            .collect();
        if delivered.is_empty() || ids != next {
            return Err(Violation::new(
                property::LEASES,
                format!(
                    "{key} at {index} leased {ids:?} from {topic}, whose next ready messages \
                     are {next:?}: a message handed out twice, lost or out of order"
                ),
            ));
        }
        for delivery in delivered {
            let id = message_id(&delivery.message).expect("checked above");
            if self
                .model
                .receipt_ids
                .insert(delivery.receipt.clone(), id)
                .is_some()
            {
                return Err(Violation::new(
                    property::LEASES,
                    format!("{key} at {index} reused receipt {:?}", delivery.receipt),
                ));
            }
            let held = self.model.find_mut(topic, id).expect("just taken");
            held.deliveries += 1;
            if held.deliveries != delivery.deliveries {
                return Err(Violation::new(
                    property::LEASES,
                    format!(
                        "{key} at {index} delivered m{id} for the {}th time, counted as {}",
                        held.deliveries, delivery.deliveries
                    ),
                ));
            }
            held.lease = Some((delivery.receipt.clone(), deadline_ms));
            self.counts.leases_granted += 1;
        }
        Ok(())
    }

    /// ACK, NACK or TOUCH of `receipts` on `topic`, in order, of which `stale` were refused:
    /// a receipt is refused exactly when it names no live lease.
    fn settle(
        &mut self,
        index: LogIndex,
        key: CommandKey,
        topic: &str,
        receipts: &[String],
        stale: &[String],
        settle: Settle,
    ) -> Result<(), Violation> {
        let mut refused = Vec::new();
        for receipt in receipts {
            let Some(id) = self.model.live_lease(topic, receipt) else {
                refused.push(receipt.clone());
                continue;
            };
            match settle {
                Settle::Ack => {
                    self.counts.acks += 1;
                    self.model.remove(topic, id);
                    if let Some(at) = self.acked.insert(id, index) {
                        return Err(Violation::new(
                            property::FATES,
                            format!("m{id} acked twice: at {at} and by {key} at {index}"),
                        ));
                    }
                }
                Settle::Nack => self.give_back(index, topic, id),
                Settle::Touch(deadline_ms) => {
                    let held = self.model.find_mut(topic, id).expect("a live lease");
                    held.lease = Some((receipt.clone(), deadline_ms));
                }
            }
        }
        let mut stale = stale.to_vec();
        stale.sort();
        refused.sort();
        if stale != refused {
            return Err(Violation::new(
                property::LEASES,
                format!(
                    "{key} at {index} refused {stale:?} as stale; the live leases make that \
                     {refused:?}"
                ),
            ));
        }
        Ok(())
    }

    fn give_back(&mut self, index: LogIndex, topic: &str, id: u64) {
        self.counts.given_back += 1;
        if self.model.give_back(index, topic, id) {
            self.counts.dead_lettered += 1;
        }
    }

    /// The effects of a version 2 command's first execution, from its outcome.
    fn apply_v2(
        &mut self,
        index: LogIndex,
        key: CommandKey,
        command: &Command,
        outcome: &Outcome,
    ) -> Result<(), Violation> {
        let answered = ReplySummary::of(outcome);
        let unexpected = || {
            Err(Violation::new(
                property::EXACTLY_ONCE,
                format!("{key} at {index} ({command:?}) answered {answered:?}"),
            ))
        };
        let stale_one =
            matches!(outcome, Outcome::Failed(error) if error.code == ErrorCode::StaleReceipt);
        let single = |receipt: &String| -> Vec<String> {
            if stale_one {
                vec![receipt.clone()]
            } else {
                Vec::new()
            }
        };
        // Every execution of a grant or TOUCH, refused or not, observes its time on the
        // log's clock first; the lease ends its length after the later of the two.
        let lease_deadline = match command {
            Command::GetLeased { lease, .. }
            | Command::GetBatch {
                lease: Some(lease), ..
            }
            | Command::Touch { lease, .. } => {
                self.clock_ms = self.clock_ms.max(lease.now_ms);
                self.clock_ms
                    .saturating_add(lease.deadline_ms.saturating_sub(lease.now_ms))
            }
            Command::EndLeases { now_ms } | Command::Clock { now_ms } => {
                self.clock_ms = self.clock_ms.max(*now_ms);
                0
            }
            _ => 0,
        };
        match (command, outcome) {
            (_, Outcome::Failed(error)) if error.code != ErrorCode::StaleReceipt => {}
            (Command::CreateTopicWith { topic, settings }, Outcome::Done) => {
                self.model.create(topic, settings);
            }
            (Command::PutBatch { topic, messages }, Outcome::Count(count)) => {
                if *count != messages.len() as u64 {
                    return unexpected();
                }
                for message in messages {
                    let Some(id) = message_id(message) else {
                        return unexpected();
                    };
                    self.enqueue(index, key, topic, id)?;
                }
            }
            (Command::GetLeased { topic, lease: _ }, Outcome::Delivered(delivery)) => {
                self.lease(
                    index,
                    key,
                    topic,
                    std::slice::from_ref(delivery),
                    lease_deadline,
                )?;
            }
            (
                Command::GetBatch {
                    topic,
                    max,
                    lease: Some(lease),
                },
                Outcome::Deliveries(deliveries),
            ) if deliveries.len() <= *max as usize => {
                self.lease(index, key, topic, deliveries, lease_deadline)?;
            }
            (
                Command::GetBatch {
                    topic,
                    max,
                    lease: None,
                },
                Outcome::Messages(messages),
            ) if !messages.is_empty() && messages.len() <= *max as usize => {
                let ids: Vec<Option<u64>> = messages.iter().map(message_id).collect();
                let next: Vec<Option<u64>> = self
                    .model
                    .take_ready(topic, messages.len())
                    .into_iter()
                    .map(Some)
                    .collect();
                if ids != next {
                    return Err(Violation::new(
                        property::EXACTLY_ONCE,
                        format!(
                            "{key} at {index} popped {ids:?} from {topic}, whose next ready \
                             messages are {next:?}"
                        ),
                    ));
                }
                for id in ids.into_iter().flatten() {
                    self.pop(index, topic, id)?;
                }
            }
            (Command::Ack { topic, receipt }, Outcome::Done | Outcome::Failed(_)) => {
                let receipts = std::slice::from_ref(receipt);
                self.settle(index, key, topic, receipts, &single(receipt), Settle::Ack)?;
            }
            (Command::Nack { topic, receipt }, Outcome::Done | Outcome::Failed(_)) => {
                let receipts = std::slice::from_ref(receipt);
                self.settle(index, key, topic, receipts, &single(receipt), Settle::Nack)?;
            }
            (
                Command::Touch {
                    topic,
                    receipt,
                    lease: _,
                },
                Outcome::Done | Outcome::Failed(_),
            ) => {
                let receipts = std::slice::from_ref(receipt);
                let touch = Settle::Touch(lease_deadline);
                self.settle(index, key, topic, receipts, &single(receipt), touch)?;
            }
            (Command::AckBatch { topic, receipts }, Outcome::Stale(stale)) => {
                self.settle(index, key, topic, receipts, stale, Settle::Ack)?;
            }
            (Command::NackBatch { topic, receipts }, Outcome::Stale(stale)) => {
                self.settle(index, key, topic, receipts, stale, Settle::Nack)?;
            }
            (Command::EndLeases { now_ms }, Outcome::Done) => {
                let mut due: Vec<(u64, usize, u64, String, u64)> = Vec::new();
                for model in self.model.topics.values() {
                    for held in &model.held {
                        if let Some((_, deadline_ms)) = &held.lease {
                            if deadline_ms <= now_ms {
                                due.push((
                                    *deadline_ms,
                                    model.position,
                                    held.seq,
                                    model.name.clone(),
                                    held.id,
                                ));
                            }
                        }
                    }
                }
                // The queue ends them earliest deadline first, then by topic and place.
                due.sort();
                for (_, _, _, topic, id) in due {
                    self.give_back(index, &topic, id);
                }
            }
            _ => return unexpected(),
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Nack,
    /// A TOUCH moving the lease's end to this time.
    Touch(u64),
}

/// One message a topic holds, in the model.
struct Held {
    /// Its place in the topic's order.
    seq: u64,
    id: u64,
    /// Leased deliveries so far.
    deliveries: u64,
    /// The live lease's receipt and deadline.
    lease: Option<(String, u64)>,
}

struct ModelTopic {
    name: String,
    /// Creation order, as the queue orders lease ends.
    position: usize,
    settings: TopicSettings,
    /// By `seq`.
    held: Vec<Held>,
    discarded: u64,
}

/// The queue as the operations' effects leave it: per topic the messages in order, ready or
/// leased. Leased or returned messages keep their place, so a topic's next ready messages
/// are the first ones here without a lease (PROTOCOL.md §8's redelivery order).
#[derive(Default)]
struct Model {
    topics: BTreeMap<String, ModelTopic>,
    next_seq: u64,
    /// Messages held over all topics.
    total: usize,
    /// Every receipt a leased GET was answered with, and its message.
    receipt_ids: HashMap<String, u64>,
    /// Message id -> where it was discarded at its delivery limit.
    discarded: HashMap<u64, LogIndex>,
}

impl Model {
    fn create(&mut self, topic: &str, settings: &TopicSettings) {
        let position = self.topics.len();
        self.topics
            .entry(topic.to_string())
            .or_insert_with(|| ModelTopic {
                name: topic.to_string(),
                position,
                settings: settings.clone(),
                held: Vec::new(),
                discarded: 0,
            });
    }

    /// Appends `id` to `topic`; false if there is no such topic.
    fn push(&mut self, topic: &str, id: u64) -> bool {
        let Some(model) = self.topics.get_mut(topic) else {
            return false;
        };
        self.next_seq += 1;
        model.held.push(Held {
            seq: self.next_seq,
            id,
            deliveries: 0,
            lease: None,
        });
        self.total += 1;
        true
    }

    /// The first `count` ready messages of `topic` (fewer if it has fewer).
    fn take_ready(&self, topic: &str, count: usize) -> Vec<u64> {
        self.topics.get(topic).map_or_else(Vec::new, |model| {
            model
                .held
                .iter()
                .filter(|held| held.lease.is_none())
                .take(count)
                .map(|held| held.id)
                .collect()
        })
    }

    fn find_mut(&mut self, topic: &str, id: u64) -> Option<&mut Held> {
        self.topics
            .get_mut(topic)?
            .held
            .iter_mut()
            .find(|held| held.id == id)
    }

    fn remove(&mut self, topic: &str, id: u64) -> Option<Held> {
        let model = self.topics.get_mut(topic)?;
        let position = model.held.iter().position(|held| held.id == id)?;
        self.total -= 1;
        Some(model.held.remove(position))
    }

    /// The message a live lease `receipt` of `topic` holds.
    fn live_lease(&self, topic: &str, receipt: &str) -> Option<u64> {
        let model = self.topics.get(topic)?;
        model
            .held
            .iter()
            .find(|held| held.lease.as_ref().is_some_and(|(live, _)| live == receipt))
            .map(|held| held.id)
    }

    fn live_leases(&self) -> Vec<(String, String, u64)> {
        self.topics
            .values()
            .flat_map(|model| {
                model.held.iter().filter_map(|held| {
                    let (receipt, deadline_ms) = held.lease.as_ref()?;
                    Some((model.name.clone(), receipt.clone(), *deadline_ms))
                })
            })
            .collect()
    }

    /// A NACKed or ended lease: the message is ready again in its place, or, delivered
    /// `max_deliveries` times, moves to the end of the dead-letter topic or is discarded.
    /// Returns whether the message reached its limit.
    fn give_back(&mut self, index: LogIndex, topic: &str, id: u64) -> bool {
        let Some(model) = self.topics.get_mut(topic) else {
            return false;
        };
        let settings = model.settings.clone();
        let Some(held) = model.held.iter_mut().find(|held| held.id == id) else {
            return false;
        };
        held.lease = None;
        if settings
            .max_deliveries
            .is_none_or(|max_deliveries| held.deliveries < max_deliveries)
        {
            return false;
        }
        self.remove(topic, id);
        match settings.dead_letter {
            Some(dead_letter) => {
                self.create(&dead_letter, &TopicSettings::default());
                self.push(&dead_letter, id);
            }
            None => {
                if let Some(model) = self.topics.get_mut(topic) {
                    model.discarded += 1;
                }
                self.discarded.insert(id, index);
            }
        }
        true
    }
}

/// The messages of each topic, oldest first.
fn contents(queue: &Queue) -> BTreeMap<String, Vec<Option<u64>>> {
    queue
        .topics()
        .into_iter()
        .map(|topic| {
            let messages = queue
                .held_messages(&topic)
                .expect("a topic the queue listed");
            let ids = messages.iter().map(message_id).collect();
            (topic, ids)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    //! The exactly-once checker must reject each way of breaking exactly-once.
    use super::*;
    use crate::sim::workload::{message, session_command, TOPICS};
    use rrmq::protocol::ErrorInfo;
    use rrmq::queue::LeaseTime;

    fn put(client: u64, seq: u64, id: u64) -> LoggedCommand {
        session_command(
            client,
            seq,
            Command::Put {
                topic: TOPICS[0].into(),
                message: message(id, 0),
            },
        )
    }

    fn get(client: u64, seq: u64) -> LoggedCommand {
        session_command(
            client,
            seq,
            Command::Get {
                topic: TOPICS[0].into(),
            },
        )
    }

    /// A checker whose model already holds topic `TOPICS[0]`.
    fn checker(sessions_max: usize) -> ExactlyOnce {
        let mut checker = ExactlyOnce::new(sessions_max);
        checker.model.create(TOPICS[0], &TopicSettings::default());
        checker
    }

    fn stats(messages: usize) -> QueueStats {
        QueueStats {
            messages,
            ..QueueStats::default()
        }
    }

    fn expired() -> Outcome {
        Outcome::Failed(ErrorInfo::new(ErrorCode::SessionExpired, "gone"))
    }

    #[test]
    fn a_put_taking_effect_twice_is_caught() {
        let mut checker = checker(10);
        let command = put(1, 2, 5);
        checker
            .observe(LogIndex(1), &command, &Outcome::Done, &stats(0), &stats(1))
            .expect("first execution");
        checker
            .observe(LogIndex(2), &command, &Outcome::Done, &stats(1), &stats(1))
            .expect("a replay changes nothing");
        let twice = checker.observe(LogIndex(3), &command, &Outcome::Done, &stats(1), &stats(2));
        assert_eq!(twice.map_err(|v| v.property), Err(property::EXACTLY_ONCE));
    }

    #[test]
    fn a_get_popping_twice_or_answering_differently_is_caught() {
        let mut checker = checker(10);
        for (seq, id) in [(2, 7), (3, 8)] {
            checker
                .observe(
                    LogIndex(seq),
                    &put(1, seq, id),
                    &Outcome::Done,
                    &stats(seq as usize - 2),
                    &stats(seq as usize - 1),
                )
                .expect("puts");
        }
        let popped = Outcome::Message(message(7, 0));
        checker
            .observe(LogIndex(4), &get(2, 2), &popped, &stats(2), &stats(1))
            .expect("pops the oldest");
        checker
            .check_reply(
                NodeId(0),
                CommandKey::Session { client: 2, seq: 2 },
                &get(2, 2),
                LogIndex(4),
                &popped,
            )
            .expect("the popped message");
        let other = Outcome::Message(message(8, 0));
        let wrong_reply = checker.check_reply(
            NodeId(0),
            CommandKey::Session { client: 2, seq: 2 },
            &get(2, 2),
            LogIndex(5),
            &other,
        );
        assert_eq!(
            wrong_reply.map_err(|v| v.property),
            Err(property::EXACTLY_ONCE)
        );
        let popped_again = checker.observe(LogIndex(5), &get(2, 2), &other, &stats(1), &stats(0));
        assert_eq!(
            popped_again.map_err(|v| v.property),
            Err(property::EXACTLY_ONCE)
        );
    }

    #[test]
    fn a_pop_out_of_order_is_caught() {
        let mut checker = checker(10);
        for (seq, id) in [(2, 7), (3, 8)] {
            checker
                .observe(
                    LogIndex(seq),
                    &put(1, seq, id),
                    &Outcome::Done,
                    &stats(seq as usize - 2),
                    &stats(seq as usize - 1),
                )
                .expect("puts");
        }
        let newest = Outcome::Message(message(8, 0));
        let error = checker.observe(LogIndex(4), &get(2, 2), &newest, &stats(2), &stats(1));
        assert_eq!(error.map_err(|v| v.property), Err(property::EXACTLY_ONCE));
    }

    #[test]
    fn session_expired_needs_an_eviction_or_a_newer_seq() {
        let mut checker = checker(1);
        checker
            .observe(
                LogIndex(1),
                &put(1, 2, 1),
                &Outcome::Done,
                &stats(0),
                &stats(1),
            )
            .expect("put");
        let refused = checker.observe(LogIndex(2), &put(1, 2, 1), &expired(), &stats(1), &stats(1));
        assert_eq!(refused.map_err(|v| v.property), Err(property::EXACTLY_ONCE));
        checker
            .observe(
                LogIndex(3),
                &put(1, 3, 2),
                &Outcome::Done,
                &stats(1),
                &stats(2),
            )
            .expect("next seq");
        checker
            .observe(LogIndex(4), &put(1, 2, 1), &expired(), &stats(2), &stats(2))
            .expect("a stale retry");
        checker
            .observe(
                LogIndex(5),
                &put(2, 2, 3),
                &Outcome::Done,
                &stats(2),
                &stats(3),
            )
            .expect("a second client: one session may be forgotten now");
        checker
            .observe(LogIndex(6), &put(1, 4, 4), &expired(), &stats(3), &stats(3))
            .expect("evicted");
    }

    #[test]
    fn a_reply_that_lies_about_a_put_is_caught() {
        let mut checker = checker(10);
        let key = CommandKey::Session { client: 1, seq: 2 };
        let failed = Outcome::Failed(ErrorInfo::new(ErrorCode::NoSuchTopic, "no"));
        checker
            .observe(LogIndex(1), &put(1, 2, 1), &failed, &stats(0), &stats(0))
            .expect("no topic");
        let lie = checker.check_reply(NodeId(1), key, &put(1, 2, 1), LogIndex(1), &Outcome::Done);
        assert_eq!(lie.map_err(|v| v.property), Err(property::EXACTLY_ONCE));
    }

    #[test]
    fn a_message_leased_twice_or_acked_with_a_dead_receipt_is_caught() {
        let mut checker = checker(10);
        checker
            .observe(
                LogIndex(1),
                &put(1, 2, 7),
                &Outcome::Done,
                &stats(0),
                &stats(1),
            )
            .expect("put");
        let lease = LeaseTime::starting(0, 100);
        let get = |seq| {
            session_command(
                2,
                seq,
                Command::GetLeased {
                    topic: TOPICS[0].into(),
                    lease,
                },
            )
        };
        let delivered = |receipt: &str| {
            Outcome::Delivered(Delivery {
                message: message(7, 0),
                receipt: receipt.into(),
                deliveries: 1,
            })
        };
        checker
            .observe(
                LogIndex(2),
                &get(2),
                &delivered("2.1"),
                &stats(1),
                &stats(1),
            )
            .expect("leased");
        let again = checker.observe(
            LogIndex(3),
            &get(3),
            &delivered("3.1"),
            &stats(1),
            &stats(1),
        );
        assert_eq!(again.map_err(|v| v.property), Err(property::LEASES));
        let dead_receipt = session_command(
            2,
            4,
            Command::Ack {
                topic: TOPICS[0].into(),
                receipt: "9.9".into(),
            },
        );
        let acked = checker.observe(
            LogIndex(4),
            &dead_receipt,
            &Outcome::Done,
            &stats(1),
            &stats(0),
        );
        assert_eq!(acked.map_err(|v| v.property), Err(property::LEASES));
    }

    #[test]
    fn digests_must_agree_at_an_index() {
        let mut digests = StateDigests::default();
        digests.check(LogIndex(3), 7, None).expect("first");
        digests
            .check(LogIndex(3), 7, Some(NodeId(1)))
            .expect("same");
        let error = digests.check(LogIndex(3), 8, Some(NodeId(2)));
        assert_eq!(error.map_err(|v| v.property), Err(property::REPLICA_STATE));
    }

    #[test]
    fn the_contents_must_match_the_effects() {
        let mut queue = Queue::new(QueueConfig::default());
        let mut checker = checker(10);
        let create = session_command(
            1,
            1,
            Command::CreateTopic {
                topic: TOPICS[0].into(),
            },
        );
        for (index, command) in [create, put(1, 2, 10), put(1, 3, 11)].iter().enumerate() {
            let index = LogIndex(index as u64 + 1);
            let before = queue.stats();
            let outcome = queue.apply_command(index, command);
            checker
                .observe(index, command, &outcome, &before, &queue.stats())
                .expect("applies");
        }
        checker
            .check_contents(&queue)
            .expect("both messages, in order");
        let mut other = ExactlyOnce::new(10);
        other.model.create(TOPICS[0], &TopicSettings::default());
        other.model.push(TOPICS[0], 11);
        other.model.push(TOPICS[0], 10);
        let error = other.check_contents(&queue);
        assert_eq!(error.map_err(|v| v.property), Err(property::EXACTLY_ONCE));
    }
}
