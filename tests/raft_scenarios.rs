//! The classic Raft traps, one scenario each, on cores driven by hand.
//!
//! Why: a randomized simulation shows that nothing bad happened on the schedules it tried;
//! these tests build the exact schedule under which a known bug would show, from prepared
//! logs and terms, delivering and dropping chosen messages, and assert the exact outcome
//! (roles, terms, commit indexes, the messages produced). Where a safeguard is a switch
//! (PreVote, CheckQuorum), the same scenario also runs with it off, to prove the test can
//! fail. Inspired by etcd-io/raft `raft_test.go` and tikv/raft-rs
//! `harness/tests/integration_cases/test_raft.rs`.
//!
//! Everything goes through `rrmq::raft::Core`'s public API via `scenario_support::Net`;
//! the seeds are fixed, so every run is the same run.

mod scenario_support;

use bytes::Bytes;
use rrmq::raft::InitialState;
use rrmq::raft::{
    AppendResult, Entry, EntryId, HardState, LogIndex, Message, MessageBody, NodeId, ProposeError,
    RaftConfig, ReadState, Ready, RejectHint, Role, SnapshotMeta, Term,
};
use scenario_support::{
    is_vote_response, last_id, prepared_entry, runs, test_config, Net, Setup, S1, S2, S3, S4, S5,
};

// ---- Helpers ----------------------------------------------------------------------------

fn command(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

fn propose(net: &mut Net, id: NodeId, text: &str) -> EntryId {
    match net.core_mut(id).propose(command(text)) {
        Ok(entry_id) => entry_id,
        Err(error) => panic!("node {id} refused proposal {text:?}: {error}"),
    }
}

/// The leader's view of `follower`'s match index.
fn match_index(net: &Net, leader: NodeId, follower: NodeId) -> LogIndex {
    match net
        .core(leader)
        .status()
        .progress
        .iter()
        .find(|progress| progress.id == follower)
    {
        Some(progress) => progress.match_index,
        None => panic!("node {leader} has no progress for {follower}"),
    }
}

/// `(voter, granted)` for every (non-pre) vote response delivered to `candidate` in `term`.
fn votes_received(net: &Net, candidate: NodeId, term: u64) -> Vec<(NodeId, bool)> {
    net.delivered()
        .iter()
        .filter(|message| message.to == candidate && message.term == Term(term))
        .filter_map(|message| match message.body {
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted,
            } => Some((message.from, granted)),
            _ => None,
        })
        .collect()
}

/// `(voter, granted)` for every pre-vote response delivered to `candidate`.
fn pre_votes_received(net: &Net, candidate: NodeId) -> Vec<(NodeId, bool)> {
    net.delivered()
        .iter()
        .filter(|message| message.to == candidate)
        .filter_map(|message| match message.body {
            MessageBody::RequestVoteResponse {
                pre_vote: true,
                granted,
            } => Some((message.from, granted)),
            _ => None,
        })
        .collect()
}

fn all_messages(readies: &[Ready]) -> Vec<Message> {
    readies
        .iter()
        .flat_map(|ready| {
            ready
                .messages
                .iter()
                .chain(&ready.messages_after_persist)
                .cloned()
        })
        .collect()
}

fn is_leader_traffic(message: &Message) -> bool {
    matches!(
        message.body,
        MessageBody::AppendEntries { .. } | MessageBody::Heartbeat { .. } | MessageBody::TimeoutNow
    )
}

// ---- 1. Raft paper Figure 8 -------------------------------------------------------------

/// Plain Raft as in the paper (PreVote and CheckQuorum have their own scenarios), and one
/// entry per AppendEntries so that a test can lose the second entry of a run.
fn figure_8_config() -> RaftConfig {
    RaftConfig {
        pre_vote: false,
        check_quorum: false,
        append_bytes_max: 1,
        ..test_config()
    }
}

/// Builds Figure 8 (c): S1, leader of term 4, has its term-2 entry at index 2 on S1, S2 and
/// S3 — a majority, and S1 knows it — but its own term-4 entry at index 3 only on S1 and S2.
/// Returns the network and the held AppendEntries that would give 3@4 to S3.
///
/// One deviation from the figure: S2 stores 3@4 too. S2 already held index 2, so the only
/// AppendEntries S2 can acknowledge carries index 3; without it S1 could not learn that S2
/// holds index 2, and the point of the figure is a leader that *knows* an old entry is on a
/// majority.
fn figure_8_situation_c() -> (Net, Vec<Message>) {
    // (a) S1 led term 2 and replicated 2@2 to S2 only. (b) S1 crashed; S5 won term 3 with the
    // votes of S3, S4 and S5, appended 2@3 and crashed before sending it.
    let mut net = Net::with_setups(
        figure_8_config(),
        vec![
            Setup::log(&[1, 2]).term(2).vote(S1).commit(1),
            Setup::log(&[1, 2]).term(2).vote(S1).commit(1),
            Setup::log(&[1]).term(3).vote(S5).commit(1),
            Setup::log(&[1]).term(3).vote(S5).commit(1),
            Setup::log(&[1, 3]).term(3).vote(S5).commit(1),
        ],
    );
    net.isolate(S5);

    // (c) S1 restarts. In term 3 it loses: S3 and S4 already voted for S5 in that term.
    net.campaign(S1);
    net.deliver_all();
    assert_eq!(net.core(S1).role(), Role::Candidate, "(c) term 3 is lost");
    assert_eq!(net.core(S1).term(), Term(3));
    assert_eq!(
        votes_received(&net, S1, 3),
        vec![(S2, true), (S3, false), (S4, false)],
        "(c) votes in term 3"
    );

    // In term 4 it wins, and from then on S4 hears nothing from it.
    net.campaign(S1);
    net.deliver_until(|net| net.core(S1).role() == Role::Leader);
    assert_eq!(net.core(S1).term(), Term(4));
    assert_eq!(
        net.log_terms(S1),
        vec![1, 2, 4],
        "(c) S1 appended its no-op 3@4"
    );
    net.cut(S1, S4);

    // S2 takes 3@4. S3 rejects the first probe (its log is too short), then takes 2@2.
    net.deliver_until(|net| match_index(net, S1, S3) == LogIndex(2));
    // S1 crashes before S3 stores 3@4: the AppendEntries carrying it is held back.
    let held = net.drop_where(|message| message.from == S1 && message.to == S3);
    net.deliver_all();

    assert_eq!(net.log_terms(S1), vec![1, 2, 4]);
    assert_eq!(net.log_terms(S2), vec![1, 2, 4]);
    assert_eq!(net.log_terms(S3), vec![1, 2]);
    assert_eq!(net.log_terms(S4), vec![1]);
    assert_eq!(net.log_terms(S5), vec![1, 3]);
    assert_eq!(match_index(&net, S1, S2), LogIndex(3));
    assert_eq!(match_index(&net, S1, S3), LogIndex(2));
    assert_eq!(
        net.core(S1).commit_index(),
        LogIndex(1),
        "(c) 2@2 is on S1, S2 and S3, a majority, yet must not commit: it is not of term 4"
    );
    assert_eq!(
        held.len(),
        1,
        "(c) exactly one append to S3 is held: {held:?}"
    );
    match &held[0].body {
        MessageBody::AppendEntries { prev, entries, .. } => {
            assert_eq!(*prev, EntryId::new(Term(2), LogIndex(2)));
            assert_eq!(
                entries.iter().map(Entry::id).collect::<Vec<_>>(),
                vec![EntryId::new(Term(4), LogIndex(3))]
            );
        }
        body => panic!("(c) held message is not an append: {body:?}"),
    }
    (net, held)
}

#[test]
fn figure_8_old_term_entry_on_a_majority_is_not_committed_and_can_be_overwritten() {
    let (mut net, _lost) = figure_8_situation_c();

    // (d) S1 crashes. S5 comes back; in term 4 everyone has already voted for S1.
    net.heal();
    net.isolate(S1);
    net.clear_traces();
    net.campaign(S5);
    net.deliver_all();
    assert_eq!(
        votes_received(&net, S5, 4),
        vec![(S2, false), (S3, false), (S4, false)]
    );
    assert_eq!(
        net.core(S5).role(),
        Role::Follower,
        "(d) a majority refused"
    );

    // In term 5, S3 and S4 vote for it: its log ends at 2@3, theirs at 2@2 and 1@1.
    net.campaign(S5);
    net.deliver_all();
    assert_eq!(
        votes_received(&net, S5, 5),
        vec![(S2, false), (S3, true), (S4, true)]
    );
    assert_eq!(net.core(S5).role(), Role::Leader);
    assert_eq!(net.core(S5).term(), Term(5));

    // ... and overwrites index 2 everywhere it reaches. Had S1 committed 2@2 in (c), a
    // committed entry would now be gone.
    net.heartbeat(S5);
    for id in [S2, S3, S4, S5] {
        assert_eq!(net.log_terms(id), vec![1, 3, 5], "(d) log of node {id}");
        assert_eq!(
            net.core(id).commit_index(),
            LogIndex(3),
            "(d) commit of {id}"
        );
        assert_eq!(
            net.core(id).entry(LogIndex(2)),
            Some(&prepared_entry(3, 2)),
            "(d) node {id} holds S5's entry at index 2"
        );
    }
    assert_eq!(net.core(S1).commit_index(), LogIndex(1));
}

#[test]
fn figure_8_old_term_entry_commits_with_an_entry_of_the_leaders_term() {
    let (mut net, held) = figure_8_situation_c();

    // (e) S1 stays up long enough for S3 to store 3@4: now an entry of term 4 is on a
    // majority, and it commits together with 2@2.
    net.send(held);
    net.deliver_all();
    assert_eq!(match_index(&net, S1, S3), LogIndex(3));
    assert_eq!(net.core(S1).commit_index(), LogIndex(3));
    assert_eq!(
        net.node(S1)
            .applied
            .iter()
            .map(Entry::id)
            .collect::<Vec<_>>(),
        vec![
            EntryId::new(Term(1), LogIndex(1)),
            EntryId::new(Term(2), LogIndex(2)),
            EntryId::new(Term(4), LogIndex(3)),
        ],
        "(e) S1 applied 2@2 and 3@4 in order"
    );

    // S1 crashes now. S5 can no longer win: S2 and S3 hold a log ending in term 4.
    net.heal();
    net.isolate(S1);
    net.clear_traces();
    net.campaign(S5);
    net.deliver_all();
    net.campaign(S5);
    net.deliver_all();
    assert_eq!(
        votes_received(&net, S5, 5),
        vec![(S2, false), (S3, false), (S4, true)]
    );
    assert_ne!(net.core(S5).role(), Role::Leader);

    // S2 wins instead, and both entries stay where they were.
    net.campaign(S2);
    net.deliver_all();
    assert_eq!(net.core(S2).role(), Role::Leader);
    assert_eq!(net.core(S2).term(), Term(6));
    net.heartbeat(S2);
    for id in [S2, S3, S4, S5] {
        assert_eq!(net.log_terms(id), vec![1, 2, 4, 6], "(e) log of node {id}");
        assert_eq!(
            net.core(id).commit_index(),
            LogIndex(4),
            "(e) commit of {id}"
        );
    }
}

// ---- 2. A longer conflicting follower log, fast backtracking ------------------------------

#[test]
fn conflicting_follower_suffix_is_overwritten_with_one_rejection_per_conflicting_term() {
    struct Case {
        name: &'static str,
        leader_log: Vec<u64>,
        follower_log: Vec<u64>,
        /// `(prev_index, hint)` of each rejection, in order. Backtracking one entry per
        /// round trip would take `prev_index - matching index` of them.
        rejections: Vec<(u64, RejectHint)>,
    }
    let conflicting = |term: u64, first_index: u64| RejectHint::ConflictingTerm {
        conflict_term: Term(term),
        first_index: LogIndex(first_index),
    };
    let cases = [
        Case {
            name: "fifty conflicting entries of one term",
            leader_log: runs(&[(1, 1), (3, 5)]),
            follower_log: runs(&[(1, 1), (2, 50)]),
            // Per entry: 5 round trips.
            rejections: vec![(6, conflicting(2, 2))],
        },
        Case {
            name: "fifty conflicting entries of two terms",
            leader_log: runs(&[(1, 1), (4, 10)]),
            follower_log: runs(&[(1, 1), (2, 4), (3, 46)]),
            // Per entry: 10 round trips.
            rejections: vec![(11, conflicting(3, 6)), (5, conflicting(2, 2))],
        },
        Case {
            name: "the leader holds the start of the conflicting term",
            leader_log: runs(&[(1, 1), (2, 3), (4, 3)]),
            follower_log: runs(&[(1, 1), (2, 50)]),
            // The leader skips to the end of its own run of term 2.
            rejections: vec![(7, conflicting(2, 2))],
        },
        Case {
            name: "a shorter follower says where its log ends",
            leader_log: runs(&[(1, 1), (2, 30)]),
            follower_log: runs(&[(1, 1), (2, 5)]),
            // Per entry: 25 round trips.
            rejections: vec![(
                31,
                RejectHint::LogTooShort {
                    last_index: LogIndex(6),
                },
            )],
        },
    ];
    for case in cases {
        let name = case.name;
        let term = case
            .leader_log
            .iter()
            .chain(&case.follower_log)
            .max()
            .copied();
        let term = term.unwrap_or(0);
        let mut net = Net::with_setups(
            test_config(),
            vec![
                Setup::log(&case.leader_log).term(term).commit(1),
                Setup::log(&case.leader_log).term(term).commit(1),
                Setup::log(&case.follower_log).term(term).commit(1),
            ],
        );
        net.elect(S1);
        net.heartbeat(S1);

        let rejections: Vec<(u64, RejectHint)> = net
            .delivered()
            .iter()
            .filter(|message| message.from == S3)
            .filter_map(|message| match message.body {
                MessageBody::AppendEntriesResponse(AppendResult::Rejected { prev_index, hint }) => {
                    Some((prev_index.0, hint))
                }
                _ => None,
            })
            .collect();
        assert_eq!(rejections, case.rejections, "{name}: rejections");

        let mut expected_log = case.leader_log.clone();
        expected_log.push(term + 1); // the new leader's no-op
        assert_eq!(net.log_terms(S3), expected_log, "{name}: follower log");
        let last = LogIndex(expected_log.len() as u64);
        assert_eq!(net.core(S3).commit_index(), last, "{name}: follower commit");
        for index in 1..=last.0 {
            assert_eq!(
                net.core(S3).entry(LogIndex(index)),
                net.core(S1).entry(LogIndex(index)),
                "{name}: entry {index} of the follower is the leader's"
            );
        }
    }
}

// ---- 3. A candidate with a stale log -------------------------------------------------------

#[test]
fn stale_candidate_with_a_higher_term_is_refused_and_the_up_to_date_node_wins() {
    // S3 missed the committed 3@2 but spent a partition campaigning up to term 7.
    let config = RaftConfig {
        pre_vote: false,
        ..test_config()
    };
    let mut net = Net::with_setups(
        config,
        vec![
            Setup::log(&[1, 1, 2]).commit(3),
            Setup::log(&[1, 1, 2]).commit(3),
            Setup::log(&[1, 1]).term(7).commit(2),
        ],
    );
    net.campaign(S3);
    net.deliver_all();
    assert_eq!(
        votes_received(&net, S3, 8),
        vec![(S1, false), (S2, false)],
        "voters refuse a log that ends at 2@1 when theirs ends at 3@2"
    );
    for id in [S1, S2, S3] {
        assert_eq!(net.core(id).role(), Role::Follower, "node {id}");
        assert_eq!(
            net.core(id).term(),
            Term(8),
            "node {id} adopted the higher term"
        );
    }

    net.elect(S1);
    assert_eq!(net.core(S1).term(), Term(9));
    assert_eq!(votes_received(&net, S1, 9), vec![(S2, true), (S3, true)]);
    net.heartbeat(S1);
    assert_eq!(net.log_terms(S3), vec![1, 1, 2, 9]);
    assert_eq!(net.core(S3).commit_index(), LogIndex(4));
}

// ---- 4. PreVote prevents term inflation ------------------------------------------------------

struct Rejoin {
    term_before: Term,
    isolated_term: Term,
    isolated_role: Role,
    /// Whether S1 ever stopped being leader of `term_before` after the partition healed.
    leader_deposed: bool,
    terms_after: Vec<Term>,
}

/// S3 is cut off for ten longest election timeouts while S1 leads S2, then rejoins.
fn partitioned_follower_rejoins(pre_vote: bool) -> (Net, Rejoin) {
    let mut net = Net::new(
        3,
        RaftConfig {
            pre_vote,
            ..test_config()
        },
    );
    net.elect(S1);
    net.heartbeat(S1);
    let term_before = net.core(S1).term();
    net.isolate(S3);
    for _ in 0..10 * net.config().election_ticks_max {
        net.tick_all();
        net.deliver_all();
    }
    let isolated_term = net.core(S3).term();
    let isolated_role = net.core(S3).role();

    net.heal();
    let mut leader_deposed = false;
    for _ in 0..5 * net.config().election_ticks_max {
        net.tick_all();
        net.deliver_all();
        leader_deposed |= net.core(S1).role() != Role::Leader || net.core(S1).term() != term_before;
    }
    let terms_after = net.ids().iter().map(|&id| net.core(id).term()).collect();
    let rejoin = Rejoin {
        term_before,
        isolated_term,
        isolated_role,
        leader_deposed,
        terms_after,
    };
    (net, rejoin)
}

#[test]
fn pre_vote_keeps_a_partitioned_node_from_inflating_its_term_and_deposing_the_leader() {
    let (net, rejoin) = partitioned_follower_rejoins(true);
    assert_eq!(
        rejoin.isolated_term, rejoin.term_before,
        "no term while away"
    );
    assert_eq!(rejoin.isolated_role, Role::PreCandidate);
    assert!(!rejoin.leader_deposed, "the leader kept its leadership");
    assert_eq!(rejoin.terms_after, vec![rejoin.term_before; 3]);
    assert_eq!(net.core(S3).role(), Role::Follower);
    assert_eq!(net.core(S3).leader(), Some(S1));
}

#[test]
fn without_pre_vote_a_partitioned_node_inflates_its_term_and_deposes_the_leader() {
    let (net, rejoin) = partitioned_follower_rejoins(false);
    assert_eq!(rejoin.isolated_role, Role::Candidate);
    assert!(
        rejoin.isolated_term.0 >= rejoin.term_before.0 + 10,
        "one term per timeout: {:?} from {:?}",
        rejoin.isolated_term,
        rejoin.term_before
    );
    assert!(
        rejoin.leader_deposed,
        "the rejoining node disrupts the leader"
    );
    assert!(
        rejoin
            .terms_after
            .iter()
            .all(|&term| term >= rejoin.isolated_term),
        "everyone moved to the inflated term: {:?}",
        rejoin.terms_after
    );
    // ...and the cluster still recovers: one leader, one term.
    assert_eq!(net.leaders().len(), 1, "{:?}", net.leaders());
    assert!(
        rejoin
            .terms_after
            .iter()
            .all(|&term| term == rejoin.terms_after[0]),
        "{:?}",
        rejoin.terms_after
    );
}

// ---- 5. CheckQuorum ---------------------------------------------------------------------------

/// Isolates leader S1 of a healthy 3-node cluster and runs everyone for five longest election
/// timeouts. Returns the tick at which S1 stopped leading, if it did.
fn isolate_the_leader(check_quorum: bool) -> (Net, Option<u32>) {
    let mut net = Net::new(
        3,
        RaftConfig {
            check_quorum,
            ..test_config()
        },
    );
    net.elect(S1);
    net.heartbeat(S1);
    net.isolate(S1);
    let mut stepped_down_at = None;
    for tick in 1..=5 * net.config().election_ticks_max {
        net.tick_all();
        net.deliver_all();
        if stepped_down_at.is_none() && net.core(S1).role() != Role::Leader {
            stepped_down_at = Some(tick);
            assert_eq!(net.core(S1).role(), Role::Follower);
            assert_eq!(net.core(S1).leader(), None);
            assert_eq!(
                net.core_mut(S1).propose(command("late")),
                Err(ProposeError::NotLeader { leader: None })
            );
        }
    }
    (net, stepped_down_at)
}

#[test]
fn check_quorum_deposes_an_isolated_leader_within_an_election_timeout_or_two() {
    let (mut net, stepped_down_at) = isolate_the_leader(true);
    let stepped_down_at = stepped_down_at.expect("S1 should have stepped down");
    // S1 checks every election_ticks_min ticks whether it heard from a majority since the
    // previous check. Its check clock stood at heartbeat_ticks when the cut came, so the
    // first check after the cut still counts the acks of that heartbeat and passes; the next
    // one, an election timeout later, fails. Never more than two election timeouts.
    let config = net.config();
    let expected = (config.election_ticks_min - config.heartbeat_ticks) + config.election_ticks_min;
    assert_eq!(stepped_down_at, expected, "tick of the step-down");
    assert!(stepped_down_at <= 2 * config.election_ticks_min);
    assert_ne!(net.core(S1).role(), Role::Leader);
    assert_eq!(net.core(S1).term(), Term(1), "PreVote kept S1's term");

    let leaders = net.leaders();
    assert_eq!(
        leaders.len(),
        1,
        "one leader on the majority side: {leaders:?}"
    );
    assert_ne!(leaders[0], S1);
    assert_eq!(net.core(leaders[0]).term(), Term(2));
    propose(&mut net, leaders[0], "accepted by the new leader");
}

#[test]
fn without_check_quorum_an_isolated_leader_keeps_leading_and_accepting_writes() {
    let (mut net, stepped_down_at) = isolate_the_leader(false);
    assert_eq!(stepped_down_at, None);
    assert_eq!(net.core(S1).role(), Role::Leader);
    assert_eq!(net.core(S1).term(), Term(1));
    let commit = net.core(S1).commit_index();
    let accepted = net.core_mut(S1).propose(command("doomed"));
    assert!(
        accepted.is_ok(),
        "a stale leader takes writes: {accepted:?}"
    );
    net.deliver_all();
    assert_eq!(net.core(S1).commit_index(), commit, "...that never commit");
    // Meanwhile the majority moved on: two nodes believe they lead.
    assert_eq!(net.leaders().len(), 2, "{:?}", net.leaders());
}

// ---- 6. Leader lease ---------------------------------------------------------------------------

#[test]
fn follower_in_leader_lease_ignores_vote_requests_with_a_higher_term() {
    struct Case {
        name: &'static str,
        check_quorum: bool,
        pre_vote: bool,
        leadership_transfer: bool,
        /// `Some(granted)` when S2 answers; `None` when it ignores the request.
        answer: Option<bool>,
        /// Whether S2 moves to the request's term and forgets its leader.
        adopts_term: bool,
    }
    let cases = [
        Case {
            name: "a vote request inside the lease is ignored",
            check_quorum: true,
            pre_vote: false,
            leadership_transfer: false,
            answer: None,
            adopts_term: false,
        },
        Case {
            name: "a pre-vote request inside the lease is ignored",
            check_quorum: true,
            pre_vote: true,
            leadership_transfer: false,
            answer: None,
            adopts_term: false,
        },
        Case {
            name: "a leadership transfer's vote request breaks the lease",
            check_quorum: true,
            pre_vote: false,
            leadership_transfer: true,
            answer: Some(true),
            adopts_term: true,
        },
        Case {
            name: "without CheckQuorum there is no lease",
            check_quorum: false,
            pre_vote: false,
            leadership_transfer: false,
            answer: Some(true),
            adopts_term: true,
        },
    ];
    for case in cases {
        let name = case.name;
        let mut net = Net::new(
            3,
            RaftConfig {
                check_quorum: case.check_quorum,
                ..test_config()
            },
        );
        net.elect(S1);
        net.heartbeat(S1); // S2 heard from S1 just now
        let term = net.core(S2).term();
        let request_term = Term(term.0 + 1);
        net.deliver(Message {
            from: S3,
            to: S2,
            term: request_term,
            body: MessageBody::RequestVote {
                pre_vote: case.pre_vote,
                last_log: last_id(&net, S3),
                leadership_transfer: case.leadership_transfer,
            },
        });
        let readies = net.process(S2);
        let replies = all_messages(&readies);
        match case.answer {
            None => assert_eq!(replies, vec![], "{name}: no reply"),
            Some(granted) => assert_eq!(
                replies,
                vec![Message {
                    from: S2,
                    to: S3,
                    term: request_term,
                    body: MessageBody::RequestVoteResponse {
                        pre_vote: case.pre_vote,
                        granted
                    },
                }],
                "{name}: reply"
            ),
        }
        if case.adopts_term {
            assert_eq!(net.core(S2).term(), request_term, "{name}: term");
            assert_eq!(net.core(S2).leader(), None, "{name}: leader");
        } else {
            assert_eq!(net.core(S2).term(), term, "{name}: term");
            assert_eq!(net.core(S2).leader(), Some(S1), "{name}: leader");
        }
    }
}

// ---- 7. Leadership transfer -----------------------------------------------------------------

#[test]
fn transfer_to_an_up_to_date_follower_hands_over_in_the_next_term() {
    let mut net = Net::new(3, test_config());
    net.elect(S1);
    net.heartbeat(S1);
    net.clear_traces();

    assert_eq!(net.core_mut(S1).transfer_leader(S2), Ok(()));
    let readies = net.process(S1);
    let timeout_now = Message {
        from: S1,
        to: S2,
        term: Term(1),
        body: MessageBody::TimeoutNow,
    };
    assert_eq!(readies.len(), 1);
    assert_eq!(readies[0].messages, vec![timeout_now], "sent at once");
    assert_eq!(readies[0].messages_after_persist, vec![]);
    assert_eq!(
        net.core_mut(S1).propose(command("during transfer")),
        Err(ProposeError::TransferInProgress)
    );

    net.deliver_all();
    assert_eq!(net.core(S2).role(), Role::Leader);
    assert_eq!(net.core(S2).term(), Term(2));
    for id in [S1, S3] {
        assert_eq!(net.core(id).role(), Role::Follower, "node {id}");
        assert_eq!(net.core(id).leader(), Some(S2), "node {id}");
    }
    let transfer_votes = net
        .delivered()
        .iter()
        .filter(|message| {
            matches!(
                message.body,
                MessageBody::RequestVote {
                    pre_vote: false,
                    leadership_transfer: true,
                    ..
                }
            )
        })
        .count();
    assert_eq!(
        transfer_votes, 2,
        "S2 campaigns at once, flagged as a transfer"
    );
    propose(&mut net, S2, "after transfer");
    assert_eq!(
        net.core_mut(S1).propose(command("old leader")),
        Err(ProposeError::NotLeader { leader: Some(S2) })
    );
}

#[test]
fn transfer_to_a_lagging_follower_catches_it_up_before_timeout_now() {
    let mut net = Net::new(3, test_config());
    net.elect(S1);
    net.heartbeat(S1);
    net.isolate(S3);
    for text in ["a", "b", "c"] {
        propose(&mut net, S1, text);
    }
    net.deliver_all();
    let last = net.core(S1).last_index();
    assert_eq!(last, LogIndex(4));
    assert_eq!(net.core(S1).commit_index(), last, "committed with S2");
    assert_eq!(net.core(S3).last_index(), LogIndex(1), "S3 missed them");

    net.heal();
    net.clear_traces();
    assert_eq!(net.core_mut(S1).transfer_leader(S3), Ok(()));
    assert_eq!(
        net.core_mut(S1).propose(command("during transfer")),
        Err(ProposeError::TransferInProgress)
    );
    net.heartbeat(S1);

    let trace = net.delivered();
    let caught_up = trace.iter().position(|message| {
        message.from == S3
            && message.body
                == MessageBody::AppendEntriesResponse(AppendResult::Accepted { match_index: last })
    });
    let timeout_now = trace
        .iter()
        .position(|message| message.to == S3 && message.body == MessageBody::TimeoutNow);
    let (Some(caught_up), Some(timeout_now)) = (caught_up, timeout_now) else {
        panic!("expected S3 to catch up and then get TimeoutNow: {trace:#?}");
    };
    assert!(
        caught_up < timeout_now,
        "TimeoutNow (#{timeout_now}) only after S3 acknowledged {last} (#{caught_up})"
    );
    assert_eq!(net.core(S3).role(), Role::Leader);
    assert_eq!(net.core(S3).term(), Term(2));
    assert_eq!(net.log_terms(S3), vec![1, 1, 1, 1, 2]);
}

#[test]
fn transfer_to_a_cut_off_follower_times_out_and_the_leader_takes_writes_again() {
    let mut net = Net::new(3, test_config());
    net.elect(S1);
    net.heartbeat(S1);
    net.isolate(S2);
    net.clear_traces();
    assert_eq!(net.core_mut(S1).transfer_leader(S2), Ok(()));
    net.deliver_all();
    assert_eq!(
        net.dropped()
            .iter()
            .filter(|message| message.body == MessageBody::TimeoutNow)
            .count(),
        1,
        "the TimeoutNow was lost"
    );

    let timeout = net.config().election_ticks_min;
    for tick in 1..timeout {
        net.tick(S1);
        net.deliver_all();
        assert_eq!(
            net.core_mut(S1).propose(command("during transfer")),
            Err(ProposeError::TransferInProgress),
            "tick {tick}"
        );
    }
    net.tick(S1);
    net.deliver_all();
    let accepted = propose(&mut net, S1, "after the transfer gave up");
    net.deliver_all();
    assert_eq!(net.core(S1).role(), Role::Leader);
    assert_eq!(net.core(S1).term(), Term(1));
    assert_eq!(
        net.core(S1).commit_index(),
        accepted.index,
        "committed with S3"
    );
    assert_eq!(net.core(S2).term(), Term(1), "S2 never campaigned");
}

// ---- 8. ReadIndex ------------------------------------------------------------------------------

#[test]
fn read_on_a_partitioned_leader_is_never_confirmed_and_aborted_when_it_steps_down() {
    let mut net = Net::new(3, test_config());
    net.elect(S1);
    net.heartbeat(S1);
    net.isolate(S1);
    assert_eq!(net.core_mut(S1).read_index(1), Ok(()));
    let mut new_leader_wrote = false;
    for _ in 0..3 * net.config().election_ticks_max {
        net.tick_all();
        net.deliver_all();
        // The majority side elects a new leader which takes a write the old one cannot see.
        if let Some(&leader) = net.leaders().iter().find(|&&id| id != S1) {
            if !new_leader_wrote {
                propose(&mut net, leader, "unseen by S1");
                new_leader_wrote = true;
            }
        }
    }
    assert!(new_leader_wrote);
    assert_ne!(net.core(S1).role(), Role::Leader);
    assert_eq!(net.node(S1).read_states, vec![], "never confirmed");
    assert_eq!(net.node(S1).aborted_reads, vec![1], "reported aborted");
}

#[test]
fn new_leader_defers_reads_until_it_commits_an_entry_of_its_term() {
    // S1 and S2 hold 2@2 and 3@2, committed in term 2, but their hard state only says 1:
    // the commit index is persisted lazily.
    let mut net = Net::with_setups(
        test_config(),
        vec![
            Setup::log(&[1, 2, 2]).commit(1),
            Setup::log(&[1, 2, 2]).commit(1),
            Setup::log(&[1]).term(2).commit(1),
        ],
    );
    net.campaign(S1);
    net.deliver_until(|net| net.core(S1).role() == Role::Leader);
    assert_eq!(net.core(S1).term(), Term(3));
    assert_eq!(
        net.core(S1).commit_index(),
        LogIndex(1),
        "S1 does not know better yet"
    );

    net.clear_traces();
    assert_eq!(net.core_mut(S1).read_index(7), Ok(()));
    let readies = net.process(S1);
    assert!(
        !all_messages(&readies)
            .iter()
            .any(|message| matches!(message.body, MessageBody::Heartbeat { .. })),
        "no read round before an entry of term 3 commits: {readies:?}"
    );
    assert_eq!(net.node(S1).read_states, vec![]);

    net.deliver_all();
    assert_eq!(
        net.core(S1).commit_index(),
        LogIndex(4),
        "the no-op 4@3 committed"
    );
    assert_eq!(
        net.node(S1).read_states,
        vec![ReadState {
            read_id: 7,
            index: LogIndex(4)
        }],
        "answered at the true commit index, not at 1"
    );
}

#[test]
fn reads_are_confirmed_in_registration_order_whatever_round_is_acknowledged_first() {
    struct Case {
        name: &'static str,
        first_round_delivered: usize,
        confirmed_after_first: Vec<u64>,
    }
    let cases = [
        Case {
            name: "round 1 acknowledged first",
            first_round_delivered: 1,
            confirmed_after_first: vec![1],
        },
        Case {
            name: "round 2 acknowledged first",
            first_round_delivered: 2,
            confirmed_after_first: vec![1, 2, 3],
        },
    ];
    for case in cases {
        let name = case.name;
        let mut net = Net::new(3, test_config());
        net.elect(S1);
        net.heartbeat(S1);
        let commit = net.core(S1).commit_index();

        assert_eq!(net.core_mut(S1).read_index(1), Ok(()));
        let round_1 = net.take_outbox();
        assert_eq!(net.core_mut(S1).read_index(2), Ok(()));
        assert_eq!(net.core_mut(S1).read_index(3), Ok(()));
        let round_2 = net.take_outbox();
        for (round, messages) in [(1, &round_1), (2, &round_2)] {
            let to: Vec<NodeId> = messages.iter().map(|message| message.to).collect();
            assert_eq!(
                to,
                vec![S2, S3],
                "{name}: round {round} goes to both followers"
            );
            for message in messages.iter() {
                assert!(
                    matches!(message.body, MessageBody::Heartbeat { read_round, .. } if read_round == round),
                    "{name}: round {round}: {message:?}"
                );
            }
        }
        let (first, second) = if case.first_round_delivered == 1 {
            (round_1, round_2)
        } else {
            (round_2, round_1)
        };
        // One follower's acknowledgement and the leader itself make a majority.
        let first_to_s2: Vec<Message> = first.into_iter().filter(|m| m.to == S2).collect();
        net.send(first_to_s2);
        net.deliver_all();
        let confirmed: Vec<u64> = net
            .node(S1)
            .read_states
            .iter()
            .map(|read| read.read_id)
            .collect();
        assert_eq!(confirmed, case.confirmed_after_first, "{name}: first");

        net.send(second);
        net.deliver_all();
        assert_eq!(
            net.node(S1).read_states,
            [1, 2, 3]
                .map(|read_id| ReadState {
                    read_id,
                    index: commit
                })
                .to_vec(),
            "{name}: all, once each, in order"
        );
    }
}

// ---- 9. What waits for persistence ------------------------------------------------------------

#[test]
fn votes_and_acknowledgements_leave_only_after_persisting() {
    let mut net = Net::new(3, test_config());
    net.elect(S1);
    propose(&mut net, S1, "x");
    net.deliver_all();
    net.heartbeat(S1);

    let mut grants = 0;
    let mut acknowledgements = 0;
    for id in net.ids() {
        for (number, ready) in net.node(id).readies.iter().enumerate() {
            for message in &ready.messages {
                assert!(
                    is_leader_traffic(message),
                    "node {id} ready {number}: only a leader's appends, heartbeats and \
                     TimeoutNow may leave before persisting: {message:?}"
                );
            }
            for message in &ready.messages_after_persist {
                if is_vote_response(message, true) {
                    grants += 1;
                    assert_eq!(
                        ready
                            .hard_state
                            .map(|hard_state| (hard_state.term, hard_state.vote)),
                        Some((message.term, Some(message.to))),
                        "node {id} ready {number}: the vote is persisted with the grant"
                    );
                }
                if let MessageBody::AppendEntriesResponse(AppendResult::Accepted { match_index }) =
                    message.body
                {
                    if let Some(last) = ready.entries.last() {
                        acknowledgements += 1;
                        assert_eq!(
                            last.index, match_index,
                            "node {id} ready {number}: acknowledged what it persists"
                        );
                    }
                }
            }
        }
    }
    assert_eq!(grants, 2, "S2 and S3 granted S1 its vote");
    assert_eq!(
        acknowledgements, 4,
        "S2 and S3 acknowledged the no-op and x"
    );
}

#[test]
fn leader_counts_its_own_entry_toward_commit_only_once_persisted() {
    struct Case {
        name: &'static str,
        follower_down: bool,
        /// Whether the proposal commits before the leader's disk reports it durable.
        commits_before_own_persist: bool,
    }
    let cases = [
        Case {
            name: "both followers acknowledge: 2 of 3 copies are durable without the leader's",
            follower_down: false,
            commits_before_own_persist: true,
        },
        Case {
            name: "one follower down: the leader's own copy is needed",
            follower_down: true,
            commits_before_own_persist: false,
        },
    ];
    for case in cases {
        let name = case.name;
        let mut net = Net::new(3, test_config());
        net.elect(S1);
        net.heartbeat(S1);
        let before = net.core(S1).commit_index();
        if case.follower_down {
            net.isolate(S3);
        }

        net.stall(S1); // its disk is slow: the test runs its Ready by hand
        let proposal = propose(&mut net, S1, "x");
        let ready = net.take_ready(S1);
        assert_eq!(
            ready.entries.iter().map(Entry::id).collect::<Vec<_>>(),
            vec![proposal],
            "{name}"
        );
        assert!(
            ready.messages.iter().all(is_leader_traffic) && ready.messages.len() == 2,
            "{name}: appends leave at once: {:?}",
            ready.messages
        );
        net.send(ready.messages.clone());
        net.deliver_all();
        let expected = if case.commits_before_own_persist {
            proposal.index
        } else {
            before
        };
        assert_eq!(
            net.core(S1).commit_index(),
            expected,
            "{name}: before persisting"
        );

        net.persist(S1, ready);
        assert_eq!(
            net.core(S1).commit_index(),
            proposal.index,
            "{name}: after persisting"
        );
        net.unstall(S1);
        net.deliver_all();
        assert_eq!(
            net.node(S1).applied.last().map(Entry::id),
            Some(proposal),
            "{name}: applied"
        );
    }
}

// ---- 10. Restart ---------------------------------------------------------------------------

#[test]
fn restarted_node_keeps_its_term_and_vote_and_does_not_vote_twice() {
    struct Case {
        name: &'static str,
        /// Whether S2 restarts from what it persisted or from a state that lost its vote.
        durable_vote: bool,
        s2_grants_s3: bool,
    }
    let cases = [
        Case {
            name: "restored from storage",
            durable_vote: true,
            s2_grants_s3: false,
        },
        Case {
            name: "restored without the vote (what durability prevents)",
            durable_vote: false,
            s2_grants_s3: true,
        },
    ];
    for case in cases {
        let name = case.name;
        let config = RaftConfig {
            pre_vote: false,
            ..test_config()
        };
        let setup = Setup::log(&[1]).term(4).commit(1);
        let mut net = Net::with_setups(config, vec![setup.clone(), setup.clone(), setup]);

        // S1 campaigns in term 5; only S2 hears it, grants, persists, and crashes before the
        // grant leaves.
        net.cut(S1, S3);
        net.campaign(S1);
        net.deliver_round();
        let readies = net.process(S2);
        assert_eq!(
            readies
                .iter()
                .map(|ready| ready.hard_state)
                .collect::<Vec<_>>(),
            vec![Some(HardState {
                term: Term(5),
                vote: Some(S1),
                commit: LogIndex(1)
            })],
            "{name}: S2 persisted its vote"
        );
        let lost = net.drop_where(|message| message.from == S2);
        assert!(
            lost.iter().all(|message| is_vote_response(message, true)),
            "{name}"
        );
        if case.durable_vote {
            net.restart(S2);
        } else {
            let amnesiac = InitialState {
                snapshot: Default::default(),
                hard_state: HardState {
                    term: Term(4),
                    vote: None,
                    commit: LogIndex(1),
                },
                entries: net.node(S2).storage.entries.clone(),
            };
            net.restart_from(S2, amnesiac);
        }
        let expected_term = if case.durable_vote { Term(5) } else { Term(4) };
        assert_eq!(
            net.core(S2).term(),
            expected_term,
            "{name}: S2's term after restart"
        );

        // S3 campaigns in the same term 5.
        net.heal();
        net.clear_traces();
        net.campaign(S3);
        assert_eq!(net.core(S3).term(), Term(5), "{name}");
        net.deliver_all();
        let votes = votes_received(&net, S3, 5);
        assert!(votes.contains(&(S1, false)), "{name}: S1 voted for itself");
        assert!(
            votes.contains(&(S2, case.s2_grants_s3)),
            "{name}: S2's answer: {votes:?}"
        );
        let s3_won = net.core(S3).role() == Role::Leader && net.core(S3).term() == Term(5);
        assert_eq!(s3_won, case.s2_grants_s3, "{name}: S3 leads term 5");
    }
}

// ---- Further traps ------------------------------------------------------------------------------

#[test]
fn heartbeat_never_commits_follower_entries_the_leader_has_not_matched() {
    // S3 holds 2..=4 of term 2, uncommitted and absent from the leader's log.
    let mut net = Net::with_setups(
        test_config(),
        vec![
            Setup::log(&[1, 3, 3, 3]).commit(1),
            Setup::log(&[1, 3, 3, 3]).commit(1),
            Setup::log(&[1, 2, 2, 2]).term(3).commit(1),
        ],
    );
    // S3 hears S1's heartbeats but none of its appends.
    net.cut_where(|message| {
        message.from == S1
            && message.to == S3
            && matches!(message.body, MessageBody::AppendEntries { .. })
    });
    net.elect(S1);
    for _ in 0..3 {
        net.heartbeat(S1);
    }
    assert_eq!(
        net.core(S1).commit_index(),
        LogIndex(5),
        "committed with S2"
    );
    assert_eq!(
        net.core(S3).leader(),
        Some(S1),
        "S3 follows S1's heartbeats"
    );
    let heartbeat_commits: Vec<LogIndex> = net
        .delivered()
        .iter()
        .filter(|message| message.to == S3)
        .filter_map(|message| match message.body {
            MessageBody::Heartbeat { commit, .. } => Some(commit),
            _ => None,
        })
        .collect();
    assert_eq!(
        heartbeat_commits,
        vec![LogIndex(0); 3],
        "a heartbeat carries the commit index only up to what the follower is known to match"
    );
    assert_eq!(
        net.core(S3).commit_index(),
        LogIndex(1),
        "S3 must not commit its own 2..=4@2"
    );

    net.heal();
    net.heartbeat(S1);
    assert_eq!(net.log_terms(S3), vec![1, 3, 3, 3, 4]);
    assert_eq!(net.core(S3).commit_index(), LogIndex(5));
}

#[test]
fn delayed_duplicate_append_does_not_truncate_acknowledged_entries() {
    let mut net = Net::new(3, test_config());
    net.elect(S1);
    net.heartbeat(S1);
    let to_s2 = |messages: &[Message]| -> Vec<Message> {
        messages
            .iter()
            .filter(|message| message.to == S2)
            .cloned()
            .collect()
    };
    propose(&mut net, S1, "a");
    let first = net.take_outbox();
    propose(&mut net, S1, "b");
    let second = net.take_outbox();
    net.send(to_s2(&first));
    net.send(to_s2(&second));
    net.deliver_all();
    assert_eq!(net.core(S2).last_index(), LogIndex(3));
    assert_eq!(match_index(&net, S1, S2), LogIndex(3));

    // The append carrying only 2@1 arrives again, late.
    net.send(to_s2(&first));
    net.deliver_all();
    assert_eq!(net.log_terms(S2), vec![1, 1, 1], "3@1 is still there");
    assert_eq!(net.node(S2).storage.entries.len(), 3, "and still on disk");
    assert_eq!(
        match_index(&net, S1, S2),
        LogIndex(3),
        "the leader did not go back"
    );
}

#[test]
fn stale_node_with_an_inflated_term_rejoins_without_leading_under_pre_vote_and_check_quorum() {
    // S3 missed 3@2 and, with an older build without PreVote, campaigned up to term 7.
    let mut net = Net::with_setups(
        test_config(),
        vec![
            Setup::log(&[1, 1, 2]).commit(3),
            Setup::log(&[1, 1, 2]).commit(3),
            Setup::log(&[1, 1]).term(7).commit(2),
        ],
    );
    net.cut_where(|message| message.from == S3 || message.to == S3);
    net.elect(S1);
    assert_eq!(net.core(S1).term(), Term(3));
    net.heal();
    let mut leaders_seen = Vec::new();
    for _ in 0..10 * net.config().election_ticks_max {
        net.tick_all();
        net.deliver_all();
        for leader in net.leaders() {
            leaders_seen.push((leader, net.core(leader).term()));
        }
    }
    assert!(
        leaders_seen.iter().all(|&(leader, _)| leader != S3),
        "S3's log is stale: it must never lead ({leaders_seen:?})"
    );
    let leaders = net.leaders();
    assert_eq!(leaders.len(), 1, "converged on one leader: {leaders:?}");
    let term = net.core(leaders[0]).term();
    assert!(term > Term(7), "the cluster moved past S3's term: {term:?}");
    for id in net.ids() {
        assert_eq!(net.core(id).term(), term, "node {id}");
        assert_eq!(net.log_terms(id), vec![1, 1, 2, 3, term.0], "node {id}");
    }
}

#[test]
fn leader_crash_before_persisting_its_own_entry_loses_nothing_the_followers_stored() {
    // Without CheckQuorum there is no lease, so the restarted S1 may campaign at once: what
    // stops it must be its log alone.
    let config = RaftConfig {
        check_quorum: false,
        ..test_config()
    };
    let mut net = Net::new(3, config);
    net.elect(S1);
    net.heartbeat(S1);

    // S1's appends leave before its own copy is durable (dissertation §10.2.1); S1 crashes
    // before persisting, and the followers' acknowledgements die with it.
    net.stall(S1);
    let proposal = propose(&mut net, S1, "x");
    let ready = net.take_ready(S1);
    net.send(ready.messages.clone());
    drop(ready);
    net.cut(S2, S1);
    net.cut(S3, S1);
    net.deliver_all();
    net.restart(S1);
    assert_eq!(
        net.core(S1).last_index(),
        LogIndex(1),
        "x never reached S1's disk"
    );
    for id in [S2, S3] {
        assert_eq!(last_id(&net, id), proposal, "node {id} stored x");
    }

    // S1 cannot win with its shorter log...
    net.heal();
    net.clear_traces();
    net.campaign(S1);
    net.deliver_all();
    assert_eq!(pre_votes_received(&net, S1), vec![(S2, false), (S3, false)]);
    assert_eq!(net.core(S1).role(), Role::Follower);
    assert_eq!(net.core(S1).term(), Term(1));

    // ...S2 can, and commits x with its no-op.
    net.elect(S2);
    net.heartbeat(S2);
    for id in net.ids() {
        assert_eq!(net.log_terms(id), vec![1, 1, 2], "node {id}");
        assert_eq!(
            net.core(id).entry(proposal.index).map(Entry::id),
            Some(proposal),
            "node {id}"
        );
        assert_eq!(net.core(id).commit_index(), LogIndex(3), "node {id}");
    }
}

// ---- Snapshots ----------------------------------------------------------------------------

/// The runtime decodes a received snapshot only if `Core::snapshot_needs_data` says the core
/// will install it: the answer must be what stepping the `InstallSnapshot` then does.
#[test]
fn snapshot_needs_data_answers_what_stepping_the_install_snapshot_does() {
    // A follower of term 2 whose log is 1@1 2@1 3@2 4@2, committed through 2.
    let follower = || {
        let restored = InitialState {
            snapshot: Default::default(),
            hard_state: HardState {
                term: Term(2),
                vote: Some(S1),
                commit: LogIndex(2),
            },
            entries: [(1, 1), (1, 2), (2, 3), (2, 4)]
                .into_iter()
                .map(|(term, index)| prepared_entry(term, index))
                .collect(),
        };
        rrmq::raft::Core::new(
            S2,
            rrmq::raft::Membership::from_voters([S1, S2, S3]),
            test_config(),
            restored,
            7,
        )
    };
    let cases = [
        ((1, 2), false, "covered by the commit index"),
        ((2, 3), false, "the log holds its last entry"),
        (
            (2, 4),
            false,
            "the log holds its last entry, the log's last",
        ),
        ((1, 3), true, "the log holds another entry at its index"),
        ((3, 4), true, "a newer term at the log's last index"),
        ((2, 9), true, "beyond the log"),
    ];
    for (number, ((term, index), needs_data, why)) in cases.into_iter().enumerate() {
        let mut core = follower();
        let snapshot = SnapshotMeta::at(EntryId::new(Term(term), LogIndex(index)));
        assert_eq!(
            core.snapshot_needs_data(&snapshot),
            needs_data,
            "case {number}: {why}"
        );
        core.step(Message {
            from: S1,
            to: S2,
            term: Term(term.max(2)),
            body: MessageBody::InstallSnapshot { snapshot },
        });
        let ready = core.ready();
        assert_eq!(
            ready.snapshot.is_some(),
            needs_data,
            "case {number}: {why}: the Ready installs the snapshot iff its data was needed"
        );
        assert!(
            core.commit_index() >= LogIndex(index),
            "case {number}: {why}: committed through the snapshot"
        );
    }
}

// ---- Terms never overflow ---------------------------------------------------------------------

/// A term beyond the bound, and the two forged-frame cases issue #13 names.
const ABSURD_TERMS: [u64; 2] = [u64::MAX, Term::MAX_SANE.0 + 1];

/// What a forger might send at an absurd term, claiming to be `from`.
fn forged_bodies(last_log: EntryId) -> Vec<(&'static str, MessageBody)> {
    vec![
        (
            "heartbeat",
            MessageBody::Heartbeat {
                commit: LogIndex(0),
                read_round: 0,
            },
        ),
        (
            "vote request",
            MessageBody::RequestVote {
                pre_vote: false,
                last_log,
                leadership_transfer: true,
            },
        ),
        (
            "pre-vote request",
            MessageBody::RequestVote {
                pre_vote: true,
                last_log,
                leadership_transfer: false,
            },
        ),
        (
            "append",
            MessageBody::AppendEntries {
                prev: last_log,
                entries: Vec::new(),
                commit: LogIndex(0),
            },
        ),
        ("timeout now", MessageBody::TimeoutNow),
        (
            "install snapshot",
            MessageBody::InstallSnapshot {
                snapshot: SnapshotMeta::at(last_log),
            },
        ),
        (
            "vote response",
            MessageBody::RequestVoteResponse {
                pre_vote: false,
                granted: true,
            },
        ),
    ]
}

/// Cuts off `old_leader`, ticks the others until one of them leads, and commits a
/// proposal through it. Returns the new leader.
fn elect_another_leader_and_commit(net: &mut Net, old_leader: NodeId, what: &str) -> NodeId {
    net.isolate(old_leader);
    let others: Vec<NodeId> = net
        .ids()
        .into_iter()
        .filter(|&id| id != old_leader)
        .collect();
    let mut new_leader = None;
    for _ in 0..20 * net.config().election_ticks_max {
        for &id in &others {
            net.tick(id);
        }
        net.deliver_all();
        new_leader = others
            .iter()
            .copied()
            .find(|&id| net.core(id).role() == Role::Leader);
        if new_leader.is_some() {
            break;
        }
    }
    let Some(new_leader) = new_leader else {
        panic!("{what}: no new leader among {others:?}");
    };
    let entry = propose(net, new_leader, "after the forgery");
    net.deliver_all();
    net.heartbeat(new_leader);
    for &id in &others {
        assert!(
            net.core(id).commit_index() >= entry.index,
            "{what}: node {id} committed {entry}"
        );
    }
    new_leader
}

#[test]
fn a_message_at_an_absurd_term_is_dropped_unread_and_the_cluster_still_elects_and_commits() {
    for absurd in ABSURD_TERMS {
        for (kind, body) in forged_bodies(EntryId::new(Term(1), LogIndex(1))) {
            let what = format!("{kind} at term {absurd}");
            let mut net = Net::new(3, test_config());
            net.elect(S1);
            propose(&mut net, S1, "before the forgery");
            net.deliver_all();
            net.heartbeat(S1);
            let term = net.core(S3).term();
            let hard_state_before = net.node(S3).storage.hard_state;

            // A forger reaches S3's peer port, posing as S1 (as the real leader or a
            // candidate), and also hits the leader itself, posing as S2.
            let forged = [
                Message {
                    from: S1,
                    to: S3,
                    term: Term(absurd),
                    body: body.clone(),
                },
                Message {
                    from: S2,
                    to: S1,
                    term: Term(absurd),
                    body,
                },
            ];
            for message in forged {
                let to = message.to;
                assert!(
                    !net.core(to).accepts_terms(&message),
                    "{what}: node {to} says it would drop it"
                );
                net.deliver(message);
            }
            for (id, role) in [(S3, Role::Follower), (S1, Role::Leader)] {
                let core = net.core(id);
                assert_eq!(core.term(), term, "{what}: node {id}'s term unchanged");
                assert_eq!(core.role(), role, "{what}: node {id}'s role unchanged");
                assert!(!core.has_ready(), "{what}: node {id} has nothing to do");
                assert_eq!(core.term_refusals().absurd_term, 1, "{what}: node {id}");
                assert_eq!(
                    core.term_refusals().last_dropped.map(|(_, term)| term),
                    Some(Term(absurd)),
                    "{what}: node {id}"
                );
            }
            net.deliver_all();
            assert_eq!(
                net.node(S3).storage.hard_state,
                hard_state_before,
                "{what}: nothing persisted"
            );
            for id in net.ids() {
                assert!(
                    net.core(id).term().is_sane(),
                    "{what}: node {id} term {}",
                    net.core(id).term()
                );
            }
            elect_another_leader_and_commit(&mut net, S1, &what);
        }
    }
}

#[test]
fn a_message_with_a_term_or_index_inside_no_honest_node_sends_is_dropped_unread() {
    let mut net = Net::new(3, test_config());
    net.elect(S1);
    net.heartbeat(S1);
    let term = net.core(S1).term();
    let last = last_id(&net, S3);
    let entry = |entry_term: u64, index: u64| Entry {
        term: Term(entry_term),
        ..prepared_entry(entry_term, index)
    };
    let cases = [
        (
            "an entry beyond the message's term",
            last,
            vec![entry(u64::MAX, last.index.0 + 1)],
        ),
        (
            "prev beyond the message's term",
            EntryId::new(Term(u64::MAX), last.index),
            Vec::new(),
        ),
        (
            "entries that do not follow prev",
            last,
            vec![entry(term.0, last.index.0 + 2)],
        ),
        (
            "entry terms that decrease",
            last,
            vec![
                entry(term.0, last.index.0 + 1),
                entry(term.0 - 1, last.index.0 + 2),
            ],
        ),
        (
            "an index that would overflow",
            EntryId::new(term, LogIndex(u64::MAX)),
            vec![entry(term.0, 0)],
        ),
    ];
    for (number, (why, prev, entries)) in cases.into_iter().enumerate() {
        let append = Message {
            from: S1,
            to: S3,
            term,
            body: MessageBody::AppendEntries {
                prev,
                entries,
                commit: LogIndex(0),
            },
        };
        assert!(!net.core(S3).accepts_terms(&append), "case {number}: {why}");
        net.deliver(append);
        let core = net.core(S3);
        assert_eq!(
            core.last_index(),
            last.index,
            "case {number}: {why}: nothing appended"
        );
        assert!(!core.has_ready(), "case {number}: {why}: nothing to do");
        assert_eq!(
            core.term_refusals().malformed,
            number as u64 + 1,
            "case {number}: {why}: counted"
        );
    }
    // A forged vote request whose last entry claims a term beyond the request's own (to win
    // every up-to-date check) is dropped too.
    net.deliver(Message {
        from: S2,
        to: S3,
        term: Term(term.0 + 1),
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_log: EntryId::new(Term(u64::MAX), LogIndex(1)),
            leadership_transfer: true,
        },
    });
    assert_eq!(net.core(S3).term(), term, "vote request dropped");
    assert_eq!(net.core(S3).term_refusals().malformed, 6);
    // A forged rejection claiming a log that ends at u64::MAX: the leader's retry index
    // (`last_index + 1`) would overflow.
    let rejection = Message {
        from: S3,
        to: S1,
        term,
        body: MessageBody::AppendEntriesResponse(AppendResult::Rejected {
            prev_index: last.index,
            hint: RejectHint::LogTooShort {
                last_index: LogIndex(u64::MAX),
            },
        }),
    };
    assert!(!net.core(S1).accepts_terms(&rejection));
    net.deliver(rejection);
    assert_eq!(
        net.core(S1).term_refusals().malformed,
        1,
        "leader dropped it"
    );
    assert_eq!(net.core(S1).role(), Role::Leader);
    elect_another_leader_and_commit(&mut net, S1, "after malformed appends");
}

#[test]
fn a_cluster_one_term_below_the_bound_still_runs_one_election_and_commits() {
    let below = Term::MAX_SANE.0 - 1;
    let setup = Setup::log(&[1]).term(below).commit(1);
    let mut net = Net::with_setups(test_config(), vec![setup.clone(), setup.clone(), setup]);
    net.elect(S1);
    assert_eq!(net.core(S1).term(), Term::MAX_SANE, "elected at the bound");
    let entry = propose(&mut net, S1, "at the bound");
    net.deliver_all();
    net.heartbeat(S1);
    for id in net.ids() {
        assert_eq!(net.core(id).term(), Term::MAX_SANE, "node {id}");
        assert!(
            net.core(id).commit_index() >= entry.index,
            "node {id} committed"
        );
    }
}

#[test]
fn a_node_at_the_bound_refuses_to_campaign_instead_of_wrapping() {
    for pre_vote in [true, false] {
        let config = RaftConfig {
            pre_vote,
            ..test_config()
        };
        let setup = Setup::log(&[1]).term(Term::MAX_SANE.0).commit(1);
        let mut net = Net::with_setups(config, vec![setup.clone(), setup.clone(), setup]);
        for _ in 0..5 * net.config().election_ticks_max {
            net.tick_all();
            net.deliver_all();
        }
        // A leader handing over would send TimeoutNow: refused too.
        net.deliver(Message {
            from: S2,
            to: S1,
            term: Term::MAX_SANE,
            body: MessageBody::TimeoutNow,
        });
        net.deliver_all();
        assert!(
            net.delivered()
                .iter()
                .all(|message| !matches!(message.body, MessageBody::RequestVote { .. })),
            "pre_vote {pre_vote}: nobody asked for a vote"
        );
        for id in net.ids() {
            let core = net.core(id);
            assert_eq!(
                core.term(),
                Term::MAX_SANE,
                "pre_vote {pre_vote}: node {id}"
            );
            assert_eq!(
                core.role(),
                Role::Follower,
                "pre_vote {pre_vote}: node {id}"
            );
            assert!(
                core.term_refusals().campaign_refused >= 4,
                "pre_vote {pre_vote}: node {id} refused each election timeout: {:?}",
                core.term_refusals()
            );
        }
    }
}

#[test]
fn a_node_restored_beyond_the_bound_never_campaigns_or_sends_and_the_others_go_on() {
    let mut absurd = Setup::log(&[1]).term(u64::MAX).commit(1);
    absurd = absurd.vote(S3);
    let mut net = Net::with_setups(
        test_config(),
        vec![
            Setup::log(&[1]).commit(1),
            Setup::log(&[1]).commit(1),
            absurd,
        ],
    );
    let mut leader = None;
    for _ in 0..20 * net.config().election_ticks_max {
        net.tick_all();
        net.deliver_all();
        leader = net.leaders().first().copied();
        if leader.is_some() {
            break;
        }
    }
    let Some(leader) = leader else {
        panic!("S1 and S2 elect a leader without S3");
    };
    assert_ne!(leader, S3);
    let entry = propose(&mut net, leader, "without S3");
    net.deliver_all();
    for _ in 0..3 * net.config().election_ticks_max {
        net.tick_all();
        net.deliver_all();
    }
    for id in [S1, S2] {
        assert!(net.core(id).commit_index() >= entry.index, "node {id}");
        assert!(net.core(id).term().is_sane(), "node {id}");
    }
    let s3 = net.core(S3);
    assert_eq!(s3.term(), Term(u64::MAX), "a term never goes back");
    assert_eq!(s3.role(), Role::Follower);
    assert!(s3.term_refusals().campaign_refused > 0);
    assert!(
        net.delivered().iter().all(|message| message.from != S3),
        "S3 sent nothing"
    );
}

// ---- 9. A dropped connection to the leader ---------------------------------------------------
//
// The runtime reports a TCP connection that closed (`Core::peer_connection_lost`): the peer's
// process died. A follower that loses its connection to the leader stops honouring the
// leader's lease and pre-votes within a few heartbeats instead of an election timeout; the
// voters still connected to a live leader keep refusing, so a flap disrupts nothing.

/// Ticks the nodes in `live` and delivers everything, once per tick, until one of them leads
/// or `ticks_max` ticks have passed. Returns the leader and the ticks it took.
fn tick_until_leader(net: &mut Net, live: &[NodeId], ticks_max: u32) -> Option<(NodeId, u32)> {
    net.deliver_all();
    for tick in 0..=ticks_max {
        if let Some(&leader) = net.leaders().iter().find(|id| live.contains(id)) {
            return Some((leader, tick));
        }
        for &id in live {
            net.tick(id);
        }
        net.deliver_all();
    }
    None
}

#[test]
fn a_crashed_leader_reported_by_its_dropped_connections_is_replaced_before_the_election_timeout() {
    struct Case {
        name: &'static str,
        /// The followers whose runtime reports the dropped connection.
        reported_to: &'static [NodeId],
        /// Ticks after the crash by which a new leader must exist; `None`: not before
        /// `election_ticks_min` (the lease and the election timeout hold everyone back).
        elected_within_ticks: Option<u32>,
    }
    let config = test_config();
    let cases = [
        Case {
            name: "both survivors see the drop: the first by id campaigns at once",
            reported_to: &[S2, S3],
            elected_within_ticks: Some(0),
        },
        Case {
            name: "only one survivor sees the drop: the other's lease holds it back",
            reported_to: &[S2],
            elected_within_ticks: None,
        },
        Case {
            name: "nobody is told: the election timeout decides, as before",
            reported_to: &[],
            elected_within_ticks: None,
        },
    ];
    for case in cases {
        let name = case.name;
        let mut net = Net::new(3, config.clone());
        net.elect(S1);
        net.heartbeat(S1);
        let term = net.core(S1).term();
        // S1's process dies: nothing from or to it arrives any more, and it never ticks.
        net.isolate(S1);
        for &id in case.reported_to {
            net.core_mut(id).peer_connection_lost(S1);
        }
        let elected = tick_until_leader(&mut net, &[S2, S3], 10 * config.election_ticks_max);
        let Some((leader, ticks)) = elected else {
            panic!("{name}: no new leader");
        };
        match case.elected_within_ticks {
            Some(within) => assert!(
                ticks <= within,
                "{name}: leader {leader} after {ticks} ticks, expected within {within}"
            ),
            None => assert!(
                ticks >= config.election_ticks_min,
                "{name}: leader {leader} after {ticks} ticks, before the election timeout"
            ),
        }
        if case.reported_to.len() == 2 {
            // One election, not a split vote: the survivors do not campaign at once.
            assert_eq!(net.core(leader).term(), Term(term.0 + 1), "{name}: term");
        }
        let entry = propose(&mut net, leader, "after the crash");
        net.deliver_all();
        net.heartbeat(leader);
        for id in [S2, S3] {
            assert!(
                net.core(id).commit_index() >= entry.index,
                "{name}: node {id} committed the new leader's entry"
            );
        }
    }
}

#[test]
fn a_follower_whose_connection_to_a_live_leader_flaps_does_not_disrupt_it() {
    struct Case {
        name: &'static str,
        size: u64,
        /// Followers whose connection to leader S1 drops (and comes back) while S1 lives.
        flapping: &'static [NodeId],
    }
    let cases = [
        Case {
            name: "the first follower by id (pre-votes at once)",
            size: 3,
            flapping: &[S2],
        },
        Case {
            name: "the second follower (pre-votes a heartbeat later, unless one comes first)",
            size: 3,
            flapping: &[S3],
        },
        Case {
            name: "two of five followers: they grant each other, but are no majority",
            size: 5,
            flapping: &[S2, S3],
        },
    ];
    for case in cases {
        let name = case.name;
        let mut net = Net::new(case.size, test_config());
        net.elect(S1);
        net.heartbeat(S1);
        let term = net.core(S1).term();
        let election_ticks_max = net.config().election_ticks_max;
        for round in 0..3 {
            for &id in case.flapping {
                net.core_mut(id).peer_connection_lost(S1);
            }
            for tick in 0..2 * election_ticks_max {
                if tick == election_ticks_max {
                    for &id in case.flapping {
                        net.core_mut(id).peer_connection_restored(S1);
                    }
                }
                net.tick_all();
                net.deliver_all();
                assert_eq!(
                    net.leaders(),
                    vec![S1],
                    "{name}: round {round} tick {tick}: S1 still the only leader"
                );
                for id in net.ids() {
                    assert_eq!(
                        net.core(id).term(),
                        term,
                        "{name}: round {round} tick {tick}: node {id}'s term"
                    );
                }
            }
        }
        for id in net.ids() {
            assert_eq!(
                net.core(id).leader(),
                Some(S1),
                "{name}: node {id} follows S1"
            );
        }
        let granted_to_flapping = net.delivered().iter().any(|message| {
            case.flapping.contains(&message.to)
                && !case.flapping.contains(&message.from)
                && matches!(
                    message.body,
                    MessageBody::RequestVoteResponse { granted: true, .. }
                )
        });
        assert!(
            !granted_to_flapping,
            "{name}: no voter still connected to S1 granted anything"
        );
        let pre_voted = net.delivered().iter().any(|message| {
            case.flapping.contains(&message.from)
                && matches!(
                    message.body,
                    MessageBody::RequestVote { pre_vote: true, .. }
                )
        });
        assert!(pre_voted, "{name}: the flapping follower did pre-vote");
        propose(&mut net, S1, "still leading");
    }
}

#[test]
fn a_dropped_connection_lifts_the_lease_of_that_leader_only_until_it_comes_back() {
    let pre_vote_from_s2 = |net: &Net| Message {
        from: S2,
        to: S3,
        term: Term(net.core(S3).term().0 + 1),
        body: MessageBody::RequestVote {
            pre_vote: true,
            last_log: last_id(net, S2),
            leadership_transfer: false,
        },
    };
    let answers = |net: &mut Net| -> Vec<bool> {
        all_messages(&net.process(S3))
            .iter()
            .filter_map(|message| match message.body {
                MessageBody::RequestVoteResponse {
                    pre_vote: true,
                    granted,
                } if message.to == S2 => Some(granted),
                _ => None,
            })
            .collect()
    };
    let mut net = Net::new(3, test_config());
    net.elect(S1);
    net.heartbeat(S1); // S3 heard from S1 just now: inside the lease.

    let request = pre_vote_from_s2(&net);
    net.deliver(request);
    assert_eq!(
        answers(&mut net),
        Vec::<bool>::new(),
        "in the lease: ignored"
    );

    // S3 comes second among S2 and S3, so it waits a heartbeat before campaigning itself
    // and is still S1's follower while the request arrives.
    net.core_mut(S3).peer_connection_lost(S1);
    assert_eq!(net.core(S3).role(), Role::Follower);
    assert_eq!(net.core(S3).leader(), Some(S1));
    let request = pre_vote_from_s2(&net);
    net.deliver(request);
    assert_eq!(answers(&mut net), vec![true], "connection dropped: granted");

    net.core_mut(S3).peer_connection_restored(S1);
    let request = pre_vote_from_s2(&net);
    net.deliver(request);
    assert_eq!(
        answers(&mut net),
        Vec::<bool>::new(),
        "connection back: the lease holds again"
    );

    // A drop of a connection to a node that is not the leader changes nothing.
    net.core_mut(S3).peer_connection_lost(S2);
    let request = pre_vote_from_s2(&net);
    net.deliver(request);
    assert_eq!(answers(&mut net), Vec::<bool>::new(), "S1's lease holds");
    assert_eq!(net.core(S3).role(), Role::Follower);
}

#[test]
fn without_pre_vote_a_dropped_connection_starts_no_early_election() {
    let mut net = Net::new(
        3,
        RaftConfig {
            pre_vote: false,
            ..test_config()
        },
    );
    net.elect(S1);
    net.heartbeat(S1);
    let term = net.core(S1).term();
    net.core_mut(S2).peer_connection_lost(S1);
    net.core_mut(S3).peer_connection_lost(S1);
    for _ in 0..2 * net.config().heartbeat_ticks {
        net.tick(S2);
        net.tick(S3);
    }
    net.deliver_all();
    for id in [S2, S3] {
        assert_eq!(net.core(id).term(), term, "node {id}: no early term");
        assert_eq!(net.core(id).role(), Role::Follower, "node {id}");
    }
}

#[test]
fn a_survivor_told_late_still_elects_within_a_heartbeat_or_so_of_hearing() {
    // S2 hears of S1's death first and pre-votes at once, but S3, not told yet, still
    // honours S1's lease and ignores it. Once S3 is told, it pre-votes a heartbeat later
    // (it comes second by id), and S2, waiting as a pre-candidate, grants it.
    let config = test_config();
    let mut net = Net::new(3, config.clone());
    net.elect(S1);
    net.heartbeat(S1);
    let term = net.core(S1).term();
    net.isolate(S1);
    net.core_mut(S2).peer_connection_lost(S1);
    net.deliver_all();
    assert_eq!(net.core(S2).role(), Role::PreCandidate);
    assert_eq!(net.core(S3).leader(), Some(S1), "S3 ignored the pre-vote");
    assert_eq!(pre_votes_received(&net, S2), vec![], "nobody answered S2");

    net.core_mut(S3).peer_connection_lost(S1);
    let elected = tick_until_leader(&mut net, &[S2, S3], config.election_ticks_max);
    let Some((leader, ticks)) = elected else {
        panic!("no new leader");
    };
    assert_eq!(leader, S3);
    assert!(
        ticks <= config.heartbeat_ticks,
        "elected after {ticks} ticks, expected within {}",
        config.heartbeat_ticks
    );
    assert_eq!(net.core(S3).term(), Term(term.0 + 1), "one election");
}
