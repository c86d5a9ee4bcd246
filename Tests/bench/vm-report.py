#!/usr/bin/env python3
"""Render vm-bench-guest.sh's results (OUTDIR/runs.tsv + OUTDIR/fio/*.json) as Markdown:
per workload the median IOPS, MB/s, p50/p99 completion latency and CPU s/GiB of each
device, then ratios lunbridge/qemu-nbd and lunbridge/open-iscsi.

usage: vm-report.py OUTDIR WALL_SECONDS
"""
import csv
import json
import os
import statistics
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from report import fmt, ratio, rfmt, spread  # noqa: E402  (Tests/lib/report.py)

outdir, wall = sys.argv[1:]
DEVICES = ["lunbridge", "qemu-nbd", "open-iscsi"]
WORKLOADS = ["randread-4k-qd1", "randread-4k-qd32", "randwrite-4k-qd32",
             "read-1m-qd8", "write-1m-qd8"]
GIB = 1 << 30

runs = defaultdict(list)  # (device, workload) -> [dict]
with open(os.path.join(outdir, "runs.tsv")) as f:
    for row in csv.DictReader(f, delimiter="\t"):
        j = json.load(open(os.path.join(outdir, row["json"])))
        job = j["jobs"][0]
        if job.get("error"):
            sys.exit(f"vm-report: fio error {job['error']} in {row['json']}")
        d = job["read"] if job["read"]["io_bytes"] > 0 else job["write"]
        pct = d["clat_ns"].get("percentile", {})
        cpu = None
        if row["cpu_ticks"] != "NA" and d["io_bytes"] > 0:
            cpu = int(row["cpu_ticks"]) / int(row["hz"]) / (d["io_bytes"] / GIB)
        runs[(row["device"], row["workload"])].append({
            "rep": row["rep"], "iops": d["iops"], "bw": d["bw_bytes"],
            "p50": pct.get("50.000000", 0) / 1e3, "p99": pct.get("99.000000", 0) / 1e3,
            "cpu": cpu,
        })


def med(dev, w, key):
    vals = [r[key] for r in runs.get((dev, w), []) if r[key] is not None]
    return statistics.median(vals) if vals else None


def iops_spread(dev, w):
    return spread(r["iops"] for r in runs.get((dev, w), []))


def paired(other, w, key):
    # median over repeats of the per-repeat ratio (devices of a repeat run back to back)
    a = {r["rep"]: r[key] for r in runs.get(("lunbridge", w), [])}
    b = {r["rep"]: r[key] for r in runs.get((other, w), [])}
    v = [a[k] / b[k] for k in a.keys() & b.keys() if a[k] is not None and b[k]]
    return statistics.median(v) if v else None


env = ""
try:
    env = open(os.path.join(outdir, "env.txt")).read().strip()
except OSError:
    pass
reps = max((len(v) for v in runs.values()), default=0)

out = []
p = out.append
p("# lunbridge kernel-path benchmark (VM)")
p("")
p("**Emulated I/O: the guest runs under QEMU TCG (no KVM) on a shared 2-core host, so "
  "absolute IOPS, MB/s and latencies are meaningless. Only ratios between devices of the "
  "same run count.**")
p("")
p("Block devices on one private tgtd (RAM-backed LUN, guest loopback), all attached for "
  "the whole run on separate iSCSI sessions: `lunbridge attach --connections 2` "
  "(/dev/nbdX), `qemu-nbd -c --cache=none` (libiscsi, /dev/nbdY, one NBD socket), open-iscsi "
  "(iscsi_tcp, /dev/sdX). fio `ioengine=libaio direct=1`, one job, I/O scheduler `none` on "
  f"all three; {reps} repeats per workload, device order rotated each repeat; medians shown. "
  "MB/s = 10^6 B/s; p50/p99 = fio completion latency. CPU s/GiB = utime+stime of the "
  "serving user-space process during the run / GiB moved (open-iscsi works in the kernel: "
  "n/a).")
p("")
for w in WORKLOADS:
    p(f"## {w}")
    p("")
    p("| device | IOPS | MB/s | p50 µs | p99 µs | CPU s/GiB | IOPS min–max |")
    p("|---|---:|---:|---:|---:|---:|---:|")
    for dev in DEVICES:
        if (dev, w) not in runs:
            continue
        bw = med(dev, w, "bw")
        cpu = med(dev, w, "cpu")
        p(f"| {dev} | {fmt(med(dev, w, 'iops'))} | {fmt(None if bw is None else bw / 1e6, 1)} "
          f"| {fmt(med(dev, w, 'p50'), 1)} | {fmt(med(dev, w, 'p99'), 1)} "
          f"| {'n/a' if dev == 'open-iscsi' else fmt(cpu, 2)} | {iops_spread(dev, w)} |")
    p("")

p("## Ratios")
p("")
p("Ratio of the medians; in brackets the median of per-repeat ratios. Latency ratios < 1 "
  "and CPU ratios < 1 favour lunbridge; IOPS ratios > 1 favour it.")
p("")
p("| workload | IOPS ÷ qemu-nbd | p99 ÷ qemu-nbd | CPU/GiB ÷ qemu-nbd | IOPS ÷ open-iscsi | p99 ÷ open-iscsi |")
p("|---|---:|---:|---:|---:|---:|")
for w in WORKLOADS:
    cells = []
    for other, keys in (("qemu-nbd", ("iops", "p99", "cpu")), ("open-iscsi", ("iops", "p99"))):
        for k in keys:
            cells.append(f"{rfmt(ratio(med('lunbridge', w, k), med(other, w, k)))} "
                         f"({rfmt(paired(other, w, k))})")
    p(f"| {w} | " + " | ".join(cells) + " |")
p("")
p("(MB/s ratios equal IOPS ratios: same block size per workload.)")
p("")
p("## Environment")
p("")
p("```")
p(env)
p("```")
p("")
boot = total = "?"
try:
    boot = open(os.path.join(outdir, "boot-seconds")).read().strip()
    total = open(os.path.join(outdir, "total-seconds")).read().strip()
except OSError:
    pass
p(f"Wall time: {wall} s (VM boot {boot} s, vm-run total {total} s).")
print("\n".join(out))
