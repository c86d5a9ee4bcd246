#!/usr/bin/env python3
"""Render bench.sh's results.tsv as Markdown: medians per workload and server, ratios,
and the issue's targets marked met/missed.

usage: report.py results.tsv HWM_LUNBRIDGE_KB HWM_QEMU_KB REPEATS RUNTIME SIZE_MIB LUN_MIB WALL_S
"""
import csv
import statistics
from collections import defaultdict

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from report import fmt, median, ratio, rfmt, spread  # noqa: E402  (Tests/lib/report.py)

(path, hwm_lb, hwm_q, repeats, runtime, size_mib, lun_mib, wall) = sys.argv[1:]
hwm = {"lunbridge": int(hwm_lb), "qemu-nbd": int(hwm_q)}

WORKLOADS = [
    "randread-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd1",
    "randwrite-4k-qd32", "read-1m-qd8", "write-1m-qd8",
]
GIB = 1 << 30

runs = defaultdict(list)  # (server, workload) -> rows
with open(path) as f:
    for row in csv.DictReader(f, delimiter="\t"):
        runs[(row["server"], row["workload"])].append(row)


def med(server, workload, key):
    rows = runs.get((server, workload))
    if not rows:
        return None
    return statistics.median(float(r[key]) for r in rows)


def cpu_per_gib(server, workload):
    # median over repeats of (CPU seconds in that run / GiB moved in that run)
    rows = runs.get((server, workload))
    vals = [float(r["cpu_s"]) / (float(r["io_bytes"]) / GIB)
            for r in rows or [] if float(r["io_bytes"]) > 0]
    return statistics.median(vals) if vals else None


def paired(workload, key, per_gib=False):
    # median over repeats of the lunbridge/qemu-nbd ratio within one repeat: the two runs
    # of a repeat are back to back, so slow drifts in the machine's load largely cancel.
    a = {r["rep"]: r for r in runs.get(("lunbridge", workload), [])}
    b = {r["rep"]: r for r in runs.get(("qemu-nbd", workload), [])}
    vals = []
    for rep in a.keys() & b.keys():
        x, y = float(a[rep][key]), float(b[rep][key])
        if per_gib:
            x /= float(a[rep]["io_bytes"]) or 1
            y /= float(b[rep]["io_bytes"]) or 1
        if y > 0:
            vals.append(x / y)
    return statistics.median(vals) if vals else None


def iops_spread(server, workload):
    return spread(float(r["iops"]) for r in runs.get((server, workload)) or [])


out = []
p = out.append
p("# lunbridge benchmark")
p("")
p(f"fio `ioengine=nbd` over a unix socket to each server; one private tgtd, RAM-backed "
  f"{lun_mib} MiB LUN (whole LUN preconditioned), fio area {size_mib} MiB; "
  f"{repeats} repeats × {runtime} s per workload, servers interleaved; medians shown. "
  f"MB/s = 10^6 B/s; latencies are fio completion latency (clat). "
  f"CPU s/GiB = server utime+stime during the run / GiB moved. "
  f"iscsi-perf (libiscsi, no NBD hop) is the ceiling; it only reads and reports no latency.")
p("")
p("Numbers from a shared 2-core machine, with fio, the server and tgtd on the same cores: "
  "treat them as relative, not absolute.")
p("")

for w in WORKLOADS:
    p(f"## {w}")
    p("")
    p("| server | IOPS | MB/s | p50 µs | p99 µs | CPU s/GiB | IOPS min–max |")
    p("|---|---:|---:|---:|---:|---:|---:|")
    for s in ("lunbridge", "qemu-nbd", "iscsi-perf"):
        if (s, w) not in runs:
            continue
        iops = med(s, w, "iops")
        mbs = med(s, w, "bw_bytes")
        mbs = None if mbs is None else mbs / 1e6
        if s == "iscsi-perf":
            p(f"| {s} | {fmt(iops)} | {fmt(mbs, 1)} | – | – | – | {iops_spread(s, w)} |")
        else:
            p(f"| {s} | {fmt(iops)} | {fmt(mbs, 1)} | {fmt(med(s, w, 'p50_ns') / 1e3, 1)} "
              f"| {fmt(med(s, w, 'p99_ns') / 1e3, 1)} | {fmt(cpu_per_gib(s, w), 2)} | {iops_spread(s, w)} |")
    p("")

p("## Ratios")
p("")
p("Ratios of the medians above; in brackets the median of the per-repeat ratios "
  "(lunbridge and qemu-nbd run back to back within a repeat, so that one is less "
  "sensitive to load changing between repeats). Targets are judged on the ratio of medians.")
p("")
p("| workload | lunbridge/qemu-nbd IOPS | MB/s | CPU/GiB | lunbridge/iscsi-perf IOPS |")
p("|---|---:|---:|---:|---:|")
P = {}
R = {}
for w in WORKLOADS:
    ri = ratio(med("lunbridge", w, "iops"), med("qemu-nbd", w, "iops"))
    rb = ratio(med("lunbridge", w, "bw_bytes"), med("qemu-nbd", w, "bw_bytes"))
    rc = ratio(cpu_per_gib("lunbridge", w), cpu_per_gib("qemu-nbd", w))
    rp = ratio(med("lunbridge", w, "iops"), med("iscsi-perf", w, "iops"))
    R[w] = (ri, rb, rc, rp)
    P[w] = (paired(w, "iops"), paired(w, "bw_bytes"), paired(w, "cpu_s", per_gib=True))
    p(f"| {w} | {rfmt(ri)} ({rfmt(P[w][0])}) | {rfmt(rb)} ({rfmt(P[w][1])}) "
      f"| {rfmt(rc)} ({rfmt(P[w][2])}) | {rfmt(rp)} |")
p("")
p("| server | peak RSS (VmHWM) |")
p("|---|---:|")
for s in ("lunbridge", "qemu-nbd"):
    p(f"| {s} | {hwm[s] / 1024:.1f} MiB |")
p("")

p("## Targets")
p("")
p("| target | figure | |")
p("|---|---:|---|")


def target(name, value, ok, shown):
    if value is None:
        p(f"| {name} | – | not measured |")
    else:
        p(f"| {name} | {shown} | {'met' if ok else 'MISSED'} |")


for w in ("randread-4k-qd32", "randwrite-4k-qd32"):
    r = R[w][0]
    target(f"IOPS ≥ 1.3× qemu-nbd, {w}", r, r is not None and r >= 1.3,
           f"{rfmt(r)} (paired {rfmt(P[w][0])})")
for w in ("read-1m-qd8", "write-1m-qd8"):
    r = R[w][1]
    target(f"MB/s ≥ 1.0× qemu-nbd, {w}", r, r is not None and r >= 1.0,
           f"{rfmt(r)} (paired {rfmt(P[w][1])})")
for w in WORKLOADS:
    r = R[w][3]
    if r is not None:
        target(f"≥ 0.9× iscsi-perf, {w}", r, r >= 0.9, rfmt(r))
for w in WORKLOADS:
    r = R[w][2]
    target(f"CPU/GiB ≤ 0.8× qemu-nbd, {w}", r, r is not None and r <= 0.8,
           f"{rfmt(r)} (paired {rfmt(P[w][2])})")
mib = hwm["lunbridge"] / 1024
target("lunbridge peak RSS ≤ 24 MiB", mib, mib <= 24, f"{mib:.1f} MiB")
p("")
p(f"Total wall time: {wall} s.")
print("\n".join(out))
