# Helpers shared by scripts/demo.sh, scripts/bench.sh and scripts/bench-bigkeys.sh.
# Sourced after the script has defined `say`, `die` and `need`.

# Sets FERRY: $FERRY_BIN when given, else a release build of the repository at $1.
ferry_binary() {
    local root="$1"
    if [[ -n "${FERRY_BIN:-}" ]]; then
        FERRY="$FERRY_BIN"
        [[ -x "$FERRY" ]] || die "FERRY_BIN=$FERRY is not an executable file"
    else
        need cargo "install Rust, or set FERRY_BIN"
        say "building ferry (cargo build --release -p ferry)"
        (cd "$root" && cargo build --release -p ferry --quiet) || die "cargo build failed"
        FERRY="$root/target/release/ferry"
    fi
}

# Sets WORK to a new temporary folder named after $1 and PIDS to an empty list; on exit
# every process in PIDS is stopped and waited for, and WORK is removed.
work_dir() {
    WORK="$(mktemp -d "${TMPDIR:-/tmp}/$1.XXXXXX")"
    PIDS=()
    trap cleanup_work_dir EXIT
}

cleanup_work_dir() {
    local pid
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do kill "$pid" 2>/dev/null || true; done
    for pid in ${PIDS[@]+"${PIDS[@]}"}; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
