#!/usr/bin/env python3
"""Helper for scripts/bench.sh (standard library only).

Subcommands:
  gen --keys N [--seed S] [--slot-ranges A-B,C-D,... --out-prefix P]
                                 write RESP for N mixed keys to stdout
                                 (meant for `redis-cli --pipe`); with
                                 --slot-ranges, to P.0, P.1, ... instead, each
                                 file the keys of one cluster node's slots
  replicate --port P --master-port M --expect N [--timeout T]
                                 REPLICAOF the master, print seconds until the
                                 link is up, the sync is done and DBSIZE == N
  wait-dbsize --port P [--port ...] --expect N [--at-least] [--timeout T]
                                 print seconds until the DBSIZE of the ports
                                 (summed) is N, or with --at-least >= N
                                 (10 ms polls)
  marker --source P --target NAME=PORT [--target ...] [--timeout T]
                                 SET a unique marker on the source, print
                                 NAME=<ms> once each target can read it
  catchup --source P [--source ...] --target P [--target ...] [--timeout T]
                                 print seconds until ferry's global checkpoints
                                 on the target nodes name every source master's
                                 current (replid, offset): everything written
                                 so far is applied (checkpoints on)
  median X [X ...]               print the median
"""

import argparse
import os
import random
import socket
import sys
import time
import uuid

MARKER_KEY = b"ferry:bench:marker"


# --------------------------------------------------------------------------
# RESP encoding


def encode(*args):
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        if isinstance(a, str):
            a = a.encode()
        elif isinstance(a, int):
            a = b"%d" % a
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    return b"".join(parts)


# --------------------------------------------------------------------------
# Minimal blocking client


class Conn:
    def __init__(self, port, host="127.0.0.1", timeout=30.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def _fill(self):
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("connection closed by server")
        self.buf += chunk

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line, self.buf = self.buf[:i], self.buf[i + 2:]
                return line
            self._fill()

    def _exact(self, n):
        while len(self.buf) < n + 2:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n + 2:]
        return data

    def read(self):
        line = self._line()
        kind, rest = line[:1], line[1:]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self._exact(n)
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError("unexpected reply %r" % line)

    def cmd(self, *args):
        self.sock.sendall(encode(*args))
        return self.read()


def info_fields(conn, section):
    text = conn.cmd("INFO", section).decode(errors="replace")
    fields = {}
    for line in text.splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            fields[k] = v
    return fields


# --------------------------------------------------------------------------
# Subcommands


def _crc16_table():
    t = []
    for i in range(256):
        c = i << 8
        for _ in range(8):
            c = ((c << 1) ^ 0x1021) if c & 0x8000 else (c << 1)
        t.append(c & 0xFFFF)
    return t


CRC16 = _crc16_table()


def key_slot(key):
    """Cluster slot of a key without hash tags (the bench's keys have none)."""
    crc = 0
    for b in key:
        crc = ((crc << 8) & 0xFFFF) ^ CRC16[((crc >> 8) ^ b) & 0xFF]
    return crc & 16383


def cmd_gen(args):
    rng = random.Random(args.seed)
    # A pool of printable bytes to slice values from: cheap and not trivially
    # compressible (RDB compresses values with LZF).
    pool = bytes(rng.randrange(33, 127) for _ in range(1 << 16))
    plen = len(pool)

    def val(lo, hi):
        n = rng.randint(lo, hi)
        off = rng.randrange(plen - n)
        return pool[off:off + n]

    if args.slot_ranges:
        if not args.out_prefix:
            sys.exit("gen: --slot-ranges needs --out-prefix")
        ranges = [tuple(int(x) for x in r.split("-")) for r in args.slot_ranges.split(",")]
        slot_node = [None] * 16384
        for n, (lo, hi) in enumerate(ranges):
            for slot in range(lo, hi + 1):
                slot_node[slot] = n
        outs = [open("%s.%d" % (args.out_prefix, n), "wb") for n in range(len(ranges))]
    else:
        outs = [sys.stdout.buffer]
    batches = [[] for _ in outs]
    for i in range(args.keys):
        kind = i % 10
        if kind < 6:
            key = b"bench:str:%d" % i
            cmd = encode(b"SET", key, val(20, 100))
        elif kind == 6:
            key = b"bench:hash:%d" % i
            a = [b"HSET", key]
            for f in range(5):
                a += [b"f%d" % f, val(5, 20)]
            cmd = encode(*a)
        elif kind == 7:
            key = b"bench:list:%d" % i
            cmd = encode(b"RPUSH", key, *[val(5, 20) for _ in range(5)])
        elif kind == 8:
            key = b"bench:set:%d" % i
            cmd = encode(b"SADD", key, *[b"m%d-%s" % (j, val(4, 12)) for j in range(5)])
        else:
            key = b"bench:zset:%d" % i
            a = [b"ZADD", key]
            for j in range(5):
                a += [b"%d" % rng.randrange(1000000), b"m%d-%s" % (j, val(4, 12))]
            cmd = encode(*a)
        n = 0
        if len(outs) > 1:
            n = slot_node[key_slot(key)]
            if n is None:
                sys.exit("gen: slot of %r is in no --slot-ranges range" % key)
        batches[n].append(cmd)
        if len(batches[n]) >= 10000:
            outs[n].write(b"".join(batches[n]))
            batches[n] = []
    for out, batch in zip(outs, batches):
        out.write(b"".join(batch))
        out.flush()


def cmd_replicate(args):
    conn = Conn(args.port)
    t0 = time.monotonic()
    conn.cmd("REPLICAOF", "127.0.0.1", str(args.master_port))
    deadline = t0 + args.timeout
    while True:
        f = info_fields(conn, "replication")
        if (f.get("master_link_status") == "up"
                and f.get("master_sync_in_progress") == "0"
                and conn.cmd("DBSIZE") == args.expect):
            break
        if time.monotonic() > deadline:
            sys.exit("replica on port %d not in sync after %ds: %r"
                     % (args.port, args.timeout, f))
        time.sleep(0.01)
    print("%.3f" % (time.monotonic() - t0))


def cmd_wait_dbsize(args):
    conns = {}
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    last = None
    while True:
        try:
            last = 0
            for port in args.port:
                if port not in conns:
                    conns[port] = Conn(port)
                last += conns[port].cmd("DBSIZE")
            if last == args.expect or (args.at_least and last >= args.expect):
                break
        except (OSError, ConnectionError):
            conns = {}
        if time.monotonic() > deadline:
            sys.exit("port(s) %r: DBSIZE %r, expected %d after %ds"
                     % (args.port, last, args.expect, args.timeout))
        time.sleep(0.01)
    print("%.3f" % (time.monotonic() - t0))


def cmd_marker(args):
    targets = []
    for spec in args.target:
        name, port = spec.split("=", 1)
        targets.append((name, Conn(int(port))))
    value = ("%s-%d" % (uuid.uuid4().hex, os.getpid())).encode()
    src = Conn(args.source)
    t0 = time.monotonic()
    src.cmd("SET", MARKER_KEY, value)
    pending = dict(targets)
    delays = {}
    deadline = t0 + args.timeout
    while pending:
        for name, conn in list(pending.items()):
            if conn.cmd("GET", MARKER_KEY) == value:
                delays[name] = (time.monotonic() - t0) * 1000.0
                del pending[name]
        if not pending:
            break
        if time.monotonic() > deadline:
            for name in pending:
                delays[name] = float("nan")
            break
        time.sleep(0.001)
    for name, _ in targets:
        print("%s=%.1f" % (name, delays[name]))


def _global_checkpoint_keys(conn):
    """Names of the global (not per-slot) checkpoint keys on a node (one SCAN)."""
    out = []
    cursor = b"0"
    while True:
        cursor, keys = conn.cmd("SCAN", cursor, "MATCH", "ferry:checkpoint:*", "COUNT", "1000")
        out.extend(k for k in keys if b"{" not in k)
        if cursor == b"0":
            return out


def _stream_position(value):
    """(replid, offset) of a stream checkpoint's value, else None."""
    f = value.split(b" ") if isinstance(value, bytes) else []
    if len(f) == 4 and f[0] == b"stream":
        return (f[1], int(f[2]))
    return None


def cmd_catchup(args):
    sources = [Conn(p) for p in args.source]
    targets = [Conn(p) for p in args.target]
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    # The keys are found once (a SCAN over a big keyspace takes long): each poll then only
    # GETs them, so the figure is not rounded up to the length of a SCAN.
    keys = {}
    while True:
        want = set()
        for c in sources:
            f = info_fields(c, "replication")
            want.add((f["master_replid"].encode(), int(f["master_repl_offset"])))
        have = set()
        for i, c in enumerate(targets):
            if i not in keys:
                keys[i] = _global_checkpoint_keys(c)
            for k in keys[i]:
                pos = _stream_position(c.cmd("GET", k))
                if pos:
                    have.add(pos)
        if want <= have:
            break
        if len(have) < len(want):
            # A checkpoint key not seen yet (or a new one): look again next time.
            keys.clear()
        if time.monotonic() > deadline:
            sys.exit("not caught up after %ds: want %r, have %r" % (args.timeout, want, have))
        time.sleep(0.002)
    print("%.3f" % (time.monotonic() - t0))


def cmd_median(args):
    xs = sorted(float(x) for x in args.values)
    n = len(xs)
    m = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    print("%.3f" % m)


def main():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("gen")
    g.add_argument("--keys", type=int, required=True)
    g.add_argument("--seed", type=int, default=42)
    g.add_argument("--slot-ranges", default="")
    g.add_argument("--out-prefix", default="")
    g.set_defaults(func=cmd_gen)

    r = sub.add_parser("replicate")
    r.add_argument("--port", type=int, required=True)
    r.add_argument("--master-port", type=int, required=True)
    r.add_argument("--expect", type=int, required=True)
    r.add_argument("--timeout", type=float, default=600)
    r.set_defaults(func=cmd_replicate)

    w = sub.add_parser("wait-dbsize")
    w.add_argument("--port", type=int, action="append", required=True)
    w.add_argument("--expect", type=int, required=True)
    w.add_argument("--at-least", action="store_true")
    w.add_argument("--timeout", type=float, default=600)
    w.set_defaults(func=cmd_wait_dbsize)

    m = sub.add_parser("marker")
    m.add_argument("--source", type=int, required=True)
    m.add_argument("--target", action="append", required=True)
    m.add_argument("--timeout", type=float, default=300)
    m.set_defaults(func=cmd_marker)

    c = sub.add_parser("catchup")
    c.add_argument("--source", type=int, action="append", required=True)
    c.add_argument("--target", type=int, action="append", required=True)
    c.add_argument("--timeout", type=float, default=300)
    c.set_defaults(func=cmd_catchup)

    md = sub.add_parser("median")
    md.add_argument("values", nargs="+")
    md.set_defaults(func=cmd_median)

    args = p.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
