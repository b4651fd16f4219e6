//! Requests by type and outcome, with their latency: recorded by the client thread, which
//! sees every request arrive and every reply leave (answered on the spot or by the node
//! loop), so a request is counted once whatever path it took.
//!
//! The thread keeps its own handles to the series it has used, so a request costs a
//! hash-map lookup in a small local map, one counter increment and one histogram observe,
//! and never takes the registry's lock after the first request of its kind.

use super::{Metrics, RequestLabels, TypeLabels};
use crate::protocol::{Operation, Outcome, Reply};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::Histogram;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// The request type label of `operation`: a fixed, short list.
pub fn request_type(operation: &Operation) -> &'static str {
    #[allow(unreachable_patterns)] // Forms added later land in "other" until named here.
    match operation {
        Operation::CreateTopic { .. } | Operation::CreateTopicWith { .. } => "topic_create",
        Operation::ListTopics | Operation::ListTopicDetails => "topic_list",
        Operation::Put { .. } => "put",
        Operation::PutBatch { .. } => "put_batch",
        Operation::Get { .. } => "get",
        Operation::Fetch { .. } => "fetch",
        Operation::Ack { .. } => "ack",
        Operation::Nack { .. } => "nack",
        Operation::Touch { .. } => "touch",
        Operation::Status => "status",
        Operation::Stats => "stats",
        Operation::Fault { .. } => "fault",
        Operation::ListMembers => "member_list",
        Operation::AddMember { .. } => "member_add",
        Operation::RemoveMember { .. } => "member_remove",
        _ => "other",
    }
}

/// The type label of a request refused before it was understood (undecodable, invalid).
pub const INVALID_TYPE: &str = "invalid";

/// The outcome label of `reply`: `ok`, or the error code.
pub fn outcome_label(reply: &Reply) -> &'static str {
    match reply {
        Reply::Outcome {
            outcome: Outcome::Failed(error),
            ..
        } => error.code.as_str(),
        _ => "ok",
    }
}

/// The client thread's recorder.
pub struct RequestRecorder {
    metrics: Arc<Metrics>,
    counters: HashMap<(&'static str, &'static str), Counter>,
    latencies: HashMap<&'static str, Histogram>,
}

impl RequestRecorder {
    pub fn new(metrics: Arc<Metrics>) -> RequestRecorder {
        RequestRecorder {
            metrics,
            counters: HashMap::new(),
            latencies: HashMap::new(),
        }
    }

    /// A request of type `kind` received at `received_at` was answered with `outcome`.
    pub fn record(&mut self, kind: &'static str, outcome: &'static str, received_at: Instant) {
        let metrics = &self.metrics;
        self.counters
            .entry((kind, outcome))
            .or_insert_with(|| {
                metrics.requests.get_or_create_owned(&RequestLabels {
                    r#type: kind,
                    outcome,
                })
            })
            .inc();
        self.latencies
            .entry(kind)
            .or_insert_with(|| {
                metrics
                    .request_duration
                    .get_or_create_owned(&TypeLabels { r#type: kind })
            })
            .observe(received_at.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ErrorCode, ErrorInfo};

    #[test]
    fn requests_are_counted_by_type_and_outcome() {
        let metrics = Arc::new(Metrics::new());
        let mut recorder = RequestRecorder::new(metrics.clone());
        let failed = Reply::Outcome {
            outcome: Outcome::Failed(ErrorInfo::new(ErrorCode::NotLeader, "no")),
            leader: None,
        };
        let done = Reply::Outcome {
            outcome: Outcome::Done,
            leader: None,
        };
        let started = Instant::now();
        recorder.record("put", outcome_label(&done), started);
        recorder.record("put", outcome_label(&done), started);
        recorder.record("put", outcome_label(&failed), started);
        let text = metrics.encode();
        assert!(
            text.contains("rrmq_requests_total{type=\"put\",outcome=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("rrmq_requests_total{type=\"put\",outcome=\"NOT_LEADER\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("rrmq_request_duration_seconds_count{type=\"put\"} 3"),
            "{text}"
        );
    }
}
