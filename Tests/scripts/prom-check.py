#!/usr/bin/python3
"""Checks that a file is valid Prometheus text exposition format (0.0.4) and prints the
sum of the samples of the metric/label filters asked for.

  prom-check.py FILE [METRIC[{label="value",...}] ...]

Strict where scrapers are strict: every sample line is `name{labels} value`, label values
are quoted with \\ \" \n escapes, a family's HELP/TYPE come before its samples and only
once, histogram buckets are cumulative and end with le="+Inf" equal to _count. Exits 1
with one line per problem."""
import math
import re
import sys

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
SAMPLE = re.compile(rf"^({NAME})(\{{(?:{LABEL}(?:,{LABEL})*)?,?\}})? (\S+)( -?\d+)?$")
LABELS = re.compile(rf'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def value(text):
    if text in ("+Inf", "Inf"):
        return math.inf
    if text == "-Inf":
        return -math.inf
    if text == "NaN":
        return math.nan
    return float(text)


def main():
    path, wanted = sys.argv[1], sys.argv[2:]
    problems = []
    types, helps, seen_samples = {}, set(), set()
    samples = []
    with open(path, encoding="utf-8") as f:
        text = f.read()
    if not text.endswith("\n"):
        problems.append("the text does not end with a newline")
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                family = parts[2]
                if family in seen_samples:
                    problems.append(f"line {n}: {parts[1]} for {family} after its samples")
                if parts[1] == "TYPE":
                    if family in types:
                        problems.append(f"line {n}: second TYPE for {family}")
                    if len(parts) < 4 or parts[3] not in ("counter", "gauge", "histogram", "summary", "untyped"):
                        problems.append(f"line {n}: bad TYPE line")
                    types[family] = parts[3] if len(parts) == 4 else "?"
                else:
                    if family in helps:
                        problems.append(f"line {n}: second HELP for {family}")
                    helps.add(family)
            continue
        m = SAMPLE.match(line)
        if not m:
            problems.append(f"line {n}: not a sample line: {line!r}")
            continue
        name, labels, v = m.group(1), m.group(2) or "", m.group(3)
        try:
            val = value(v)
        except ValueError:
            problems.append(f"line {n}: bad value {v!r}")
            continue
        family = re.sub(r"_(bucket|sum|count)$", "", name) if re.sub(r"_(bucket|sum|count)$", "", name) in types else name
        if family not in types:
            problems.append(f"line {n}: sample of {name} without a TYPE line")
        seen_samples.add(family)
        samples.append((name, dict(LABELS.findall(labels)), val, family))
    # Histograms: cumulative buckets, +Inf == _count.
    series = {}
    for name, labels, val, family in samples:
        if types.get(family) == "histogram" and name == family + "_bucket":
            key = (family, tuple(sorted((k, v) for k, v in labels.items() if k != "le")))
            series.setdefault(key, []).append((value(labels.get("le", "nan")), val))
    counts = {
        (family, tuple(sorted(labels.items()))): val
        for name, labels, val, family in samples
        if types.get(family) == "histogram" and name == family + "_count"
    }
    for key, buckets in series.items():
        les = [le for le, _ in buckets]
        if les != sorted(les) or les[-1] != math.inf:
            problems.append(f"{key[0]}{dict(key[1])}: buckets not in order or no +Inf bucket")
        vals = [v for _, v in buckets]
        if any(b < a for a, b in zip(vals, vals[1:])):
            problems.append(f"{key[0]}{dict(key[1])}: buckets are not cumulative")
        if counts.get(key) != vals[-1]:
            problems.append(f"{key[0]}{dict(key[1])}: +Inf bucket {vals[-1]} != _count {counts.get(key)}")
    if not samples:
        problems.append("no samples")
    for p in problems:
        print(f"prom-check: {p}", file=sys.stderr)
    for w in wanted:
        m = re.match(rf"^({NAME})(\{{.*\}})?$", w)
        if not m:
            print(f"prom-check: bad filter {w!r}", file=sys.stderr)
            return 2
        want = dict(LABELS.findall(m.group(2) or ""))
        total = sum(v for name, labels, v, _ in samples
                    if name == m.group(1) and all(labels.get(k) == x for k, x in want.items()))
        print(int(total) if total == int(total) else total)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
