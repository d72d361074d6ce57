#!/usr/bin/env bash
# ferry big-key benchmark: a source holding a few huge values (a hash, a sorted set, a list,
# a set of BIG_N elements each, a stream of BIG_N/2 entries, a string of BIG_STRING_MB MB)
# copied with `ferry sync --mode full`, next to native REPLICAOF of the same source.
# Prints times, ferry's peak RSS (which must stay flat: big values are streamed in chunks,
# never held whole, and the string is LZF-compressed in the source's RDB, so it goes through
# the windowed decompressor), ferry's CPU and the digests. A benchmark: it asserts nothing.
#
# Environment: BIG_N (default 2000000), BIG_STRING_MB (default 512), FERRY_BIN (skip the
# build). Small run (CI): BIG_N=50000 BIG_STRING_MB=16 scripts/bench-bigkeys.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
N="${BIG_N:-2000000}"
MB="${BIG_STRING_MB:-512}"
say() { printf 'bigkeys: %s\n' "$*"; }
die() { printf 'bigkeys: error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found in PATH ($2)"; }
command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time not found (apt-get install time)"

# shellcheck source=scripts/lib.sh
source "$ROOT/scripts/lib.sh"
ferry_binary "$ROOT"
work_dir ferry-bigkeys

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rcli() { local p="$1"; shift; redis-cli -h 127.0.0.1 -p "$p" "$@"; }
start_server() {
    local dir="$WORK/$1" port
    mkdir -p "$dir"
    port="$(free_port)"
    redis-server --port "$port" --dir "$dir" --save "" --appendonly no \
        --enable-debug-command yes --repl-diskless-sync-delay 0 --bind 127.0.0.1 \
        --proto-max-bulk-len 1gb --client-query-buffer-limit 1gb \
        --logfile "$dir/redis.log" &
    PIDS+=("$!")
    for _ in $(seq 500); do
        [[ "$(rcli "$port" PING 2>/dev/null)" == PONG ]] && { PORT="$port"; return; }
        sleep 0.01
    done
    die "redis-server $1 did not start"
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }

start_server source
SRC="$PORT"
say "loading: hash/zset/list/set of $N elements, a stream of $((N / 2)) entries, a $MB MB string"
python3 - "$N" "$MB" <<'PY' | rcli "$SRC" --pipe >/dev/null
import sys
n, mb = int(sys.argv[1]), int(sys.argv[2])
out = sys.stdout.buffer
def cmd(*args):
    parts = [b"*%d\r\n" % len(args)]
    for a in args:
        a = a if isinstance(a, bytes) else str(a).encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(a), a))
    out.write(b"".join(parts))
step = 1000
for i in range(0, n, step):
    r = range(i, min(n, i + step))
    cmd("HSET", "big:hash", *[x for j in r for x in (f"field:{j}", f"value:{j}")])
    cmd("ZADD", "big:zset", *[x for j in r for x in (j * 0.5, f"member:{j}")])
    cmd("RPUSH", "big:list", *[f"element:{j}" for j in r])
    cmd("SADD", "big:set", *[f"member:{j}" for j in r])
for j in range(n // 2):
    cmd("XADD", "big:stream", f"{j + 1}-0", "n", j)
chunk = bytes((i * 7919) % 251 for i in range(1 << 20))  # 1 MB, periodic: LZF-compressed in the RDB
for k in range(mb):
    cmd("APPEND", "big:string", chunk[k % 251:] + chunk[:k % 251])
PY
SRC_DIGEST="$(rcli "$SRC" DEBUG DIGEST)"
say "source: used_memory $(rcli "$SRC" INFO memory | tr -d '\r' | awk -F: '$1=="used_memory_human"{print $2}')"

start_server native
NAT="$PORT"
t0="$(now)"
rcli "$NAT" REPLICAOF 127.0.0.1 "$SRC" >/dev/null
until [[ "$(rcli "$NAT" INFO replication | tr -d '\r' | awk -F: '$1=="master_link_status"{print $2}')" == up \
      && "$(rcli "$NAT" DBSIZE)" == "$(rcli "$SRC" DBSIZE)" ]]; do sleep 0.01; done
NATIVE_SECS="$(since "$t0")"
rcli "$NAT" REPLICAOF NO ONE >/dev/null

start_server ferry
DST="$PORT"
t0="$(now)"
/usr/bin/time -v -o "$WORK/time" "$FERRY" sync --source "redis://127.0.0.1:$SRC" \
    --target "redis://127.0.0.1:$DST" --mode full --checkpoint off --progress never \
    >"$WORK/ferry.log" 2>&1 || { tail -20 "$WORK/ferry.log" >&2; die "ferry failed"; }
FERRY_SECS="$(since "$t0")"
RSS_MB="$(awk -F': *' '/Maximum resident set size/ { printf "%d", $2 / 1024 }' "$WORK/time")"
CPU="$(awk -F': *' '/User time/ { u = $2 } /System time/ { s = $2 } END { printf "%.2f s (user %.2f, sys %.2f)", u + s, u, s }' "$WORK/time")"
if [[ "$(rcli "$DST" DEBUG DIGEST)" == "$SRC_DIGEST" ]]; then D=MATCH; else D=MISMATCH; fi

echo
printf 'ferry big keys: N=%s string=%s MB, machine %s cores\n' "$N" "$MB" "$(nproc)"
printf '  native REPLICAOF   %s s\n' "$NATIVE_SECS"
printf '  ferry --mode full  %s s   peak RSS %s MB   digest %s\n' "$FERRY_SECS" "$RSS_MB" "$D"
printf '  ferry CPU          %s\n' "$CPU"
