//! How this node runs containers: as host processes ([`Runtime::Process`], the original
//! path, kept for comparison in `make bench`) or in an OCI runtime ([`Runtime::Oci`]).
//!
//! In an OCI runtime, per pod `state_dir/<pod-uid>/` holds, besides the logs and records
//! of [`crate::process`]:
//! - `volumes/kubernetes.io~empty-dir/<volume>/`: the pod's `emptyDir` volumes (the
//!   kubelet's layout, so a component that finds a pod's sockets by its uid finds them
//!   on a real node too); `image` volumes are the image's tree in the node's cache,
//!   mounted read-only;
//! - `containers/<container>/`: the bundle (`config.json`) and the root filesystem, an
//!   overlay of the image's tree: its `upper/`, `work/` and mount point `rootfs/` (read-only
//!   for the container when `readOnlyRootFilesystem` says so);
//! - `<container>.init`: the container's first process and its start time, written by
//!   the shim (`kubevirt-rs-shim`), which the runner signals.
//!
//! Each container is started as `kubevirt-rs-shim INIT_FILE runc --root STATE run
//! --detach --bundle DIR --pid-file FILE <pod-uid>-<container>` under the usual wrapper:
//! the shim outlives the runner like any container process, learns the exit code as the
//! container's subreaper, and deletes the container from the runtime when it ends.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::{Container, Pod};
use registry::image::{ImageCache, PullPolicy};

use crate::oci;
use crate::spec::{Host, Launch, Refusal};

/// How containers run on this node.
#[derive(Debug)]
pub enum Runtime {
    /// Host processes: an image maps to a local binary, which runs as the runner's user
    /// in the runner's namespaces.
    Process { images: BTreeMap<String, PathBuf> },
    /// An OCI runtime: each container in its own namespaces, from its image.
    Oci(Oci),
}

/// An OCI runtime and what it needs.
#[derive(Debug)]
pub struct Oci {
    /// The runtime binary (runc).
    pub runc: PathBuf,
    /// The shim binary (`kubevirt-rs-shim`).
    pub shim: PathBuf,
    /// The runtime's state directory (`runc --root`).
    pub state: PathBuf,
    /// Where images are pulled and unpacked.
    pub images: ImageCache,
    /// The node's host-disk directories: a pod may mount its namespace's directory under
    /// one of them as a `hostPath` (made if missing), and no other path of the node.
    pub host_paths: Vec<PathBuf>,
}

/// The kubelet's directory for a pod's `emptyDir` volume.
pub fn empty_dir(pod_dir: &Path, volume: &str) -> PathBuf {
    pod_dir
        .join("volumes")
        .join("kubernetes.io~empty-dir")
        .join(volume)
}

fn container_dir(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join("containers").join(container)
}

/// The file the shim writes with the container's first process.
pub fn init_path(pod_dir: &Path, container: &str) -> PathBuf {
    pod_dir.join(format!("{container}.init"))
}

/// The pod's cgroup, the parent of its containers' in every hierarchy.
fn pod_cgroup(uid: &str) -> String {
    format!("/kubevirt-rs/pod{uid}")
}

/// The runtime's name for a container.
fn container_id(uid: &str, container: &str) -> String {
    format!("{uid}-{container}")
}

impl Oci {
    /// Everything a container needs before it starts: its image pulled, the pod's volumes
    /// made, its root filesystem and bundle written. Returns what to spawn.
    pub async fn prepare(
        &self,
        pod: &Pod,
        c: &Container,
        host: &Host<'_>,
        pod_dir: &Path,
    ) -> Result<Launch, Refusal> {
        if let Some(refusal) = oci::unsupported_volumes(pod, &self.host_paths) {
            return Err(refusal);
        }
        let image = c.image.clone().unwrap_or_default();
        let policy = PullPolicy::parse(c.image_pull_policy.as_deref());
        let pulled = self
            .images
            .pull(&image, policy)
            .await
            .map_err(|e| Refusal::Pull(e.to_string()))?;
        let io = |what: &str, path: &Path, e: std::io::Error| {
            Refusal::Config(format!("{what} {}: {e}", path.display()))
        };
        let mut volumes = BTreeMap::new();
        for v in pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
            if let Some(source) = &v.image {
                // An image volume: the image's tree from the node's cache, read-only.
                let reference = source.reference.clone().unwrap_or_default();
                let policy = PullPolicy::parse(source.pull_policy.as_deref());
                let tree = self
                    .images
                    .ensure(&reference, policy)
                    .await
                    .map_err(|e| Refusal::Pull(format!("volume {:?}: {e}", v.name)))?;
                volumes.insert(v.name.clone(), (tree, true));
            } else if let Some(h) = &v.host_path {
                // Checked above: the namespace's own host-disk directory.
                let dir = PathBuf::from(h.path.trim_end_matches('/'));
                make_shared_dir(&dir).map_err(|e| io("creating", &dir, e))?;
                volumes.insert(v.name.clone(), (dir, false));
            } else {
                let dir = empty_dir(pod_dir, &v.name);
                make_shared_dir(&dir).map_err(|e| io("creating", &dir, e))?;
                volumes.insert(v.name.clone(), (dir, false));
            }
        }
        let bundle = container_dir(pod_dir, &c.name);
        std::fs::create_dir_all(&bundle).map_err(|e| io("creating", &bundle, e))?;
        // Always the container's own overlay, never the shared tree itself: the runtime
        // makes mount points in the root before it makes it read-only.
        let rootfs = overlay(&pulled.tree, &bundle)
            .map_err(|e| io("mounting the overlay at", &bundle, e))?;
        let passwd = registry::image::file_in_image(&pulled.tree, &image, "/etc/passwd")
            .ok()
            .and_then(|p| std::fs::File::open(p).ok())
            .map(|f| {
                use std::io::Read;
                let mut text = String::new();
                let _ = f.take(1 << 20).read_to_string(&mut text);
                text
            })
            .unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let cgroup = format!("{}/{}", pod_cgroup(&uid), c.name);
        let devices = oci::node_devices();
        let paths = oci::Paths {
            rootfs: &rootfs,
            volumes: &volumes,
            cgroup: &cgroup,
            devices: &devices,
        };
        let config = pulled.config.config.clone().unwrap_or_default();
        let spec = oci::bundle_spec(pod, c, &config, &passwd, host, &paths)?;
        let config_file = bundle.join("config.json");
        spec.save(&config_file)
            .map_err(|e| Refusal::Config(format!("writing {}: {e}", config_file.display())))?;
        let pid_file = bundle.join("runc.pid");
        let _ = std::fs::remove_file(&pid_file);
        let init = init_path(pod_dir, &c.name);
        let _ = std::fs::remove_file(&init);
        let args = vec![
            init.display().to_string(),
            self.runc.display().to_string(),
            "--root".into(),
            self.state.display().to_string(),
            "run".into(),
            "--detach".into(),
            "--bundle".into(),
            bundle.display().to_string(),
            "--pid-file".into(),
            pid_file.display().to_string(),
            container_id(&uid, &c.name),
        ];
        Ok(Launch {
            container: c.name.clone(),
            image,
            program: self.shim.clone(),
            args,
            env: vec![("PATH".into(), "/usr/sbin:/usr/bin:/sbin:/bin".into())],
            working_dir: bundle,
        })
    }

    /// Removes what the runtime holds for the pod whose directory is `pod_dir`: its
    /// containers (killed if they still run) and their root filesystem mounts.
    pub fn cleanup(&self, pod_dir: &Path, uid: &str) {
        let containers = std::fs::read_dir(pod_dir.join("containers"))
            .into_iter()
            .flatten()
            .flatten();
        for entry in containers {
            let name = entry.file_name().to_string_lossy().into_owned();
            let _ = std::process::Command::new(&self.runc)
                .arg("--root")
                .arg(&self.state)
                .args(["delete", "--force", &container_id(uid, &name)])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
            let rootfs = entry.path().join("rootfs");
            if rootfs.is_dir() {
                let _ = nix::mount::umount2(&rootfs, nix::mount::MntFlags::MNT_DETACH);
            }
        }
        // The runtime removes each container's cgroup; the pod's, their parent, is ours.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        for mount in crate::cgroup::mount_points(&mounts, &["cgroup", "cgroup2"]) {
            let _ = std::fs::remove_dir(mount.join(pod_cgroup(uid).trim_start_matches('/')));
        }
    }
}

/// A directory every user of the pod may write, as the kubelet makes an `emptyDir`.
fn make_shared_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777))
}

/// A writable root filesystem: an overlay of the image's tree (never written) and the
/// container's own upper layer; mounted at `bundle/rootfs` unless it already is.
fn overlay(tree: &Path, bundle: &Path) -> std::io::Result<PathBuf> {
    let (upper, work, rootfs) = (
        bundle.join("upper"),
        bundle.join("work"),
        bundle.join("rootfs"),
    );
    for d in [&upper, &work, &rootfs] {
        std::fs::create_dir_all(d)?;
    }
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .any(|l| l.split_whitespace().nth(4) == rootfs.to_str());
    if !mounted {
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            tree.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &rootfs,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(options.as_str()),
        )
        .map_err(std::io::Error::from)?;
    }
    Ok(rootfs)
}
