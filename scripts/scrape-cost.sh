#!/usr/bin/env bash
# What scraping the metrics endpoint costs: `rrmq bench produce -c 64` (release build,
# loopback, --fsync always unless FSYNC says otherwise) with and without a scraper that
# GETs /metrics of all three nodes every SCRAPE_INTERVAL (100 ms), as a Prometheus with a
# 100 ms interval would (one kept-alive HTTP connection per node, as Prometheus keeps).
#
# Part 1, the figure (issue 17): ONE cluster with metrics_port on every node; PAIRS rounds
# of two runs each, one scraped and one not, in the order scraped-quiet, quiet-scraped,
# ... (ABBA), so the drift of a long-lived cluster (its growing log and queues) and the
# machine's slower moods fall on both alike. Each round gives one paired ratio; the
# median of the ratios is the cost. Different clusters differ by more than the cost
# measured (leader placement, where the OS puts the threads), hence one cluster.
#
# Part 2 (FRESH=N rounds, default 0): the cost of recording at all: a fresh cluster per
# run in three modes, interleaved: off (no metrics_port), on (nobody scrapes), scraped.
#
# Prints the machine probe and load average, every run, the scraper's own CPU, and
# Markdown tables.
#
#   scripts/scrape-cost.sh                        # PAIRS=8, 8 s measured per run
#   PAIRS=12 DURATION=10s FRESH=3 scripts/scrape-cost.sh
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

pairs=${PAIRS:-8}
fresh=${FRESH:-0}
duration=${DURATION:-8s}
warmup=${WARMUP:-2s}
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
    stop_scraper
    stop_pids
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

# GETs /metrics of every node every $interval s until killed, over one kept-alive
# connection per node; writes how many scrapes, their size and its own CPU time.
start_scraper() {
    local dir=$1
    python3 - "$dir/config.json" "$interval" "$dir/scrapes.txt" <<'PY' &
import http.client, json, os, signal, sys, time
config, interval, report = sys.argv[1], float(sys.argv[2]), sys.argv[3]
ports = [a["metrics_port"] for a in json.load(open(config))["addresses"]]
connections = {port: None for port in ports}
scrapes = failures = size = 0
running = True
def stop(*_):
    global running
    running = False
signal.signal(signal.SIGTERM, stop)
started = time.monotonic()
next_at = started
while running:
    for port in ports:
        try:
            if connections[port] is None:
                connections[port] = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connections[port].request("GET", "/metrics")
            size += len(connections[port].getresponse().read())
            scrapes += 1
        except Exception:
            failures += 1
            if connections[port] is not None:
                connections[port].close()
            connections[port] = None
    next_at += interval
    time.sleep(max(0.0, next_at - time.monotonic()))
elapsed = time.monotonic() - started
cpu = sum(os.times()[:2])
with open(report, "a") as out:
    out.write(f"{scrapes} scrapes ({failures} failed), {size // max(scrapes, 1)} bytes each, "
              f"scraper CPU {cpu:.2f} s in {elapsed:.1f} s ({100 * cpu / elapsed:.1f} % of a core)\n")
PY
    scraper=$!
}

stop_scraper() {
    if [[ -n "$scraper" ]]; then kill -TERM "$scraper" 2>/dev/null || true; wait "$scraper" 2>/dev/null || true; fi
    scraper=""
}

# What one scrape costs the node that answers it, in CPU: the nodes' CPU time (all threads,
# from /proc) over 1,000 back-to-back scrapes of each node, less what the idle cluster used
# in the same wall time. Run before any load, so the nodes are otherwise idle.
cpu_per_scrape() {
    local dir=$1
    python3 - "$dir/config.json" "${pids[@]}" <<'PY'
import http.client, json, os, sys, time
config, pids = sys.argv[1], sys.argv[2:]
ports = [a["metrics_port"] for a in json.load(open(config))["addresses"]]
ticks = os.sysconf("SC_CLK_TCK")
def cpu():  # seconds of user + system time of all the nodes
    total = 0
    for pid in pids:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / ticks
connections = [http.client.HTTPConnection("127.0.0.1", port, timeout=5) for port in ports]
count = 1000
before, started = cpu(), time.monotonic()
size = 0
for _ in range(count):
    for connection in connections:
        connection.request("GET", "/metrics")
        size += len(connection.getresponse().read())
busy, elapsed = cpu() - before, time.monotonic() - started
before = cpu()
time.sleep(elapsed)
idle = cpu() - before
per = (busy - idle) / (count * len(ports))
print(f"CPU per scrape in the node: {per * 1e6:.0f} us ({count * len(ports)} scrapes of "
      f"{size // (count * len(ports))} bytes in {elapsed:.2f} s; nodes' CPU {busy:.2f} s, idle "
      f"{idle:.2f} s in as long); at 10 scrapes/s per node: {per * 10 * 100:.2f} % of a core each")
PY
}

run_produce() {  # dir mode rep
    local dir=$1 mode=$2 rep=$3 json
    json=$("$rrmq" bench produce --config "$dir/config.json" -c "$clients" --duration "$duration" \
        --warmup "$warmup" --json)
    python3 - "$json" "$mode" "$rep" >> "$results" <<'PY'
import json, sys
report, mode, rep = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
op = [o for o in report["operations"] if o["operation"] == "put"][-1]
print(json.dumps({"mode": mode, "rep": rep, "ops_per_s": op["ops_per_second"],
                  "p50_ms": op["latency_ms"]["p50"], "p99_ms": op["latency_ms"]["p99"]}))
PY
}

echo "machine: $(scripts/machine-probe.sh "$out")"

echo "=== part 1: one cluster with metrics_port, $pairs rounds scraped/quiet (ABBA)"
start_cluster "$out/paired" on
cpu_per_scrape "$out/paired"
for round in $(seq 1 "$pairs"); do
    if (( round % 2 )); then order="scraped quiet"; else order="quiet scraped"; fi
    for mode in $order; do
        echo "--- round $round: $mode $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
        if [[ $mode == scraped ]]; then start_scraper "$out/paired"; fi
        run_produce "$out/paired" "$mode" "$round"
        stop_scraper
        tail -n 1 "$results"
        if [[ $mode == scraped ]]; then echo "    scraper: $(tail -n 1 "$out/paired/scrapes.txt")"; fi
    done
done
stop_all

if (( fresh > 0 )); then
    echo "=== part 2: a fresh cluster per run, off / on / scraped, $fresh rounds"
    for rep in $(seq 1 "$fresh"); do
        for mode in off on fresh-scraped; do
            echo "--- rep $rep: $mode $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
            start_cluster "$out/$mode" "${mode#fresh-}"
            if [[ $mode == fresh-scraped ]]; then start_scraper "$out/$mode"; fi
            run_produce "$out/$mode" "$mode" "$rep"
            tail -n 1 "$results"
            stop_all
        done
    done
fi
echo "--- done $(date -u +%T) load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "machine: $(scripts/machine-probe.sh "$out")"

python3 - "$results" "$clients" "$duration" "$fsync" "$interval" <<'PY'
import json, statistics, sys
path, clients, duration, fsync, interval = sys.argv[1:]
runs = [json.loads(line) for line in open(path)]
def of(mode, key="ops_per_s"):
    return [r[key] for r in runs if r["mode"] == mode]
print(f"\nproduce -c {clients}, {duration} measured per run, --fsync {fsync}, 100-byte "
      f"messages, scrape every {float(interval) * 1000:.0f} ms of all 3 nodes\n")
rounds = {}
for r in runs:
    if r["mode"] in ("scraped", "quiet"):
        rounds.setdefault(r["rep"], {})[r["mode"]] = r
ratios = [100 * (pair["scraped"]["ops_per_s"] / pair["quiet"]["ops_per_s"] - 1)
          for pair in rounds.values() if len(pair) == 2]
print(f"one cluster, {len(ratios)} rounds (ABBA):\n")
print("| | msgs/s (median) | p50 ms | p99 ms |")
print("|---|---:|---:|---:|")
for mode in ("quiet", "scraped"):
    print(f"| {mode} | {statistics.median(of(mode)):,.0f} | "
          f"{statistics.median(of(mode, 'p50_ms')):.2f} | {statistics.median(of(mode, 'p99_ms')):.2f} |")
print(f"\nscraped vs quiet, per round: {', '.join(f'{x:+.1f}' for x in ratios)} %")
print(f"median {statistics.median(ratios):+.1f} %, mean {statistics.mean(ratios):+.1f} %"
      + (f", stdev {statistics.stdev(ratios):.1f}" if len(ratios) > 1 else ""))
if of("off"):
    base = statistics.median(of("off"))
    print(f"\nfresh clusters, medians of {len(of('off'))} interleaved runs per mode:\n")
    print("| mode | msgs/s | vs off | p50 ms | p99 ms |")
    print("|---|---:|---:|---:|---:|")
    for mode in ("off", "on", "fresh-scraped"):
        ops = statistics.median(of(mode))
        print(f"| {mode} | {ops:,.0f} | {100 * (ops / base - 1):+.1f} % | "
              f"{statistics.median(of(mode, 'p50_ms')):.2f} | {statistics.median(of(mode, 'p99_ms')):.2f} |")
PY
