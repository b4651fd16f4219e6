#!/usr/bin/env bash
# What the metrics endpoint costs: `rrmq bench produce -c 64` on a fresh 3-node cluster
# (release build, loopback, --fsync always unless FSYNC says otherwise), in three modes
# interleaved REPS times so the machine's noise falls on all alike:
#
#   off      no metrics_port (nothing is recorded);
#   on       metrics_port on every node, nobody scraping;
#   scraped  metrics_port on every node, and a scraper GETting /metrics of all three nodes
#            every SCRAPE_INTERVAL (100 ms), as a Prometheus with a 100 ms interval would.
#
# Prints the machine probe and load average, every run, and a Markdown table of medians with
# each mode's throughput relative to `off` (and `scraped` relative to `on`).
#
#   scripts/scrape-cost.sh                      # REPS=3, 10 s per run
#   REPS=5 DURATION=20s scripts/scrape-cost.sh
#
# Everything goes under a fresh temp dir ($OUT to choose), removed unless KEEP=1. Nodes and
# the scraper are stopped by the PIDs this script started.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=scripts/lib/cluster.sh
source "$root/scripts/lib/cluster.sh"
if [[ -z "${RRMQ_BIN:-}" ]]; then
    cargo build --release --bins --quiet
fi
bin=${RRMQ_BIN:-$root/target/release}
rrmq=$bin/rrmq
node_bin=$bin/rrmq-node

reps=${REPS:-3}
duration=${DURATION:-10s}
fsync=${FSYNC:-always}
clients=${CLIENTS:-64}
interval=${SCRAPE_INTERVAL:-0.1}
out=${OUT:-$(mktemp -d /tmp/rrmq-scrape-cost.XXXXXX)}
mkdir -p "$out"
results=$out/results.jsonl
: > "$results"
pids=()
scraper=""

stop_all() {
    if [[ -n "$scraper" ]]; then kill -TERM "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; fi
    scraper=""
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
cleanup() {
    stop_all
    if [[ "${KEEP:-0}" != 1 ]]; then rm -rf "$out"; fi
}
trap cleanup EXIT

# Writes $dir/config.json (with metrics ports unless $2 = off) and starts the nodes.
start_cluster() {
    local dir=$1 mode=$2 ports
    rm -rf "$dir"; mkdir -p "$dir"
    read -r -a ports <<< "$(free_ports 9)"
    python3 - "$dir/config.json" "$mode" "${ports[*]}" <<'PY'
import json, sys
path, mode, ports = sys.argv[1], sys.argv[2], [int(p) for p in sys.argv[3].split()]
addresses = []
for i in range(3):
    address = {"ip": "127.0.0.1", "port": ports[3 * i], "internal_port": ports[3 * i + 1]}
    if mode != "off":
        address["metrics_port"] = ports[3 * i + 2]
    addresses.append(address)
json.dump({"addresses": addresses}, open(path, "w"))
PY
    for i in 0 1 2; do
        "$node_bin" "$dir/config.json" "$i" --data-dir "$dir/data-$i" --fsync "$fsync" \
            > "$dir/node-$i.log" 2>&1 < /dev/null &
        pids+=($!)
    done
    for _ in $(seq 1 150); do
        if "$rrmq" --config "$dir/config.json" --timeout 1s status --json 2>/dev/null \
            | python3 -c 'import json,sys; sys.exit(0 if any(n.get("role") == "Leader" for n in json.load(sys.stdin)["nodes"]) else 1)' 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    echo "no leader within 30 s ($mode); logs in $dir" >&2
    return 1
}

# GETs /metrics of every node every $interval s until killed; counts scrapes and bytes.
start_scraper() {
    local dir=$1
    python3 - "$dir/config.json" "$interval" "$dir/scrapes.txt" <<'PY' &
import json, signal, sys, time, urllib.request
config, interval, report = sys.argv[1], float(sys.argv[2]), sys.argv[3]
ports = [a["metrics_port"] for a in json.load(open(config))["addresses"]]
scrapes = failures = size = 0
running = True
def stop(*_):
    global running
    running = False
signal.signal(signal.SIGTERM, stop)
next_at = time.monotonic()
while running:
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                size += len(r.read())
                scrapes += 1
        except Exception:
            failures += 1
    next_at += interval
    time.sleep(max(0.0, next_at - time.monotonic()))
open(report, "w").write(f"{scrapes} scrapes ({failures} failed), {size // max(scrapes, 1)} bytes each\n")
PY
    scraper=$!
}

run_produce() {  # dir mode rep
    local dir=$1 mode=$2 rep=$3 json
    json=$("$rrmq" bench produce --config "$dir/config.json" -c "$clients" --duration "$duration" --json)
    python3 - "$json" "$mode" "$rep" >> "$results" <<'PY'
import json, sys
report, mode, rep = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
op = [o for o in report["operations"] if o["operation"] == "put"][-1]
print(json.dumps({"mode": mode, "rep": rep, "ops_per_s": op["ops_per_second"],
                  "p50_ms": op["latency_ms"]["p50"], "p99_ms": op["latency_ms"]["p99"]}))
PY
}

scripts/machine-probe.sh "$out"
for rep in $(seq 1 "$reps"); do
    for mode in off on scraped; do
        echo "--- rep $rep: $mode $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
        start_cluster "$out/$mode" "$mode"
        if [[ $mode == scraped ]]; then start_scraper "$out/$mode"; fi
        run_produce "$out/$mode" "$mode" "$rep"
        tail -n 1 "$results"
        stop_all
        if [[ -f "$out/$mode/scrapes.txt" ]]; then echo "    scraper: $(cat "$out/$mode/scrapes.txt")"; fi
    done
done
echo "--- done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"

python3 - "$results" "$clients" "$duration" "$fsync" "$interval" <<'PY'
import json, statistics, sys
path, clients, duration, fsync, interval = sys.argv[1:]
runs = [json.loads(line) for line in open(path)]
def median(mode, key):
    values = [r[key] for r in runs if r["mode"] == mode]
    return statistics.median(values) if values else float("nan")
print(f"\nproduce -c {clients}, {duration} per run, --fsync {fsync}, 100-byte messages, "
      f"scrape every {float(interval) * 1000:.0f} ms of all 3 nodes; medians of "
      f"{len(runs) // 3} interleaved runs per mode\n")
print("| mode | msgs/s | vs off | p50 ms | p99 ms |")
print("|---|---:|---:|---:|---:|")
base = median("off", "ops_per_s")
for mode in ("off", "on", "scraped"):
    ops = median(mode, "ops_per_s")
    print(f"| {mode} | {ops:,.0f} | {100 * (ops / base - 1):+.1f} % | "
          f"{median(mode, 'p50_ms'):.2f} | {median(mode, 'p99_ms'):.2f} |")
on = median("on", "ops_per_s")
print(f"\nscraped vs on: {100 * (median('scraped', 'ops_per_s') / on - 1):+.1f} %")
PY
