//! SIGHUP: the node reads its client list again (PROTOCOL.md §11 "Reload").
//!
//! Why its own piece: a reload must never hurt a running node. A file that no longer parses
//! leaves the list in force and says why in one log line; a good one is swapped in whole, so
//! the next request on every connection sees it. The signal thread calls it; the node loop
//! never waits for it.

use crate::config::clients::{ClientList, SharedClients};
use std::path::PathBuf;
use std::sync::Arc;

/// What a SIGHUP reloads (PROTOCOL.md §11 "Reload"): the node's client list, from its
/// config file. Only `clients` is read again; peer keys need a restart, so `peers_keyed` is
/// what the node started with.
pub(super) struct ClientReload {
    /// `None` when the node started without `clients`: its client port is plain, and only a
    /// restart can change that.
    pub clients: Option<Arc<SharedClients>>,
    pub path: PathBuf,
    pub peers_keyed: bool,
}

impl ClientReload {
    /// Handles one SIGHUP: swaps in the file's list if it is valid, keeps the old one if
    /// not. Returns the line to log and how loud.
    pub fn on_sighup(&self) -> (log::Level, String) {
        let path = self.path.display();
        let Some(shared) = &self.clients else {
            return (
                log::Level::Warn,
                "SIGHUP: nothing reloaded: this node started without \"clients\" and serves \
                 clients without keys; a restart is needed to list clients"
                    .to_string(),
            );
        };
        let old = shared.current();
        match shared.reload(&self.path, self.peers_keyed) {
            Ok(new) => (
                log::Level::Info,
                format!(
                    "SIGHUP: reloaded clients from {path}: {} listed{}",
                    new.len(),
                    changes(&old, &new)
                ),
            ),
            Err(error) => (
                log::Level::Error,
                format!(
                    "SIGHUP: clients not reloaded, the {} listed before stay: {error}",
                    old.len()
                ),
            ),
        }
    }
}

/// `; added a, b; removed c; changed d` between two lists, by name; empty if alike.
fn changes(old: &ClientList, new: &ClientList) -> String {
    let find = |list: &ClientList, name: &str| {
        list.clients()
            .iter()
            .find(|client| client.name == name)
            .cloned()
    };
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for client in new.clients() {
        match find(old, &client.name) {
            None => added.push(client.name.as_str()),
            Some(before) if before != *client => changed.push(client.name.as_str()),
            Some(_) => {}
        }
    }
    let removed: Vec<&str> = old
        .clients()
        .iter()
        .filter(|client| find(new, &client.name).is_none())
        .map(|client| client.name.as_str())
        .collect();
    let mut text = String::new();
    for (what, names) in [("added", added), ("removed", removed), ("changed", changed)] {
        if !names.is_empty() {
            text.push_str(&format!("; {what} {}", names.join(", ")));
        }
    }
    text
}

#[cfg(test)]
mod tests;
