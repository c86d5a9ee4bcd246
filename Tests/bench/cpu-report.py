#!/usr/bin/env python3
"""Render cpu-per-io.sh's cpu-per-io.tsv as Markdown (stdout) and JSON: the server's CPU
microseconds per I/O (utime+stime over a fixed number of fio I/Os), the median per server,
the median of the per-pair lunbridge/qemu-nbd ratios and the issue's targets.

usage: cpu-report.py cpu-per-io.tsv pids.tsv out.json PAIRS SIZE_MIB LUN_MIB WORKLOAD=TARGET...
"""
import csv
import json
import os
import sys
from collections import defaultdict

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from report import fmt, median, ratio as ratio_of, rfmt  # noqa: E402  (Tests/lib/report.py)

path, pids_path, json_path, pairs, size_mib, lun_mib = sys.argv[1:7]
TARGETS = {}
for arg in sys.argv[7:]:
    name, t = arg.split("=")
    TARGETS[name] = float(t)
WORKLOADS = list(TARGETS)
SERVERS = ("lunbridge", "qemu-nbd")

runs = defaultdict(dict)  # (workload, server) -> pair -> row
with open(path) as f:
    for row in csv.DictReader(f, delimiter="\t"):
        runs[(row["workload"], row["server"])][row["pair"]] = row
pids = {}
with open(pids_path) as f:
    for line in f:
        server, pid, exe, cmd = line.rstrip("\n").split("\t", 3)
        pids[server] = {"pid": int(pid), "exe": exe, "cmdline": cmd}
hz = next((int(r["hz"]) for rs in runs.values() for r in rs.values()), 0)


def us(row):
    return float(row["cpu_us_per_io"])


def col(rows, key):
    """Median of a per-run column; None when the rows predate it (older tsv files)."""
    vals = [float(r[key]) for r in rows if r.get(key) not in (None, "")]
    return median(vals) if vals else None


CORES = os.cpu_count() or 1
IOPS_TARGET = 1.3  # issue 10: lunbridge >= 1.3x qemu-nbd's IOPS at 4 KiB depth 32


results = []
for w in WORKLOADS:
    a, b = runs.get((w, "lunbridge"), {}), runs.get((w, "qemu-nbd"), {})
    ratios = [us(a[k]) / us(b[k]) for k in sorted(a.keys() & b.keys(), key=int)
              if us(b[k]) > 0]
    ratio = median(ratios)
    rows = list(a.values()) + list(b.values())
    results.append({
        "workload": w,
        "lunbridge_us_per_io": median([us(r) for r in a.values()]),
        "qemu_nbd_us_per_io": median([us(r) for r in b.values()]),
        "lunbridge_us_per_io_runs": [us(a[k]) for k in sorted(a, key=int)],
        "qemu_nbd_us_per_io_runs": [us(b[k]) for k in sorted(b, key=int)],
        "pair_ratios": ratios,
        "ratio": ratio,
        "target": TARGETS[w],
        "met": None if ratio is None else ratio <= TARGETS[w],
        "ios_per_run": sorted({int(r["ios"]) for r in rows}),
        "min_ticks_per_run": min((int(r["ticks"]) for r in rows), default=None),
        "lunbridge_iops_median": median([float(r["iops"]) for r in a.values()]),
        "qemu_nbd_iops_median": median([float(r["iops"]) for r in b.values()]),
        "split": {name: {"target_us_per_io": col(rs, "target_us_per_io"),
                         "client_us_per_io": col(rs, "client_us_per_io"),
                         "server_us_per_io": col(rs, "cpu_us_per_io")}
                  for name, rs in (("lunbridge", list(a.values())), ("qemu-nbd", list(b.values())))},
    })
    r = results[-1]
    if all(v[k] is not None for v in r["split"].values() for k in v):
        for v in r["split"].values():
            v["sum_us_per_io"] = v["target_us_per_io"] + v["client_us_per_io"] + v["server_us_per_io"]
        lb, q = r["split"]["lunbridge"], r["split"]["qemu-nbd"]
        r["cpu_bound_iops_ratio"] = q["sum_us_per_io"] / lb["sum_us_per_io"]
        r["lunbridge_server_us_for_iops_target"] = (
            q["sum_us_per_io"] / IOPS_TARGET - lb["target_us_per_io"] - lb["client_us_per_io"])

with open(json_path, "w") as f:
    json.dump({"clk_tck": hz, "cores": CORES, "pairs": int(pairs), "size_mib": int(size_mib),
               "lun_mib": int(lun_mib), "processes": pids, "workloads": results},
              f, indent=2)
    f.write("\n")


out = []
p = out.append
p("## CPU per I/O")
p("")
p(f"Server CPU (utime+stime of the server process from /proc/PID/stat, CLK_TCK {hz}) "
  f"over a fixed number of fio I/Os per run (`ioengine=nbd`, unix socket), divided by "
  f"the I/Os fio completed; lunbridge serve and qemu-nbd alternate on the same "
  f"{lun_mib} MiB tgtd LUN (fio area {size_mib} MiB), {pairs} pair(s), the order "
  f"flipping each pair. Server columns: median over the runs; ratio: median of the per-pair "
  f"lunbridge/qemu-nbd ratios, which the target is judged on.")
p("")
p("| workload | lunbridge µs CPU/I/O (median) | qemu-nbd µs CPU/I/O (median) "
  "| ratio (median of pairs) | target | met |")
p("|---|---:|---:|---:|---:|---|")
for r in results:
    met = "–" if r["met"] is None else ("yes" if r["met"] else "no")
    p(f"| {r['workload']} | {fmt(r['lunbridge_us_per_io'], 2)} | {fmt(r['qemu_nbd_us_per_io'], 2)} "
      f"| {rfmt(r['ratio'])} | ≤ {r['target']:.1f}× | {met} |")
p("")
ios = ", ".join(f"{r['workload']} {'/'.join(str(n) for n in r['ios_per_run'])}"
                for r in results)
p(f"I/Os per run: {ios}. Fewest clock ticks in any one run: "
  f"{min((r['min_ticks_per_run'] for r in results if r['min_ticks_per_run'] is not None), default='–')}"
  f" (one tick = {1e6 / hz if hz else 0:,.0f} µs of CPU; below ~50 ticks the tick "
  f"granularity alone is worth a few per cent).")
p("")

# Where the CPU of one I/O goes: on a machine where tgtd, fio and the server share the
# cores, the sum of the three bounds the IOPS, whoever the server is.
split_rows = [r for r in results if "cpu_bound_iops_ratio" in r]
if split_rows:
    p("### Where the CPU of one I/O goes")
    p("")
    p(f"The same runs: µs of CPU per I/O of tgtd (all its threads, /proc/PID/stat), fio (its "
      f"own `usr_cpu` + `sys_cpu`) and the server, medians. The three share this machine's "
      f"{CORES} cores, so with the cores as the only limit IOPS ≤ {CORES} × 10⁶ ÷ (their sum), "
      f"and the IOPS ratio the CPU allows is qemu-nbd's sum over lunbridge's. The last column "
      f"is, for the workloads with an IOPS target (4 KiB at depth 32), the server CPU per "
      f"I/O at which lunbridge's sum would allow {IOPS_TARGET}× qemu-nbd's IOPS, tgtd and fio "
      f"costing what they did in lunbridge's runs.")
    p("")
    p("| workload | server | tgtd | fio | server | sum | IOPS the CPU allows | IOPS measured "
      f"| lunbridge server µs for {IOPS_TARGET}× |")
    p("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in split_rows:
        for name in SERVERS:
            v = r["split"][name]
            iops = r["lunbridge_iops_median" if name == "lunbridge" else "qemu_nbd_iops_median"]
            need = r["lunbridge_server_us_for_iops_target"]
            if name != "lunbridge":
                last = ""
            elif not r["workload"].endswith("4k-qd32"):
                last = "–"  # the IOPS target is set at 4 KiB depth 32 only
            else:
                last = fmt(need, 2) if need > 0 else "unreachable"
            p(f"| {r['workload'] if name == 'lunbridge' else ''} | {name} | {fmt(v['target_us_per_io'], 2)} "
              f"| {fmt(v['client_us_per_io'], 2)} | {fmt(v['server_us_per_io'], 2)} "
              f"| {fmt(v['sum_us_per_io'], 2)} | {fmt(CORES * 1e6 / v['sum_us_per_io'], 0)} "
              f"| {fmt(iops, 0)} | {last} |")
    p("")
    p("IOPS ratio the CPU allows (qemu-nbd's sum ÷ lunbridge's) and the one measured in these "
      "runs: " + "; ".join(
          f"{r['workload']} {rfmt(r['cpu_bound_iops_ratio'])} (measured "
          f"{rfmt(ratio_of(r['lunbridge_iops_median'], r['qemu_nbd_iops_median']))})"
          for r in split_rows) + ".")
    p("")

for s in SERVERS:
    if s in pids:
        d = pids[s]
        p(f"- {s}: pid {d['pid']}, the process bench.sh started (`$!`), exe `{d['exe']}`: "
          f"`{d['cmdline']}`")
p("")
print("\n".join(out))
