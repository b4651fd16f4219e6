//! The nemesis: injects faults into a running cluster at random, bounded intervals, and
//! heals each one after a bounded time.
//!
//! Faults, one at a time (each a process or network failure a real deployment sees):
//! - `kill_random`, `kill_leader`, `kill_majority`, `kill_all`: SIGKILL, then restart on the
//!   same data dir (a crash; with every node down, a power cut);
//! - `pause_random`, `pause_leader`: SIGSTOP, then SIGCONT (a frozen VM, a long GC pause;
//!   the paused node wakes up believing what it believed);
//! - `isolate_leader`, `split`: a symmetric partition: the leader alone, or a random
//!   minority against the majority;
//! - `one_way`: one node (often the leader) either hears nobody or is heard by nobody;
//! - `bridge`: two halves that cannot see each other, and one node that sees both.
//!
//! Partitions use the nodes' test-only `fault` control (see `rrmq::transport::fault`):
//! each node is told which peers to drop messages to and from. Client traffic is never cut,
//! so clients can reach both sides, as in Jepsen's setups.
//!
//! Every random choice (which fault, which node, how long) comes from one seeded
//! `ChaCha8Rng`, so a seed names a schedule; which node is leader at the time is the
//! cluster's doing. After every fault it checks that no node exited on its own, and
//! restarts one that did (recording a problem for the checker).

use crate::common::{Cluster, Wire};
use crate::history::{Event, History, Phase};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rrmq::client::{Client, ClientOptions, NodeAddress};
use serde_json::json;
use std::collections::BTreeSet;
use std::ops::Range;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum FaultKind {
    KillRandom,
    KillLeader,
    KillMajority,
    KillAll,
    PauseRandom,
    PauseLeader,
    IsolateLeader,
    Split,
    OneWay,
    Bridge,
}

impl FaultKind {
    pub const ALL: [FaultKind; 10] = [
        FaultKind::KillRandom,
        FaultKind::KillLeader,
        FaultKind::KillMajority,
        FaultKind::KillAll,
        FaultKind::PauseRandom,
        FaultKind::PauseLeader,
        FaultKind::IsolateLeader,
        FaultKind::Split,
        FaultKind::OneWay,
        FaultKind::Bridge,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillRandom => "kill_random",
            FaultKind::KillLeader => "kill_leader",
            FaultKind::KillMajority => "kill_majority",
            FaultKind::KillAll => "kill_all",
            FaultKind::PauseRandom => "pause_random",
            FaultKind::PauseLeader => "pause_leader",
            FaultKind::IsolateLeader => "isolate_leader",
            FaultKind::Split => "split",
            FaultKind::OneWay => "one_way",
            FaultKind::Bridge => "bridge",
        }
    }
}

/// How long faults last and how long the cluster gets between them.
#[derive(Clone, Debug)]
pub struct Timing {
    pub hold_ms: Range<u64>,
    pub gap_ms: Range<u64>,
}

/// What a fault did, so that healing can undo exactly that.
#[derive(Default)]
struct Active {
    killed: Vec<usize>,
    paused: Vec<usize>,
    /// Directed links cut: (from, to).
    cut: BTreeSet<(usize, usize)>,
}

pub struct Nemesis<'a> {
    cluster: &'a mut Cluster,
    history: &'a History,
    rng: ChaCha8Rng,
    timing: Timing,
    kinds: Vec<FaultKind>,
    /// For status queries.
    client: Client,
}

/// How long a node may take to accept a fault control request, or to answer `status` after a
/// restart. Generous: a restarted node replays its whole log (no compaction yet) before it
/// answers anything, which after a long run takes many seconds in a debug build.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(60);

impl<'a> Nemesis<'a> {
    pub fn new(
        cluster: &'a mut Cluster,
        history: &'a History,
        seed: u64,
        timing: Timing,
        kinds: Vec<FaultKind>,
    ) -> Nemesis<'a> {
        let nodes = cluster
            .ports
            .iter()
            .map(|ports| NodeAddress::new("127.0.0.1", ports.port).expect("loopback address"))
            .collect();
        // The harness's own key on a keyed cluster (it lists the harness with every right).
        let options = cluster.library_options_as(
            "harness",
            ClientOptions {
                nodes,
                attempt_timeout: Duration::from_millis(500),
                deadline: Duration::from_secs(5),
                hedge_after: None,
                curve: None,
            },
        );
        let client = Client::connect(options).expect("valid options");
        assert!(!kinds.is_empty(), "no fault kinds to choose from");
        Nemesis {
            cluster,
            history,
            // A stream of its own: the workload's generators take other seeds.
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            timing,
            kinds,
            client,
        }
    }

    /// Injects faults for `duration` (the fault in progress then runs its course), and
    /// leaves everything healed. Returns how many faults it injected.
    pub fn run(&mut self, duration: Duration) -> usize {
        let end = Instant::now() + duration;
        let mut count = 0;
        loop {
            let gap = self.rng.gen_range(self.timing.gap_ms.clone());
            std::thread::sleep(Duration::from_millis(gap));
            if Instant::now() >= end {
                break;
            }
            let kind = *self.kinds.choose(&mut self.rng).expect("not empty");
            let hold = Duration::from_millis(self.rng.gen_range(self.timing.hold_ms.clone()));
            let (active, detail) = self.start(kind);
            self.history.record(Event::Nemesis {
                phase: Phase::Start,
                kind: kind.name().to_string(),
                detail: format!("{detail} for {} ms", hold.as_millis()),
            });
            std::thread::sleep(hold);
            self.heal(kind, active);
            self.check_alive();
            count += 1;
        }
        count
    }

    /// The node that says it leads the highest term, if any answers so.
    fn leader(&mut self) -> Option<usize> {
        let statuses = self.client.status_all();
        statuses
            .into_iter()
            .enumerate()
            .filter(|(index, _)| self.cluster.is_running(*index))
            .filter_map(|(index, (_, status))| {
                let status = status.ok()?;
                (status.role == "Leader").then_some((status.term, index))
            })
            .max()
            .map(|(_, index)| index)
    }

    /// The leader, or a random running node if none is known right now.
    fn leader_or_random(&mut self) -> (usize, String) {
        match self.leader() {
            Some(leader) => (leader, format!("node {leader} (the leader)")),
            None => {
                let node = self.random_node();
                (
                    node,
                    format!("node {node} (no leader known; chosen at random)"),
                )
            }
        }
    }

    fn random_node(&mut self) -> usize {
        self.rng.gen_range(0..self.cluster.size())
    }

    fn shuffled_nodes(&mut self) -> Vec<usize> {
        let mut nodes: Vec<usize> = (0..self.cluster.size()).collect();
        nodes.shuffle(&mut self.rng);
        nodes
    }

    fn start(&mut self, kind: FaultKind) -> (Active, String) {
        let size = self.cluster.size();
        let mut active = Active::default();
        let detail = match kind {
            FaultKind::KillRandom | FaultKind::KillLeader => {
                let (node, who) = if kind == FaultKind::KillLeader {
                    self.leader_or_random()
                } else {
                    let node = self.random_node();
                    (node, format!("node {node}"))
                };
                active.killed.push(node);
                format!("SIGKILL {who}")
            }
            FaultKind::KillMajority => {
                active.killed = self.shuffled_nodes()[..size / 2 + 1].to_vec();
                format!("SIGKILL nodes {:?} at once", active.killed)
            }
            FaultKind::KillAll => {
                active.killed = (0..size).collect();
                "SIGKILL every node".to_string()
            }
            FaultKind::PauseRandom | FaultKind::PauseLeader => {
                let (node, who) = if kind == FaultKind::PauseLeader {
                    self.leader_or_random()
                } else {
                    let node = self.random_node();
                    (node, format!("node {node}"))
                };
                active.paused.push(node);
                format!("SIGSTOP {who}")
            }
            FaultKind::IsolateLeader => {
                let (node, who) = self.leader_or_random();
                let rest: Vec<usize> = (0..size).filter(|other| *other != node).collect();
                active.cut = cut_between(&[node], &rest);
                format!("isolate {who} from {rest:?}")
            }
            FaultKind::Split => {
                let nodes = self.shuffled_nodes();
                let (minority, majority) = nodes.split_at((size - 1) / 2);
                active.cut = cut_between(minority, majority);
                format!("split minority {minority:?} from majority {majority:?}")
            }
            FaultKind::OneWay => {
                let (node, who) = if self.rng.gen_bool(0.5) {
                    self.leader_or_random()
                } else {
                    let node = self.random_node();
                    (node, format!("node {node}"))
                };
                let deaf = self.rng.gen_bool(0.5);
                for other in (0..size).filter(|other| *other != node) {
                    active
                        .cut
                        .insert(if deaf { (other, node) } else { (node, other) });
                }
                if deaf {
                    format!("{who} hears nobody (its messages still go out)")
                } else {
                    format!("nobody hears {who} (it still hears them)")
                }
            }
            FaultKind::Bridge => {
                let nodes = self.shuffled_nodes();
                let bridge = nodes[0];
                let (left, right) = nodes[1..].split_at((size - 1) / 2);
                active.cut = cut_between(left, right);
                format!("halves {left:?} and {right:?} cut apart, node {bridge} bridges them")
            }
        };
        for &node in &active.killed {
            self.cluster.kill(node);
        }
        for &node in &active.paused {
            self.cluster.signal(node, libc::SIGSTOP);
        }
        if !active.cut.is_empty() {
            self.apply_cut(&active.cut);
        }
        (active, detail)
    }

    fn heal(&mut self, kind: FaultKind, active: Active) {
        let mut done = Vec::new();
        if !active.cut.is_empty() {
            self.apply_cut(&BTreeSet::new());
            done.push("partition healed".to_string());
        }
        for &node in &active.paused {
            self.cluster.signal(node, libc::SIGCONT);
            done.push(format!("SIGCONT node {node}"));
        }
        for &node in &active.killed {
            self.cluster.spawn(node);
        }
        for &node in &active.killed {
            let restarted = Instant::now();
            if self.wait_answering(node) {
                done.push(format!(
                    "restarted node {node} (answering after {} ms)",
                    restarted.elapsed().as_millis()
                ));
            } else {
                done.push(format!("restarted node {node} (NOT answering)"));
                self.history.record(Event::Note {
                    text: format!(
                        "node {node} did not answer status within {RESPONSE_DEADLINE:?} of its \
                         restart; see {}",
                        self.cluster.log_path(node).display()
                    ),
                    problem: true,
                });
            }
        }
        self.history.record(Event::Nemesis {
            phase: Phase::Heal,
            kind: kind.name().to_string(),
            detail: done.join(", "),
        });
    }

    /// Polls `node` until it answers `status`; false if it does not within the deadline.
    fn wait_answering(&self, node: usize) -> bool {
        let deadline = Instant::now() + RESPONSE_DEADLINE;
        while Instant::now() < deadline {
            if self
                .cluster
                .status(node, Duration::from_millis(500))
                .is_some()
            {
                return true;
            }
        }
        false
    }

    /// Tells every node which of its links are cut (an empty set heals them all).
    fn apply_cut(&mut self, cut: &BTreeSet<(usize, usize)>) {
        for node in 0..self.cluster.size() {
            let drop_to: Vec<usize> = cut
                .iter()
                .filter(|(from, _)| *from == node)
                .map(|(_, to)| *to)
                .collect();
            let drop_from: Vec<usize> = cut
                .iter()
                .filter(|(_, to)| *to == node)
                .map(|(from, _)| *from)
                .collect();
            self.control(node, &drop_to, &drop_from);
        }
    }

    /// Sends one node its `fault` request, retrying until it is acknowledged.
    fn control(&self, node: usize, drop_to: &[usize], drop_from: &[usize]) {
        let request = json!({
            "type": "fault", "method": "PUT", "v": 2,
            "drop_to": drop_to, "drop_from": drop_from,
        });
        let deadline = Instant::now() + RESPONSE_DEADLINE;
        // Keyed or not: the harness's client (an admin, as `fault` needs on a keyed cluster).
        let mut client = self.cluster.client(node);
        loop {
            let reply = client.call_with_timeout(Wire::MsgPack, &request, Duration::from_secs(1));
            match reply {
                Some(reply) if reply["success"] == true => return,
                Some(reply) => panic!("node {node} refused the fault control {request}: {reply}"),
                None => assert!(
                    Instant::now() < deadline,
                    "node {node} did not acknowledge the fault control {request} within \
                     {RESPONSE_DEADLINE:?}"
                ),
            }
        }
    }

    fn check_alive(&mut self) {
        check_alive(self.cluster, self.history);
    }
}

/// Records and restarts any node that exited although nobody killed it.
pub fn check_alive(cluster: &mut Cluster, history: &History) {
    for index in 0..cluster.size() {
        if let Some(status) = cluster.nodes.reap(index) {
            history.record(Event::Note {
                text: format!(
                    "node {index} exited on its own ({status}); see {}",
                    cluster.log_path(index).display()
                ),
                problem: true,
            });
            cluster.spawn(index);
        }
    }
}

/// Every link between the two groups, both ways.
fn cut_between(left: &[usize], right: &[usize]) -> BTreeSet<(usize, usize)> {
    let mut cut = BTreeSet::new();
    for &a in left {
        for &b in right {
            cut.insert((a, b));
            cut.insert((b, a));
        }
    }
    cut
}
