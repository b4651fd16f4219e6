//! The commands that talk to a running cluster: `topic create|list`, `put`, `get`, `status`.
//! Each is one client call (status: one round to every node) and one piece of output.

use std::io::{Read, Write};

use serde_json::json;

use super::{CliError, Command, GlobalOptions, TopicCommand};
use crate::client::{Client, ClientError, ClientOptions, NodeAddress, ATTEMPT_TIMEOUT_DEFAULT};
use crate::config::ClusterConfig;
use crate::protocol::{Payload, StatusReport};

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
            command: TopicCommand::Create { name },
        } => {
            let created = client.create_topic(name)?;
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
            command: TopicCommand::List,
        } => {
            let topics = client.list_topics()?;
            let text = if global.json {
                json!({ "topics": topics }).to_string() + "\n"
            } else {
                topics.iter().map(|topic| format!("{topic}\n")).collect()
            };
            out(stdout, text)
        }
        Command::Put { topic, message } => {
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
        Command::Get { topic, raw } => {
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
        Command::Status => {
            let rows = client.status_all();
            let rows: Vec<StatusRow> = rows
                .into_iter()
                .enumerate()
                .map(|(index, (address, result))| StatusRow {
                    config_id: from_config.then_some(index as u64),
                    address,
                    result,
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
        Command::Cluster(_) | Command::Bench(_) | Command::Keygen { .. } => {
            unreachable!("rrmq cluster, bench and keygen are dispatched in cli::run")
        }
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
fn message_output(message: Payload, raw: bool) -> Vec<u8> {
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
fn get_json(topic: &str, message: &Payload) -> serde_json::Value {
    match message {
        Payload::Text(text) => json!({"topic": topic, "message": text, "binary": false}),
        Payload::Binary(bytes) => json!({"topic": topic, "message": bytes, "binary": true}),
    }
}

struct StatusRow {
    /// The node's position in the config, when the nodes came from one.
    config_id: Option<u64>,
    address: NodeAddress,
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
        "ID", "ADDRESS", "ROLE", "TERM", "COMMIT", "APPLIED", "LAST LOG", "LEADER",
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
    use std::time::Duration;

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
        }
    }

    fn rows() -> Vec<StatusRow> {
        let address = |port| NodeAddress::new("127.0.0.1", port).expect("valid");
        vec![
            StatusRow {
                config_id: Some(0),
                address: address(8567),
                result: Ok(report(0, "Leader", Some(0))),
            },
            StatusRow {
                config_id: Some(1),
                address: address(9123),
                result: Ok(report(1, "Follower", Some(0))),
            },
            StatusRow {
                config_id: Some(2),
                address: address(8889),
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
            ["0", "127.0.0.1:8567", "Leader", "7", "42", "41", "43", "0"],
            "{table}"
        );
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
}
