#!/usr/bin/env bash
# Runs the standard benchmark matrix (`rrmq bench --matrix`) with release binaries, once
# with --fsync always and once with --fsync never, and prints both markdown tables, ready
# for docs/PERFORMANCE.md. Each cell starts a fresh local 3-node cluster on loopback.
#
#   scripts/bench-matrix.sh                      # both policies, default cell length (5 s)
#   scripts/bench-matrix.sh --cell-duration 10s  # extra arguments go to every matrix run
#   RSS_MESSAGES=1000000 scripts/bench-matrix.sh # also measure node RSS with 1M messages
#   POLICIES=always scripts/bench-matrix.sh      # one policy only
#   PROBE_DIR=/data scripts/bench-matrix.sh --data-root /data  # probe where the data goes
#
# The nodes and the load generator share this machine's cores: close other work first, and
# compare only numbers whose header shows a similar load average and fdatasync latency
# (scripts/machine-probe.sh prints both before each matrix, in the data dir: the temp dir
# unless PROBE_DIR says otherwise).
set -euo pipefail

cd "$(dirname "$0")/.."
cargo build --release --bins --quiet

policies=${POLICIES:-"always never"}
rss_messages=${RSS_MESSAGES:-}
for policy in $policies; do
    extra=()
    if [[ -n "$rss_messages" && "$policy" == always ]]; then
        extra+=(--rss-messages "$rss_messages")
    fi
    scripts/machine-probe.sh "${PROBE_DIR:-${TMPDIR:-/tmp}}"
    target/release/rrmq bench --matrix --fsync "$policy" "${extra[@]}" "$@"
    echo
done
