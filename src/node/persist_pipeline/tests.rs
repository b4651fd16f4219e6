use super::*;
use crate::raft::{AppendResult, EntryPayload, LogIndex, Term};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const NODE: NodeId = NodeId(0);

fn entry(index: u64) -> Entry {
    Entry {
        term: Term(1),
        index: LogIndex(index),
        payload: EntryPayload::Noop,
    }
}

/// An ack from this node to node 1, `match_index` naming what it promises.
fn ack(match_index: u64) -> Message {
    Message {
        from: NODE,
        to: NodeId(1),
        term: Term(1),
        body: MessageBody::AppendEntriesResponse(AppendResult::Accepted {
            match_index: LogIndex(match_index),
        }),
    }
}

fn hard_state(term: u64, vote: Option<u64>, commit: u64) -> HardState {
    HardState {
        term: Term(term),
        vote: vote.map(NodeId),
        commit: LogIndex(commit),
    }
}

/// A `Ready` that appends `indexes` and acknowledges the last of them.
fn appends(indexes: std::ops::RangeInclusive<u64>) -> ReadyWrites {
    let acked = *indexes.end();
    ReadyWrites {
        entries: indexes.map(entry).collect(),
        messages_after_persist: vec![ack(acked)],
        ..ReadyWrites::default()
    }
}

fn pipeline() -> PersistPipeline {
    PersistPipeline::new(NODE, hard_state(1, None, 0))
}

#[test]
fn an_append_waits_for_its_own_batch() {
    let mut pipeline = pipeline();
    let handoff = pipeline.persist(appends(1..=2));
    assert_eq!(
        handoff,
        Handoff {
            batch: Some(PersistBatch {
                number: 1,
                snapshot: None,
                hard_state: None,
                entries: vec![entry(1), entry(2)],
                must_sync: true,
                messages_after_sync: vec![ack(2)],
            }),
            send_now: vec![],
            persisted_now: None,
        }
    );
    assert!(pipeline.durable_through < pipeline.batches_sent);
    assert_eq!(pipeline.on_durable(1), vec![entry(2).id()]);
    assert_eq!(pipeline.durable_through, pipeline.batches_sent);
    assert_eq!(pipeline.durable_through, 1);
}

#[test]
fn reports_are_never_released_before_their_batch_and_every_earlier_one() {
    let mut pipeline = pipeline();
    for (number, indexes) in [(1, 1..=1), (2, 2..=3), (3, 4..=4)] {
        let handoff = pipeline.persist(appends(indexes));
        let batch = handoff.batch.expect("a batch");
        assert_eq!(batch.number, number, "case {number}");
        assert!(handoff.send_now.is_empty(), "case {number}");
        assert_eq!(handoff.persisted_now, None, "case {number}");
    }
    assert_eq!(pipeline.batches_sent, 3);
    assert_eq!(pipeline.on_durable(0), vec![], "nothing durable yet");
    assert_eq!(pipeline.on_durable(2), vec![entry(1).id(), entry(3).id()]);
    assert_eq!(pipeline.on_durable(3), vec![entry(4).id()]);
}

#[test]
fn a_commit_only_hard_state_waits_for_the_next_batch() {
    let mut pipeline = pipeline();
    // Nothing in flight: the commit hint is held, its message leaves at once.
    let handoff = pipeline.persist(ReadyWrites {
        hard_state: Some(hard_state(1, None, 5)),
        messages_after_persist: vec![ack(5)],
        ..ReadyWrites::default()
    });
    assert_eq!(handoff.batch, None, "no batch for a commit hint alone");
    assert_eq!(handoff.send_now, vec![ack(5)], "nothing in flight: at once");
    assert_eq!(pipeline.batches_sent, 0);
    // A newer hint supersedes it; the next batch that needs a sync takes it along.
    let handoff = pipeline.persist(ReadyWrites {
        hard_state: Some(hard_state(1, None, 6)),
        ..ReadyWrites::default()
    });
    assert_eq!(handoff, Handoff::default(), "nothing to do yet");
    let handoff = pipeline.persist(appends(1..=1));
    let batch = handoff.batch.expect("a batch");
    assert_eq!(batch.hard_state, Some(hard_state(1, None, 6)));
    assert_eq!((batch.number, batch.must_sync), (1, true));
    // Behind a batch in flight: a hint alone still waits; one with a message rides on the
    // message's carrier, which takes the batch's number.
    let handoff = pipeline.persist(ReadyWrites {
        hard_state: Some(hard_state(1, None, 7)),
        ..ReadyWrites::default()
    });
    assert_eq!(handoff, Handoff::default(), "a hint alone waits");
    let handoff = pipeline.persist(ReadyWrites {
        hard_state: Some(hard_state(1, None, 8)),
        messages_after_persist: vec![ack(1)],
        ..ReadyWrites::default()
    });
    let batch = handoff.batch.expect("a carrier");
    assert_eq!((batch.number, batch.must_sync), (1, false));
    assert_eq!(batch.hard_state, Some(hard_state(1, None, 8)));
    assert_eq!(batch.messages_after_sync, vec![ack(1)]);
    assert!(handoff.send_now.is_empty());
    assert_eq!(pipeline.batches_sent, 1);
    assert_eq!(
        pipeline.take_unwritten_hard_state(),
        None,
        "all handed over"
    );
    // Held at shutdown: taken for the final write.
    let _ = pipeline.persist(ReadyWrites {
        hard_state: Some(hard_state(1, None, 9)),
        ..ReadyWrites::default()
    });
    assert_eq!(
        pipeline.take_unwritten_hard_state(),
        Some(hard_state(1, None, 9))
    );
}

#[test]
fn a_term_or_vote_change_an_install_or_entries_need_a_sync() {
    let cases: [(&str, ReadyWrites); 4] = [
        (
            "a new term",
            ReadyWrites {
                hard_state: Some(hard_state(2, None, 0)),
                ..ReadyWrites::default()
            },
        ),
        (
            "a vote",
            ReadyWrites {
                hard_state: Some(hard_state(1, Some(1), 0)),
                ..ReadyWrites::default()
            },
        ),
        (
            "an installed snapshot",
            ReadyWrites {
                snapshot: Some(SnapshotMeta::at(EntryId::new(Term(1), LogIndex(9)))),
                ..ReadyWrites::default()
            },
        ),
        ("entries", appends(1..=1)),
    ];
    for (number, (name, writes)) in cases.into_iter().enumerate() {
        let mut pipeline = pipeline();
        let handoff = pipeline.persist(writes);
        let batch = handoff.batch.expect("a batch");
        assert!(batch.must_sync, "case {number} ({name})");
        assert_eq!(batch.number, 1, "case {number} ({name})");
    }
}

#[test]
fn the_hard_state_is_compared_with_the_last_one_written_not_the_durable_one() {
    let mut pipeline = pipeline();
    let vote = hard_state(2, Some(1), 0);
    let handoff = pipeline.persist(ReadyWrites {
        hard_state: Some(vote),
        ..ReadyWrites::default()
    });
    assert!(handoff.batch.expect("a batch").must_sync);
    // Same term and vote, new commit: no second sync although the first is in flight
    // (the commit hint waits for the next batch).
    let handoff = pipeline.persist(ReadyWrites {
        hard_state: Some(HardState {
            commit: LogIndex(3),
            ..vote
        }),
        ..ReadyWrites::default()
    });
    assert_eq!(handoff, Handoff::default());
    assert_eq!(pipeline.batches_sent, 1);
}

#[test]
fn messages_with_nothing_in_flight_go_at_once() {
    let mut pipeline = pipeline();
    let _ = pipeline.persist(appends(1..=1));
    assert_eq!(pipeline.on_durable(1), vec![entry(1).id()]);
    // Entry 1 again: nothing to write, everything before is durable.
    let handoff = pipeline.persist(ReadyWrites {
        messages_after_persist: vec![ack(1)],
        ..ReadyWrites::default()
    });
    assert_eq!(
        handoff,
        Handoff {
            batch: None,
            send_now: vec![ack(1)],
            persisted_now: None,
        }
    );
    // An empty `Ready`: nothing at all.
    assert_eq!(pipeline.persist(ReadyWrites::default()), Handoff::default());
}

#[test]
fn an_ack_after_a_ready_that_needs_no_sync_waits_for_the_batches_in_flight() {
    let mut pipeline = pipeline();
    let _ = pipeline.persist(appends(1..=2));
    // Entries 1..=2 arrive again: the core acks them without writing anything.
    let handoff = pipeline.persist(ReadyWrites {
        messages_after_persist: vec![ack(2)],
        ..ReadyWrites::default()
    });
    assert_eq!(
        handoff,
        Handoff {
            batch: Some(PersistBatch {
                number: 1,
                messages_after_sync: vec![ack(2)],
                ..PersistBatch::default()
            }),
            send_now: vec![],
            persisted_now: None,
        },
        "an otherwise empty batch behind batch 1 carries the ack"
    );
    assert_eq!(pipeline.batches_sent, 1);
}

#[test]
fn repeated_and_out_of_order_durable_reports_release_once() {
    let mut pipeline = pipeline();
    let _ = pipeline.persist(appends(1..=1));
    let _ = pipeline.persist(appends(2..=2));
    let _ = pipeline.persist(appends(3..=3));
    assert_eq!(pipeline.on_durable(2), vec![entry(1).id(), entry(2).id()]);
    assert_eq!(pipeline.on_durable(2), vec![], "a repeated report");
    assert_eq!(pipeline.on_durable(1), vec![], "an older report");
    assert_eq!(pipeline.durable_through, 2, "never moves back");
    assert_eq!(pipeline.on_durable(3), vec![entry(3).id()]);
}

#[test]
#[should_panic(expected = "batch 2 reported durable, only 1 sent")]
fn a_durable_report_beyond_the_batches_sent_is_a_bug() {
    let mut pipeline = pipeline();
    let _ = pipeline.persist(appends(1..=1));
    let _ = pipeline.on_durable(2);
}

#[test]
fn after_a_storage_failure_nothing_waiting_is_released() {
    let mut pipeline = pipeline();
    let _ = pipeline.persist(appends(1..=1));
    pipeline.abandon();
    assert_eq!(pipeline.on_durable(1), vec![]);
}

/// Random `Ready`s against a storage model that makes a prefix of its FIFO durable at a
/// time (one sync group) and sends the group's messages: nothing may leave, and no entry
/// may be reported, before every batch up to its `Ready`'s is durable; everything is
/// released exactly once in the end.
#[test]
fn random_readies_release_nothing_early_and_everything_once() {
    for seed in 0..200u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut pipeline = pipeline();
        let mut term = 1;
        let mut next_index = 1;
        // Per Ready (its id is the ack's match index and its last entry's index): the
        // batch that must be durable before anything of it leaves.
        let mut needs: Vec<u64> = vec![0];
        let mut fifo: VecDeque<PersistBatch> = VecDeque::new();
        let mut durable = 0u64;
        let mut sent = Vec::new();
        let mut reported = Vec::new();
        let mut with_acks = Vec::new();
        let mut with_entries = Vec::new();
        for ready in 1..=60u64 {
            let mut writes = ReadyWrites::default();
            match rng.gen_range(0..4) {
                0 => {}
                1 => {
                    let count = rng.gen_range(1..=3);
                    writes.entries = (next_index..next_index + count).map(entry).collect();
                    next_index += count;
                    // Tag the last entry with the Ready's id.
                    writes.entries.last_mut().expect("one").index = LogIndex(ready * 1000);
                    with_entries.push(ready as usize);
                }
                2 => {
                    term += u64::from(rng.gen_bool(0.5));
                    writes.hard_state = Some(hard_state(term, None, ready));
                }
                _ => {
                    writes.hard_state = Some(hard_state(term, None, ready));
                }
            }
            if rng.gen_bool(0.7) {
                writes.messages_after_persist = vec![ack(ready)];
                with_acks.push(ready as usize);
            }
            let handoff = pipeline.persist(writes);
            needs.push(pipeline.batches_sent);
            for message in handoff.send_now {
                sent.push((message, durable));
            }
            if let Some(last) = handoff.persisted_now {
                reported.push((last, durable));
            }
            fifo.extend(handoff.batch);
            // Storage finishes a group now and then.
            while !fifo.is_empty() && rng.gen_bool(0.3) {
                let size = rng.gen_range(1..=fifo.len());
                let group: Vec<PersistBatch> = fifo.drain(..size).collect();
                let through = group.last().expect("one").number;
                durable = durable.max(through);
                for batch in group {
                    for message in batch.messages_after_sync {
                        sent.push((message, durable));
                    }
                }
                for last in pipeline.on_durable(through) {
                    reported.push((last, durable));
                }
            }
        }
        let group: Vec<PersistBatch> = fifo.drain(..).collect();
        if let Some(last) = group.last() {
            durable = durable.max(last.number);
            let through = last.number;
            for batch in group {
                for message in batch.messages_after_sync {
                    sent.push((message, durable));
                }
            }
            for last in pipeline.on_durable(through) {
                reported.push((last, durable));
            }
        }
        assert_eq!(
            pipeline.durable_through, pipeline.batches_sent,
            "seed {seed}: all durable"
        );
        let mut acked = Vec::new();
        for (message, durable_when_sent) in sent {
            let MessageBody::AppendEntriesResponse(AppendResult::Accepted { match_index }) =
                message.body
            else {
                panic!("seed {seed}: not an ack");
            };
            let ready = match_index.0 as usize;
            assert!(
                durable_when_sent >= needs[ready],
                "seed {seed}: Ready {ready}'s ack left with batches through {durable_when_sent} \
                 durable, it needs {}",
                needs[ready]
            );
            acked.push(ready);
        }
        // Acks may overtake one another (a later one sent at once, an earlier one still
        // riding on a batch that needs no sync); each leaves once.
        acked.sort_unstable();
        assert_eq!(acked, with_acks, "seed {seed}: each ack once");
        let mut reported_readies = Vec::new();
        for (last, durable_when_reported) in reported {
            let ready = (last.index.0 / 1000) as usize;
            assert!(
                durable_when_reported >= needs[ready],
                "seed {seed}: Ready {ready}'s entries reported with batches through \
                 {durable_when_reported} durable, it needs {}",
                needs[ready]
            );
            reported_readies.push(ready);
        }
        assert_eq!(
            reported_readies, with_entries,
            "seed {seed}: in order, once each"
        );
    }
}
