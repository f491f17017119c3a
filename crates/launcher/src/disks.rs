//! Preparing a VMI's volumes on the node, before QEMU starts.
//!
//! - `containerDisk`: the image's disk, behind a per-VMI qcow2 overlay (`qemu-img create
//!   -b`), so the base is never written. The image comes from the node's cache, or in a
//!   sandboxed pod from the image volume the pod mounts ([`Images`]).
//! - `cloudInitNoCloud` / `cloudInitConfigDrive`: an ISO labelled `cidata` / `config-2`.
//! - `emptyDisk`: a sparse qcow2 of the requested capacity.
//! - `hostDisk`: a file on the node (`DiskOrCreate` makes a sparse raw file).
//! - `firmware.kernelBoot.container`: kernel and initrd files from the image.
//!
//! Everything made here lives in the VMI's runtime directory and goes with it.

use std::path::{Path, PathBuf};

use api::v1::{CloudInitSource, VirtualMachineInstance, Volume};
use base64::Engine;
use serde_json::json;
use tokio::process::Command;

use crate::image::{self, ImageCache, ImageError, PullPolicy};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("image {image}: not mounted in the launcher's pod (no {})", path.display())]
    NotMounted { image: String, path: PathBuf },
    #[error("{field}: {what} is not supported yet")]
    Unsupported { field: String, what: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{tool}: {message}")]
    Tool { tool: &'static str, message: String },
    #[error("disk image {path} refused: {why}")]
    Refused { path: String, why: String },
    #[error("{path}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskFormat {
    Qcow2,
    Raw,
}

impl DiskFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Qcow2 => "qcow2",
            Self::Raw => "raw",
        }
    }
}

/// A volume ready for QEMU to open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedVolume {
    pub name: String,
    pub path: PathBuf,
    pub format: DiskFormat,
    pub read_only: bool,
}

/// Kernel-boot files taken from an image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelBoot {
    pub kernel: Option<PathBuf>,
    pub initrd: Option<PathBuf>,
    pub args: Option<String>,
}

/// Everything the command line needs from the node.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    pub volumes: Vec<PreparedVolume>,
    pub kernel_boot: Option<KernelBoot>,
}

/// Where `hostDisk` volumes may be: anywhere (the standalone launcher, run by its user)
/// or only inside the listed directories (a pod, run for a namespace's user).
#[derive(Debug, Clone, Copy)]
pub enum HostDisks<'a> {
    Anywhere,
    Inside(&'a [PathBuf]),
}

/// Where the images a VMI names come from.
#[derive(Debug, Clone, Copy)]
pub enum Images<'a> {
    /// Pulled by the launcher into the node's cache (`virt-launcher run`, and a launcher
    /// that runs as a host process).
    Pull(&'a ImageCache),
    /// Mounted by the launcher's pod as image volumes under this directory:
    /// `volumes/<volume>/` per containerDisk, `kernel-boot/` for the kernel-boot image.
    Mounted(&'a Path),
}

/// The directory a pod mounts the containerDisk of `volume` at, below the image volumes.
pub fn mounted_volume(volume: &str) -> PathBuf {
    Path::new("volumes").join(volume)
}

/// The directory a pod mounts the kernel-boot image at, below the image volumes.
pub const MOUNTED_KERNEL_BOOT: &str = "kernel-boot";

impl Images<'_> {
    /// The unpacked tree of `image`, which the VMI names at `mounted` (relative to the
    /// image volumes) with `policy`.
    async fn tree(
        &self,
        image: &str,
        policy: Option<&str>,
        mounted: &Path,
    ) -> Result<PathBuf, DiskError> {
        match self {
            Self::Pull(cache) => Ok(cache.ensure(image, PullPolicy::parse(policy)).await?),
            Self::Mounted(dir) => {
                let tree = dir.join(mounted);
                if tree.is_dir() {
                    Ok(tree)
                } else {
                    Err(DiskError::NotMounted {
                        image: image.to_owned(),
                        path: tree,
                    })
                }
            }
        }
    }
}

/// Prepares every volume of `vmi` under `dir`.
pub async fn prepare(
    vmi: &VirtualMachineInstance,
    images: &Images<'_>,
    dir: &Path,
    host_disks: HostDisks<'_>,
) -> Result<Prepared, DiskError> {
    let disks_dir = dir.join("disks");
    std::fs::create_dir_all(&disks_dir).map_err(|e| io(&disks_dir, e))?;
    let mut prepared = Prepared::default();
    for (i, volume) in vmi.spec.volumes.iter().enumerate() {
        let field = format!("spec.volumes[{i}]");
        prepared
            .volumes
            .push(prepare_volume(vmi, volume, &field, images, &disks_dir, host_disks).await?);
    }
    if let Some(kb) = vmi
        .spec
        .domain
        .firmware
        .as_ref()
        .and_then(|f| f.kernel_boot.as_ref())
    {
        let mut boot = KernelBoot {
            args: kb.kernel_args.clone(),
            ..Default::default()
        };
        if let Some(c) = &kb.container {
            let tree = images
                .tree(
                    &c.image,
                    c.image_pull_policy.as_deref(),
                    Path::new(MOUNTED_KERNEL_BOOT),
                )
                .await?;
            boot.kernel = c
                .kernel_path
                .as_deref()
                .map(|p| image::file_in_image(&tree, &c.image, p))
                .transpose()?;
            boot.initrd = c
                .initrd_path
                .as_deref()
                .map(|p| image::file_in_image(&tree, &c.image, p))
                .transpose()?;
        }
        prepared.kernel_boot = Some(boot);
    }
    Ok(prepared)
}

async fn prepare_volume(
    vmi: &VirtualMachineInstance,
    v: &Volume,
    field: &str,
    images: &Images<'_>,
    dir: &Path,
    host_disks: HostDisks<'_>,
) -> Result<PreparedVolume, DiskError> {
    let out = |path: PathBuf, format, read_only| PreparedVolume {
        name: v.name.clone(),
        path,
        format,
        read_only,
    };
    if let Some(cd) = &v.container_disk {
        let tree = images
            .tree(
                &cd.image,
                cd.image_pull_policy.as_deref(),
                &mounted_volume(&v.name),
            )
            .await?;
        let base = image::container_disk_file(&tree, &cd.image, cd.path.as_deref())?;
        let overlay = dir.join(format!("{}.qcow2", v.name));
        let format = probe_format(&base).await?;
        qemu_img(
            &["create", "-q", "-f", "qcow2", "-F", format.as_str(), "-b"],
            &[&base, &overlay],
        )
        .await?;
        return Ok(out(overlay, DiskFormat::Qcow2, false));
    }
    if let Some(ci) = &v.cloud_init_no_cloud {
        let iso = dir.join(format!("{}.iso", v.name));
        nocloud_iso(vmi, ci, &format!("{field}.cloudInitNoCloud"), &iso).await?;
        return Ok(out(iso, DiskFormat::Raw, true));
    }
    if let Some(ci) = &v.cloud_init_config_drive {
        let iso = dir.join(format!("{}.iso", v.name));
        config_drive_iso(vmi, ci, &format!("{field}.cloudInitConfigDrive"), &iso).await?;
        return Ok(out(iso, DiskFormat::Raw, true));
    }
    if let Some(e) = &v.empty_disk {
        let bytes = api::quantity::to_units(&e.capacity).map_err(|err| DiskError::Invalid {
            field: format!("{field}.emptyDisk.capacity"),
            message: err.to_string(),
        })?;
        let disk = dir.join(format!("{}.qcow2", v.name));
        qemu_img(
            &["create", "-q", "-f", "qcow2"],
            &[&disk, Path::new(&bytes.to_string())],
        )
        .await?;
        return Ok(out(disk, DiskFormat::Qcow2, false));
    }
    if let Some(h) = &v.host_disk {
        let field = format!("{field}.hostDisk.path");
        let path = host_disk_path(&h.path, host_disks).map_err(|message| DiskError::Invalid {
            field: field.clone(),
            message,
        })?;
        if !path.exists() {
            if h.disk_type != "DiskOrCreate" {
                return Err(DiskError::Invalid {
                    field,
                    message: format!("{} does not exist", h.path),
                });
            }
            let bytes = h
                .capacity
                .as_ref()
                .and_then(|c| api::quantity::to_units(c).ok())
                .unwrap_or(0);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
            }
            // create_new: never take over a file that appeared meanwhile.
            let f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(&path)
                .map_err(|e| io(&path, e))?;
            f.set_len(bytes).map_err(|e| io(&path, e))?;
        }
        // Checked again now that it exists: a link placed meanwhile must not lead out.
        let path = host_disk_path(&h.path, host_disks).map_err(|message| DiskError::Invalid {
            field: field.clone(),
            message,
        })?;
        if !path.is_file() {
            return Err(DiskError::Invalid {
                field,
                message: format!("{} is not a regular file", h.path),
            });
        }
        // Always raw, as upstream attaches it: the guest writes this file, and a qcow2
        // header it wrote must not change how the node opens it next time.
        return Ok(out(path, DiskFormat::Raw, false));
    }
    let what = v
        .source_kinds()
        .first()
        .copied()
        .unwrap_or("a volume without a source");
    Err(DiskError::Unsupported {
        field: format!("{field}.{what}"),
        what: format!("volume source {what}"),
    })
}

/// The file a `hostDisk` path names, when `host_disks` allows it: a clean absolute path
/// whose deepest existing ancestor (links followed) lies inside an allowed directory.
/// Returns the path with that ancestor resolved.
fn host_disk_path(path: &str, host_disks: HostDisks<'_>) -> Result<PathBuf, String> {
    let p = Path::new(path);
    let clean = path.starts_with('/')
        && p.components()
            .skip(1)
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !clean {
        return Err(format!(
            "{path:?} must be an absolute path without '.' or '..'"
        ));
    }
    let HostDisks::Inside(dirs) = host_disks else {
        return Ok(p.to_path_buf());
    };
    // A link that leads nowhere (here) is no disk to create: its target is elsewhere.
    let dangling = std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_symlink())
        && p.canonicalize().is_err();
    if dangling {
        return Err(format!(
            "{path:?} is not in a directory this node allows host disks in (it is a link that leads out)"
        ));
    }
    // The deepest ancestor that exists, resolved; the rest is created below it.
    let mut existing = p;
    let mut rest = Vec::new();
    let resolved = loop {
        match existing.canonicalize() {
            Ok(r) => break r,
            Err(_) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    rest.push(name.to_owned());
                    existing = parent;
                }
                _ => return Err(format!("{path:?} cannot be resolved")),
            },
        }
    };
    // Strictly below an allowed directory: the directory itself is no disk.
    let inside = dirs.iter().any(|d| {
        d.canonicalize()
            .is_ok_and(|d| resolved.starts_with(&d) && (resolved != d || !rest.is_empty()))
    });
    if !inside {
        let allowed: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
        return Err(format!(
            "{path:?} is not in a directory this node allows host disks in ({})",
            if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            }
        ));
    }
    Ok(rest.iter().rev().fold(resolved, |p, name| p.join(name)))
}

/// How long `qemu-img info` may take over an image: a crafted header must not hold a
/// start forever.
const PROBE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The format QEMU should open `path` with: qcow2 when its header says so, else raw. A
/// qcow2 image must stand alone: a backing file or an external data file in its header would
/// make QEMU open whatever file it names, so such an image is refused (as upstream does).
async fn probe_format(path: &Path) -> Result<DiskFormat, DiskError> {
    let tool = |message: String| DiskError::Tool {
        tool: "qemu-img",
        message,
    };
    // Only qcow2's magic makes it qcow2; anything else is raw. qemu-img never guesses a
    // format, so it never follows what a vmdk descriptor or the like would name.
    let mut magic = [0u8; 4];
    let read = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut magic))
        .map_err(|e| io(path, e))?;
    if read < 4 || magic != *b"QFI\xfb" {
        return Ok(DiskFormat::Raw);
    }
    // Under CPU-time and address-space limits, as upstream runs it: a crafted header
    // must not make the node's qemu-img spin or balloon.
    let run = Command::new("prlimit")
        .args([
            &format!("--cpu={}", PROBE_TIMEOUT.as_secs()),
            "--as=1073741824",
            "--",
            "qemu-img",
            "info",
            "-f",
            "qcow2",
            "--output=json",
            "-U",
        ])
        .arg(path)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(PROBE_TIMEOUT, run)
        .await
        .map_err(|_| {
            tool(format!(
                "{}: no answer within {PROBE_TIMEOUT:?}",
                path.display()
            ))
        })?
        .map_err(|e| tool(e.to_string()))?;
    if !output.status.success() {
        return Err(tool(first_line(&output.stderr)));
    }
    let info: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| tool(e.to_string()))?;
    format_of(&info).map_err(|why| DiskError::Refused {
        path: path.display().to_string(),
        why,
    })
}

/// The format in `qemu-img info`'s answer, or why the image may not be used.
fn format_of(info: &serde_json::Value) -> Result<DiskFormat, String> {
    if let Some(backing) = info.get("backing-filename") {
        return Err(format!(
            "the image names a backing file ({backing}); only a standalone raw or qcow2 image is accepted"
        ));
    }
    if let Some(data_file) = info.pointer("/format-specific/data/data-file") {
        return Err(format!(
            "the image names an external data file ({data_file}); only a standalone raw or qcow2 image is accepted"
        ));
    }
    match info["format"].as_str() {
        Some("qcow2") => Ok(DiskFormat::Qcow2),
        Some("raw") => Ok(DiskFormat::Raw),
        other => Err(format!(
            "the image's format is {}; only raw and qcow2 are accepted",
            other.unwrap_or("unknown")
        )),
    }
}

async fn qemu_img(args: &[&str], paths: &[&Path]) -> Result<(), DiskError> {
    let output = Command::new("qemu-img")
        .args(args)
        .args(paths)
        .output()
        .await
        .map_err(|e| DiskError::Tool {
            tool: "qemu-img",
            message: e.to_string(),
        })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(DiskError::Tool {
            tool: "qemu-img",
            message: first_line(&output.stderr),
        })
    }
}

/// The decoded user data and network data of a cloud-init source.
fn cloud_init_data(ci: &CloudInitSource, field: &str) -> Result<CloudInitData, DiskError> {
    if ci.secret_ref.is_some() || ci.network_data_secret_ref.is_some() {
        return Err(DiskError::Unsupported {
            field: format!("{field}.secretRef"),
            what: "cloud-init data from a Secret".into(),
        });
    }
    let decode = |b64: &Option<String>, name: &str| -> Result<Option<Vec<u8>>, DiskError> {
        b64.as_ref()
            .map(|s| base64::engine::general_purpose::STANDARD.decode(s.trim()))
            .transpose()
            .map_err(|_| DiskError::Invalid {
                field: format!("{field}.{name}"),
                message: "not valid base64".into(),
            })
    };
    let user = match &ci.user_data {
        Some(u) => Some(u.clone().into_bytes()),
        None => decode(&ci.user_data_base64, "userDataBase64")?,
    };
    let network = match &ci.network_data {
        Some(n) => Some(n.clone().into_bytes()),
        None => decode(&ci.network_data_base64, "networkDataBase64")?,
    };
    Ok(CloudInitData { user, network })
}

/// Decoded cloud-init payloads.
struct CloudInitData {
    user: Option<Vec<u8>>,
    network: Option<Vec<u8>>,
}

fn instance_id(vmi: &VirtualMachineInstance) -> String {
    let m = &vmi.metadata;
    m.uid.clone().unwrap_or_else(|| {
        format!(
            "{}.{}",
            m.name.as_deref().unwrap_or("vmi"),
            m.namespace.as_deref().unwrap_or("default")
        )
    })
}

fn hostname(vmi: &VirtualMachineInstance) -> String {
    vmi.spec
        .hostname
        .clone()
        .unwrap_or_else(|| vmi.metadata.name.clone().unwrap_or_else(|| "vmi".into()))
}

async fn nocloud_iso(
    vmi: &VirtualMachineInstance,
    ci: &CloudInitSource,
    field: &str,
    iso: &Path,
) -> Result<(), DiskError> {
    let CloudInitData { user, network } = cloud_init_data(ci, field)?;
    let src = iso.with_extension("d");
    std::fs::create_dir_all(&src).map_err(|e| io(&src, e))?;
    let meta = format!(
        "instance-id: {}\nlocal-hostname: {}\n",
        instance_id(vmi),
        hostname(vmi)
    );
    write(&src.join("meta-data"), meta.as_bytes())?;
    write(&src.join("user-data"), &user.unwrap_or_default())?;
    if let Some(n) = network {
        write(&src.join("network-config"), &n)?;
    }
    make_iso(&src, "cidata", iso).await
}

async fn config_drive_iso(
    vmi: &VirtualMachineInstance,
    ci: &CloudInitSource,
    field: &str,
    iso: &Path,
) -> Result<(), DiskError> {
    let CloudInitData { user, network } = cloud_init_data(ci, field)?;
    let src = iso.with_extension("d");
    let latest = src.join("openstack/latest");
    std::fs::create_dir_all(&latest).map_err(|e| io(&latest, e))?;
    let meta = json!({
        "uuid": instance_id(vmi),
        "instance_id": instance_id(vmi),
        "hostname": hostname(vmi),
        "name": hostname(vmi),
    });
    write(&latest.join("meta_data.json"), meta.to_string().as_bytes())?;
    if let Some(u) = user {
        write(&latest.join("user_data"), &u)?;
    }
    if let Some(n) = network {
        write(&latest.join("network_data.json"), &n)?;
    }
    make_iso(&src, "config-2", iso).await
}

async fn make_iso(src: &Path, label: &str, iso: &Path) -> Result<(), DiskError> {
    let output = Command::new("genisoimage")
        .args(["-quiet", "-joliet", "-rock", "-volid", label, "-output"])
        .arg(iso)
        .arg(src)
        .output()
        .await
        .map_err(|e| DiskError::Tool {
            tool: "genisoimage",
            message: e.to_string(),
        })?;
    let _ = std::fs::remove_dir_all(src);
    if output.status.success() {
        Ok(())
    } else {
        Err(DiskError::Tool {
            tool: "genisoimage",
            message: first_line(&output.stderr),
        })
    }
}

fn write(path: &Path, data: &[u8]) -> Result<(), DiskError> {
    std::fs::write(path, data).map_err(|e| io(path, e))
}

fn io(path: &Path, source: std::io::Error) -> DiskError {
    DiskError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn first_line(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes)
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_disks_stay_in_their_directories() {
        let dir = tempfile::tempdir().unwrap();
        let allowed = dir.path().join("allowed");
        std::fs::create_dir_all(&allowed).unwrap();
        std::fs::write(allowed.join("a.img"), b"").unwrap();
        std::os::unix::fs::symlink("/etc/shadow", allowed.join("link.img")).unwrap();
        std::os::unix::fs::symlink("/etc", allowed.join("etc")).unwrap();
        let dirs = [allowed.clone()];
        let inside = HostDisks::Inside(&dirs);
        let at = |p: &Path| p.display().to_string();
        let real = allowed.canonicalize().unwrap();
        assert_eq!(
            host_disk_path(&at(&allowed.join("a.img")), inside),
            Ok(real.join("a.img"))
        );
        assert_eq!(
            host_disk_path(&at(&allowed.join("new/b.img")), inside),
            Ok(real.join("new/b.img"))
        );
        for bad in [
            "/etc/shadow".to_owned(),
            at(&allowed.join("link.img")),
            at(&allowed.join("etc/passwd")),
            at(&allowed.join("../x.img")),
            at(&allowed),
            "relative.img".to_owned(),
        ] {
            assert!(host_disk_path(&bad, inside).is_err(), "{bad}");
        }
        assert!(host_disk_path("/etc/shadow", HostDisks::Inside(&[])).is_err());
        assert_eq!(
            host_disk_path("/etc/shadow", HostDisks::Anywhere),
            Ok(PathBuf::from("/etc/shadow"))
        );
    }

    #[test]
    fn only_standalone_raw_and_qcow2_images_are_accepted() {
        let ok = |v: serde_json::Value| format_of(&v);
        assert_eq!(ok(json!({"format": "raw"})), Ok(DiskFormat::Raw));
        assert_eq!(ok(json!({"format": "qcow2"})), Ok(DiskFormat::Qcow2));
        let err = ok(json!({"format": "qcow2", "backing-filename": "/etc/shadow"})).unwrap_err();
        assert!(err.contains("backing file (\"/etc/shadow\")"), "{err}");
        let err = ok(json!({"format": "qcow2",
            "format-specific": {"type": "qcow2", "data": {"data-file": "/dev/sda"}}}))
        .unwrap_err();
        assert!(err.contains("external data file"), "{err}");
        let err = ok(json!({"format": "vmdk"})).unwrap_err();
        assert!(err.contains("format is vmdk"), "{err}");
    }
}
