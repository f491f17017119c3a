#!/usr/bin/env bash
# make bench: runs the benchmarks and prints their tables (see docs/benchmarks.md).
#   scripts/bench.sh        both: the launcher against libvirt, the API server against etcd
#   scripts/bench.sh vm     the launcher only
#   scripts/bench.sh api    the API server only
#   scripts/bench.sh cp     the control plane only (scripts/cp-bench.py; also part of all)
# Further arguments go to kubevirt-rs-bench (`--help` lists them). The tables are also
# kept in target/bench/{all,vm,api}.md, the API server's raw numbers in
# target/bench/api.json.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  vm | api | all | cp) which=$1 ;;
  *) which=all ;;
esac
mkdir -p target/bench
if [ "$which" != cp ]; then
  target/release/kubevirt-rs-bench "$@" | tee "target/bench/$which.md"
fi
if [ "$which" = cp ] || [ "$which" = all ]; then
  echo
  python3 scripts/cp-bench.py | tee "target/bench/cp.md"
fi
