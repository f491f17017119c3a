#!/usr/bin/env bash
# `make demo`: starts the all-in-one server on a scratch data directory, applies the demo
# VM, starts it with virtctl and shows its console until the guest powers itself off.
# Everything it started is stopped on the way out, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${RELEASE:-target/release}
data=$(mktemp -d "${TMPDIR:-/tmp}/kubevirt-rs-demo.XXXXXX")
export KUBECONFIG=$data/kubeconfig
server=

say() { printf '\n== %s\n' "$*"; }

finish() {
  local status=$?
  if [ -n "$server" ] && kill -0 "$server" 2>/dev/null; then
    # Deleting the VM stops its guest; the launcher would otherwise outlive the server.
    kubectl delete vm demo --ignore-not-found --wait=true --timeout=60s >/dev/null 2>&1 || true
    kill "$server" 2>/dev/null || true
    wait "$server" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ]; then
    echo "demo failed; the server's log:" >&2
    tail -n 40 "$data/server.log" >&2 || true
  fi
  rm -rf "$data"
}
trap finish EXIT

say "starting kubevirt-rs server (data in $data)"
"$bin/kubevirt-rs" server --data-dir "$data" --listen 127.0.0.1:0 >"$data/server.log" 2>&1 &
server=$!
for _ in $(seq 1 300); do
  [ -f "$KUBECONFIG" ] && kubectl get --raw /readyz >/dev/null 2>&1 && break
  kill -0 "$server" 2>/dev/null || { echo "the server exited" >&2; exit 1; }
  sleep 0.1
done
# The components start right after the API: wait for virt-api's API and a schedulable node.
for _ in $(seq 1 300); do
  kubectl get --raw /apis/subresources.kubevirt.io/v1/version >/dev/null 2>&1 \
    && [ -n "$(kubectl get nodes -l kubevirt.io/schedulable=true -o name 2>/dev/null)" ] && break
  sleep 0.1
done
kubectl version
kubectl get nodes

say "kubectl apply -f examples/demo-vm.yaml"
kubectl apply -f examples/demo-vm.yaml
kubectl get vm demo

say "virtctl start demo; virtctl console demo"
"$bin/virtctl" start demo
# The console waits for the VMI to run, then streams until the guest powers off.
"$bin/virtctl" console demo --timeout 5
kubectl get vm,vmi

say "the guest powered itself off; deleting the VM"
kubectl delete vm demo --wait=true --timeout=60s
echo "demo done"
