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
//! - `bridge`: two halves that cannot see each other, and one node that sees both;
//! - `replace` (only in runs that ask for it): a member, a third of the time the leader, is
//!   replaced by a fresh node at a new address while another of the faults above holds:
//!   `rrmq-node --join`, `member PUT` retried through leader changes (`TIMEOUT` leaves the
//!   add in progress, `CHANGE_IN_PROGRESS` means wait), `member DELETE` of the old one, and
//!   its process stopped for good. The faults after it pick from the new members.
//!
//! Partitions use the nodes' test-only `fault` control (see `rrmq::transport::fault`):
//! each node is told which peers to drop messages to and from. Client traffic is never cut,
//! so clients can reach both sides, as in Jepsen's setups.
//!
//! Every random choice (which fault, which node, how long) comes from one seeded
//! `ChaCha8Rng`, so a seed names a schedule; which node is leader at the time is the
//! cluster's doing. After every fault it checks that no node exited on its own, and
//! restarts one that did (recording a problem for the checker).

use crate::common::Wire;
use crate::history::{Event, History, Phase};
use crate::nodes::Nodes;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rrmq::client::{Client, ClientError, ClientOptions};
use rrmq::protocol::MemberAddress;
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
    /// The membership nemesis: a random member (sometimes the leader) is replaced by a fresh
    /// node at a new address (`--join`, `member PUT`, `member DELETE` of the old one, whose
    /// process then stops for good) while another fault, drawn from the run's other kinds,
    /// is in force. Not in [`FaultKind::ALL`]: a run asks for it (see
    /// [`Nemesis::with_replacements`]).
    Replace,
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
            FaultKind::Replace => "replace",
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

/// How often the membership nemesis replaces a node, and how the fresh nodes are started.
struct Replacements {
    /// Fault number `1`, `1 + every`, `1 + 2 * every`, ... (counting from 0) is a
    /// replacement: the first comes early, so that even a short run has one.
    every: usize,
    /// The flags every node of the run gets on top of the fast ones.
    flags: Vec<String>,
}

pub struct Nemesis<'a> {
    nodes: &'a mut Nodes,
    history: &'a History,
    rng: ChaCha8Rng,
    timing: Timing,
    kinds: Vec<FaultKind>,
    replacements: Option<Replacements>,
    /// Replacements done (the old node removed and stopped).
    pub replaced: usize,
}

/// How long a node may take to accept a fault control request, or to answer `status` after a
/// restart. Generous: a restarted node replays its whole log (no compaction yet) before it
/// answers anything, which after a long run takes many seconds in a debug build.
const RESPONSE_DEADLINE: Duration = Duration::from_secs(60);

/// How long a replacement may take once the fault that ran with it has healed: the fresh
/// node must learn the cluster id, catch up (by snapshot after a long run) and be promoted,
/// then the old one removed, each step retried through leader changes.
const REPLACEMENT_DEADLINE: Duration = Duration::from_secs(180);

/// Where a replacement stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// `member PUT` of the fresh node until it is a voter.
    Add,
    /// `member DELETE` of the old node until it is no longer a member.
    Remove,
    Done,
    /// Gave up (recorded as a problem).
    Failed,
}

impl<'a> Nemesis<'a> {
    pub fn new(
        nodes: &'a mut Nodes,
        history: &'a History,
        seed: u64,
        timing: Timing,
        kinds: Vec<FaultKind>,
    ) -> Nemesis<'a> {
        assert!(!kinds.is_empty(), "no fault kinds to choose from");
        Nemesis {
            nodes,
            history,
            // A stream of its own: the workload's generators take other seeds.
            rng: ChaCha8Rng::seed_from_u64(seed ^ 0x6e65_6d65_7369_7321),
            timing,
            kinds,
            replacements: None,
            replaced: 0,
        }
    }

    /// Makes every `every`-th fault a replacement ([`FaultKind::Replace`]), the second one
    /// first; fresh nodes get `flags`.
    pub fn with_replacements(mut self, every: usize, flags: &[&str]) -> Nemesis<'a> {
        assert!(every > 0, "a replacement every 0 faults");
        self.replacements = Some(Replacements {
            every,
            flags: flags.iter().map(|flag| flag.to_string()).collect(),
        });
        self
    }

    /// A client of the current members for status queries (the harness's own key on a
    /// keyed cluster, which lists the harness with every right).
    fn client(&self, deadline: Duration) -> Client {
        let options = self.nodes.cluster.library_options_as(
            "harness",
            ClientOptions {
                nodes: self.nodes.addresses(),
                attempt_timeout: Duration::from_millis(500),
                deadline,
                hedge_after: None,
                curve: None,
            },
        );
        Client::connect(options).expect("valid options")
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
            let hold = Duration::from_millis(self.rng.gen_range(self.timing.hold_ms.clone()));
            let replace = self
                .replacements
                .as_ref()
                .is_some_and(|replacements| count % replacements.every == 1);
            if replace {
                self.replace(hold);
                self.check_alive();
                count += 1;
                continue;
            }
            let kind = *self.kinds.choose(&mut self.rng).expect("not empty");
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

    /// The member that says it leads the highest term, if any answers so.
    fn leader(&mut self) -> Option<usize> {
        let members = self.nodes.members();
        let by_port: std::collections::HashMap<u16, usize> = members
            .iter()
            .map(|id| (self.nodes.ports(*id).port, *id))
            .collect();
        let statuses = self.client(Duration::from_secs(5)).status_all();
        statuses
            .into_iter()
            .filter_map(|(address, status)| {
                let id = *by_port.get(&address.port)?;
                let status = status.ok()?;
                (self.nodes.is_running(id) && status.role == "Leader").then_some((status.term, id))
            })
            .max()
            .map(|(_, id)| id)
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
        *self
            .nodes
            .members()
            .choose(&mut self.rng)
            .expect("the cluster has members")
    }

    fn shuffled_nodes(&mut self) -> Vec<usize> {
        let mut nodes = self.nodes.members();
        nodes.shuffle(&mut self.rng);
        nodes
    }

    fn start(&mut self, kind: FaultKind) -> (Active, String) {
        let members = self.nodes.members();
        let size = members.len();
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
                active.killed = members.clone();
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
                let rest: Vec<usize> = members
                    .iter()
                    .copied()
                    .filter(|other| *other != node)
                    .collect();
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
                for other in members.iter().copied().filter(|other| *other != node) {
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
            FaultKind::Replace => unreachable!("a replacement is not started here"),
        };
        for &node in &active.killed {
            self.nodes.kill(node);
        }
        for &node in &active.paused {
            self.nodes.signal(node, libc::SIGSTOP);
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
            self.nodes.signal(node, libc::SIGCONT);
            done.push(format!("SIGCONT node {node}"));
        }
        let flags = self.flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        for &node in &active.killed {
            self.nodes.spawn(node, &flags);
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
                        self.nodes.log_path(node).display()
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

    fn flags(&self) -> Vec<String> {
        self.replacements
            .as_ref()
            .map(|replacements| replacements.flags.clone())
            .unwrap_or_default()
    }

    /// Replaces a random member (a third of the time the leader) by a fresh node while
    /// another fault holds for `hold`: the fault starts, the fresh node starts with
    /// `--join`, then `member PUT` of it and `member DELETE` of the old one are retried
    /// until done (through leader changes, `TIMEOUT` and `CHANGE_IN_PROGRESS`) while the
    /// fault holds; the fault heals; the steps left are finished; the old node is stopped
    /// for good.
    fn replace(&mut self, hold: Duration) {
        let (old, who) = if self.rng.gen_bool(1.0 / 3.0) {
            self.leader_or_random()
        } else {
            let node = self.random_node();
            (node, format!("node {node}"))
        };
        let others: Vec<FaultKind> = self
            .kinds
            .iter()
            .copied()
            .filter(|kind| *kind != FaultKind::Replace)
            .collect();
        let concurrent = others.choose(&mut self.rng).copied();
        self.history.record(Event::Nemesis {
            phase: Phase::Start,
            kind: FaultKind::Replace.name().to_string(),
            detail: format!(
                "replace {who} by a fresh node, {} for {} ms",
                concurrent.map_or("alone".to_string(), |kind| format!("while {}", kind.name())),
                hold.as_millis()
            ),
        });
        let started = Instant::now();
        let active = concurrent.map(|kind| {
            let (active, detail) = self.start(kind);
            self.history.record(Event::Nemesis {
                phase: Phase::Start,
                kind: kind.name().to_string(),
                detail: format!(
                    "{detail} for {} ms (with the replacement)",
                    hold.as_millis()
                ),
            });
            (kind, active)
        });
        let flags = self.flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let fresh = self.nodes.start_joining(&flags);
        self.history.record(Event::Member {
            action: "start".to_string(),
            node: fresh as u64,
            ok: true,
            detail: format!(
                "started with --join on client port {} (replacing node {old})",
                self.nodes.ports(fresh).port
            ),
        });
        let mut step = self.advance(Step::Add, old, fresh, started + hold);
        std::thread::sleep((started + hold).saturating_duration_since(Instant::now()));
        if let Some((kind, active)) = active {
            self.heal(kind, active);
        }
        step = self.advance(step, old, fresh, Instant::now() + REPLACEMENT_DEADLINE);
        let detail = match step {
            Step::Done => {
                self.nodes.retire(old);
                self.replaced += 1;
                self.history.record(Event::Member {
                    action: "stop".to_string(),
                    node: old as u64,
                    ok: true,
                    detail: format!(
                        "removed and stopped; members now {:?}",
                        self.nodes.members()
                    ),
                });
                format!(
                    "node {old} replaced by node {fresh} in {} ms",
                    started.elapsed().as_millis()
                )
            }
            Step::Add | Step::Remove | Step::Failed => {
                self.history.record(Event::Note {
                    text: format!(
                        "the replacement of node {old} by node {fresh} was not done within \
                         {REPLACEMENT_DEADLINE:?} of the fault healing (stuck at {step:?}); \
                         see {}",
                        self.nodes.log_path(fresh).display()
                    ),
                    problem: true,
                });
                format!("replacement of node {old} by node {fresh} NOT done ({step:?})")
            }
        };
        self.history.record(Event::Nemesis {
            phase: Phase::Heal,
            kind: FaultKind::Replace.name().to_string(),
            detail,
        });
    }

    /// Drives a replacement on from `step` until it is done or `until`.
    fn advance(&mut self, mut step: Step, old: usize, fresh: usize, until: Instant) -> Step {
        while matches!(step, Step::Add | Step::Remove) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let mut client = self.client(left.min(Duration::from_secs(10)));
            let (action, node, result) = match step {
                Step::Add => {
                    let ports = self.nodes.ports(fresh);
                    let member = MemberAddress {
                        id: fresh as u64,
                        ip: "127.0.0.1".to_string(),
                        port: ports.port,
                        internal_port: ports.internal_port,
                        public_key: None,
                    };
                    ("put", fresh, client.add_member(member))
                }
                _ => ("delete", old, client.remove_member(old as u64)),
            };
            let (next, wait) = match &result {
                Ok(()) => (
                    if step == Step::Add {
                        Step::Remove
                    } else {
                        Step::Done
                    },
                    false,
                ),
                // A PUT that took effect but whose answer was lost: the retry is refused
                // as a used id. The leader's member list tells.
                Err(ClientError::BadRequest { message })
                    if step == Step::Add && message.contains("already a member") =>
                {
                    let voter = client.list_members().ok().is_some_and(|members| {
                        members
                            .iter()
                            .any(|member| member.address.id == fresh as u64 && member.voter)
                    });
                    (if voter { Step::Remove } else { Step::Add }, !voter)
                }
                Err(ClientError::BadRequest { .. }) => (Step::Failed, false),
                // TIMEOUT (the add stays in progress), CHANGE_IN_PROGRESS, no leader, a
                // leader change: wait a little and ask again.
                Err(_) => (step, true),
            };
            self.history.record(Event::Member {
                action: action.to_string(),
                node: node as u64,
                ok: result.is_ok(),
                detail: match &result {
                    Ok(()) => "done".to_string(),
                    Err(error) => error.to_string(),
                },
            });
            if next == Step::Failed {
                self.history.record(Event::Note {
                    text: format!("member {} of node {node} refused as a bad request", action),
                    problem: true,
                });
            }
            step = next;
            if wait {
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        step
    }

    /// Polls `node` until it answers `status`; false if it does not within the deadline.
    fn wait_answering(&self, node: usize) -> bool {
        let deadline = Instant::now() + RESPONSE_DEADLINE;
        while Instant::now() < deadline {
            if self
                .nodes
                .status(node, Duration::from_millis(500))
                .is_some()
            {
                return true;
            }
        }
        false
    }

    /// Tells every member which of its links are cut (an empty set heals them all).
    fn apply_cut(&mut self, cut: &BTreeSet<(usize, usize)>) {
        for node in self.nodes.members() {
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
        let mut client = self.nodes.client(node);
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
        let flags = self.flags();
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        check_alive(self.nodes, self.history, &flags);
    }
}

/// Records and restarts any member that exited although nobody killed it.
pub fn check_alive(nodes: &mut Nodes, history: &History, flags: &[&str]) {
    for id in nodes.members() {
        if let Some(status) = nodes.reap(id) {
            history.record(Event::Note {
                text: format!(
                    "node {id} exited on its own ({status}); see {}",
                    nodes.log_path(id).display()
                ),
                problem: true,
            });
            nodes.spawn(id, flags);
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
