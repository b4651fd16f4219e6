//! The commands that talk to a running cluster: `topic create|list`, `put`, `get`, `ack`,
//! `nack`, `touch`, `status` (and `consume`, in `consume.rs`). Each is one client call
//! (status: one round to every node; `put --batch`: one per batch; `ack`/`nack`: one per
//! 1,000 receipts) and one piece of output.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::json;

use super::{CliError, Command, GlobalOptions, MemberCommand, TopicCommand};
use crate::client::{
    Client, ClientError, ClientOptions, Delivery, FetchOptions, Fetched, MemberAddress, MemberInfo,
    NodeAddress, TopicDetail, TopicSettings, ATTEMPT_TIMEOUT_DEFAULT,
};
use crate::config::ClusterConfig;
use crate::protocol::{Payload, StatusReport, BATCH_ITEMS_MAX, BATCH_MESSAGE_BYTES_MAX};

pub(super) fn run(
    global: &GlobalOptions,
    command: &Command,
    stdout: &mut dyn Write,
    stdin: &mut dyn Read,
) -> Result<(), CliError> {
    let (options, from_config) = client_options(global)?;
    let mut client = Client::connect(options)?;
    let out = |stdout: &mut dyn Write, text: String| {
        stdout
            .write_all(text.as_bytes())
            .map_err(CliError::io("cannot write to stdout"))
    };
    match command {
        Command::Topic {
            command:
                TopicCommand::Create {
                    name,
                    max_deliveries,
                    dead_letter,
                },
        } => {
            let created = if max_deliveries.is_some() || dead_letter.is_some() {
                let settings = TopicSettings {
                    max_deliveries: *max_deliveries,
                    dead_letter: dead_letter.clone(),
                };
                client.create_topic_with(name, settings)?
            } else {
                client.create_topic(name)?
            };
            let text = if global.json {
                json!({"topic": name, "created": created}).to_string() + "\n"
            } else if created {
                format!("created topic '{name}'\n")
            } else {
                format!("topic '{name}' already exists\n")
            };
            out(stdout, text)
        }
        Command::Topic {
            command: TopicCommand::List { detail: true },
        } => {
            let details = client.list_topic_details()?;
            let text = if global.json {
                json!({ "topics": details.iter().map(detail_json).collect::<Vec<_>>() }).to_string()
                    + "\n"
            } else {
                details_table(&details)
            };
            out(stdout, text)
        }
        Command::Topic {
            command: TopicCommand::List { detail: false },
        } => {
            let topics = client.list_topics()?;
            let text = if global.json {
                json!({ "topics": topics }).to_string() + "\n"
            } else {
                topics.iter().map(|topic| format!("{topic}\n")).collect()
            };
            out(stdout, text)
        }
        Command::Put {
            topic, batch: true, ..
        } => {
            let (count, batches) = put_batches(&mut client, topic, stdin)?;
            if global.json {
                out(
                    stdout,
                    json!({"topic": topic, "success": true, "count": count, "batches": batches})
                        .to_string()
                        + "\n",
                )?;
            }
            Ok(())
        }
        Command::Put {
            topic,
            message: None,
            ..
        } => Err(CliError::Usage(format!(
            "put to '{topic}' needs a message or --batch"
        ))),
        Command::Put {
            topic,
            message: Some(message),
            batch: false,
        } => {
            let message = if message == "-" {
                let mut bytes = Vec::new();
                stdin
                    .read_to_end(&mut bytes)
                    .map_err(CliError::io("cannot read the message from stdin"))?;
                payload_from_bytes(bytes)
            } else {
                payload_from_argument(message)
            };
            client.put(topic, message)?;
            if global.json {
                out(
                    stdout,
                    json!({"topic": topic, "success": true}).to_string() + "\n",
                )?;
            }
            Ok(())
        }
        Command::Get {
            topic,
            raw,
            lease,
            wait,
            max,
        } if lease.is_some() || wait.is_some() || max.is_some() => {
            let options = FetchOptions {
                lease_ms: lease.as_ref().map(milliseconds),
                wait_ms: wait.as_ref().map(milliseconds),
                max: *max,
            };
            let fetched = client.fetch(topic, options)?;
            let bytes = if global.json {
                (fetched_json(topic, &fetched).to_string() + "\n").into_bytes()
            } else {
                fetched_output(fetched.clone(), *raw)
            };
            if fetched == Fetched::Empty {
                return Err(ClientError::Empty {
                    topic: topic.clone(),
                }
                .into());
            }
            stdout
                .write_all(&bytes)
                .map_err(CliError::io("cannot write to stdout"))
        }
        Command::Get { topic, raw, .. } => {
            let message = client.get(topic)?.ok_or_else(|| ClientError::Empty {
                topic: topic.clone(),
            })?;
            let bytes = if global.json {
                (get_json(topic, &message).to_string() + "\n").into_bytes()
            } else {
                message_output(message, *raw)
            };
            stdout
                .write_all(&bytes)
                .map_err(CliError::io("cannot write to stdout"))
        }
        Command::Ack { topic, receipts } | Command::Nack { topic, receipts } => {
            let ack = matches!(command, Command::Ack { .. });
            let stale = settle(&mut client, topic, receipts, ack)?;
            if global.json {
                let settled = receipts.len() - stale.len();
                let key = if ack { "acked" } else { "nacked" };
                out(
                    stdout,
                    json!({"topic": topic, key: settled, "stale": stale}).to_string() + "\n",
                )?;
            }
            if stale.is_empty() {
                Ok(())
            } else {
                Err(CliError::StaleReceipts {
                    topic: topic.clone(),
                    receipts: stale,
                })
            }
        }
        Command::Touch {
            topic,
            receipt,
            lease,
        } => {
            client.touch(topic, receipt, *lease)?;
            if global.json {
                out(
                    stdout,
                    json!({"topic": topic, "receipt": receipt, "success": true}).to_string() + "\n",
                )?;
            }
            Ok(())
        }
        Command::Consume {
            topic,
            lease,
            wait,
            exec,
            count,
            raw,
        } => {
            let plan = super::consume::Plan {
                topic,
                lease: *lease,
                wait: *wait,
                exec: exec.as_deref(),
                count: *count,
                raw: *raw,
                json: global.json,
            };
            super::consume::run(&mut client, &plan, stdout)
        }
        Command::Member { command } => member(global, command, &mut client, stdout),
        Command::Status => {
            let rows = client.status_all();
            // Voters and learners as the leader sees them; unknown when it cannot be asked.
            let members = client.list_members().ok();
            let rows: Vec<StatusRow> = rows
                .into_iter()
                .enumerate()
                .map(|(index, (address, result))| {
                    let config_id = from_config.then_some(index as u64);
                    let id = result.as_ref().ok().map(|status| status.id).or(config_id);
                    StatusRow {
                        config_id,
                        address,
                        membership: membership_of(members.as_deref(), id),
                        result,
                    }
                })
                .collect();
            let text = if global.json {
                status_json(&rows).to_string() + "\n"
            } else {
                status_table(&rows)
            };
            out(stdout, text)?;
            if rows.iter().all(|row| row.result.is_err()) {
                return Err(CliError::NoNodeAnswered);
            }
            Ok(())
        }
        Command::Cluster(_) | Command::Bench(_) | Command::Keygen { .. } | Command::Top(_) => {
            unreachable!("rrmq cluster, bench, keygen and top are dispatched in cli::run")
        }
    }
}

/// `rrmq member list|add|remove|replace`.
fn member(
    global: &GlobalOptions,
    command: &MemberCommand,
    client: &mut Client,
    stdout: &mut dyn Write,
) -> Result<(), CliError> {
    let mut out = |text: String| {
        stdout
            .write_all(text.as_bytes())
            .map_err(CliError::io("cannot write to stdout"))
    };
    match command {
        MemberCommand::List => {
            let members = client.list_members()?;
            let text = if global.json {
                json!({ "members": members.iter().map(member_json).collect::<Vec<_>>() })
                    .to_string()
                    + "\n"
            } else {
                members_table(&members)
            };
            out(text)
        }
        MemberCommand::Add { index } => {
            let new = new_member(global, *index)?;
            client.add_member(new.clone())?;
            out(if global.json {
                json!({"added": new.id, "success": true}).to_string() + "\n"
            } else {
                format!(
                    "node {} at {} is a voter\n",
                    new.id,
                    member_address_text(&new)
                )
            })
        }
        MemberCommand::Remove { id } => {
            client.remove_member(*id)?;
            out(if global.json {
                json!({"removed": id, "success": true}).to_string() + "\n"
            } else {
                format!("node {id} is no longer a member\n")
            })
        }
        MemberCommand::Replace { old_id, index } => {
            let new = new_member(global, *index)?;
            if new.id == *old_id {
                return Err(CliError::Usage(format!(
                    "member replace {old_id}: ids are never reused; give the new node a new \
                     INDEX in --config"
                )));
            }
            client.add_member(new.clone())?;
            if !global.json {
                out(format!(
                    "node {} at {} is a voter\n",
                    new.id,
                    member_address_text(&new)
                ))?;
            }
            client.remove_member(*old_id)?;
            out(if global.json {
                json!({"added": new.id, "removed": old_id, "success": true}).to_string() + "\n"
            } else {
                format!("node {old_id} is no longer a member\n")
            })
        }
    }
}

/// The node at `index` of `--config`, as a `member PUT` names it.
fn new_member(global: &GlobalOptions, index: u64) -> Result<MemberAddress, CliError> {
    let config = ClusterConfig::load(&global.config)?;
    let address = config.address(crate::raft::NodeId(index)).ok_or_else(|| {
        CliError::Usage(format!(
            "{}: no node at index {index} ({} addresses)",
            global.config.display(),
            config.node_count()
        ))
    })?;
    Ok(MemberAddress {
        id: index,
        ip: address.ip.clone(),
        port: address.port,
        internal_port: address.internal_port,
        public_key: address
            .public_key
            .as_ref()
            .map(crate::config::keys::z85_encode),
    })
}

fn member_address_text(member: &MemberAddress) -> String {
    crate::config::tcp_endpoint(&member.ip, member.port)
        .trim_start_matches("tcp://")
        .to_string()
}

fn member_json(member: &MemberInfo) -> serde_json::Value {
    let address = &member.address;
    let mut value = json!({
        "id": address.id,
        "ip": address.ip,
        "port": address.port,
        "internal_port": address.internal_port,
        "voter": member.voter,
    });
    if let Some(key) = &address.public_key {
        value["public_key"] = json!(key);
    }
    value
}

fn members_table(members: &[MemberInfo]) -> String {
    let mut rows = vec![vec![
        "ID".to_string(),
        "ADDRESS".to_string(),
        "INTERNAL".to_string(),
        "ROLE".to_string(),
    ]];
    for member in members {
        let address = &member.address;
        rows.push(vec![
            address.id.to_string(),
            member_address_text(address),
            address.internal_port.to_string(),
            if member.voter { "voter" } else { "learner" }.to_string(),
        ]);
    }
    table_lines(&rows)
        .into_iter()
        .map(|line| line + "\n")
        .collect()
}

/// Left-aligned columns two spaces apart, one line a row without its newline; a row may be
/// shorter than the header.
pub(super) fn table_lines(rows: &[Vec<String>]) -> Vec<String> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    rows.iter()
        .map(|row| {
            let line: String = row
                .iter()
                .enumerate()
                .map(|(column, cell)| format!("{cell:<width$}  ", width = widths[column]))
                .collect();
            line.trim_end().to_string()
        })
        .collect()
}

/// "voter", "learner", "removed" (not in the leader's list), or "?" when unknown.
fn membership_of(members: Option<&[MemberInfo]>, id: Option<u64>) -> String {
    match (members, id) {
        (Some(members), Some(id)) => members
            .iter()
            .find(|member| member.address.id == id)
            .map_or(
                "removed",
                |member| {
                    if member.voter {
                        "voter"
                    } else {
                        "learner"
                    }
                },
            )
            .to_string(),
        _ => "?".to_string(),
    }
}

/// The client options from `--node` or `--config`, and whether they came from a config (so a
/// node's position is its id).
pub(super) fn client_options(global: &GlobalOptions) -> Result<(ClientOptions, bool), CliError> {
    let (mut options, from_config) = match &global.node {
        Some(node) => (ClientOptions::new(vec![node.clone()]), false),
        None => {
            let config = ClusterConfig::load(&global.config)?;
            let options = ClientOptions::from_config(&config).map_err(|error| {
                CliError::Usage(format!("{}: {error}", global.config.display()))
            })?;
            (options, true)
        }
    };
    if let Some(file) = &global.key_file {
        let own = crate::config::keys::load_key_file(file)
            .map_err(|error| CliError::Key(format!("--key-file: {error}")))?;
        // The nodes' public keys come from the config, also with --node.
        let config = ClusterConfig::load(&global.config)?;
        options = options
            .with_key_pair(&config, own)
            .map_err(|error| CliError::Usage(format!("{}: {error}", global.config.display())))?;
    }
    options.deadline = global.timeout;
    options.hedge_after = global.hedge_after.0;
    options.attempt_timeout = global
        .attempt_timeout
        .unwrap_or(ATTEMPT_TIMEOUT_DEFAULT)
        .min(global.timeout);
    Ok((options, from_config))
}

/// A lease or wait on the wire: whole milliseconds, at least one.
pub(super) fn milliseconds(duration: &Duration) -> u64 {
    u64::try_from(duration.as_millis().max(1)).unwrap_or(u64::MAX)
}

/// `put --batch`: stdin's lines (without their `\n`) in order, in batches of at most
/// [`BATCH_ITEMS_MAX`] messages and [`BATCH_MESSAGE_BYTES_MAX`] bytes, one request each.
/// Returns the messages and batches put. A failed batch stops the rest; the error says how
/// many went before it.
fn put_batches(
    client: &mut Client,
    topic: &str,
    stdin: &mut dyn Read,
) -> Result<(u64, u64), CliError> {
    let mut input = Vec::new();
    stdin
        .read_to_end(&mut input)
        .map_err(CliError::io("cannot read messages from stdin"))?;
    if input.last() == Some(&b'\n') {
        input.pop();
    }
    let lines: Vec<&[u8]> = if input.is_empty() {
        Vec::new()
    } else {
        input.split(|byte| *byte == b'\n').collect()
    };
    let (mut count, mut batches) = (0u64, 0u64);
    let mut start = 0;
    while start < lines.len() {
        let mut end = start;
        let mut bytes = 0;
        while end < lines.len()
            && end - start < BATCH_ITEMS_MAX
            && (end == start || bytes + lines[end].len() <= BATCH_MESSAGE_BYTES_MAX)
        {
            bytes += lines[end].len();
            end += 1;
        }
        let messages = lines[start..end]
            .iter()
            .map(|line| payload_from_bytes(line.to_vec()))
            .collect();
        match client.put_batch(topic, messages) {
            Ok(put) => count += put,
            Err(error) => {
                if count > 0 {
                    eprintln!("rrmq: {count} messages were put before this batch failed");
                }
                return Err(error.into());
            }
        }
        batches += 1;
        start = end;
    }
    Ok((count, batches))
}

/// ACK or NACK: one receipt in the single form (a stale one is an error), several in lists
/// of at most [`BATCH_ITEMS_MAX`]. Returns the stale receipts of the lists.
fn settle(
    client: &mut Client,
    topic: &str,
    receipts: &[String],
    ack: bool,
) -> Result<Vec<String>, CliError> {
    if let [receipt] = receipts {
        if ack {
            client.ack(topic, receipt)?;
        } else {
            client.nack(topic, receipt)?;
        }
        return Ok(Vec::new());
    }
    let mut stale = Vec::new();
    for chunk in receipts.chunks(BATCH_ITEMS_MAX) {
        stale.extend(if ack {
            client.ack_many(topic, chunk)?
        } else {
            client.nack_many(topic, chunk)?
        });
    }
    Ok(stale)
}

/// A leased message's header line, then the message as `get` prints it.
pub(super) fn delivery_output(delivery: Delivery, raw: bool) -> Vec<u8> {
    let mut bytes = format!(
        "receipt {} deliveries {}\n",
        delivery.receipt, delivery.deliveries
    )
    .into_bytes();
    bytes.extend(message_output(delivery.message, raw));
    bytes
}

fn fetched_output(fetched: Fetched, raw: bool) -> Vec<u8> {
    match fetched {
        Fetched::Empty => Vec::new(),
        Fetched::Message(message) => message_output(message, raw),
        Fetched::Delivered(delivery) => delivery_output(delivery, raw),
        Fetched::Messages(messages) => messages
            .into_iter()
            .flat_map(|message| message_output(message, raw))
            .collect(),
        Fetched::Deliveries(deliveries) => deliveries
            .into_iter()
            .flat_map(|delivery| delivery_output(delivery, raw))
            .collect(),
    }
}

/// `get --json`: one message as `get` prints it, a leased one with `receipt` and
/// `deliveries`; with --max, `{"topic", "messages": [...]}` of those items.
fn fetched_json(topic: &str, fetched: &Fetched) -> serde_json::Value {
    let item = |message: &Payload| {
        let mut value = get_json(topic, message);
        if let Some(object) = value.as_object_mut() {
            object.remove("topic");
        }
        value
    };
    match fetched {
        Fetched::Empty => json!({"topic": topic, "messages": []}),
        Fetched::Message(message) => get_json(topic, message),
        Fetched::Delivered(delivery) => delivery_json(topic, delivery),
        Fetched::Messages(messages) => {
            json!({"topic": topic, "messages": messages.iter().map(item).collect::<Vec<_>>()})
        }
        Fetched::Deliveries(deliveries) => json!({
            "topic": topic,
            "messages": deliveries.iter().map(|delivery| {
                let mut value = delivery_json(topic, delivery);
                if let Some(object) = value.as_object_mut() {
                    object.remove("topic");
                }
                value
            }).collect::<Vec<_>>(),
        }),
    }
}

pub(super) fn delivery_json(topic: &str, delivery: &Delivery) -> serde_json::Value {
    let mut value = get_json(topic, &delivery.message);
    if let Some(object) = value.as_object_mut() {
        object.insert("receipt".into(), json!(delivery.receipt));
        object.insert("deliveries".into(), json!(delivery.deliveries));
    }
    value
}

fn detail_json(detail: &TopicDetail) -> serde_json::Value {
    json!({
        "name": detail.name,
        "ready": detail.ready,
        "leased": detail.leased,
        "max_deliveries": detail.max_deliveries,
        "dead_letter": detail.dead_letter,
        "discarded": detail.discarded,
    })
}

/// `topic list --detail`: one row per topic, `-` for an unset setting.
fn details_table(details: &[TopicDetail]) -> String {
    let header = [
        "NAME",
        "READY",
        "LEASED",
        "MAX DELIVERIES",
        "DEAD LETTER",
        "DISCARDED",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|cell| cell.to_string()).collect()];
    for detail in details {
        rows.push(vec![
            detail.name.clone(),
            detail.ready.to_string(),
            detail.leased.to_string(),
            detail
                .max_deliveries
                .map_or_else(|| "-".to_string(), |max| max.to_string()),
            detail
                .dead_letter
                .clone()
                .unwrap_or_else(|| "-".to_string()),
            detail.discarded.to_string(),
        ]);
    }
    table_lines(&rows)
        .into_iter()
        .map(|line| line + "\n")
        .collect()
}

/// Stdin is taken byte for byte: text if it is UTF-8 (so every client can read it), binary
/// otherwise.
fn payload_from_bytes(bytes: Vec<u8>) -> Payload {
    match String::from_utf8(bytes) {
        Ok(text) => Payload::Text(text),
        Err(error) => Payload::Binary(error.into_bytes()),
    }
}

fn payload_from_argument(argument: &std::ffi::OsStr) -> Payload {
    match argument.to_str() {
        Some(text) => Payload::Text(text.to_string()),
        None => {
            use std::os::unix::ffi::OsStrExt;
            Payload::Binary(argument.as_bytes().to_vec())
        }
    }
}

/// Text gets a newline like `echo` (unless `raw`); binary is written exactly.
pub(super) fn message_output(message: Payload, raw: bool) -> Vec<u8> {
    match message {
        Payload::Text(text) => {
            let mut bytes = text.into_bytes();
            if !raw {
                bytes.push(b'\n');
            }
            bytes
        }
        Payload::Binary(bytes) => bytes,
    }
}

/// `{"topic", "message", "binary"}`: a binary message is an array of byte values, as the
/// protocol's own JSON encoding carries it.
pub(super) fn get_json(topic: &str, message: &Payload) -> serde_json::Value {
    match message {
        Payload::Text(text) => json!({"topic": topic, "message": text, "binary": false}),
        Payload::Binary(bytes) => json!({"topic": topic, "message": bytes, "binary": true}),
    }
}

struct StatusRow {
    /// The node's position in the config, when the nodes came from one.
    config_id: Option<u64>,
    address: NodeAddress,
    /// "voter", "learner", "removed" or "?" (the leader could not be asked).
    membership: String,
    result: Result<StatusReport, ClientError>,
}

fn status_json(rows: &[StatusRow]) -> serde_json::Value {
    let nodes: Vec<serde_json::Value> = rows
        .iter()
        .map(|row| match &row.result {
            Ok(status) => json!({
                "id": status.id,
                "address": row.address.to_string(),
                "reachable": true,
                "role": status.role,
                "term": status.term,
                "leader": status.leader,
                "commit_index": status.commit_index,
                "last_applied": status.last_applied,
                "last_log_index": status.last_log_index,
                "fsync": status.fsync,
                "member": row.membership,
            }),
            Err(error) => json!({
                "id": row.config_id,
                "address": row.address.to_string(),
                "reachable": false,
                "error": error.to_string(),
            }),
        })
        .collect();
    json!({ "nodes": nodes })
}

fn status_table(rows: &[StatusRow]) -> String {
    let header = [
        "ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAST LOG", "LEADER", "MEMBER",
    ];
    let mut lines: Vec<(Vec<String>, Option<String>)> = Vec::with_capacity(rows.len() + 1);
    lines.push((header.iter().map(|cell| cell.to_string()).collect(), None));
    for row in rows {
        let line = match &row.result {
            Ok(status) => (
                vec![
                    status.id.to_string(),
                    row.address.to_string(),
                    status.role.clone(),
                    status.term.to_string(),
                    status.commit_index.to_string(),
                    status.last_applied.to_string(),
                    status.last_log_index.to_string(),
                    status
                        .leader
                        .map_or_else(|| "-".to_string(), |leader| leader.to_string()),
                    row.membership.clone(),
                ],
                None,
            ),
            Err(error) => {
                let mut cells = vec![
                    row.config_id
                        .map_or_else(|| "?".to_string(), |id| id.to_string()),
                    row.address.to_string(),
                    "unreachable".to_string(),
                ];
                cells.resize(header.len(), "-".to_string());
                (cells, Some(unreachable_reason(error)))
            }
        };
        lines.push(line);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|column| {
            lines
                .iter()
                .map(|(cells, _)| cells[column].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut table = String::new();
    for (cells, note) in &lines {
        let mut line = String::new();
        for (column, cell) in cells.iter().enumerate() {
            if column + 1 == cells.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  ", width = widths[column]));
            }
        }
        if let Some(note) = note {
            line.push_str(&format!("  ({note})"));
        }
        table.push_str(line.trim_end());
        table.push('\n');
    }
    let leaders: Vec<&StatusRow> = rows
        .iter()
        .filter(|row| matches!(&row.result, Ok(status) if status.role == "Leader"))
        .collect();
    match leaders.as_slice() {
        [] => table.push_str("no leader\n"),
        [leader] => {
            let status = leader.result.as_ref().expect("filtered on Ok");
            table.push_str(&format!(
                "leader: node {} at {} (term {})\n",
                status.id, leader.address, status.term
            ));
        }
        several => table.push_str(&format!(
            "{} nodes claim to lead (in different terms; the highest term wins)\n",
            several.len()
        )),
    }
    table
}

/// The short reason shown beside an unreachable node.
fn unreachable_reason(error: &ClientError) -> String {
    match error {
        ClientError::Timeout { last_problem, .. } => last_problem.clone(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PeerProgress;

    fn report(id: u64, role: &str, leader: Option<u64>) -> StatusReport {
        StatusReport {
            role: role.to_string(),
            term: 7,
            id,
            leader,
            commit_index: 42,
            last_applied: 41,
            last_log_index: 43,
            peers: Vec::<PeerProgress>::new(),
            fsync: "always".to_string(),
            wal_syncs: 0,
            wal_entries: 0,
            requests: 0,
        }
    }

    fn rows() -> Vec<StatusRow> {
        let address = |port| NodeAddress::new("127.0.0.1", port).expect("valid");
        vec![
            StatusRow {
                config_id: Some(0),
                address: address(8567),
                membership: "voter".into(),
                result: Ok(report(0, "Leader", Some(0))),
            },
            StatusRow {
                config_id: Some(1),
                address: address(9123),
                membership: "learner".into(),
                result: Ok(report(1, "Follower", Some(0))),
            },
            StatusRow {
                config_id: Some(2),
                address: address(8889),
                membership: "?".into(),
                result: Err(ClientError::Timeout {
                    operation: "status".into(),
                    elapsed: Duration::from_secs(2),
                    last_problem: "no reply from 127.0.0.1:8889 within 2.0s".into(),
                    outcome_unknown: false,
                }),
            },
        ]
    }

    #[test]
    fn status_table_has_a_row_per_node_and_names_the_leader() {
        let table = status_table(&rows());
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 5, "{table}");
        assert!(lines[0].starts_with("ID  ADDRESS"), "{table}");
        let cells: Vec<&str> = lines[1].split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "0",
                "127.0.0.1:8567",
                "Leader",
                "7",
                "42",
                "41",
                "43",
                "0",
                "voter"
            ],
            "{table}"
        );
        assert!(lines[2].ends_with("learner"), "{table}");
        assert!(lines[3].contains("unreachable"), "{table}");
        assert!(lines[3].contains("no reply from 127.0.0.1:8889"), "{table}");
        assert!(lines[3].starts_with("2 "), "{table}");
        assert_eq!(lines[4], "leader: node 0 at 127.0.0.1:8567 (term 7)");
        // Columns line up: the ROLE column starts at the same offset on every row.
        let offsets: Vec<Option<usize>> = [("ROLE", 0), ("Leader", 1), ("Follower", 2)]
            .iter()
            .map(|(word, line)| lines[*line].find(word))
            .collect();
        assert!(offsets.windows(2).all(|pair| pair[0] == pair[1]), "{table}");
    }

    #[test]
    fn status_json_marks_unreachable_nodes() {
        let value = status_json(&rows());
        let nodes = value["nodes"].as_array().expect("a list");
        assert_eq!(nodes.len(), 3);
        assert_eq!(nodes[0]["role"], "Leader");
        assert_eq!(nodes[0]["commit_index"], 42);
        assert_eq!(nodes[1]["leader"], 0);
        assert_eq!(nodes[1]["member"], "learner");
        assert_eq!(nodes[2]["reachable"], false);
        assert_eq!(nodes[2]["id"], 2);
        assert!(nodes[2]["error"]
            .as_str()
            .is_some_and(|text| text.contains("8889")));
    }

    #[test]
    fn messages_keep_their_bytes() {
        let binary = vec![0u8, 255, b'\n', 128];
        let cases: [(Payload, bool, Vec<u8>); 4] = [
            (Payload::Text("hi".into()), false, b"hi\n".to_vec()),
            (Payload::Text("hi\n".into()), true, b"hi\n".to_vec()),
            (Payload::Binary(binary.clone()), false, binary.clone()),
            (Payload::Binary(binary.clone()), true, binary.clone()),
        ];
        for (number, (message, raw, expected)) in cases.into_iter().enumerate() {
            assert_eq!(message_output(message, raw), expected, "case {number}");
        }
        assert_eq!(
            payload_from_bytes(b"text\n".to_vec()),
            Payload::Text("text\n".into())
        );
        assert_eq!(payload_from_bytes(binary.clone()), Payload::Binary(binary));
        assert_eq!(
            get_json("t", &Payload::Binary(vec![1, 2])),
            json!({"topic": "t", "message": [1, 2], "binary": true})
        );
    }

    #[test]
    fn delivery_output_and_json_carry_the_receipt_and_the_detail_table_lines_up() {
        let delivery = Delivery {
            message: Payload::Text("job".into()),
            receipt: "12.3".into(),
            deliveries: 2,
        };
        assert_eq!(
            delivery_output(delivery.clone(), false),
            b"receipt 12.3 deliveries 2\njob\n"
        );
        assert_eq!(
            fetched_json("t", &Fetched::Delivered(delivery.clone())),
            json!({"topic": "t", "message": "job", "binary": false, "receipt": "12.3",
                   "deliveries": 2})
        );
        assert_eq!(
            fetched_json("t", &Fetched::Deliveries(vec![delivery])),
            json!({"topic": "t", "messages": [{"message": "job", "binary": false,
                   "receipt": "12.3", "deliveries": 2}]})
        );
        assert_eq!(
            fetched_json("t", &Fetched::Messages(vec![Payload::Binary(vec![7])])),
            json!({"topic": "t", "messages": [{"message": [7], "binary": true}]})
        );
        let details = [
            TopicDetail {
                name: "orders".into(),
                ready: 12,
                leased: 3,
                max_deliveries: Some(5),
                dead_letter: Some("orders-dlq".into()),
                discarded: 0,
            },
            TopicDetail {
                name: "x".into(),
                ready: 0,
                leased: 0,
                max_deliveries: None,
                dead_letter: None,
                discarded: 4,
            },
        ];
        let table = details_table(&details);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["x", "0", "0", "-", "-", "4"],
            "{table}"
        );
        let column = |line: &str, word: &str| line.find(word);
        assert_eq!(column(lines[0], "LEASED"), column(lines[1], "3"), "{table}");
        assert_eq!(
            detail_json(&details[1]),
            json!({"name": "x", "ready": 0, "leased": 0, "max_deliveries": null,
                   "dead_letter": null, "discarded": 4})
        );
    }
}
