#!/usr/bin/env bash
# A private, self-contained libvirt for the benchmark's baseline: the stack upstream KubeVirt
# runs in virt-launcher (a libvirt daemon for QEMU plus virtlogd), driven with `virsh create`.
#
#   libvirt.sh start       start libvirtd + virtlogd; prints the connection URI on stdout
#   libvirt.sh stop        destroy the domains, stop both daemons (pid files); no process is left
#   libvirt.sh uri         print the connection URI
#   libvirt.sh domain-xml NAME OVERLAY MEM_MIB VNC_SOCKET SERIAL_LOG
#                          print the domain XML equivalent to what our virt-launcher runs
#
# How it stays private without systemd, dbus or edits of /etc: the daemons run in their own
# mount namespace (unshare -m) in which /etc/libvirt, /run/libvirt, /var/lib/libvirt,
# /var/cache/libvirt and /var/log/libvirt are bind mounts of directories under $BASE.
# A privileged libvirtd hard-codes those paths (qemu.conf has no --config, and the
# virtlogd socket has no setting), so this is what keeps /etc untouched. Every other path,
# including the disks, sockets and logs named in the domain XML, is the same inside and
# outside; only don't put them under the five directories above. Clients reach the daemon
# with qemu:///system?socket=$BASE/run/libvirt-sock.
#
# Debian 12 ships only the monolithic libvirtd (no virtqemud). Upstream KubeVirt runs
# virtqemud, which is libvirtd with only the QEMU driver; LIBVIRT_DRIVER_DIR points
# libvirtd at a directory holding just that driver module, so it loads nothing else
# (no network, storage, nodedev, nwfilter, interface or secret driver).
#
# Why QEMU runs as root: /dev/kvm here is root-only. libvirt probes QEMU's capabilities with
# privileges (KVM looks present), then judges its cache stale whenever the configured QEMU
# user (libvirt-qemu) cannot open /dev/kvm, and re-probes on every lookup: dozens of probes,
# about 90 s, per `virsh create`. With QEMU as root both checks agree.
#
# QEMU runs as root, with no DAC relabelling, no security driver, no seccomp sandbox,
# no cgroups and no per-domain /dev namespace (upstream KubeVirt also disables the last two).
#
# The QEMU capability cache ($BASE/cache) is kept across start/stop: filling it costs
# QEMU probes (seconds to tens of seconds under TCG on a busy machine), so the first
# start pays for it; later ones reuse it. Environment:
#   KUBEVIRT_RS_LIBVIRT_DIR  base directory (default /var/lib/kubevirt-rs/libvirt)
#   LIBVIRT_SH_DEBUG=1       debug logs of the qemu driver in $BASE/log/libvirtd.log
#   LIBVIRT_SH_TB_MIB        TCG translation cache of the domain in MiB (default 64, as the launcher)
set -euo pipefail

BASE=${KUBEVIRT_RS_LIBVIRT_DIR:-/var/lib/kubevirt-rs/libvirt}
RUN=$BASE/run
URI="qemu:///system?socket=$RUN/libvirt-sock"
LIBVIRTD=/usr/sbin/libvirtd
VIRTLOGD=/usr/sbin/virtlogd
QEMU=${QEMU:-/usr/bin/qemu-system-x86_64}

die() { echo "libvirt.sh: $*" >&2; exit 1; }

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

answers() { virsh -q -c "$URI" version >/dev/null 2>&1; }

write_config() {
  mkdir -p "$BASE"/{etc,run,lib,cache,log,drivers}
  chmod 700 "$BASE"
  # Written every start, so edits here take effect on the next start.
  cat >"$BASE/etc/libvirtd.conf" <<'EOF'
# kubevirt-rs private libvirtd (scripts/libvirt.sh); seen as /etc/libvirt/libvirtd.conf
unix_sock_group = "root"
unix_sock_ro_perms = "0700"
unix_sock_rw_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
EOF
  if [ "${LIBVIRT_SH_DEBUG:-0}" = 1 ]; then
    sed -i 's/^log_outputs = "3:/log_outputs = "1:/' "$BASE/etc/libvirtd.conf"
    echo 'log_filters = "1:qemu 1:util.command 1:util.process 1:rpc.netserver 3:*"' >>"$BASE/etc/libvirtd.conf"
  fi
  cat >"$BASE/etc/virtlogd.conf" <<'EOF'
# kubevirt-rs private virtlogd (scripts/libvirt.sh); seen as /etc/libvirt/virtlogd.conf
log_outputs = "3:file:/var/log/libvirt/virtlogd.log"
EOF
  cat >"$BASE/etc/qemu.conf" <<'EOF'
# kubevirt-rs private qemu.conf (scripts/libvirt.sh); seen as /etc/libvirt/qemu.conf
# QEMU as root, so images and sockets under /var/lib/kubevirt-rs need no relabelling.
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
clear_emulator_capabilities = 0
seccomp_sandbox = 0
# No cgroups (no systemd/machined here) and no private /dev per domain, as upstream KubeVirt.
cgroup_controllers = [ ]
namespaces = [ ]
# QEMU's stdout/stderr and chardev logs go through virtlogd, as in KubeVirt.
stdio_handler = "logd"
EOF
  # Only the QEMU driver (virtqemud's set); see the header.
  local mod
  mod=$(ls /usr/lib/*/libvirt/connection-driver/libvirt_driver_qemu.so 2>/dev/null | head -n1)
  [ -n "$mod" ] || die "libvirt_driver_qemu.so not found (install libvirt-daemon-driver-qemu)"
  rm -f "$BASE"/drivers/*
  ln -s "$mod" "$BASE/drivers/libvirt_driver_qemu.so"
}

start() {
  command -v unshare >/dev/null || die "unshare (util-linux) is missing"
  [ -x "$LIBVIRTD" ] && [ -x "$VIRTLOGD" ] || die "libvirtd/virtlogd missing (apt-get install libvirt-daemon-system)"
  [ "$(id -u)" = 0 ] || die "must run as root"
  if alive "$RUN/libvirtd.pid" && alive "$RUN/virtlogd.pid" && answers; then
    echo "$URI"
    return
  fi
  stop >/dev/null 2>&1 || true
  write_config
  # Fresh runtime state; the capability cache in $BASE/cache is kept.
  rm -rf "$RUN" "$BASE/lib"
  mkdir -p "$RUN" "$BASE/lib"
  # The mount points: /run is a tmpfs that starts empty when systemd's tmpfiles did not run.
  mkdir -p /etc/libvirt /run/libvirt /var/lib/libvirt /var/cache/libvirt /var/log/libvirt
  # The daemons daemonize (-d) inside the new mount namespace; it lives as long as they do,
  # and the QEMU processes libvirtd starts inherit it.
  # libvirt 9.0 keys its capability cache on the host CPUID it reads in-process, including
  # leaf 0x1f's x2APIC ID (EDX), i.e. on which CPU the thread ran: unpinned, about every
  # other start finds the cache "outdated (host cpuid changed)" and re-probes QEMU (seconds).
  # So the daemons start pinned to CPU 0, and are unpinned once they answer.
  taskset -c 0 unshare --mount --propagation private -- env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C \
    LIBVIRT_DRIVER_DIR="$BASE/drivers" \
    bash -euo pipefail -c '
      b=$1
      mount --bind "$b/etc" /etc/libvirt
      mount --bind "$b/run" /run/libvirt
      mount --bind "$b/lib" /var/lib/libvirt
      mount --bind "$b/cache" /var/cache/libvirt
      mount --bind "$b/log" /var/log/libvirt
      "$2" -d -f /etc/libvirt/virtlogd.conf -p /run/libvirt/virtlogd.pid
      exec "$3" -d -f /etc/libvirt/libvirtd.conf -p /run/libvirt/libvirtd.pid
    ' libvirt-sh "$BASE" "$VIRTLOGD" "$LIBVIRTD" </dev/null >"$BASE/log/start.log" 2>&1 \
    || die "daemons failed to start: $(tail -n5 "$BASE/log/start.log")"
  local i
  for ((i = 0; i < 1200; i++)); do
    if answers; then
      unpin
      echo "$URI"
      return
    fi
    sleep 0.1
  done
  die "libvirtd does not answer on $URI; see $BASE/log/libvirtd.log"
}

# Every thread of both daemons back on all online CPUs (QEMU gets its own affinity from libvirt).
unpin() {
  local f all
  all=$(cat /sys/devices/system/cpu/online)
  for f in "$RUN/libvirtd.pid" "$RUN/virtlogd.pid"; do
    if alive "$f"; then taskset -a -p -c "$all" "$(cat "$f")" >/dev/null; fi
  done
}

stop() {
  if alive "$RUN/libvirtd.pid" && answers; then
    local d
    for d in $(virsh -q -c "$URI" list --name 2>/dev/null); do
      virsh -q -c "$URI" destroy "$d" >/dev/null 2>&1 || true
    done
  fi
  # QEMU processes libvirtd could not destroy (or left when it died).
  local f pid
  for f in "$BASE"/lib/qemu/*.pid "$RUN"/qemu/*.pid; do
    [ -f "$f" ] || continue
    pid=$(cat "$f" 2>/dev/null || true)
    if [ -n "$pid" ] && grep -qa qemu "/proc/$pid/cmdline" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
    fi
  done
  for f in "$RUN/libvirtd.pid" "$RUN/virtlogd.pid"; do
    alive "$f" || continue
    pid=$(cat "$f")
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -f "$RUN/libvirtd.pid" "$RUN/virtlogd.pid"
}

xml_escape() {
  local s=$1
  s=${s//&/&amp;}; s=${s//</&lt;}; s=${s//>/&gt;}; s=${s//\'/&apos;}; s=${s//\"/&quot;}
  printf '%s' "$s"
}

domain_xml() {
  [ $# = 5 ] || die "usage: libvirt.sh domain-xml NAME OVERLAY MEM_MIB VNC_SOCKET SERIAL_LOG"
  local name overlay mem vnc log tb
  name=$(xml_escape "$1"); overlay=$(xml_escape "$2"); vnc=$(xml_escape "$4"); log=$(xml_escape "$5")
  mem=$3
  tb=${LIBVIRT_SH_TB_MIB:-64}
  [[ $mem =~ ^[0-9]+$ ]] || die "MEM_MIB must be a number"
  [[ $tb =~ ^[0-9]+$ ]] || die "LIBVIRT_SH_TB_MIB must be a number"
  # The launcher's command line, element by element:
  #   -machine q35 -accel tcg,tb-size=64   -> type='qemu', machine q35, <tcg><tb-cache>
  #   -cpu max                             -> <cpu mode='maximum'>
  #   -smp 1, -m MEM                       -> <vcpu>, <memory>
  #   serial socket chardev with logfile   -> <serial type='pty'> with <log> (via virtlogd)
  #   virtio-serial + guest agent port     -> <channel type='unix'> org.qemu.guest_agent.0
  #   virtio-blk on a qcow2 overlay        -> <disk> bus virtio (writeback cache, discard unmap)
  #   -netdev user + virtio-net-pci        -> <interface type='user'> model virtio
  #   VGA + -vnc unix:SOCKET               -> <video> vga, <graphics type='vnc' socket=...>
  #   virtio-balloon free-page-reporting   -> <memballoon> with freePageReporting
  #   no USB controller                    -> <controller type='usb' model='none'>
  # libvirt adds on its own: pcie-root-ports for the devices, -audiodev none for VNC.
  cat <<EOF
<domain type='qemu'>
  <name>$name</name>
  <memory unit='MiB'>$mem</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <tcg><tb-cache unit='MiB'>$tb</tb-cache></tcg>
  </features>
  <cpu mode='maximum' check='none'/>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>$QEMU</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2' cache='writeback' discard='unmap'/>
      <source file='$overlay'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <controller type='usb' model='none'/>
    <interface type='user'>
      <model type='virtio'/>
    </interface>
    <serial type='pty'>
      <log file='$log' append='on'/>
      <target port='0'/>
    </serial>
    <console type='pty'>
      <target type='serial' port='0'/>
    </console>
    <channel type='unix'>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <graphics type='vnc' socket='$vnc'/>
    <video>
      <model type='vga'/>
    </video>
    <memballoon model='virtio' freePageReporting='on'/>
  </devices>
</domain>
EOF
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  uri) echo "$URI" ;;
  domain-xml) shift; domain_xml "$@" ;;
  *) die "usage: libvirt.sh start|stop|uri|domain-xml NAME OVERLAY MEM_MIB VNC_SOCKET SERIAL_LOG" ;;
esac
