//! The `rrmq` command: an operator's and a script's way into a cluster.
//!
//! Why it lives in the library: `bin/rrmq.rs` only calls [`main`], so everything here can be
//! tested without spawning processes, and the argument definitions (clap derive) sit next to
//! the code that uses them.
//!
//! What it owns: argument parsing, turning [`crate::client`] results into output (plain text
//! for people, `--json` for scripts), one-line error messages on stderr, and the exit codes
//! below. `rrmq cluster` lives in the `cluster` module, the benchmark, `rrmq bench`, in
//! `bench`; both start local clusters with [`launcher`], as the end-to-end tests do.
//!
//! What it must not do: retry, find leaders or touch sockets itself: that is the client's
//! job. The one exception is the benchmark's load generator, which drives hundreds of
//! simulated clients from one thread (the blocking client serves one call per thread); it
//! follows the client's retry rules exactly, so it sees the same behaviour.

mod bench;
mod cluster;
mod commands;
mod consume;
mod duration;
pub mod launcher;
mod top;

pub use bench::{parse_size, BenchArgs};
pub use cluster::ClusterArgs;
pub use duration::parse_duration;
pub use top::TopArgs;

use std::ffi::OsString;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::client::{ClientError, NodeAddress};
use crate::config::ConfigError;

/// Success.
pub const EXIT_OK: u8 = 0;
/// An error: bad config, a refused request (bad request, too large), a transport failure.
pub const EXIT_ERROR: u8 = 1;
/// Bad command-line usage (clap's code).
pub const EXIT_USAGE: u8 = 2;
/// Not found: no such topic, or `get` on an empty topic.
pub const EXIT_NOT_FOUND: u8 = 3;
/// Unavailable: no leader or no quorum before the timeout, or no node answered. For `put`,
/// `get` and `topic create` the outcome is then unknown.
pub const EXIT_UNAVAILABLE: u8 = 4;
/// Stale receipt: `ack`, `nack` or `touch` named a lease that ended, was settled, or never
/// existed; for a list, at least one receipt was refused (the others took effect).
pub const EXIT_STALE: u8 = 5;

const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success
  1  error: unreadable config, request refused (bad request, too large), transport failure
  2  usage error
  3  not found: no such topic, or `get` on an empty topic (nothing is printed to stdout)
  4  unavailable: no leader, no quorum or no reply before --timeout; for `put`, `get` and
     `topic create` the outcome is then unknown (the request may or may not have been applied);
     `member add|remove|replace`: also another membership change in progress
  5  stale receipt: `ack`, `nack` or `touch` named a lease that ended, was already settled or
     never existed (nothing changed for it; the message may go to another consumer)

Errors are one line on stderr, starting with `rrmq: `.";

/// rrmq: the command-line client of an rrmq cluster, and a local cluster launcher
///
/// Talks to the cluster described by --config (or to the node given with --node), finding
/// the leader and retrying safely: a retried put or get takes effect at most once.
#[derive(Debug, Parser)]
#[command(name = "rrmq", version, after_help = EXIT_STATUS_HELP)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOptions,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, clap::Args)]
pub struct GlobalOptions {
    /// The cluster config (PROTOCOL.md §1)
    #[arg(
        long,
        global = true,
        value_name = "PATH",
        default_value = "config.json"
    )]
    pub config: PathBuf,
    /// Talk to this node instead of the nodes of --config; leader hints lead to the others
    #[arg(long, global = true, value_name = "HOST:PORT")]
    pub node: Option<NodeAddress>,
    /// How long a command may take in all, retries included (e.g. 10s, 500ms, 1.5)
    #[arg(long, global = true, value_name = "DURATION", default_value = "10s",
          value_parser = parse_duration)]
    pub timeout: Duration,
    /// How long to wait for one node's reply before trying another [default: 2s, at most
    /// --timeout]
    #[arg(long, global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub attempt_timeout: Option<Duration>,
    /// While the node a call waits on is silent this long, send the same request (same
    /// session key, applied at most once) to another node too, every 100 ms until someone
    /// answers; `off`: leave a silent node only after --attempt-timeout
    #[arg(long, global = true, value_name = "DURATION|off", default_value = "600ms",
          value_parser = parse_hedge_after)]
    pub hedge_after: HedgeAfter,
    /// Print results as JSON (one object on stdout) for scripts
    #[arg(long, global = true)]
    pub json: bool,
    /// This client's key file (`rrmq keygen`), for a cluster that lists clients: talk CURVE,
    /// expecting the nodes' public keys from --config
    #[arg(long, global = true, value_name = "FILE")]
    pub key_file: Option<PathBuf>,
}

/// `--hedge-after`: a delay, or `off` (`None`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HedgeAfter(pub Option<Duration>);

fn parse_hedge_after(text: &str) -> Result<HedgeAfter, String> {
    if text.trim() == "off" {
        return Ok(HedgeAfter(None));
    }
    parse_duration(text).map(|delay| HedgeAfter(Some(delay)))
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create or list topics
    Topic {
        #[command(subcommand)]
        command: TopicCommand,
    },
    /// Append a message to a topic
    Put {
        topic: String,
        /// The message; `-` reads it from stdin, byte for byte (text if it is UTF-8, binary
        /// otherwise)
        #[arg(required_unless_present = "batch")]
        message: Option<OsString>,
        /// Read messages from stdin, one per line (without its newline), and put them in
        /// order in batches of at most 1,000 messages and 4 MiB, one request each
        #[arg(long, conflicts_with = "message")]
        batch: bool,
    },
    /// Pop (or lease) the oldest message of a topic and print it
    ///
    /// Text is printed followed by a newline (unless --raw), binary as raw bytes. With
    /// --lease the message stays in the topic, invisible to others, until `rrmq ack` (or
    /// `nack`, or the lease ends); a line `receipt RECEIPT deliveries K` comes before it.
    /// Exits 3 with nothing on stdout when the topic is empty (after --wait).
    Get {
        topic: String,
        /// Print a text message exactly, without the trailing newline
        #[arg(long)]
        raw: bool,
        /// Lease the message for this long instead of popping it (e.g. 30s)
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        lease: Option<Duration>,
        /// Wait up to this long (at most 60s) for a message when the topic has none; the
        /// command may then take this much longer than --timeout
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        wait: Option<Duration>,
        /// Hand out up to N messages (1 to 1,000) in one request
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1000))]
        max: Option<u32>,
    },
    /// Acknowledge leased messages by receipt: they are deleted
    Ack {
        topic: String,
        #[arg(required = true)]
        receipts: Vec<String>,
    },
    /// Give leased messages back by receipt: visible again at once, in their place
    Nack {
        topic: String,
        #[arg(required = true)]
        receipts: Vec<String>,
    },
    /// Extend a lease: it now ends --lease from now
    Touch {
        topic: String,
        receipt: String,
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        lease: Duration,
    },
    /// Consume a topic: lease a message (waiting for one), print it (or run --exec), ACK
    ///
    /// With --exec, CMD runs in `sh -c` with the message on stdin; exit 0 ACKs, anything
    /// else NACKs (the message comes back, up to the topic's --max-deliveries). The lease is
    /// extended while CMD runs. Ctrl-C or SIGTERM stops after the message in hand.
    Consume {
        topic: String,
        /// How long each message is leased (extended while --exec runs)
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
        lease: Duration,
        /// How long each GET waits for a message (at most 60s)
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
        wait: Duration,
        /// Run this shell command per message, with the message on stdin
        #[arg(long, value_name = "CMD")]
        exec: Option<String>,
        /// Stop after this many messages (ACKed or NACKed)
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Print text messages without the trailing newline
        #[arg(long)]
        raw: bool,
    },
    /// Show every node: id, address, role, term, commit index, last applied, leader it sees,
    /// and whether it is a voter, a learner or no longer a member
    Status,
    /// A live view of every node: role, term, commit, applied, lag, requests/s, fsyncs/s,
    /// entries per fsync, and the busiest topics' depths
    ///
    /// Refreshes every --interval; `q` or Ctrl-C quits. When stdout is not a terminal, prints
    /// one timestamped line per node (and one for the topics) per refresh instead. A node that
    /// does not answer is shown as down.
    Top(TopArgs),
    /// List, add, remove or replace the cluster's members (PROTOCOL.md §12)
    ///
    /// One change at a time. `add` and `replace` wait until the new node has caught up and
    /// votes: give them a --timeout long enough for its catch-up (e.g. 60s). Start the new
    /// node first with `rrmq-node NEW_CONFIG INDEX --join`.
    Member {
        #[command(subcommand)]
        command: MemberCommand,
    },
    /// Run the nodes of --config as child processes until Ctrl-C or SIGTERM
    Cluster(ClusterArgs),
    /// Measure a running cluster (produce, consume, mixed), or a fresh local one (--matrix)
    Bench(Box<BenchArgs>),
    /// Write a new CURVE key file (mode 0600, never overwriting) and print its public key
    ///
    /// The file's first line is the 40-character Z85 secret key; give it to a node with
    /// --key-file, and put the printed public key in the node's `public_key` in the config.
    Keygen {
        /// Where to write the key file
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic (succeeds, saying so, if it already exists)
    Create {
        name: String,
        /// A leased message delivered N times that comes back once more is dead-lettered
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
        max_deliveries: Option<u64>,
        /// Where dead-lettered messages go (created if missing); without it they are
        /// discarded and counted
        #[arg(long, value_name = "TOPIC")]
        dead_letter: Option<String>,
    },
    /// List topics in creation order
    List {
        /// A table: name, ready, leased, max deliveries, dead letter, discarded
        #[arg(long)]
        detail: bool,
    },
}

/// `rrmq member ...`. `add` and `replace` read the new node from `--config NEW_CONFIG` at
/// INDEX (its id); the cluster is reached through that file's other addresses, so it must
/// list at least one current member.
#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List the members as the leader sees them: id, address, voter or learner
    List,
    /// Add the node at INDEX of --config: a learner first, a voter once caught up
    Add {
        /// The new node's position in --config's addresses: its id (never used before)
        index: u64,
    },
    /// Remove member ID (the leader too: it hands over once its removal is committed)
    Remove { id: u64 },
    /// Add the node at INDEX of --config, then remove OLD_ID
    Replace {
        old_id: u64,
        /// The new node's position in --config's addresses: its id
        index: u64,
    },
}

/// Why a command failed; `Display` is the one line printed after `rrmq: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Usage(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Every node asked was unreachable (`rrmq status`).
    #[error("no node answered")]
    NoNodeAnswered,
    #[error("{0}")]
    Cluster(String),
    /// A key file that cannot be written or read.
    #[error("{0}")]
    Key(String),
    /// `ack` or `nack` with several receipts: these were refused.
    #[error("stale receipts in topic '{topic}' (the leases ended, were settled, or never existed; the others took effect): {}", receipts.join(" "))]
    StaleReceipts {
        topic: String,
        receipts: Vec<String>,
    },
}

impl CliError {
    /// The documented exit code (see `EXIT_STATUS_HELP`).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(error) => match error {
                ClientError::NoSuchTopic { .. } | ClientError::Empty { .. } => EXIT_NOT_FOUND,
                ClientError::Timeout { .. }
                | ClientError::Unavailable { .. }
                | ClientError::SessionExpired { .. }
                | ClientError::ChangeInProgress { .. } => EXIT_UNAVAILABLE,
                ClientError::StaleReceipt { .. } => EXIT_STALE,
                _ => EXIT_ERROR,
            },
            CliError::NoNodeAnswered => EXIT_UNAVAILABLE,
            CliError::StaleReceipts { .. } => EXIT_STALE,
            CliError::Usage(_) => EXIT_USAGE,
            CliError::Config(_) | CliError::Io { .. } | CliError::Cluster(_) | CliError::Key(_) => {
                EXIT_ERROR
            }
        }
    }

    fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> CliError {
        let context = context.into();
        move |source| CliError::Io { context, source }
    }
}

/// The whole `rrmq` program: parses `std::env::args`, runs, prints, returns the exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = error.print();
                return ExitCode::from(u8::try_from(error.exit_code()).unwrap_or(EXIT_USAGE));
            }
            eprintln!("rrmq: {}", usage_line(&error));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let stdout = std::io::stdout();
    let mut stdout = stdout.lock();
    let result = run(&cli, &mut stdout, &mut std::io::stdin().lock());
    let flushed = stdout.flush();
    match result.and_then(|()| flushed.map_err(CliError::io("cannot write to stdout"))) {
        Ok(()) => ExitCode::from(EXIT_OK),
        Err(error) => {
            eprintln!("rrmq: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

/// clap's usage error as one line: its first paragraph without the `error: ` prefix.
fn usage_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let paragraph: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty())
        .collect();
    let message = paragraph.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    format!("{message} (see rrmq --help)")
}

/// Runs one parsed command, writing results to `stdout` and reading `put -` from `stdin`.
pub fn run(
    cli: &Cli,
    stdout: &mut dyn Write,
    stdin: &mut dyn std::io::Read,
) -> Result<(), CliError> {
    match &cli.command {
        Command::Cluster(args) => {
            if cli.global.node.is_some() {
                return Err(CliError::Usage(
                    "rrmq cluster starts the nodes of --config; --node does not apply".into(),
                ));
            }
            cluster::run(&cli.global.config, args, stdout)
        }
        Command::Bench(args) => bench::run(&cli.global, args, stdout),
        Command::Top(args) => {
            use std::io::IsTerminal;
            top::run(&cli.global, args, stdout, std::io::stdout().is_terminal())
        }
        Command::Keygen { file } => {
            let pair = crate::config::keys::write_new_key_file(file)
                .map_err(|error| CliError::Key(error.to_string()))?;
            writeln!(stdout, "{}", crate::config::keys::z85_encode(&pair.public))
                .map_err(CliError::io("cannot write to stdout"))
        }
        command => commands::run(&cli.global, command, stdout, stdin),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_parse_into_commands_and_bad_ones_are_usage_errors() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("rrmq").chain(args.iter().copied()))
        };
        let cli = parse(&[
            "--node",
            "127.0.0.1:9123",
            "put",
            "t",
            "-",
            "--timeout",
            "3s",
        ])
        .expect("valid arguments");
        assert_eq!(
            cli.global.node,
            Some(NodeAddress::new("127.0.0.1", 9123).expect("valid"))
        );
        assert_eq!(cli.global.timeout, Duration::from_secs(3));
        assert!(
            matches!(cli.command, Command::Put { ref topic, message: Some(ref message), batch: false }
            if topic == "t" && message == "-")
        );

        let cli = parse(&["topic", "list", "--json"]).expect("valid arguments");
        assert!(cli.global.json);
        assert_eq!(cli.global.config, PathBuf::from("config.json"));
        assert!(matches!(
            cli.command,
            Command::Topic {
                command: TopicCommand::List { detail: false }
            }
        ));

        // `--config` after `member add` names the new node's file (a global option).
        let cli = parse(&["member", "add", "--config", "new.json", "3"]).expect("valid");
        assert_eq!(cli.global.config, PathBuf::from("new.json"));
        assert!(matches!(
            cli.command,
            Command::Member {
                command: MemberCommand::Add { index: 3 }
            }
        ));
        let cli = parse(&["member", "replace", "1", "--config", "new.json", "4"]).expect("valid");
        assert!(matches!(
            cli.command,
            Command::Member {
                command: MemberCommand::Replace {
                    old_id: 1,
                    index: 4
                }
            }
        ));
        assert!(parse(&["member", "remove", "x"]).is_err());

        let bad: [&[&str]; 8] = [
            &["put", "t"],
            &["put", "t", "m", "--batch"],
            &["get", "t", "--max", "0"],
            &["ack", "t"],
            &["--node", "nonsense", "status"],
            &["--timeout", "soon", "status"],
            &["frobnicate"],
            &["cluster", "--fsync", "sometimes"],
        ];
        for (number, args) in bad.iter().enumerate() {
            let error = parse(args).expect_err(&format!("case {number}: {args:?} accepted"));
            assert_eq!(error.exit_code(), i32::from(EXIT_USAGE), "case {number}");
            let line = usage_line(&error);
            assert!(!line.contains('\n'), "case {number}: {line}");
            assert!(!line.starts_with("error"), "case {number}: {line}");
        }
    }

    #[test]
    fn exit_codes_follow_the_documented_table() {
        let unknown = || ClientError::Timeout {
            operation: "put".into(),
            elapsed: Duration::from_secs(1),
            last_problem: "silence".into(),
            outcome_unknown: true,
        };
        let cases: [(CliError, u8); 9] = [
            (
                ClientError::StaleReceipt {
                    topic: "t".into(),
                    receipt: "1.2".into(),
                }
                .into(),
                EXIT_STALE,
            ),
            (
                CliError::StaleReceipts {
                    topic: "t".into(),
                    receipts: vec!["1.2".into()],
                },
                EXIT_STALE,
            ),
            (
                ClientError::NoSuchTopic { topic: "t".into() }.into(),
                EXIT_NOT_FOUND,
            ),
            (
                ClientError::Empty { topic: "t".into() }.into(),
                EXIT_NOT_FOUND,
            ),
            (unknown().into(), EXIT_UNAVAILABLE),
            (
                ClientError::SessionExpired {
                    message: "forgotten".into(),
                }
                .into(),
                EXIT_UNAVAILABLE,
            ),
            (
                ClientError::TooLarge {
                    message: "big".into(),
                }
                .into(),
                EXIT_ERROR,
            ),
            (CliError::NoNodeAnswered, EXIT_UNAVAILABLE),
            (CliError::Usage("no".into()), EXIT_USAGE),
        ];
        for (number, (error, code)) in cases.into_iter().enumerate() {
            assert_eq!(error.exit_code(), code, "case {number}: {error}");
        }
        assert!(unknown().to_string().contains("outcome is unknown"));
    }
}
