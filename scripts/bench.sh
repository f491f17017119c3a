#!/usr/bin/env bash
# make bench: runs the benchmarks and prints their tables (see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
target/release/kubevirt-rs-bench "$@"
