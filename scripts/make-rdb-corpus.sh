#!/usr/bin/env bash
# Writes crates/rdb/tests/corpus/<label>.rdb for every server version available (the system
# redis-server and those fetched by scripts/fetch-redis-versions.sh): starts each, writes the
# dataset defined in crates/rdb/tests/corpus.rs, SAVEs and copies dump.rdb.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test -p ferry-rdb --test corpus -- --ignored --exact make_corpus --nocapture
ls -l crates/rdb/tests/corpus/
