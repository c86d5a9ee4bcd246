#!/usr/bin/python3
"""Runs COUNT 4 KiB reads or writes, one at a time, through an NBD export (libnbd).

  nbd-loop.py URI read|write COUNT

The offsets walk the first 16 MiB in 4 KiB steps. Prints `done COUNT`, or `error: ...`
(exit 3). Used by the allocation-budget test to drive a fixed number of I/Os through the
server under test, from another process so the client's allocations are not counted.
Run it with Debian's /usr/bin/python3, which has the nbd module.
"""
import sys

import nbd


def main():
    uri, mode, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    h = nbd.NBD()
    try:
        h.connect_uri(uri)
        buf = bytes(4096)
        span = min(h.get_size(), 16 << 20) // 4096
        for i in range(count):
            offset = (i * 7919 % span) * 4096
            if mode == "read":
                h.pread(4096, offset)
            else:
                h.pwrite(buf, offset)
        h.shutdown()
    except nbd.Error as e:
        print(f"error: {e}")
        sys.exit(3)
    print(f"done {count}")


main()
