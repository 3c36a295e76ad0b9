#!/usr/bin/env python3
"""Merges the benchmark's JSON files into DIR/results.json and draws
DIR/plot.svg: throughput and latency (p50, p99) against group size for
xmpp-mls, Prosody MUC + MAM and the null component. Standard library only.

    python3 scripts/plot_bench.py target/bench
"""
import json
import math
import sys
from pathlib import Path

SYSTEMS = [("mls", "xmpp-mls", "#1f77b4"), ("muc", "Prosody MUC + MAM", "#d62728"), ("null", "null component", "#7f7f7f")]
PANELS = [("throughput_msg_s", "throughput (msg/s)"), ("latency_p50_ms", "latency p50 (ms)"), ("latency_p99_ms", "latency p99 (ms)")]
W, H, MARGIN = 300, 240, 50


def load(path):
    return json.loads(path.read_text()) if path.exists() else None


def nice_max(v):
    """The smallest 1, 2 or 5 × 10^k at or above v."""
    if v <= 0:
        return 1
    k = 10 ** math.floor(math.log10(v))
    return next(m * k for m in (1, 2, 5, 10) if m * k >= v)


def panel(runs, key, title, x0):
    sizes = sorted({r["devices"] for r in runs})
    top = nice_max(max(r[key] for r in runs))
    lo, hi = math.log10(min(sizes)), math.log10(max(sizes))
    span = (hi - lo) or 1

    def px(size):
        return x0 + MARGIN + (math.log10(size) - lo) / span * (W - MARGIN - 10)

    def py(v):
        return 20 + (1 - v / top) * (H - 60)

    out = [f'<text x="{x0 + W / 2}" y="14" text-anchor="middle" font-weight="bold">{title}</text>',
           f'<line x1="{x0 + MARGIN}" y1="{py(0)}" x2="{x0 + W - 10}" y2="{py(0)}" stroke="black"/>',
           f'<line x1="{x0 + MARGIN}" y1="{py(0)}" x2="{x0 + MARGIN}" y2="{py(top)}" stroke="black"/>']
    for i in range(5):
        v = top * i / 4
        out.append(f'<text x="{x0 + MARGIN - 4}" y="{py(v) + 4}" text-anchor="end">{v:g}</text>')
        out.append(f'<line x1="{x0 + MARGIN}" y1="{py(v)}" x2="{x0 + W - 10}" y2="{py(v)}" stroke="#ddd"/>')
    for s in sizes:
        out.append(f'<text x="{px(s)}" y="{py(0) + 16}" text-anchor="middle">{s}</text>')
    out.append(f'<text x="{x0 + W / 2 + MARGIN / 2}" y="{H - 8}" text-anchor="middle">devices in the group</text>')
    for system, _, colour in SYSTEMS:
        points = sorted((r["devices"], r[key]) for r in runs if r["system"] == system)
        line = " ".join(f"{px(s):.1f},{py(v):.1f}" for s, v in points)
        out.append(f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [f'<circle cx="{px(s):.1f}" cy="{py(v):.1f}" r="3" fill="{colour}"/>' for s, v in points]
    return out


def svg(runs):
    width = W * len(PANELS)
    body = []
    for i, (key, title) in enumerate(PANELS):
        body += panel(runs, key, title, i * W)
    for i, (_, label, colour) in enumerate(SYSTEMS):
        x = 60 + i * 200
        body.append(f'<rect x="{x}" y="{H + 4}" width="12" height="12" fill="{colour}"/>')
        body.append(f'<text x="{x + 16}" y="{H + 14}">{label}</text>')
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{H + 24}" '
            f'font-family="sans-serif" font-size="11">\n<rect width="100%" height="100%" fill="white"/>\n'
            + "\n".join(body) + "\n</svg>\n")


def main():
    out = Path(sys.argv[1])
    e2e, paths, large = load(out / "e2e.json"), load(out / "paths.json"), load(out / "large.json")
    if e2e is None:
        sys.exit(f"{out / 'e2e.json'} is missing")
    (out / "results.json").write_text(json.dumps({"e2e": e2e, "paths": paths, "large": large}, indent=2) + "\n")
    (out / "plot.svg").write_text(svg(e2e["runs"]))


if __name__ == "__main__":
    main()
