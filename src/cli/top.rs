//! `rrmq top`: a live view of every node of the cluster, refreshed every `--interval`.
//!
//! Why its own module: it is the one command that keeps running and draws, and the one that
//! owns a terminal in raw mode; everything it shows comes from replies other commands use
//! (v2 `status` from every node, `topic GET` with `detail` from the leader), so the node needs
//! nothing new but the `requests` counter in `status`.
//!
//! What it owns: sampling (one `status` round to all nodes, one topic list, per refresh),
//! turning two successive samples into rates ([`view`], pure and unit-tested), and two ways
//! to show them: a full-screen table on a terminal (quit with `q` or Ctrl-C; the terminal is
//! restored on every exit, panics included) and plain timestamped lines when stdout is not a
//! terminal (scripts, tests, `| tee`), which stop after `--iterations`.
//!
//! A node that does not answer is shown as down with the reason; it is never an error exit:
//! watching a cluster through a failure is what the view is for.

use std::io::Write;
use std::time::{Duration, Instant, SystemTime};

use super::commands::{client_options, table_lines};
use super::{parse_duration, CliError, GlobalOptions};
use crate::client::{Client, ClientError, NodeAddress, ATTEMPT_TIMEOUT_DEFAULT};
use crate::protocol::{StatusReport, TopicDetail};

/// `rrmq top` options.
#[derive(Debug, clap::Args)]
pub struct TopArgs {
    /// Time between refreshes (e.g. 1s, 500ms)
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Stop after N refreshes (default: until `q` or Ctrl-C; plain output: until killed)
    #[arg(long, visible_alias = "count", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
    /// How many of the busiest topics (most messages ready + leased) to show
    #[arg(long, value_name = "N", default_value_t = 5)]
    pub topics: usize,
}

/// One refresh's answers.
pub(super) struct Sample {
    pub(super) at: Instant,
    /// Per node in config order: its id when known (from the config), address, status.
    pub(super) nodes: Vec<(Option<u64>, NodeAddress, Result<StatusReport, ClientError>)>,
    /// The leader's topic list, or why there is none.
    pub(super) topics: Result<Vec<TopicDetail>, String>,
}

/// What one node's line shows; `None` is shown as `-` (not known yet, or not applicable).
#[derive(Clone, Debug, PartialEq)]
pub(super) struct NodeLine {
    pub(super) id: Option<u64>,
    pub(super) address: String,
    /// `Err(reason)` for a node that did not answer.
    pub(super) state: Result<NodeNumbers, String>,
    /// How far the node trails the leader: the leader's last log index minus the node's
    /// match index as the leader last heard it (so also for a node that is down); for the
    /// leader itself, its last log index minus its commit index.
    pub(super) lag: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) struct NodeNumbers {
    pub(super) role: String,
    pub(super) term: u64,
    pub(super) commit_index: u64,
    pub(super) last_applied: u64,
    pub(super) requests_per_second: Option<f64>,
    pub(super) fsyncs_per_second: Option<f64>,
    pub(super) entries_per_fsync: Option<f64>,
}

/// A refresh as shown.
#[derive(Clone, Debug, PartialEq)]
pub(super) struct View {
    pub(super) nodes: Vec<NodeLine>,
    /// The busiest topics, busiest first, or why they are unknown.
    pub(super) topics: Result<Vec<TopicDetail>, String>,
    /// How many topics there are in all.
    pub(super) topic_count: usize,
}

/// The view of `current`, with rates over the time since `previous` (same node order).
pub(super) fn view(previous: Option<&Sample>, current: &Sample, topics_shown: usize) -> View {
    let leader = current
        .nodes
        .iter()
        .find_map(|(_, _, result)| match result {
            Ok(status) if status.role == "Leader" => Some(status),
            _ => None,
        });
    let nodes = current
        .nodes
        .iter()
        .enumerate()
        .map(|(position, (config_id, address, result))| {
            let id = result.as_ref().ok().map(|status| status.id).or(*config_id);
            let before = previous.and_then(|previous| {
                let elapsed = current.at.checked_duration_since(previous.at)?;
                match previous.nodes.get(position) {
                    Some((_, _, Ok(status))) => Some((status, elapsed.as_secs_f64())),
                    _ => None,
                }
            });
            NodeLine {
                id,
                address: address.to_string(),
                lag: lag_of(leader, id),
                state: match result {
                    Ok(status) => Ok(numbers(status, before)),
                    Err(error) => Err(down_reason(error)),
                },
            }
        })
        .collect();
    let (topics, topic_count) = match &current.topics {
        Ok(details) => {
            let mut busiest = details.clone();
            // Stable: equal depths keep creation order.
            busiest.sort_by_key(|detail| std::cmp::Reverse(detail.ready + detail.leased));
            busiest.truncate(topics_shown);
            (Ok(busiest), details.len())
        }
        Err(reason) => (Err(reason.clone()), 0),
    };
    View {
        nodes,
        topics,
        topic_count,
    }
}

fn lag_of(leader: Option<&StatusReport>, id: Option<u64>) -> Option<u64> {
    let leader = leader?;
    let id = id?;
    if id == leader.id {
        return Some(leader.last_log_index.saturating_sub(leader.commit_index));
    }
    leader
        .peers
        .iter()
        .find(|peer| peer.id == id)
        .map(|peer| leader.last_log_index.saturating_sub(peer.match_index))
}

/// Counters that went down mean the node restarted between the samples: no rate then.
fn numbers(status: &StatusReport, before: Option<(&StatusReport, f64)>) -> NodeNumbers {
    let mut line = NodeNumbers {
        role: status.role.clone(),
        term: status.term,
        commit_index: status.commit_index,
        last_applied: status.last_applied,
        requests_per_second: None,
        fsyncs_per_second: None,
        entries_per_fsync: None,
    };
    if let Some((before, seconds)) = before {
        let delta = |now: u64, then: u64| now.checked_sub(then);
        let requests = delta(status.requests, before.requests);
        let syncs = delta(status.wal_syncs, before.wal_syncs);
        let entries = delta(status.wal_entries, before.wal_entries);
        if seconds > 0.0 {
            line.requests_per_second = requests.map(|count| count as f64 / seconds);
            line.fsyncs_per_second = syncs.map(|count| count as f64 / seconds);
        }
        if let (Some(syncs), Some(entries)) = (syncs, entries) {
            line.entries_per_fsync = (syncs > 0).then(|| entries as f64 / syncs as f64);
        }
    }
    line
}

fn down_reason(error: &ClientError) -> String {
    match error {
        ClientError::Timeout { .. } => "no reply".to_string(),
        other => other.to_string(),
    }
}

fn rate(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |value| format!("{value:.1}"))
}

fn number(value: Option<u64>) -> String {
    value.map_or_else(|| "-".to_string(), |value| value.to_string())
}

/// Plain output: one line per node and one for the topics, each starting with `timestamp`.
pub(super) fn plain_lines(view: &View, timestamp: &str) -> Vec<String> {
    let mut lines: Vec<String> = view
        .nodes
        .iter()
        .map(|node| {
            let head = format!("{timestamp} node={} addr={}", number(node.id), node.address);
            match &node.state {
                Ok(numbers) => format!(
                    "{head} role={} term={} commit={} applied={} lag={} requests/s={} \
                     fsyncs/s={} entries/fsync={}",
                    numbers.role,
                    numbers.term,
                    numbers.commit_index,
                    numbers.last_applied,
                    number(node.lag),
                    rate(numbers.requests_per_second),
                    rate(numbers.fsyncs_per_second),
                    rate(numbers.entries_per_fsync),
                ),
                Err(reason) => format!("{head} down lag={} ({reason})", number(node.lag)),
            }
        })
        .collect();
    lines.push(match &view.topics {
        Ok(topics) => {
            let shown: Vec<String> = topics
                .iter()
                .map(|topic| {
                    format!(
                        "{} ready={} leased={}",
                        topic.name, topic.ready, topic.leased
                    )
                })
                .collect();
            format!(
                "{timestamp} topics={} busiest: {}",
                view.topic_count,
                shown.join(", ")
            )
        }
        Err(reason) => format!("{timestamp} topics unknown ({reason})"),
    });
    lines
}

/// The terminal screen: a header, the node table, the topic table.
pub(super) fn screen_lines(view: &View, header: &str) -> Vec<String> {
    let mut lines = vec![header.to_string(), String::new()];
    let mut rows: Vec<Vec<String>> = vec![[
        "ID",
        "ADDRESS",
        "ROLE",
        "TERM",
        "COMMIT",
        "APPLIED",
        "LAG",
        "REQ/S",
        "FSYNC/S",
        "ENTRIES/FSYNC",
    ]
    .iter()
    .map(|cell| cell.to_string())
    .collect()];
    for node in &view.nodes {
        let mut row = vec![number(node.id), node.address.clone()];
        match &node.state {
            Ok(numbers) => row.extend([
                numbers.role.clone(),
                numbers.term.to_string(),
                numbers.commit_index.to_string(),
                numbers.last_applied.to_string(),
                number(node.lag),
                rate(numbers.requests_per_second),
                rate(numbers.fsyncs_per_second),
                rate(numbers.entries_per_fsync),
            ]),
            Err(reason) => {
                row.extend(["DOWN", "-", "-", "-"].map(str::to_string));
                row.push(number(node.lag));
                row.push(format!("({reason})"));
            }
        }
        rows.push(row);
    }
    lines.extend(table_lines(&rows));
    lines.push(String::new());
    match &view.topics {
        Ok(topics) => {
            let mut rows = vec![vec![
                format!("TOPIC (busiest of {})", view.topic_count),
                "READY".to_string(),
                "LEASED".to_string(),
            ]];
            rows.extend(topics.iter().map(|topic| {
                vec![
                    topic.name.clone(),
                    topic.ready.to_string(),
                    topic.leased.to_string(),
                ]
            }));
            lines.extend(table_lines(&rows));
        }
        Err(reason) => lines.push(format!("topics unknown: {reason}")),
    }
    lines
}

/// `2026-12-02T09:40:01.123Z`.
fn timestamp(now: SystemTime) -> String {
    jiff::Timestamp::try_from(now)
        .map(|timestamp| timestamp.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_else(|_| "unknown-time".to_string())
}

/// Asks every node and the leader once.
fn sample(client: &mut Client, from_config: bool) -> Sample {
    let nodes = client
        .status_all()
        .into_iter()
        .enumerate()
        .map(|(index, (address, result))| (from_config.then_some(index as u64), address, result))
        .collect();
    let topics = client
        .list_topic_details()
        .map_err(|error| down_reason(&error));
    Sample {
        at: Instant::now(),
        nodes,
        topics,
    }
}

/// `rrmq top`: `terminal` says whether stdout is one (then the full-screen view).
pub(super) fn run(
    global: &GlobalOptions,
    args: &TopArgs,
    stdout: &mut dyn Write,
    terminal: bool,
) -> Result<(), CliError> {
    let (mut options, from_config) = client_options(global)?;
    // A refresh must not wait on a silent node much longer than the interval, unless asked.
    if global.attempt_timeout.is_none() {
        options.attempt_timeout = ATTEMPT_TIMEOUT_DEFAULT
            .min(args.interval.max(Duration::from_millis(500)))
            .min(global.timeout);
    }
    options.deadline = options
        .deadline
        .min(args.interval.max(Duration::from_secs(1)) * 2);
    let mut client = Client::connect(options)?;
    if terminal {
        screen::run(&mut client, from_config, args, stdout)
    } else {
        plain(&mut client, from_config, args, stdout)
    }
}

fn plain(
    client: &mut Client,
    from_config: bool,
    args: &TopArgs,
    stdout: &mut dyn Write,
) -> Result<(), CliError> {
    let mut previous: Option<Sample> = None;
    let mut refresh = 0u64;
    loop {
        let started = Instant::now();
        let current = sample(client, from_config);
        let view = view(previous.as_ref(), &current, args.topics);
        for line in plain_lines(&view, &timestamp(SystemTime::now())) {
            writeln!(stdout, "{line}").map_err(CliError::io("cannot write to stdout"))?;
        }
        stdout
            .flush()
            .map_err(CliError::io("cannot write to stdout"))?;
        refresh += 1;
        if args
            .iterations
            .is_some_and(|iterations| refresh >= iterations)
        {
            return Ok(());
        }
        previous = Some(current);
        std::thread::sleep(args.interval.saturating_sub(started.elapsed()));
    }
}

/// The full-screen view: raw mode and the alternate screen, restored by [`screen::Guard`]
/// on return and by a panic hook on a panic.
mod screen {
    use super::*;
    use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
    use crossterm::{cursor, execute, queue, terminal};

    /// Leaves raw mode and the alternate screen when dropped.
    struct Guard;

    impl Guard {
        fn enter(stdout: &mut dyn Write) -> Result<Guard, CliError> {
            terminal::enable_raw_mode().map_err(CliError::io("cannot set up the terminal"))?;
            // From here on, every exit path restores the terminal.
            let guard = Guard;
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                previous(info);
            }));
            let mut out = stdout;
            execute!(&mut out, terminal::EnterAlternateScreen, cursor::Hide)
                .map_err(CliError::io("cannot set up the terminal"))?;
            Ok(guard)
        }
    }

    impl Drop for Guard {
        fn drop(&mut self) {
            restore();
        }
    }

    fn restore() {
        let mut stdout = std::io::stdout();
        let _ = execute!(stdout, cursor::Show, terminal::LeaveAlternateScreen);
        let _ = terminal::disable_raw_mode();
    }

    fn is_quit(key: &KeyEvent) -> bool {
        key.kind != KeyEventKind::Release
            && match key.code {
                KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => true,
                KeyCode::Char('c') => key.modifiers.contains(KeyModifiers::CONTROL),
                _ => false,
            }
    }

    /// Waits until `until` for a key; true if it asks to quit.
    fn quit_before(until: Instant) -> Result<bool, CliError> {
        loop {
            let left = until.saturating_duration_since(Instant::now());
            if !event::poll(left).map_err(CliError::io("cannot read the terminal"))? {
                return Ok(false);
            }
            if let Event::Key(key) =
                event::read().map_err(CliError::io("cannot read the terminal"))?
            {
                if is_quit(&key) {
                    return Ok(true);
                }
            }
            if left.is_zero() {
                return Ok(false);
            }
        }
    }

    pub(super) fn run(
        client: &mut Client,
        from_config: bool,
        args: &TopArgs,
        stdout: &mut dyn Write,
    ) -> Result<(), CliError> {
        let _guard = Guard::enter(stdout)?;
        let mut previous: Option<Sample> = None;
        let mut refresh = 0u64;
        loop {
            let started = Instant::now();
            let current = sample(client, from_config);
            let view = view(previous.as_ref(), &current, args.topics);
            let header = format!(
                "rrmq top  {}  every {:?}  (q or Ctrl-C quits)",
                timestamp(SystemTime::now()),
                args.interval
            );
            // A terminal that reports no size (some ptys) gets a common one.
            let (width, height) = terminal::size()
                .ok()
                .filter(|(width, height)| *width > 0 && *height > 0)
                .unwrap_or((120, 40));
            let mut out = &mut *stdout;
            queue!(
                &mut out,
                cursor::MoveTo(0, 0),
                terminal::Clear(terminal::ClearType::All)
            )
            .map_err(CliError::io("cannot write to the terminal"))?;
            for line in screen_lines(&view, &header)
                .iter()
                .take(usize::from(height.max(1)))
            {
                let line: String = line.chars().take(usize::from(width)).collect();
                // Raw mode: no newline translation.
                write!(stdout, "{line}\r\n")
                    .map_err(CliError::io("cannot write to the terminal"))?;
            }
            stdout
                .flush()
                .map_err(CliError::io("cannot write to the terminal"))?;
            refresh += 1;
            if args
                .iterations
                .is_some_and(|iterations| refresh >= iterations)
            {
                return Ok(());
            }
            previous = Some(current);
            if quit_before(started + args.interval)? {
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::PeerProgress;

    fn status(id: u64, role: &str, counters: (u64, u64, u64)) -> StatusReport {
        StatusReport {
            role: role.to_string(),
            term: 4,
            id,
            leader: Some(0),
            commit_index: 90,
            last_applied: 88,
            last_log_index: 100,
            peers: if role == "Leader" {
                vec![
                    PeerProgress {
                        id: 1,
                        match_index: 97,
                        next_index: 98,
                        state: "replicate".into(),
                    },
                    PeerProgress {
                        id: 2,
                        match_index: 40,
                        next_index: 41,
                        state: "probe".into(),
                    },
                ]
            } else {
                Vec::new()
            },
            fsync: "always".into(),
            requests: counters.0,
            wal_syncs: counters.1,
            wal_entries: counters.2,
        }
    }

    fn address(port: u16) -> NodeAddress {
        NodeAddress::new("127.0.0.1", port).expect("valid")
    }

    fn down() -> Result<StatusReport, ClientError> {
        Err(ClientError::Timeout {
            operation: "status".into(),
            elapsed: Duration::from_secs(1),
            last_problem: "silence".into(),
            outcome_unknown: false,
        })
    }

    fn detail(name: &str, ready: u64, leased: u64) -> TopicDetail {
        TopicDetail {
            name: name.into(),
            ready,
            leased,
            max_deliveries: None,
            dead_letter: None,
            discarded: 0,
        }
    }

    #[test]
    fn rates_come_from_two_samples_and_a_down_node_keeps_its_lag() {
        let start = Instant::now();
        let first = Sample {
            at: start,
            nodes: vec![
                (Some(0), address(5000), Ok(status(0, "Leader", (10, 5, 20)))),
                (
                    Some(1),
                    address(5001),
                    Ok(status(1, "Follower", (0, 5, 20))),
                ),
                (Some(2), address(5002), Ok(status(2, "Follower", (9, 9, 9)))),
            ],
            topics: Ok(vec![]),
        };
        let second = Sample {
            at: start + Duration::from_secs(2),
            nodes: vec![
                (
                    Some(0),
                    address(5000),
                    Ok(status(0, "Leader", (210, 45, 420))),
                ),
                // Restarted: its counters went down.
                (Some(1), address(5001), Ok(status(1, "Follower", (0, 1, 2)))),
                (Some(2), address(5002), down()),
            ],
            topics: Ok(vec![
                detail("a", 1, 0),
                detail("b", 7, 2),
                detail("c", 3, 0),
            ]),
        };
        let first_view = view(None, &first, 2);
        match &first_view.nodes[0].state {
            Ok(numbers) => assert_eq!(numbers.requests_per_second, None, "no rate yet"),
            Err(reason) => panic!("up: {reason}"),
        }

        let view = view(Some(&first), &second, 2);
        let leader = view.nodes[0].state.as_ref().expect("up");
        assert_eq!(leader.requests_per_second, Some(100.0));
        assert_eq!(leader.fsyncs_per_second, Some(20.0));
        assert_eq!(leader.entries_per_fsync, Some(10.0));
        assert_eq!(view.nodes[0].lag, Some(10), "last log index minus commit");
        let restarted = view.nodes[1].state.as_ref().expect("up");
        assert_eq!(restarted.requests_per_second, Some(0.0));
        assert_eq!(restarted.fsyncs_per_second, None, "counters went down");
        assert_eq!(view.nodes[1].lag, Some(3));
        assert_eq!(view.nodes[2].state, Err("no reply".to_string()));
        assert_eq!(view.nodes[2].lag, Some(60), "from the leader's match index");
        let names: Vec<&str> = match &view.topics {
            Ok(topics) => topics.iter().map(|topic| topic.name.as_str()).collect(),
            Err(reason) => panic!("{reason}"),
        };
        assert_eq!(names, ["b", "c"], "busiest first, truncated");
        assert_eq!(view.topic_count, 3);

        let lines = plain_lines(&view, "T");
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert_eq!(
            lines[0],
            "T node=0 addr=127.0.0.1:5000 role=Leader term=4 commit=90 applied=88 lag=10 \
             requests/s=100.0 fsyncs/s=20.0 entries/fsync=10.0"
        );
        assert_eq!(
            lines[2],
            "T node=2 addr=127.0.0.1:5002 down lag=60 (no reply)"
        );
        assert_eq!(
            lines[3],
            "T topics=3 busiest: b ready=7 leased=2, c ready=3 leased=0"
        );

        let screen = screen_lines(&view, "header");
        assert!(screen[2].starts_with("ID  ADDRESS"), "{screen:?}");
        assert!(
            screen.iter().any(|line| line.contains("DOWN")),
            "{screen:?}"
        );
        assert!(
            screen.iter().any(|line| line.starts_with("b ")),
            "{screen:?}"
        );
    }

    #[test]
    fn without_a_leader_there_is_no_lag_and_topics_say_why() {
        let sample = Sample {
            at: Instant::now(),
            nodes: vec![(None, address(5000), Ok(status(3, "Candidate", (0, 0, 0))))],
            topics: Err("no leader".into()),
        };
        let view = view(None, &sample, 5);
        assert_eq!(view.nodes[0].id, Some(3), "the id the node gives");
        assert_eq!(view.nodes[0].lag, None);
        let lines = plain_lines(&view, "T");
        assert!(lines[0].contains("lag=-"), "{lines:?}");
        assert_eq!(lines[1], "T topics unknown (no leader)");
    }
}
