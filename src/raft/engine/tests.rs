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
    assert_eq!(cluster.installed_snapshots[lagging], vec![snapshot]);
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
