#!/usr/bin/env python3
"""Reads the JSON the multipath tests collect and prints plain fields for the shell.

  jsonq.py fio FILE      -> "ERROR READ_BYTES WRITE_BYTES MAX_WAIT_S MAX_READ_S MAX_WRITE_S"
                            (fio --output-format=json; MAX_* from lat_ns.max, submit to
                            completion, so the longest time any I/O waited)
  jsonq.py paths FILE    -> one line per path of the first volume in a
                            `lunbridge status NAME --json` array:
                            "ID PORTAL STATE IOS FAILURES REINSTATEMENTS FAILOVERS ERRORS"
  jsonq.py volume FILE   -> "QUEUED_IOS NO_PATH_FAILURES REQUEST_ERRORS"
Exits 2 with a message when the file is not what it should be.
"""
import json
import sys


def load(path):
    text = open(path, errors="replace").read()
    # fio's nbd engine may print a line before the JSON
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        sys.exit(f"jsonq: no JSON in {path}")
    try:
        return json.loads(text[min(starts):])
    except ValueError as e:
        sys.exit(f"jsonq: {path}: {e}")


def fio(path):
    j = load(path)
    job = j["jobs"][0]
    r, w = job["read"], job["write"]
    rmax = r["lat_ns"]["max"] / 1e9 if r["total_ios"] else 0.0
    wmax = w["lat_ns"]["max"] / 1e9 if w["total_ios"] else 0.0
    print(job["error"], r["io_bytes"], w["io_bytes"], f"{max(rmax, wmax):.3f}", f"{rmax:.3f}", f"{wmax:.3f}")


def volume0(path):
    j = load(path)
    if isinstance(j, dict):
        j = [j]
    if not j:
        sys.exit(f"jsonq: {path}: no volume in the status")
    return j[0]


def paths(path):
    for p in volume0(path)["paths"]:
        print(p["id"], p["portal"], p["state"], p["ios"], p["failures"], p["reinstatements"],
              p["failovers"], p["errors"])


def volume(path):
    v = volume0(path)
    print(v["queuedIOs"], v["noPathFailures"], v["requests"]["errors"])


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("fio", "paths", "volume"):
        sys.exit(__doc__)
    try:
        {"fio": fio, "paths": paths, "volume": volume}[sys.argv[1]](sys.argv[2])
    except (KeyError, IndexError, TypeError) as e:
        sys.exit(f"jsonq: {sys.argv[2]}: missing field {e}")
