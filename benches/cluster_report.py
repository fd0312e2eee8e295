#!/usr/bin/env python3
"""The measurements around benches/cluster.sh (standard library only).

  cluster_report.py sample FILE NAME:PID...  CPU 0, CPU 1 and each server process's CPU
                                             time, every 100 ms, into FILE (until killed)
  cluster_report.py table OUT SHAPES         the markdown table of the run in OUT (also
                                             OUT/summary.md)

The closed loop in small rooms is bound by latency more than by CPU, so deliveries/s alone does
not say what a delivery costs: the CPU 0 time (every server and redis-server run there) over
the measured window, divided by the deliveries in it, does.
"""

import glob
import json
import os
import sys
import time

TICK = os.sysconf("SC_CLK_TCK")
ORDER = ["natter-sled", "natter-redis1", "natter-redis2", "natter-redis3", "tutorial-redis"]


def cpus():
    """[busy, total] seconds of CPU 0 (the servers), then of CPU 1 (the bench), since boot."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            name = line.split(" ", 1)[0]
            if name in ("cpu0", "cpu1"):
                v = [int(x) for x in line.split()[1:]]
                idle = v[3] + v[4]  # idle + iowait
                total = sum(v[:8])  # guest time is already in user
                out[name] = [(total - idle) / TICK, total / TICK]
    if len(out) != 2:
        raise SystemExit("no cpu0 and cpu1 in /proc/stat")
    return out["cpu0"] + out["cpu1"]


def proc_secs(pid):
    """utime + stime of a process (all its threads), seconds; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def sample(path, named):
    procs = [n.split(":", 1) for n in named]
    with open(path, "w") as out:
        out.write(json.dumps({"names": [n for n, _ in procs]}) + "\n")
        while True:
            out.write(json.dumps([time.time()] + cpus() + [proc_secs(p) for _, p in procs]) + "\n")
            out.flush()
            time.sleep(0.1)


def at(samples, t, col):
    """Column `col` at time t, interpolated between the samples around it."""
    prev = samples[0]
    for s in samples[1:]:
        if s[0] >= t:
            if s[0] == prev[0]:
                return s[col]
            return prev[col] + (s[col] - prev[col]) * (t - prev[0]) / (s[0] - prev[0])
        prev = s
    return prev[col]


def cpu_of(label, report, out):
    """(CPU 0 busy share, CPU 0 us per delivery, redis-server's us per delivery, CPU 1 busy
    share) over the measured window, trimmed by 0.2 s at each end; None without samples.
    Columns of a sample: time, CPU 0 busy and total, CPU 1 busy and total, then each process."""
    path, t0_path = os.path.join(out, label + ".cpu"), os.path.join(out, label + ".t0")
    if not (os.path.exists(path) and os.path.exists(t0_path)):
        return None
    with open(path) as f:
        names = json.loads(f.readline())["names"]
        samples = [json.loads(line) for line in f if line.strip()]
    with open(t0_path) as f:
        t0 = float(f.read())
    start = t0 + report["connect_s"] + float(os.environ.get("WARM", 1)) + 0.2
    end = start + report["duration_s"] - 0.4
    if len(samples) < 2 or end <= start or samples[-1][0] < end:
        return None
    deliveries = report["deliveries_per_s"] * (end - start)
    if deliveries <= 0:
        return None
    busy = at(samples, end, 1) - at(samples, start, 1)
    total = at(samples, end, 2) - at(samples, start, 2)
    bench_busy = at(samples, end, 3) - at(samples, start, 3)
    bench_total = at(samples, end, 4) - at(samples, start, 4)
    redis = sum(at(samples, end, 5 + i) - at(samples, start, 5 + i) for i, n in enumerate(names) if n == "redis")
    share = lambda b, t: b / t if t else 0
    return share(busy, total), busy / deliveries * 1e6, redis / deliveries * 1e6, share(bench_busy, bench_total)


def table(out, shapes):
    runs = {}
    for path in glob.glob(os.path.join(out, "*--*.json")):
        setup, shape = os.path.basename(path)[:-5].split("--", 1)
        with open(path) as f:
            runs[(setup, shape)] = json.load(f)
    setups = sorted({s for s, _ in runs}, key=lambda s: (s.endswith("-aof"), ORDER.index(s.removesuffix("-aof"))))
    lines = [
        "| shape | setup | deliveries/s | publishes/s | p50 ms | p99 ms | lost | dup | errors "
        "| CPU 0 busy | CPU 0 us/delivery | of which redis-server | vs sled | CPU 1 (bench) busy |",
        "|" + "---|" * 14,
    ]
    for shape in shapes.split(","):
        members = int(shape.split("x")[1])
        base = None
        for setup in setups:
            r = runs.get((setup, shape))
            if r is None:
                lines.append(f"| {shape} | {setup} | failed (see the log) |" + " |" * 11)
                continue
            cpu = cpu_of(f"{setup}--{shape}", r, out)
            busy, per, redis, bench = (
                (f"{cpu[0]:.0%}", f"{cpu[1]:.1f}", f"{cpu[2]:.1f}", f"{cpu[3]:.0%}") if cpu else ("-",) * 4
            )
            if setup == "natter-sled" and cpu:
                base = cpu[1]
            vs = f"{cpu[1] / base:.1f}x" if cpu and base else "-"
            lines.append(
                f"| {shape} | {setup} | {r['deliveries_per_s']:,.0f} | {r['deliveries_per_s'] / (members - 1):,.0f} "
                f"| {r['latency']['p50_ms']:.2f} | {r['latency']['p99_ms']:.2f} | {r['lost']} | {r['duplicates']} "
                f"| {r['errors']} | {busy} | {per} | {redis} | {vs} | {bench} |"
            )
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "sample":
        sample(sys.argv[2], sys.argv[3:])
    elif len(sys.argv) == 4 and sys.argv[1] == "table":
        table(sys.argv[2], sys.argv[3])
    else:
        raise SystemExit(__doc__)
