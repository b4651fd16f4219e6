//! The client allow-list of `config.json` (PROTOCOL.md §11 "Clients", "Reload"): parsed and
//! validated into a [`ClientList`], held in a [`SharedClients`] that a SIGHUP swaps whole.
//!
//! Why here: the list comes from the config file and must be refused with one clear line
//! when it is wrong, at startup like every other setting, and again at each reload, where a
//! bad file must leave the running list untouched. The decision per request is
//! [`super::permissions::check`]; this module only says who is listed and with what rights.
//!
//! A client is found by its CURVE public key, the thing the ZAP handler sees, so that a
//! reload that removes or changes a key takes effect on the next request of a connection
//! that is already open.

use super::permissions::{check_intent, ClientRights, Forbidden, TopicPattern};
use super::{kind, ConfigError};
use crate::protocol::{Intent, Operation};
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// A CURVE public key: 32 bytes, written in `config.json` as 40 characters of Z85.
pub type PublicKey = super::keys::Key;

/// Decodes a 40-character Z85 CURVE key (the one decoder, `config::keys`); the error says
/// what is wrong, for a config line.
pub fn parse_z85_key(text: &str) -> Result<PublicKey, String> {
    super::keys::z85_decode(text).map_err(|error| error.to_string())
}

/// One listed client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Client {
    /// For logs and error messages; unique in the list.
    pub name: String,
    /// Its CURVE public key; unique in the list.
    pub public_key: PublicKey,
    /// The key as written, which is also what the transport can put in the ZAP `User-Id`.
    pub public_key_z85: String,
    pub rights: ClientRights,
}

/// The validated `clients` list: no two names or keys alike.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientList {
    clients: Vec<Client>,
    by_key: HashMap<PublicKey, usize>,
}

/// The fields a client entry may have; any other is refused, so a typo (`"consumes"`) does
/// not silently grant less, or more, than meant.
const CLIENT_FIELDS: [&str; 5] = ["name", "public_key", "produce", "consume", "admin"];

impl ClientList {
    /// Validates the value of `"clients"`. Each error is one line naming the entry and
    /// field, without the `path: ` prefix the caller adds.
    pub fn from_json(value: &serde_json::Value) -> Result<ClientList, String> {
        let entries = value
            .as_array()
            .ok_or_else(|| format!("\"clients\": expected a list, found {}", kind(value)))?;
        let mut list = ClientList::default();
        let mut names: HashMap<String, usize> = HashMap::new();
        for (number, entry) in entries.iter().enumerate() {
            let at = format!("clients[{number}]");
            let object = entry
                .as_object()
                .ok_or_else(|| format!("{at}: expected an object, found {}", kind(entry)))?;
            if let Some(unknown) = object
                .keys()
                .find(|key| !CLIENT_FIELDS.contains(&key.as_str()))
            {
                return Err(format!(
                    "{at}: unknown field {unknown:?} (expected {})",
                    CLIENT_FIELDS.join(", ")
                ));
            }
            let name = match object.get("name") {
                Some(serde_json::Value::String(name)) if !name.trim().is_empty() => name.clone(),
                Some(serde_json::Value::String(_)) => return Err(format!("{at}.name: empty")),
                Some(other) => {
                    return Err(format!(
                        "{at}.name: expected a string, found {}",
                        kind(other)
                    ))
                }
                None => return Err(format!("{at}: missing \"name\"")),
            };
            let public_key_z85 = match object.get("public_key") {
                Some(serde_json::Value::String(key)) => key.clone(),
                Some(other) => {
                    return Err(format!(
                        "{at}.public_key: expected a string, found {}",
                        kind(other)
                    ))
                }
                None => return Err(format!("{at}: missing \"public_key\"")),
            };
            let public_key = parse_z85_key(&public_key_z85)
                .map_err(|reason| format!("{at}.public_key: {reason}"))?;
            let produce = patterns(&at, "produce", object.get("produce"))?;
            let consume = patterns(&at, "consume", object.get("consume"))?;
            let admin = match object.get("admin") {
                None => false,
                Some(serde_json::Value::Bool(admin)) => *admin,
                Some(other) => {
                    return Err(format!(
                        "{at}.admin: expected true or false, found {}",
                        kind(other)
                    ))
                }
            };
            if let Some(first) = names.get(&name) {
                return Err(format!(
                    "duplicate client name {name:?} (clients[{first}] and clients[{number}])"
                ));
            }
            if let Some(first) = list.by_key.get(&public_key) {
                return Err(format!(
                    "duplicate public_key {public_key_z85} (clients[{first}] and clients[{number}])"
                ));
            }
            names.insert(name.clone(), number);
            list.by_key.insert(public_key, number);
            list.clients.push(Client {
                name,
                public_key,
                public_key_z85,
                rights: ClientRights {
                    produce,
                    consume,
                    admin,
                },
            });
        }
        Ok(list)
    }

    /// The listed client with this public key, if any: what the ZAP handler admits, and what
    /// each request's rights come from.
    pub fn by_key(&self, key: &PublicKey) -> Option<&Client> {
        self.by_key
            .get(key)
            .and_then(|&index| self.clients.get(index))
    }

    /// The listed client whose key is this Z85 text (a ZAP `User-Id`), if any.
    pub fn by_z85(&self, key: &str) -> Option<&Client> {
        parse_z85_key(key).ok().and_then(|key| self.by_key(&key))
    }

    /// What the client port does with `operation` from the connection whose ZAP `User-Id`
    /// is `user_id` (the client's Z85 public key): the one call per request, made before
    /// anything else looks at the request (PROTOCOL.md §11).
    pub fn access(&self, user_id: &str, operation: &Operation) -> Access<'_> {
        self.access_intent(user_id, operation.intent())
    }

    /// [`ClientList::access`] on what a request names before validation
    /// ([`crate::protocol::ParsedRequest::head`]): the client port's way, so `FORBIDDEN`
    /// comes before any other verdict on the request.
    pub fn access_intent(&self, user_id: &str, intent: Intent<'_>) -> Access<'_> {
        match self.by_z85(user_id) {
            None => Access::Unlisted,
            Some(client) => match check_intent(&client.rights, intent) {
                Ok(()) => Access::Allowed(client),
                Err(refusal) => Access::Forbidden(client, refusal),
            },
        }
    }

    pub fn clients(&self) -> &[Client] {
        &self.clients
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// The decision on one request of a keyed client port.
#[derive(Debug, PartialEq, Eq)]
pub enum Access<'a> {
    /// Listed, and the request is within its rights: serve it.
    Allowed(&'a Client),
    /// Listed, but the request is outside its rights: answer `FORBIDDEN` (v1: `success:
    /// false`) and change nothing.
    Forbidden(&'a Client, Forbidden),
    /// Not (or no longer, after a reload) listed: no reply, as for any unknown key.
    Unlisted,
}

/// A `produce` or `consume` list: missing means none.
fn patterns(
    at: &str,
    field: &str,
    value: Option<&serde_json::Value>,
) -> Result<Vec<TopicPattern>, String> {
    let Some(value) = value else {
        return Ok(Vec::new());
    };
    let items = value
        .as_array()
        .ok_or_else(|| format!("{at}.{field}: expected a list, found {}", kind(value)))?;
    items
        .iter()
        .enumerate()
        .map(|(number, item)| {
            let text = item.as_str().ok_or_else(|| {
                format!(
                    "{at}.{field}[{number}]: expected a string, found {}",
                    kind(item)
                )
            })?;
            TopicPattern::parse(text)
                .map_err(|reason| format!("{at}.{field}[{number}]: {text:?}: {reason}"))
        })
        .collect()
}

/// PROTOCOL.md §11: `clients` is allowed only when the peer addresses carry public keys
/// (a client port with CURVE needs the node's own key pair). `peers_keyed` says whether they
/// do; `clients` is whether the file has a `clients` list at all (an empty one included).
pub fn check_clients_allowed(clients: bool, peers_keyed: bool) -> Result<(), String> {
    if clients && !peers_keyed {
        Err("\"clients\" needs the addresses to carry \"public_key\" (PROTOCOL.md §11)".to_string())
    } else {
        Ok(())
    }
}

/// Reads `clients` again from the config file at `path`, for a SIGHUP (PROTOCOL.md §11
/// "Reload"). Only `clients` is read: peer addresses and keys need a restart, so
/// `peers_keyed` is the running node's, not the file's. A file without `clients` gives an
/// empty list, which admits nobody: a running node whose client port speaks CURVE cannot
/// turn plain, and that also needs a restart. On an error the caller keeps its list.
pub fn reload_clients(path: &Path, peers_keyed: bool) -> Result<ClientList, ConfigError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Unreadable {
        path: shown.clone(),
        source,
    })?;
    let value: serde_json::Value =
        serde_json::from_str(&text).map_err(|source| ConfigError::InvalidJson {
            path: shown.clone(),
            source,
        })?;
    let invalid = |reason: String| ConfigError::Invalid {
        path: shown.clone(),
        reason,
    };
    let object = value
        .as_object()
        .ok_or_else(|| invalid(format!("expected a JSON object, found {}", kind(&value))))?;
    let Some(clients) = object.get("clients") else {
        return Ok(ClientList::default());
    };
    check_clients_allowed(true, peers_keyed).map_err(invalid)?;
    ClientList::from_json(clients).map_err(invalid)
}

/// The running node's client list, shared by the threads that check requests and swapped
/// whole by a reload: a reader gets one consistent list (an `Arc`) for as long as it holds
/// it, and the next request after a swap sees the new one.
#[derive(Debug, Default)]
pub struct SharedClients {
    current: RwLock<Arc<ClientList>>,
}

impl SharedClients {
    pub fn new(list: ClientList) -> SharedClients {
        SharedClients {
            current: RwLock::new(Arc::new(list)),
        }
    }

    /// The list now in force. Cheap (one `Arc` clone under a read lock held for no longer).
    pub fn current(&self) -> Arc<ClientList> {
        // A writer cannot panic halfway through a swap, so a poisoned lock still holds a
        // whole list.
        match self.current.read() {
            Ok(guard) => Arc::clone(&guard),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts `list` in force for every later [`SharedClients::current`]; returns the old one.
    pub fn replace(&self, list: ClientList) -> Arc<ClientList> {
        let new = Arc::new(list);
        match self.current.write() {
            Ok(mut guard) => std::mem::replace(&mut *guard, new),
            Err(poisoned) => std::mem::replace(&mut *poisoned.into_inner(), new),
        }
    }

    /// Reloads from `path` ([`reload_clients`]) and swaps the list in if it is valid; on an
    /// error the list in force stays and the error is returned for the log.
    pub fn reload(&self, path: &Path, peers_keyed: bool) -> Result<Arc<ClientList>, ConfigError> {
        let list = reload_clients(path, peers_keyed)?;
        self.replace(list);
        Ok(self.current())
    }
}

#[cfg(test)]
mod tests;
