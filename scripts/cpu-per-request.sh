#!/usr/bin/env bash
# What does one PUT cost the three nodes, thread by thread? Starts a local 3-node cluster
# (release build, `rrmq cluster`, --fsync always by default), runs `rrmq bench produce -c 1`
# for a few seconds, and reads every node's threads from /proc before and after: CPU time
# (utime + stime of /proc/PID/task/TID/stat, read in nanoseconds from .../schedstat where
# the kernel has it), voluntary and involuntary context switches
# (/proc/PID/task/TID/status), each divided by the PUTs the bench had acknowledged. With
# perf available (Debian: linux-perf) and SYSCALLS=1 (the default when perf runs), a second
# run of the same length counts syscalls per thread (raw_syscalls:sys_enter tracepoint,
# `perf stat --per-thread`); it is separate so the tracepoint does not inflate the CPU run.
#
#   scripts/cpu-per-request.sh                       # 3 runs of 5 s, C=1, fsync always
#   RUNS=5 SECONDS_MEASURED=5 CLIENTS=1 scripts/cpu-per-request.sh
#   BIN_DIR=/tmp/rrmq-a scripts/cpu-per-request.sh   # binaries of another build (A/B)
#   FSYNC=never SYSCALLS=0 scripts/cpu-per-request.sh
#
# Each run starts with a 1 s warm-up bench on the same cluster (connections, the leader's
# caches); the CPU read covers the whole measured bench process, including its connect and
# topic creation (a handful of requests against thousands). The machine's state goes above
# the tables (scripts/machine-probe.sh); other work on the machine shows up as involuntary
# switches and spread between runs: compare builds run back to back, several times.
# Results go to $OUT (default: a new directory under /tmp) as JSON, and to stdout as tables.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=scripts/lib/cluster.sh
source "$root/scripts/lib/cluster.sh"
if [[ -z "${BIN_DIR:-}" ]]; then
    cargo build --release --bins --quiet
    bin_dir=$root/target/release
else
    bin_dir=$BIN_DIR
fi
rrmq=$bin_dir/rrmq
node_bin=$bin_dir/rrmq-node

runs=${RUNS:-3}
clients=${CLIENTS:-1}
fsync=${FSYNC:-always}
seconds=${SECONDS_MEASURED:-5}
syscalls=${SYSCALLS:-1}
command -v perf >/dev/null || syscalls=0
out=${OUT:-$(mktemp -d /tmp/rrmq-cpu.XXXXXX)}
mkdir -p "$out"
work=$(mktemp -d /tmp/rrmq-cpu-cluster.XXXXXX)
launcher=""

cleanup() {
    if [[ -n "$launcher" ]]; then
        kill -TERM "$launcher" 2>/dev/null || true
        wait "$launcher" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

"$root/scripts/machine-probe.sh" "$work" | tee "$out/machine.txt"

write_local_config "$work/config.json"

"$rrmq" --config "$work/config.json" cluster --node-bin "$node_bin" \
    --data-root "$work/data" --fsync "$fsync" > "$work/cluster.log" 2>&1 &
launcher=$!
wait_for_leader "$work/cluster.log" || { cat "$work/cluster.log"; exit 1; }
leader_id=$(sed -n 's/^leader: node \([0-9]*\) .*/\1/p' "$work/cluster.log")
nodes=$(sed -n 's/^node \([0-9]*\): pid \([0-9]*\),.*/\1:\2/p' "$work/cluster.log" | tr '\n' ' ')
pids=$(sed -n 's/^node [0-9]*: pid \([0-9]*\),.*/\1/p' "$work/cluster.log" | paste -sd, -)
echo "cluster in $work: nodes (id:pid) $nodes, leader node $leader_id; build $bin_dir"

# Per-thread counters of every node, as JSON: {pid: {tid: [comm, ticks, vcs, ivcs, ns]}}.
snapshot() {
    python3 - "$pids" <<'PY'
import json, os, sys
result = {}
for pid in sys.argv[1].split(","):
    threads = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            stat = open(f"/proc/{pid}/task/{tid}/stat").read()
            status = open(f"/proc/{pid}/task/{tid}/status").read()
        except OSError:
            continue  # the thread exited meanwhile
        comm = stat[stat.index("(") + 1:stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2:].split()
        ticks = int(fields[11]) + int(fields[12])  # utime + stime (fields 14, 15)
        try:  # the same time in nanoseconds (sum_exec_runtime), finer than a tick
            nanos = int(open(f"/proc/{pid}/task/{tid}/schedstat").read().split()[0])
        except (OSError, ValueError, IndexError):
            nanos = None
        switches = {}
        for line in status.splitlines():
            key, _, value = line.partition(":")
            if key in ("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches"):
                switches[key] = int(value)
        threads[tid] = [comm, ticks, switches["voluntary_ctxt_switches"],
                        switches["nonvoluntary_ctxt_switches"], nanos]
    result[pid] = threads
print(json.dumps(result))
PY
}

bench() {
    "$rrmq" --config "$work/config.json" --json bench produce -c "$clients" "$@"
}

for run in $(seq "$runs"); do
    bench --duration 1s > /dev/null
    load=$(cut -d' ' -f1 /proc/loadavg)
    snapshot > "$out/run$run-before.json"
    bench --duration "${seconds}s" > "$out/run$run-bench.json"
    snapshot > "$out/run$run-after.json"
    echo "$load" > "$out/run$run-load.txt"
    if [[ "$syscalls" == 1 ]]; then
        bench --duration 1s > /dev/null
        (sleep 0.3; perf stat --per-thread -x, -e raw_syscalls:sys_enter -p "$pids" \
            -o "$out/run$run-syscalls.csv" -- sleep "$((seconds - 1))") &
        watcher=$!
        bench --duration "${seconds}s" > "$out/run$run-syscalls-bench.json"
        wait "$watcher"
    fi
done

python3 - "$out" "$runs" "$leader_id" "$nodes" "$(getconf CLK_TCK)" "$seconds" <<'PY'
import json, statistics, sys
out, runs, leader, nodes, hz, seconds = sys.argv[1:7]
runs, hz, seconds = int(runs), int(hz), int(seconds)
node_of = {pid: int(node) for node, pid in (pair.split(":") for pair in nodes.split())}


def role(pid):
    return "leader" if node_of[pid] == int(leader) else "follower"


def label(pid, tid, comm, names):
    """A thread's name: the main thread is the node loop; duplicates get a number."""
    if tid == pid:
        return "loop (main)"
    same = sorted((int(t) for t, c in names.items() if c == comm and t != pid))
    return comm if len(same) == 1 else f"{comm}#{same.index(int(tid)) + 1}"


def puts(path):
    report = json.load(open(path))
    return next(op for op in report["operations"] if op["operation"] == "put")


totals = []
summary = {"runs": []}
for run in range(1, runs + 1):
    before = json.load(open(f"{out}/run{run}-before.json"))
    after = json.load(open(f"{out}/run{run}-after.json"))
    put = puts(f"{out}/run{run}-bench.json")
    count = put["completed"]
    load = open(f"{out}/run{run}-load.txt").read().strip()
    syscalls = {}
    try:
        sys_put = puts(f"{out}/run{run}-syscalls-bench.json")
        # perf watched seconds - 1 of the bench's seconds: scale by that window's share.
        sys_count = sys_put["ops_per_second"] * (seconds - 1)
        for line in open(f"{out}/run{run}-syscalls.csv"):
            fields = line.strip().split(",")
            if len(fields) < 4 or line.startswith("#") or "-" not in fields[0]:
                continue
            tid = fields[0].rsplit("-", 1)[1]
            try:
                syscalls[tid] = float(fields[1]) / sys_count
            except ValueError:
                pass
    except (OSError, StopIteration, ZeroDivisionError):
        pass
    latency = put["latency_ms"] or {}
    print(f"\nrun {run}: {count} PUTs acknowledged, {put['ops_per_second']:.0f}/s, "
          f"p50 {latency.get('p50')} ms, p99 {latency.get('p99')} ms; load average {load}")
    print("| node | thread | CPU µs/PUT | voluntary cs/PUT | involuntary cs/PUT | syscalls/PUT |")
    print("|---|---|--:|--:|--:|--:|")
    record = {"run": run, "puts": count, "ops_per_second": put["ops_per_second"],
              "p50_ms": latency.get("p50"), "load": load, "nodes": {}}
    grand = 0.0
    for pid in sorted(after, key=lambda p: (role(p) != "leader", node_of[p])):
        names = {tid: value[0] for tid, value in after[pid].items()}
        node_total = [0.0, 0.0, 0.0, 0.0]
        rows = []
        for tid, (comm, ticks, vcs, ivcs, nanos) in after[pid].items():
            old = before[pid].get(tid, [comm, 0, 0, 0, 0])
            if nanos is not None and old[4] is not None:
                cpu = (nanos - old[4]) / 1e3 / count
            else:
                cpu = (ticks - old[1]) * 1e6 / hz / count
            v = (vcs - old[2]) / count
            iv = (ivcs - old[3]) / count
            sc = syscalls.get(tid)
            rows.append((label(pid, tid, comm, names), cpu, v, iv, sc))
            node_total[0] += cpu
            node_total[1] += v
            node_total[2] += iv
            node_total[3] += sc or 0.0
        name = f"{node_of[pid]} ({role(pid)})"
        for thread, cpu, v, iv, sc in sorted(rows, key=lambda row: -row[1]):
            if cpu == 0 and v < 0.01 and iv < 0.01:
                continue
            sc_text = "" if sc is None else f"{sc:.1f}"
            print(f"| {name} | {thread} | {cpu:.0f} | {v:.2f} | {iv:.2f} | {sc_text} |")
        sc_text = f"{node_total[3]:.1f}" if syscalls else ""
        print(f"| {name} | **all** | **{node_total[0]:.0f}** | {node_total[1]:.2f} "
              f"| {node_total[2]:.2f} | {sc_text} |")
        record["nodes"][name] = {"cpu_us": node_total[0], "voluntary": node_total[1],
                                 "involuntary": node_total[2], "syscalls": node_total[3],
                                 "threads": {r[0]: r[1:] for r in rows}}
        grand += node_total[0]
    print(f"| **3 nodes** | | **{grand:.0f}** | | | |")
    record["cpu_us_all_nodes"] = grand
    totals.append(grand)
    summary["runs"].append(record)
print(f"\nthree nodes' CPU per PUT (µs), per run: {', '.join(f'{t:.0f}' for t in totals)}; "
      f"median {statistics.median(totals):.0f}")
json.dump(summary, open(f"{out}/summary.json", "w"), indent=1)
PY
echo "results in $out"
