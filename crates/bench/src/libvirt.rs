//! The same guest through libvirt: a private libvirtd from `scripts/libvirt.sh`, and
//! `virsh create` of the domain it describes (q35, TCG, virtio disk over a qcow2 overlay of
//! the same base image, user networking, serial log, VNC on a unix socket).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::proc;
use crate::vm::Sample;

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/libvirt.sh")
}

fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd.output().with_context(|| format!("{cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The private libvirt, stopped when dropped.
struct Libvirt {
    uri: String,
}

impl Libvirt {
    fn start() -> anyhow::Result<Self> {
        let out = run(Command::new("bash").arg(script()).arg("start"))?;
        let uri = out.lines().last().unwrap_or_default().to_owned();
        Ok(Self { uri })
    }

    fn virsh(&self, args: &[&str]) -> anyhow::Result<String> {
        run(Command::new("virsh").arg("-c").arg(&self.uri).args(args))
    }
}

impl Drop for Libvirt {
    fn drop(&mut self) {
        let _ = Command::new("bash").arg(script()).arg("stop").output();
    }
}

fn base_image() -> PathBuf {
    let cache = std::env::var("KUBEVIRT_RS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
            Path::new(&home).join(".cache/kubevirt-rs")
        });
    cache.join("guests/tiny.qcow2")
}

fn managers() -> proc::Beyond {
    ["libvirtd", "virtqemud", "virtlogd"]
        .iter()
        .filter_map(|name| proc::pid_with_cmdline(&format!("/usr/sbin/{name}")))
        .map(proc::whole)
        .fold(proc::Beyond::default(), |a, b| proc::Beyond {
            rss: a.rss + b.rss,
            anon: a.anon + b.anon,
        })
}

pub fn measure(runs: usize, memory_mib: u64) -> anyhow::Result<Vec<Sample>> {
    let base = base_image();
    if !base.exists() {
        bail!("{} is missing: run `make guest`", base.display());
    }
    let lv = Libvirt::start()?;
    std::fs::create_dir_all("/var/lib/kubevirt-rs")?;
    let dir = tempfile::tempdir_in("/var/lib/kubevirt-rs")?;
    let guest = memory_mib << 20;
    let mut samples = Vec::new();
    for i in 0..=runs {
        let name = format!("kubevirt-rs-bench-{i}");
        let overlay = dir.path().join(format!("{name}.qcow2"));
        let log = dir.path().join(format!("{name}.log"));
        let vnc = dir.path().join(format!("{name}.vnc"));
        run(Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&base)
            .arg(&overlay))?;
        let xml_text = run(Command::new("bash")
            .arg(script())
            .arg("domain-xml")
            .arg(&name)
            .arg(&overlay)
            .arg(memory_mib.to_string())
            .arg(&vnc)
            .arg(&log))?;
        let xml = dir.path().join(format!("{name}.xml"));
        std::fs::write(&xml, xml_text)?;
        let xml_arg = xml.display().to_string();

        let mut s = Sample::default();
        lv.virsh(&["create", "--paused", &xml_arg])?;
        std::thread::sleep(Duration::from_millis(300));
        let qemu =
            proc::pid_with_cmdline(&format!("guest={name}")).context("no qemu for the domain")?;
        s.manager = managers();
        s.paused = proc::beyond_guest(qemu, guest);
        lv.virsh(&["destroy", &name])?;
        let _ = std::fs::remove_file(&log);

        let t0 = Instant::now();
        lv.virsh(&["create", &xml_arg])?;
        s.start_ms = t0.elapsed().as_secs_f64() * 1000.0;
        proc::wait_for_text(&log, "KUBEVIRT-RS-GUEST-READY", Duration::from_secs(120))?;
        let qemu =
            proc::pid_with_cmdline(&format!("guest={name}")).context("no qemu for the domain")?;
        s.running = proc::beyond_guest(qemu, guest);
        let m = managers();
        s.manager = proc::Beyond {
            rss: s.manager.rss.max(m.rss),
            anon: s.manager.anon.max(m.anon),
        };
        lv.virsh(&["destroy", &name])?;
        // The first run warms libvirt's capability cache; it is not counted.
        if i > 0 {
            samples.push(s);
        }
    }
    Ok(samples)
}
