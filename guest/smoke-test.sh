#!/usr/bin/env bash
# Boots the tiny guest from the cache under QEMU/TCG in the ways kubevirt-rs uses it and
# checks the console markers. Prints one line per case with the boot-to-marker time.
#   guest/smoke-test.sh            all cases
#   guest/smoke-test.sh CASE...    only these (names as printed)
# Needs: qemu-system-x86, qemu-utils, genisoimage, socat. One QEMU at a time.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${KUBEVIRT_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-rs}
g=$cache/guests
for f in tiny.qcow2 vmlinuz initramfs.img; do
  [ -s "$g/$f" ] || { echo "smoke-test: $g/$f missing: run guest/build.sh" >&2; exit 1; }
done
work=$(mktemp -d "${TMPDIR:-/tmp}/kubevirt-rs-smoke.XXXXXX")
qpid=""
cleanup() { [ -z "$qpid" ] || kill "$qpid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
cd "$work"

# Seeds.
mkdir nocloud configdrive configdrive/openstack configdrive/openstack/latest
printf '#!/bin/sh\n\necho "printed from cloud-init userdata"\n' >nocloud/user-data
printf 'instance-id: smoke\nlocal-hostname: smoke-nocloud\n' >nocloud/meta-data
genisoimage -quiet -output nocloud.iso -volid cidata -joliet -rock nocloud/user-data nocloud/meta-data
printf '#!/bin/sh\necho "printed from config-drive userdata"\n' >configdrive/openstack/latest/user_data
printf '{"uuid": "5d3c9d8e", "hostname": "smoke-configdrive", "name": "x"}\n' \
  >configdrive/openstack/latest/meta_data.json
genisoimage -quiet -output configdrive.iso -volid config-2 -joliet -rock configdrive

fail=0
# run NAME TIMEOUT "EXPECTED|..." -- QEMU ARGS ; boots, waits for the ready marker, checks
# that every expected string is on the console.
run() {
  local name=$1 limit=$2 expect=$3; shift 4
  if [ -n "$only" ] && [[ " $only " != *" $name "* ]]; then return 0; fi
  rm -f disk.qcow2 console.log qmp.sock
  qemu-img create -q -f qcow2 -F qcow2 -b "$g/tiny.qcow2" disk.qcow2
  local t0 t1 i
  t0=$(date +%s%N)
  qemu-system-x86_64 -accel tcg -m 128 -nodefaults -display none \
    -serial file:console.log -qmp unix:qmp.sock,server=on,wait=off "$@" &
  qpid=$!
  for ((i = 0; i < limit * 20; i++)); do
    grep -qa KUBEVIRT-RS-GUEST-READY console.log 2>/dev/null && break
    kill -0 "$qpid" 2>/dev/null || break
    sleep 0.05
  done
  t1=$(date +%s%N)
  local ok=1 e msg=""
  grep -qa KUBEVIRT-RS-GUEST-READY console.log || { ok=0; msg="no ready marker"; }
  IFS='|' read -ra es <<<"$expect"
  for e in "${es[@]}"; do
    [ -z "$e" ] || grep -qaF -- "$e" console.log || { ok=0; msg="$msg; missing '$e'"; }
  done
  # ACPI power button: QEMU must exit by itself.
  local pd=""
  if [ "$ok" = 1 ]; then
    local p0 p1
    sleep 0.3
    p0=$(date +%s%N)
    printf '{"execute":"qmp_capabilities"}\n{"execute":"system_powerdown"}\n' \
      | socat -t 1 - UNIX-CONNECT:qmp.sock >/dev/null
    for ((i = 0; i < 100; i++)); do kill -0 "$qpid" 2>/dev/null || break; sleep 0.05; done
    p1=$(date +%s%N)
    if kill -0 "$qpid" 2>/dev/null; then ok=0; msg="$msg; system_powerdown ignored"
    else pd=" powerdown=$(( (p1 - p0) / 1000000 ))ms"; fi
  fi
  kill "$qpid" 2>/dev/null || true
  wait "$qpid" 2>/dev/null || true
  qpid=""
  if [ "$ok" = 1 ]; then
    printf 'ok   %-22s ready=%d.%02ds%s\n' "$name" $(( (t1 - t0) / 1000000000 )) $(( (t1 - t0) / 10000000 % 100 )) "$pd"
  else
    printf 'FAIL %-22s %s\n' "$name" "${msg#; }"; sed 's/^/     | /' console.log | tail -n 25
    fail=1
  fi
}

only="$*"
net=(-netdev user,id=n0 -device virtio-net-pci,netdev=n0)
vdisk=(-drive file=disk.qcow2,if=none,id=d0 -device virtio-blk-pci,drive=d0)
kboot=(-kernel "$g/vmlinuz" -initrd "$g/initramfs.img")

run kernel-boot 60 "" -- -M q35 "${kboot[@]}" -append console=ttyS0
run q35-virtio-dhcp 60 "DHCP-LEASE 10.0.2.15" -- -M q35 "${vdisk[@]}" "${net[@]}"
run q35-sata 60 "" -- -M q35 -drive file=disk.qcow2,if=none,id=d0 -device ide-hd,drive=d0,bus=ide.0
run pc-virtio 60 "" -- -M pc "${vdisk[@]}"
run pc-sata 60 "" -- -M pc -device ahci,id=ahci -drive file=disk.qcow2,if=none,id=d0 \
  -device ide-hd,drive=d0,bus=ahci.0
run nocloud-virtio 60 "printed from cloud-init userdata|HOSTNAME smoke-nocloud|USER-DATA-EXIT 0" -- \
  -M q35 "${vdisk[@]}" -drive file=nocloud.iso,if=none,id=c0,format=raw,readonly=on \
  -device virtio-blk-pci,drive=c0
run nocloud-sata-cdrom 60 "printed from cloud-init userdata|HOSTNAME smoke-nocloud" -- \
  -M q35 "${vdisk[@]}" -drive file=nocloud.iso,if=none,id=c0,format=raw,media=cdrom,readonly=on \
  -device ide-cd,drive=c0,bus=ide.1
run nocloud-scsi-cdrom 60 "printed from cloud-init userdata" -- \
  -M q35 "${vdisk[@]}" -device virtio-scsi-pci,id=scsi0 \
  -drive file=nocloud.iso,if=none,id=c0,format=raw,media=cdrom,readonly=on -device scsi-cd,drive=c0,bus=scsi0.0
run configdrive-virtio 60 "printed from config-drive userdata|HOSTNAME smoke-configdrive" -- \
  -M q35 "${vdisk[@]}" -drive file=configdrive.iso,if=none,id=c0,format=raw,readonly=on \
  -device virtio-blk-pci,drive=c0
run kernel-boot-nocloud 60 "printed from cloud-init userdata" -- -M q35 "${kboot[@]}" \
  -append console=ttyS0 -drive file=nocloud.iso,if=none,id=c0,format=raw,readonly=on \
  -device virtio-blk-pci,drive=c0
exit "$fail"
