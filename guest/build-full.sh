#!/usr/bin/env bash
# Builds the full test guest: a Debian bookworm root filesystem with real cloud-init,
# qemu-guest-agent and sshd, on a disk that boots by itself from BIOS:
#   $CACHE/guests/full.qcow2               MBR (syslinux) + FAT boot partition (the guest's
#                                          own kernel and initrd) + ext4 root partition
#   $CACHE/guests/full.versions            kernel and main package versions
#   $CACHE/guests/oci/full-containerdisk   its containerDisk image (guest/package.sh full)
# Idempotent: does nothing when full.qcow2 was built from the same guest/build-full.sh and
# guest/full/* (their SHA-256 is kept in full.inputs, so a fresh clone reuses the cache).
# FORCE=1 rebuilds; KEEP_WORK=1 keeps the work directory (root tree).
# Needs root (debootstrap, chroot) and: debootstrap, e2fsprogs, fdisk, dosfstools, mtools,
# syslinux, syslinux-common, qemu-utils, apt. Downloads only from the Debian mirror that
# apt's sources already name.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${KUBEVIRT_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-rs}
out=$cache/guests
suite=bookworm
kernel_meta=${FULL_KERNEL_PACKAGE:-linux-image-cloud-amd64}   # newest version apt knows
root_size=${FULL_ROOT_SIZE:-2G}   # ext4 root partition (sparse: free space costs nothing)
disk_id=4b565246                  # MBR label id; the root partition is PARTUUID=$disk_id-02
# debootstrap resolves real package names only: python3-cffi-backend is listed because
# cloud-init's dependency on it goes through a virtual package.
packages=(python3-cffi-backend systemd-sysv udev dbus cloud-init qemu-guest-agent
  ifupdown isc-dhcp-client openssh-server sudo iproute2 netbase kmod ca-certificates
  initramfs-tools zstd e2fsprogs procps)

log() { echo "guest/build-full.sh: $*" >&2; }

# The inputs' names and contents, hashed: what full.qcow2 was built from.
inputs=$(cd "$here" && find build-full.sh full -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
uptodate=1
[ "${FORCE:-0}" = 1 ] && uptodate=0
[ -s "$out/full.qcow2" ] && [ "$(cat "$out/full.inputs" 2>/dev/null)" = "$inputs" ] || uptodate=0
if [ "$uptodate" = 1 ]; then
  log "full guest up to date in $out"
  exec "$here/package.sh" full
fi
[ "$(id -u)" = 0 ] || { log "needs root (debootstrap, chroot)"; exit 1; }

# The Debian mirror apt already uses for $suite (deb822 sources first, then sources.list).
mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [ -f "$f" ] || continue
    awk -v suite="$suite" '
      function flush() { if (deb && hit && uri != "") { print uri; found = 1; exit } deb = hit = 0; uri = "" }
      /^[[:space:]]*$/ { flush(); next }
      /^[[:space:]]*#/ { next }
      tolower($1) == "types:" { for (i = 2; i <= NF; i++) if ($i == "deb") deb = 1 }
      tolower($1) == "uris:" { uri = $2 }
      tolower($1) == "suites:" { for (i = 2; i <= NF; i++) if ($i == suite) hit = 1 }
      END { if (!found) flush() }' "$f"
  done
  { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null || true; } \
    | awk -v suite="$suite" '$1 == "deb" { u = 0; for (i = 2; i <= NF; i++) { if ($i ~ /^\[/) { while ($i !~ /\]$/) i++; continue } if (!u) { u = $i; continue } if ($i == suite) print u; break } }'
}
url=$(mirror | awk 'NR == 1')
[ -n "$url" ] || { log "no '$suite' Debian mirror in apt's sources"; exit 1; }
keyring=/usr/share/keyrings/debian-archive-keyring.gpg

start=$(date +%s)
mkdir -p "$out"
# Not /tmp: that may be a small tmpfs, and the root tree needs device nodes.
work=$(mktemp -d "${TMPDIR:-/var/tmp}/kubevirt-rs-full.XXXXXX")
root=$work/root
cleanup() {
  local m
  for m in "$root/sys" "$root/proc" "$root/dev/pts"; do
    mountpoint -q "$m" 2>/dev/null && umount -l "$m"
  done
  if grep -qF " $work/" /proc/mounts; then
    log "something is still mounted under $work: not removing it"
  elif [ "${KEEP_WORK:-0}" = 1 ]; then
    log "kept $work"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
chmod 0755 "$work"
mkdir -p "$work/debs"
chown _apt "$work/debs" 2>/dev/null || true

# --- kernel: the newest cloud kernel (bookworm-backports' 6.12 has AHCI; 6.1 has not) --
best=""
for v in $(apt-cache madison "$kernel_meta" | awk -F'|' '{gsub(/ /,"",$2); print $2}'); do
  if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
done
best=${FULL_KERNEL_VERSION:-$best}
[ -n "$best" ] || { log "apt knows no $kernel_meta (apt-get update?)"; exit 1; }
kpkg=$(apt-cache show "$kernel_meta=$best" | awk '/^Depends:/{sub(/^Depends: */,""); print; exit}' \
  | tr ',' '\n' | grep -o 'linux-image-[^ ]*' | head -n 1)
kpkgver=$(apt-cache show "$kernel_meta=$best" | awk '/^Depends:/{print; exit}' \
  | grep -o "$kpkg (= [^)]*)" | sed 's/.*(= \(.*\))/\1/' || true)
[ -n "$kpkg" ] || { log "cannot resolve the kernel package behind $kernel_meta=$best"; exit 1; }
(cd "$work/debs" && apt-get download -q "$kpkg${kpkgver:+=$kpkgver}" >/dev/null)
log "kernel: $kpkg${kpkgver:+=$kpkgver}; mirror: $url"

# --- root tree ---------------------------------------------------------------------
log "debootstrap $suite (a few minutes)"
include=$(IFS=,; echo "${packages[*]}")
if ! debootstrap --variant=minbase --arch=amd64 --keyring="$keyring" --include="$include" \
    "$suite" "$root" "$url" >"$work/debootstrap.log" 2>&1; then
  tail -n 30 "$work/debootstrap.log" >&2
  [ -f "$root/debootstrap/debootstrap.log" ] && tail -n 30 "$root/debootstrap/debootstrap.log" >&2
  exit 1
fi
log "debootstrap done after $(( $(date +%s) - start )) s"

# Our configuration (cloud-init, initramfs, ssh, dpkg and apt settings).
cp -r --no-preserve=ownership "$here/full/rootfs/." "$root/"

# No service starts inside the chroot.
printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"
chmod 0755 "$root/usr/sbin/policy-rc.d"

mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
cp "$work"/debs/linux-image-*.deb "$root/tmp/"
chroot "$root" sh -c 'dpkg -i /tmp/linux-image-*.deb && rm -f /tmp/linux-image-*.deb' >"$work/kernel.log" 2>&1 \
  || { tail -n 30 "$work/kernel.log" >&2; exit 1; }
kver=$(ls "$root/lib/modules")
[ "$(echo "$kver" | wc -l)" = 1 ] || { log "expected one kernel in the root tree, got: $kver"; exit 1; }
[ -s "$root/boot/initrd.img-$kver" ] || { log "no initrd built for $kver"; cat "$work/kernel.log" >&2; exit 1; }

# Services: sshd and a serial getty; qemu-guest-agent is started by udev when its
# virtio-serial port appears (its unit binds to the device). No periodic jobs.
chroot "$root" systemctl enable -q ssh.service serial-getty@ttyS0.service
for t in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer e2scrub_reap.service fstrim.timer; do
  chroot "$root" systemctl disable -q "$t" 2>/dev/null || true
done
grep -q 'org.qemu.guest_agent.0' "$root"/lib/udev/rules.d/*qemu-guest-agent*.rules 2>/dev/null \
  || log "warning: no udev rule starting qemu-guest-agent"
umount "$root/sys" "$root/proc"

# Identity: none baked in; cloud-init and systemd make it on first boot.
echo localhost >"$root/etc/hostname"
printf '127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n' >"$root/etc/hosts"
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root"/etc/ssh/ssh_host_*
rm -f "$root/etc/resolv.conf"
chroot "$root" passwd -q -l root >/dev/null
printf 'PARTUUID=%s-02\t/\text4\trw,errors=remount-ro\t0 1\n' "$disk_id" >"$root/etc/fstab"

# Kernel and initrd go to the boot partition.
cp "$root/boot/vmlinuz-$kver" "$work/vmlinuz"
cp "$root/boot/initrd.img-$kver" "$work/initrd.img"
rm -f "$root/boot/vmlinuz-$kver" "$root/boot/initrd.img-$kver" "$root/vmlinuz" "$root/initrd.img" \
  "$root/vmlinuz.old" "$root/initrd.img.old"

versions=$(printf 'kernel=%s\n' "$kver"
  for p in cloud-init qemu-guest-agent openssh-server systemd python3; do
    printf '%s=%s\n' "$p" "$(chroot "$root" dpkg-query -W -f '${Version}' "$p")"
  done)
printf '%s\nbuilt=%s\n' "$versions" "$(date -u +%Y-%m-%dT%H:%M:%SZ)" >"$root/etc/kubevirt-rs-guest"

# Small: no package caches, lists, docs, logs.
rm -f "$root/usr/sbin/policy-rc.d"
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/var/cache/debconf/*-old \
  "$root"/var/lib/dpkg/*-old "$root"/tmp/* "$root"/var/tmp/* "$root/debootstrap"
find "$root/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
find "$root/usr/share/doc" -mindepth 1 -type d -empty -delete
rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/lintian
find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
find "$root/var/log" -type f -exec truncate -s 0 {} +

# --- disk: MBR (syslinux) + FAT boot partition + ext4 root partition -------------------
log "disk image"
mbr=""
for f in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/SYSLINUX/mbr.bin /usr/share/syslinux/mbr.bin; do
  [ -f "$f" ] && { mbr=$f; break; }
done
[ -n "$mbr" ] || { log "syslinux mbr.bin not found (install syslinux-common)"; exit 1; }
payload=$(( $(stat -c %s "$work/vmlinuz") + $(stat -c %s "$work/initrd.img") ))
boot_mib=$(( payload / 1048576 + 8 ))
cat >"$work/syslinux.cfg" <<CFG
DEFAULT full
PROMPT 0
TIMEOUT 0
LABEL full
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND root=PARTUUID=$disk_id-02 rw console=tty0 console=ttyS0
CFG
export MTOOLS_SKIP_CHECK=1
truncate -s "${boot_mib}M" "$work/boot.img"
mkfs.vfat -n KVRSBOOT -h 2048 -i "$disk_id" "$work/boot.img" >/dev/null
mcopy -i "$work/boot.img" "$work/vmlinuz" ::/vmlinuz
mcopy -i "$work/boot.img" "$work/initrd.img" ::/initrd.img
mcopy -i "$work/boot.img" "$work/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$work/boot.img"

mkfs.ext4 -q -L kvrs-root -E root_owner=0:0 -d "$root" "$work/root.img" "$root_size" >/dev/null
root_mib=$(( $(stat -c %s "$work/root.img") / 1048576 ))
truncate -s "$(( 1 + boot_mib + root_mib ))M" "$work/disk.raw"
printf 'label: dos\nlabel-id: 0x%s\nstart=1MiB, size=%sMiB, type=c, bootable\nstart=%sMiB, size=%sMiB, type=83\n' \
  "$disk_id" "$boot_mib" "$(( 1 + boot_mib ))" "$root_mib" | sfdisk -q "$work/disk.raw"
dd if="$work/boot.img" of="$work/disk.raw" bs=1M seek=1 conv=notrunc status=none
dd if="$work/root.img" of="$work/disk.raw" bs=1M seek="$(( 1 + boot_mib ))" conv=notrunc,sparse status=none
dd if="$mbr" of="$work/disk.raw" bs=440 count=1 conv=notrunc status=none
qemu-img convert -c -f raw -O qcow2 "$work/disk.raw" "$work/full.qcow2"

cp "$work/full.qcow2" "$out/.full.qcow2.tmp" && mv -f "$out/.full.qcow2.tmp" "$out/full.qcow2"
cp "$root/etc/kubevirt-rs-guest" "$out/full.versions"
echo "$inputs" >"$out/full.inputs"
log "built $out/full.qcow2: $(du -h --apparent-size "$out/full.qcow2" | cut -f1), root tree $(du -sh "$root" | cut -f1), in $(( $(date +%s) - start )) s"
"$here/package.sh" full   # not exec: the EXIT trap cleans $work up
