#!/usr/bin/env bash
# rrmq beside NATS JetStream, RabbitMQ quorum queues (and etcd) on this machine, in one table:
# builds the release binaries and runs ../shared/peerbench/scripts/compare.sh with them, one
# repetition at a time (fresh 3-node clusters on 127.0.0.1, 100-byte messages; each call
# prints the machine's fdatasync probe and load average), then merges the repetitions into
# one table of medians.
#
# rrmq runs twice per repetition, because the peers' clients connect differently:
# peerbench's NATS workers share ONE connection (async-nats multiplexes them), its RabbitMQ
# workers open one connection EACH. So rrmq is measured both ways (`rrmq bench
# --connections`, chosen through RRMQ_BENCH_CONNECTIONS since peerbench runs the command):
# "rrmq, shared" is the row to hold against NATS, "rrmq, per client" the one against
# RabbitMQ. Order within a repetition: rrmq per client, rrmq shared, then the peers.
#
#   scripts/compare.sh            # 2 repetitions
#   scripts/compare.sh 3          # 3 repetitions
#   SYSTEMS="nats" RRMQ_FLAGS="--fsync never" scripts/compare.sh
#   RRMQ_MODES="shared" scripts/compare.sh   # rrmq one way only
#
# Needs the peers installed and peerbench built once: see ../shared/peerbench/README.md.
set -euo pipefail

cd "$(dirname "$0")/.."
peerbench=${PEERBENCH:-$PWD/../shared/peerbench}
if [[ ! -x "$peerbench/scripts/compare.sh" ]]; then
    echo "no peerbench at $peerbench (set PEERBENCH=...); see its README" >&2
    exit 1
fi
reps=${1:-2}
peers=${SYSTEMS:-"nats rabbitmq"}
modes=${RRMQ_MODES:-"per-client shared"}
cargo build --release --bins --quiet
export RRMQ_BIN=$PWD/target/release

# run_peerbench LABEL SYSTEMS [env...]: one repetition; appends "LABEL RESULTS-FILE" to $index.
index=$(mktemp)
trap 'rm -f "$index"' EXIT
# Prints the machine line (fdatasync probe, load), the run lines and any failure as they come.
run_peerbench() {
    local label=$1 systems=$2 log out
    shift 2
    log=$(mktemp)
    env "$@" SYSTEMS="$systems" "$peerbench/scripts/compare.sh" 1 > "$log" || true
    grep -E '^(machine|---)|failed|did not start' "$log" || true
    out=$(sed -n 's/^results: //p' "$log")
    rm -f "$log"
    [[ -n "$out" ]] && echo "$label $out" >> "$index"
}

for rep in $(seq 1 "$reps"); do
    echo "=== repetition $rep of $reps"
    for mode in $modes; do
        run_peerbench "rrmq-$mode" rrmq RRMQ_BENCH_CONNECTIONS="$mode"
    done
    [[ -n "$peers" ]] && run_peerbench peers "$peers"
done

python3 - "$index" <<'PY'
import json, statistics, sys
names = {"rrmq-per-client": "rrmq, per client", "rrmq-shared": "rrmq, shared"}
rows, files = {}, []
for line in open(sys.argv[1]):
    label, path = line.split(maxsplit=1)
    files.append(path.strip())
    for record in open(path.strip()):
        r = json.loads(record)
        system = r.get("system") or r.get("adapter")
        if system == "rrmq":
            system = names.get(label, label)
        rows.setdefault((system, r["workload"], r["c"]), []).append(r)
print("\nresults:", " ".join(files), "\n")
print("| system | workload | C | msg/s (median; runs) | p50 ms | p99 ms |\n|---|---|--:|--:|--:|--:|")
for (s, w, c), rs in sorted(rows.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
    ops = sorted(x["ops_per_s"] for x in rs)
    p50 = statistics.median(x["latency"]["p50_us"] for x in rs) / 1e3
    p99 = statistics.median(x["latency"]["p99_us"] for x in rs) / 1e3
    print(f"| {s} | {w} | {c} | {statistics.median(ops):,.0f} ({', '.join(f'{o:,.0f}' for o in ops)}) | {p50:.2f} | {p99:.2f} |")
PY
