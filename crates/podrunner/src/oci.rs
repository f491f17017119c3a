//! Containers in an OCI runtime: the bundle a container runs from, decided without I/O
//! ([`bundle_spec`]), and its seccomp profile ([`runtime_default_seccomp`]).
//!
//! What a pod gets, as a kubelet with containerd would give it:
//! - the image's root filesystem as an overlay whose upper layer belongs to the container
//!   (the shared tree is never the root itself), read-only when `readOnlyRootFilesystem`
//!   says so (see [`crate::runtime`]);
//! - new mount, PID, IPC, UTS and cgroup namespaces; the node's network for now (every
//!   pod's IP is the node's);
//! - the command as Kubernetes composes it from the image's `Entrypoint` and `Cmd` and the
//!   container's `command` and `args`, `$(VAR)` expanded; the image's `Env`, then `env`;
//! - the user from `runAsUser`/`runAsGroup` (container over pod), else the image's
//!   `User`; `runAsNonRoot` refused for root; `supplementalGroups` and `fsGroup`;
//! - containerd's default capabilities but NET_RAW, with `drop` and `add` applied (`add`
//!   only within Kubernetes' baseline set); a non-root process keeps them only in its
//!   bounding set, as the kernel does for a non-root exec;
//!   `no_new_privs` always;
//! - seccomp: `RuntimeDefault` (also when nothing is said); `Unconfined` and `Localhost`
//!   are refused;
//! - cgroup limits from the container's `limits` (memory and CPU) and at most 4096
//!   processes, on cgroup v1 or v2 as the runtime finds them;
//! - the pod's `emptyDir` volumes, its `image` volumes (read-only, as Kubernetes' image
//!   volumes), and as `hostPath` only its namespace's directory under the node's
//!   host-disk directories; nothing else of the node;
//! - `/dev/kvm` when the container's limits ask for `devices.kubevirt.io/kvm`, the
//!   resource upstream's device plugin offers ([`DEVICES`]).
//!
//! Refused with a reason (the container waits with `CreateContainerConfigError`):
//! privileged containers, capabilities beyond the baseline, any other `hostPath` and every
//! other volume type, `subPath`, relative or unclean mount paths, a `workingDir` under
//! `/proc`.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod, SecurityContext};
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCpuBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder,
    LinuxDeviceType, LinuxMemoryBuilder, LinuxNamespace, LinuxNamespaceType, LinuxResourcesBuilder,
    LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArg, LinuxSeccompArgBuilder, LinuxSeccompBuilder,
    LinuxSeccompOperator, LinuxSyscallBuilder, Mount, MountBuilder, ProcessBuilder, RootBuilder,
    Spec, UserBuilder,
};
use registry::image::ImageConfig;

use crate::spec::{self, Host, Refusal};

/// The capabilities a container gets unless it drops them: containerd's defaults without
/// NET_RAW (pods share the node's network: raw sockets there would see its loopback).
pub const DEFAULT_CAPABILITIES: [&str; 13] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "FSETID",
    "FOWNER",
    "MKNOD",
    "SETGID",
    "SETUID",
    "SETFCAP",
    "SETPCAP",
    "NET_BIND_SERVICE",
    "SYS_CHROOT",
    "KILL",
    "AUDIT_WRITE",
];

/// The capabilities a container may `add`: Kubernetes' baseline Pod Security Standard
/// (containerd's defaults), nothing that reaches the node (NET_ADMIN, SYS_ADMIN,
/// SYS_TIME, NET_RAW while pods share the node's network, ...).
pub const ALLOWED_CAPABILITIES: [&str; 13] = DEFAULT_CAPABILITIES;

/// Devices a container gets by asking for the resource in its limits (a quantity above
/// zero), as device plugins hand them out: (resource, path, whether only a VMI's launcher
/// pod gets it). `/dev/kvm` as upstream's plugin names it; `/dev/userfaultfd` for
/// post-copy migration (a name of ours), which lifts `vm.unprivileged_userfaultfd` for
/// the process that has it and so goes to launchers only: pods that virt-controller made
/// for a VMI, the only ones the API server lets carry a VMI as their controller.
pub const DEVICES: [(&str, &str, bool); 2] = [
    ("devices.kubevirt.io/kvm", "/dev/kvm", false),
    ("devices.kubevirt.io/userfaultfd", "/dev/userfaultfd", true),
];

/// The number of processes (threads included) a container may have.
const PIDS_LIMIT: i64 = 4096;

/// A character device of the node: its path, major and minor numbers, and whether only
/// launcher pods get it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub path: String,
    pub major: i64,
    pub minor: i64,
    pub launchers_only: bool,
}

/// Whether `pod` is a VMI's launcher: its controller is a VirtualMachineInstance.
fn is_launcher(pod: &Pod) -> bool {
    pod.metadata.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true)
            && o.kind == "VirtualMachineInstance"
            && o.api_version.starts_with("kubevirt.io/")
    })
}

/// The [`DEVICES`] this node has, by resource.
pub fn node_devices() -> BTreeMap<String, Device> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    DEVICES
        .iter()
        .filter_map(|(resource, path, launchers_only)| {
            let meta = std::fs::metadata(path).ok()?;
            meta.file_type().is_char_device().then(|| {
                let rdev = meta.rdev();
                let device = Device {
                    path: (*path).to_owned(),
                    major: i64::from(libc::major(rdev)),
                    minor: i64::from(libc::minor(rdev)),
                    launchers_only: *launchers_only,
                };
                ((*resource).to_owned(), device)
            })
        })
        .collect()
}

/// Where one container's pieces are on the node.
#[derive(Debug, Clone)]
pub struct Paths<'a> {
    /// The root filesystem the runtime mounts: the image's tree, or its overlay.
    pub rootfs: &'a Path,
    /// Per volume name, its directory on the node and whether it is read-only (an
    /// `emptyDir` is not, an `image` volume is).
    pub volumes: &'a BTreeMap<String, (PathBuf, bool)>,
    /// The container's cgroup, relative to the hierarchy's root.
    pub cgroup: &'a str,
    /// The devices of the node a container may ask for ([`node_devices`]).
    pub devices: &'a BTreeMap<String, Device>,
}

/// Why the pod's volumes cannot be given: `None` when every volume is an `emptyDir`, an
/// `image`, or a `hostPath` that is exactly its namespace's directory under one of
/// `host_paths` (the node's host-disk directories).
pub fn unsupported_volumes(pod: &Pod, host_paths: &[PathBuf]) -> Option<Refusal> {
    let volumes = pod.spec.as_ref()?.volumes.as_ref()?;
    let namespace = pod.metadata.namespace.as_deref().unwrap_or_default();
    let allowed = |path: &str| {
        api::validate::dns1123_label(namespace).is_ok()
            && host_paths
                .iter()
                .any(|root| Path::new(path.trim_end_matches('/')) == root.join(namespace))
    };
    let other = volumes.iter().find(|v| match &v.host_path {
        Some(h) => !allowed(&h.path),
        None => v.empty_dir.is_none() && v.image.is_none(),
    })?;
    Some(Refusal::Config(format!(
        "volume {:?}: the kubevirt-rs pod runner gives pods emptyDir and image volumes, and hostPath only for their namespace's host-disk directory",
        other.name
    )))
}

/// Whether the container's root filesystem is read-only.
fn read_only_root(c: &Container) -> bool {
    c.security_context
        .as_ref()
        .and_then(|s| s.read_only_root_filesystem)
        .unwrap_or(false)
}

/// The runtime configuration of container `c` of `pod`, or why it cannot run.
pub fn bundle_spec(
    pod: &Pod,
    c: &Container,
    image: &ImageConfig,
    passwd: &str,
    host: &Host<'_>,
    paths: &Paths<'_>,
) -> Result<Spec, Refusal> {
    let pod_spec = pod.spec.clone().unwrap_or_default();
    let pod_security = pod_spec.security_context.clone().unwrap_or_default();
    let security = c.security_context.clone().unwrap_or_default();
    if security.privileged == Some(true) {
        return Err(Refusal::Config(
            "privileged containers are not run by the kubevirt-rs pod runner".into(),
        ));
    }
    seccomp(&security, pod_security.seccomp_profile.as_ref())?;

    // The environment and the command line, as Kubernetes composes them.
    let image_env: BTreeMap<String, String> = image
        .env
        .iter()
        .flatten()
        .filter_map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
        })
        .collect();
    let (env, defined) = spec::environment(pod, c, host, &image_env)?;
    let mut argv: Vec<String> = match (&c.command, &c.args) {
        (Some(command), args) => command
            .iter()
            .chain(args.iter().flatten())
            .cloned()
            .collect(),
        (None, Some(args)) => image
            .entrypoint
            .iter()
            .flatten()
            .chain(args)
            .cloned()
            .collect(),
        (None, None) => image
            .entrypoint
            .iter()
            .flatten()
            .chain(image.cmd.iter().flatten())
            .cloned()
            .collect(),
    };
    argv = argv
        .iter()
        .map(|a| spec::expand(a, |n| defined.get(n).cloned()))
        .collect();
    if argv.is_empty() {
        return Err(Refusal::Config(
            "no command: neither the container nor its image names one".into(),
        ));
    }

    // The user.
    let (image_uid, image_gid) = image_user(image.user.as_deref(), passwd)?;
    let uid = security
        .run_as_user
        .or(pod_security.run_as_user)
        .map_or(Ok(image_uid), |u| {
            u32::try_from(u).map_err(|_| bad_id("runAsUser", u))
        })?;
    let gid = match security.run_as_group.or(pod_security.run_as_group) {
        Some(g) => u32::try_from(g).map_err(|_| bad_id("runAsGroup", g))?,
        None if security.run_as_user.or(pod_security.run_as_user).is_some() => {
            primary_group(passwd, uid).unwrap_or(0)
        }
        None => image_gid,
    };
    let non_root = security.run_as_non_root.or(pod_security.run_as_non_root) == Some(true);
    if non_root && uid == 0 {
        return Err(Refusal::Config(
            "container has runAsNonRoot and image will run as root".into(),
        ));
    }
    let mut groups: Vec<u32> = Vec::new();
    for g in pod_security
        .supplemental_groups
        .iter()
        .flatten()
        .chain(pod_security.fs_group.iter())
    {
        groups.push(u32::try_from(*g).map_err(|_| bad_id("supplementalGroups", *g))?);
    }
    let user = UserBuilder::default()
        .uid(uid)
        .gid(gid)
        .additional_gids(groups)
        .build()
        .map_err(config_error)?;

    let caps = capabilities(&security)?;
    let mut process_caps = oci_spec::runtime::LinuxCapabilities::default();
    process_caps.set_bounding(Some(caps.clone()));
    let granted = if uid == 0 { caps } else { HashSet::new() };
    process_caps.set_effective(Some(granted.clone()));
    process_caps.set_permitted(Some(granted));
    process_caps.set_inheritable(Some(HashSet::new()));
    process_caps.set_ambient(Some(HashSet::new()));

    let cwd = c
        .working_dir
        .clone()
        .or_else(|| image.working_dir.clone())
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| "/".into());
    if !cwd.starts_with('/') {
        return Err(Refusal::Config(format!(
            "workingDir {cwd:?} is not an absolute path"
        )));
    }
    // The runtime's own descriptors live under /proc: never a place to start in.
    if Path::new(&cwd).starts_with("/proc") {
        return Err(Refusal::Config(format!(
            "workingDir {cwd:?} is under /proc"
        )));
    }
    let process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(argv)
        .env(
            env.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>(),
        )
        .cwd(cwd)
        .no_new_privileges(true)
        .capabilities(process_caps)
        .build()
        .map_err(config_error)?;

    let mut mounts = oci_spec::runtime::get_default_mounts();
    mounts.extend(volume_mounts(c, paths.volumes)?);

    let (memory, cpu) = crate::cgroup::container_limits(c);
    let mut resources = LinuxResourcesBuilder::default();
    if let Some(bytes) = memory {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        resources = resources.memory(
            LinuxMemoryBuilder::default()
                .limit(bytes)
                .swap(bytes)
                .build()
                .map_err(config_error)?,
        );
    }
    if let Some(millis) = cpu {
        let quota = i64::try_from(millis.saturating_mul(crate::cgroup::CPU_PERIOD) / 1000)
            .unwrap_or(i64::MAX);
        resources = resources.cpu(
            LinuxCpuBuilder::default()
                .quota(quota)
                .period(crate::cgroup::CPU_PERIOD)
                .build()
                .map_err(config_error)?,
        );
    }
    let asked = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    let mut devices = Vec::new();
    let mut device_rules = Vec::new();
    for (resource, device) in paths.devices {
        let (path, major, minor) = (device.path.as_str(), device.major, device.minor);
        let wanted = asked
            .and_then(|l| l.get(resource))
            .and_then(|q| api::quantity::parse_milli(&q.0).ok())
            .is_some_and(|m| m > 0);
        if wanted && (!device.launchers_only || is_launcher(pod)) {
            devices.push(
                LinuxDeviceBuilder::default()
                    .path(path)
                    .typ(LinuxDeviceType::C)
                    .major(major)
                    .minor(minor)
                    .file_mode(0o666u32)
                    .uid(0u32)
                    .gid(0u32)
                    .build()
                    .map_err(config_error)?,
            );
            device_rules.push(
                LinuxDeviceCgroupBuilder::default()
                    .allow(true)
                    .typ(LinuxDeviceType::C)
                    .major(major)
                    .minor(minor)
                    .access("rwm")
                    .build()
                    .map_err(config_error)?,
            );
        }
    }
    if !device_rules.is_empty() {
        resources = resources.devices(device_rules);
    }
    resources = resources.pids(
        oci_spec::runtime::LinuxPidsBuilder::default()
            .limit(PIDS_LIMIT)
            .build()
            .map_err(config_error)?,
    );
    let namespaces: Vec<LinuxNamespace> = oci_spec::runtime::get_default_namespaces()
        .into_iter()
        // The node's network, until pods have their own (see the module's documentation).
        .filter(|n| n.typ() != LinuxNamespaceType::Network)
        .collect();
    let linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .resources(resources.build().map_err(config_error)?)
        .cgroups_path(PathBuf::from(paths.cgroup))
        .devices(devices)
        .masked_paths({
            // runc's current list: the default plus the energy counters (RAPL).
            let mut masked = oci_spec::runtime::get_default_maskedpaths();
            masked.push("/sys/devices/virtual/powercap".into());
            masked
        })
        .readonly_paths(oci_spec::runtime::get_default_readonly_paths())
        .seccomp(runtime_default_seccomp())
        .build()
        .map_err(config_error)?;
    let hostname = pod_spec
        .hostname
        .clone()
        .or_else(|| pod.metadata.name.clone())
        .unwrap_or_default()
        .chars()
        .take(63)
        .collect::<String>();
    let root = RootBuilder::default()
        .path(paths.rootfs)
        .readonly(read_only_root(c))
        .build()
        .map_err(config_error)?;
    let mut spec = Spec::default();
    spec.set_process(Some(process));
    spec.set_root(Some(root));
    spec.set_hostname(Some(hostname));
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    Ok(spec)
}

fn config_error(e: oci_spec::OciSpecError) -> Refusal {
    Refusal::Config(format!("runtime configuration: {e}"))
}

fn bad_id(field: &str, value: i64) -> Refusal {
    Refusal::Config(format!("{field} {value} is not a valid id"))
}

/// Only the runtime's default profile is offered.
fn seccomp(
    security: &SecurityContext,
    pod: Option<&k8s_openapi::api::core::v1::SeccompProfile>,
) -> Result<(), Refusal> {
    let profile = security.seccomp_profile.as_ref().or(pod);
    match profile.map(|p| p.type_.as_str()) {
        None | Some("RuntimeDefault") => Ok(()),
        Some(other) => Err(Refusal::Config(format!(
            "seccompProfile {other}: the kubevirt-rs pod runner runs every container under RuntimeDefault"
        ))),
    }
}

/// containerd's defaults, then `drop` (`ALL` drops every one), then `add`.
fn capabilities(security: &SecurityContext) -> Result<HashSet<Capability>, Refusal> {
    let parse = |name: &str| {
        let plain = name.strip_prefix("CAP_").unwrap_or(name);
        plain
            .parse::<Capability>()
            .map_err(|_| Refusal::Config(format!("capability {name:?} is not known")))
    };
    let mut caps: HashSet<Capability> = DEFAULT_CAPABILITIES
        .iter()
        .map(|c| parse(c))
        .collect::<Result<_, _>>()?;
    let asked = security.capabilities.clone().unwrap_or_default();
    for name in asked.drop.iter().flatten() {
        if name == "ALL" {
            caps.clear();
        } else {
            caps.remove(&parse(name)?);
        }
    }
    for name in asked.add.iter().flatten() {
        let plain = name.strip_prefix("CAP_").unwrap_or(name);
        if !ALLOWED_CAPABILITIES.contains(&plain) {
            return Err(Refusal::Config(format!(
                "capability {name:?} may not be added: the kubevirt-rs pod runner allows only the baseline set ({})",
                ALLOWED_CAPABILITIES.join(", ")
            )));
        }
        caps.insert(parse(name)?);
    }
    Ok(caps)
}

/// The image's `User`: `uid`, `uid:gid`, or names looked up in the image's `/etc/passwd`
/// (`passwd`); root when unset.
fn image_user(user: Option<&str>, passwd: &str) -> Result<(u32, u32), Refusal> {
    let user = user.unwrap_or_default();
    if user.is_empty() {
        return Ok((0, 0));
    }
    let (name, group) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let entry = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| {
            f.first() == Some(&name) || (f.get(2) == Some(&name) && name.parse::<u32>().is_ok())
        });
    let uid = match name.parse::<u32>() {
        Ok(uid) => uid,
        Err(_) => entry
            .as_ref()
            .and_then(|f| f.get(2)?.parse().ok())
            .ok_or_else(|| {
                Refusal::Config(format!(
                    "the image's user {name:?} is not in its /etc/passwd"
                ))
            })?,
    };
    let gid = match group {
        Some(g) => g
            .parse::<u32>()
            .map_err(|_| Refusal::Config(format!("the image's group {g:?} is not a number")))?,
        None => entry.and_then(|f| f.get(3)?.parse().ok()).unwrap_or(0),
    };
    Ok((uid, gid))
}

/// The primary group of `uid` in an `/etc/passwd`.
fn primary_group(passwd: &str, uid: u32) -> Option<u32> {
    passwd.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.get(2)?.parse::<u32>().ok()? == uid).then(|| f.get(3)?.parse().ok())?
    })
}

/// The container's volume mounts: each a volume of the pod, at a clean absolute path.
fn volume_mounts(
    c: &Container,
    volumes: &BTreeMap<String, (PathBuf, bool)>,
) -> Result<Vec<Mount>, Refusal> {
    let mut mounts = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        // Plain names below the root (a trailing slash aside): no `.`, `..` or empty step.
        let trimmed = m.mount_path.trim_end_matches('/');
        let clean = m.mount_path.starts_with('/')
            && trimmed
                .split('/')
                .skip(1)
                .all(|step| !step.is_empty() && step != "." && step != "..")
            && !trimmed.is_empty();
        if !clean {
            return Err(Refusal::Config(format!(
                "volumeMount {:?}: mountPath {:?} is not a clean absolute path",
                m.name, m.mount_path
            )));
        }
        if m.sub_path.as_deref().is_some_and(|s| !s.is_empty())
            || m.sub_path_expr.as_deref().is_some_and(|s| !s.is_empty())
        {
            return Err(Refusal::Config(format!(
                "volumeMount {:?}: subPath is not supported by the kubevirt-rs pod runner",
                m.name
            )));
        }
        let (source, read_only) = volumes.get(&m.name).ok_or_else(|| {
            Refusal::Config(format!(
                "volumeMount {:?}: the pod has no such volume",
                m.name
            ))
        })?;
        let mut options = vec!["rbind".to_owned(), "nosuid".to_owned(), "nodev".to_owned()];
        let ro = *read_only || m.read_only == Some(true);
        options.push(if ro { "ro" } else { "rw" }.to_owned());
        mounts.push(
            MountBuilder::default()
                .destination(&m.mount_path)
                .typ("bind")
                .source(source)
                .options(options)
                .build()
                .map_err(config_error)?,
        );
    }
    Ok(mounts)
}

/// The system calls `RuntimeDefault` refuses (with `EPERM`): those Docker's and
/// containerd's default profile leaves out, which reach the kernel's global state (modules,
/// clocks, swap, reboot, keyrings, BPF, the kernel log, tracing other processes' memory),
/// mount or change namespaces, open files by handle, or are io_uring (Docker refuses it
/// too). The filter knows x86-64 calls only: a 32-bit or x32 call kills the process.
pub const REFUSED_SYSCALLS: [&str; 54] = [
    "_sysctl",
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "open_tree_attr",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "quotactl_fd",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "syslog",
    "umount",
    "umount2",
    "uselib",
    "ustat",
    "vm86",
    "vm86old",
];

/// The profile `RuntimeDefault` means here: everything allowed except
/// [`REFUSED_SYSCALLS`], `unshare`, and `clone` with a new user namespace.
pub fn runtime_default_seccomp() -> LinuxSeccomp {
    let refuse = |names: Vec<String>, args: Vec<LinuxSeccompArg>| {
        let mut b = LinuxSyscallBuilder::default()
            .names(names)
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::EPERM as u32);
        if !args.is_empty() {
            b = b.args(args);
        }
        b.build().expect("every field of the rule is set")
    };
    let arg = |index: usize, value: u64, two: u64, op: LinuxSeccompOperator| {
        LinuxSeccompArgBuilder::default()
            .index(index)
            .value(value)
            .value_two(two)
            .op(op)
            .build()
            .expect("every field of the argument is set")
    };
    let new_user = libc::CLONE_NEWUSER as u64;
    let syscalls = vec![
        refuse(
            REFUSED_SYSCALLS.iter().map(|s| (*s).to_owned()).collect(),
            vec![],
        ),
        refuse(vec!["unshare".into()], vec![]),
        refuse(
            vec!["clone".into()],
            vec![arg(
                0,
                new_user,
                new_user,
                LinuxSeccompOperator::ScmpCmpMaskedEq,
            )],
        ),
        // clone3 passes its flags in memory a filter cannot read: refused with ENOSYS so
        // libc falls back to clone, which the rule above checks.
        LinuxSyscallBuilder::default()
            .names(vec!["clone3".to_owned()])
            .action(LinuxSeccompAction::ScmpActErrno)
            .errno_ret(libc::ENOSYS as u32)
            .build()
            .expect("every field of the rule is set"),
    ];
    LinuxSeccompBuilder::default()
        .default_action(LinuxSeccompAction::ScmpActAllow)
        .architectures(vec![oci_spec::runtime::Arch::ScmpArchX86_64])
        .syscalls(syscalls)
        .build()
        .expect("every field of the profile is set")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn pod(container: serde_json::Value, spec: serde_json::Value) -> Pod {
        let mut s = json!({"containers": [container]});
        if let (Some(a), serde_json::Value::Object(b)) = (s.as_object_mut(), spec) {
            a.extend(b);
        }
        serde_json::from_value(
            json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u"}, "spec": s}),
        )
        .unwrap()
    }

    fn image(config: serde_json::Value) -> ImageConfig {
        serde_json::from_value(config).unwrap()
    }

    const PASSWD: &str = "root:x:0:0::/:/bin/sh\nqemu:x:107:108::/:/bin/sh\n";

    fn spec_of(p: &Pod, i: &ImageConfig) -> Result<Spec, Refusal> {
        let env = BTreeMap::new();
        let images = BTreeMap::new();
        let host = Host {
            node_name: "n",
            node_ip: "127.0.0.1",
            images: &images,
            env: &env,
        };
        let volumes = BTreeMap::from([("data".to_owned(), (PathBuf::from("/node/data"), false))]);
        let devices = BTreeMap::from([
            (
                "devices.kubevirt.io/kvm".to_owned(),
                Device {
                    path: "/dev/kvm".into(),
                    major: 10,
                    minor: 232,
                    launchers_only: false,
                },
            ),
            (
                "devices.kubevirt.io/userfaultfd".to_owned(),
                Device {
                    path: "/dev/userfaultfd".into(),
                    major: 10,
                    minor: 257,
                    launchers_only: true,
                },
            ),
        ]);
        let paths = Paths {
            rootfs: Path::new("/node/rootfs"),
            volumes: &volumes,
            cgroup: "/k/pod/c",
            devices: &devices,
        };
        bundle_spec(
            p,
            &p.spec.as_ref().unwrap().containers[0],
            i,
            PASSWD,
            &host,
            &paths,
        )
    }

    fn args(s: &Spec) -> Vec<String> {
        s.process().as_ref().unwrap().args().clone().unwrap()
    }

    #[test]
    fn the_command_is_composed_as_kubernetes_composes_it() {
        let i = image(json!({"Entrypoint": ["/ep"], "Cmd": ["default"]}));
        let run = |c| args(&spec_of(&pod(c, json!({})), &i).unwrap());
        assert_eq!(run(json!({"name": "c"})), ["/ep", "default"]);
        assert_eq!(run(json!({"name": "c", "args": ["x"]})), ["/ep", "x"]);
        assert_eq!(run(json!({"name": "c", "command": ["/bin/x"]})), ["/bin/x"]);
        assert_eq!(
            run(
                json!({"name": "c", "command": ["/bin/x"], "args": ["$(A)"], "env": [{"name": "A", "value": "1"}]})
            ),
            ["/bin/x", "1"]
        );
        let err = spec_of(&pod(json!({"name": "c"}), json!({})), &image(json!({}))).unwrap_err();
        assert!(err.to_string().contains("no command"), "{err}");
    }

    #[test]
    fn the_user_comes_from_the_security_context_or_the_image() {
        let user = |c, spec, i: &ImageConfig| {
            let s = spec_of(&pod(c, spec), i).unwrap();
            let u = s.process().as_ref().unwrap().user().clone();
            (u.uid(), u.gid())
        };
        let sh = json!({"name": "c", "command": ["sh"]});
        assert_eq!(user(sh.clone(), json!({}), &image(json!({}))), (0, 0));
        assert_eq!(
            user(sh.clone(), json!({}), &image(json!({"User": "qemu"}))),
            (107, 108)
        );
        assert_eq!(
            user(sh.clone(), json!({}), &image(json!({"User": "5:6"}))),
            (5, 6)
        );
        let pod_level = json!({"securityContext": {"runAsUser": 107}});
        assert_eq!(user(sh.clone(), pod_level, &image(json!({}))), (107, 108));
        let both = json!({"name": "c", "command": ["sh"], "securityContext": {"runAsUser": 9, "runAsGroup": 10}});
        assert_eq!(
            user(
                both,
                json!({"securityContext": {"runAsUser": 107}}),
                &image(json!({}))
            ),
            (9, 10)
        );
        let err = spec_of(&pod(sh, json!({})), &image(json!({"User": "nobody"}))).unwrap_err();
        assert!(err.to_string().contains("\"nobody\""), "{err}");
    }

    #[test]
    fn capabilities_are_containerds_with_drop_and_add_and_none_effective_for_non_root() {
        let caps = |c| {
            let s = spec_of(&pod(c, json!({})), &image(json!({}))).unwrap();
            s.process()
                .as_ref()
                .unwrap()
                .capabilities()
                .clone()
                .unwrap()
        };
        let root = caps(json!({"name": "c", "command": ["sh"]}));
        assert_eq!(
            root.bounding().as_ref().unwrap().len(),
            DEFAULT_CAPABILITIES.len()
        );
        assert_eq!(root.effective(), root.bounding());
        let user = caps(
            json!({"name": "c", "command": ["sh"], "securityContext": {"runAsUser": 107,
            "capabilities": {"drop": ["ALL"], "add": ["NET_BIND_SERVICE"]}}}),
        );
        assert_eq!(
            user.bounding().as_ref().unwrap().iter().collect::<Vec<_>>(),
            [&Capability::NetBindService]
        );
        assert!(user.effective().as_ref().unwrap().is_empty());
        let err = spec_of(
            &pod(json!({"name": "c", "command": ["sh"], "securityContext": {"capabilities": {"add": ["BOGUS"]}}}), json!({})),
            &image(json!({})),
        )
        .unwrap_err();
        assert!(err.to_string().contains("BOGUS"), "{err}");
        // Nothing beyond the baseline: no capability that reaches the node.
        for cap in [
            "SYS_ADMIN",
            "NET_ADMIN",
            "CAP_SYS_TIME",
            "NET_RAW",
            "SYS_PTRACE",
        ] {
            let err = spec_of(
                &pod(json!({"name": "c", "command": ["sh"], "securityContext": {"capabilities": {"add": [cap]}}}), json!({})),
                &image(json!({})),
            )
            .unwrap_err();
            assert!(err.to_string().contains("may not be added"), "{cap}: {err}");
        }
        assert!(
            !root
                .bounding()
                .as_ref()
                .unwrap()
                .contains(&Capability::NetRaw)
        );
    }

    #[test]
    fn what_would_weaken_the_sandbox_is_refused_with_a_reason() {
        let refused = |c, spec| {
            spec_of(&pod(c, spec), &image(json!({})))
                .unwrap_err()
                .to_string()
        };
        let c = |extra: serde_json::Value| {
            let mut c = json!({"name": "c", "command": ["sh"]});
            c.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            c
        };
        assert!(
            refused(
                c(json!({"securityContext": {"privileged": true}})),
                json!({})
            )
            .contains("privileged")
        );
        assert!(
            refused(
                c(json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}})),
                json!({})
            )
            .contains("RuntimeDefault")
        );
        assert!(
            refused(
                c(json!({"securityContext": {"runAsNonRoot": true}})),
                json!({})
            )
            .contains("runAsNonRoot")
        );
        for path in ["relative", "/a/../etc", "/a/./b", "/", "//etc"] {
            let m = c(json!({"volumeMounts": [{"name": "data", "mountPath": path}]}));
            assert!(
                refused(m, json!({})).contains("clean absolute path"),
                "{path}"
            );
        }
        let sub =
            c(json!({"volumeMounts": [{"name": "data", "mountPath": "/d", "subPath": "../.."}]}));
        assert!(refused(sub, json!({})).contains("subPath"));
        let other = c(json!({"volumeMounts": [{"name": "other", "mountPath": "/d"}]}));
        assert!(refused(other, json!({})).contains("no such volume"));
        // hostPath: only the pod's namespace's directory under a host-disk directory.
        let roots = [PathBuf::from("/data/host-disks")];
        let host = |path: &str| {
            let p = pod(
                c(json!({})),
                json!({"volumes": [{"name": "h", "hostPath": {"path": path}}]}),
            );
            unsupported_volumes(&p, &roots).map(|r| r.to_string())
        };
        assert_eq!(host("/data/host-disks/ns"), None);
        assert_eq!(host("/data/host-disks/ns/"), None);
        for path in [
            "/",
            "/etc",
            "/data/host-disks",
            "/data/host-disks/other",
            "/data/host-disks/ns/sub",
            "/data/host-disks/ns/..",
        ] {
            let refused = host(path).unwrap_or_else(|| panic!("{path} was allowed"));
            assert!(
                refused.contains("hostPath only for their namespace's"),
                "{refused}"
            );
        }
    }

    #[test]
    fn a_device_comes_with_its_resource_and_its_cgroup_rule() {
        let with = spec_of(
            &pod(json!({"name": "c", "command": ["sh"], "resources": {"limits": {"devices.kubevirt.io/kvm": "1"}}}), json!({})),
            &image(json!({})),
        )
        .unwrap();
        let linux = with.linux().as_ref().unwrap();
        let devices = linux.devices().as_ref().unwrap();
        assert_eq!(devices.len(), 1);
        assert_eq!(devices[0].path(), Path::new("/dev/kvm"));
        assert_eq!(devices[0].file_mode(), Some(0o666));
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        assert_eq!(
            (rules[0].major(), rules[0].minor(), rules[0].allow()),
            (Some(10), Some(232), true)
        );
        let without = spec_of(
            &pod(json!({"name": "c", "command": ["sh"]}), json!({})),
            &image(json!({})),
        )
        .unwrap();
        assert!(
            without
                .linux()
                .as_ref()
                .unwrap()
                .devices()
                .as_ref()
                .is_none_or(Vec::is_empty)
        );
    }

    #[test]
    fn userfaultfd_goes_only_to_a_vmis_launcher_and_no_device_for_a_zero_quantity() {
        let paths_of = |p: &Pod| -> Vec<PathBuf> {
            let s = spec_of(p, &image(json!({}))).unwrap();
            let linux = s.linux().as_ref().unwrap();
            linux
                .devices()
                .iter()
                .flatten()
                .map(|d| d.path().clone())
                .collect()
        };
        let asking = |quantity: &str| {
            pod(
                json!({"name": "c", "command": ["sh"], "resources": {"limits": {
                    "devices.kubevirt.io/userfaultfd": quantity, "devices.kubevirt.io/kvm": quantity}}}),
                json!({}),
            )
        };
        // A tenant's own pod asks: /dev/kvm, as any device plugin's, but not userfaultfd.
        assert_eq!(paths_of(&asking("1")), [PathBuf::from("/dev/kvm")]);
        // A VMI's launcher (only virt-controller may make one) gets both.
        let mut launcher = asking("1");
        launcher.metadata.owner_references = Some(vec![
            serde_json::from_value(json!({
            "apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "name": "v", "uid": "u", "controller": true}))
            .unwrap(),
        ]);
        assert_eq!(
            paths_of(&launcher),
            [PathBuf::from("/dev/kvm"), PathBuf::from("/dev/userfaultfd")]
        );
        // A quantity of zero asks for nothing.
        assert!(paths_of(&asking("0")).is_empty());
    }

    #[test]
    fn the_bundle_keeps_the_node_network_and_takes_the_other_namespaces() {
        let s = spec_of(
            &pod(
                json!({"name": "c", "command": ["sh"],
            "resources": {"limits": {"memory": "64Mi", "cpu": "250m"}}}),
                json!({}),
            ),
            &image(json!({})),
        )
        .unwrap();
        let linux = s.linux().as_ref().unwrap();
        let kinds: Vec<LinuxNamespaceType> = linux
            .namespaces()
            .as_ref()
            .unwrap()
            .iter()
            .map(|n| n.typ())
            .collect();
        for kind in [
            LinuxNamespaceType::Pid,
            LinuxNamespaceType::Mount,
            LinuxNamespaceType::Ipc,
            LinuxNamespaceType::Uts,
        ] {
            assert!(kinds.contains(&kind), "{kind:?}");
        }
        assert!(!kinds.contains(&LinuxNamespaceType::Network));
        let resources = linux.resources().as_ref().unwrap();
        assert_eq!(resources.memory().as_ref().unwrap().limit(), Some(64 << 20));
        assert_eq!(resources.cpu().as_ref().unwrap().quota(), Some(25_000));
        assert!(s.process().as_ref().unwrap().no_new_privileges().unwrap());
        assert!(linux.seccomp().is_some());
    }
}
