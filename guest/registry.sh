#!/usr/bin/env bash
# Serves the test guests from a local registry, the way a node pulls upstream's images.
#   guest/registry.sh [start]  build the tiny guest and the toolbox image if needed, start
#                              Debian's docker-registry on 127.0.0.1:5000 unless something
#                              already answers /v2/ there, push the images whose OCI layout
#                              exists (the full guest only after guest/build-full.sh, the
#                              launcher only after images/build.sh launcher), write the
#                              node's registries.yaml
#   guest/registry.sh stop     stop the registry this script started
# Registry data, config, pid file and log: $CACHE/registry/.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${KUBEVIRT_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-rs}
reg=$cache/registry
addr=127.0.0.1:5000
confdir=${KUBEVIRT_RS_CONFIG_DIR:-/etc/kubevirt-rs}
oci=$cache/guests/oci

# image (name:tag in the registry) -> OCI layout under $oci
images=(
  "kubevirt/cirros-container-disk-demo:devel=tiny-containerdisk"
  "kubevirt/alpine-container-disk-demo:devel=tiny-containerdisk"
  "kubevirt/cirros-registry-disk-demo:latest=tiny-containerdisk"
  "kubevirt/alpine-ext-kernel-boot-demo:devel=tiny-kernelboot"
  "kubevirt/fedora-with-test-tooling-container-disk:devel=full-containerdisk"
  "kubevirt-rs/idle-disk:devel=idle-containerdisk"
  "kubevirt-rs/toolbox:devel=toolbox"
  "kubevirt-rs/virt-launcher:$(sed -n 's/^version = "\(.*\)"/\1/p' "$here/../Cargo.toml" | head -n 1)=virt-launcher"
)

log() { echo "guest/registry.sh: $*" >&2; }

# True when GET /v2/ answers 200 (bash's /dev/tcp: no curl needed).
probe() {
  (
    exec 3<>"/dev/tcp/${addr%:*}/${addr#*:}" || exit 1
    printf 'GET /v2/ HTTP/1.0\r\nHost: %s\r\n\r\n' "$addr" >&3
    IFS= read -r -t 3 line <&3 || exit 1
    [[ $line == HTTP/1.?" 200"* ]]
  ) 2>/dev/null
}

our_pid() {
  local pid
  [ -f "$reg/registry.pid" ] || return 1
  pid=$(cat "$reg/registry.pid")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] && tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q docker-registry \
    && echo "$pid"
}

stop() {
  local pid i
  if pid=$(our_pid); then
    kill "$pid"
    for ((i = 0; i < 50; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    log "stopped registry (pid $pid)"
  else
    log "no registry started by this script is running"
  fi
  rm -f "$reg/registry.pid"
}

start_registry() {
  local bin i
  if probe; then
    log "a registry already answers on http://$addr/v2/"
    return
  fi
  bin=$(command -v docker-registry || true)
  [ -n "$bin" ] || { log "docker-registry not installed (apt-get install docker-registry)"; exit 1; }
  mkdir -p "$reg/data"
  cat >"$reg/config.yml" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $reg/data
  delete:
    enabled: true
http:
  addr: $addr
EOF
  # Own session, detached from make/the terminal; the pid is the registry's own
  # (setsid and nohup exec in place).
  setsid nohup "$bin" serve "$reg/config.yml" >>"$reg/registry.log" 2>&1 </dev/null &
  echo $! >"$reg/registry.pid"
  for ((i = 0; i < 150; i++)); do
    probe && { log "registry started on http://$addr (pid $(cat "$reg/registry.pid"), log $reg/registry.log)"; return; }
    kill -0 "$(cat "$reg/registry.pid")" 2>/dev/null || break
    sleep 0.2
  done
  log "registry did not come up; last log lines:"; tail -n 20 "$reg/registry.log" >&2
  exit 1
}

push() {
  local entry name layout want have
  for entry in "${images[@]}"; do
    name=${entry%%=*} layout=$oci/${entry#*=}
    if [ ! -f "$layout/index.json" ]; then
      log "skipping $name: no $layout (not built)"
      continue
    fi
    want=$(grep -o '"digest": *"sha256:[0-9a-f]*"' "$layout/index.json" | head -n 1 | grep -o 'sha256:[0-9a-f]*')
    have=$( (skopeo inspect --raw --tls-verify=false "docker://$addr/$name" 2>/dev/null || echo none) | sha256sum | cut -d' ' -f1)
    if [ "sha256:$have" = "$want" ]; then
      log "$addr/$name already at $want"
      continue
    fi
    skopeo copy -q --dest-tls-verify=false "oci:$layout:devel" "docker://$addr/$name" >/dev/null
    log "pushed $addr/$name ($want)"
  done
}

write_mirrors() {
  local f=$confdir/registries.yaml mark="# written by kubevirt-rs guest/registry.sh"
  local content="$mark
mirrors:
  \"registry:5000\":
    endpoint: [\"http://$addr\"]
  \"docker.io\":
    endpoint: [\"http://$addr\"]"
  if [ -f "$f" ] && ! head -n 1 "$f" | grep -qF "$mark"; then
    log "leaving $f alone (not written by this script)"
    return
  fi
  if [ "$(cat "$f" 2>/dev/null)" != "$content" ]; then
    mkdir -p "$confdir"
    printf '%s\n' "$content" >"$f.tmp" && mv -f "$f.tmp" "$f"
    log "wrote $f"
  fi
}

case "${1:-start}" in
  start)
    "$here/build.sh"
    [ -f "$oci/toolbox/index.json" ] || "$here/../images/build.sh" toolbox
    start_registry
    push
    write_mirrors
    ;;
  stop) stop ;;
  *) echo "usage: $0 [start|stop]" >&2; exit 2 ;;
esac
