#!/usr/bin/env bash
# Prints what else shapes a benchmark's numbers on this machine, right now: the UTC time,
# the 1-minute load average (other work sharing the cores) and the latency of fdatasync of
# a 100-byte append in DIR (the floor under every durable write, the first thing to compare
# between machines). One line, meant to sit above a `rrmq bench --matrix` table:
#
#   scripts/machine-probe.sh [DIR] [SAMPLES]   # DIR: where the nodes keep their data
#                                              # [default: $TMPDIR or /tmp], SAMPLES: 200
#
# Kept out of the rrmq binary: these are probes of the machine, not of the cluster. The
# fdatasync probe needs python3 (os.fdatasync with a monotonic clock); without it the line
# says "not measured".
set -euo pipefail

dir=${1:-${TMPDIR:-/tmp}}
samples=${2:-200}

load=$(cut -d' ' -f1 /proc/loadavg 2>/dev/null || echo unknown)
sync="not measured"
if command -v python3 >/dev/null; then
    sync=$(python3 - "$dir" "$samples" 2>/dev/null <<'PY' || echo "not measured"
import math, os, sys, time

directory, count = sys.argv[1], int(sys.argv[2])
path = os.path.join(directory, f"rrmq-sync-probe-{os.getpid()}")
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
samples = []
try:
    for _ in range(count):
        os.write(fd, b"x" * 100)
        started = time.perf_counter()
        os.fdatasync(fd)
        samples.append(time.perf_counter() - started)
finally:
    os.close(fd)
    os.unlink(path)
if not samples:
    sys.exit(1)
samples.sort()

def at(quantile):
    position = max(math.ceil(len(samples) * quantile), 1) - 1
    return samples[min(position, len(samples) - 1)] * 1000

print(f"p50 {at(0.5):.3f} ms, p99 {at(0.99):.3f} ms, max {at(1.0):.3f} ms ({len(samples)} samples)")
PY
)
fi
echo "$(date -u '+%Y-%m-%d %H:%M UTC'): load average $load; fdatasync of a 100-byte append in $dir: $sync"
