#!/usr/bin/env bash
# Where does a node's time go per request? Starts a local 3-node cluster (release build,
# --fsync always by default), runs `rrmq bench produce` at each client count, and counts,
# per request decoded by the leader, on the leader and on one follower:
#   - CPU time and context switches (perf software events);
#   - syscalls: fdatasync, write, sendto, recvfrom, poll, epoll_wait, futex, sched_yield;
#   - function calls through uprobes: request decode, propose, command encode, peer message
#     encode/decode, AppendEntries handled, core ready rounds, WAL syncs, command decode,
#     queue apply, reply encode, node-loop events, and libc malloc.
# Optionally (PERF_RECORD=1) it also records a CPU profile of the leader per client count.
#
#   scripts/profile-node.sh                     # C = 1 and 64, per-client connections
#   CLIENTS="1 16 64" CONNECTIONS=shared scripts/profile-node.sh
#   FSYNC=never PERF_RECORD=1 scripts/profile-node.sh
#
# Needs root (uprobes, syscall tracepoints), Debian's linux-perf and python3. The uprobes
# slow every probed call by a few microseconds, so the CPU times printed here are inflated;
# take latencies and throughput from `rrmq bench` runs without probes. Results go to
# $OUT (default: a new directory under /tmp).
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
# shellcheck source=scripts/lib/cluster.sh
source "$root/scripts/lib/cluster.sh"
cargo build --release --bins --quiet
rrmq=$root/target/release/rrmq
node_bin=$root/target/release/rrmq-node

clients=${CLIENTS:-"1 64"}
connections=${CONNECTIONS:-per-client}
fsync=${FSYNC:-always}
seconds=${SECONDS_MEASURED:-5}
out=${OUT:-$(mktemp -d /tmp/rrmq-profile.XXXXXX)}
mkdir -p "$out"
work=$(mktemp -d /tmp/rrmq-profile-cluster.XXXXXX)
launcher=""

cleanup() {
    perf probe -q -d 'probe_rrmq:*' 2>/dev/null || true
    perf probe -q -d 'probe_libc:malloc' 2>/dev/null || true
    if [[ -n "$launcher" ]]; then
        kill -TERM "$launcher" 2>/dev/null || true
        wait "$launcher" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

write_local_config "$work/config.json"

"$rrmq" --config "$work/config.json" cluster --node-bin "$node_bin" \
    --data-root "$work/data" --fsync "$fsync" > "$work/cluster.log" 2>&1 &
launcher=$!
wait_for_leader "$work/cluster.log" || { cat "$work/cluster.log"; exit 1; }
leader_id=$(sed -n 's/^leader: node \([0-9]*\) .*/\1/p' "$work/cluster.log")
leader_pid=$(sed -n "s/^node $leader_id: pid \([0-9]*\),.*/\1/p" "$work/cluster.log")
follower_pid=$(grep '^node [0-9]*: pid' "$work/cluster.log" | grep -v "^node $leader_id:" |
    head -1 | sed 's/^node [0-9]*: pid \([0-9]*\),.*/\1/')
echo "cluster in $work: leader node $leader_id (pid $leader_pid), follower pid $follower_pid"

# Uprobes by mangled name: perf cannot parse Rust paths with `::`.
probe() {
    local name=$1 path=$2 mangled
    mangled=$(paste -d'|' <(nm "$node_bin") <(nm -C "$node_bin") |
        awk -F'|' -v want="$path" '{
            n = split($2, d, " "); name = substr($2, index($2, d[3]));
            if (name == want) { split($1, m, " "); print m[3]; exit } }') || true
    if [[ -z "$mangled" ]]; then
        echo "no symbol $path (inlined?); skipping its probe" >&2
        return
    fi
    perf probe -q -x "$node_bin" --add "$name=$mangled"
}
probe req_decode 'rrmq::protocol::request::decode_request'
probe propose 'rrmq::raft::engine::Core::propose'
probe cmd_encode 'rrmq::queue::command::LoggedCommand::encode'
probe peer_encode 'rrmq::transport::peer::encode_peer_message'
probe peer_decode 'rrmq::transport::peer::decode_peer_message'
probe handle_ae 'rrmq::raft::engine::Core::handle_append_entries'
probe handle_aer 'rrmq::raft::engine::Core::handle_append_response'
probe core_ready 'rrmq::raft::engine::Core::ready'
probe wal_sync '<rrmq::storage::wal::Wal as rrmq::storage::LogStore>::sync'
probe cmd_decode 'rrmq::queue::command::LoggedCommand::decode'
probe queue_apply 'rrmq::queue::Queue::apply'
probe reply_encode 'rrmq::protocol::reply::encode_reply'
probe loop_handle 'rrmq::node::node_loop::NodeLoop::handle'
libc=$(ldd "$node_bin" | awk '/libc.so/ {print $3}')
perf probe -q -x "$libc" --add malloc

events=task-clock,context-switches,probe_libc:malloc
for name in $(perf probe -l 2>/dev/null | sed -n 's/^ *probe_rrmq:\([a-z_]*\).*/\1/p'); do
    events+=",probe_rrmq:$name"
done
for call in fdatasync write sendto recvfrom poll epoll_wait futex sched_yield; do
    events+=",syscalls:sys_enter_$call"
done

for c in $clients; do
    tag="c$c-$connections-$fsync"
    # perf watches a window inside the measured phase: 1.5 s after the start (the warmup is
    # 1 s), for $seconds s, while the bench measures $seconds + 1 s.
    (sleep 1.5; perf stat -x, -e "$events" -p "$leader_pid" -o "$out/$tag-leader.csv" \
        -- sleep "$seconds") &
    watchers=($!)
    (sleep 1.5; perf stat -x, -e "$events" -p "$follower_pid" -o "$out/$tag-follower.csv" \
        -- sleep "$seconds") &
    watchers+=($!)
    "$rrmq" --config "$work/config.json" bench produce -c "$c" --connections "$connections" \
        --warmup 1s --duration "$((seconds + 1))s" --json > "$out/$tag-bench.json"
    wait "${watchers[@]}"
    python3 - "$out" "$tag" <<'PY'
import json, sys
out, tag = sys.argv[1], sys.argv[2]
report = json.load(open(f"{out}/{tag}-bench.json"))
put = report["operations"][0]
latency = put["latency_ms"] or {}
print(f"\n{tag}: {put['ops_per_second']:.0f} put/s, p50 {latency.get('p50')} ms, "
      f"p99 {latency.get('p99')} ms (with uprobes: slower than a clean run)")
counts = {}
for role in ("leader", "follower"):
    for line in open(f"{out}/{tag}-{role}.csv"):
        fields = line.strip().split(",")
        if len(fields) < 3 or line.startswith("#"):
            continue
        try:
            counts.setdefault(fields[2], {})[role] = float(fields[0])
        except ValueError:
            pass
requests = counts.get("probe_rrmq:req_decode", {}).get("leader", 0)
if not requests:
    sys.exit("the leader decoded no request in the window")
print(f"per request ({requests:.0f} decoded by the leader in the window); "
      "task-clock in ms")
print(f"| event | leader | follower |\n|---|--:|--:|")
for event, by_role in counts.items():
    name = event.replace("probe_rrmq:", "").replace("probe_libc:", "") \
                .replace("syscalls:sys_enter_", "sys_")
    print(f"| {name} | {by_role.get('leader', 0) / requests:.3f} "
          f"| {by_role.get('follower', 0) / requests:.3f} |")
PY
done

if [[ "${PERF_RECORD:-0}" == 1 ]]; then
    perf probe -q -d 'probe_rrmq:*' 2>/dev/null || true
    perf probe -q -d 'probe_libc:malloc' 2>/dev/null || true
    for c in $clients; do
        tag="c$c-$connections-$fsync"
        (sleep 1.5; perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 \
            -p "$leader_pid" -o "$out/$tag-leader.perf" -- sleep "$seconds") &
        recorder=$!
        "$rrmq" --config "$work/config.json" bench produce -c "$c" \
            --connections "$connections" --warmup 1s --duration "$((seconds + 1))s" \
            > /dev/null
        wait "$recorder"
        echo "profile: perf report -i $out/$tag-leader.perf --sort comm,dso,sym"
    done
fi
echo "results in $out"
