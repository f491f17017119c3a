//! Upstream's defaults for a new VMI, as virt-api's mutating webhook applies them.
//!
//! Applied once, on create: volumes without a disk get one; disks without a target become
//! `disk: {}`; empty buses become `sata` (upstream's amd64 default, which `vmi-sata.yaml`
//! relies on); cdroms are read-only with the tray closed; the CPU topology comes from the
//! CPU limit or request, else one socket; `memory.guest` from the memory request or limit;
//! ACPI on; machine type `q35`; CPU model `host-model`; a firmware UUID derived from the
//! object's uid; the default pod network when none is given.
//!
//! One deliberate difference: the default pod-network binding here is `masquerade`, not
//! upstream's `bridge`. Upstream makes it a cluster setting (`defaultNetworkInterface`); a
//! bridge hands the pod's own address to the guest, which embedded mode's process-based
//! pods do not have, and blocks live migration.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::quantity;
use crate::v1::{
    Cpu, Disk, DiskTarget, Empty, FeatureState, Features, Firmware, Interface, Machine, Memory,
    Network, PodNetwork, ResourceRequirements, VirtualMachineInstanceSpec,
};

/// Cluster-wide settings the defaults depend on (upstream's KubeVirt CR configuration).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefaultsConfig {
    pub machine_type: String,
    pub cpu_model: String,
    /// `masquerade` or `bridge`.
    pub default_network_interface: String,
}

impl Default for DefaultsConfig {
    fn default() -> Self {
        Self {
            machine_type: "q35".into(),
            cpu_model: "host-model".into(),
            default_network_interface: "masquerade".into(),
        }
    }
}

/// Applies the defaults to a VMI spec. `uid` seeds the firmware UUID when one is missing.
pub fn set_vmi_defaults(
    spec: &mut VirtualMachineInstanceSpec,
    uid: Option<&str>,
    config: &DefaultsConfig,
) {
    volume_disks(spec);
    for disk in &mut spec.domain.devices.disks {
        disk_target(disk);
    }
    pod_network(spec, config);
    cpu(spec, config);
    memory(spec);
    let domain = &mut spec.domain;
    domain
        .machine
        .get_or_insert_with(Machine::default)
        .machine_type
        .get_or_insert_with(|| config.machine_type.clone());
    domain
        .features
        .get_or_insert_with(Features::default)
        .acpi
        .get_or_insert_with(FeatureState::default)
        .enabled
        .get_or_insert(true);
    let firmware = domain.firmware.get_or_insert_with(Firmware::default);
    if firmware.uuid.is_none() {
        firmware.uuid = uid.map(str::to_owned);
    }
    for input in &mut domain.devices.inputs {
        input.bus.get_or_insert_with(|| "usb".into());
    }
}

/// Every volume without a disk or filesystem of its name gets a default disk.
fn volume_disks(spec: &mut VirtualMachineInstanceSpec) {
    let devices = &mut spec.domain.devices;
    for v in &spec.volumes {
        let used = devices.disks.iter().any(|d| d.name == v.name)
            || devices.filesystems.iter().any(|f| f.name == v.name);
        if !used {
            devices.disks.push(Disk {
                name: v.name.clone(),
                ..Disk::default()
            });
        }
    }
}

fn disk_target(disk: &mut Disk) {
    if disk.disk.is_none() && disk.cdrom.is_none() && disk.lun.is_none() {
        disk.disk = Some(DiskTarget::default());
    }
    if let Some(d) = &mut disk.disk {
        d.bus.get_or_insert_with(|| "sata".into());
    }
    if let Some(c) = &mut disk.cdrom {
        c.bus.get_or_insert_with(|| "sata".into());
        c.readonly.get_or_insert(true);
        c.tray.get_or_insert_with(|| "closed".into());
    }
    if let Some(l) = &mut disk.lun {
        l.bus.get_or_insert_with(|| "sata".into());
    }
}

fn pod_network(spec: &mut VirtualMachineInstanceSpec, config: &DefaultsConfig) {
    let devices = &mut spec.domain.devices;
    if devices.autoattach_pod_interface == Some(false)
        || !spec.networks.is_empty()
        || !devices.interfaces.is_empty()
    {
        return;
    }
    let mut iface = Interface {
        name: "default".into(),
        ..Interface::default()
    };
    if config.default_network_interface == "bridge" {
        iface.bridge = Some(Empty {});
    } else {
        iface.masquerade = Some(Empty {});
    }
    devices.interfaces.push(iface);
    spec.networks.push(Network {
        name: "default".into(),
        pod: Some(PodNetwork::default()),
        multus: None,
    });
}

fn cpu(spec: &mut VirtualMachineInstanceSpec, config: &DefaultsConfig) {
    let resources = spec
        .domain
        .resources
        .get_or_insert_with(ResourceRequirements::default);
    if let Some(limit) = resources.limits.get("cpu").cloned() {
        resources.requests.entry("cpu".into()).or_insert(limit);
    }
    let vcpus = |q: Option<&Quantity>| {
        q.and_then(|q| quantity::parse_milli(&q.0).ok())
            .map(|m| u32::try_from(m.div_ceil(1000)).unwrap_or(u32::MAX))
            .filter(|v| *v > 0)
    };
    let from_resources =
        vcpus(resources.limits.get("cpu")).or_else(|| vcpus(resources.requests.get("cpu")));
    if resources.requests.is_empty()
        && resources.limits.is_empty()
        && resources.overcommit_guest_overhead.is_none()
    {
        spec.domain.resources = None;
    }
    let cpu = spec.domain.cpu.get_or_insert_with(Cpu::default);
    let unset = |v: Option<u32>| v.unwrap_or(0) == 0;
    if unset(cpu.cores) && unset(cpu.sockets) && unset(cpu.threads) {
        cpu.sockets = Some(from_resources.unwrap_or(1));
        cpu.cores = Some(1);
        cpu.threads = Some(1);
    }
    if cpu.model.as_deref().unwrap_or_default().is_empty() {
        cpu.model = Some(config.cpu_model.clone());
    }
}

fn memory(spec: &mut VirtualMachineInstanceSpec) {
    let resources = spec.domain.resources.as_ref();
    let from_resources = resources
        .and_then(|r| r.requests.get("memory").or_else(|| r.limits.get("memory")))
        .cloned();
    let memory = spec.domain.memory.get_or_insert_with(Memory::default);
    if memory.guest.is_none() {
        memory.guest = from_resources.or_else(|| {
            memory
                .hugepages
                .as_ref()
                .map(|h| Quantity(h.page_size.clone()))
        });
    }
    if memory.guest.is_none() && memory.hugepages.is_none() && memory.max_guest.is_none() {
        spec.domain.memory = None;
    }
}

#[cfg(test)]
mod tests;
