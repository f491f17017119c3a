#!/usr/bin/env bash
# Packs the tiny guest (built by guest/build.sh) as OCI image layouts in the cache:
#   $CACHE/guests/oci/tiny-containerdisk  layer: disk/tiny.qcow2 (107:107, 0440)
#   $CACHE/guests/oci/tiny-kernelboot     layer: boot/vmlinuz-virt, boot/initramfs-virt
# Both are tagged devel and latest. Skips a layout newer than its inputs.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${KUBEVIRT_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-rs}
out=$cache/guests
mkdir -p "$out/oci"

# pack LAYOUT SRC=DEST...
pack() {
  local layout=$out/oci/$1 fresh=1 a
  shift
  if [ -f "$layout/index.json" ]; then
    for a in "$@" "$here/oci.py" "$here/package.sh"; do
      [ "$layout/index.json" -nt "${a%%=*}" ] || fresh=0
    done
  else
    fresh=0
  fi
  if [ "$fresh" = 1 ]; then
    echo "guest/package.sh: $layout up to date" >&2
    return
  fi
  for a in "$@"; do
    [ -s "${a%%=*}" ] || { echo "guest/package.sh: ${a%%=*} missing: run guest/build.sh" >&2; exit 1; }
  done
  echo "guest/package.sh: $layout $(python3 "$here/oci.py" "$layout" devel,latest "$@")" >&2
}

pack tiny-containerdisk "$out/tiny.qcow2=disk/tiny.qcow2"
pack tiny-kernelboot "$out/vmlinuz=boot/vmlinuz-virt" "$out/initramfs.img=boot/initramfs-virt"
