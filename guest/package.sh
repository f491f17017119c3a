#!/usr/bin/env bash
# Packs the test guests as OCI image layouts in the cache:
#   $CACHE/guests/oci/tiny-containerdisk  layer: disk/tiny.qcow2 (107:107, 0440)
#   $CACHE/guests/oci/tiny-kernelboot     layer: boot/vmlinuz-virt, boot/initramfs-virt
#   $CACHE/guests/oci/full-containerdisk  layer: disk/full.qcow2 (107:107, 0440)
#   $CACHE/guests/oci/idle-containerdisk  layer: disk/idle.raw, 1 MiB that halts (107:107, 0440)
# All are tagged devel and latest. Skips a layout newer than its inputs.
#   guest/package.sh        the tiny and idle guests (guest/build.sh), and the full one if built
#   guest/package.sh full   the full guest only (guest/build-full.sh)
#   guest/package.sh idle   the idle guest only
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
    [ -s "${a%%=*}" ] || { echo "guest/package.sh: ${a%%=*} missing: run guest/build.sh (tiny) or guest/build-full.sh (full)" >&2; exit 1; }
  done
  echo "guest/package.sh: $layout $(python3 "$here/oci.py" "$layout" devel,latest "$@")" >&2
}

tiny() {
  pack tiny-containerdisk "$out/tiny.qcow2=disk/tiny.qcow2"
  pack tiny-kernelboot "$out/vmlinuz=boot/vmlinuz-virt" "$out/initramfs.img=boot/initramfs-virt"
}
full() { pack full-containerdisk "$out/full.qcow2=disk/full.qcow2"; }
# The control-plane benchmark's guest: 1 MiB whose boot sector stops the CPU (cli; hlt; jmp
# back to the hlt). Nothing wakes it, so a hundred of them idle under TCG for about 2 ms of
# CPU per second each; an empty disk makes SeaBIOS idle in its own hlt loop, woken by every
# timer tick, for 7 ms.
idle() {
  local tmp=$out/.idle.raw.tmp
  { printf '\372\364\353\375'; head -c 506 /dev/zero; printf '\125\252'; } >"$tmp"
  truncate -s 1M "$tmp"
  if cmp -s "$tmp" "$out/idle.raw"; then rm -f "$tmp"; else mv -f "$tmp" "$out/idle.raw"; fi
  pack idle-containerdisk "$out/idle.raw=disk/idle.raw"
}

case "${1:-}" in
  "") tiny; idle; [ ! -s "$out/full.qcow2" ] || full ;;
  tiny) tiny ;;
  full) full ;;
  idle) idle ;;
  *) echo "usage: $0 [tiny|full|idle]" >&2; exit 2 ;;
esac
