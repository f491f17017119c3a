#!/usr/bin/env bash
# Installs every system package the build, the tests and the demo need (Debian 12).
# Idempotent: skips the work when everything is already there.
set -euo pipefail

need=(qemu-system-x86_64 runc nft busybox genisoimage cpio lz4 docker-registry skopeo passt socat mkfs.ext4 debootstrap virsh
      syslinux mcopy mkfs.vfat sfdisk python3 xz zstd libvirtd virtlogd etcd ssh ssh-keygen scp)
missing=0
for cmd in "${need[@]}"; do
  command -v "$cmd" >/dev/null 2>&1 || [ -x "/usr/sbin/$cmd" ] || [ -x "/usr/bin/$cmd" ] || missing=1
done
[ "$missing" = 0 ] && exit 0

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
had_etcd=0
command -v etcd >/dev/null 2>&1 && had_etcd=1

# The image carries qemu-utils from bookworm-backports without that suite in its sources;
# qemu-system-x86 must come from the same suite (see shared/reference/qemu-here.md §2).
src=/etc/apt/sources.list.d/debian.sources
if [ -f "$src" ] && ! grep -q 'bookworm-backports' "$src"; then
  $SUDO sed -i '0,/^Suites: bookworm bookworm-updates$/s//Suites: bookworm bookworm-updates bookworm-backports/' "$src"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq -t bookworm-backports qemu-system-x86 qemu-utils >/dev/null
$SUDO apt-get install -y -qq --no-install-recommends \
  busybox-static cpio lz4 genisoimage xorriso kmod socat e2fsprogs \
  docker-registry skopeo passt debootstrap runc nftables containernetworking-plugins iproute2 \
  syslinux syslinux-common mtools dosfstools fdisk python3 xz-utils zstd openssh-client \
  chromium chromium-driver \
  libvirt-daemon-system libvirt-daemon-driver-qemu libvirt-clients etcd-server >/dev/null
# etcd-server enables a system-wide etcd on 127.0.0.1:2379; `make bench` starts its own on
# free ports, so a service this script just installed is switched off again.
if [ "$had_etcd" = 0 ] && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi
