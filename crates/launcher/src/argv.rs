//! The QEMU command line, as a pure function of the VMI, its prepared volumes and the
//! node's runtime settings. Golden tests in `tests/golden/` show every change.
//!
//! QEMU always starts with `-S` (vCPUs stopped) so the launcher can attach the console
//! before the guest prints anything; it then sends `cont` unless the VMI asks for
//! `startStrategy: Paused`.

mod devices;
mod disks;
mod net;
pub use net::{Forward, forwards, mac_address, pod_netdev};

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use api::v1::VirtualMachineInstance;

use crate::accel::Accel;
use crate::disks::Prepared;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("{field}: {what} is not supported yet")]
    Unsupported { field: String, what: String },
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
}

pub(crate) fn unsupported(field: impl Into<String>, what: impl Into<String>) -> BuildError {
    BuildError::Unsupported {
        field: field.into(),
        what: what.into(),
    }
}

pub(crate) fn invalid(field: impl Into<String>, message: impl Into<String>) -> BuildError {
    BuildError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// The sockets and files of one running VMI, all inside its runtime directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sockets {
    pub qmp: PathBuf,
    pub serial: PathBuf,
    pub serial_log: PathBuf,
    pub vnc: PathBuf,
    /// qemu-guest-agent's virtio-serial port (`org.qemu.guest_agent.0`).
    pub guest_agent: PathBuf,
}

impl Sockets {
    pub fn in_dir(dir: &Path) -> Self {
        Self {
            qmp: dir.join("qmp.sock"),
            serial: dir.join("virt-serial0"),
            serial_log: dir.join("virt-serial0.log"),
            vnc: dir.join("virt-vnc"),
            guest_agent: dir.join("qga.sock"),
        }
    }
}

/// Settings of the node and the launcher, not of the VMI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runtime {
    pub sockets: Sockets,
    pub accel: Accel,
    /// The TCG translation cache in MiB; QEMU's default grows to 1 GiB per guest.
    pub tcg_tb_size_mib: u32,
    /// Address that forwarded ports listen on (the pod's address; loopback standalone).
    pub port_address: String,
    /// Host port for a guest port, where it differs (standalone `--publish`).
    pub published: BTreeMap<u16, u16>,
    /// Whether the interfaces' `ports` are forwarded from the start. A migration target's
    /// are not: its source holds those host ports until the hand-over, after which the
    /// target adds them ([`net::forwards`]).
    pub forward_ports: bool,
}

/// Builds the full argument list, without the program name.
pub fn build(
    vmi: &VirtualMachineInstance,
    prepared: &Prepared,
    rt: &Runtime,
) -> Result<Vec<String>, BuildError> {
    let spec = &vmi.spec;
    let domain = &spec.domain;
    let mut a = Args::default();
    let name = format!(
        "{}_{}",
        vmi.metadata.namespace.as_deref().unwrap_or("default"),
        vmi.metadata.name.as_deref().unwrap_or("vmi")
    );
    a.push("-name", format!("guest={},debug-threads=on", escape(&name)));
    a.flag("-S");
    a.flag("-nodefaults");
    a.flag("-no-user-config");
    a.push("-msg", "timestamp=on");
    a.push("-display", "none");
    machine(vmi, rt, &mut a)?;
    cpu(vmi, rt, &mut a)?;
    memory(vmi, &mut a)?;
    firmware(vmi, prepared, &mut a)?;
    a.push(
        "-chardev",
        format!(
            "socket,id=qmp,path={},server=on,wait=off",
            escape_path(&rt.sockets.qmp)
        ),
    );
    a.push("-mon", "chardev=qmp,mode=control");
    if domain.devices.autoattach_serial_console != Some(false) {
        a.push(
            "-chardev",
            format!(
                "socket,id=serial0,path={},server=on,wait=off,logfile={},logappend=on",
                escape_path(&rt.sockets.serial),
                escape_path(&rt.sockets.serial_log)
            ),
        );
        a.push("-serial", "chardev:serial0");
    }
    // Upstream always offers the guest agent channel; an agent in the guest connects to it.
    a.device("virtio-serial-pci,id=virtio-serial0");
    a.push(
        "-chardev",
        format!(
            "socket,id=qga0,path={},server=on,wait=off",
            escape_path(&rt.sockets.guest_agent)
        ),
    );
    a.device("virtserialport,bus=virtio-serial0.0,nr=1,chardev=qga0,name=org.qemu.guest_agent.0");
    disks::add(vmi, prepared, &mut a)?;
    net::add(vmi, rt, &mut a)?;
    devices::add(vmi, rt, &mut a)?;
    Ok(a.0)
}

fn machine(vmi: &VirtualMachineInstance, rt: &Runtime, a: &mut Args) -> Result<(), BuildError> {
    let domain = &vmi.spec.domain;
    let mtype = domain
        .machine
        .as_ref()
        .and_then(|m| m.machine_type.clone())
        .unwrap_or_else(|| "q35".into());
    if !api::validate::machine_type_known(&mtype) {
        return Err(unsupported(
            "spec.domain.machine.type",
            format!("machine type {mtype:?}"),
        ));
    }
    let mut opts = vec![mtype];
    let features = domain.features.as_ref();
    if features
        .and_then(|f| f.acpi.as_ref())
        .and_then(|s| s.enabled)
        == Some(false)
    {
        opts.push("acpi=off".into());
    }
    if let Some(smm) = features
        .and_then(|f| f.smm.as_ref())
        .and_then(|s| s.enabled)
    {
        opts.push(format!("smm={}", on_off(smm)));
    }
    let hpet = domain
        .clock
        .as_ref()
        .and_then(|c| c.timer.as_ref())
        .and_then(|t| t.hpet.as_ref())
        .and_then(|h| h.present);
    if hpet == Some(false) {
        opts.push("hpet=off".into());
    }
    let bios_serial = domain
        .firmware
        .as_ref()
        .and_then(|f| f.bootloader.as_ref())
        .and_then(|b| b.bios.as_ref())
        .and_then(|b| b.use_serial);
    if bios_serial == Some(true) {
        opts.push("graphics=off".into());
    }
    a.push("-machine", opts.join(","));
    match &rt.accel {
        Accel::Kvm => a.push("-accel", "kvm"),
        Accel::Tcg { .. } => a.push("-accel", format!("tcg,tb-size={}", rt.tcg_tb_size_mib)),
    }
    Ok(())
}

fn cpu(vmi: &VirtualMachineInstance, rt: &Runtime, a: &mut Args) -> Result<(), BuildError> {
    let cpu = vmi.spec.domain.cpu.clone().unwrap_or_default();
    let (sockets, cores, threads) = (
        cpu.sockets.unwrap_or(1).max(1),
        cpu.cores.unwrap_or(1).max(1),
        cpu.threads.unwrap_or(1).max(1),
    );
    let vcpus = u64::from(sockets)
        .saturating_mul(u64::from(cores))
        .saturating_mul(u64::from(threads));
    if vcpus > 512 {
        return Err(invalid(
            "spec.domain.cpu",
            format!("{vcpus} vCPUs is more than QEMU's 512"),
        ));
    }
    let mut smp = format!("cpus={vcpus},sockets={sockets},cores={cores},threads={threads}");
    if let Some(max) = cpu.max_sockets.filter(|m| *m > sockets) {
        let maxcpus = u64::from(max).saturating_mul(vcpus / u64::from(sockets));
        if maxcpus > 512 {
            return Err(invalid(
                "spec.domain.cpu.maxSockets",
                format!("{maxcpus} vCPUs is more than QEMU's 512"),
            ));
        }
        smp.push_str(&format!(",maxcpus={maxcpus}"));
    }
    a.push("-smp", smp);
    let model = match (cpu.model.as_deref().unwrap_or("host-model"), &rt.accel) {
        ("host-model" | "host-passthrough", Accel::Kvm) => "host".to_owned(),
        ("host-model" | "host-passthrough", Accel::Tcg { .. }) => "max".to_owned(),
        (named, _) if api::validate::cpu_word(named) => named.to_owned(),
        (named, _) => {
            return Err(invalid(
                "spec.domain.cpu.model",
                format!("{named:?} is not a CPU model name"),
            ));
        }
    };
    let mut opts = vec![model];
    for (i, f) in cpu.features.iter().enumerate() {
        let on = match f.policy.as_deref().unwrap_or("require") {
            "require" | "force" | "optional" => true,
            "disable" | "forbid" => false,
            other => {
                return Err(invalid(
                    format!("spec.domain.cpu.features[{i}].policy"),
                    format!("unknown policy {other:?}"),
                ));
            }
        };
        if !api::validate::cpu_word(&f.name) {
            return Err(invalid(
                format!("spec.domain.cpu.features[{i}].name"),
                format!("{:?} is not a CPU feature name", f.name),
            ));
        }
        opts.push(format!("{}={}", f.name, on_off(on)));
    }
    if cpu.dedicated_cpu_placement == Some(true) {
        return Err(unsupported(
            "spec.domain.cpu.dedicatedCpuPlacement",
            "dedicated CPU placement",
        ));
    }
    if cpu.numa.is_some() {
        return Err(unsupported("spec.domain.cpu.numa", "guest NUMA mapping"));
    }
    if cpu.realtime.is_some() {
        return Err(unsupported("spec.domain.cpu.realtime", "realtime vCPUs"));
    }
    a.push("-cpu", opts.join(","));
    Ok(())
}

fn memory(vmi: &VirtualMachineInstance, a: &mut Args) -> Result<(), BuildError> {
    let bytes = vmi
        .spec
        .guest_memory()
        .ok_or_else(|| invalid("spec.domain.memory.guest", "required value"))?;
    let mib = bytes.div_ceil(1 << 20);
    if mib < 1 {
        return Err(invalid("spec.domain.memory.guest", "must be at least 1Mi"));
    }
    if vmi
        .spec
        .domain
        .memory
        .as_ref()
        .is_some_and(|m| m.hugepages.is_some())
    {
        return Err(unsupported("spec.domain.memory.hugepages", "hugepages"));
    }
    a.push("-m", format!("{mib}M"));
    Ok(())
}

fn firmware(
    vmi: &VirtualMachineInstance,
    prepared: &Prepared,
    a: &mut Args,
) -> Result<(), BuildError> {
    let Some(fw) = &vmi.spec.domain.firmware else {
        return Ok(());
    };
    if let Some(uuid) = &fw.uuid {
        a.push("-uuid", uuid.clone());
    }
    if let Some(serial) = &fw.serial {
        a.push("-smbios", format!("type=1,serial={}", escape(serial)));
    }
    if fw.bootloader.as_ref().is_some_and(|b| b.efi.is_some()) {
        return Err(unsupported(
            "spec.domain.firmware.bootloader.efi",
            "EFI firmware",
        ));
    }
    if let Some(kb) = &prepared.kernel_boot {
        if let Some(k) = &kb.kernel {
            a.push("-kernel", k.display().to_string());
        }
        if let Some(i) = &kb.initrd {
            a.push("-initrd", i.display().to_string());
        }
        if let Some(args) = &kb.args {
            a.push("-append", args.clone());
        }
    }
    if let Some(ch) = &vmi.spec.domain.chassis {
        let mut opts = vec!["type=3".to_owned()];
        for (k, v) in [
            ("manufacturer", &ch.manufacturer),
            ("version", &ch.version),
            ("serial", &ch.serial),
            ("asset", &ch.asset),
            ("sku", &ch.sku),
        ] {
            if let Some(v) = v {
                opts.push(format!("{k}={}", escape(v)));
            }
        }
        a.push("-smbios", opts.join(","));
    }
    Ok(())
}

/// The argument list being built.
#[derive(Debug, Default)]
pub(crate) struct Args(Vec<String>);

impl Args {
    pub(crate) fn push(&mut self, flag: &str, value: impl Into<String>) {
        self.0.push(flag.to_owned());
        self.0.push(value.into());
    }
    pub(crate) fn flag(&mut self, flag: &str) {
        self.0.push(flag.to_owned());
    }
    pub(crate) fn device(&mut self, value: impl Into<String>) {
        self.push("-device", value);
    }
}

/// QEMU's option syntax doubles commas inside values.
pub(crate) fn escape(s: &str) -> String {
    s.replace(',', ",,")
}

pub(crate) fn escape_path(p: &Path) -> String {
    escape(&p.display().to_string())
}

pub(crate) fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

#[cfg(test)]
mod tests;
