//! Preparing a VMI's volumes on the node, before QEMU starts.
//!
//! - `containerDisk`: the image's disk from the node cache, behind a per-VMI qcow2 overlay
//!   (`qemu-img create -b`), so the cached base is never written.
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
    #[error("{field}: {what} is not supported yet")]
    Unsupported { field: String, what: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{tool}: {message}")]
    Tool { tool: &'static str, message: String },
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

/// Prepares every volume of `vmi` under `dir`.
pub async fn prepare(
    vmi: &VirtualMachineInstance,
    cache: &ImageCache,
    dir: &Path,
) -> Result<Prepared, DiskError> {
    let disks_dir = dir.join("disks");
    std::fs::create_dir_all(&disks_dir).map_err(|e| io(&disks_dir, e))?;
    let mut prepared = Prepared::default();
    for (i, volume) in vmi.spec.volumes.iter().enumerate() {
        let field = format!("spec.volumes[{i}]");
        prepared
            .volumes
            .push(prepare_volume(vmi, volume, &field, cache, &disks_dir).await?);
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
            let tree = cache
                .ensure(&c.image, PullPolicy::parse(c.image_pull_policy.as_deref()))
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
    cache: &ImageCache,
    dir: &Path,
) -> Result<PreparedVolume, DiskError> {
    let out = |path: PathBuf, format, read_only| PreparedVolume {
        name: v.name.clone(),
        path,
        format,
        read_only,
    };
    if let Some(cd) = &v.container_disk {
        let tree = cache
            .ensure(
                &cd.image,
                PullPolicy::parse(cd.image_pull_policy.as_deref()),
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
        let path = PathBuf::from(&h.path);
        if !path.exists() {
            if h.disk_type != "DiskOrCreate" {
                return Err(DiskError::Invalid {
                    field: format!("{field}.hostDisk.path"),
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
            let f = std::fs::File::create(&path).map_err(|e| io(&path, e))?;
            f.set_len(bytes).map_err(|e| io(&path, e))?;
        }
        let format = probe_format(&path).await?;
        return Ok(out(path, format, false));
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

/// The format QEMU should open `path` with.
async fn probe_format(path: &Path) -> Result<DiskFormat, DiskError> {
    let output = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(path)
        .output()
        .await
        .map_err(|e| DiskError::Tool {
            tool: "qemu-img",
            message: e.to_string(),
        })?;
    if !output.status.success() {
        return Err(DiskError::Tool {
            tool: "qemu-img",
            message: first_line(&output.stderr),
        });
    }
    let info: serde_json::Value =
        serde_json::from_slice(&output.stdout).map_err(|e| DiskError::Tool {
            tool: "qemu-img",
            message: e.to_string(),
        })?;
    Ok(if info["format"] == "qcow2" {
        DiskFormat::Qcow2
    } else {
        DiskFormat::Raw
    })
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
