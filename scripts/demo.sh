#!/usr/bin/env bash
# Try ferry locally: two throwaway redis-servers, a varied dataset, a live sync.
#
#   scripts/demo.sh            (set FERRY_BIN=path to skip the cargo build)
#
# Builds ferry, starts a source and a target redis-server on free loopback
# ports in a temp dir, fills the source (every type, TTLs, db 0 and 1, a stream
# with a consumer group), runs `ferry sync` (full+incremental) in the
# background, keeps writing to the source, waits until the target has caught
# up and compares DEBUG DIGEST of both. Exits non-zero if they differ.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
KEYS_PER_DB="${DEMO_KEYS_PER_DB:-2500}"

say() { printf '==> %s\n' "$*"; }
die() { printf 'demo: error: %s\n' "$*" >&2; exit 1; }
need() { command -v "$1" >/dev/null 2>&1 || die "'$1' not found in PATH ($2)"; }

need redis-server "apt-get install redis-server"
need redis-cli "apt-get install redis-tools"

# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"
ferry_binary "$REPO_ROOT"
work_dir ferry-demo
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    # Ask the kernel for an unused port; fall back to probing a random range.
    if command -v python3 >/dev/null 2>&1; then
        python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
        return
    fi
    local p
    while :; do
        p=$((20000 + RANDOM % 30000))
        (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null || { echo "$p"; return; }
    done
}

rcli() { local port="$1"; shift; redis-cli -h 127.0.0.1 -p "$port" "$@"; }
alive() { [[ -r "/proc/$1/status" ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }

# start_server NAME: sets SERVER_PORT (and records the pid for the exit trap).
start_server() {
    local dir="$WORK/$1" port pid i
    mkdir -p "$dir"
    port="$(free_port)"
    redis-server --port "$port" --dir "$dir" --save "" --appendonly no \
        --enable-debug-command yes --repl-diskless-sync-delay 0 \
        --bind 127.0.0.1 --daemonize no --logfile "$dir/redis.log" &
    pid=$!
    PIDS+=("$pid")
    for ((i = 0; i < 500; i++)); do
        if [[ "$(rcli "$port" PING 2>/dev/null)" == PONG ]]; then
            SERVER_PORT="$port"
            return 0
        fi
        alive "$pid" || break
        sleep 0.01
    done
    tail -n 20 "$dir/redis.log" >&2 2>/dev/null || true
    die "redis-server '$1' did not start on port $port"
}

# pipe_in PORT FILE: send inline commands, fail loudly on any error reply.
pipe_in() {
    local out
    out="$(rcli "$1" --pipe <"$2" 2>&1)" || die "loading $2 failed: $out"
    grep -q 'errors: 0,' <<<"$out" || die "loading $2 reported errors: $out"
}

# The initial dataset, as inline commands (values never contain spaces).
gen_dataset() {
    awk -v n="$KEYS_PER_DB" 'BEGIN {
        srand(7)
        for (db = 0; db < 2; db++) {
            printf "SELECT %d\r\n", db
            for (i = 0; i < n; i++) {
                t = i % 7
                ttl = (i % 4 == 0) ? 3600 + i : 0
                if (t == 0) {
                    key = sprintf("user:%d:name", i)
                    printf "SET %s name-%d-%x", key, i, int(rand() * 1e9)
                    if (ttl) printf " EX %d", ttl
                    printf "\r\n"
                    continue
                } else if (t == 1) {
                    key = sprintf("counter:%d", i)
                    printf "INCRBY %s %d\r\n", key, int(rand() * 100000)
                } else if (t == 2) {
                    key = sprintf("user:%d", i)
                    printf "HSET %s name u%d age %d city c%d score %d.%d\r\n",
                        key, i, 18 + i % 60, i % 50, i, i % 10
                } else if (t == 3) {
                    key = sprintf("queue:%d", i)
                    printf "RPUSH %s job-a-%d job-b-%d job-c-%d %d\r\n", key, i, i, i, i
                } else if (t == 4) {
                    key = sprintf("tags:%d", i)
                    printf "SADD %s red green blue t%d\r\n", key, i % 13
                } else if (t == 5) {
                    key = sprintf("ints:%d", i)
                    printf "SADD %s 1 2 3 %d\r\n", key, i
                } else {
                    key = sprintf("board:%d", i)
                    printf "ZADD %s %d alice %d bob %.3f carol\r\n", key, i, i * 2, rand() * 100
                }
                if (ttl) printf "PEXPIRE %s %d\r\n", key, ttl * 1000
            }
            # A few big values, so the non-compact encodings show up too.
            for (j = 0; j < 1000; j++) printf "HSET big:hash:%d f%d %s\r\n", db, j, "v" j
            for (j = 0; j < 5000; j++) printf "RPUSH big:list:%d item-%d\r\n", db, j
            for (j = 0; j < 800; j++) printf "SADD big:set:%d member-%d\r\n", db, j
            for (j = 0; j < 800; j++) printf "ZADD big:zset:%d %d m-%d\r\n", db, j * 7 % 1000, j
            printf "SET big:string:%d ", db
            for (j = 0; j < 2000; j++) printf "%x", j
            printf "\r\n"
            # A stream with a consumer group and pending entries.
            for (j = 0; j < 300; j++)
                printf "XADD events:%d * type click user %d page p%d\r\n", db, j % 40, j % 9
            printf "XGROUP CREATE events:%d workers 0\r\n", db
            printf "XREADGROUP GROUP workers alice COUNT 120 STREAMS events:%d >\r\n", db
            printf "XREADGROUP GROUP workers bob COUNT 60 STREAMS events:%d >\r\n", db
            printf "XGROUP CREATE events:%d audit $\r\n", db
        }
    }'
}

# More writes while ferry runs (the incremental part).
gen_updates() {
    local round="$1"
    awk -v r="$round" 'BEGIN {
        for (db = 0; db < 2; db++) {
            printf "SELECT %d\r\n", db
            for (i = 0; i < 200; i++) {
                printf "SET live:%d:%d v-%d-%d\r\n", r, i, r, i
                printf "INCR counter:%d\r\n", i * 7 + 1
                printf "HSET user:%d seen r%d\r\n", i * 7 + 2, r
                printf "LPUSH queue:%d urgent-%d\r\n", i * 7 + 3, r
                printf "SREM tags:%d red\r\n", i * 7 + 4
                printf "ZINCRBY board:%d 5 alice\r\n", i * 7 + 6
                printf "DEL user:%d:name\r\n", i * 7 + 700
                printf "EXPIRE live:%d:%d %d\r\n", r, i, 600 + i
                printf "XADD events:%d * type live round %d i %d\r\n", db, r, i
            }
            printf "XREADGROUP GROUP workers carol COUNT 10 STREAMS events:%d >\r\n", db
        }
    }'
}

start_server source
SRC="$SERVER_PORT"
start_server target
DST="$SERVER_PORT"
say "source redis-server on 127.0.0.1:$SRC, target on 127.0.0.1:$DST (work dir $WORK)"

gen_dataset >"$WORK/dataset.txt"
pipe_in "$SRC" "$WORK/dataset.txt"
say "source filled: db0 $(rcli "$SRC" -n 0 DBSIZE) keys, db1 $(rcli "$SRC" -n 1 DBSIZE) keys" \
    "(strings, counters, hashes, lists, sets, zsets, streams; a quarter with TTLs)"

FERRY_LOG="$WORK/ferry.log"
say "running: ferry sync --source redis://127.0.0.1:$SRC --target redis://127.0.0.1:$DST --mode full+incremental"
"$FERRY" sync --source "redis://127.0.0.1:$SRC" --target "redis://127.0.0.1:$DST" \
    --mode full+incremental --progress never >"$FERRY_LOG" 2>&1 &
FERRY_PID=$!
PIDS+=("$FERRY_PID")

for round in 1 2 3; do
    gen_updates "$round" >"$WORK/updates-$round.txt"
    pipe_in "$SRC" "$WORK/updates-$round.txt"
    alive "$FERRY_PID" || { cat "$FERRY_LOG" >&2; die "ferry exited early"; }
    sleep 0.3
done
say "wrote 3 rounds of updates to the source while ferry was running"

# Caught up = a marker written last to the source is readable on the target.
marker="demo-$$-$(date +%s%N)"
rcli "$SRC" SET ferry:demo:marker "$marker" >/dev/null
caught_up=""
for ((i = 0; i < 600; i++)); do
    if [[ "$(rcli "$DST" GET ferry:demo:marker)" == "$marker" ]]; then
        caught_up=yes
        break
    fi
    alive "$FERRY_PID" || break
    sleep 0.05
done
if [[ -z "$caught_up" ]]; then
    cat "$FERRY_LOG" >&2
    die "the target did not catch up within 30 s"
fi
say "target caught up (db0 $(rcli "$DST" -n 0 DBSIZE) keys, db1 $(rcli "$DST" -n 1 DBSIZE) keys)"

kill -INT "$FERRY_PID" 2>/dev/null || true
for ((i = 0; i < 1000; i++)); do
    alive "$FERRY_PID" || break
    sleep 0.01
done
if alive "$FERRY_PID"; then
    say "ferry did not stop within 10 s of SIGINT; killing it"
    kill -KILL "$FERRY_PID" 2>/dev/null || true
fi
rc=0
wait "$FERRY_PID" || rc=$?
say "stopped ferry with SIGINT (exit status $rc); its log:"
sed -E 's/\x1b\[[0-9;]*m//g; s/^/    /' "$FERRY_LOG"

# ferry keeps its checkpoint in the target (a re-run resumes from it).
CKPT_KEY="ferry:checkpoint:127.0.0.1:$SRC:0"
say "checkpoint on the target: $CKPT_KEY = \"$(rcli "$DST" -n 0 GET "$CKPT_KEY")\""

say "ferry verify (key by key; checkpoint keys are not data):"
status=0
"$FERRY" verify --source "redis://127.0.0.1:$SRC" --target "redis://127.0.0.1:$DST" \
    | sed 's/^/    /' || status=1

# Without ferry's own keys (the checkpoint, the job's ownership record) the two data sets
# are byte for byte the same.
rcli "$DST" -n 0 DEL "$CKPT_KEY" "ferry:checkpoint:127.0.0.1:$SRC:target" >/dev/null
SRC_DIGEST="$(rcli "$SRC" DEBUG DIGEST)"
DST_DIGEST="$(rcli "$DST" DEBUG DIGEST)"
echo
printf '  source  %s  (db0 %s keys, db1 %s keys)\n' "$SRC_DIGEST" "$(rcli "$SRC" -n 0 DBSIZE)" "$(rcli "$SRC" -n 1 DBSIZE)"
printf '  target  %s  (db0 %s keys, db1 %s keys)\n' "$DST_DIGEST" "$(rcli "$DST" -n 0 DBSIZE)" "$(rcli "$DST" -n 1 DBSIZE)"
if [[ "$SRC_DIGEST" == "$DST_DIGEST" ]]; then
    echo "  — identical"
else
    status=1
    echo "  — DIFFERENT"
fi
echo

if [[ "$status" -ne 0 ]]; then
    die "source and target digests differ"
fi
