#!/usr/bin/env bash
# Interleaved A/B of two builds on one `rrmq bench` workload: each run starts a fresh local
# 3-node cluster (`rrmq cluster`, as scripts/cpu-per-request.sh does) with one build's
# binaries, runs the bench args given, stops the cluster; the builds alternate A, B, A, B,
# ... for ROUNDS rounds, and the medians come last. The machine's state (scripts/machine-
# probe.sh: load average, fdatasync latency) is printed before every run.
#
#   scripts/ab.sh A_BIN_DIR B_BIN_DIR produce -c 64 --duration 10s
#   scripts/ab.sh /tmp/base/target/release target/release produce --batch 100 -c 16 --duration 10s
#   ROUNDS=5 FSYNC=never scripts/ab.sh A B produce -c 1 --duration 10s
#
# A_BIN_DIR and B_BIN_DIR hold `rrmq` and `rrmq-node` (release builds). The bench runs with
# the A build's `rrmq` both times unless BENCH_BIN says which `rrmq` drives the load, so only
# the nodes differ. Figures: messages/s for batch calls, else calls/s, of the first
# operation in the report (the PUTs of `produce`), with its p50. Per-run JSON goes to $OUT
# (default: a new directory under /tmp).
set -euo pipefail

if [[ $# -lt 3 ]]; then
    sed -n '2,16p' "$0" >&2
    exit 2
fi
cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=scripts/lib/cluster.sh
source "$root/scripts/lib/cluster.sh"
a_dir=$(cd "$1" && pwd)
b_dir=$(cd "$2" && pwd)
shift 2
rounds=${ROUNDS:-3}
fsync=${FSYNC:-always}
bench_bin=${BENCH_BIN:-$a_dir/rrmq}
out=${OUT:-$(mktemp -d /tmp/rrmq-ab.XXXXXX)}
mkdir -p "$out"
work=""
launcher=""

stop_cluster() {
    if [[ -n "$launcher" ]]; then
        kill -TERM "$launcher" 2>/dev/null || true
        wait "$launcher" 2>/dev/null || true
        launcher=""
    fi
    if [[ -n "$work" ]]; then
        rm -rf "$work"
        work=""
    fi
}
trap stop_cluster EXIT

# run LABEL BIN_DIR RUN_NUMBER
run() {
    local label=$1 dir=$2 number=$3
    shift 3
    work=$(mktemp -d /tmp/rrmq-ab-cluster.XXXXXX)
    local probe
    probe=$("$root/scripts/machine-probe.sh" "$work")
    write_local_config "$work/config.json"
    "$dir/rrmq" --config "$work/config.json" cluster --node-bin "$dir/rrmq-node" \
        --data-root "$work/data" --fsync "$fsync" > "$work/cluster.log" 2>&1 &
    launcher=$!
    if ! wait_for_leader "$work/cluster.log"; then
        cat "$work/cluster.log" >&2
        stop_cluster
        return 1
    fi
    local json=$out/$label-$number.json
    if ! "$bench_bin" --config "$work/config.json" --json bench "$@" > "$json"; then
        echo "$label run $number: bench failed" >&2
    fi
    stop_cluster
    python3 - "$json" "$label" "$number" "$probe" >> "$out/runs.txt" <<'PY'
import json, sys
path, label, number, probe = sys.argv[1:5]
try:
    op = json.load(open(path))["operations"][0]
    rate = op.get("messages_per_second") or op["ops_per_second"]
    p50 = (op.get("latency_ms") or {}).get("p50")
    print(f"{label}\t{number}\t{rate:.0f}\t{p50}\t{probe}")
except (OSError, ValueError, KeyError, IndexError, TypeError) as error:
    print(f"{label}\t{number}\tnan\tNone\t{probe} (no result: {error})")
PY
    tail -n1 "$out/runs.txt"
}

echo "A = $a_dir, B = $b_dir; bench: $bench_bin bench $*; fsync $fsync; $rounds rounds"
for number in $(seq "$rounds"); do
    run A "$a_dir" "$number" "$@"
    run B "$b_dir" "$number" "$@"
done

python3 - "$out/runs.txt" <<'PY'
import math, statistics, sys
rows = [line.rstrip("\n").split("\t") for line in open(sys.argv[1]) if line.strip()]
for label in ("A", "B"):
    rates = [float(r[2]) for r in rows if r[0] == label and not math.isnan(float(r[2]))]
    p50s = [float(r[3]) for r in rows if r[0] == label and r[3] != "None"]
    if rates:
        print(f"{label}: per run {', '.join(f'{x:,.0f}' for x in rates)}; "
              f"median {statistics.median(rates):,.0f}/s"
              + (f", p50 median {statistics.median(p50s):.3f} ms" if p50s else ""))
PY
echo "results in $out"
