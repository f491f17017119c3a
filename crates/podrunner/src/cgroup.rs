//! Resource limits through cgroup v2, where the host allows it: one cgroup per pod,
//! `kubevirt-rs/<pod-uid>` under the unified hierarchy, with `memory.max` and `cpu.max`
//! from the containers' limits. Without a writable unified hierarchy that offers the
//! `memory` and `cpu` controllers, limits are not enforced (logged once).

use std::fs;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};

/// The CFS period CPU limits are written with, in microseconds.
pub const CPU_PERIOD: u64 = 100_000;

/// Where pod cgroups go, if anywhere.
#[derive(Debug, Clone, Default)]
pub struct Cgroups {
    root: Option<PathBuf>,
}

impl Cgroups {
    /// Finds the unified hierarchy and prepares `kubevirt-rs` in it, or explains once why
    /// limits will not be enforced.
    pub fn detect() -> Self {
        let mount = fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| unified_mount(&m));
        let root = match mount {
            None => Err("no cgroup v2 (unified) hierarchy is mounted".to_owned()),
            Some(m) => prepare(&m),
        };
        match root {
            Ok(root) => {
                tracing::info!(cgroup = %root.display(), "pod resource limits are enforced");
                Self { root: Some(root) }
            }
            Err(why) => {
                tracing::warn!(reason = %why, "pod resource limits are not enforced");
                Self { root: None }
            }
        }
    }

    /// Creates the pod's cgroup with its limits; returns its `cgroup.procs`.
    pub fn pod(&self, uid: &str, pod: &Pod) -> Option<PathBuf> {
        let dir = self.root.as_ref()?.join(uid);
        let made = fs::create_dir_all(&dir).and_then(|()| {
            let (memory, cpu) = limits(pod);
            fs::write(
                dir.join("memory.max"),
                memory.map_or("max".to_owned(), |b| b.to_string()),
            )?;
            let quota = cpu.map_or("max".to_owned(), |m| (m * CPU_PERIOD / 1000).to_string());
            fs::write(dir.join("cpu.max"), format!("{quota} {CPU_PERIOD}"))
        });
        match made {
            Ok(()) => Some(dir.join("cgroup.procs")),
            Err(e) => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "pod cgroup not created");
                None
            }
        }
    }

    /// Removes the pod's cgroup (it must be empty by then).
    pub fn remove(&self, uid: &str) {
        if let Some(root) = &self.root {
            let _ = fs::remove_dir(root.join(uid));
        }
    }
}

/// The mount point of the cgroup2 filesystem in a mountinfo table.
fn unified_mount(mountinfo: &str) -> Option<PathBuf> {
    mount_points(mountinfo, &["cgroup2"]).into_iter().next()
}

/// The mount points of the filesystems of `types` in a mountinfo table (such as every
/// cgroup hierarchy, v1 and v2).
pub fn mount_points(mountinfo: &str, types: &[&str]) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            types
                .contains(&right.split_whitespace().next()?)
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .collect()
}

fn prepare(mount: &Path) -> Result<PathBuf, String> {
    let controllers = fs::read_to_string(mount.join("cgroup.controllers")).unwrap_or_default();
    let offered: Vec<&str> = controllers.split_whitespace().collect();
    if !(offered.contains(&"memory") && offered.contains(&"cpu")) {
        return Err(format!(
            "the cgroup v2 hierarchy at {} offers no memory and cpu controllers (they are bound to cgroup v1)",
            mount.display()
        ));
    }
    let root = mount.join("kubevirt-rs");
    let enable = |dir: &Path| fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu");
    fs::create_dir_all(&root)
        .and_then(|()| enable(mount))
        .and_then(|()| enable(&root))
        .map_err(|e| format!("{} is not writable: {e}", root.display()))?;
    Ok(root)
}

/// The pod's memory limit in bytes and CPU limit in millicores: the sums over its
/// containers, or none when any container has no such limit.
pub fn limits(pod: &Pod) -> (Option<u64>, Option<u64>) {
    let containers = pod.spec.as_ref().map(|s| s.containers.as_slice());
    let (memory, cpu): (Vec<_>, Vec<_>) = containers
        .unwrap_or_default()
        .iter()
        .map(container_limits)
        .unzip();
    let sum = |each: Vec<Option<u64>>| {
        each.into_iter()
            .sum::<Option<u64>>()
            .filter(|total| *total > 0)
    };
    (sum(memory), sum(cpu))
}

/// One container's memory limit in bytes and CPU limit in millicores, where it sets them.
pub fn container_limits(c: &Container) -> (Option<u64>, Option<u64>) {
    let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    let milli = |name: &str| api::quantity::parse_milli(&limits?.get(name)?.0).ok();
    let memory = milli("memory").and_then(|m| u64::try_from(m.div_ceil(1000)).ok());
    let cpu = milli("cpu").and_then(|m| u64::try_from(m).ok());
    (memory.filter(|b| *b > 0), cpu.filter(|m| *m > 0))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn the_unified_mount_is_found_in_mountinfo() {
        let table = "25 1 0:23 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
                     32 25 0:28 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n";
        assert_eq!(
            unified_mount(table),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(unified_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }

    #[test]
    fn limits_add_up_over_containers() {
        let pod = |containers| -> Pod {
            serde_json::from_value(json!({"spec": {"containers": containers}})).unwrap()
        };
        let limited = pod(json!([
            {"name": "a", "resources": {"limits": {"memory": "1Gi", "cpu": "1500m"}}},
            {"name": "b", "resources": {"limits": {"memory": "512Mi", "cpu": "1"}}},
        ]));
        assert_eq!(limits(&limited), (Some(1536 << 20), Some(2500)));
        let open = pod(json!([
            {"name": "a", "resources": {"limits": {"memory": "1Gi"}}},
            {"name": "b"},
        ]));
        assert_eq!(limits(&open), (None, None));
    }
}
