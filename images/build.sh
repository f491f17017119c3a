#!/usr/bin/env bash
# Builds the project's OCI images from this machine's Debian files, as OCI layouts under
# $CACHE/guests/oci/ that guest/registry.sh pushes to the local registry.
#   images/build.sh launcher [BINARY]  kubevirt-rs/virt-launcher:<version>: QEMU, its
#                                      firmware and modules, qemu-img, genisoimage, prlimit
#                                      and virt-launcher (BINARY, default
#                                      target/release/virt-launcher), each with the shared
#                                      libraries it loads; runs as qemu (107:107)
#   images/build.sh toolbox            kubevirt-rs/toolbox:devel: busybox, for tests
# The launcher image has two layers, the Debian files and the launcher, so a new launcher
# binary pushes one small layer.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)
cache=${KUBEVIRT_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-rs}
oci=$cache/guests/oci
stage=$cache/image-build

log() { echo "images/build.sh: $*" >&2; }

# The usr-merged top level: /bin, /lib, /lib64 and /sbin are links into /usr.
skeleton() {
  local d=$1
  rm -rf "$d" && mkdir -p "$d"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc,tmp,run,var/tmp}
  ln -s usr/bin "$d/bin"; ln -s usr/sbin "$d/sbin"; ln -s usr/lib "$d/lib"; ln -s usr/lib64 "$d/lib64"
  chmod 1777 "$d/tmp" "$d/var/tmp"
}

# Copies a file to the same path under $1, /lib and /bin read as /usr/lib and /usr/bin,
# links followed.
put() {
  local d=$1 src=$2 dest
  dest=$src
  case $dest in /lib/* | /lib64/* | /bin/* | /sbin/*) dest=/usr$dest ;; esac
  mkdir -p "$d$(dirname "$dest")"
  cp -L "$src" "$d$dest"
}

# Every shared library the binaries load.
put_libs() {
  local d=$1 f lib
  shift
  for f in "$@"; do
    for lib in $(ldd "$f" 2>/dev/null | grep -o '/[^ ]*' | sort -u); do
      [ -e "$lib" ] && put "$d" "$lib"
    done
  done
}

# Binaries and every shared library they load.
put_elf() {
  local d=$1 f
  shift
  for f in "$@"; do put "$d" "$f"; done
  put_libs "$d" "$@"
}

launcher() {
  local bin=${1:-$root/target/release/virt-launcher} base=$stage/launcher-base top=$stage/launcher-top
  [ -x "$bin" ] || { log "no launcher binary at $bin (cargo build --release --bins)"; exit 1; }
  # Nothing to do when this launcher and this QEMU made the layout already.
  local stamp
  stamp=$( (sha256sum "$bin" | cut -d' ' -f1; qemu-system-x86_64 --version | head -n 1; sha256sum "$0" "$here/layout.py") | sha256sum | cut -d' ' -f1)
  if [ -f "$oci/virt-launcher/index.json" ] && [ "$(cat "$stage/launcher.stamp" 2>/dev/null)" = "$stamp" ]; then
    log "$oci/virt-launcher is up to date"
    return
  fi
  local qemu_data=(/usr/share/qemu /usr/share/seabios /usr/lib/ipxe/qemu)
  skeleton "$base"
  put_elf "$base" "$(command -v qemu-system-x86_64)" "$(command -v qemu-img)" \
    "$(command -v genisoimage)" "$(command -v prlimit)" \
    /usr/lib/x86_64-linux-gnu/qemu/{hw-display-virtio-gpu,hw-display-virtio-gpu-pci,hw-display-virtio-vga,hw-uefi-vars}.so
  # The launcher's own libraries (the C runtime) belong with the Debian files.
  put_libs "$base" "$bin"
  # Firmware and keymaps, links kept (Debian links ROMs across these directories).
  for d in "${qemu_data[@]}"; do
    [ -d "$d" ] && mkdir -p "$base$(dirname "$d")" && cp -a "$d" "$base$(dirname "$d")/"
  done
  printf 'root:x:0:0:root:/root:/usr/sbin/nologin\nqemu:x:107:107:qemu:/var/lib/qemu:/usr/sbin/nologin\n' >"$base/etc/passwd"
  printf 'root:x:0:\nqemu:x:107:\n' >"$base/etc/group"
  rm -rf "$top" && mkdir -p "$top/usr/bin"
  cp "$bin" "$top/usr/bin/virt-launcher"
  local version config
  version=$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)
  config='{"Entrypoint": ["/usr/bin/virt-launcher"], "User": "107:107", "WorkingDir": "/",
           "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
           "Labels": {"org.opencontainers.image.version": "'"$version"'"}}'
  LAYER_CACHE=$stage/layers python3 "$here/layout.py" "$oci/virt-launcher" devel "$config" "$base" "$top" >/dev/null
  # Old compressed layers go; the two just used stay.
  find "$stage/layers" -name '*.gz' -mmin +60 -delete 2>/dev/null || true
  echo "$stamp" >"$stage/launcher.stamp"
  log "built $oci/virt-launcher ($(du -sh "$base" | cut -f1) of Debian files)"
}

toolbox() {
  local d=$stage/toolbox
  skeleton "$d"
  cp "$(command -v busybox)" "$d/usr/bin/busybox"
  for cmd in sh cat id ls sleep echo env ps mount touch rm readlink grep hostname unshare head; do ln -s busybox "$d/usr/bin/$cmd"; done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/sh\n' >"$d/etc/passwd"
  printf 'root:x:0:\nnobody:x:65534:\n' >"$d/etc/group"
  python3 "$here/layout.py" "$oci/toolbox" devel \
    '{"Cmd": ["/bin/sh"], "Env": ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]}' "$d" >/dev/null
  log "built $oci/toolbox"
}

mkdir -p "$oci" "$stage"
case "${1:-}" in
  launcher) launcher "${2:-}" ;;
  toolbox) toolbox ;;
  *) echo "usage: $0 launcher [BINARY] | toolbox" >&2; exit 2 ;;
esac
