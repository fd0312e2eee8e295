#!/usr/bin/env python3
"""Reads the JSON reports benches/compare.sh left in a folder, prints every figure with its ratio
to natter over ws, and writes summary.md plus two plots as SVG (standard library only)."""

import glob
import json
import os
import sys

out = sys.argv[1] if len(sys.argv) > 1 else "benches/results"
runs = {}
for path in glob.glob(os.path.join(out, "*--*.json")):
    server, label = os.path.basename(path)[:-5].split("--", 1)
    with open(path) as f:
        runs[(server, label)] = json.load(f)

ORDER = ["natter-ws", "natter-wss", "natter-before", "raw-tcp", "tutorial-memory", "tutorial-redis"]
servers = [s for s in ORDER if any(k[0] == s for k in runs)]
BASE = "natter-ws"


def extra(r, name):
    return next((v for k, v in r.get("extra", []) if k == name), None)


def ratio(v, base):
    return f"{v / base:.2f}x" if base else "-"


lines = []


def table(title, header, rows):
    lines.append(f"\n### {title}\n")
    lines.append("| " + " | ".join(header) + " |")
    lines.append("|" + "---|" * len(header))
    for row in rows:
        lines.append("| " + " | ".join(row) + " |")


sizes = sorted({int(l.split("-")[1]) for (_, l) in runs if l.startswith("fanout-")})
rows = []
for m in sizes:
    base = runs.get((BASE, f"fanout-{m}"), {}).get("deliveries_per_s", 0)
    for s in servers:
        r = runs.get((s, f"fanout-{m}"))
        if r:
            lost = r["lost"] + r["duplicates"]
            rows.append([str(m), s, f"{r['deliveries_per_s']:,.0f}", ratio(r["deliveries_per_s"], base),
                         f"{r['latency']['p99_ms']:.2f}", str(lost), str(r["errors"])])
table("Fan-out, closed loop, one room (deliveries/s; ratio to natter over ws)",
      ["members", "server", "deliveries/s", "vs natter-ws", "p99 ms", "lost+dup", "errors"], rows)

# The shape matrix: each server's `--shapes` run is a list of reports, in the order of SHAPES.
def shape_of(r):
    # "fanout: R room(s) x M members, ..."
    head = r["scenario"].split(",")[0].split(":")[1].split()
    return f"{head[0]}x{head[3]}", int(head[3])


shape_runs = {s: {shape_of(r)[0]: r for r in runs[(s, "shapes")]} for s in servers if (s, "shapes") in runs}
shapes = []
for per in shape_runs.values():
    shapes += [k for k in per if k not in shapes]
rows = []
for shape in shapes:
    base = shape_runs.get(BASE, {}).get(shape, {}).get("deliveries_per_s", 0)
    for s in servers:
        r = shape_runs.get(s, {}).get(shape)
        if r:
            members = shape_of(r)[1]
            rows.append([shape, s, f"{r['deliveries_per_s']:,.0f}", f"{r['deliveries_per_s'] / (members - 1):,.0f}",
                         ratio(r["deliveries_per_s"], base), f"{r['latency']['p99_ms']:.2f}",
                         str(r["lost"] + r["duplicates"]), str(r["errors"])])
table("Fan-out by shape, rooms x members, closed loop (ratio to natter over ws)",
      ["shape", "server", "deliveries/s", "publishes/s", "vs natter-ws", "p99 ms", "lost+dup", "errors"], rows)

rows = []
for s in servers:
    for shape, r in ({shape_of(r)[0]: r for r in runs[(s, "shapes-cid")]} if (s, "shapes-cid") in runs else {}).items():
        members = shape_of(r)[1]
        plain = shape_runs.get(s, {}).get(shape, {}).get("deliveries_per_s", 0)
        rows.append([shape, s, f"{r['deliveries_per_s'] / (members - 1):,.0f}", ratio(r["deliveries_per_s"], plain),
                     f"{extra(r, 'acks'):,.0f}", f"{extra(r, 'sent, not acked'):,.0f}", f"{r['latency']['p99_ms']:.2f}",
                     str(r["lost"] + r["duplicates"])])
table("Fan-out by shape with a cid on every message (each acked after a group flush)",
      ["shape", "server", "publishes/s", "vs no cid", "acks", "not acked", "p99 ms", "lost+dup"], rows)

for label, title in [("latency-half", "Latency at half of each server's own maximum, room of 100 (ms)"),
                     ("latency-200x5", "Latency at half of each server's own maximum, 200 rooms of 5, open loop (ms)")]:
    rows = []
    for s in servers:
        r = runs.get((s, label))
        if r:
            l = r["latency"]
            rows.append([s, f"{r['deliveries_per_s']:,.0f}", f"{l['p50_ms']:.2f}", f"{l['p90_ms']:.2f}",
                         f"{l['p99_ms']:.2f}", f"{l['p999_ms']:.2f}", f"{l['max_ms']:.2f}", str(r["lost"])])
    table(title, ["server", "deliveries/s", "p50", "p90", "p99", "p99.9", "max", "lost"], rows)

rows = []
for (s, l), r in sorted(runs.items()):
    if l.startswith("connect-"):
        rss = extra(r, "server RSS idle, MiB")
        per = extra(r, "bytes per idle connection")
        rows.append([s, str(r["connections"]), f"{r['handshakes_per_s']:,.0f}",
                     f"{rss:.1f}" if rss else "-", f"{per:,.0f}" if per else "-", str(r["errors"])])
table("Idle connections", ["server", "connections", "set up/s", "server RSS MiB", "bytes/connection", "errors"], rows)

rows = []
for (s, l), r in sorted(runs.items()):
    if l == "offline":
        rows.append([s, f"{extra(r, 'acks'):,.0f}", f"{extra(r, 'acked messages/s'):,.0f}",
                     f"{extra(r, 'durable offline writes/s (acked x offline members)'):,.0f}",
                     f"{r['deliveries_per_s']:,.0f}", str(r["lost"]), str(r["duplicates"])])
table("Durable offline writes (acked), then the drain",
      ["server", "acked", "acked msgs/s", "durable offline writes/s", "drain deliveries/s", "lost", "dup"], rows)

summary = "\n".join(lines) + "\n"
print(summary)
with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(summary)

# --- plots -----------------------------------------------------------------------------------
COLORS = {"natter-ws": "#3d5afe", "natter-wss": "#00a676", "natter-before": "#9fa8da", "raw-tcp": "#888888",
          "tutorial-memory": "#e65100", "tutorial-redis": "#b71c1c"}
W, H, L, R, T, B = 720, 420, 80, 170, 40, 50


def svg(path, title, xlabel, ylabel, series, xlog=False, ylog=False, xnames=None):
    import math
    xs = [x for pts in series.values() for x, _ in pts]
    ys = [y for pts in series.values() for _, y in pts if y > 0]
    if not xs or not ys:
        return
    fx = (lambda v: math.log10(v)) if xlog else (lambda v: v)
    fy = (lambda v: math.log10(max(v, 1e-9))) if ylog else (lambda v: v)
    x0, x1 = fx(min(xs)), fx(max(xs))
    y0, y1 = (fy(min(ys)), fy(max(ys))) if ylog else (0, max(ys) * 1.1)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    px = lambda v: L + (fx(v) - x0) / (x1 - x0) * (W - L - R)
    py = lambda v: H - B - (fy(v) - y0) / (y1 - y0) * (H - T - B)
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
         f'<rect width="{W}" height="{H}" fill="white"/>',
         f'<text x="{W / 2}" y="22" text-anchor="middle" font-size="15">{title}</text>',
         f'<line x1="{L}" y1="{H - B}" x2="{W - R}" y2="{H - B}" stroke="black"/>',
         f'<line x1="{L}" y1="{T}" x2="{L}" y2="{H - B}" stroke="black"/>',
         f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">{xlabel}</text>',
         f'<text transform="translate(16,{(T + H - B) / 2}) rotate(-90)" text-anchor="middle">{ylabel}</text>']
    for x in sorted(set(xs)):
        name = xnames.get(x, f"{x:g}") if xnames else f"{x:g}"
        s.append(f'<text x="{px(x):.1f}" y="{H - B + 16}" text-anchor="middle">{name}</text>')
    if ylog:
        ticks = [m * 10 ** e for e in range(math.floor(y0), math.ceil(y1) + 1) for m in (1, 2, 5)]
    else:
        # Round steps: 1, 2 or 5 times a power of ten, about five of them.
        raw = y1 / 5
        mag = 10 ** math.floor(math.log10(raw))
        step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
        ticks = [step * i for i in range(int(y1 / step) + 1)]
    for t in ticks:
        y = py(t)
        if T - 1 <= y <= H - B + 1:
            label = f"{t / 1e6:g}M" if t >= 1e6 else f"{t / 1000:g}k" if t >= 1000 else f"{t:g}"
            s.append(f'<line x1="{L}" y1="{y:.1f}" x2="{W - R}" y2="{y:.1f}" stroke="#ddd"/>')
            s.append(f'<text x="{L - 6}" y="{y + 4:.1f}" text-anchor="end">{label}</text>')
    for i, (name, pts) in enumerate(series.items()):
        pts = sorted(p for p in pts if p[1] > 0)
        c = COLORS.get(name, "black")
        if len(pts) > 1:
            s.append(f'<polyline fill="none" stroke="{c}" stroke-width="2" points="'
                     + " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts) + '"/>')
        for x, y in pts:
            s.append(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{c}"/>')
        s.append(f'<rect x="{W - R + 15}" y="{T + 18 * i}" width="12" height="12" fill="{c}"/>')
        s.append(f'<text x="{W - R + 32}" y="{T + 18 * i + 10}">{name}</text>')
    s.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(s) + "\n")


svg(os.path.join(out, "fanout-by-room-size.svg"), "Fan-out, closed loop: deliveries/s by room size",
    "members in the room (all sending)", "deliveries/s",
    {s: [(m, runs[(s, f"fanout-{m}")]["deliveries_per_s"]) for m in sizes if (s, f"fanout-{m}") in runs]
     for s in servers}, xlog=True)
# Shapes on the x axis by their index, named.
names = {i + 1: shape for i, shape in enumerate(shapes)}
for metric, title, per_delivery in [("deliveries", "deliveries/s", False), ("publishes", "publishes/s", True)]:
    svg(os.path.join(out, f"{metric}-by-shape.svg"), f"Fan-out by shape: {title}", "rooms x members", title,
        {s: [(i + 1, per[shape]["deliveries_per_s"] / ((shape_of(per[shape])[1] - 1) if per_delivery else 1))
             for i, shape in enumerate(shapes) if shape in per]
         for s, per in shape_runs.items()}, ylog=True, xnames=names)
# Percentiles on a log scale of 1 / (1 - q): 2 = p50, 10 = p90, 100 = p99, 1000 = p99.9.
QS = [("p50", 2), ("p90", 10), ("p99", 100), ("p999", 1000)]
svg(os.path.join(out, "latency.svg"), "Latency at half of each server's maximum, room of 100",
    "percentile", "ms (log)",
    {s: [(x, runs[(s, "latency-half")]["latency"][f"{k}_ms"]) for k, x in QS]
     for s in servers if (s, "latency-half") in runs}, xlog=True, ylog=True,
    xnames={2: "p50", 10: "p90", 100: "p99", 1000: "p99.9"})
