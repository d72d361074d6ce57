#!/usr/bin/env bash
# Starts a throwaway PostgreSQL on 127.0.0.1:${PGPORT:-15432} (Debian's `postgresql`
# package, run as root) for the service's store tests, and prints the URL to export as
# FERRY_TEST_POSTGRES_URL.
set -euo pipefail
port="${PGPORT:-15432}"
dir="${PGDIR:-/tmp/ferry-test-pg}"
bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)"
install -d -o postgres "$dir"
if [ ! -d "$dir/data" ]; then
  su postgres -c "$bin/initdb -D $dir/data -A trust -U ferry" >/dev/null
fi
if ! su postgres -c "$bin/pg_ctl -D $dir/data status" >/dev/null 2>&1; then
  su postgres -c "$bin/pg_ctl -D $dir/data -o '-p $port -k $dir -c listen_addresses=127.0.0.1' -l $dir/log -w start" >/dev/null
fi
su postgres -c "$bin/psql -h 127.0.0.1 -p $port -U ferry -d postgres -tAc \"SELECT 1 FROM pg_database WHERE datname = 'ferry'\"" | grep -q 1 \
  || su postgres -c "$bin/createdb -h 127.0.0.1 -p $port -U ferry ferry"
echo "postgres://ferry@127.0.0.1:$port/ferry"
