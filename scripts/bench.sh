#!/usr/bin/env bash
# make bench: runs the benchmarks and prints their tables (see docs/benchmarks.md).
#   scripts/bench.sh        all four: the launcher against libvirt, the API server against
#                           etcd, the control plane with real VMs, live migration
#   scripts/bench.sh vm     the launcher only
#   scripts/bench.sh api    the API server only
#   scripts/bench.sh cp     the control plane only (needs `make registry` for its guest)
#   scripts/bench.sh migrate  live migration between two launchers (needs `make registry`)
# Further arguments go to kubevirt-rs-bench (`--help` lists them). The tables are also
# kept in target/bench/{all,vm,api,cp,migrate}.md, the raw numbers in target/bench/api.json and
# target/bench/cp.json.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  vm | api | cp | migrate | all) which=$1; shift ;;
  *) which=all ;;
esac
mkdir -p target/bench
target/release/kubevirt-rs-bench "$which" "$@" | tee "target/bench/$which.md"
