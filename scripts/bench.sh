#!/usr/bin/env bash
# ferry benchmark: full sync and incremental lag, ferry vs. a native replica.
#
# A benchmark, not a test: it prints figures and asserts nothing (a digest
# mismatch is reported as MISMATCH; it only exits non-zero when it cannot
# produce figures at all, e.g. ferry fails or a sync never completes).
#
# Environment:
#   BENCH_KEYS       keys loaded into the source        (default 1000000)
#   BENCH_REPEAT     runs of each full sync              (default 3)
#   BENCH_INCR_OPS   redis-benchmark -n per test         (default 1000000)
#   BENCH_TIMEOUT    seconds to wait for any one sync    (default scales with keys)
#   FERRY_BIN        use this ferry binary instead of building one
#   BENCH_ROWS       comma-separated rows to run         (default full,incr,cluster,cluster-incr)
#   BENCH_NO_GNU_TIME=1  ignore /usr/bin/time, sample /proc/<pid>/status instead
#
# CPU: each timed run of the full and cluster rows also prints a "cpu:" line, CPU seconds
# (user + sys) spent during the run: ferry's own (GNU time, or /proc/<pid>/stat), and per
# role the deltas of the servers' INFO cpu: "sources"/"targets"/"replicas" are the servers'
# main processes (all their threads, used_cpu_user + used_cpu_sys), "source forks" the
# sources' reaped children (used_cpu_user_children + used_cpu_sys_children: the fork that
# serializes the RDB for the sync; read once no fork is running any more).
#
# Small run (CI):  BENCH_KEYS=20000 BENCH_REPEAT=1 BENCH_INCR_OPS=50000 scripts/bench.sh
# Memory row (peak RSS of ferry at 5M keys, standalone and cluster full syncs; ~1 GB of
# redis memory per copy of the data, at most three copies alive at once):
#   BENCH_KEYS=5000000 BENCH_REPEAT=1 BENCH_ROWS=full,cluster scripts/bench.sh
# Rows: full = standalone full sync (native, ferry with checkpoints on and off); incr =
# standalone incremental marker delay under redis-benchmark (native replica, ferry with
# checkpoints on and off); cluster = cluster 3 to 3 full sync (ferry against three native
# replicas syncing at once); cluster-incr = the marker delay cluster 3 to 3 (three native
# replicas, ferry with checkpoints on).
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$SCRIPT_DIR/.." && pwd)"
HELPER="$SCRIPT_DIR/bench_load.py"

KEYS="${BENCH_KEYS:-1000000}"
REPEAT="${BENCH_REPEAT:-3}"
INCR_OPS="${BENCH_INCR_OPS:-1000000}"
TIMEOUT="${BENCH_TIMEOUT:-$(( KEYS / 5000 > 60 ? KEYS / 5000 : 60 ))}"
ROWS="${BENCH_ROWS:-full,incr,cluster,cluster-incr}"
row() { [[ ",$ROWS," == *",$1,"* ]]; }
# The load of the incremental rows: redis-benchmark tests, counted in the ops/s figure.
INCR_TESTS=set,incr,lpush,hset
INCR_NTESTS=4

say() { printf 'bench: %s\n' "$*"; }
die() { printf 'bench: error: %s\n' "$*" >&2; exit 1; }
need() {
    command -v "$1" >/dev/null 2>&1 || die "'$1' not found in PATH ($2)"
}

for v in KEYS REPEAT INCR_OPS TIMEOUT; do
    [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done

need redis-server "apt-get install redis-server"
need redis-cli "apt-get install redis-tools"
need redis-benchmark "apt-get install redis-tools"
need python3 "needed for $HELPER"
need timeout "coreutils"
for r in ${ROWS//,/ }; do
    case "$r" in full|incr|cluster|cluster-incr) ;; *) die "unknown row '$r' in BENCH_ROWS" ;; esac
done
[[ -f "$HELPER" ]] || die "missing $HELPER"

GNU_TIME=""
if [[ -z "${BENCH_NO_GNU_TIME:-}" && -x /usr/bin/time ]] \
    && /usr/bin/time -v true >/dev/null 2>&1; then
    GNU_TIME=/usr/bin/time
else
    say "/usr/bin/time (GNU, package 'time') not usable: sampling VmHWM from /proc instead"
fi

# ---------------------------------------------------------------- ferry binary
# shellcheck source=scripts/lib.sh
source "$REPO_ROOT/scripts/lib.sh"
ferry_binary "$REPO_ROOT"

# ---------------------------------------------------------------- servers
work_dir ferry-bench
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# free_cluster_port: a free port P <= 55535 whose cluster bus port P + 10000 is free too.
free_cluster_port() {
    python3 -c '
import random, socket
for _ in range(1000):
    p = random.randint(20000, 55535)
    try:
        for q in (p, p + 10000):
            s = socket.socket(); s.bind(("127.0.0.1", q)); s.close()
    except OSError:
        continue
    print(p); break
'
}

rcli() {
    local port="$1"; shift
    redis-cli -h 127.0.0.1 -p "$port" "$@"
}

# info_field PORT SECTION FIELD
info_field() {
    rcli "$1" INFO "$2" | tr -d '\r' | awk -F: -v k="$3" '$1 == k { print $2 }'
}

# start_server NAME [ARGS...]: sets SERVER_PORT and SERVER_PID (not run in a
# subshell, so the pid lands in PIDS for the exit trap); ARGS go to redis-server.
start_server() {
    local name="$1" dir="$WORK/$1" port i
    shift
    mkdir -p "$dir"
    if [[ " $* " == *" --cluster-enabled yes "* ]]; then port="$(free_cluster_port)"; else port="$(free_port)"; fi
    redis-server --port "$port" --dir "$dir" \
        --save "" --appendonly no --enable-debug-command yes \
        --repl-diskless-sync-delay 0 --bind 127.0.0.1 --daemonize no \
        --logfile "$dir/redis.log" "$@" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    SERVER_PORT="$port"
    for ((i = 0; i < 500; i++)); do
        if [[ "$(rcli "$port" PING 2>/dev/null)" == PONG ]]; then
            return 0
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || break
        sleep 0.01
    done
    tail -n 20 "$dir/redis.log" >&2 2>/dev/null || true
    die "redis-server '$name' did not start on port $port"
}

stop_server() {
    local pid="$1"
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

now_ns() { date +%s%N; }
# alive PID: running and not yet a zombie (kill -0 succeeds on zombies).
alive() { [[ -r "/proc/$1/status" ]] && ! grep -q '^State:[[:space:]]*Z' "/proc/$1/status" 2>/dev/null; }
secs_since() { awk -v a="$1" -v b="$(now_ns)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
median() { python3 "$HELPER" median "$@"; }
digest() { rcli "$1" DEBUG DIGEST; }
# ferry_digest PORT: the digest of a ferry target without ferry's checkpoint keys (they are
# bookkeeping kept in the target with the data); call it once ferry has stopped.
ferry_digest() {
    local k
    rcli "$1" --scan --pattern 'ferry:checkpoint:*' | while read -r k; do
        rcli "$1" DEL "$k" >/dev/null
    done
    digest "$1"
}
# ferry_warnings LOG: echo ferry's WARN/ERROR lines (colour escapes stripped).
ferry_warnings() {
    sed -E 's/\x1b\[[0-9;]*m//g' "$1" | grep -E ' (WARN|ERROR) ' | sed 's/^/bench:   ferry: /' || true
}

# cpu_snap PORT...: "MAIN CHILDREN", CPU seconds (user + sys) summed over the servers:
# the main process with its threads, and its children once reaped (INFO cpu).
cpu_snap() {
    local p
    for p in "$@"; do rcli "$p" INFO cpu; done | tr -d '\r' | awk -F: '
        $1 == "used_cpu_user" || $1 == "used_cpu_sys" { m += $2 }
        $1 == "used_cpu_user_children" || $1 == "used_cpu_sys_children" { c += $2 }
        END { printf "%.3f %.3f\n", m, c }'
}
# wait_forks PORT...: wait (up to 10 s) until none of the servers has a fork running (an
# RDB child is only in used_cpu_*_children once it has ended and been reaped).
wait_forks() {
    local p i busy
    for ((i = 0; i < 1000; i++)); do
        busy=0
        for p in "$@"; do
            [[ "$(info_field "$p" persistence rdb_bgsave_in_progress)" == 0 ]] || busy=1
        done
        [[ "$busy" -eq 0 ]] && return 0
        sleep 0.01
    done
    say "warning: a fork of a source server still runs 10 s after the sync; its CPU is not counted"
}
# cpu_deltas SRC_BEFORE SRC_AFTER TGT_BEFORE TGT_AFTER (cpu_snap outputs): prints
# "TARGETS SOURCE_FORKS SOURCES", CPU seconds spent in between.
cpu_deltas() {
    awk -v a="$1" -v b="$2" -v c="$3" -v d="$4" 'BEGIN {
        split(a, sa, " "); split(b, sb, " "); split(c, ta, " "); split(d, tb, " ")
        printf "%.2f %.2f %.2f\n", tb[1] - ta[1], sb[2] - sa[2], sb[1] - sa[1] }'
}
# with_s X: "X s", or "n/a" as is.
with_s() { if [[ "$1" == n/a ]]; then echo n/a; else echo "$1 s"; fi; }
# cpu_median COL RECORD...: the median of field COL (1-based) of the space-separated
# records, with two decimals; "n/a" if any record has n/a there.
cpu_median() {
    local col="$1" r v vals=()
    shift
    for r in "$@"; do
        v="$(awk -v c="$col" '{ print $c }' <<<"$r")"
        if [[ "$v" == n/a || -z "$v" ]]; then echo n/a; return 0; fi
        vals+=("$v")
    done
    median "${vals[@]}" | awk '{ printf "%.2f", $1 }'
}

MACHINE="$(nproc) cores, $(awk -F': *' '/^model name/ { print $2; exit }' /proc/cpuinfo)"
say "machine: $MACHINE; keys=$KEYS repeat=$REPEAT incr_ops=$INCR_OPS; work dir $WORK"

# ---------------------------------------------------------------- source
if row full || row incr; then
start_server source
SRC="$SERVER_PORT"
say "source on port $SRC: loading $KEYS keys (60% strings, 10% each hash/list/set/zset)"
t0="$(now_ns)"
load_out="$(python3 "$HELPER" gen --keys "$KEYS" | rcli "$SRC" --pipe 2>&1)" \
    || die "loading the source failed: $load_out"
grep -q 'errors: 0,' <<<"$load_out" || die "loading the source reported errors: $load_out"
say "loaded in $(secs_since "$t0") s"
SRC_KEYS="$(rcli "$SRC" DBSIZE)"
SRC_MEM="$(info_field "$SRC" memory used_memory_human)"
SRC_DIGEST="$(digest "$SRC")"
DISKLESS="$(rcli "$SRC" CONFIG GET repl-diskless-sync | tail -n 1)"
if [[ "$DISKLESS" == yes ]]; then SYNC_KIND=diskless; else SYNC_KIND=disk-based; fi
say "source: DBSIZE $SRC_KEYS, used_memory $SRC_MEM, repl-diskless-sync $DISKLESS ($SYNC_KIND)"
[[ "$SRC_KEYS" -eq "$KEYS" ]] || say "warning: DBSIZE $SRC_KEYS differs from BENCH_KEYS $KEYS"
fi
ratio() { awk -v f="$1" -v n="$2" 'BEGIN { if (n > 0) printf "%.2f", f / n; else print "n/a" }'; }

# ---------------------------------------------------------------- full: native
if row full; then
native_times=()
native_cpu=()
for ((i = 1; i <= REPEAT; i++)); do
    start_server "native-full-$i"
    port="$SERVER_PORT" pid="$SERVER_PID"
    src0="$(cpu_snap "$SRC")" tgt0="$(cpu_snap "$port")"
    t="$(python3 "$HELPER" replicate --port "$port" --master-port "$SRC" \
        --expect "$SRC_KEYS" --timeout "$TIMEOUT")" || die "native replica never caught up"
    wait_forks "$SRC"
    read -r c_tgt c_fork c_src < <(cpu_deltas "$src0" "$(cpu_snap "$SRC")" "$tgt0" "$(cpu_snap "$port")")
    rcli "$port" REPLICAOF NO ONE >/dev/null
    stop_server "$pid"
    native_times+=("$t")
    native_cpu+=("$c_tgt $c_fork $c_src")
    say "full sync  native REPLICAOF  run $i/$REPEAT: $t s ($SYNC_KIND)"
    say "  cpu: replicas $c_tgt s, source forks $c_fork s, sources $c_src s"
done

fi

# ---------------------------------------------------------------- full: ferry
# run_ferry_full SOURCE_PORT TARGET_PORT LOG [FERRY ARGS...]: sets RUN_SECS, RUN_RSS_KB
# and RUN_CPU (ferry's CPU seconds, user + sys, or "n/a").
run_ferry_full() {
    local src="$1" port="$2" log="$3" rc=0 t0 fpid v hwm=0 ticks="" tck
    shift 3
    local -a cmd=(timeout --signal=INT --kill-after=10 "$TIMEOUT"
        "$FERRY" sync --source "redis://127.0.0.1:$src" --target "redis://127.0.0.1:$port"
        --mode full --progress never "$@")
    t0="$(now_ns)"
    if [[ -n "$GNU_TIME" ]]; then
        "$GNU_TIME" -v -o "$log.time" "${cmd[@]}" >"$log" 2>&1 || rc=$?
        RUN_SECS="$(secs_since "$t0")"
        hwm="$(awk -F': *' '/Maximum resident set size/ { print $2 }' "$log.time")"
        RUN_CPU="$(awk -F': *' '/User time \(seconds\)|System time \(seconds\)/ { s += $2; n++ }
            END { if (n == 2) printf "%.2f", s; else print "n/a" }' "$log.time")"
    else
        # Sample the high-water mark every 50 ms; a zombie has no Vm* lines,
        # which ends the loop as soon as ferry has exited.
        "$FERRY" sync --source "redis://127.0.0.1:$src" --target "redis://127.0.0.1:$port" \
            --mode full --progress never "$@" >"$log" 2>&1 &
        fpid=$!
        PIDS+=("$fpid")
        # utime + stime (fields 14 and 15 of /proc/<pid>/stat, after the "(comm)" field) are
        # read on each sample and once more when ferry is a zombie, not yet reaped.
        while v="$(awk '/^VmHWM:/ { print $2 }' "/proc/$fpid/status" 2>/dev/null)" && [[ -n "$v" ]]; do
            hwm="$v"
            v="$(sed 's/^.*) //' "/proc/$fpid/stat" 2>/dev/null | awk '{ print $12 + $13 }')" && ticks="${v:-$ticks}"
            if (( $(now_ns) - t0 > TIMEOUT * 1000000000 )); then
                kill -INT "$fpid" 2>/dev/null || true
            fi
            sleep 0.05
        done
        v="$(sed 's/^.*) //' "/proc/$fpid/stat" 2>/dev/null | awk '{ print $12 + $13 }')" && ticks="${v:-$ticks}"
        wait "$fpid" || rc=$?
        RUN_SECS="$(secs_since "$t0")"
        tck="$(getconf CLK_TCK 2>/dev/null || echo 100)"
        if [[ -n "$ticks" ]]; then
            RUN_CPU="$(awk -v t="$ticks" -v h="$tck" 'BEGIN { printf "%.2f", t / h }')"
        else
            RUN_CPU=n/a
        fi
    fi
    RUN_RSS_KB="${hwm:-0}"
    if [[ "$rc" -ne 0 ]]; then
        tail -n 30 "$log" >&2
        die "ferry --mode full exited with status $rc (log above)"
    fi
}

if row full; then
ferry_times=()
ferry_rss=()
ferry_off_times=()
ferry_cpu=()
FULL_DIGEST=MATCH
# Checkpoints on (the default) and off, alternating so both see the same noise.
for ((i = 1; i <= REPEAT; i++)); do
    for ckpt in on off; do
        start_server "ferry-full-$ckpt-$i"
        port="$SERVER_PORT" pid="$SERVER_PID"
        log="$WORK/ferry-full-$ckpt-$i.log"
        src0="$(cpu_snap "$SRC")" tgt0="$(cpu_snap "$port")"
        run_ferry_full "$SRC" "$port" "$log" --checkpoint "$ckpt"
        wait_forks "$SRC"
        read -r c_tgt c_fork c_src < <(cpu_deltas "$src0" "$(cpu_snap "$SRC")" "$tgt0" "$(cpu_snap "$port")")
        d="$(ferry_digest "$port")"
        n="$(rcli "$port" DBSIZE)"
        if [[ "$d" == "$SRC_DIGEST" ]]; then m=MATCH; else m=MISMATCH; FULL_DIGEST=MISMATCH; fi
        summary="$(grep -o 'full sync complete.*' "$log" | tail -n 1 || true)"
        say "full sync  ferry --mode full --checkpoint $ckpt run $i/$REPEAT: $RUN_SECS s, peak RSS $((RUN_RSS_KB / 1024)) MB, DBSIZE $n/$SRC_KEYS, digest $m (ferry: ${summary:-no summary line})"
        say "  cpu: ferry $(with_s "$RUN_CPU"), targets $c_tgt s, source forks $c_fork s, sources $c_src s"
        if [[ "$m" == MISMATCH ]]; then
            say "  source digest $SRC_DIGEST, target digest $d"
        fi
        ferry_warnings "$log"
        stop_server "$pid"
        if [[ "$ckpt" == on ]]; then
            ferry_times+=("$RUN_SECS")
            ferry_cpu+=("$RUN_CPU $c_tgt $c_fork $c_src")
        else
            ferry_off_times+=("$RUN_SECS")
        fi
        ferry_rss+=("$RUN_RSS_KB")
    done
done

NATIVE_MED="$(median "${native_times[@]}")"
FERRY_MED="$(median "${ferry_times[@]}")"
FERRY_OFF_MED="$(median "${ferry_off_times[@]}")"
RATIO="$(ratio "$FERRY_MED" "$NATIVE_MED")"
RATIO_OFF="$(ratio "$FERRY_OFF_MED" "$NATIVE_MED")"
PEAK_RSS_MB="$(printf '%s\n' "${ferry_rss[@]}" | sort -n | tail -n 1 | awk '{ printf "%d", $1 / 1024 }')"
FULL_CPU="native: replicas $(cpu_median 1 "${native_cpu[@]}") s, source forks $(cpu_median 2 "${native_cpu[@]}") s, sources $(cpu_median 3 "${native_cpu[@]}") s; ferry (--checkpoint on): ferry $(with_s "$(cpu_median 1 "${ferry_cpu[@]}")"), targets $(cpu_median 2 "${ferry_cpu[@]}") s, source forks $(cpu_median 3 "${ferry_cpu[@]}") s, sources $(cpu_median 4 "${ferry_cpu[@]}") s"
fi

# ---------------------------------------------------------------- incremental
if row incr; then
say "incremental: starting a native replica and ferry --mode full+incremental"
start_server native-incr
NAT_PORT="$SERVER_PORT"
python3 "$HELPER" replicate --port "$NAT_PORT" --master-port "$SRC" \
    --expect "$SRC_KEYS" --timeout "$TIMEOUT" >/dev/null || die "native replica never caught up"

fi

# start_ferry_incr CKPT: a ferry --mode full+incremental into a new server, with
# checkpoints on or off; sets INCR_PORT, INCR_PID, INCR_LOG once it has the snapshot.
start_ferry_incr() {
    local ckpt="$1" t0 expect="$SRC_KEYS"
    start_server "ferry-incr-$ckpt"
    INCR_PORT="$SERVER_PORT"
    INCR_LOG="$WORK/ferry-incr-$ckpt.log"
    t0="$(now_ns)"
    "$FERRY" sync --source "redis://127.0.0.1:$SRC" --target "redis://127.0.0.1:$INCR_PORT" \
        --mode full+incremental --progress never --checkpoint "$ckpt" >"$INCR_LOG" 2>&1 &
    INCR_PID=$!
    PIDS+=("$INCR_PID")
    # The source's keys plus ferry's checkpoint and its ownership record.
    [[ "$ckpt" == on ]] && expect=$((SRC_KEYS + 2))
    if ! python3 "$HELPER" wait-dbsize --port "$INCR_PORT" --expect "$expect" --timeout "$TIMEOUT" >/dev/null; then
        tail -n 30 "$INCR_LOG" >&2
        die "ferry (--checkpoint $ckpt) never caught up with the snapshot"
    fi
    kill -0 "$INCR_PID" 2>/dev/null || { tail -n 30 "$INCR_LOG" >&2; die "ferry exited early"; }
    say "ferry --checkpoint $ckpt caught up with the snapshot $(secs_since "$t0") s after starting"
}

# stop_ferry PID LOG: SIGINT, wait up to 10 s, report the exit status.
stop_ferry() {
    local fpid="$1" log="$2" rc=0 i
    kill -INT "$fpid" 2>/dev/null || true
    for ((i = 0; i < 1000; i++)); do
        alive "$fpid" || break
        sleep 0.01
    done
    if alive "$fpid"; then
        say "warning: ferry did not stop within 10 s of SIGINT; killing it"
        kill -KILL "$fpid" 2>/dev/null || true
    fi
    wait "$fpid" || rc=$?
    say "ferry stopped after SIGINT with exit status $rc"
    if [[ "$rc" -ne 0 ]]; then
        tail -n 20 "$log" | sed 's/^/bench:   ferry: /'
    else
        ferry_warnings "$log"
    fi
}

if row incr; then
start_ferry_incr on
FER_PORT="$INCR_PORT" FERRY_PID="$INCR_PID" FERRY_LOG="$INCR_LOG"
start_ferry_incr off
OFF_PORT="$INCR_PORT" OFF_PID="$INCR_PID" OFF_LOG="$INCR_LOG"
say "running redis-benchmark ($INCR_OPS ops per test) with the native replica and both ferries attached"

# proc_cpu PID: CPU seconds (user + sys) of a live process so far (/proc/<pid>/stat).
proc_cpu() {
    local tck
    tck="$(getconf CLK_TCK 2>/dev/null || echo 100)"
    sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | awk -v t="$tck" '{ printf "%.3f", ($12 + $13) / t }'
}
cpu_src0="$(cpu_snap "$SRC")" cpu_nat0="$(cpu_snap "$NAT_PORT")"
cpu_ft0="$(cpu_snap "$FER_PORT")" cpu_ot0="$(cpu_snap "$OFF_PORT")"
cpu_f0="$(proc_cpu "$FERRY_PID")" cpu_o0="$(proc_cpu "$OFF_PID")"
t0="$(now_ns)"
redis-benchmark -h 127.0.0.1 -p "$SRC" -t "$INCR_TESTS" -P 16 -n "$INCR_OPS" -r 100000 -q \
    >"$WORK/redis-benchmark.out" 2>&1 || die "redis-benchmark failed: $(cat "$WORK/redis-benchmark.out")"
BENCH_SECS="$(secs_since "$t0")"
tr '\r' '\n' <"$WORK/redis-benchmark.out" | grep 'requests per second' | sed 's/^/bench:   /' || true
OPS="$(awk -v t="$INCR_NTESTS" -v n="$INCR_OPS" -v s="$BENCH_SECS" 'BEGIN { printf "%d", t * n / s }')"
say "redis-benchmark: $((INCR_NTESTS * INCR_OPS)) ops in $BENCH_SECS s = $OPS ops/s (wall clock, $INCR_TESTS)"

marker_out="$(python3 "$HELPER" marker --source "$SRC" \
    --target "native=$NAT_PORT" --target "ferry=$FER_PORT" --target "off=$OFF_PORT" \
    --timeout "$TIMEOUT")" || die "marker measurement failed"
NAT_DELAY="$(awk -F= '$1 == "native" { printf "%.1f", $2 }' <<<"$marker_out")"
FER_DELAY="$(awk -F= '$1 == "ferry" { printf "%.1f", $2 }' <<<"$marker_out")"
OFF_DELAY="$(awk -F= '$1 == "off" { printf "%.1f", $2 }' <<<"$marker_out")"
say "marker delay: native ${NAT_DELAY} ms, ferry ${FER_DELAY} ms (checkpoints on), ${OFF_DELAY} ms (off)"
# CPU seconds per role over the load and the marker: the source's main process, the native
# replica, each ferry process and the server it writes into.
cpu_main() { awk '{ print $1 }' <<<"$1"; }
d() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", b - a }'; }
INCR_CPU="source $(d "$(cpu_main "$cpu_src0")" "$(cpu_main "$(cpu_snap "$SRC")")") s, native replica $(d "$(cpu_main "$cpu_nat0")" "$(cpu_main "$(cpu_snap "$NAT_PORT")")") s, ferry $(d "$cpu_f0" "$(proc_cpu "$FERRY_PID")") s + its target $(d "$(cpu_main "$cpu_ft0")" "$(cpu_main "$(cpu_snap "$FER_PORT")")") s, ferry checkpoints off $(d "$cpu_o0" "$(proc_cpu "$OFF_PID")") s + its target $(d "$(cpu_main "$cpu_ot0")" "$(cpu_main "$(cpu_snap "$OFF_PORT")")") s"
say "cpu during the load (wall $BENCH_SECS s): $INCR_CPU"

stop_ferry "$FERRY_PID" "$FERRY_LOG"
stop_ferry "$OFF_PID" "$OFF_LOG"

SRC_D2="$(digest "$SRC")"
NAT_D2="$(digest "$NAT_PORT")"
FER_D2="$(ferry_digest "$FER_PORT")"
OFF_D2="$(digest "$OFF_PORT")"
INCR_DIGEST=MATCH
if [[ "$FER_D2" != "$SRC_D2" || "$OFF_D2" != "$SRC_D2" ]]; then INCR_DIGEST=MISMATCH; fi
if [[ "$NAT_D2" == "$SRC_D2" ]]; then NAT_DIGEST=MATCH; else NAT_DIGEST=MISMATCH; fi
say "digests after the marker: source $SRC_D2, ferry $FER_D2 / $OFF_D2 (checkpoints on / off, $INCR_DIGEST), native $NAT_D2 ($NAT_DIGEST)"
if [[ "$INCR_DIGEST" == MISMATCH ]]; then
    say "  DBSIZE source $(rcli "$SRC" DBSIZE), ferry targets $(rcli "$FER_PORT" DBSIZE) / $(rcli "$OFF_PORT" DBSIZE)"
fi
fi
# The standalone servers are not needed any more: free their memory for the cluster rows.
for pid in ${PIDS[@]+"${PIDS[@]}"}; do stop_server "$pid"; done
PIDS=()

# ---------------------------------------------------------------- cluster → cluster
# Three source masters into three target masters: ferry's full sync (one reader and one
# writer per source master, in one process) against three native replicas syncing at
# once (one REPLICAOF per source master, each into a plain empty server).
# start_cluster PREFIX: three masters, slots split by redis-cli; sets CLUSTER_PORTS
# (sorted by first slot, so node i of two such clusters owns the same slots).
start_cluster() {
    local prefix="$1" i p nodes=() ok
    for i in 1 2 3; do
        start_server "$prefix-$i" --cluster-enabled yes --cluster-config-file nodes.conf
        nodes+=("127.0.0.1:$SERVER_PORT")
    done
    redis-cli --cluster create "${nodes[@]}" --cluster-replicas 0 --cluster-yes >"$WORK/$prefix-create.log" 2>&1 \
        || { cat "$WORK/$prefix-create.log" >&2; die "redis-cli --cluster create failed"; }
    for ((i = 0; i < 500; i++)); do
        ok=0
        for p in "${nodes[@]}"; do
            [[ "$(info_field "${p#*:}" cluster cluster_enabled)" == 1 ]] || continue
            rcli "${p#*:}" CLUSTER INFO | tr -d '\r' | grep -q '^cluster_state:ok' && ok=$((ok + 1))
        done
        [[ "$ok" -eq 3 ]] && break
        sleep 0.02
    done
    [[ "$ok" -eq 3 ]] || die "cluster $prefix never reached cluster_state:ok"
    CLUSTER_PORTS=()
    while read -r _ p; do CLUSTER_PORTS+=("$p"); done < <(
        for p in "${nodes[@]}"; do
            printf '%s %s\n' "$(rcli "${p#*:}" CLUSTER NODES | awk '/myself/ { split($9, r, "-"); print r[1] }')" "${p#*:}"
        done | sort -n)
}
# slot_ranges PORT...: "a-b,c-d,..." of each node (one range each, as redis-cli made them).
slot_ranges() {
    local p out=()
    for p in "$@"; do out+=("$(rcli "$p" CLUSTER NODES | awk '/myself/ { print $9 }')"); done
    (IFS=,; echo "${out[*]}")
}
cluster_digests() { local p; for p in "$@"; do ferry_digest "$p"; done | tr '\n' ' '; }

if row cluster || row cluster-incr; then
say "cluster: three source masters, three target masters"
start_cluster csrc
CSRC=("${CLUSTER_PORTS[@]}")
t0="$(now_ns)"
python3 "$HELPER" gen --keys "$KEYS" --slot-ranges "$(slot_ranges "${CSRC[@]}")" --out-prefix "$WORK/cluster-load"
for i in 0 1 2; do
    load_out="$(rcli "${CSRC[$i]}" --pipe <"$WORK/cluster-load.$i" 2>&1)" \
        || die "loading cluster node ${CSRC[$i]} failed: $load_out"
    grep -q 'errors: 0,' <<<"$load_out" || die "loading cluster node ${CSRC[$i]} reported errors: $load_out"
done
rm -f "$WORK"/cluster-load.*
CSRC_KEYS=()
for p in "${CSRC[@]}"; do CSRC_KEYS+=("$(rcli "$p" DBSIZE)"); done
CSRC_DIGESTS="$(for p in "${CSRC[@]}"; do digest "$p"; done | tr '\n' ' ')"
say "cluster source loaded in $(secs_since "$t0") s: DBSIZE per master ${CSRC_KEYS[*]}"

start_cluster ctgt
CTGT=("${CLUSTER_PORTS[@]}")
[[ "$(slot_ranges "${CTGT[@]}")" == "$(slot_ranges "${CSRC[@]}")" ]] \
    || say "warning: the clusters' slot ranges differ; per-node digests cannot match"
fi

if row cluster; then
cnative_times=()
cnative_cpu=()
for ((i = 1; i <= REPEAT; i++)); do
    rports=() rpids=() jobs_=()
    for j in 0 1 2; do
        start_server "cnative-$i-$j"
        rports+=("$SERVER_PORT") rpids+=("$SERVER_PID")
    done
    src0="$(cpu_snap "${CSRC[@]}")" tgt0="$(cpu_snap "${rports[@]}")"
    t0="$(now_ns)"
    for j in 0 1 2; do
        python3 "$HELPER" replicate --port "${rports[$j]}" --master-port "${CSRC[$j]}" \
            --expect "${CSRC_KEYS[$j]}" --timeout "$TIMEOUT" >/dev/null &
        jobs_+=($!)
    done
    for j in 0 1 2; do wait "${jobs_[$j]}" || die "native replica of ${CSRC[$j]} never caught up"; done
    t="$(secs_since "$t0")"
    wait_forks "${CSRC[@]}"
    read -r c_tgt c_fork c_src < <(cpu_deltas "$src0" "$(cpu_snap "${CSRC[@]}")" "$tgt0" "$(cpu_snap "${rports[@]}")")
    for j in 0 1 2; do
        rcli "${rports[$j]}" REPLICAOF NO ONE >/dev/null
        stop_server "${rpids[$j]}"
    done
    cnative_times+=("$t")
    cnative_cpu+=("$c_tgt $c_fork $c_src")
    say "cluster full sync  3 native REPLICAOF at once  run $i/$REPEAT: $t s"
    say "  cpu: replicas $c_tgt s, source forks $c_fork s, sources $c_src s"
done

cferry_times=()
cferry_rss=()
cferry_cpu=()
CLUSTER_DIGEST=MATCH
for ((i = 1; i <= REPEAT; i++)); do
    for p in "${CTGT[@]}"; do rcli "$p" FLUSHALL >/dev/null; done
    log="$WORK/ferry-cluster-$i.log"
    src0="$(cpu_snap "${CSRC[@]}")" tgt0="$(cpu_snap "${CTGT[@]}")"
    run_ferry_full "${CSRC[0]}" "${CTGT[0]}" "$log"
    wait_forks "${CSRC[@]}"
    read -r c_tgt c_fork c_src < <(cpu_deltas "$src0" "$(cpu_snap "${CSRC[@]}")" "$tgt0" "$(cpu_snap "${CTGT[@]}")")
    d="$(cluster_digests "${CTGT[@]}")"
    if [[ "$d" == "$CSRC_DIGESTS" ]]; then m=MATCH; else m=MISMATCH; CLUSTER_DIGEST=MISMATCH; fi
    say "cluster full sync  ferry --mode full  run $i/$REPEAT: $RUN_SECS s, peak RSS $((RUN_RSS_KB / 1024)) MB, digests $m"
    say "  cpu: ferry $(with_s "$RUN_CPU"), targets $c_tgt s, source forks $c_fork s, sources $c_src s"
    ferry_warnings "$log"
    cferry_times+=("$RUN_SECS")
    cferry_cpu+=("$RUN_CPU $c_tgt $c_fork $c_src")
    cferry_rss+=("$RUN_RSS_KB")
done
CNATIVE_MED="$(median "${cnative_times[@]}")"
CFERRY_MED="$(median "${cferry_times[@]}")"
CRATIO="$(ratio "$CFERRY_MED" "$CNATIVE_MED")"
CPEAK_RSS_MB="$(printf '%s\n' "${cferry_rss[@]}" | sort -n | tail -n 1 | awk '{ printf "%d", $1 / 1024 }')"
CLUSTER_CPU="native: replicas $(cpu_median 1 "${cnative_cpu[@]}") s, source forks $(cpu_median 2 "${cnative_cpu[@]}") s, sources $(cpu_median 3 "${cnative_cpu[@]}") s; ferry: ferry $(with_s "$(cpu_median 1 "${cferry_cpu[@]}")"), targets $(cpu_median 2 "${cferry_cpu[@]}") s, source forks $(cpu_median 3 "${cferry_cpu[@]}") s, sources $(cpu_median 4 "${cferry_cpu[@]}") s"
fi

# ---------------------------------------------------------------- cluster incremental
# slot_owner KEY PORT...: the port (of those given) whose node serves KEY's slot.
slot_owner() {
    local key="$1" slot p r
    shift
    slot="$(rcli "$1" CLUSTER KEYSLOT "$key")"
    for p in "$@"; do
        for r in $(rcli "$p" CLUSTER NODES | awk '/myself/ { for (i = 9; i <= NF; i++) print $i }'); do
            if (( slot >= ${r%-*} && slot <= ${r#*-} )); then echo "$p"; return 0; fi
        done
    done
    die "no node of $* serves the slot of $key"
}
if row cluster-incr; then
say "cluster incremental: three native replicas and ferry --mode full+incremental (checkpoints on)"
CSRC_TOTAL=0
for n in "${CSRC_KEYS[@]}"; do CSRC_TOTAL=$((CSRC_TOTAL + n)); done
cnat_ports=()
for j in 0 1 2; do
    start_server "cnative-incr-$j"
    cnat_ports+=("$SERVER_PORT")
    python3 "$HELPER" replicate --port "$SERVER_PORT" --master-port "${CSRC[$j]}" \
        --expect "${CSRC_KEYS[$j]}" --timeout "$TIMEOUT" >/dev/null \
        || die "native replica of ${CSRC[$j]} never caught up"
done
for p in "${CTGT[@]}"; do rcli "$p" FLUSHALL >/dev/null; done
CINCR_LOG="$WORK/ferry-cluster-incr.log"
t0="$(now_ns)"
"$FERRY" sync --source "redis://127.0.0.1:${CSRC[0]}" --target "redis://127.0.0.1:${CTGT[0]}" \
    --mode full+incremental --progress never --checkpoint on >"$CINCR_LOG" 2>&1 &
CINCR_PID=$!
PIDS+=("$CINCR_PID")
wait_args=()
for p in "${CTGT[@]}"; do wait_args+=(--port "$p"); done
if ! python3 "$HELPER" wait-dbsize "${wait_args[@]}" --expect "$CSRC_TOTAL" --at-least --timeout "$TIMEOUT" >/dev/null; then
    tail -n 30 "$CINCR_LOG" >&2
    die "ferry never caught up with the cluster snapshot"
fi
# The snapshot's keys are in; wait for each shard's writer to log the snapshot's end.
for ((i = 0; i < 1000; i++)); do
    [[ "$(grep -c 'snapshot applied' "$CINCR_LOG" || true)" -ge 3 ]] && break
    sleep 0.01
done
kill -0 "$CINCR_PID" 2>/dev/null || { tail -n 30 "$CINCR_LOG" >&2; die "ferry exited early"; }
say "ferry caught up with the cluster snapshot $(secs_since "$t0") s after starting"
t0="$(now_ns)"
redis-benchmark --cluster -h 127.0.0.1 -p "${CSRC[0]}" -t "$INCR_TESTS" -P 16 -n "$INCR_OPS" -r 100000 -q \
    >"$WORK/redis-benchmark-cluster.out" 2>&1 || die "redis-benchmark --cluster failed: $(cat "$WORK/redis-benchmark-cluster.out")"
CBENCH_SECS="$(secs_since "$t0")"
tr '\r' '\n' <"$WORK/redis-benchmark-cluster.out" | grep 'requests per second' | sed 's/^/bench:   /' || true
COPS="$(awk -v t="$INCR_NTESTS" -v n="$INCR_OPS" -v s="$CBENCH_SECS" 'BEGIN { printf "%d", t * n / s }')"
say "redis-benchmark --cluster: $((INCR_NTESTS * INCR_OPS)) ops in $CBENCH_SECS s = $COPS ops/s"
MARKER=ferry:bench:marker
msrc="$(slot_owner "$MARKER" "${CSRC[@]}")"
mtgt="$(slot_owner "$MARKER" "${CTGT[@]}")"
mnat=""
for j in 0 1 2; do [[ "${CSRC[$j]}" == "$msrc" ]] && mnat="${cnat_ports[$j]}"; done
marker_out="$(python3 "$HELPER" marker --source "$msrc" \
    --target "native=$mnat" --target "ferry=$mtgt" --timeout "$TIMEOUT")" || die "cluster marker measurement failed"
CNAT_DELAY="$(awk -F= '$1 == "native" { printf "%.1f", $2 }' <<<"$marker_out")"
CFER_DELAY="$(awk -F= '$1 == "ferry" { printf "%.1f", $2 }' <<<"$marker_out")"
# The marker shows one slot applied; a cluster target applies each slot in order but not
# the slots in step, so also wait until ferry's global checkpoints name every source
# master's current offset (the marker included): all of the load applied.
catch_args=()
for p in "${CSRC[@]}"; do catch_args+=(--source "$p"); done
for p in "${CTGT[@]}"; do catch_args+=(--target "$p"); done
CATCHUP="$(python3 "$HELPER" catchup "${catch_args[@]}" --timeout "$TIMEOUT")" \
    || { tail -n 30 "$CINCR_LOG" >&2; die "ferry never caught up with the cluster's writes"; }
CATCHUP_MS="$(awk -v s="$CATCHUP" -v m="$CFER_DELAY" 'BEGIN { printf "%.1f", s * 1000 + m }')"
say "cluster marker delay: native ${CNAT_DELAY} ms, ferry ${CFER_DELAY} ms (checkpoints on); every slot applied ${CATCHUP_MS} ms after the marker was written"
stop_ferry "$CINCR_PID" "$CINCR_LOG"
CSRC_D2="$(for p in "${CSRC[@]}"; do digest "$p"; done | tr '\n' ' ')"
CFER_D2="$(cluster_digests "${CTGT[@]}")"
if [[ "$CFER_D2" == "$CSRC_D2" ]]; then CINCR_DIGEST=MATCH; else CINCR_DIGEST=MISMATCH; fi
say "cluster digests after the marker: source $CSRC_D2, ferry $CFER_D2 ($CINCR_DIGEST)"
fi

# ---------------------------------------------------------------- summary
echo
printf 'ferry bench: keys=%s repeat=%s rows=%s machine=%s\n' "$KEYS" "$REPEAT" "$ROWS" "$MACHINE"
if row full; then
printf '%-16s %-17s median %.2f s   (%s)\n' "full sync" "native REPLICAOF" "$NATIVE_MED" "$SYNC_KIND"
printf '%-16s %-17s median %.2f s   ratio %sx   peak RSS %s MB   digest %s\n' \
    "" "ferry --mode full" "$FERRY_MED" "$RATIO" "$PEAK_RSS_MB" "$FULL_DIGEST"
printf '%-16s %-17s median %.2f s   ratio %sx   (--checkpoint off)\n' \
    "" "ferry --mode full" "$FERRY_OFF_MED" "$RATIO_OFF"
printf '%-16s %-17s median %s\n' "" "cpu seconds" "$FULL_CPU"
fi
if row cluster; then
printf '%-16s %-17s median %.2f s   (3 masters, 3 replicas at once)\n' \
    "cluster 3 to 3" "native REPLICAOF" "$CNATIVE_MED"
printf '%-16s %-17s median %.2f s   ratio %sx   peak RSS %s MB   digest %s\n' \
    "" "ferry --mode full" "$CFERRY_MED" "$CRATIO" "$CPEAK_RSS_MB" "$CLUSTER_DIGEST"
printf '%-16s %-17s median %s\n' "" "cpu seconds" "$CLUSTER_CPU"
fi
if row incr; then
printf '%-16s redis-benchmark %s ops/s      marker delay: native %s ms, ferry %s ms (checkpoints off %s ms)   digest %s\n' \
    "incremental" "$OPS" "$NAT_DELAY" "$FER_DELAY" "$OFF_DELAY" "$INCR_DIGEST"
printf '%-16s load %s s (%s x %s ops, -P 16 -r 100000)   cpu seconds: %s\n' \
    "" "$BENCH_SECS" "$INCR_TESTS" "$INCR_OPS" "$INCR_CPU"
fi
if row cluster-incr; then
printf '%-16s redis-benchmark %s ops/s      marker delay: native %s ms, ferry %s ms, all slots %s ms (checkpoints on)   digest %s\n' \
    "cluster incr" "$COPS" "$CNAT_DELAY" "$CFER_DELAY" "$CATCHUP_MS" "$CINCR_DIGEST"
fi
