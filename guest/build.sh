#!/usr/bin/env bash
# Builds the tiny test guest from Debian packages into the cache (outside the clone):
#   $CACHE/guests/vmlinuz        cloud kernel (bzImage)
#   $CACHE/guests/initramfs.img  busybox initramfs with /init (guest/tiny/)
#   $CACHE/guests/tiny.qcow2     BIOS-bootable disk (MBR + FAT + syslinux) holding both
# then the OCI layouts (guest/package.sh).
# Idempotent: does nothing when the outputs were built from the same guest/build.sh and
# guest/tiny/* (their SHA-256 is kept in tiny.inputs, so a fresh clone reuses the cache).
# FORCE=1 rebuilds. Needs: apt-get, dpkg-deb, kmod (modinfo), xz, zstd, cpio, lz4,
# fdisk (sfdisk), dosfstools, mtools, syslinux, syslinux-common, qemu-utils. No root needed
# except for apt-get download in a root-only apt setup.
set -euo pipefail
export PATH=$PATH:/usr/sbin:/sbin   # modinfo, mkfs.vfat, sfdisk for non-root users

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache=${KUBEVIRT_RS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubevirt-rs}
out=$cache/guests
# Meta package naming the kernel; the highest version apt knows (backports included) wins.
# The bookworm 6.1 cloud kernel has no AHCI driver; bookworm-backports' 6.12 one has.
kernel_meta=${TINY_KERNEL_PACKAGE:-linux-image-cloud-amd64}

# Modules wanted, in load order; dependencies are added in front automatically and
# modules built into the kernel are skipped.
wanted=(virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_mmio
  failover net_failover virtio_net virtio_blk virtio_console virtio_scsi
  button evdev cdrom isofs
  scsi_common scsi_mod sd_mod sr_mod libata libahci ahci ata_piix)

log() { echo "guest/build.sh: $*" >&2; }

# The inputs' names and contents, hashed: what the outputs were built from.
inputs=$(cd "$here" && find build.sh tiny -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
outputs=("$out/vmlinuz" "$out/initramfs.img" "$out/tiny.qcow2")
uptodate=1
[ "${FORCE:-0}" = 1 ] && uptodate=0
[ "$(cat "$out/tiny.inputs" 2>/dev/null)" = "$inputs" ] || uptodate=0
for o in "${outputs[@]}"; do
  [ -s "$o" ] || uptodate=0
done
if [ "$uptodate" = 1 ]; then
  log "tiny guest up to date in $out"
  exec "$here/package.sh"
fi

mkdir -p "$out"
work=$(mktemp -d "${TMPDIR:-/tmp}/kubevirt-rs-guest.XXXXXX")
trap 'rm -rf "$work"' EXIT
chmod 0755 "$work"   # apt's _apt sandbox user must be able to write there
mkdir -p "$work/debs"
[ "$(id -u)" != 0 ] || chown _apt "$work/debs" 2>/dev/null || true   # quiet apt sandbox warning

# --- a. kernel and busybox packages ----------------------------------------------
best=""
for v in $(apt-cache madison "$kernel_meta" | awk -F'|' '{gsub(/ /,"",$2); print $2}'); do
  if [ -z "$best" ] || dpkg --compare-versions "$v" gt "$best"; then best=$v; fi
done
best=${TINY_KERNEL_VERSION:-$best}   # pin the meta package's version if asked
[ -n "$best" ] || { log "apt knows no $kernel_meta (apt-get update?)"; exit 1; }
dep=$(apt-cache show "$kernel_meta=$best" | awk '/^Depends:/{sub(/^Depends: */,""); print; exit}' \
  | tr ',' '\n' | grep -o 'linux-image-[^ ]*' | head -n 1)
[ -n "$dep" ] || { log "cannot resolve the kernel package behind $kernel_meta=$best"; exit 1; }
depver=$(apt-cache show "$kernel_meta=$best" | awk '/^Depends:/{print; exit}' \
  | grep -o "$dep (= [^)]*)" | sed 's/.*(= \(.*\))/\1/' || true)
log "kernel package: $dep${depver:+=$depver} (from $kernel_meta $best)"
(cd "$work/debs" && apt-get download -q "$dep${depver:+=$depver}" busybox-static >/dev/null)
for d in "$work"/debs/*.deb; do dpkg-deb -x "$d" "$work/pkgroot"; done

libmod=$work/pkgroot/lib/modules
[ -d "$libmod" ] || libmod=$work/pkgroot/usr/lib/modules
kver=$(ls "$libmod")
[ "$(echo "$kver" | wc -l)" = 1 ] || { log "expected one kernel in the package, got: $kver"; exit 1; }
moddir=$libmod/$kver
bb=$work/pkgroot/bin/busybox
[ -x "$bb" ] || bb=$work/pkgroot/usr/bin/busybox
cp "$work/pkgroot/boot/vmlinuz-$kver" "$work/vmlinuz"

# --- modules: decompress, resolve dependencies, order ------------------------------
root=$work/initramfs
mkdir -p "$root"/{bin,sbin,etc/acpi/PWRF,lib/modules,proc,sys,dev,run,tmp,mnt,root,var/log}
order=()
declare -A seen=()
is_builtin() { grep -qE "/$1\.ko\$" "$moddir/modules.builtin" 2>/dev/null; }
add_module() {
  local m=${1//-/_} f dep
  [ -z "${seen[$m]:-}" ] || return 0
  seen[$m]=1
  if is_builtin "$m" || is_builtin "${m//_/-}"; then return 0; fi
  f=$(find "$moddir/kernel" \( -name "$m.ko*" -o -name "${m//_/-}.ko*" \) | head -n 1)
  if [ -z "$f" ]; then log "warning: module $m not in $kver"; return 0; fi
  case "$f" in
    *.ko.xz) xz -dc "$f" >"$root/lib/modules/$m.ko" ;;
    *.ko.zst) zstd -qdc "$f" >"$root/lib/modules/$m.ko" ;;
    *.ko.gz) gzip -dc "$f" >"$root/lib/modules/$m.ko" ;;
    *) cp "$f" "$root/lib/modules/$m.ko" ;;
  esac
  for dep in $(modinfo -F depends "$root/lib/modules/$m.ko" | tr ',' ' '); do add_module "$dep"; done
  order+=("$m")
}
for m in "${wanted[@]}"; do add_module "$m"; done
printf '%s\n' "${order[@]}" >"$root/etc/modules"
[ -e "$root/lib/modules/ahci.ko" ] || is_builtin ahci || log "warning: $kver has no AHCI driver: SATA disks/cdroms stay invisible"
log "modules: ${order[*]}"

# --- b. initramfs ----------------------------------------------------------------
cp "$bb" "$root/bin/busybox"
for a in $("$root/bin/busybox" --list); do
  [ "$a" = busybox ] || ln -sf busybox "$root/bin/$a"
done
ln -sf ../bin/busybox "$root/sbin/init"
install -m 0755 "$here/tiny/init" "$root/init"
install -m 0755 "$here/tiny/udhcpc.script" "$root/etc/udhcpc.script"
install -m 0755 "$here/tiny/power-button" "$root/etc/acpi/PWRF/00000080"
install -m 0644 "$here/tiny/inittab" "$root/etc/inittab"
install -m 0644 "$here/tiny/profile" "$root/etc/profile"
echo tiny >"$root/etc/hostname"
printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
printf 'root:x:0:\n' >"$root/etc/group"
printf '127.0.0.1 localhost\n' >"$root/etc/hosts"
printf 'kernel=%s\nbusybox=%s\n' "$kver" "$(dpkg-deb -f "$work"/debs/busybox-static_*.deb Version)" >"$root/etc/kubevirt-rs-guest"

# /dev/console must exist before /init runs; write its cpio entry by hand (no mknod, no root).
newc_entry() { # name mode rdevmajor rdevminor
  local name=$1 n=$(( ${#1} + 1 ))
  printf '070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X' \
    1 "$2" 0 0 1 0 0 0 0 "$3" "$4" "$n" 0
  printf '%s\0' "$name"
  local pad=$(( (4 - (110 + n) % 4) % 4 ))
  head -c "$pad" /dev/zero
}
find "$root" -exec touch -h -d @0 {} +   # reproducible archive
(
  cd "$root"
  find . -mindepth 1 | sed 's|^\./||' | LC_ALL=C sort \
    | cpio --quiet -o -H newc -R 0:0 --reproducible
  { newc_entry dev/console $((0020600)) 5 1; newc_entry TRAILER!!! 0 0 0; }
) | lz4 -l -9 -q -c >"$work/initramfs.img"

# --- b. bootable disk: MBR (syslinux mbr.bin) + one FAT partition with syslinux ------
mbr=""
for f in /usr/lib/syslinux/mbr/mbr.bin /usr/lib/SYSLINUX/mbr.bin /usr/share/syslinux/mbr.bin; do
  [ -f "$f" ] && { mbr=$f; break; }
done
[ -n "$mbr" ] || { log "syslinux mbr.bin not found (install syslinux-common)"; exit 1; }
payload=$(( $(stat -c %s "$work/vmlinuz") + $(stat -c %s "$work/initramfs.img") ))
part_mib=$(( payload / 1048576 + 3 ))
cat >"$work/syslinux.cfg" <<'CFG'
DEFAULT tiny
PROMPT 0
TIMEOUT 0
LABEL tiny
  LINUX /vmlinuz
  INITRD /initrd.img
  APPEND console=tty0 console=ttyS0 quiet nokaslr
CFG
export MTOOLS_SKIP_CHECK=1 SOURCE_DATE_EPOCH=0
truncate -s "${part_mib}M" "$work/part.img"
mkfs.vfat -n TINYBOOT -h 2048 -i 4b565253 --invariant "$work/part.img" >/dev/null
mcopy -i "$work/part.img" "$work/vmlinuz" ::/vmlinuz
mcopy -i "$work/part.img" "$work/initramfs.img" ::/initrd.img
mcopy -i "$work/part.img" "$work/syslinux.cfg" ::/syslinux.cfg
syslinux --install "$work/part.img"
truncate -s "$(( part_mib + 1 ))M" "$work/disk.raw"
echo 'label: dos
label-id: 0x4b565253
start=2048, type=c, bootable' | sfdisk -q "$work/disk.raw"
dd if="$work/part.img" of="$work/disk.raw" bs=1M seek=1 conv=notrunc status=none
dd if="$mbr" of="$work/disk.raw" bs=440 count=1 conv=notrunc status=none
qemu-img convert -f raw -O qcow2 "$work/disk.raw" "$work/tiny.qcow2"

# Publish atomically-ish (disk last: it is the one the freshness check trusts most).
for f in vmlinuz initramfs.img tiny.qcow2; do
  cp "$work/$f" "$out/.$f.tmp" && mv -f "$out/.$f.tmp" "$out/$f"
done
cp "$root/etc/kubevirt-rs-guest" "$out/tiny.versions"
echo "$inputs" >"$out/tiny.inputs"
log "built $(cd "$out" && ls -s --block-size=K vmlinuz initramfs.img tiny.qcow2 | tr '\n' ' ')"
"$here/package.sh"   # not exec: the EXIT trap removes $work
