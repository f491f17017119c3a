//! Standalone mode: `virt-launcher run --vmi FILE` boots one VMI in the foreground.
//!
//! The serial console streams to stdout; the launcher exits 0 when the guest powers off or
//! after SIGINT/SIGTERM shut it down (ACPI, then a kill after the VMI's grace period), and
//! non-zero when it crashed or could not start. Its runtime directory and QEMU go with it:
//! nothing is left behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use api::defaults::{DefaultsConfig, set_vmi_defaults};
use api::parse::{Object, parse_documents};
use api::v1::{StartStrategy, VirtualMachineInstance};
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{SignalKind, signal};
use tracing::info;

use crate::accel::{self, Accel};
use crate::argv::{self, Runtime, Sockets};
use crate::disks;
use crate::domain::{Domain, Exit};
use crate::image::ImageCache;
use crate::paths::NodePaths;
use crate::registries::Registries;

/// Options of `virt-launcher run`.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub vmi_file: PathBuf,
    pub paths: NodePaths,
    pub qemu: PathBuf,
    pub published: BTreeMap<u16, u16>,
    pub console: bool,
    pub tcg_tb_size_mib: u32,
    pub accel: Option<Accel>,
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("{path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Manifest { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Registries(#[from] crate::registries::RegistriesError),
    #[error(transparent)]
    Disk(#[from] disks::DiskError),
    #[error(transparent)]
    Build(#[from] argv::BuildError),
    #[error(transparent)]
    Domain(#[from] crate::domain::DomainError),
    #[error("runtime directory {path}")]
    RunDir {
        path: String,
        source: std::io::Error,
    },
}

/// Reads a manifest that holds exactly one VMI, with upstream's defaults applied.
pub fn load_vmi(path: &Path) -> Result<VirtualMachineInstance, RunError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| RunError::Read {
        path: shown.clone(),
        source,
    })?;
    let manifest = |message: String| RunError::Manifest {
        path: shown.clone(),
        message,
    };
    let mut objects = parse_documents(&text).map_err(|e| manifest(e.to_string()))?;
    if objects.len() != 1 {
        return Err(manifest(format!(
            "expected one VirtualMachineInstance, found {} objects",
            objects.len()
        )));
    }
    let mut vmi = match objects.remove(0) {
        Object::VirtualMachineInstance(vmi) => vmi,
        other => {
            return Err(manifest(format!(
                "is a {}; virt-launcher runs a VirtualMachineInstance",
                other.kind()
            )));
        }
    };
    vmi.metadata
        .namespace
        .get_or_insert_with(|| "default".into());
    let uid = vmi.metadata.uid.get_or_insert_with(random_uuid).clone();
    set_vmi_defaults(&mut vmi.spec, Some(&uid), &DefaultsConfig::default());
    let causes = api::validate::validate(&Object::VirtualMachineInstance(vmi.clone()));
    if !causes.is_empty() {
        let list: Vec<String> = causes.iter().map(ToString::to_string).collect();
        return Err(manifest(list.join("; ")));
    }
    Ok(vmi)
}

/// Node settings a launch needs besides the VMI.
#[derive(Debug, Clone)]
pub struct LaunchConfig {
    pub paths: NodePaths,
    pub qemu: PathBuf,
    pub published: BTreeMap<u16, u16>,
    pub port_address: String,
    pub tcg_tb_size_mib: u32,
    pub accel: Accel,
    /// See [`crate::argv::Runtime::forward_ports`].
    pub forward_ports: bool,
}

/// A started VMI: QEMU with its vCPUs still stopped, and its runtime directory, which is
/// removed when this is dropped (QEMU is killed with it).
#[derive(Debug)]
pub struct Launched {
    pub domain: Domain,
    pub sockets: Sockets,
    pub dir: RunDir,
}

/// Prepares the VMI's disks, builds its command line and starts QEMU paused.
pub async fn launch(
    vmi: &VirtualMachineInstance,
    cfg: &LaunchConfig,
) -> Result<Launched, RunError> {
    launch_with(vmi, cfg, &[]).await
}

/// [`launch`] with `extra` arguments appended to QEMU's command line.
pub async fn launch_with(
    vmi: &VirtualMachineInstance,
    cfg: &LaunchConfig,
    extra: &[String],
) -> Result<Launched, RunError> {
    let name = format!(
        "{}_{}",
        vmi.metadata.namespace.as_deref().unwrap_or("default"),
        vmi.metadata.name.as_deref().unwrap_or("vmi")
    );
    let dir = RunDir::create(&cfg.paths.run.join(format!("{name}-{}", std::process::id())))?;
    let cache = ImageCache::with_limits(
        cfg.paths.images(),
        Registries::load(&cfg.paths.registries)?,
        crate::image::Limits::from_env(|k| std::env::var(k).ok()),
    );
    let host_disks = match &cfg.paths.host_disk_dirs {
        None => disks::HostDisks::Anywhere,
        Some(dirs) => disks::HostDisks::Inside(dirs),
    };
    let images = match &cfg.paths.image_volumes {
        Some(mounted) => disks::Images::Mounted(mounted),
        None => disks::Images::Pull(&cache),
    };
    let prepared = disks::prepare(vmi, &images, &dir.0, host_disks).await?;
    let rt = Runtime {
        sockets: Sockets::in_dir(&dir.0),
        accel: cfg.accel.clone(),
        tcg_tb_size_mib: cfg.tcg_tb_size_mib,
        port_address: cfg.port_address.clone(),
        published: cfg.published.clone(),
        forward_ports: cfg.forward_ports,
    };
    let mut args = argv::build(vmi, &prepared, &rt)?;
    args.extend_from_slice(extra);
    let domain = Domain::spawn(&cfg.qemu, &args, &rt.sockets.qmp, &dir.0.join("qemu.log")).await?;
    info!(vmi = name, pid = domain.pid(), "qemu started");
    Ok(Launched {
        domain,
        sockets: rt.sockets,
        dir,
    })
}

/// Runs the VMI until the guest powers off or a signal stops it.
pub async fn run(opts: RunOptions) -> Result<Exit, RunError> {
    let vmi = load_vmi(&opts.vmi_file)?;
    let accel = opts.accel.clone().unwrap_or_else(accel::detect);
    if let Accel::Tcg { reason } = &accel {
        info!(reason, "SoftwareEmulation: using TCG");
    }
    let cfg = LaunchConfig {
        paths: opts.paths.clone(),
        qemu: opts.qemu.clone(),
        published: opts.published.clone(),
        port_address: "127.0.0.1".into(),
        tcg_tb_size_mib: opts.tcg_tb_size_mib,
        accel,
        forward_ports: true,
    };
    let launched = launch(&vmi, &cfg).await?;
    let domain = &launched.domain;
    let console = if opts.console {
        Some(tokio::spawn(stream_console(
            launched.sockets.serial.clone(),
        )))
    } else {
        None
    };
    // Give the console a moment to attach so the first lines reach stdout; the log has them anyway.
    tokio::time::sleep(Duration::from_millis(if opts.console { 20 } else { 0 })).await;
    if vmi.spec.start_strategy == Some(StartStrategy::Paused) {
        info!("startStrategy Paused: vCPUs stay stopped until unpaused");
    } else {
        domain.start_vcpus().await?;
        info!("guest running");
    }
    let grace = Duration::from_secs(
        vmi.spec
            .termination_grace_period_seconds
            .unwrap_or(30)
            .max(0)
            .unsigned_abs(),
    );
    let mut sigint = signal(SignalKind::interrupt()).map_err(|source| RunError::RunDir {
        path: "signal".into(),
        source,
    })?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|source| RunError::RunDir {
        path: "signal".into(),
        source,
    })?;
    let exit = tokio::select! {
        exit = domain.wait() => exit,
        _ = sigint.recv() => { info!(?grace, "SIGINT: shutting the guest down"); domain.shutdown(grace).await }
        _ = sigterm.recv() => { info!(?grace, "SIGTERM: shutting the guest down"); domain.shutdown(grace).await }
    };
    if let Some(c) = console {
        // Let the last console bytes drain before the directory goes.
        let _ = tokio::time::timeout(Duration::from_millis(200), c).await;
    }
    info!(?exit, "qemu exited");
    Ok(exit)
}

async fn stream_console(socket: PathBuf) {
    for _ in 0..500 {
        if let Ok(mut stream) = tokio::net::UnixStream::connect(&socket).await {
            let mut stdout = tokio::io::stdout();
            let _ = tokio::io::copy(&mut stream, &mut stdout).await;
            let _ = stdout.flush().await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// The VMI's runtime directory; removed when dropped.
#[derive(Debug)]
pub struct RunDir(PathBuf);

impl RunDir {
    pub fn path(&self) -> &Path {
        &self.0
    }

    fn create(path: &Path) -> Result<Self, RunError> {
        std::fs::create_dir_all(path).map_err(|source| RunError::RunDir {
            path: path.display().to_string(),
            source,
        })?;
        Ok(Self(path.to_path_buf()))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A random version-4 UUID from the kernel's generator.
pub fn random_uuid() -> String {
    let mut b = [0u8; 16];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = std::io::Read::read_exact(&mut f, &mut b);
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}
