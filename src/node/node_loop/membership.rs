//! Membership requests (PROTOCOL.md §12): `member GET/PUT/DELETE` on the leader.

use super::NodeLoop;
use crate::protocol::{ErrorCode, Operation};
use crate::transport::client::Ticket;
use std::time::Instant;

impl NodeLoop {
    pub(super) fn on_member_request(
        &mut self,
        ticket: Ticket,
        operation: Operation,
        deadline: Instant,
    ) {
        let _ = (operation, deadline);
        self.fail(
            ticket,
            ErrorCode::Unavailable,
            "membership changes are not wired yet",
        );
    }
}
