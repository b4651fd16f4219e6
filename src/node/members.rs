//! The node layer's side of membership (PROTOCOL.md §12): what a member's `info` holds,
//! and the address book that follows the membership the core acts on.
//!
//! The core treats `Member::info` as opaque bytes; here it is a MessagePack array
//! `[ip, port, internal_port, public_key?]` (the key as 32 raw bytes). The initial members
//! get theirs from `config.json`; an added member's comes from its `member PUT`. A member
//! with empty `info` (a membership written before addresses were carried) falls back to
//! the config's address for its id.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::config::keys::{self, Key};
use crate::config::{Address, ClusterConfig};
use crate::protocol::{MemberAddress, MemberInfo};
use crate::raft::{Member, Membership, NodeId};

#[derive(Serialize, Deserialize)]
struct InfoWire {
    ip: String,
    port: u16,
    internal_port: u16,
    #[serde(with = "serde_bytes")]
    public_key: Option<Vec<u8>>,
}

/// A member's `info` for `address`.
pub fn encode_info(address: &Address) -> Bytes {
    let wire = InfoWire {
        ip: address.ip.clone(),
        port: address.port,
        internal_port: address.internal_port,
        public_key: address.public_key.map(|key| key.to_vec()),
    };
    Bytes::from(rmp_serde::to_vec(&wire).expect("strings, integers and bytes always encode"))
}

/// The address in a member's `info`; `None` when empty or unreadable.
pub fn decode_info(info: &[u8]) -> Option<Address> {
    if info.is_empty() {
        return None;
    }
    let wire: InfoWire = rmp_serde::from_slice(info).ok()?;
    let public_key = match wire.public_key {
        None => None,
        Some(bytes) => Some(Key::try_from(bytes.as_slice()).ok()?),
    };
    Some(Address {
        ip: wire.ip,
        port: wire.port,
        internal_port: wire.internal_port,
        public_key,
    })
}

/// The membership `config.json` describes: every address a voter, except this node when it
/// was started with `--join` (it waits for the leader to add it).
pub fn initial_membership(cluster: &ClusterConfig, me: NodeId, join: bool) -> Membership {
    let mut membership = Membership {
        members: cluster
            .addresses
            .iter()
            .enumerate()
            .map(|(index, address)| Member {
                id: NodeId(index as u64),
                voter: true,
                info: encode_info(address),
            })
            .filter(|member| !(join && member.id == me))
            .collect(),
        retired: Vec::new(),
    };
    membership.normalize();
    membership
}

/// Every member's address, as the membership the core acts on says.
#[derive(Clone, Debug, Default)]
pub struct AddressBook {
    addresses: BTreeMap<NodeId, Address>,
}

impl AddressBook {
    pub fn new(membership: &Membership, cluster: &ClusterConfig) -> AddressBook {
        let addresses = membership
            .members
            .iter()
            .filter_map(|member| {
                let address =
                    decode_info(&member.info).or_else(|| cluster.address(member.id).cloned())?;
                Some((member.id, address))
            })
            .collect();
        AddressBook { addresses }
    }

    pub fn get(&self, id: NodeId) -> Option<&Address> {
        self.addresses.get(&id)
    }

    /// Every member's id and address, in id order.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &Address)> {
        self.addresses.iter().map(|(id, address)| (*id, address))
    }

    /// Every member but `me`, with its internal endpoint: the peers to connect to.
    pub fn peers(&self, me: NodeId) -> Vec<(NodeId, String)> {
        self.addresses
            .iter()
            .filter(|(id, _)| **id != me)
            .map(|(id, address)| (*id, address.internal_endpoint()))
            .collect()
    }

    /// Every member's public key (the members that have one: all of them in a keyed
    /// cluster, where a `member PUT` without one is refused).
    pub fn keys(&self) -> Vec<(NodeId, Key)> {
        self.addresses
            .iter()
            .filter_map(|(id, address)| Some((*id, address.public_key?)))
            .collect()
    }

    /// The member (other than `except`) that already uses `address`'s client or internal
    /// port on its host, if any.
    pub fn port_in_use(&self, address: &Address, except: NodeId) -> Option<NodeId> {
        let host = canonical(&address.ip);
        self.addresses.iter().find_map(|(id, known)| {
            let same_host = canonical(&known.ip) == host;
            let ports = [known.port, known.internal_port];
            (*id != except
                && same_host
                && (ports.contains(&address.port) || ports.contains(&address.internal_port)))
            .then_some(*id)
        })
    }
}

fn canonical(host: &str) -> String {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.to_string(),
        Err(_) => host.to_ascii_lowercase(),
    }
}

/// A `member PUT`'s node as an [`Address`]; the error says what is wrong with its key.
pub fn address_of(member: &MemberAddress) -> Result<Address, String> {
    let public_key = match &member.public_key {
        None => None,
        Some(text) => {
            Some(keys::z85_decode(text).map_err(|error| format!("field `public_key`: {error}"))?)
        }
    };
    Ok(Address {
        ip: member.ip.clone(),
        port: member.port,
        internal_port: member.internal_port,
        public_key,
    })
}

/// The `member GET` list of `membership`.
pub fn list(membership: &Membership, book: &AddressBook) -> Vec<MemberInfo> {
    membership
        .members
        .iter()
        .filter_map(|member| {
            let address = book.get(member.id)?;
            Some(MemberInfo {
                address: MemberAddress {
                    id: member.id.0,
                    ip: address.ip.clone(),
                    port: address.port,
                    internal_port: address.internal_port,
                    public_key: address.public_key.as_ref().map(keys::z85_encode),
                },
                voter: member.voter,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_round_trips_with_and_without_a_key() {
        for public_key in [None, Some([7u8; 32])] {
            let address = Address {
                ip: "10.0.0.9".into(),
                port: 7000,
                internal_port: 7001,
                public_key,
            };
            assert_eq!(decode_info(&encode_info(&address)), Some(address));
        }
        assert_eq!(decode_info(b""), None);
        assert_eq!(decode_info(b"\xc1"), None);
    }
}
