//! Blocking GETs (PROTOCOL.md §9): the leader's book of `message GET`s with `wait_ms` that
//! found nothing to hand out, per topic in arrival order, and of what its proposed GETs may
//! still take. Pure bookkeeping, free of sockets and the core, so that it can be tested
//! directly; the node loop (`node_loop::waiting`) decides when to park and when to serve.
//!
//! Why the leader checks its applied state, and not the log's answer: a GET proposed with
//! a session key that applies as `EMPTY` has that `EMPTY` recorded as the session's reply,
//! so proposing it again could only replay `EMPTY`. A waiter is therefore proposed only
//! when the topic's ready messages exceed what the GETs this leader already proposed in its
//! term ([`Waiters::demand`]) may take, and only once every entry of earlier terms is
//! applied. Counting a batch GET's whole `max` keeps that bound safe; it only makes the
//! next waiter wait for the batch's entry to apply.
//!
//! A waiter is served once: it leaves the book when its GET is proposed and is kept as
//! "in flight" until answered. Should its GET still come back `EMPTY` (a race the count
//! does not see), a waiter without a session goes back to its place by arrival (the front,
//! not the back); one with a session is answered `EMPTY`, which is what its session holds.
//!
//! Retries: a waiter whose session key (`client_id`, `seq`) equals a parked waiter's takes
//! that waiter's place in line (and its own, later, deadline), and the older request joins
//! it: both are answered when the retry is, with the same reply, as PROTOCOL.md §5 answers
//! every repeat of a key. The older request is not answered on its own (say `EMPTY` at
//! once): a client retries on the same connection with the same call tag, so such a reply
//! would read as the retry's answer, the client would move on to its next `seq`, and a
//! message the retry's GET took later would be handed to nobody. Two identical replies are
//! safe: the first ends the call, the second names a call that has ended and is dropped.
//! A retry that arrives while the first one's GET is in flight is proposed at once, never
//! parked ([`Waiters::in_flight_with_session`]): its entry follows the first one's and
//! replays its reply from the session, so one message is never handed out twice for one
//! key, and the retry is not left waiting (to end `EMPTY`) for a message its key already
//! took.
//!
//! Bounded: at most [`WAITERS_MAX`] requests (parked, in flight and joined to a retry);
//! beyond it the loop refuses with `UNAVAILABLE`. Deadlines are kept in a deadline-ordered set, so expiring
//! costs nothing while none is due.

use crate::protocol::{FetchOptions, SessionKey};
use crate::queue::Command;
use crate::raft::{LogIndex, Term};
use crate::transport::client::Ticket;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Instant;

/// The most blocking GETs a leader holds at once, parked or in flight. A few hundred bytes
/// each.
pub const WAITERS_MAX: usize = 10_000;

/// A blocking GET held by the leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Waiter {
    pub ticket: Ticket,
    pub topic: String,
    pub options: FetchOptions,
    pub session: Option<SessionKey>,
    /// Answer `EMPTY` at this instant if still parked.
    pub wait_until: Instant,
    /// Arrival order, assigned by [`Waiters::park`].
    arrival: u64,
    /// Earlier requests with the same session key that this one (a retry) replaced in line,
    /// oldest first: they get this waiter's reply.
    superseded: Vec<Ticket>,
}

impl Waiter {
    pub fn new(
        ticket: Ticket,
        topic: String,
        options: FetchOptions,
        session: Option<SessionKey>,
        wait_until: Instant,
    ) -> Waiter {
        Waiter {
            ticket,
            topic,
            options,
            session,
            wait_until,
            arrival: 0,
            superseded: Vec::new(),
        }
    }

    /// Every request this waiter answers: its own and those it superseded.
    pub fn tickets(&self) -> impl Iterator<Item = Ticket> + '_ {
        std::iter::once(self.ticket).chain(self.superseded.iter().copied())
    }

    /// The earlier requests with its session key that get its reply.
    pub fn superseded(&self) -> &[Ticket] {
        &self.superseded
    }

    /// How many messages its GET may take.
    pub fn takes(&self) -> usize {
        self.options.max.map_or(1, |max| max as usize)
    }
}

/// What [`Waiters::park`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum Parked {
    InLine,
    /// It took the place of an older waiter with the same session key, which now gets its
    /// reply (nothing to answer now).
    Joined,
    /// [`WAITERS_MAX`] reached: refuse it.
    Full(Waiter),
}

#[derive(Debug, Default)]
pub struct Waiters {
    next_arrival: u64,
    /// Parked waiters per topic, in arrival order. No empty queue is kept.
    parked: HashMap<String, VecDeque<Waiter>>,
    /// `(wait_until, arrival)` of every parked waiter, with its topic.
    deadlines: BTreeMap<(Instant, u64), String>,
    /// Served waiters whose GET is proposed and not yet answered.
    in_flight: HashMap<Ticket, Waiter>,
    /// Requests superseded by a retry, held by the parked and in-flight waiters.
    superseded: usize,
    /// Set when the parked waiters changed: the loop looks for waiters to serve.
    changed: bool,
    demand: Demand,
}

/// What the GETs this leader proposed in `term` and that are not applied yet may take.
#[derive(Debug, Default)]
struct Demand {
    term: Term,
    by_topic: HashMap<String, usize>,
    /// In index order: proposals of one term have increasing indexes.
    by_entry: VecDeque<(LogIndex, String, usize)>,
}

/// The topic a command takes messages from, and how many at most: what a proposed GET
/// counts toward [`Waiters::demand`].
pub fn demand_of(command: &Command) -> Option<(&str, usize)> {
    match command {
        Command::Get { topic } | Command::GetLeased { topic, .. } => Some((topic, 1)),
        Command::GetBatch { topic, max, .. } => Some((topic, *max as usize)),
        _ => None,
    }
}

impl Waiters {
    pub fn new() -> Waiters {
        Waiters::default()
    }

    /// Requests held: parked, in flight, and superseded by a retry.
    pub fn len(&self) -> usize {
        self.deadlines.len() + self.in_flight.len() + self.superseded
    }

    pub fn has_parked(&self) -> bool {
        !self.deadlines.is_empty()
    }

    pub fn has_in_flight(&self) -> bool {
        !self.in_flight.is_empty()
    }

    /// Whether waiters of `topic` are parked (a newcomer must queue behind them).
    pub fn is_parked_on(&self, topic: &str) -> bool {
        self.parked.contains_key(topic)
    }

    /// Parks a newly arrived waiter at the back of its topic's line (or in the place of
    /// a parked waiter with the same session key).
    pub fn park(&mut self, mut waiter: Waiter) -> Parked {
        if self.len() >= WAITERS_MAX {
            return Parked::Full(waiter);
        }
        if let Some(key) = &waiter.session {
            if let Some(line) = self.parked.get_mut(&waiter.topic) {
                if let Some(older) = line
                    .iter_mut()
                    .find(|parked| parked.session.as_ref() == Some(key))
                {
                    waiter.arrival = older.arrival;
                    let older = std::mem::replace(older, waiter);
                    self.deadlines.remove(&(older.wait_until, older.arrival));
                    let parked = line
                        .iter_mut()
                        .find(|parked| parked.arrival == older.arrival)
                        .expect("just put there");
                    parked.superseded = older.superseded;
                    parked.superseded.push(older.ticket);
                    self.superseded += 1;
                    self.deadlines
                        .insert((parked.wait_until, parked.arrival), parked.topic.clone());
                    return Parked::Joined;
                }
            }
        }
        waiter.arrival = self.next_arrival;
        self.next_arrival += 1;
        self.insert(waiter);
        Parked::InLine
    }

    /// Puts an in-flight waiter whose GET found nothing back in its place by arrival.
    pub fn repark(&mut self, waiter: Waiter) {
        self.insert(waiter);
    }

    fn insert(&mut self, waiter: Waiter) {
        self.superseded += waiter.superseded.len();
        self.deadlines
            .insert((waiter.wait_until, waiter.arrival), waiter.topic.clone());
        let line = self.parked.entry(waiter.topic.clone()).or_default();
        let at = line.partition_point(|parked| parked.arrival < waiter.arrival);
        line.insert(at, waiter);
        self.changed = true;
    }

    /// The topics with parked waiters, if they changed since the last call or `force`.
    pub fn topics_to_serve(&mut self, force: bool) -> Vec<String> {
        if !(self.changed || force) {
            return Vec::new();
        }
        self.changed = false;
        self.parked.keys().cloned().collect()
    }

    /// Takes the first parked waiter of `topic`.
    pub fn pop_front(&mut self, topic: &str) -> Option<Waiter> {
        let line = self.parked.get_mut(topic)?;
        let waiter = line.pop_front()?;
        if line.is_empty() {
            self.parked.remove(topic);
        }
        self.deadlines.remove(&(waiter.wait_until, waiter.arrival));
        self.superseded -= waiter.superseded.len();
        Some(waiter)
    }

    /// Its GET was proposed (or is about to be).
    pub fn start(&mut self, waiter: Waiter) {
        self.superseded += waiter.superseded.len();
        self.in_flight.insert(waiter.ticket, waiter);
    }

    /// Whether a waiter with session key `key` is in flight: its GET is proposed, so a
    /// retry of it must follow it into the log (and replay its reply from the session)
    /// rather than park. A scan, made only on the way to parking.
    pub fn in_flight_with_session(&self, key: &SessionKey) -> bool {
        self.in_flight
            .values()
            .any(|waiter| waiter.session.as_ref() == Some(key))
    }

    /// The in-flight waiter `ticket` names, if any: it is being answered (and so are the
    /// requests it superseded).
    pub fn take_in_flight(&mut self, ticket: Ticket) -> Option<Waiter> {
        let waiter = self.in_flight.remove(&ticket)?;
        self.superseded -= waiter.superseded.len();
        Some(waiter)
    }

    /// Removes and returns the parked waiters whose wait is over at `now`.
    pub fn take_expired(&mut self, now: Instant) -> Vec<Waiter> {
        let mut expired = Vec::new();
        while let Some(entry) = self.deadlines.first_entry() {
            let &(wait_until, arrival) = entry.key();
            if wait_until > now {
                break;
            }
            let topic = entry.remove();
            let line = self
                .parked
                .get_mut(&topic)
                .expect("a deadline names a line");
            let at = line
                .binary_search_by_key(&arrival, |parked| parked.arrival)
                .expect("a deadline names a parked waiter");
            if let Some(waiter) = line.remove(at) {
                self.superseded -= waiter.superseded.len();
                expired.push(waiter);
            }
            if line.is_empty() {
                self.parked.remove(&topic);
            }
        }
        expired
    }

    /// Removes and returns every parked waiter, in arrival order per topic.
    pub fn take_all_parked(&mut self) -> Vec<Waiter> {
        self.deadlines.clear();
        self.changed = false;
        let all: Vec<Waiter> = self.parked.drain().flat_map(|(_, line)| line).collect();
        self.superseded -= all
            .iter()
            .map(|waiter| waiter.superseded.len())
            .sum::<usize>();
        all
    }

    /// A GET that may take `count` messages of `topic` was proposed at `index` in `term`.
    pub fn note_proposed(&mut self, term: Term, index: LogIndex, topic: &str, count: usize) {
        let demand = &mut self.demand;
        if demand.term != term {
            // The earlier term's entries are applied or overwritten by the time this
            // leader serves waiters (see the module docs).
            demand.term = term;
            demand.by_topic.clear();
            demand.by_entry.clear();
        }
        // On every GET's path: no allocation for a topic already counted.
        match demand.by_topic.get_mut(topic) {
            Some(counted) => *counted += count,
            None => {
                demand.by_topic.insert(topic.to_string(), count);
            }
        }
        demand.by_entry.push_back((index, topic.to_string(), count));
    }

    /// Entries up to `applied` are applied: their GETs took what they took.
    pub fn note_applied(&mut self, applied: LogIndex) {
        let demand = &mut self.demand;
        while demand
            .by_entry
            .front()
            .is_some_and(|(index, _, _)| *index <= applied)
        {
            let (_, topic, count) = demand.by_entry.pop_front().expect("just seen");
            let left = demand
                .by_topic
                .get_mut(&topic)
                .expect("every proposed GET is counted");
            *left -= count;
            if *left == 0 {
                demand.by_topic.remove(&topic);
            }
        }
    }

    /// What the GETs proposed in `term` and not yet applied may take from `topic`.
    pub fn demand(&self, term: Term, topic: &str) -> usize {
        if self.demand.term != term {
            return 0;
        }
        self.demand.by_topic.get(topic).copied().unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn waiter(ticket: u64, topic: &str, wait_until: Instant) -> Waiter {
        Waiter::new(
            Ticket(ticket),
            topic.to_string(),
            FetchOptions {
                wait_ms: Some(1_000),
                ..FetchOptions::default()
            },
            None,
            wait_until,
        )
    }

    fn keyed(mut waiter: Waiter, client_id: &str, seq: u64) -> Waiter {
        waiter.session = Some(SessionKey {
            client_id: client_id.to_string(),
            seq,
        });
        waiter
    }

    fn tickets(waiters: &[Waiter]) -> Vec<u64> {
        waiters.iter().map(|waiter| waiter.ticket.0).collect()
    }

    #[test]
    fn waiters_are_served_in_arrival_order_and_a_reparked_one_goes_back_to_the_front() {
        let later = Instant::now() + Duration::from_secs(60);
        let mut waiters = Waiters::new();
        for ticket in 1..=3 {
            assert_eq!(waiters.park(waiter(ticket, "t", later)), Parked::InLine);
        }
        assert_eq!(waiters.park(waiter(9, "u", later)), Parked::InLine);
        let mut topics = waiters.topics_to_serve(false);
        topics.sort();
        assert_eq!(topics, ["t", "u"]);
        assert!(waiters.topics_to_serve(false).is_empty(), "nothing changed");
        let first = waiters.pop_front("t").expect("parked");
        assert_eq!(first.ticket, Ticket(1));
        waiters.start(first);
        assert_eq!(waiters.len(), 4);
        // Its GET found nothing: back before 2 and 3.
        let first = waiters.take_in_flight(Ticket(1)).expect("in flight");
        waiters.repark(first);
        assert_eq!(waiters.topics_to_serve(false).len(), 2);
        let order: Vec<u64> = std::iter::from_fn(|| waiters.pop_front("t"))
            .map(|waiter| waiter.ticket.0)
            .collect();
        assert_eq!(order, [1, 2, 3]);
        assert!(!waiters.is_parked_on("t"));
        assert!(waiters.is_parked_on("u"));
    }

    #[test]
    fn waits_end_in_deadline_order_and_only_when_due() {
        let now = Instant::now();
        let mut waiters = Waiters::new();
        waiters.park(waiter(1, "t", now + Duration::from_millis(300)));
        waiters.park(waiter(2, "t", now + Duration::from_millis(100)));
        waiters.park(waiter(3, "u", now + Duration::from_millis(200)));
        assert!(waiters.take_expired(now).is_empty());
        let due = waiters.take_expired(now + Duration::from_millis(200));
        assert_eq!(tickets(&due), [2, 3]);
        assert!(!waiters.is_parked_on("u"));
        assert_eq!(waiters.len(), 1);
        assert_eq!(
            waiters.pop_front("t").map(|waiter| waiter.ticket),
            Some(Ticket(1))
        );
        assert!(waiters
            .take_expired(now + Duration::from_secs(1))
            .is_empty());
        assert!(!waiters.has_parked());
    }

    #[test]
    fn a_retry_takes_the_place_of_the_parked_request_with_its_session_key_and_answers_it_too() {
        let now = Instant::now();
        let mut waiters = Waiters::new();
        waiters.park(keyed(waiter(1, "t", now + Duration::from_secs(1)), "c", 5));
        waiters.park(waiter(2, "t", now + Duration::from_secs(1)));
        let retry = keyed(waiter(3, "t", now + Duration::from_secs(5)), "c", 5);
        assert_eq!(waiters.park(retry), Parked::Joined);
        // A second retry joins too, carrying both earlier requests.
        let again = keyed(waiter(5, "t", now + Duration::from_secs(6)), "c", 5);
        assert_eq!(waiters.park(again), Parked::Joined);
        // Another seq is another request.
        let next = keyed(waiter(4, "t", now + Duration::from_secs(5)), "c", 6);
        assert_eq!(waiters.park(next), Parked::InLine);
        assert_eq!(
            waiters.len(),
            5,
            "three waiters, two requests joined to one"
        );
        // The older deadlines went with the older requests; the latest retry's counts.
        let due = waiters.take_expired(now + Duration::from_secs(2));
        assert_eq!(tickets(&due), [2]);
        let first = waiters.pop_front("t").expect("parked");
        assert_eq!(first.ticket, Ticket(5), "in the first request's place");
        let answered: Vec<u64> = first.tickets().map(|ticket| ticket.0).collect();
        assert_eq!(
            answered,
            [5, 1, 3],
            "the retry's reply answers every request"
        );
        waiters.start(first);
        assert_eq!(waiters.len(), 4);
        let first = waiters.take_in_flight(Ticket(5)).expect("in flight");
        assert_eq!(first.superseded(), [Ticket(1), Ticket(3)]);
        assert_eq!(waiters.len(), 1);
        assert_eq!(
            waiters.pop_front("t").map(|waiter| waiter.ticket),
            Some(Ticket(4))
        );
    }

    #[test]
    fn a_waiter_in_flight_is_found_by_its_session_key() {
        let later = Instant::now() + Duration::from_secs(60);
        let mut waiters = Waiters::new();
        let key = |seq| SessionKey {
            client_id: "c".to_string(),
            seq,
        };
        waiters.park(keyed(waiter(1, "t", later), "c", 1));
        assert!(
            !waiters.in_flight_with_session(&key(1)),
            "parked, not in flight"
        );
        let served = waiters.pop_front("t").expect("parked");
        waiters.start(served);
        assert!(waiters.in_flight_with_session(&key(1)));
        assert!(!waiters.in_flight_with_session(&key(2)));
        waiters.take_in_flight(Ticket(1));
        assert!(!waiters.in_flight_with_session(&key(1)));
    }

    #[test]
    fn requests_joined_to_a_retry_count_toward_the_bound_until_it_ends() {
        let later = Instant::now() + Duration::from_secs(60);
        let mut waiters = Waiters::new();
        waiters.park(keyed(waiter(0, "t", later), "c", 1));
        for ticket in 1..WAITERS_MAX as u64 {
            assert_eq!(
                waiters.park(keyed(waiter(ticket, "t", later), "c", 1)),
                Parked::Joined
            );
        }
        assert_eq!(waiters.len(), WAITERS_MAX);
        assert!(matches!(
            waiters.park(keyed(waiter(u64::MAX, "t", later), "c", 1)),
            Parked::Full(_)
        ));
        let all = waiters.take_all_parked();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].tickets().count(), WAITERS_MAX);
        assert_eq!(waiters.len(), 0);
    }

    #[test]
    fn the_book_is_bounded() {
        let later = Instant::now() + Duration::from_secs(60);
        let mut waiters = Waiters::new();
        for ticket in 0..WAITERS_MAX as u64 {
            assert_eq!(waiters.park(waiter(ticket, "t", later)), Parked::InLine);
        }
        let refused = waiter(u64::MAX, "t", later);
        assert_eq!(waiters.park(refused.clone()), Parked::Full(refused));
        // In flight still counts.
        let served = waiters.pop_front("t").expect("parked");
        waiters.start(served);
        assert!(matches!(
            waiters.park(waiter(u64::MAX, "t", later)),
            Parked::Full(_)
        ));
        waiters.take_in_flight(Ticket(0));
        assert_eq!(waiters.park(waiter(u64::MAX, "t", later)), Parked::InLine);
        assert_eq!(waiters.take_all_parked().len(), WAITERS_MAX);
        assert_eq!(waiters.len(), 0);
    }

    #[test]
    fn demand_counts_proposed_gets_until_applied_and_only_in_their_term() {
        let mut waiters = Waiters::new();
        let (term, next) = (Term(3), Term(4));
        let get = Command::Get { topic: "t".into() };
        let batch = Command::GetBatch {
            topic: "t".into(),
            max: 10,
            lease: None,
        };
        assert_eq!(demand_of(&get), Some(("t", 1)));
        assert_eq!(demand_of(&batch), Some(("t", 10)));
        assert_eq!(demand_of(&Command::EndLeases { now_ms: 1 }), None);
        waiters.note_proposed(term, LogIndex(5), "t", 1);
        waiters.note_proposed(term, LogIndex(6), "t", 10);
        waiters.note_proposed(term, LogIndex(7), "u", 1);
        assert_eq!(waiters.demand(term, "t"), 11);
        assert_eq!(waiters.demand(next, "t"), 0, "another term's proposals");
        waiters.note_applied(LogIndex(5));
        assert_eq!(waiters.demand(term, "t"), 10);
        waiters.note_applied(LogIndex(7));
        assert_eq!(
            (waiters.demand(term, "t"), waiters.demand(term, "u")),
            (0, 0)
        );
        waiters.note_proposed(term, LogIndex(8), "t", 1);
        waiters.note_proposed(next, LogIndex(8), "t", 2);
        assert_eq!(waiters.demand(next, "t"), 2, "a new term starts afresh");
    }
}
