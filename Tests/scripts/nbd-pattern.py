#!/usr/bin/python3
"""Writes or checks a known pattern through an NBD export with libnbd (python3-libnbd).

  nbd-pattern.py URI write OFFSET LENGTH SEED
  nbd-pattern.py URI check OFFSET LENGTH SEED

Each 4 KiB block gets bytes derived from (SEED, block offset), so a block moved, repeated
or left stale is told apart from the right one. `check` prints `ok`, or `mismatch N of M
blocks: OFFSETS` (exit 2); an I/O error prints `error: ...` (exit 3).
Run it with Debian's /usr/bin/python3, which has the nbd module.
"""
import hashlib
import sys

import nbd

BLOCK = 4096


def block(seed, offset):
    h = hashlib.sha256(f"{seed}:{offset}".encode()).digest()
    return (h * (BLOCK // len(h)))[:BLOCK]


def pattern(seed, offset, length):
    return b"".join(block(seed, o) for o in range(offset, offset + length, BLOCK))


def main():
    uri, mode, offset, length, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    h = nbd.NBD()
    h.set_uri_allow_local_file(True)  # ?tls-certificates=DIR in the URI
    h.connect_uri(uri)
    try:
        if mode == "write":
            h.pwrite(pattern(seed, offset, length), offset)
            h.flush()
            print("ok")
            return 0
        got = h.pread(length, offset)
    except nbd.Error as e:
        print(f"error: {e.string} (errno {e.errno})")
        return 3
    finally:
        try:
            h.shutdown()
        except nbd.Error:
            pass
    want = pattern(seed, offset, length)
    bad = [o for o in range(0, length, BLOCK) if got[o:o + BLOCK] != want[o:o + BLOCK]]
    if bad:
        print(f"mismatch {len(bad)} of {length // BLOCK} blocks: {bad[:8]}")
        return 2
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
