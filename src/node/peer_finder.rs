//! Finding the members this node has no address for.
//!
//! Why: a node that was down while the membership changed restarts knowing only its config
//! file and its own log. When the node that leads now was added after both, the node cannot
//! hear that leader: the peer receiver takes frames only from the peers the node connects
//! to (and in a keyed cluster the ZAP handler admits only their keys), and it has no address
//! to answer it. It would stay behind until leadership moved to a node it knows (the
//! membership nemesis, seed 16001: about two minutes). Its log cannot help: the entry that
//! added the leader is what it is missing.
//!
//! So when the node has known no leader for [`FIND_AFTER_ELECTION_TIMEOUTS`] election
//! timeouts, the node loop hands this module's thread the nodes it knows (from its config
//! and its membership, never one learned here) and the thread asks each of them for its
//! `stats` on the client port, which carry the cluster id and the membership that node acts
//! on. The members of this cluster the node has no address for go back to the loop as an
//! [`Event::MembersFound`], and the loop connects to them (`node_loop::membership`).
//!
//! What an answer may do: add peer connections (and, in a keyed cluster, admit keys on the
//! peer port) for ids the node knows nothing of. It never changes an address the config or
//! the log gives, and never the membership the core acts on, which comes from the log
//! alone: a stale or hostile answer cannot make anyone a member or a voter, at most it opens
//! a connection. Answers from another cluster (another cluster id) are ignored, an id that
//! two answers give different addresses or keys is dropped, and at most [`LEARNED_MAX`] ids
//! are taken.
//!
//! Keys: an admitted key lets its holder speak as that id on the peer port, and a node
//! follows whichever leader of the current term speaks to it, so a key is learned only over
//! an authenticated channel. In a keyed cluster that lists `clients` the client port speaks
//! CURVE: the thread presents this node's own key (the members admit it for `stats`,
//! `transport::zap`) and expects each node's key from the config or the log, so an answer
//! comes from a member. In a keyed cluster without `clients` the client port is plain, so
//! nothing is asked there: such a node still waits for a leader it knows (logged once).
//!
//! The network stays off the loop: the loop only hands a request over (dropped while the
//! previous one is being asked) and takes the answer as an event.

use std::collections::BTreeMap;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError};

use super::event::Event;
use super::members;
use crate::client::{Client, ClientCurve, ClientOptions, MemberInfo, NodeAddress};
use crate::config::keys::KeyPair;
use crate::config::{Address, NodeConfig};
use crate::raft::NodeId;

/// Election timeouts (the longest) without a known leader before the members are asked,
/// and between two asks while that lasts: an election normally settles within one or two.
pub const FIND_AFTER_ELECTION_TIMEOUTS: u32 = 5;

/// At most this many ids are learned from one round of answers.
pub const LEARNED_MAX: usize = 16;

/// How long one node is waited for, and one round in all.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(1);
const ROUND_DEADLINE: Duration = Duration::from_secs(2);

/// A node this node knows from its config or its log, to ask.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KnownNode {
    pub id: NodeId,
    pub address: Address,
}

/// What one round of asking found: the members the answers name, with their addresses,
/// before the loop drops those it knows already. `None` when no node of this cluster
/// answered (nothing to go by: the loop keeps what it learned before).
#[derive(Debug)]
pub struct MembersFound(pub Option<Vec<(NodeId, Address)>>);

/// The loop's handle on the thread that asks.
pub struct PeerFinder {
    /// `None` in a keyed cluster without `clients` (see the module docs).
    requests: Option<Sender<Vec<KnownNode>>>,
    /// Whether the loop was told that nothing is asked (keyed, no clients).
    disabled_logged: bool,
}

impl PeerFinder {
    /// Starts the thread (none in a keyed cluster without `clients`). The thread exits once
    /// this handle is dropped and the round it is asking, if any, is over.
    pub fn start(config: &NodeConfig, events: Sender<Event>) -> std::io::Result<PeerFinder> {
        let keyed = config.cluster.is_keyed();
        let curve = match (&config.key_pair, &config.cluster.clients) {
            (Some(own), Some(_)) => Some(own.clone()),
            _ => None,
        };
        if keyed && curve.is_none() {
            return Ok(PeerFinder {
                requests: None,
                disabled_logged: false,
            });
        }
        let asker = Asker {
            me: config.id,
            cluster_id: config.cluster.cluster_id,
            keyed,
            curve,
        };
        let (requests, inbox) = crossbeam_channel::bounded(1);
        std::thread::Builder::new()
            .name("peer-finder".into())
            .spawn(move || asker.run(&inbox, &events))?;
        Ok(PeerFinder {
            requests: Some(requests),
            disabled_logged: false,
        })
    }

    /// Hands `known` to the thread to ask; nothing if it is still asking.
    pub fn ask(&mut self, known: Vec<KnownNode>) {
        let Some(requests) = &self.requests else {
            if !self.disabled_logged {
                self.disabled_logged = true;
                log::info!(
                    "no leader known for a while; in a keyed cluster without `clients` the \
                     client port is not authenticated, so the members are not asked for a \
                     leader this node has no address for"
                );
            }
            return;
        };
        match requests.try_send(known) {
            Ok(()) | Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => log::warn!("the peer finder thread is gone"),
        }
    }
}

/// What the thread needs to ask.
struct Asker {
    me: NodeId,
    cluster_id: u64,
    /// The peer port speaks CURVE: only members with a key are of use.
    keyed: bool,
    /// This node's key pair, when the client port speaks CURVE.
    curve: Option<KeyPair>,
}

impl Asker {
    fn run(&self, inbox: &Receiver<Vec<KnownNode>>, events: &Sender<Event>) {
        while let Ok(known) = inbox.recv() {
            let found = MembersFound(self.ask(&known));
            if events.send(Event::MembersFound(found)).is_err() {
                return; // The node loop has exited.
            }
        }
    }

    /// Asks every node of `known` for its `stats` at once, for one round.
    fn ask(&self, known: &[KnownNode]) -> Option<Vec<(NodeId, Address)>> {
        let nodes: Vec<NodeAddress> = known
            .iter()
            .filter_map(|node| NodeAddress::new(node.address.ip.clone(), node.address.port).ok())
            .collect();
        let mut options = ClientOptions::new(nodes);
        options.attempt_timeout = ATTEMPT_TIMEOUT;
        options.deadline = ROUND_DEADLINE;
        options.hedge_after = None;
        if let Some(own) = &self.curve {
            let server_keys = known
                .iter()
                .filter_map(|node| {
                    let address =
                        NodeAddress::new(node.address.ip.clone(), node.address.port).ok()?;
                    Some((address, node.address.public_key?))
                })
                .collect();
            options.curve = Some(ClientCurve {
                own: own.clone(),
                server_keys,
            });
        }
        let mut client = match Client::connect(options) {
            Ok(client) => client,
            Err(error) => {
                log::debug!("peer finder: {error}");
                return None;
            }
        };
        let answers: Vec<Vec<MemberInfo>> = client
            .stats_all()
            .into_iter()
            .filter_map(|(node, stats)| match stats {
                Ok(stats) if stats.cluster_id == self.cluster_id && stats.id != self.me.0 => {
                    Some(stats.members)
                }
                Ok(stats) => {
                    log::debug!(
                        "peer finder: {node} is node {} of cluster {:#x}, not another node of \
                         this one",
                        stats.id,
                        stats.cluster_id
                    );
                    None
                }
                Err(error) => {
                    log::debug!("peer finder: {node}: {error}");
                    None
                }
            })
            .collect();
        if answers.is_empty() {
            return None;
        }
        Some(merge(&answers, self.keyed))
    }
}

/// The members the answers agree on, with their addresses: an id that two answers give
/// different addresses (or keys) is dropped, and so is one without a key when `keyed`
/// (useless: the ZAP handler could not admit it) or with an unreadable one. At most
/// [`LEARNED_MAX`], lowest ids first.
pub fn merge(answers: &[Vec<MemberInfo>], keyed: bool) -> Vec<(NodeId, Address)> {
    // `None`: answers disagree on that id.
    let mut agreed: BTreeMap<NodeId, Option<Address>> = BTreeMap::new();
    for member in answers.iter().flatten() {
        let id = NodeId(member.address.id);
        let address = match members::address_of(&member.address) {
            Ok(address) if !keyed || address.public_key.is_some() => address,
            _ => {
                agreed.insert(id, None);
                continue;
            }
        };
        match agreed.get(&id) {
            None => {
                agreed.insert(id, Some(address));
            }
            Some(Some(known)) if *known == address => {}
            Some(_) => {
                log::warn!("peer finder: members disagree on node {id}'s address; ignored");
                agreed.insert(id, None);
            }
        }
    }
    agreed
        .into_iter()
        .filter_map(|(id, address)| Some((id, address?)))
        .take(LEARNED_MAX)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::MemberAddress;

    fn member(id: u64, port: u16, public_key: Option<&str>) -> MemberInfo {
        MemberInfo {
            address: MemberAddress {
                id,
                ip: "127.0.0.1".into(),
                port,
                internal_port: port + 1,
                public_key: public_key.map(str::to_string),
            },
            voter: true,
        }
    }

    const KEY: &str = "rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7";

    #[test]
    fn answers_that_agree_are_merged_and_a_disputed_id_is_dropped() {
        let first = vec![member(1, 7000, None), member(4, 7100, None)];
        let second = vec![member(4, 7100, None), member(5, 7200, None)];
        let hostile = vec![member(5, 9000, None)];
        let merged = merge(&[first, second, hostile], false);
        let ids: Vec<(u64, u16)> = merged
            .iter()
            .map(|(id, address)| (id.0, address.internal_port))
            .collect();
        assert_eq!(ids, vec![(1, 7001), (4, 7101)]);
    }

    #[test]
    fn a_keyed_cluster_takes_only_members_with_a_readable_key() {
        let answer = vec![
            member(1, 7000, None),
            member(2, 7100, Some("not z85")),
            member(3, 7200, Some(KEY)),
        ];
        let merged = merge(std::slice::from_ref(&answer), true);
        assert_eq!(merged.len(), 1);
        assert_eq!(merged[0].0, NodeId(3));
        assert!(merged[0].1.public_key.is_some());
        // Unkeyed: a member without a key is fine, an unreadable key still is not.
        let ids: Vec<u64> = merge(&[answer], false).iter().map(|(id, _)| id.0).collect();
        assert_eq!(ids, vec![1, 3]);
    }

    #[test]
    fn at_most_learned_max_ids_are_taken() {
        let many: Vec<MemberInfo> = (0..100).map(|id| member(id, 7000, None)).collect();
        assert_eq!(merge(&[many], false).len(), LEARNED_MAX);
    }
}
