#!/usr/bin/env python3
"""Render multipath-bench.sh's throughput.tsv and stall.tsv as Markdown: medians, the
two-path / one-path ratios and the failover-stall distribution, with the issue's targets
marked met/missed.

usage: multipath-report.py OUTDIR
"""
import csv
import os
import statistics
import sys
from collections import defaultdict

out_dir = sys.argv[1]
lines = []
p = lines.append


def rows(name):
    path = os.path.join(out_dir, name)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return list(csv.DictReader(f, delimiter="\t"))


def env():
    path = os.path.join(out_dir, "env.txt")
    return open(path).read().strip().splitlines() if os.path.exists(path) else []


p("# lunbridge multipath benchmark")
p("")
for e in env():
    p(f"{e}  ")
p("")
p("Two veth NICs between network namespaces, tgtd in one, `lunbridge serve` in the other, "
  "fio `ioengine=nbd` over a unix socket. Shared 2-core machine: read ratios, not absolutes.")
p("")

CONFIG_NAMES = {"single": "one path", "service-time": "two paths, service-time",
                "round-robin": "two paths, round-robin"}
tp = rows("throughput.tsv")
targets = []
if tp:
    bw = defaultdict(list)  # (config, workload) -> [bytes/s]
    by_rep = defaultdict(dict)  # (workload, rep) -> {config: bytes/s}
    for r in tp:
        bw[(r["config"], r["workload"])].append(float(r["bw_bytes"]))
        by_rep[(r["workload"], r["rep"])][r["config"]] = float(r["bw_bytes"])
    p("## Throughput, each NIC limited by tbf (sequential 1 MiB)")
    p("")
    p("| workload | path(s) | median MB/s | min–max MB/s | ratio to one path (paired) |")
    p("|---|---|---:|---:|---:|")
    for w in ("read", "write"):
        base = bw.get(("single", w))
        base_med = statistics.median(base) if base else None
        for c in ("single", "service-time", "round-robin"):
            v = bw.get((c, w))
            if not v:
                continue
            m = statistics.median(v)
            ratio = "–"
            if c != "single" and base_med:
                r = m / base_med
                paired = [d[c] / d["single"] for (ww, _), d in by_rep.items()
                          if ww == w and c in d and d.get("single")]
                pr = statistics.median(paired) if paired else None
                ratio = f"{r:.2f}×" + (f" ({pr:.2f}×)" if pr else "")
                targets.append((f"{w}, {CONFIG_NAMES[c]} ≥ 1.8× one path", f"{r:.2f}×", r >= 1.8))
            p(f"| {w} | {CONFIG_NAMES[c]} | {m / 1e6:.1f} | {min(v) / 1e6:.1f}–{max(v) / 1e6:.1f} | {ratio} |")
    p("")

st = rows("stall.tsv")
LIMITS = {"link-down": (5.0, "keepalive 2 s + 2 s + 1 s (no reset)"),
          "blackhole": (5.0, "keepalive 2 s + 2 s + 1 s (no reset)"),
          "conn-delete": (1.0, "connection reset (tgtadm delete)"),
          "reset": (1.0, "connection reset (nft tcp-reset)")}
if st:
    p("## Failover stall: longest I/O wait per run (4 KiB random writes, depth 1, two paths, round-robin)")
    p("")
    p("| fault | runs | min s | median s | max s | all runs (s) | fio errors | target |")
    p("|---|---:|---:|---:|---:|---|---:|---|")
    by = defaultdict(list)
    for r in st:
        by[r["fault"]].append(r)
    for f, rs in by.items():
        v = [float(r["max_wait_s"]) for r in rs]
        errs = sum(1 for r in rs if r["fio_error"] != "0")
        limit, why = LIMITS.get(f, (None, ""))
        tgt = f"≤ {limit:g} s ({why})" if limit else "–"
        p(f"| {f} | {len(v)} | {min(v):.3f} | {statistics.median(v):.3f} | {max(v):.3f} "
          f"| {', '.join(f'{x:.2f}' for x in v)} | {errs} | {tgt} |")
        if limit:
            targets.append((f"failover stall, {f}: max ≤ {limit:g} s", f"{max(v):.3f} s",
                            max(v) <= limit and errs == 0))
    p("")

if targets:
    p("## Targets")
    p("")
    p("| target | figure | |")
    p("|---|---:|---|")
    for name, fig, ok in targets:
        p(f"| {name} | {fig} | {'met' if ok else 'MISSED'} |")
    p("")
print("\n".join(lines))
