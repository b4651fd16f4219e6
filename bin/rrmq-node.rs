//! `rrmq-node CONFIG INDEX [flags]`: runs one node of an rrmq cluster.
//!
//! Thin on purpose: parse flags, set up logging, call `rrmq::node::run_with_args`. Every
//! error becomes one line on stderr (`rrmq-node: config.json: index 5 out of range (3
//! nodes)`) and a non-zero exit code; no panic, no backtrace.

use clap::Parser;
use rrmq::node::NodeArgs;
use std::process::ExitCode;

/// Exit code for command-line usage errors (as clap and BSD sysexits use).
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args = match NodeArgs::try_parse() {
        Ok(args) => args,
        Err(error) => {
            use clap::error::ErrorKind;
            if matches!(
                error.kind(),
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
            ) {
                let _ = error.print();
                return ExitCode::SUCCESS;
            }
            eprintln!("rrmq-node: {}", usage_error_line(&error));
            return ExitCode::from(EXIT_USAGE);
        }
    };
    init_logging(args.log_level.as_deref(), args.index);
    match rrmq::node::run_with_args(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("rrmq-node: {error}");
            ExitCode::FAILURE
        }
    }
}

/// clap's message on one line, without its `error: ` prefix, usage block and tips.
fn usage_error_line(error: &clap::Error) -> String {
    let rendered = error.render().to_string();
    let message: Vec<&str> = rendered
        .lines()
        .map(str::trim)
        .take_while(|line| !line.is_empty() && !line.starts_with("Usage:"))
        .collect();
    let message = message.join(" ");
    let message = message.strip_prefix("error: ").unwrap_or(&message);
    format!("{message} (see --help)")
}

/// `--log-level` wins, then `RUST_LOG`, then `info`. Logs go to stderr with timestamps and
/// the node's index, so the interleaved output of `rrmq cluster` says which node spoke.
fn init_logging(level: Option<&str>, index: u64) {
    let mut builder = env_logger::Builder::new();
    builder.filter_level(log::LevelFilter::Info);
    match level {
        Some(filter) => {
            builder.parse_filters(filter);
        }
        None => {
            if let Ok(filter) = std::env::var("RUST_LOG") {
                builder.parse_filters(&filter);
            }
        }
    }
    builder
        .format(move |out, record| {
            use std::io::Write;
            writeln!(
                out,
                "{} {:<5} node {index} {}: {}",
                out.timestamp_millis(),
                record.level(),
                record.target(),
                record.args()
            )
        })
        .init();
}
