#!/usr/bin/env bash
# The floor under rrmq's C=1 figures on this machine (issue 14): what one durable write and
# one ZeroMQ replication round trip cost by themselves, with no rrmq code in the way.
#
#   scripts/floor.sh [DIR]     # DIR: where the nodes keep their data [default: $TMPDIR or /tmp]
#
# 1. CPU and latency of one durable 200-byte record, three ways (pwrite + fdatasync into a
#    preallocated file, as the WAL writes; O_DSYNC pwrite; O_DIRECT|O_DSYNC pwrite of a 4 KiB
#    block): 3,000 each, CPU from the process's own clock (the syscalls' kernel time is the
#    caller's). At C=1 each of the three nodes makes one such write per PUT.
# 2. `examples/zmq_floor.rs`: a relay and two echo servers, three processes, a client at
#    C=1: the round trip and the CPU of a replicated write with nothing but ZeroMQ, under the
#    default scheduling policy and under SCHED_BATCH (as rrmq-node runs).
# Figures and what they mean: docs/PERFORMANCE.md, "The floor under C=1".
set -euo pipefail

cd "$(dirname "$0")/.."
dir=${1:-${TMPDIR:-/tmp}}
echo "$(date -u '+%Y-%m-%d %H:%M UTC'): load average $(cut -d' ' -f1-3 /proc/loadavg); data in $dir"

python3 - "$dir" <<'PY'
import mmap, os, sys, time

directory = sys.argv[1]
COUNT, RECORD = 3000, b"x" * 200

def probe(mode):
    path = os.path.join(directory, f"rrmq-floor-probe-{os.getpid()}")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, 64 << 20)
        os.fsync(fd)
        if mode != "fdatasync":
            os.close(fd)
            extra = os.O_DSYNC | (os.O_DIRECT if mode == "O_DIRECT|O_DSYNC" else 0)
            fd = os.open(path, os.O_RDWR | extra)
        block = mmap.mmap(-1, 4096)  # page-aligned, as O_DIRECT needs
        block.write(RECORD)
        times, offset = [], 0
        cpu = time.process_time()
        for _ in range(COUNT):
            started = time.perf_counter()
            if mode == "O_DIRECT|O_DSYNC":
                os.pwritev(fd, [block], offset // 4096 * 4096)
            else:
                os.pwrite(fd, RECORD, offset)
                if mode == "fdatasync":
                    os.fdatasync(fd)
            times.append(time.perf_counter() - started)
            offset += len(RECORD)
        cpu = time.process_time() - cpu
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    print(f"  {mode:<17} p50 {times[COUNT // 2] * 1e3:.3f} ms, p99 {times[COUNT * 99 // 100] * 1e3:.3f} ms, "
          f"CPU {cpu / COUNT * 1e6:.0f} us per write")

print("one durable 200-byte write (3,000 each):")
for mode in ("fdatasync", "O_DSYNC", "O_DIRECT|O_DSYNC"):
    try:
        probe(mode)
    except OSError as error:
        print(f"  {mode:<17} not measured: {error}")
PY

cargo build --release --example zmq_floor --quiet
floor=target/release/examples/zmq_floor
echo "a replicated write over ZeroMQ alone (relay + 2 echo servers, C=1):"
echo "  default policy:  $("$floor" --round-trips 20000)"
echo "  SCHED_BATCH:     $(chrt -b 0 "$floor" --round-trips 20000)"
