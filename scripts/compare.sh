#!/usr/bin/env bash
# rrmq beside NATS JetStream, RabbitMQ quorum queues (and etcd) on this machine, in one table:
# builds the release binaries and runs ../shared/peerbench/scripts/compare.sh with them
# (interleaved repetitions, fresh 3-node clusters on 127.0.0.1, 100-byte messages; it prints
# the machine's fdatasync probe and load average beside the table).
#
#   scripts/compare.sh            # 2 repetitions of rrmq, NATS and RabbitMQ
#   scripts/compare.sh 3          # 3 repetitions
#   SYSTEMS="rrmq nats" RRMQ_FLAGS="--fsync never" scripts/compare.sh
#
# Needs the peers installed and peerbench built once: see ../shared/peerbench/README.md.
set -euo pipefail

cd "$(dirname "$0")/.."
peerbench=${PEERBENCH:-$PWD/../shared/peerbench}
if [[ ! -x "$peerbench/scripts/compare.sh" ]]; then
    echo "no peerbench at $peerbench (set PEERBENCH=...); see its README" >&2
    exit 1
fi
cargo build --release --bins --quiet
RRMQ_BIN=$PWD/target/release exec "$peerbench/scripts/compare.sh" "$@"
