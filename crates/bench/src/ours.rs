//! Our launcher: `virt-launcher run --vmi` with the tiny guest from the loopback registry.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::proc;
use crate::vm::Sample;

const IMAGE: &str = "registry:5000/kubevirt/cirros-container-disk-demo:devel";

fn manifest(memory_mib: u64, paused: bool) -> String {
    let strategy = if paused {
        "\n  startStrategy: Paused"
    } else {
        ""
    };
    format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: bench}}
spec:
  terminationGracePeriodSeconds: 0{strategy}
  domain:
    devices:
      disks: [{{name: containerdisk, disk: {{bus: virtio}}}}]
      interfaces: [{{name: default, masquerade: {{}}}}]
    memory: {{guest: {memory_mib}Mi}}
  networks: [{{name: default, pod: {{}}}}]
  volumes: [{{name: containerdisk, containerDisk: {{image: '{IMAGE}'}}}}]
"
    )
}

/// Starts the launcher, waits for `line` on its log, and returns it with the latency.
fn start(
    launcher: &Path,
    vmi: &Path,
    run: &Path,
    line: &str,
) -> anyhow::Result<(std::process::Child, f64)> {
    let t0 = Instant::now();
    let mut child = Command::new(launcher)
        .args(["run", "--no-console", "--vmi"])
        .arg(vmi)
        .env("KUBEVIRT_RS_RUN_DIR", run)
        .env("KUBEVIRT_RS_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("start {}", launcher.display()))?;
    let stderr = child.stderr.take().context("stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    loop {
        let l = lines
            .next()
            .context("launcher exited before starting the guest")??;
        if l.contains(line) {
            break;
        }
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    std::thread::spawn(move || lines.for_each(drop));
    Ok((child, ms))
}

fn stop(mut child: std::process::Child) -> anyhow::Result<()> {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )?;
    child.wait()?;
    Ok(())
}

pub fn measure(launcher: &Path, runs: usize, memory_mib: u64) -> anyhow::Result<Vec<Sample>> {
    let dir = tempfile::tempdir()?;
    let paused_vmi = dir.path().join("paused.yaml");
    let running_vmi = dir.path().join("running.yaml");
    std::fs::write(&paused_vmi, manifest(memory_mib, true))?;
    std::fs::write(&running_vmi, manifest(memory_mib, false))?;
    let guest = memory_mib << 20;
    // Warm the image cache once: the latency target is for a cached image.
    let (child, _) = start(launcher, &paused_vmi, dir.path(), "startStrategy Paused")?;
    stop(child)?;
    let mut samples = Vec::new();
    for _ in 0..runs {
        let mut s = Sample::default();
        let (child, _) = start(launcher, &paused_vmi, dir.path(), "startStrategy Paused")?;
        std::thread::sleep(Duration::from_millis(300));
        let qemu = proc::child_of(child.id()).context("no qemu under the launcher")?;
        s.manager = proc::whole(child.id());
        s.paused = proc::beyond_guest(qemu, guest);
        stop(child)?;

        let (child, ms) = start(launcher, &running_vmi, dir.path(), "guest running")?;
        s.start_ms = ms;
        let log = std::fs::read_dir(dir.path())?
            .flatten()
            .map(|e| e.path().join("virt-serial0.log"))
            .find(|p| p.exists())
            .context("no console log")?;
        proc::wait_for_text(&log, "KUBEVIRT-RS-GUEST-READY", Duration::from_secs(120))?;
        let qemu = proc::child_of(child.id()).context("no qemu under the launcher")?;
        s.running = proc::beyond_guest(qemu, guest);
        let m = proc::whole(child.id());
        s.manager = proc::Beyond {
            rss: s.manager.rss.max(m.rss),
            anon: s.manager.anon.max(m.anon),
        };
        stop(child)?;
        samples.push(s);
    }
    Ok(samples)
}
