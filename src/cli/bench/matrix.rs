//! `rrmq bench --matrix`: the standard benchmark, on a fresh local 3-node cluster per cell.
//!
//! Why a fresh cluster per cell: a produce cell leaves its messages queued and its log on
//! disk, and the next cell would measure a bigger, older node. Each cell gets new data
//! dirs, new ports, an election, then its workload (the cluster is started by the
//! [`launcher`]); the nodes are stopped (SIGTERM, then SIGKILL after a grace period) and
//! their data removed before the next one.
//!
//! The cells: produce with C = 1, 16, 64 at 100 B and 1 KiB; consume with C = 1, 16 (after
//! a pre-fill of 100-byte messages by 64 producers). Optionally, `--rss-messages N` puts N
//! 100-byte messages into one more cluster and reads each node's VmRSS.
//!
//! What it owns: the child processes (killed on drop, even on error or panic), the data
//! dirs, the table. What it must not do: leave a node or a data dir behind, or run against
//! anything but the cluster it started.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::driver::{Connections, Plan};
use super::process::{machine_description, process_rss_kib};
use super::report::{format_bytes, matrix_table, MatrixRow};
use super::{parse_duration, run_cell, run_plan, ConsumeArgs, LoadArgs, ProduceArgs, Workload};
use crate::cli::launcher::{self, LocalCluster, NodeSetup};
use crate::cli::{CliError, GlobalOptions};
use crate::client::call::Timing;
use crate::client::{Client, ClientOptions, NodeAddress};
use crate::config::FsyncMode;

/// Nodes in the matrix's cluster.
const NODE_COUNT: usize = 3;
/// How long a fresh cluster may take to elect a leader on a loaded machine.
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// Producers that fill the RSS measurement's cluster.
const RSS_FILL_CLIENTS: usize = 128;
/// Message size of the RSS measurement.
const RSS_MESSAGE_BYTES: usize = 100;

#[derive(Debug, Clone, clap::Args)]
pub struct MatrixArgs {
    /// The nodes' fsync policy
    #[arg(long, value_enum, default_value_t = FsyncMode::Always, requires = "matrix")]
    pub fsync: FsyncMode,
    /// Measured time of each produce cell, and the cap of each consume cell
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration,
          requires = "matrix")]
    pub cell_duration: Duration,
    /// Unmeasured time before each produce cell
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration,
          requires = "matrix")]
    pub cell_warmup: Duration,
    /// 100-byte messages put before each consume cell
    #[arg(long, value_name = "N", default_value_t = 30_000, requires = "matrix")]
    pub consume_messages: u64,
    /// Also put this many 100-byte messages into one more fresh cluster and report each
    /// node's resident memory (VmRSS)
    #[arg(long, value_name = "N", requires = "matrix")]
    pub rss_messages: Option<u64>,
    /// Run only these cells, e.g. produce:64:100 or consume:16 (repeatable) [default: all]
    #[arg(long = "cell", value_name = "WORKLOAD:C[:SIZE]", value_parser = parse_cell,
          requires = "matrix")]
    pub cells: Vec<Cell>,
    /// How simulated clients share connections (see `rrmq bench produce --help`)
    #[arg(long, value_enum, default_value_t = Connections::PerClient, requires = "matrix")]
    pub connections: Connections,
    /// The node binary [default: rrmq-node next to this rrmq]
    #[arg(long, value_name = "PATH", requires = "matrix")]
    pub node_bin: Option<PathBuf>,
    /// Where each cell's data dirs are created (and removed) [default: the temp dir]
    #[arg(long, value_name = "DIR", requires = "matrix")]
    pub data_root: Option<PathBuf>,
    /// Keep each cell's data dirs and node logs
    #[arg(long, requires = "matrix")]
    pub keep_data: bool,
    /// Also draw the matrix (throughput, p50 and p99 per cell) into FILE: SVG, or an HTML
    /// page around it when FILE ends in .html
    #[arg(long = "plot", value_name = "FILE", requires = "matrix")]
    pub plot: Option<PathBuf>,
}

/// One cell of the matrix.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Cell {
    pub consume: bool,
    pub clients: usize,
    pub message_bytes: usize,
}

impl Cell {
    fn workload_name(&self) -> &'static str {
        if self.consume {
            "consume"
        } else {
            "produce"
        }
    }
}

/// The standard matrix.
pub(super) fn standard_cells() -> Vec<Cell> {
    let mut cells = Vec::new();
    for message_bytes in [100, 1024] {
        for clients in [1, 16, 64] {
            cells.push(Cell {
                consume: false,
                clients,
                message_bytes,
            });
        }
    }
    for clients in [1, 16] {
        cells.push(Cell {
            consume: true,
            clients,
            message_bytes: 100,
        });
    }
    cells
}

/// `produce:64:100`, `produce:1:1KiB`, `consume:16` (size 100 B by default).
pub(super) fn parse_cell(text: &str) -> Result<Cell, String> {
    let mut parts = text.split(':');
    let consume = match parts.next() {
        Some("produce") => false,
        Some("consume") => true,
        _ => {
            return Err(format!(
                "'{text}': expected produce:C[:SIZE] or consume:C[:SIZE]"
            ))
        }
    };
    let clients = parts
        .next()
        .and_then(|clients| clients.parse::<usize>().ok())
        .filter(|&clients| clients > 0)
        .ok_or_else(|| format!("'{text}': the client count must be a positive number"))?;
    let message_bytes = match parts.next() {
        Some(size) => super::parse_size(size)?,
        None => 100,
    };
    if parts.next().is_some() {
        return Err(format!("'{text}': too many fields"));
    }
    Ok(Cell {
        consume,
        clients,
        message_bytes,
    })
}

impl MatrixArgs {
    /// The workload of one cell.
    fn workload(&self, cell: &Cell) -> Workload {
        let load = LoadArgs {
            size: cell.message_bytes,
            topics: 1,
            topic_prefix: "bench".to_string(),
            connections: self.connections,
            watch_pids: Vec::new(),
            plot: None,
        };
        if cell.consume {
            Workload::Consume(ConsumeArgs {
                clients: cell.clients,
                messages: self.consume_messages,
                fill_clients: 64,
                duration: Some(self.cell_duration),
                max: None,
                ack: false,
                ack_inline: false,
                lease: None,
                wait: None,
                load,
            })
        } else {
            Workload::Produce(ProduceArgs {
                clients: cell.clients,
                duration: Some(self.cell_duration),
                count: None,
                warmup: Some(self.cell_warmup),
                batch: None,
                load,
            })
        }
    }
}

#[derive(Serialize)]
struct MatrixOutput<'a> {
    machine: String,
    date: String,
    fsync: &'static str,
    rows: &'a [MatrixRow],
    rss: Option<RssMeasurement>,
}

#[derive(Clone, Debug, Serialize)]
struct RssMeasurement {
    messages: u64,
    message_bytes: usize,
    /// Messages acknowledged by the fill.
    acknowledged: u64,
    /// Per node: VmRSS in KiB before the fill and after it.
    nodes: Vec<(Option<u64>, Option<u64>)>,
    fill_seconds: f64,
}

pub(super) fn run(
    global: &GlobalOptions,
    args: &MatrixArgs,
    stdout: &mut dyn Write,
) -> Result<(), CliError> {
    let node_bin = launcher::node_bin(args.node_bin.as_deref())?;
    let data_root = args.data_root.clone().unwrap_or_else(std::env::temp_dir);
    let cells = if args.cells.is_empty() {
        standard_cells()
    } else {
        args.cells.clone()
    };
    let timing = Timing {
        attempt_timeout: global
            .attempt_timeout
            .unwrap_or(crate::client::ATTEMPT_TIMEOUT_DEFAULT)
            .min(global.timeout),
        deadline: global.timeout,
        hedge_after: global.hedge_after.0,
    };
    let progress = !global.json;
    let machine = machine_description();
    let date = utc_date(SystemTime::now());
    if progress {
        eprintln!(
            "rrmq bench --matrix: {} cells on a fresh {NODE_COUNT}-node cluster each, fsync {}; \
             {machine}",
            cells.len(),
            args.fsync.as_str()
        );
    }
    let mut rows = Vec::new();
    for cell in &cells {
        let workload = args.workload(cell);
        workload.validate()?;
        if progress {
            eprintln!(
                "cell: {} C={} {}",
                cell.workload_name(),
                cell.clients,
                format_bytes(cell.message_bytes)
            );
        }
        let cluster = CellCluster::start(&node_bin, &data_root, args.fsync, args.keep_data)?;
        let workload = with_watched(workload, cluster.nodes.pids());
        let report = run_cell(cluster.addresses(), &workload, timing, progress)?;
        drop(cluster);
        rows.push(MatrixRow {
            workload: cell.workload_name().to_string(),
            clients: cell.clients,
            message_bytes: cell.message_bytes,
            report,
        });
    }
    let rss = match args.rss_messages {
        Some(messages) if messages > 0 => Some(measure_rss(
            &node_bin, &data_root, args, messages, timing, progress,
        )?),
        _ => None,
    };

    if let Some(path) = &args.plot {
        let title = format!(
            "rrmq bench --matrix, {date}: {NODE_COUNT}-node local cluster, fsync {}, {} per cell; {machine}",
            args.fsync.as_str(),
            format_duration(args.cell_duration),
        );
        super::plot::write(path, &super::plot::matrix_svg(&rows, &title)?)?;
    }
    let text = if global.json {
        let output = MatrixOutput {
            machine,
            date,
            fsync: args.fsync.as_str(),
            rows: &rows,
            rss,
        };
        serde_json::to_string_pretty(&output).expect("plain values serialize") + "\n"
    } else {
        let connections = match args.connections {
            Connections::PerClient => "one connection per client",
            Connections::Shared => "one shared connection per node",
        };
        let mut text = format!(
            "rrmq bench --matrix, {date}: {NODE_COUNT}-node local cluster, fsync {}, {connections}, \
             {} measured per cell ({} warmup for produce; consume drains {} messages, capped \
             at the same)\nmachine: {machine}\n\n",
            args.fsync.as_str(),
            format_duration(args.cell_duration),
            format_duration(args.cell_warmup),
            args.consume_messages,
        );
        text.push_str(&matrix_table(&rows));
        text.push_str(
            "\nbench CPU: the load generator's user+system time over the measured phase, in % \
             of one core; nodes CPU: the three nodes' together.\n",
        );
        if let Some(rss) = &rss {
            text.push_str(&rss_text(rss));
        }
        text
    };
    stdout
        .write_all(text.as_bytes())
        .map_err(CliError::io("cannot write to stdout"))
}

fn with_watched(workload: Workload, pids: Vec<u32>) -> Workload {
    match workload {
        Workload::Produce(mut args) => {
            args.load.watch_pids = pids;
            Workload::Produce(args)
        }
        Workload::Consume(mut args) => {
            args.load.watch_pids = pids;
            Workload::Consume(args)
        }
        Workload::Mixed(mut args) => {
            args.load.watch_pids = pids;
            Workload::Mixed(args)
        }
    }
}

fn format_duration(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// Fills a fresh cluster with `messages` 100-byte messages and reads each node's VmRSS.
fn measure_rss(
    node_bin: &Path,
    data_root: &Path,
    args: &MatrixArgs,
    messages: u64,
    timing: Timing,
    progress: bool,
) -> Result<RssMeasurement, CliError> {
    if progress {
        eprintln!("rss: putting {messages} messages of {RSS_MESSAGE_BYTES} B");
    }
    let cluster = CellCluster::start(node_bin, data_root, args.fsync, args.keep_data)?;
    let before: Vec<Option<u64>> = cluster
        .nodes
        .pids()
        .into_iter()
        .map(process_rss_kib)
        .collect();
    let mut client = Client::connect(ClientOptions {
        attempt_timeout: timing.attempt_timeout,
        deadline: timing.deadline,
        ..ClientOptions::new(cluster.addresses())
    })?;
    let topic = format!("rss-{:08x}", rand::random::<u32>());
    client.create_topic(&topic)?;
    let leader = client
        .leader()
        .and_then(|leader| {
            cluster
                .nodes
                .addresses()
                .iter()
                .position(|node| node == leader)
        })
        .unwrap_or(0);
    drop(client);
    let plan = Plan {
        roles: (0..RSS_FILL_CLIENTS)
            .map(|_| super::driver::Role::Producer {
                topic: topic.clone(),
            })
            .collect(),
        message: super::message_of(RSS_MESSAGE_BYTES),
        measure_for: None,
        put_count: Some(messages),
        warmup: Duration::ZERO,
        timing,
        empty_pause: Duration::ZERO,
        connections: args.connections,
        progress,
        watch_pids: Vec::new(),
        batching: Default::default(),
    };
    let result = run_plan(&plan, cluster.addresses(), leader, None, &mut || {})?;
    let acknowledged = result
        .recorder
        .finish(result.elapsed)
        .first()
        .map_or(0, |operation| operation.completed);
    let after: Vec<Option<u64>> = cluster
        .nodes
        .pids()
        .into_iter()
        .map(process_rss_kib)
        .collect();
    drop(cluster);
    Ok(RssMeasurement {
        messages,
        message_bytes: RSS_MESSAGE_BYTES,
        acknowledged,
        nodes: before.into_iter().zip(after).collect(),
        fill_seconds: result.elapsed.as_secs_f64(),
    })
}

fn rss_text(rss: &RssMeasurement) -> String {
    let mebibytes = |kib: Option<u64>| {
        kib.map(|kib| format!("{:.1} MiB", kib as f64 / 1024.0))
            .unwrap_or_else(|| "?".to_string())
    };
    let nodes: Vec<String> = rss
        .nodes
        .iter()
        .enumerate()
        .map(|(index, (before, after))| {
            format!(
                "node {index} {} (idle {})",
                mebibytes(*after),
                mebibytes(*before)
            )
        })
        .collect();
    format!(
        "\nRSS with {} of {} messages of {} acknowledged ({:.1} MiB of payload, filled in \
         {:.1} s): {}\n",
        rss.acknowledged,
        rss.messages,
        format_bytes(rss.message_bytes),
        (rss.acknowledged as f64 * rss.message_bytes as f64) / (1024.0 * 1024.0),
        rss.fill_seconds,
        nodes.join(", ")
    )
}

/// `YYYY-MM-DD` in UTC, for the header of a table that will be pasted elsewhere.
pub(super) fn utc_date(now: SystemTime) -> String {
    jiff::Timestamp::try_from(now)
        .map(|timestamp| timestamp.strftime("%Y-%m-%d").to_string())
        .unwrap_or_else(|_| "unknown date".to_string())
}

/// One cell's cluster: [`LocalCluster`] on a generated config in a fresh dir under the data
/// root. Dropping it stops the nodes, then removes the dir (unless kept).
pub(super) struct CellCluster {
    pub(super) nodes: LocalCluster,
    pub(super) dir: PathBuf,
    keep: bool,
}

impl CellCluster {
    pub(super) fn start(
        node_bin: &Path,
        data_root: &Path,
        fsync: FsyncMode,
        keep: bool,
    ) -> Result<CellCluster, CliError> {
        let dir = data_root.join(format!(
            "rrmq-bench-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir)
            .map_err(CliError::io(format!("{}: cannot create", dir.display())))?;
        let nodes =
            launcher::write_config(&dir, "127.0.0.1", NODE_COUNT).and_then(|(config, _)| {
                let mut setup = NodeSetup::new(node_bin.to_path_buf(), config, dir.clone());
                setup.flags = vec!["--fsync".into(), fsync.as_str().into()];
                setup.log_dir = Some(dir.clone());
                setup.detach = true;
                LocalCluster::load(setup)
            });
        let nodes = match nodes {
            Ok(nodes) => nodes,
            Err(error) => {
                if !keep {
                    let _ = std::fs::remove_dir_all(&dir);
                }
                return Err(error);
            }
        };
        let mut cluster = CellCluster { nodes, dir, keep };
        cluster.nodes.start_all()?;
        cluster.nodes.wait_for_leader(LEADER_WAIT)?;
        Ok(cluster)
    }

    pub(super) fn addresses(&self) -> Vec<NodeAddress> {
        self.nodes.addresses().to_vec()
    }
}

impl Drop for CellCluster {
    fn drop(&mut self) {
        self.nodes.stop();
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_standard_matrix_has_the_issue_cells() {
        let cells: Vec<(bool, usize, usize)> = standard_cells()
            .iter()
            .map(|cell| (cell.consume, cell.clients, cell.message_bytes))
            .collect();
        assert_eq!(
            cells,
            vec![
                (false, 1, 100),
                (false, 16, 100),
                (false, 64, 100),
                (false, 1, 1024),
                (false, 16, 1024),
                (false, 64, 1024),
                (true, 1, 100),
                (true, 16, 100),
            ]
        );
    }

    #[test]
    fn cells_parse_from_the_command_line() {
        type Expected = Option<(bool, usize, usize)>;
        let cases: [(&str, Expected); 8] = [
            ("produce:64:100", Some((false, 64, 100))),
            ("produce:1:1KiB", Some((false, 1, 1024))),
            ("consume:16", Some((true, 16, 100))),
            ("consume:0", None),
            ("produce", None),
            ("mixed:1", None),
            ("produce:1:big", None),
            ("produce:1:100:extra", None),
        ];
        for (number, (text, expected)) in cases.into_iter().enumerate() {
            let parsed = parse_cell(text)
                .ok()
                .map(|cell| (cell.consume, cell.clients, cell.message_bytes));
            assert_eq!(parsed, expected, "case {number}: {text}");
        }
    }

    #[test]
    fn dates_are_civil_utc() {
        use std::time::UNIX_EPOCH;
        let cases: [(u64, &str); 4] = [
            (0, "1970-01-01"),
            (951_782_400, "2000-02-29"),
            (1_709_251_199, "2024-02-29"),
            (1_767_225_600, "2026-01-01"),
        ];
        for (number, (seconds, expected)) in cases.into_iter().enumerate() {
            let date = utc_date(UNIX_EPOCH + Duration::from_secs(seconds));
            assert_eq!(date, expected, "case {number}");
        }
    }

    #[test]
    fn the_rss_line_names_payload_and_nodes() {
        let text = rss_text(&RssMeasurement {
            messages: 1_000_000,
            message_bytes: 100,
            acknowledged: 1_000_000,
            nodes: vec![(Some(10 * 1024), Some(300 * 1024)), (None, None)],
            fill_seconds: 120.0,
        });
        assert!(
            text.contains("95.4 MiB of payload"),
            "1e6 x 100 B = 95.4 MiB: {text}"
        );
        assert!(text.contains("node 0 300.0 MiB (idle 10.0 MiB)"), "{text}");
        assert!(text.contains("node 1 ? (idle ?)"), "{text}");
    }
}
