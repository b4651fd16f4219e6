# Sourced by the measurement scripts (ab.sh, cpu-per-request.sh, profile-node.sh,
# bench-curve.sh, scrape-cost.sh): free loopback ports, a local 3-node config, and the wait
# for `rrmq cluster` to report its leader. One copy, so every script starts its cluster the
# same way. Each script keeps the PIDs it started in its own `pids` array; stop_pids stops them.

# free_ports N: N free loopback TCP ports, space-separated, picked by the kernel (the
# launcher's own picker would need Rust).
free_ports() {
    python3 - "$1" <<'PY'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
for s in socks: s.close()
PY
}

# write_local_config FILE: a config of three nodes on free loopback ports.
write_local_config() {
    python3 - "$1" <<'PY'
import json, socket, sys
sockets = [socket.socket() for _ in range(6)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
ports = [s.getsockname()[1] for s in sockets]
addresses = [{"ip": "127.0.0.1", "port": ports[2 * i], "internal_port": ports[2 * i + 1]}
             for i in range(3)]
json.dump({"addresses": addresses}, open(sys.argv[1], "w"))
PY
}

# wait_for_leader LOG: polls the log of `rrmq cluster` for its `leader:` line (30 s);
# succeeds once it is there.
wait_for_leader() {
    for _ in $(seq 300); do
        grep -q '^leader:' "$1" && return 0
        sleep 0.1
    done
    grep -q '^leader:' "$1"
}

# stop_pids: SIGTERMs every PID in the caller's `pids` array, waits for each, empties it.
# Only the processes the script itself started are in there.
stop_pids() {
    local pid
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    pids=()
}
