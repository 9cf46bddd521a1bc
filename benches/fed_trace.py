#!/usr/bin/env python3
"""Where a message's time goes between two federated relays (docs/performance.md, "Federation").

Reads the syscall trace that `examples/federation.rs --only perf` records (relay A, relay B and
nats-server, one sender on A at a low rate, one receiver on each relay) and follows every
message through the syscalls that carry it:

  A recvmmsg -> A sendmmsg (its local receiver) -> A send (PUB to NATS)
  -> nats-server read -> nats-server write/writev (MSG to B) -> B recv -> B sendmmsg

Usage: benches/fed_trace.py TRACE.data PID_A PID_B NATS_PID [NATS_PID...]

With --syscalls, the time a relay spent inside each system call, per message, from a
raw_syscalls trace of one run (DIR/{remote,local,standalone}-sys.data):

       benches/fed_trace.py --syscalls FILE.data MESSAGES
"""

import bisect
import re
import subprocess
import sys

LINE = re.compile(r"^\s*(\d+)/(\d+)\s+([\d.]+):\s+syscalls:(sys_\w+):\s*(.*)$")


def ret_of(text):
    v = int(text.strip().split()[0], 16)
    return v - (1 << 64) if v >= 1 << 63 else v


NAMES = {0: "read", 1: "write", 7: "poll", 44: "sendto", 45: "recvfrom", 232: "epoll_wait",
         281: "epoll_pwait", 299: "recvmmsg", 307: "sendmmsg", 228: "clock_gettime"}
RAW = re.compile(r"^\s*(\d+)/(\d+)\s+([\d.]+):\s+raw_syscalls:sys_(enter|exit):\s+NR (\d+)(.*)$")


def syscalls(data, messages):
    """Per syscall: calls and time inside (enter to exit) per message; epoll_wait's time is
    mostly sleeping and is shown apart."""
    out = subprocess.run(
        ["perf", "script", "-i", data, "--ns", "-F", "pid,tid,time,event,trace"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    open_at = {}
    calls, inside, errors = {}, {}, {}
    for line in out.splitlines():
        m = RAW.match(line)
        if not m:
            continue
        tid, t, kind, nr = int(m.group(2)), float(m.group(3)), m.group(4), int(m.group(5))
        if kind == "enter":
            open_at[tid] = (nr, t)
            continue
        if tid not in open_at or open_at[tid][0] != nr:
            continue
        _, t0 = open_at.pop(tid)
        name = NAMES.get(nr, f"nr {nr}")
        calls[name] = calls.get(name, 0) + 1
        inside[name] = inside.get(name, 0.0) + (t - t0)
        ret = m.group(6).strip().lstrip("=").strip()
        if ret.startswith("-"):
            errors[name] = errors.get(name, 0) + 1
    print(f"| syscall | calls per message | of which errors (EAGAIN) | µs inside per message |")
    print("|---|---:|---:|---:|")
    total = 0.0
    for name in sorted(inside, key=lambda k: -inside[k]):
        per = inside[name] * 1e6 / messages
        if name not in ("epoll_wait", "epoll_pwait"):
            total += per
        print(f"| {name} | {calls[name] / messages:.2f} | {errors.get(name, 0) / messages:.2f} | "
              f"{per:.1f}{' (waiting)' if name.startswith('epoll') else ''} |")
    print(f"| **all but epoll** | | | **{total:.1f}** |")


def main():
    if sys.argv[1] == "--syscalls":
        return syscalls(sys.argv[2], int(sys.argv[3]))
    data, pid_a, pid_b = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    nats = {int(p) for p in sys.argv[4:]}
    out = subprocess.run(
        ["perf", "script", "-i", data, "--ns", "-F", "pid,tid,time,event,trace"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    ev = {k: [] for k in ("a_recv", "a_send", "a_write", "n_read", "n_write", "b_read", "b_send")}
    for line in out.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        pid, t, name, rest = int(m.group(1)), float(m.group(3)), m.group(4), m.group(5)
        if not name.startswith("sys_exit_"):
            continue
        r = ret_of(rest)
        if r <= 0:
            continue
        call = name[len("sys_exit_"):]
        who = "a" if pid == pid_a else "b" if pid == pid_b else "n" if pid in nats else None
        key = {
            ("a", "recvmmsg"): "a_recv",
            ("a", "sendmmsg"): "a_send",
            ("a", "sendto"): "a_write",  # std's TcpStream::write is send(2)
            ("n", "read"): "n_read",
            ("n", "write"): "n_write",
            ("n", "writev"): "n_write",
            ("b", "recvfrom"): "b_read",  # and its read is recv(2)
            ("b", "sendmmsg"): "b_send",
        }.get((who, call))
        if key:
            ev[key].append(t)
    for v in ev.values():
        v.sort()

    def after(key, t):
        v = ev[key]
        i = bisect.bisect_right(v, t)
        return v[i] if i < len(v) else None

    order = ["a_send", "a_write", "n_read", "n_write", "b_read", "b_send"]
    names = [
        "A: datagram read -> local delivery sent (decrypt, seal, sendmmsg)",
        "A: local delivery sent -> PUB written (record, seal under the cluster key, write)",
        "nats-server: PUB written by A -> read by the server (loopback TCP, wake-up)",
        "nats-server: read -> MSG written to B (routing)",
        "B: MSG written by the server -> read by B (loopback TCP, wake-up)",
        "B: read -> delivery sent (parse, open, seal, sendmmsg)",
    ]
    stages = [[] for _ in order]
    hop = []
    recv = ev["a_recv"]
    for i, t1 in enumerate(recv):
        nxt = recv[i + 1] if i + 1 < len(recv) else float("inf")
        ts = [t1]
        for k in order:
            x = after(k, ts[-1])
            if x is None:
                break
            ts.append(x)
        if len(ts) != len(order) + 1 or ts[-1] - t1 > 0.005 or ts[2] > nxt:
            continue
        for j in range(len(order)):
            stages[j].append((ts[j + 1] - ts[j]) * 1e6)
        hop.append((ts[-1] - ts[1]) * 1e6)

    def pct(v, p):
        v = sorted(v)
        return v[round((len(v) - 1) * p)] if v else 0.0

    print(f"{len(hop)} messages followed of {len(recv)} reads by A")
    print("| stage | p50 µs | p90 µs | p99 µs |")
    print("|---|---:|---:|---:|")
    for n, v in zip(names, stages):
        print(f"| {n} | {pct(v, .5):.0f} | {pct(v, .9):.0f} | {pct(v, .99):.0f} |")
    print(f"| **A's local delivery sent -> B's delivery sent (the hop)** | "
          f"{pct(hop, .5):.0f} | {pct(hop, .9):.0f} | {pct(hop, .99):.0f} |")


if __name__ == "__main__":
    main()
