#!/usr/bin/env bash
# One command for the console's browser test: builds ferry, installs playwright-core,
# runs the test in headless Chromium (Debian's `chromium` package).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/../.."
cargo build -p ferry
cd "$here"
npm install --no-audit --no-fund --silent
node console.test.mjs
