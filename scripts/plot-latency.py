#!/usr/bin/env python3
"""Plots produce-to-receive latency (p50, p99, p99.9) against the delivery rate reached, from
the JSON result of a `cdc-gateway-bench --scenario e` run, as a self-contained SVG (no
plotting library needed).

    python3 scripts/plot-latency.py results-e.json docs/latency-vs-rate.svg
"""
import json
import math
import sys


def main(source, target):
    runs = json.load(open(source))["runs"]
    points = []
    for run in runs:
        rate = run["throughput"].get("steady_deliveries_per_sec") or run["throughput"]["deliveries_per_sec"]
        lat = run["latency_us"]
        points.append((rate, lat["p50"] / 1000, lat["p99"] / 1000, lat["p999"] / 1000, run.get("passed")))
    points.sort()
    width, height, left, bottom, top, right = 720, 420, 70, 50, 30, 150
    xmax = max(p[0] for p in points) * 1.1
    ymax_log = math.log10(max(max(p[3] for p in points), 1.0) * 2)
    ymin_log = math.log10(max(min(p[1] for p in points), 0.01) / 2)

    def x(v):
        return left + (width - left - right) * v / xmax

    def y(ms):
        v = math.log10(max(ms, 10 ** ymin_log))
        return top + (height - top - bottom) * (1 - (v - ymin_log) / (ymax_log - ymin_log))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{width / 2}" y="18" text-anchor="middle" font-size="14">cdc-gateway: produce-to-receive latency vs delivery rate</text>',
           f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="black"/>',
           f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="black"/>',
           f'<text x="{(left + width - right) / 2}" y="{height - 12}" text-anchor="middle">deliveries/s (steady state)</text>',
           f'<text x="16" y="{height / 2}" transform="rotate(-90 16 {height / 2})" text-anchor="middle">latency, ms (log)</text>']
    for i in range(6):
        v = xmax * i / 5
        out.append(f'<text x="{x(v)}" y="{height - bottom + 16}" text-anchor="middle">{v / 1000:.0f}k</text>')
    for e in range(math.floor(ymin_log), math.ceil(ymax_log) + 1):
        if ymin_log <= e <= ymax_log:
            out.append(f'<line x1="{left}" y1="{y(10 ** e)}" x2="{width - right}" y2="{y(10 ** e)}" stroke="#ddd"/>')
            out.append(f'<text x="{left - 6}" y="{y(10 ** e) + 4}" text-anchor="end">{10 ** e:g}</text>')
    out.append(f'<line x1="{left}" y1="{y(50)}" x2="{width - right}" y2="{y(50)}" stroke="#c00" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{width - right + 4}" y="{y(50) + 4}" fill="#c00">p99 bound 50 ms</text>')
    for index, (name, color) in enumerate([("p50", "#1f77b4"), ("p99", "#ff7f0e"), ("p99.9", "#2ca02c")]):
        coords = " ".join(f"{x(p[0]):.1f},{y(p[index + 1]):.1f}" for p in points)
        out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="2"/>')
        for p in points:
            out.append(f'<circle cx="{x(p[0]):.1f}" cy="{y(p[index + 1]):.1f}" r="3" fill="{color}"/>')
        out.append(f'<text x="{width - right + 4}" y="{top + 20 + 16 * index}" fill="{color}">{name}</text>')
    out.append("</svg>")
    open(target, "w").write("\n".join(out) + "\n")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
