//! What a listed client may do (PROTOCOL.md §11 "Clients"): its rights, the topic patterns
//! they are written in, and [`check`], the one decision per request.
//!
//! Why pure and apart: the transport asks it for every request of a keyed client port, before
//! anything else looks at the request, and a mistake here is a hole. So it takes a
//! [`ClientRights`] and an [`Operation`] and nothing else (no sockets, no clock, no config
//! file), and its tests can be tables. It lives at the config level because it needs the
//! protocol's [`Operation`] and is built from `config.json`; the raft core and the queue know
//! nothing of clients.

use crate::protocol::{ErrorCode, ErrorInfo, Intent, Operation};
use std::fmt;

/// A topic name or a prefix, as written in a client's `produce` or `consume` list. Matched
/// exactly and case-sensitively; a trailing `*` matches any suffix, the empty one included,
/// so `*` alone matches every topic. A `*` anywhere else is refused when parsing, so a
/// pattern never means something its writer did not see.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TopicPattern {
    /// Exactly this topic.
    Exact(String),
    /// Every topic that starts with this prefix (the pattern without its `*`).
    Prefix(String),
}

impl TopicPattern {
    /// Parses one pattern; the error says what is wrong with it, without the pattern itself
    /// (the caller names where it was).
    pub fn parse(text: &str) -> Result<TopicPattern, String> {
        let (body, wildcard) = match text.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (text, false),
        };
        if body.contains('*') {
            return Err("a '*' is allowed only at the end".to_string());
        }
        if wildcard {
            Ok(TopicPattern::Prefix(body.to_string()))
        } else if body.is_empty() {
            Err("empty (write \"*\" for every topic)".to_string())
        } else {
            Ok(TopicPattern::Exact(body.to_string()))
        }
    }

    pub fn matches(&self, topic: &str) -> bool {
        match self {
            TopicPattern::Exact(name) => name == topic,
            TopicPattern::Prefix(prefix) => topic.starts_with(prefix.as_str()),
        }
    }
}

impl fmt::Display for TopicPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TopicPattern::Exact(name) => f.write_str(name),
            TopicPattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// One listed client's rights, as `config.json` gives them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClientRights {
    /// Topics it may PUT messages to.
    pub produce: Vec<TopicPattern>,
    /// Topics it may GET messages from (and, once they exist, ACK, NACK and TOUCH).
    pub consume: Vec<TopicPattern>,
    /// Whether it may create topics (and, once they exist, change the membership).
    pub admin: bool,
}

impl ClientRights {
    pub fn may_produce(&self, topic: &str) -> bool {
        self.produce.iter().any(|pattern| pattern.matches(topic))
    }

    pub fn may_consume(&self, topic: &str) -> bool {
        self.consume.iter().any(|pattern| pattern.matches(topic))
    }
}

/// The right a refused request lacked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Right {
    Produce,
    Consume,
    Admin,
}

impl Right {
    pub fn as_str(self) -> &'static str {
        match self {
            Right::Produce => "produce",
            Right::Consume => "consume",
            Right::Admin => "admin",
        }
    }
}

/// A request outside the client's rights: answered `FORBIDDEN` (v1: `{"success": false}`),
/// and nothing changes. `Display` is the reply's message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", describe(.right, .topic.as_deref()))]
pub struct Forbidden {
    pub right: Right,
    /// The topic the request named, if it named one.
    pub topic: Option<String>,
}

impl From<Forbidden> for ErrorInfo {
    /// The reply's error: code `FORBIDDEN` (v1 replies say only `success: false`).
    fn from(refusal: Forbidden) -> ErrorInfo {
        ErrorInfo::new(ErrorCode::Forbidden, refusal.to_string())
    }
}

fn describe(right: &Right, topic: Option<&str>) -> String {
    match topic {
        Some(topic) => format!("this client may not {} topic {topic:?}", right.as_str()),
        None => format!("this client lacks the {} right", right.as_str()),
    }
}

/// Whether `client` may make the request `operation`. Rights are checked before anything
/// else in the request (PROTOCOL.md §11), so the caller asks this first and answers a refusal
/// with `FORBIDDEN` without looking further.
///
/// Every operation decides here, with no catch-all arm: a new operation does not compile
/// until someone says which right it needs.
///
/// - message PUT (batches too): `produce` on its topic; message GET in every form, ACK,
///   NACK, TOUCH: `consume` on its topic.
/// - topic PUT (create): `admin`. A topic's name says nothing of who may create it: creating
///   `orders-x` with produce rights on `orders*` is still refused.
/// - topic GET (list), `status`, `stats`: any listed client. Topic names are not secret from
///   a listed client (PROTOCOL.md §11), and `stats` says no more than counts and a digest.
/// - `fault` (tests only, and answered only by a node started with `--fault-injection`):
///   `admin`, since it partitions the cluster.
/// - `member PUT` and `member DELETE`: `admin` (PROTOCOL.md §11); `member GET`: any listed
///   client, like `status`.
pub fn check(client: &ClientRights, operation: &Operation) -> Result<(), Forbidden> {
    check_intent(client, operation.intent())
}

/// [`check`] on what a request names before it is validated
/// ([`crate::protocol::ParsedRequest::head`]), which is how the client port asks, so a
/// refusal comes before any other verdict on the request.
pub fn check_intent(client: &ClientRights, intent: Intent<'_>) -> Result<(), Forbidden> {
    let refuse = |right: Right, topic: Option<&str>| {
        Err(Forbidden {
            right,
            topic: topic.map(str::to_string),
        })
    };
    match intent {
        Intent::Put { topic } => {
            if client.may_produce(topic) {
                Ok(())
            } else {
                refuse(Right::Produce, Some(topic))
            }
        }
        Intent::Get { topic } => {
            if client.may_consume(topic) {
                Ok(())
            } else {
                refuse(Right::Consume, Some(topic))
            }
        }
        Intent::CreateTopic { topic } => {
            if client.admin {
                Ok(())
            } else {
                refuse(Right::Admin, Some(topic))
            }
        }
        Intent::Fault | Intent::ChangeMembers => {
            if client.admin {
                Ok(())
            } else {
                refuse(Right::Admin, None)
            }
        }
        Intent::ListTopics | Intent::Status | Intent::Stats | Intent::ListMembers => Ok(()),
    }
}

#[cfg(test)]
mod tests;
