//! The live-migration benchmark: how long a migration between two launchers takes and how
//! long the guest is paused by it, for a 128 MiB and a 1 GiB guest, each nearly idle and
//! with a quarter of its memory written (by its user data, before migrating; non-zero pages, which
//! QEMU cannot skip).
//!
//! Each run starts two `virt-launcher serve` processes, as two nodes' pods would be, each
//! with its own run directory. The source boots the tiny guest (Debian's cloud kernel and a
//! busybox initramfs, from the loopback registry) until it prints its ready marker; the
//! target is told to get ready; then the source is told to migrate, over the same
//! handler protocol the handlers use. Reported per size (medians and spread of `--runs`):
//! - total: from the `Migrate` request to the source reporting completion (disks mirrored,
//!   memory sent, hand-over done);
//! - QEMU's downtime: from stopping the vCPUs on the source to the end of the memory
//!   stream (QEMU's own figure);
//! - pause: what the guest sees, QEMU's downtime plus the hand-over until the target has
//!   resumed the vCPUs.
//!
//! Settings: upstream's defaults (no bandwidth limit, 900 ms allowed downtime, pre-copy,
//! no auto-converge), the overlay's writes mirrored over NBD, under TCG on this machine.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use launcher_proto::{
    DomainState, MigrationOptions, MigrationPhase, Request, Response, Status, TargetPorts,
};

use crate::stats::{median, spread};

const IMAGE: &str = "registry:5000/kubevirt/alpine-container-disk-demo:devel";
const READY: &str = "KUBEVIRT-RS-GUEST-READY";

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// Migrations per guest size.
    #[arg(long = "migrations", default_value_t = 5)]
    pub migrations: usize,
}

/// The guest's marker once its user data has filled the memory it was asked to.
const FILLED: &str = "BENCH-FILLED";

/// The VMI: `filled_mib` of its memory written with a non-zero pattern by its user data (a
/// file on a tmpfs), so that there is memory to move.
fn vmi(
    memory_mib: u64,
    filled_mib: u64,
    uid: &str,
) -> anyhow::Result<api::v1::VirtualMachineInstance> {
    let text = format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: bench-migrate, namespace: default, uid: {uid}}}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    devices:
      disks: [{{name: containerdisk, disk: {{bus: virtio}}}}, {{name: cloudinitdisk, disk: {{bus: virtio}}}}]
      interfaces: [{{name: default, masquerade: {{}}}}]
    memory: {{guest: {memory_mib}Mi}}
  networks: [{{name: default, pod: {{}}}}]
  volumes:
  - {{name: containerdisk, containerDisk: {{image: '{IMAGE}'}}}}
  - name: cloudinitdisk
    cloudInitNoCloud:
      userData: |
        #!/bin/sh
        mkdir -p /fill && mount -t tmpfs -o size={room}m,nr_inodes=8 tmpfs /fill
        yes 0123456789abcdef | head -c 1048576 > /fill/chunk
        for i in $(seq {filled_mib}); do cat /fill/chunk; done > /fill/data
        echo {FILLED} $(wc -c < /fill/data)
",
        room = filled_mib + 2
    );
    let mut objects = api::parse_documents(&text)?;
    match objects.pop() {
        Some(api::Object::VirtualMachineInstance(v)) => Ok(v),
        _ => bail!("the benchmark's VMI did not parse"),
    }
}

/// One launcher process in its own run directory; killed when dropped.
struct Launcher {
    child: Child,
    socket: launcher_proto::RunPath,
}

impl Launcher {
    fn spawn(binary: &Path, run: &Path, uid: &str) -> anyhow::Result<Self> {
        let child = Command::new(binary)
            .args([
                "serve",
                "--name",
                "bench-migrate",
                "--namespace",
                "default",
                "--uid",
                uid,
            ])
            .args(["--grace-period-seconds", "1"])
            .env("KUBEVIRT_RS_RUN_DIR", run)
            .env("KUBEVIRT_RS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", binary.display()))?;
        Ok(Self {
            child,
            socket: launcher_proto::RunDir::shared(run).socket(uid),
        })
    }

    async fn call(&self, request: &Request) -> anyhow::Result<Response> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match launcher_proto::call(&self.socket, request, Duration::from_secs(10)).await {
                Ok(r) => return Ok(r),
                Err(e) if Instant::now() > deadline => return Err(e.into()),
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    /// Polls the status until `done` says so.
    async fn wait(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&Status) -> bool,
    ) -> anyhow::Result<Status> {
        let deadline = Instant::now() + within;
        loop {
            if let Response::Status(s) = self.call(&Request::Status).await? {
                if let DomainState::Failed { message } = &s.state {
                    bail!("{what}: the launcher failed: {message}");
                }
                if s.migration
                    .as_ref()
                    .is_some_and(|m| m.phase == MigrationPhase::Failed)
                {
                    bail!("{what}: the migration failed: {:?}", s.migration);
                }
                if done(&s) {
                    return Ok(*s);
                }
            }
            if Instant::now() > deadline {
                bail!("{what}: not within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One migration's figures, in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Sample {
    total: f64,
    downtime: f64,
    pause: f64,
}

async fn once(
    binary: &Path,
    memory_mib: u64,
    filled_mib: u64,
    run: usize,
) -> anyhow::Result<Sample> {
    let scratch = tempfile::tempdir()?;
    // QEMU takes the uid as the machine's UUID.
    let uid = format!("6d1e0a7e-{memory_mib:04x}-4000-8000-{filled_mib:04x}{run:08x}");
    let vmi = vmi(memory_mib, filled_mib, &uid)?;
    let source = Launcher::spawn(binary, &scratch.path().join("node-a"), &uid)?;
    let target = Launcher::spawn(binary, &scratch.path().join("node-b"), &uid)?;
    source
        .call(&Request::Sync {
            vmi: Box::new(vmi.clone()),
        })
        .await?;
    let running = source
        .wait("the source running", Duration::from_secs(60), |s| {
            s.state == DomainState::Running
        })
        .await?;
    let log = running
        .serial_socket
        .as_ref()
        .map(|s| s.with_file_name("virt-serial0.log"))
        .context("no serial console")?;
    // The marker carries the file's size: the memory really was filled.
    let filled = format!("{FILLED} {}", filled_mib << 20);
    let booted = Instant::now() + Duration::from_secs(180);
    while !std::fs::read(&log).is_ok_and(|b| {
        let text = String::from_utf8_lossy(&b);
        text.contains(READY) && text.contains(&filled)
    }) {
        if Instant::now() > booted {
            bail!("the guest did not boot and fill its memory within 180 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    target
        .call(&Request::MigrationTarget {
            tls: None,
            vmi: Box::new(vmi),
            migration_uid: uid.clone(),
            post_copy: false,
        })
        .await?;
    let ready = target
        .wait("the target ready", Duration::from_secs(60), |s| {
            s.migration.as_ref().is_some_and(|m| m.ports.is_some())
        })
        .await?;
    let ports: TargetPorts = ready
        .migration
        .and_then(|m| m.ports)
        .context("no target ports")?;
    let t0 = Instant::now();
    source
        .call(&Request::Migrate {
            tls: None,
            migration_uid: uid,
            host: "127.0.0.1".into(),
            ports,
            options: MigrationOptions {
                progress_timeout_seconds: 150,
                completion_timeout_seconds: 150 * memory_mib.div_ceil(1024),
                max_downtime_ms: 900,
                bandwidth_bytes_per_second: 0,
                auto_converge: false,
                allow_post_copy: false,
            },
        })
        .await?;
    let done = source
        .wait("the migration", Duration::from_secs(300), |s| {
            s.migration
                .as_ref()
                .is_some_and(|m| m.phase == MigrationPhase::Completed)
        })
        .await?;
    let total = t0.elapsed().as_secs_f64() * 1000.0;
    target
        .wait(
            "the guest running on the target",
            Duration::from_secs(10),
            |s| s.state == DomainState::Running,
        )
        .await?;
    let m = done.migration.context("no migration status")?;
    #[allow(clippy::cast_precision_loss)]
    let ms = |v: Option<u64>| v.unwrap_or(0) as f64;
    Ok(Sample {
        total,
        downtime: ms(m.downtime_ms),
        pause: ms(m.pause_ms),
    })
}

/// Runs the benchmark and prints its table.
pub fn run(args: &MigrateArgs, launcher: &Path) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    println!("## Live migration between two launchers (tiny guest, TCG)\n");
    println!(
        "{} migrations per size; upstream's defaults: no bandwidth limit, 900 ms allowed downtime, pre-copy.\n",
        args.migrations
    );
    println!(
        "| guest memory | memory written by the guest | total, median (max) | QEMU downtime, median | guest-visible pause, median (max) |"
    );
    println!("|---|---|---|---|---|");
    for (memory_mib, filled_mib) in [(128, 1), (128, 32), (1024, 1), (1024, 256)] {
        let mut samples = Vec::new();
        for run in 0..args.migrations {
            samples.push(rt.block_on(once(launcher, memory_mib, filled_mib, run))?);
        }
        let total: Vec<f64> = samples.iter().map(|s| s.total).collect();
        let pause: Vec<f64> = samples.iter().map(|s| s.pause).collect();
        let t = spread(&total);
        let p = spread(&pause);
        println!(
            "| {memory_mib} MiB | {filled_mib} MiB | {:.0} ms ({:.0}) | {:.0} ms | {:.0} ms ({:.0}) |",
            median(total.clone()),
            t.max,
            median(samples.iter().map(|s| s.downtime).collect()),
            median(pause.clone()),
            p.max,
        );
    }
    Ok(())
}
