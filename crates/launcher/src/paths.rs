//! Where a launcher keeps things on the node.
//!
//! - The image cache (`<cache>/images`), shared by every launcher on the node and kept
//!   between runs: `$KUBEVIRT_RS_CACHE`, else `$XDG_CACHE_HOME/kubevirt-rs`, else
//!   `~/.cache/kubevirt-rs`.
//! - The registry mirror configuration: `$KUBEVIRT_RS_CONFIG_DIR/registries.yaml`, else
//!   `/etc/kubevirt-rs/registries.yaml`.
//! - A per-VMI runtime directory (sockets, overlays, cloud-init ISOs, the console log),
//!   created at start and removed when the launcher exits: under `$KUBEVIRT_RS_RUN_DIR`,
//!   else `/var/lib/kubevirt-rs/launchers` for root, else `$XDG_RUNTIME_DIR/kubevirt-rs`.
//!   It lives on disk rather than tmpfs so overlays and empty disks do not take RAM.

use std::path::PathBuf;

/// The node-level locations, read once from the environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    pub cache: PathBuf,
    pub registries: PathBuf,
    pub run: PathBuf,
    /// Where `hostDisk` volumes may be (`$KUBEVIRT_RS_HOST_DISK_DIRS`, `:`-separated);
    /// `None` when unset: anywhere for `virt-launcher run`, nowhere in a pod.
    pub host_disk_dirs: Option<Vec<PathBuf>>,
    /// Where the pod mounted the VMI's images as image volumes
    /// (`$KUBEVIRT_RS_IMAGE_VOLUMES`): `volumes/<volume>/` per containerDisk and
    /// `kernel-boot/`. `None` (unset or empty): the launcher pulls them itself.
    pub image_volumes: Option<PathBuf>,
}

impl NodePaths {
    /// Reads the locations through `env` (tests pass a closure over a map).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Self {
        let home = env("HOME").unwrap_or_else(|| "/root".into());
        let cache = env("KUBEVIRT_RS_CACHE")
            .map(PathBuf::from)
            .or_else(|| env("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("kubevirt-rs")))
            .unwrap_or_else(|| PathBuf::from(&home).join(".cache/kubevirt-rs"));
        let registries = PathBuf::from(
            env("KUBEVIRT_RS_CONFIG_DIR").unwrap_or_else(|| "/etc/kubevirt-rs".into()),
        )
        .join("registries.yaml");
        let root = nix::unistd::geteuid().is_root();
        let run = env("KUBEVIRT_RS_RUN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| match env("XDG_RUNTIME_DIR") {
                Some(dir) if !root => PathBuf::from(dir).join("kubevirt-rs"),
                _ if root => PathBuf::from("/var/lib/kubevirt-rs/launchers"),
                _ => PathBuf::from(&home).join(".local/state/kubevirt-rs/launchers"),
            });
        let host_disk_dirs = env("KUBEVIRT_RS_HOST_DISK_DIRS").map(|v| {
            v.split(':')
                .filter(|d| !d.is_empty())
                .map(PathBuf::from)
                .collect()
        });
        let image_volumes = env("KUBEVIRT_RS_IMAGE_VOLUMES")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from);
        Self {
            cache,
            registries,
            run,
            host_disk_dirs,
            image_volumes,
        }
    }

    /// The process environment.
    pub fn from_process_env() -> Self {
        Self::from_env(|k| std::env::var(k).ok())
    }

    pub fn images(&self) -> PathBuf {
        self.cache.join("images")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn explicit_variables_win() {
        let env: HashMap<&str, &str> = [
            ("KUBEVIRT_RS_CACHE", "/c"),
            ("KUBEVIRT_RS_CONFIG_DIR", "/etc/x"),
            ("KUBEVIRT_RS_RUN_DIR", "/r"),
            ("KUBEVIRT_RS_HOST_DISK_DIRS", "/a:/b/c:"),
            ("KUBEVIRT_RS_IMAGE_VOLUMES", "/var/run/kubevirt/images"),
        ]
        .into();
        let p = NodePaths::from_env(|k| env.get(k).map(|v| v.to_string()));
        assert_eq!(p.cache, PathBuf::from("/c"));
        assert_eq!(p.images(), PathBuf::from("/c/images"));
        assert_eq!(p.registries, PathBuf::from("/etc/x/registries.yaml"));
        assert_eq!(p.run, PathBuf::from("/r"));
        assert_eq!(
            p.host_disk_dirs,
            Some(vec![PathBuf::from("/a"), PathBuf::from("/b/c")])
        );
        assert_eq!(
            p.image_volumes,
            Some(PathBuf::from("/var/run/kubevirt/images"))
        );
        let p = NodePaths::from_env(|k| (k == "KUBEVIRT_RS_IMAGE_VOLUMES").then(String::new));
        assert_eq!(p.image_volumes, None, "empty: the launcher pulls");
    }

    #[test]
    fn xdg_cache_is_the_fallback() {
        let p = NodePaths::from_env(|k| (k == "XDG_CACHE_HOME").then(|| "/xdg".to_string()));
        assert_eq!(p.cache, PathBuf::from("/xdg/kubevirt-rs"));
        assert_eq!(
            p.registries,
            PathBuf::from("/etc/kubevirt-rs/registries.yaml")
        );
    }
}
