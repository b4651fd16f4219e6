//! Who is in the cluster: the voters that elect and commit, and the learners that only
//! receive the log.
//!
//! A membership is plain data that travels in the log (`EntryPayload::Membership`) and in
//! snapshots (`SnapshotMeta::membership`), so every node learns every change in log order
//! and a restarted node finds the one it acted on in its own storage. The core never looks
//! inside a member's `info`: the node layer puts the addresses and key there.
//!
//! Changes are single-server (Raft dissertation §4.1): two consecutive memberships differ by
//! one member at most, and any majority of the old voters overlaps any majority of the new
//! ones. [`Membership::change_from`] checks that a proposed membership is such a step.

use super::message::NodeId;
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// One member of the cluster.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The member's id: never reused once removed (see [`Membership::retired`]).
    pub id: NodeId,
    /// A voter elects leaders and counts toward commitment; a learner only receives the log.
    pub voter: bool,
    /// Opaque to the core: the node layer encodes the member's addresses (and public key)
    /// here.
    pub info: Bytes,
}

/// The members of the cluster at some point of the log.
///
/// Invariants (checked by [`Membership::validate`]): `members` sorted by id without
/// duplicates; no id both a member and retired. An empty membership (no members at all) is
/// what an old snapshot that predates membership changes carries: "not known here".
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Membership {
    /// Every member, voter or learner, sorted by id.
    pub members: Vec<Member>,
    /// Every id ever removed from the cluster, sorted: never reused.
    pub retired: Vec<NodeId>,
}

/// Why a proposed membership is not a valid next step from the current one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChangeKind {
    /// A new learner joins.
    AddLearner(NodeId),
    /// A learner becomes a voter.
    Promote(NodeId),
    /// A voter becomes a learner.
    Demote(NodeId),
    /// A member (voter or learner) leaves.
    Remove(NodeId),
    /// Only the members' `info` changed (or nothing at all).
    InfoOnly,
}

impl Membership {
    /// A membership of these voters, each with empty `info` (tests, and clusters whose
    /// node layer keeps addresses elsewhere).
    pub fn from_voters(voters: impl IntoIterator<Item = NodeId>) -> Membership {
        let mut membership = Membership {
            members: voters
                .into_iter()
                .map(|id| Member {
                    id,
                    voter: true,
                    info: Bytes::new(),
                })
                .collect(),
            retired: Vec::new(),
        };
        membership.normalize();
        membership
    }

    /// Sorts members and retired ids and drops duplicates (the first member of an id wins).
    pub fn normalize(&mut self) {
        self.members.sort_by_key(|member| member.id);
        self.members.dedup_by_key(|member| member.id);
        self.retired.sort();
        self.retired.dedup();
    }

    /// Whether the invariants hold: members sorted and unique, no member retired.
    pub fn validate(&self) -> Result<(), String> {
        if self.members.windows(2).any(|pair| pair[0].id >= pair[1].id) {
            return Err("members not sorted by id or duplicated".to_string());
        }
        if self.retired.windows(2).any(|pair| pair[0] >= pair[1]) {
            return Err("retired ids not sorted or duplicated".to_string());
        }
        if let Some(member) = self.members.iter().find(|m| self.is_retired(m.id)) {
            return Err(format!("member {} is retired", member.id));
        }
        Ok(())
    }

    /// [`Membership::validate`], and at least one voter unless the membership is empty
    /// ("not known here"): what every membership the cluster ever writes satisfies, so the
    /// check for one that arrives from the network or is read back from disk. A membership
    /// that fails it must never reach the core: its lookups assume sorted, unique ids, and
    /// a membership without a voter can never elect a leader again.
    pub fn check_well_formed(&self) -> Result<(), String> {
        self.validate()?;
        if !self.members.is_empty() && self.voter_count() == 0 {
            return Err("members but no voter".to_string());
        }
        Ok(())
    }

    /// Whether nothing is known (no members): see the type's docs.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// The voters' ids, sorted.
    pub fn voters(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|member| member.voter)
            .map(|member| member.id)
            .collect()
    }

    /// The learners' ids, sorted.
    pub fn learners(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|member| !member.voter)
            .map(|member| member.id)
            .collect()
    }

    /// Every member's id, sorted.
    pub fn ids(&self) -> Vec<NodeId> {
        self.members.iter().map(|member| member.id).collect()
    }

    /// The member `id`, if it is one.
    pub fn get(&self, id: NodeId) -> Option<&Member> {
        self.members
            .binary_search_by_key(&id, |member| member.id)
            .ok()
            .map(|position| &self.members[position])
    }

    /// Whether `id` is a member (voter or learner).
    pub fn contains(&self, id: NodeId) -> bool {
        self.get(id).is_some()
    }

    /// Whether `id` is a voter.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.get(id).is_some_and(|member| member.voter)
    }

    /// Whether `id` was removed once (and may never come back).
    pub fn is_retired(&self, id: NodeId) -> bool {
        self.retired.binary_search(&id).is_ok()
    }

    /// How many voters.
    pub fn voter_count(&self) -> usize {
        self.members.iter().filter(|member| member.voter).count()
    }

    /// How many voters make a majority (0 when there are no voters).
    pub fn quorum(&self) -> usize {
        match self.voter_count() {
            0 => 0,
            count => count / 2 + 1,
        }
    }

    /// Whether `ids` hold a majority of the voters (ids that are not voters do not count).
    pub fn is_quorum<'a>(&self, ids: impl IntoIterator<Item = &'a NodeId>) -> bool {
        let mut counted: Vec<NodeId> = ids
            .into_iter()
            .copied()
            .filter(|&id| self.is_voter(id))
            .collect();
        counted.sort();
        counted.dedup();
        self.voter_count() > 0 && counted.len() >= self.quorum()
    }

    /// Whether every majority of `self`'s voters overlaps every majority of `other`'s: true
    /// for any two memberships one single-server change apart, and what keeps two leaders
    /// out of one term while a change is in flight.
    pub fn majorities_overlap(&self, other: &Membership) -> bool {
        // Two majorities are disjoint iff some majority of `self` avoids a majority of
        // `other`. The worst case picks a majority of `self` inside as few of `other`'s
        // voters as possible.
        let mine = self.voters();
        let theirs = other.voters();
        if mine.is_empty() || theirs.is_empty() {
            return false;
        }
        let shared = mine.iter().filter(|id| theirs.contains(id)).count();
        let mine_only = mine.len() - shared;
        let theirs_only = theirs.len() - shared;
        // A majority of `self` using as few shared voters as possible takes
        // `max(0, quorum - mine_only)` of them; `other` then has `shared - that` shared
        // voters left plus its own: disjoint majorities exist iff that reaches its quorum.
        let shared_in_mine = self.quorum().saturating_sub(mine_only);
        let left_for_theirs = shared - shared_in_mine + theirs_only;
        left_for_theirs < other.quorum()
    }

    /// What single-server change turns `self` into `next`, or why it is not one: exactly
    /// one member added (as a learner), promoted, demoted or removed (other members' `info`
    /// unchanged), a removed member's id retired and retired ids never forgotten, an added
    /// id never retired before, and at least one voter left.
    pub fn change_from(&self, next: &Membership) -> Result<ChangeKind, String> {
        next.validate()?;
        if self.retired.iter().any(|id| !next.is_retired(*id)) {
            return Err("retired ids may not be forgotten".to_string());
        }
        if next.voter_count() == 0 {
            return Err("the change would leave no voter".to_string());
        }
        let mut kinds = Vec::new();
        for member in &self.members {
            match next.get(member.id) {
                None => {
                    if !next.is_retired(member.id) {
                        return Err(format!("removed member {} must be retired", member.id));
                    }
                    kinds.push(ChangeKind::Remove(member.id));
                }
                Some(after) if after.voter != member.voter => {
                    if after.info != member.info {
                        return Err(format!("member {} changed more than its role", member.id));
                    }
                    kinds.push(if after.voter {
                        ChangeKind::Promote(member.id)
                    } else {
                        ChangeKind::Demote(member.id)
                    });
                }
                Some(after) if after.info != member.info => {
                    return Err(format!("member {} changed its info", member.id));
                }
                Some(_) => {}
            }
        }
        for member in &next.members {
            if !self.contains(member.id) {
                if self.is_retired(member.id) {
                    return Err(format!("id {} was used before", member.id));
                }
                if member.voter {
                    return Err(format!("new member {} must join as a learner", member.id));
                }
                kinds.push(ChangeKind::AddLearner(member.id));
            }
        }
        let newly_retired = next
            .retired
            .iter()
            .filter(|id| !self.is_retired(**id))
            .filter(|id| !kinds.contains(&ChangeKind::Remove(**id)))
            .count();
        if newly_retired > 0 {
            return Err("only a removed member's id may be retired".to_string());
        }
        match kinds.len() {
            0 => Ok(ChangeKind::InfoOnly),
            1 => Ok(kinds.remove(0)),
            _ => Err(format!("more than one member changes: {kinds:?}")),
        }
    }

    /// `self` with `id` added as a learner.
    pub fn with_learner(&self, id: NodeId, info: Bytes) -> Membership {
        let mut next = self.clone();
        next.members.push(Member {
            id,
            voter: false,
            info,
        });
        next.normalize();
        next
    }

    /// `self` with `id`'s voter flag set to `voter` (unchanged if it is not a member).
    pub fn with_role(&self, id: NodeId, voter: bool) -> Membership {
        let mut next = self.clone();
        for member in &mut next.members {
            if member.id == id {
                member.voter = voter;
            }
        }
        next
    }

    /// `self` with `id` removed and retired.
    pub fn without(&self, id: NodeId) -> Membership {
        let mut next = self.clone();
        next.members.retain(|member| member.id != id);
        next.retired.push(id);
        next.normalize();
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(raw: &[u64]) -> Vec<NodeId> {
        raw.iter().map(|&id| NodeId(id)).collect()
    }

    #[test]
    fn quorum_counts_voters_only() {
        let membership =
            Membership::from_voters(ids(&[1, 2, 3])).with_learner(NodeId(4), Bytes::new());
        assert_eq!(membership.voters(), ids(&[1, 2, 3]));
        assert_eq!(membership.learners(), ids(&[4]));
        assert_eq!(membership.quorum(), 2);
        assert!(!membership.is_quorum(&ids(&[1, 4])));
        assert!(membership.is_quorum(&ids(&[1, 3])));
    }

    #[test]
    fn single_server_changes_are_recognized_and_others_refused() {
        let three = Membership::from_voters(ids(&[1, 2, 3]));
        let with_learner = three.with_learner(NodeId(4), Bytes::from_static(b"x"));
        assert_eq!(
            three.change_from(&with_learner),
            Ok(ChangeKind::AddLearner(NodeId(4)))
        );
        let promoted = with_learner.with_role(NodeId(4), true);
        assert_eq!(
            with_learner.change_from(&promoted),
            Ok(ChangeKind::Promote(NodeId(4)))
        );
        let removed = promoted.without(NodeId(1));
        assert_eq!(
            promoted.change_from(&removed),
            Ok(ChangeKind::Remove(NodeId(1)))
        );
        // Two at once, a voter added directly, a reused id, forgetting retired ids.
        assert!(three.change_from(&promoted).is_err());
        assert!(three
            .change_from(
                &three
                    .with_learner(NodeId(4), Bytes::new())
                    .with_role(NodeId(4), true)
            )
            .is_err());
        assert!(removed
            .change_from(&removed.with_learner(NodeId(1), Bytes::new()))
            .is_err());
        let mut forgot = removed.clone();
        forgot.retired.clear();
        assert!(removed.change_from(&forgot).is_err());
        // Never zero voters.
        let one = Membership::from_voters(ids(&[1]));
        assert!(one.change_from(&one.without(NodeId(1))).is_err());
        assert!(one.change_from(&one.with_role(NodeId(1), false)).is_err());
    }

    #[test]
    fn single_server_steps_keep_majorities_overlapping_and_bigger_steps_do_not() {
        let three = Membership::from_voters(ids(&[1, 2, 3]));
        let four = Membership::from_voters(ids(&[1, 2, 3, 4]));
        let two = Membership::from_voters(ids(&[1, 2]));
        let other_two = Membership::from_voters(ids(&[3, 4]));
        let five = Membership::from_voters(ids(&[1, 2, 3, 4, 5]));
        assert!(three.majorities_overlap(&four) && four.majorities_overlap(&three));
        assert!(three.majorities_overlap(&two) && two.majorities_overlap(&three));
        assert!(!two.majorities_overlap(&other_two));
        // {1,2} of three and {3,4,5} of five are both majorities.
        assert!(!three.majorities_overlap(&five));
        assert!(three.majorities_overlap(&three));
    }
}
