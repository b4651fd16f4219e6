#!/usr/bin/env bash
# What CURVE costs: the same 3-node cluster (release build, loopback, --fsync always unless
# FSYNC says otherwise) measured plain and keyed (peer keys and a listed client, so both the
# peer port and the client port speak CURVE), interleaved REPS times so the machine's noise
# falls on both alike. Workloads: produce C=1, produce C=64, consume C=16, 100-byte messages.
# Prints the machine probe, every run, and a Markdown table of medians with the ratios.
#
#   scripts/bench-curve.sh            # REPS=3, 10 s per produce run
#   REPS=5 DURATION=5s CONSUME_MESSAGES=10000 scripts/bench-curve.sh
#
# Everything goes under a fresh temp dir ($OUT to choose), removed unless KEEP=1. Nodes are
# stopped by the PIDs this script started.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=scripts/lib/cluster.sh
source "$root/scripts/lib/cluster.sh"
cargo build --release --bins --quiet
rrmq=$root/target/release/rrmq
node_bin=$root/target/release/rrmq-node

reps=${REPS:-3}
duration=${DURATION:-10s}
fsync=${FSYNC:-always}
out=${OUT:-$(mktemp -d /tmp/rrmq-bench-curve.XXXXXX)}
mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
pids=()

cleanup() {
    stop_pids
    if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$out"; fi
}
trap cleanup EXIT

# Writes $dir/config.json (keyed when $2 = curve) and starts the nodes.
start_cluster() {
    local dir=$1 mode=$2 ports
    rm -rf "$dir"; mkdir -p "$dir"
    read -r -a ports <<< "$(free_ports 6)"
    local keys=()
    if [[ $mode == curve ]]; then
        for i in 0 1 2; do keys+=("$("$rrmq" keygen "$dir/node-$i.key")"); done
        client_key=$("$rrmq" keygen "$dir/client.key")
    fi
    python3 - "$dir/config.json" "$mode" "${ports[*]}" "${keys[*]:-}" "${client_key:-}" <<'PY'
import json, sys
path, mode, ports, keys, client = sys.argv[1], sys.argv[2], sys.argv[3].split(), sys.argv[4].split(), sys.argv[5]
addresses = [{"ip": "127.0.0.1", "port": int(ports[2 * i]), "internal_port": int(ports[2 * i + 1])} for i in range(3)]
config = {"addresses": addresses}
if mode == "curve":
    for address, key in zip(addresses, keys):
        address["public_key"] = key
    config["clients"] = [{"name": "bench", "public_key": client, "produce": ["*"], "consume": ["*"], "admin": True}]
json.dump(config, open(path, "w"))
PY
    for i in 0 1 2; do
        local flags=(--data-dir "$dir/data-$i" --fsync "$fsync")
        if [[ $mode == curve ]]; then flags+=(--key-file "$dir/node-$i.key"); fi
        "$node_bin" "$dir/config.json" "$i" "${flags[@]}" > "$dir/node-$i.log" 2>&1 < /dev/null &
        pids+=($!)
    done
    local client_flags=()
    if [[ $mode == curve ]]; then client_flags=(--key-file "$dir/client.key"); fi
    for _ in $(seq 1 150); do
        if "$rrmq" --config "$dir/config.json" "${client_flags[@]}" --timeout 1s status --json 2>/dev/null \
            | python3 -c 'import json,sys; sys.exit(0 if any(n.get("role") == "Leader" for n in json.load(sys.stdin)["nodes"]) else 1)' 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "no leader within 30 s ($mode); logs in $dir" >&2
    return 1
}

run_workload() {  # dir mode workload clients rep
    local dir=$1 mode=$2 workload=$3 clients=$4 rep=$5 json
    local client_flags=()
    if [[ $mode == curve ]]; then client_flags=(--key-file "$dir/client.key"); fi
    if [[ $workload == produce ]]; then
        json=$("$rrmq" bench produce --config "$dir/config.json" "${client_flags[@]}" -c "$clients" --duration "$duration" --json)
    else
        json=$("$rrmq" bench consume --config "$dir/config.json" "${client_flags[@]}" -c "$clients" --messages "${CONSUME_MESSAGES:-20000}" --json)
    fi
    python3 - "$json" "$mode" "$workload" "$clients" "$rep" >> "$results" <<'PY'
import json, sys
report, mode, workload, clients, rep = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5]
op = [o for o in report["operations"] if o["operation"] in ("put", "get")][-1]
print(json.dumps({"mode": mode, "workload": workload, "c": clients, "rep": rep,
                  "ops_per_s": op["ops_per_second"], "p50_ms": op["latency_ms"]["p50"], "p99_ms": op["latency_ms"]["p99"]}))
PY
}

scripts/machine-probe.sh "$out"
for rep in $(seq 1 "$reps"); do
    for mode in plain curve; do
        echo "--- rep $rep: $mode $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
        start_cluster "$out/$mode" "$mode"
        for workload in "produce 1" "produce 64" "consume 16"; do
            # shellcheck disable=SC2086
            run_workload "$out/$mode" "$mode" $workload "$rep"
        done
        stop_pids
    done
done
echo "after: load $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$results" <<'PY'
import json, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    r = json.loads(line)
    rows.setdefault((r["workload"], r["c"], r["mode"]), []).append(r)
print("\n| workload | C | plain msg/s | CURVE msg/s | CURVE/plain | plain p50 ms | CURVE p50 ms | p50 difference ms | runs (msg/s plain; CURVE) |")
print("|---|--:|--:|--:|--:|--:|--:|--:|---|")
for workload, c in [("produce", 1), ("produce", 64), ("consume", 16)]:
    plain, curve = rows.get((workload, c, "plain"), []), rows.get((workload, c, "curve"), [])
    if not plain or not curve:
        continue
    med = lambda rs, k: statistics.median(r[k] for r in rs)
    p_ops, c_ops = med(plain, "ops_per_s"), med(curve, "ops_per_s")
    p50p, p50c = med(plain, "p50_ms"), med(curve, "p50_ms")
    runs = ", ".join(f"{r['ops_per_s']:.0f}" for r in plain) + "; " + ", ".join(f"{r['ops_per_s']:.0f}" for r in curve)
    print(f"| {workload} | {c} | {p_ops:,.0f} | {c_ops:,.0f} | {c_ops / p_ops:.3f} | {p50p:.3f} | {p50c:.3f} | {p50c - p50p:+.3f} | {runs} |")
PY
