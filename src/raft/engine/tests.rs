//! Smoke tests of the whole core on a perfect network. The classic traps are pinned in
//! `tests/raft_scenarios.rs`, and `tests/simulation.rs` explores failure schedules.
use super::*;

struct Cluster {
    cores: Vec<Core>,
    applied: Vec<Vec<Entry>>,
    /// Messages to or from a node marked down are dropped.
    down: Vec<bool>,
    installed_snapshots: Vec<Vec<SnapshotMeta>>,
}

impl Cluster {
    fn new(size: u64) -> Cluster {
        let voters: Vec<NodeId> = (0..size).map(NodeId).collect();
        let cores = voters
            .iter()
            .map(|&id| {
                Core::new(
                    id,
                    Membership::from_voters(voters.clone()),
                    RaftConfig::default(),
                    InitialState::default(),
                    id.0 + 1,
                )
            })
            .collect();
        Cluster {
            cores,
            applied: vec![Vec::new(); size as usize],
            down: vec![false; size as usize],
            installed_snapshots: vec![Vec::new(); size as usize],
        }
    }

    /// Processes every node's Ready and delivers every message until quiet.
    fn settle(&mut self) {
        for _ in 0..1000 {
            let mut inbox = Vec::new();
            for (position, core) in self.cores.iter_mut().enumerate() {
                while core.has_ready() {
                    let ready = core.ready();
                    if let Some(snapshot) = ready.snapshot {
                        self.installed_snapshots[position].push(snapshot);
                    }
                    inbox.extend(ready.messages);
                    inbox.extend(ready.messages_after_persist);
                    if let Some(last) = ready.entries.last() {
                        core.on_persisted(last.id());
                    }
                    self.applied[position].extend(ready.committed);
                }
                core.check_invariants();
            }
            inbox.retain(|message| {
                !self.down[message.to.0 as usize] && !self.down[message.from.0 as usize]
            });
            if inbox.is_empty() {
                return;
            }
            for message in inbox {
                self.cores[message.to.0 as usize].step(message);
            }
        }
        panic!("cluster did not settle");
    }

    /// `settle`, with every message `drop` matches lost.
    fn settle_dropping(&mut self, drop: impl Fn(&Message) -> bool) {
        for _ in 0..1000 {
            let mut inbox = Vec::new();
            for core in self.cores.iter_mut() {
                while core.has_ready() {
                    let ready = core.ready();
                    inbox.extend(ready.messages);
                    inbox.extend(ready.messages_after_persist);
                    if let Some(last) = ready.entries.last() {
                        core.on_persisted(last.id());
                    }
                }
                core.check_invariants();
            }
            inbox.retain(|message| {
                !drop(message)
                    && !self.down[message.to.0 as usize]
                    && !self.down[message.from.0 as usize]
            });
            if inbox.is_empty() {
                return;
            }
            for message in inbox {
                self.cores[message.to.0 as usize].step(message);
            }
        }
        panic!("cluster did not settle");
    }

    fn tick_until_leader(&mut self) -> usize {
        for _ in 0..1000 {
            for core in &mut self.cores {
                core.tick();
            }
            self.settle();
            let leaders: Vec<usize> = (0..self.cores.len())
                .filter(|&position| self.cores[position].role() == Role::Leader)
                .collect();
            if leaders.len() == 1 {
                return leaders[0];
            }
        }
        panic!("no leader elected");
    }
}

#[test]
fn three_nodes_elect_one_leader_and_replicate_a_proposal_everywhere() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.tick_until_leader();
    let id = cluster.cores[leader]
        .propose(Bytes::from_static(b"hello"))
        .expect("leader accepts proposals");
    cluster.settle();
    // Followers learn the commit index with the next heartbeat.
    for _ in 0..RaftConfig::default().heartbeat_ticks {
        for core in &mut cluster.cores {
            core.tick();
        }
        cluster.settle();
    }
    for (position, applied) in cluster.applied.iter().enumerate() {
        let last = applied.last().map(Entry::id);
        assert_eq!(last, Some(id), "node {position} applied up to the proposal");
        assert_eq!(
            applied.len(),
            2,
            "node {position}: the leader's no-op and the command"
        );
    }
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_through_a_snapshot() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.tick_until_leader();
    let lagging = (leader + 1) % 3;
    cluster.down[lagging] = true;
    for number in 0..10u8 {
        cluster.cores[leader]
            .propose(Bytes::from(vec![number]))
            .expect("leader accepts proposals");
        cluster.settle();
    }
    let applied = cluster.applied[leader]
        .last()
        .map(Entry::id)
        .expect("applied");
    let snapshot = SnapshotMeta::at(applied);
    cluster.cores[leader].on_snapshot_saved(snapshot.clone(), applied.index);
    assert_eq!(cluster.cores[leader].entry(LogIndex(1)), None, "compacted");

    cluster.down[lagging] = false;
    for _ in 0..3 * RaftConfig::default().heartbeat_ticks {
        for core in &mut cluster.cores {
            core.tick();
        }
        cluster.settle();
    }
    let installed: Vec<EntryId> = cluster.installed_snapshots[lagging]
        .iter()
        .map(|meta| meta.last)
        .collect();
    assert_eq!(installed, vec![snapshot.last]);
    assert_eq!(
        cluster.installed_snapshots[lagging][0].membership,
        *cluster.cores[leader].membership(),
        "the snapshot carries the membership"
    );
    let proposal = cluster.cores[leader]
        .propose(Bytes::from_static(b"after"))
        .expect("leader accepts proposals");
    cluster.settle();
    assert_eq!(
        cluster.cores[lagging].entry(proposal.index).map(Entry::id),
        Some(proposal),
        "replication continues after the snapshot"
    );
    assert_eq!(
        cluster.cores[lagging].status().snapshot_index,
        applied.index
    );
}

#[test]
fn a_follower_that_lost_its_log_is_replicated_to_again() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.tick_until_leader();
    for number in 0..5u8 {
        cluster.cores[leader]
            .propose(Bytes::from(vec![number]))
            .expect("leader accepts proposals");
        cluster.settle();
    }
    // The follower's data dir is wiped while the leader keeps leading: it restarts empty.
    let wiped = (leader + 1) % 3;
    let voters: Vec<NodeId> = (0..3).map(NodeId).collect();
    cluster.cores[wiped] = Core::new(
        NodeId(wiped as u64),
        Membership::from_voters(voters),
        RaftConfig::default(),
        InitialState::default(),
        99,
    );
    cluster.applied[wiped].clear();
    let proposal = cluster.cores[leader]
        .propose(Bytes::from_static(b"after"))
        .expect("leader accepts proposals");
    cluster.settle();
    for _ in 0..2 * RaftConfig::default().heartbeat_ticks {
        for core in &mut cluster.cores {
            core.tick();
        }
        cluster.settle();
    }
    assert_eq!(cluster.cores[leader].role(), Role::Leader, "no election");
    assert_eq!(
        cluster.applied[wiped].last().map(Entry::id),
        Some(proposal),
        "the wiped follower applied everything again"
    );
    assert_eq!(cluster.applied[wiped], cluster.applied[leader]);
}

#[test]
fn a_rejoining_node_neither_votes_nor_campaigns_until_caught_up() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.tick_until_leader();
    for number in 0..5u8 {
        cluster.cores[leader]
            .propose(Bytes::from(vec![number]))
            .expect("leader accepts proposals");
        cluster.settle();
    }
    let wiped = (leader + 1) % 3;
    let voters: Vec<NodeId> = (0..3).map(NodeId).collect();
    let mut rejoining = Core::new(
        NodeId(wiped as u64),
        Membership::from_voters(voters),
        RaftConfig::default(),
        InitialState::default(),
        7,
    );
    rejoining.abstain_until_caught_up();
    cluster.cores[wiped] = rejoining;
    cluster.applied[wiped].clear();
    cluster.down[wiped] = true;
    // A candidate with an empty log asks for its vote: an empty log would grant it.
    let stale_candidate = (leader + 2) % 3;
    for pre_vote in [true, false] {
        cluster.cores[wiped].step(Message {
            from: NodeId(stale_candidate as u64),
            to: NodeId(wiped as u64),
            term: Term(50),
            body: MessageBody::RequestVote {
                pre_vote,
                last_log: EntryId::default(),
                leadership_transfer: false,
            },
        });
        let ready = cluster.cores[wiped].ready();
        let granted = ready.messages_after_persist.iter().any(|message| {
            matches!(
                message.body,
                MessageBody::RequestVoteResponse { granted: true, .. }
            )
        });
        assert!(
            !granted,
            "pre_vote {pre_vote}: a rejoining node granted a vote"
        );
    }
    // Cut off, it never campaigns however long it waits.
    for _ in 0..5 * RaftConfig::default().election_ticks_max {
        cluster.cores[wiped].tick();
        let _ = cluster.cores[wiped].ready();
        assert_eq!(cluster.cores[wiped].role(), Role::Follower, "campaigned");
    }
    assert!(!cluster.cores[wiped].is_voting());

    // The term-50 vote request raised the rejoining node's term, so the cluster first
    // has to elect a leader past it (without this node's vote).
    cluster.down[wiped] = false;
    for _ in 0..5 * RaftConfig::default().election_ticks_max {
        for core in &mut cluster.cores {
            core.tick();
        }
        cluster.settle();
    }
    let states: Vec<_> = cluster
        .cores
        .iter()
        .map(|core| (core.role(), core.term(), core.commit_index(), core.catch_up))
        .collect();
    assert!(
        cluster.cores[wiped].is_voting(),
        "caught up and voting again: {states:?}"
    );
    let now_leading = (0..3)
        .find(|&position| cluster.cores[position].role() == Role::Leader)
        .expect("a leader");
    assert_eq!(cluster.applied[wiped], cluster.applied[now_leading]);
}

#[test]
fn single_node_leads_and_commits_alone() {
    let mut cluster = Cluster::new(1);
    cluster.tick_until_leader();
    cluster.cores[0]
        .read_index(7)
        .expect("leader accepts reads");
    cluster.cores[0]
        .propose(Bytes::from_static(b"x"))
        .expect("leader accepts proposals");
    let ready = cluster.cores[0].ready();
    assert_eq!(
        ready.read_states,
        vec![ReadState {
            read_id: 7,
            index: LogIndex(1)
        }]
    );
    let last = ready.entries.last().map(Entry::id).expect("the proposal");
    assert!(ready.committed.is_empty(), "not durable anywhere yet");
    cluster.cores[0].on_persisted(last);
    cluster.settle();
    assert_eq!(cluster.applied[0].len(), 2);
}

#[test]
fn the_commit_waits_for_the_leaders_own_copy_only_once_a_follower_holds_it() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.tick_until_leader();
    let follower = (leader + 1) % 3;
    assert!(
        !cluster.cores[leader].commit_waits_for_own_copy(),
        "all durable"
    );
    cluster.cores[leader]
        .propose(Bytes::from_static(b"x"))
        .expect("leader accepts proposals");
    let ready = cluster.cores[leader].ready();
    let last = ready.entries.last().map(Entry::id).expect("the proposal");
    assert!(
        !cluster.cores[leader].commit_waits_for_own_copy(),
        "no follower holds it yet: an ack comes first either way"
    );
    // One follower takes the append and acknowledges it.
    let append = ready
        .messages
        .into_iter()
        .find(|message| message.to.0 as usize == follower)
        .expect("an append to the follower");
    cluster.cores[follower].step(append);
    let follower_ready = cluster.cores[follower].ready();
    let ack = follower_ready
        .messages_after_persist
        .into_iter()
        .next()
        .expect("an ack");
    cluster.cores[leader].step(ack);
    assert!(
        cluster.cores[leader].commit_waits_for_own_copy(),
        "a majority but for the leader's own sync"
    );
    assert!(
        !cluster.cores[follower].commit_waits_for_own_copy(),
        "not a leader"
    );
    cluster.cores[leader].on_persisted(last);
    assert!(!cluster.cores[leader].commit_waits_for_own_copy());
    assert_eq!(cluster.cores[leader].commit_index(), last.index);
    // A single node waits for itself alone.
    let mut single = Cluster::new(1);
    single.tick_until_leader();
    single.cores[0]
        .propose(Bytes::from_static(b"y"))
        .expect("leader accepts proposals");
    let _ = single.cores[0].ready();
    assert!(single.cores[0].commit_waits_for_own_copy());
}

#[test]
fn followers_refuse_proposals_and_name_the_leader() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.tick_until_leader();
    let follower = (leader + 1) % 3;
    let refused = cluster.cores[follower].propose(Bytes::from_static(b"x"));
    assert_eq!(
        refused,
        Err(ProposeError::NotLeader {
            leader: Some(NodeId(leader as u64))
        })
    );
}

#[test]
fn a_read_is_confirmed_by_a_heartbeat_round() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.tick_until_leader();
    cluster.settle();
    cluster.cores[leader]
        .read_index(42)
        .expect("leader accepts reads");
    let ready = cluster.cores[leader].ready();
    assert!(
        ready.read_states.is_empty(),
        "not confirmed before the round"
    );
    let heartbeats = ready
        .messages
        .iter()
        .filter(|message| matches!(message.body, MessageBody::Heartbeat { .. }))
        .count();
    assert_eq!(heartbeats, 2, "one heartbeat per follower starts the round");
    for message in ready.messages {
        cluster.cores[message.to.0 as usize].step(message);
    }
    let mut confirmed = Vec::new();
    for _ in 0..10 {
        let mut inbox = Vec::new();
        for core in &mut cluster.cores {
            while core.has_ready() {
                let ready = core.ready();
                confirmed.extend(ready.read_states);
                inbox.extend(ready.messages);
                inbox.extend(ready.messages_after_persist);
                if let Some(last) = ready.entries.last() {
                    core.on_persisted(last.id());
                }
            }
        }
        for message in inbox {
            cluster.cores[message.to.0 as usize].step(message);
        }
    }
    assert_eq!(confirmed.len(), 1);
    assert_eq!(confirmed[0].read_id, 42);
    assert_eq!(confirmed[0].index, cluster.cores[leader].commit_index());
}

// ---- Membership changes ------------------------------------------------------------------

impl Cluster {
    /// `voters` voters (ids 0..voters) and `joining` more nodes started with a membership
    /// that does not hold them (`--join`).
    fn with_joining(voters: u64, joining: u64) -> Cluster {
        let mut cluster = Cluster::new(voters + joining);
        let initial = Membership::from_voters((0..voters).map(NodeId));
        for id in 0..voters + joining {
            cluster.cores[id as usize] = Core::new(
                NodeId(id),
                initial.clone(),
                RaftConfig::default(),
                InitialState::default(),
                id + 1,
            );
        }
        cluster
    }

    fn ticks(&mut self, count: u32) {
        for _ in 0..count {
            for core in &mut self.cores {
                core.tick();
            }
            self.settle();
        }
    }
}

#[test]
fn a_new_leader_that_has_not_committed_in_its_term_is_not_ready_rather_than_busy() {
    let mut cluster = Cluster::with_joining(3, 1);
    let old = cluster.tick_until_leader();
    // A change the old leader commits; the followers hold it but hear of the commit only
    // with the next heartbeat, which never comes.
    let next = cluster.cores[old]
        .membership()
        .with_learner(NodeId(3), Bytes::from_static(b"addr"));
    cluster.cores[old]
        .propose_membership(next)
        .expect("the change is accepted");
    cluster.settle();
    assert!(!cluster.cores[old].change_in_progress());
    let followers: Vec<usize> = (0..3).filter(|&position| position != old).collect();
    assert!(followers
        .iter()
        .all(|&position| cluster.cores[position].change_in_progress()));
    // The old leader goes; a follower wins, but no ack reaches it, so nothing of its term
    // commits.
    cluster.down[old] = true;
    let mut new = None;
    for _ in 0..1000 {
        for &position in &followers {
            cluster.cores[position].tick();
        }
        cluster.settle_dropping(|message| {
            matches!(message.body, MessageBody::AppendEntriesResponse(_))
        });
        new = followers
            .iter()
            .copied()
            .find(|&position| cluster.cores[position].role() == Role::Leader);
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("a follower leads");
    let promote = cluster.cores[new].membership().with_role(NodeId(3), true);
    assert_eq!(
        cluster.cores[new].propose_membership(promote),
        Err(ProposeError::LeaderNotReady),
        "its commit index lags the committed change: not ready, not in progress"
    );
    // Once its acks flow, its no-op commits, and with it the earlier change.
    cluster.ticks(RaftConfig::default().heartbeat_ticks);
    assert!(!cluster.cores[new].change_in_progress());
}

fn add_learner(cluster: &mut Cluster, leader: usize, id: u64) -> EntryId {
    let next = cluster.cores[leader]
        .membership()
        .with_learner(NodeId(id), Bytes::from_static(b"addr"));
    let entry = cluster.cores[leader]
        .propose_membership(next)
        .expect("the change is accepted");
    cluster.settle();
    cluster.ticks(RaftConfig::default().heartbeat_ticks);
    entry
}

#[test]
fn a_change_waits_for_an_entry_of_the_leaders_term_and_one_change_at_a_time() {
    let mut cluster = Cluster::with_joining(1, 2);
    // A lone voter becomes leader on its own; its noop is not yet durable, so not committed.
    for _ in 0..200 {
        cluster.cores[0].tick();
        if cluster.cores[0].role() == Role::Leader {
            break;
        }
    }
    assert_eq!(cluster.cores[0].role(), Role::Leader);
    let next = cluster.cores[0]
        .membership()
        .with_learner(NodeId(1), Bytes::new());
    assert_eq!(
        cluster.cores[0].propose_membership(next.clone()),
        Err(ProposeError::LeaderNotReady)
    );
    cluster.settle();
    cluster.cores[0]
        .propose_membership(next.clone())
        .expect("accepted once the noop committed");
    // Until the learner's entry commits, no other change.
    let other = next.with_learner(NodeId(2), Bytes::new());
    assert_eq!(
        cluster.cores[0].propose_membership(other.clone()),
        Err(ProposeError::ChangeInProgress)
    );
    cluster.settle();
    cluster.cores[0]
        .propose_membership(other)
        .expect("accepted once the first change committed");
    // Two steps at once, a voter added directly, no voter left: refused.
    cluster.settle();
    let current = cluster.cores[0].membership().clone();
    let two_steps = current
        .with_role(NodeId(1), true)
        .with_role(NodeId(2), true);
    assert!(matches!(
        cluster.cores[0].propose_membership(two_steps),
        Err(ProposeError::InvalidChange(_))
    ));
    let none_left = Membership::from_voters([NodeId(0)]).with_role(NodeId(0), false);
    assert!(matches!(
        cluster.cores[0].propose_membership(none_left),
        Err(ProposeError::InvalidChange(_))
    ));
}

#[test]
fn a_learner_is_replicated_to_but_never_counted_and_never_campaigns() {
    let mut cluster = Cluster::with_joining(3, 1);
    let leader = cluster.tick_until_leader();
    assert!(cluster.cores[3].is_joining());
    add_learner(&mut cluster, leader, 3);
    assert!(!cluster.cores[3].is_joining());
    assert_eq!(cluster.cores[3].membership().learners(), vec![NodeId(3)]);
    let status = cluster.cores[leader].status();
    let learner = status
        .progress
        .iter()
        .find(|progress| progress.id == NodeId(3))
        .expect("the leader tracks the learner");
    assert!(!learner.voter);
    assert_eq!(learner.match_index, cluster.cores[leader].last_index());
    // With both other voters down, leader + learner are no majority.
    let others: Vec<usize> = (0..3).filter(|&p| p != leader).collect();
    for &other in &others {
        cluster.down[other] = true;
    }
    let entry = cluster.cores[leader]
        .propose(Bytes::from_static(b"x"))
        .expect("proposal");
    cluster.settle();
    assert!(cluster.cores[leader].commit_index() < entry.index);
    assert_eq!(
        cluster.cores[3].entry(entry.index).map(Entry::id),
        Some(entry),
        "the learner got the entry"
    );
    // The learner never campaigns, however long it hears nothing.
    cluster.down[leader] = true;
    cluster.ticks(5 * RaftConfig::default().election_ticks_max);
    assert_eq!(cluster.cores[3].role(), Role::Follower);
    assert!(!cluster.cores[3].can_campaign());
}

#[test]
fn a_promoted_learner_counts_and_a_removed_voter_stops() {
    let mut cluster = Cluster::with_joining(3, 1);
    let leader = cluster.tick_until_leader();
    add_learner(&mut cluster, leader, 3);
    let promoted = cluster.cores[leader]
        .membership()
        .with_role(NodeId(3), true);
    cluster.cores[leader]
        .propose_membership(promoted)
        .expect("promote");
    cluster.settle();
    cluster.ticks(RaftConfig::default().heartbeat_ticks);
    assert!(cluster.cores[3].can_campaign());
    let victim = (0..3).find(|&p| p != leader).expect("a follower");
    let without = cluster.cores[leader]
        .membership()
        .without(NodeId(victim as u64));
    cluster.cores[leader]
        .propose_membership(without)
        .expect("remove");
    cluster.settle();
    cluster.ticks(RaftConfig::default().heartbeat_ticks);
    assert!(cluster.cores[victim].is_removed(), "it got its removal");
    assert!(!cluster.cores[leader].change_in_progress());
    // The removed node never campaigns; the others still commit (3 voters left).
    cluster.ticks(5 * RaftConfig::default().election_ticks_max);
    assert_eq!(cluster.cores[victim].role(), Role::Follower);
    let entry = cluster.cores[leader]
        .propose(Bytes::from_static(b"y"))
        .expect("proposal");
    cluster.settle();
    assert!(cluster.cores[leader].commit_index() >= entry.index);
}

#[test]
fn a_leader_removing_itself_leads_until_committed_then_hands_over() {
    let mut cluster = Cluster::new(3);
    let leader = cluster.tick_until_leader();
    let term = cluster.cores[leader].term();
    let without = cluster.cores[leader]
        .membership()
        .without(NodeId(leader as u64));
    let entry = cluster.cores[leader]
        .propose_membership(without)
        .expect("remove self");
    assert_eq!(cluster.cores[leader].role(), Role::Leader);
    cluster.settle();
    cluster.ticks(RaftConfig::default().heartbeat_ticks);
    assert_ne!(cluster.cores[leader].role(), Role::Leader);
    assert!(cluster.cores[leader].is_removed());
    // The TimeoutNow made another node leader at once, in a later term.
    let new_leader = (0..3)
        .find(|&p| cluster.cores[p].role() == Role::Leader)
        .expect("a new leader");
    assert_ne!(new_leader, leader);
    assert!(cluster.cores[new_leader].term() > term);
    assert!(cluster.cores[new_leader].commit_index() >= entry.index);
    cluster.ticks(5 * RaftConfig::default().election_ticks_max);
    assert_eq!(cluster.cores[leader].role(), Role::Follower);
    assert_eq!(
        (0..3)
            .filter(|&p| cluster.cores[p].role() == Role::Leader)
            .collect::<Vec<_>>(),
        vec![new_leader],
        "the removed node did not disrupt the new leader"
    );
}

fn append(from: u64, term: u64, prev: EntryId, entries: Vec<Entry>) -> Message {
    Message {
        from: NodeId(from),
        to: NodeId(1),
        term: Term(term),
        body: MessageBody::AppendEntries {
            prev,
            entries,
            commit: LogIndex::ZERO,
        },
    }
}

#[test]
fn truncating_an_appended_change_reverts_to_the_previous_membership() {
    let initial = Membership::from_voters([NodeId(0), NodeId(1), NodeId(2)]);
    let mut core = Core::new(
        NodeId(1),
        initial.clone(),
        RaftConfig::default(),
        InitialState::default(),
        1,
    );
    let next = initial.with_learner(NodeId(3), Bytes::new());
    let entry = |term: u64, index: u64, payload: EntryPayload| Entry {
        term: Term(term),
        index: LogIndex(index),
        payload,
    };
    core.step(append(
        0,
        1,
        EntryId::default(),
        vec![
            entry(1, 1, EntryPayload::Noop),
            entry(1, 2, EntryPayload::Membership(next.clone())),
        ],
    ));
    assert_eq!(*core.membership(), next, "acts on the appended change");
    assert_eq!(*core.committed_membership(), initial);
    assert_eq!(core.ready().membership, Some(next));
    core.step(append(
        2,
        2,
        EntryId::new(Term(1), LogIndex(1)),
        vec![entry(2, 2, EntryPayload::Noop)],
    ));
    assert_eq!(*core.membership(), initial, "reverted");
    assert_eq!(core.ready().membership, Some(initial));
    core.check_invariants();
}

#[test]
fn a_restart_acts_on_the_snapshots_and_logs_membership_not_the_initial_one() {
    let initial = Membership::from_voters([NodeId(0), NodeId(1), NodeId(2)]);
    let in_snapshot = initial.with_learner(NodeId(3), Bytes::new());
    let in_log = in_snapshot.with_role(NodeId(3), true);
    let restored = InitialState {
        snapshot: SnapshotMeta {
            last: EntryId::new(Term(1), LogIndex(5)),
            membership: in_snapshot.clone(),
        },
        hard_state: HardState {
            term: Term(1),
            vote: None,
            commit: LogIndex(5),
        },
        entries: vec![Entry {
            term: Term(1),
            index: LogIndex(6),
            payload: EntryPayload::Membership(in_log.clone()),
        }],
    };
    let core = Core::new(
        NodeId(3),
        initial.clone(),
        RaftConfig::default(),
        restored.clone(),
        1,
    );
    assert_eq!(*core.membership(), in_log);
    assert_eq!(*core.committed_membership(), in_snapshot);
    assert!(core.can_campaign());
    assert_eq!(core.membership_at(LogIndex(5)), Some(&in_snapshot));
    let snapshot_only = InitialState {
        entries: Vec::new(),
        ..restored
    };
    let core = Core::new(NodeId(3), initial, RaftConfig::default(), snapshot_only, 1);
    assert_eq!(*core.membership(), in_snapshot);
    assert!(!core.can_campaign(), "a learner");
}

#[test]
fn a_joining_node_follows_but_neither_votes_nor_campaigns() {
    let initial = Membership::from_voters([NodeId(0), NodeId(2)]);
    let mut core = Core::new(
        NodeId(1),
        initial,
        RaftConfig::default(),
        InitialState::default(),
        1,
    );
    assert!(core.is_joining());
    for _ in 0..5 * RaftConfig::default().election_ticks_max {
        core.tick();
    }
    assert_eq!(core.role(), Role::Follower);
    core.step(Message {
        from: NodeId(0),
        to: NodeId(1),
        term: Term(3),
        body: MessageBody::RequestVote {
            pre_vote: false,
            last_log: EntryId::default(),
            leadership_transfer: false,
        },
    });
    let ready = core.ready();
    assert!(ready.messages_after_persist.iter().all(|message| !matches!(
        message.body,
        MessageBody::RequestVoteResponse { granted: true, .. }
    )));
}

#[test]
fn a_second_leader_of_the_current_term_is_dropped_not_followed() {
    // Raft elects one leader per term: a leader's message of the current term from anyone
    // else is forged (an unkeyed peer port authenticates nobody) or corrupt.
    let mut cluster = Cluster::new(3);
    let leader = cluster.tick_until_leader();
    let term = cluster.cores[leader].term();
    let follower = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let forged_membership = Membership::from_voters([NodeId(other as u64)]);
    let bodies = [
        MessageBody::Heartbeat {
            commit: LogIndex(1),
            read_round: 0,
        },
        MessageBody::AppendEntries {
            prev: cluster.cores[follower].log.last_id(),
            entries: vec![Entry {
                term,
                index: LogIndex(cluster.cores[follower].log.last_index().0 + 1),
                payload: EntryPayload::Membership(forged_membership.clone()),
            }],
            commit: LogIndex::ZERO,
        },
        MessageBody::InstallSnapshot {
            snapshot: SnapshotMeta {
                last: EntryId::new(term, LogIndex(1000)),
                membership: forged_membership.clone(),
            },
        },
    ];
    for target in [leader, follower] {
        for body in bodies.clone() {
            let before = cluster.cores[target].term_refusals().malformed;
            cluster.cores[target].step(Message {
                from: NodeId(other as u64),
                to: NodeId(target as u64),
                term,
                body,
            });
            assert_eq!(
                cluster.cores[target].term_refusals().malformed,
                before + 1,
                "node {target} counts the forged message"
            );
            cluster.cores[target].check_invariants();
        }
    }
    assert_eq!(cluster.cores[leader].role(), Role::Leader);
    assert_eq!(
        cluster.cores[follower].leader(),
        Some(NodeId(leader as u64))
    );
    assert_ne!(*cluster.cores[follower].membership(), forged_membership);
    cluster.settle();
    assert_eq!(cluster.cores[leader].role(), Role::Leader, "still leads");
}
