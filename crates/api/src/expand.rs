//! Instancetype and preference expansion: a VM's template plus its instancetype and
//! preference become the VMI spec that runs.
//!
//! - The instancetype is authoritative for what it sets (vCPUs as a topology chosen by the
//!   preference, default one socket per vCPU; guest memory; CPU model and the rest). Upstream
//!   refuses a template that also sets these ("conflicts with selected instance type"), even
//!   with an equal value, which rejects its own generated examples (`vm-cirros-csmall.yaml`
//!   sets `memory.guest` next to its instancetype). Here an equal value is accepted silently
//!   and a different one is replaced, with a warning naming the field.
//! - A preference only fills what the template leaves unset.

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use crate::instancetype::{InstancetypeSpec, PreferenceSpec};
use crate::quantity;
use crate::v1::{Cpu, DiskTarget, Interface, Machine, Memory, VirtualMachineInstanceSpec};
use crate::validate::Causes;

/// The expanded spec and the template fields the instancetype overrode.
#[derive(Debug, Clone, PartialEq)]
pub struct Expansion {
    pub spec: VirtualMachineInstanceSpec,
    pub warnings: Vec<String>,
}

/// Expands `template` (found at `at`, e.g. `spec.template.spec`).
pub fn expand(
    template: &VirtualMachineInstanceSpec,
    at: &str,
    instancetype: Option<&InstancetypeSpec>,
    preference: Option<&PreferenceSpec>,
) -> Expansion {
    let mut spec = template.clone();
    let mut warnings = Vec::new();
    if let Some(it) = instancetype {
        apply_instancetype(&mut spec, at, it, preference, &mut warnings);
    }
    if let Some(p) = preference {
        apply_preference(&mut spec, p);
    }
    Expansion { spec, warnings }
}

fn apply_instancetype(
    spec: &mut VirtualMachineInstanceSpec,
    at: &str,
    it: &InstancetypeSpec,
    preference: Option<&PreferenceSpec>,
    warnings: &mut Vec<String>,
) {
    let mut overridden = |field: &str| {
        warnings.push(format!(
            "VM field {at}.domain.{field} is overridden by the selected instance type"
        ))
    };
    let domain = &mut spec.domain;
    if let Some(r) = &mut domain.resources {
        for key in ["memory", "cpu"] {
            if r.requests.remove(key).is_some() {
                overridden(&format!("resources.requests.{key}"));
            }
            if r.limits.remove(key).is_some() {
                overridden(&format!("resources.limits.{key}"));
            }
        }
    }
    let (sockets, cores, threads) = topology(it.cpu.guest, preference);
    let cpu = domain.cpu.get_or_insert_with(Cpu::default);
    for (name, field, value) in [
        ("sockets", &mut cpu.sockets, sockets),
        ("cores", &mut cpu.cores, cores),
        ("threads", &mut cpu.threads, threads),
    ] {
        if field.is_some_and(|v| v != 0 && v != value) {
            overridden(&format!("cpu.{name}"));
        }
        *field = Some(value);
    }
    if let Some(model) = &it.cpu.model {
        cpu.model = Some(model.clone());
    }
    if let Some(max) = it.cpu.max_sockets {
        cpu.max_sockets = Some(max);
    }
    if it.cpu.dedicated_cpu_placement.is_some() {
        cpu.dedicated_cpu_placement = it.cpu.dedicated_cpu_placement;
    }
    if it.cpu.isolate_emulator_thread.is_some() {
        cpu.isolate_emulator_thread = it.cpu.isolate_emulator_thread;
    }
    let memory = domain.memory.get_or_insert_with(Memory::default);
    let same =
        |a: &Quantity, b: &Quantity| quantity::to_units(a).ok() == quantity::to_units(b).ok();
    if memory
        .guest
        .as_ref()
        .is_some_and(|g| !same(g, &it.memory.guest))
    {
        overridden("memory.guest");
    }
    memory.guest = Some(it.memory.guest.clone());
    if let Some(h) = &it.memory.hugepages {
        memory.hugepages = Some(h.clone());
    }
    if let Some(m) = &it.memory.max_guest {
        memory.max_guest = Some(m.clone());
    }
    if let Some(pct) = it.memory.overcommit_percent.filter(|p| *p > 0)
        && let Ok(bytes) = quantity::to_units(&it.memory.guest)
    {
        let request = bytes / 100 * u64::from(100 - pct.min(100));
        domain
            .resources
            .get_or_insert_with(Default::default)
            .requests
            .insert("memory".into(), quantity::format_bytes(request));
    }
    if let Some(policy) = &it.io_threads_policy {
        domain.io_threads_policy = Some(policy.clone());
    }
    for (k, v) in &it.node_selector {
        spec.node_selector.insert(k.clone(), v.clone());
    }
    if let Some(s) = &it.scheduler_name {
        spec.scheduler_name = Some(s.clone());
    }
}

/// (sockets, cores, threads) for `vcpus` under the preference's topology.
pub fn topology(vcpus: u32, preference: Option<&PreferenceSpec>) -> (u32, u32, u32) {
    let cpu_pref = preference.and_then(|p| p.cpu.as_ref());
    let preferred = cpu_pref
        .and_then(|c| c.preferred_cpu_topology.as_deref())
        .unwrap_or("sockets");
    match preferred {
        "cores" | "preferCores" => (1, vcpus, 1),
        "threads" | "preferThreads" => (1, 1, vcpus),
        "spread" | "preferSpread" => {
            let spread = cpu_pref.and_then(|c| c.spread_options.as_ref());
            let ratio = spread
                .and_then(|s| s.ratio)
                .or_else(|| preference.and_then(|p| p.prefer_spread_socket_to_core_ratio))
                .unwrap_or(2)
                .max(1);
            match spread
                .and_then(|s| s.across.as_deref())
                .unwrap_or("SocketsCores")
            {
                "CoresThreads" => (1, (vcpus / ratio).max(1), ratio),
                "SocketsCoresThreads" => ((vcpus / 2 / ratio).max(1), ratio, 2),
                _ => ((vcpus / ratio).max(1), ratio, 1),
            }
        }
        _ => (vcpus, 1, 1),
    }
}

fn apply_preference(spec: &mut VirtualMachineInstanceSpec, p: &PreferenceSpec) {
    let domain = &mut spec.domain;
    if let Some(m) = p
        .machine
        .as_ref()
        .and_then(|m| m.preferred_machine_type.as_ref())
    {
        domain
            .machine
            .get_or_insert_with(Machine::default)
            .machine_type
            .get_or_insert_with(|| m.clone());
    }
    if let Some(seconds) = p.preferred_termination_grace_period_seconds {
        spec.termination_grace_period_seconds.get_or_insert(seconds);
    }
    if let Some(sub) = &p.preferred_subdomain {
        spec.subdomain.get_or_insert_with(|| sub.clone());
    }
    let Some(d) = &p.devices else { return };
    let devices = &mut domain.devices;
    let fill = |field: &mut Option<bool>, value: Option<bool>| {
        if field.is_none() {
            *field = value;
        }
    };
    fill(
        &mut devices.autoattach_graphics_device,
        d.preferred_autoattach_graphics_device,
    );
    fill(
        &mut devices.autoattach_mem_balloon,
        d.preferred_autoattach_mem_balloon,
    );
    fill(
        &mut devices.autoattach_pod_interface,
        d.preferred_autoattach_pod_interface,
    );
    fill(
        &mut devices.autoattach_serial_console,
        d.preferred_autoattach_serial_console,
    );
    fill(
        &mut devices.autoattach_input_device,
        d.preferred_autoattach_input_device,
    );
    fill(
        &mut devices.use_virtio_transitional,
        d.preferred_use_virtio_transitional,
    );
    fill(
        &mut devices.block_multi_queue,
        d.preferred_block_multi_queue,
    );
    fill(
        &mut devices.network_interface_multiqueue,
        d.preferred_network_interface_multi_queue,
    );
    if let (Some(model), Some(sound)) = (&d.preferred_sound_model, &mut devices.sound) {
        sound.model.get_or_insert_with(|| model.clone());
    }
    if d.preferred_rng.is_some() && devices.rng.is_none() {
        devices.rng = Some(Default::default());
    }
    if let Some(video) = &d.preferred_video_type {
        devices
            .video
            .get_or_insert_with(Default::default)
            .video_type
            .get_or_insert_with(|| video.clone());
    }
    for disk in &mut devices.disks {
        if disk.disk.is_none() && disk.cdrom.is_none() && disk.lun.is_none() {
            disk.disk = Some(DiskTarget::default());
        }
        if let (Some(t), Some(bus)) = (&mut disk.disk, &d.preferred_disk_bus) {
            t.bus.get_or_insert_with(|| bus.clone());
        }
        if let (Some(t), Some(bus)) = (&mut disk.cdrom, &d.preferred_cdrom_bus) {
            t.bus.get_or_insert_with(|| bus.clone());
        }
        if let (Some(t), Some(bus)) = (&mut disk.lun, &d.preferred_lun_bus) {
            t.bus.get_or_insert_with(|| bus.clone());
        }
        if let Some(cache) = &d.preferred_disk_cache {
            disk.cache.get_or_insert_with(|| cache.clone());
        }
        if let Some(io) = &d.preferred_disk_io {
            disk.io.get_or_insert_with(|| io.clone());
        }
    }
    for iface in &mut devices.interfaces {
        apply_interface_preference(iface, d.preferred_interface_model.as_deref());
    }
    for input in &mut devices.inputs {
        if let Some(bus) = &d.preferred_input_bus {
            input.bus.get_or_insert_with(|| bus.clone());
        }
    }
}

fn apply_interface_preference(iface: &mut Interface, model: Option<&str>) {
    if let Some(model) = model {
        iface.model.get_or_insert_with(|| model.to_owned());
    }
}

/// Validates an instancetype spec.
pub fn validate_instancetype(spec: &InstancetypeSpec, c: &mut Causes) {
    if spec.cpu.guest == 0 {
        c.invalid("spec.cpu.guest", "must be greater than 0");
    }
    match quantity::to_units(&spec.memory.guest) {
        Ok(0) => c.invalid("spec.memory.guest", "must be greater than 0"),
        Ok(_) => {}
        Err(e) => c.invalid("spec.memory.guest", e.to_string()),
    }
    if spec.memory.overcommit_percent.is_some_and(|p| p > 100) {
        c.invalid("spec.memory.overcommitPercent", "must be between 0 and 100");
    }
    if !spec.gpus.is_empty() {
        c.forbidden(
            "spec.gpus",
            "GPU passthrough needs hardware, which is not supported",
        );
    }
    if !spec.host_devices.is_empty() {
        c.forbidden(
            "spec.hostDevices",
            "host device passthrough needs hardware, which is not supported",
        );
    }
}

/// Validates a preference spec.
pub fn validate_preference(spec: &PreferenceSpec, c: &mut Causes) {
    use crate::validate::vmi_rules::{CDROM_BUSES, DISK_BUSES, INTERFACE_MODELS};
    if let Some(cpu) = &spec.cpu {
        c.one_of(
            "spec.cpu.preferredCPUTopology",
            cpu.preferred_cpu_topology.as_deref(),
            &[
                "sockets",
                "cores",
                "threads",
                "spread",
                "any",
                "preferSockets",
                "preferCores",
                "preferThreads",
                "preferSpread",
                "preferAny",
            ],
        );
        if let Some(s) = &cpu.spread_options {
            c.one_of(
                "spec.cpu.spreadOptions.across",
                s.across.as_deref(),
                &["SocketsCores", "CoresThreads", "SocketsCoresThreads"],
            );
        }
    }
    if let Some(d) = &spec.devices {
        c.one_of(
            "spec.devices.preferredDiskBus",
            d.preferred_disk_bus.as_deref(),
            DISK_BUSES,
        );
        c.one_of(
            "spec.devices.preferredCdromBus",
            d.preferred_cdrom_bus.as_deref(),
            CDROM_BUSES,
        );
        c.one_of(
            "spec.devices.preferredInterfaceModel",
            d.preferred_interface_model.as_deref(),
            INTERFACE_MODELS,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instancetype::{CpuPreferences, InstancetypeCpu, InstancetypeMemory};

    fn csmall(cpus: u32, mem: &str) -> InstancetypeSpec {
        InstancetypeSpec {
            cpu: InstancetypeCpu {
                guest: cpus,
                ..Default::default()
            },
            memory: InstancetypeMemory {
                guest: Quantity(mem.into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn template(mem: Option<&str>) -> VirtualMachineInstanceSpec {
        let mut spec = VirtualMachineInstanceSpec::default();
        spec.domain.memory = mem.map(|m| Memory {
            guest: Some(Quantity(m.into())),
            ..Default::default()
        });
        spec
    }

    #[test]
    fn instancetype_sets_size_and_an_equal_template_value_is_silent() {
        let e = expand(
            &template(Some("128Mi")),
            "spec.template.spec",
            Some(&csmall(1, "128Mi")),
            None,
        );
        assert!(e.warnings.is_empty(), "{:?}", e.warnings);
        assert_eq!(e.spec.domain.memory.unwrap().guest.unwrap().0, "128Mi");
        let cpu = e.spec.domain.cpu.unwrap();
        assert_eq!(
            (cpu.sockets, cpu.cores, cpu.threads),
            (Some(1), Some(1), Some(1))
        );
    }

    #[test]
    fn a_different_template_value_is_overridden_with_a_warning() {
        let e = expand(
            &template(Some("128Mi")),
            "spec.template.spec",
            Some(&csmall(4, "2Gi")),
            None,
        );
        assert_eq!(e.spec.domain.memory.unwrap().guest.unwrap().0, "2Gi");
        assert_eq!(
            e.warnings,
            [
                "VM field spec.template.spec.domain.memory.guest is overridden by the selected instance type"
            ]
        );
        assert_eq!(e.spec.domain.cpu.unwrap().sockets, Some(4));
    }

    #[test]
    fn preferred_topology_decides_how_vcpus_are_laid_out() {
        let pref = |t: &str| PreferenceSpec {
            cpu: Some(CpuPreferences {
                preferred_cpu_topology: Some(t.into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert_eq!(topology(4, None), (4, 1, 1));
        assert_eq!(topology(4, Some(&pref("cores"))), (1, 4, 1));
        assert_eq!(topology(4, Some(&pref("preferThreads"))), (1, 1, 4));
        assert_eq!(topology(4, Some(&pref("spread"))), (2, 2, 1));
    }

    #[test]
    fn preference_fills_only_what_is_unset() {
        let mut spec = template(None);
        spec.domain.devices.disks = vec![
            crate::v1::Disk {
                name: "a".into(),
                ..Default::default()
            },
            crate::v1::Disk {
                name: "b".into(),
                disk: Some(DiskTarget {
                    bus: Some("sata".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ];
        spec.domain.devices.interfaces = vec![Interface {
            name: "default".into(),
            ..Default::default()
        }];
        let pref = PreferenceSpec {
            devices: Some(crate::instancetype::DevicePreferences {
                preferred_disk_bus: Some("virtio".into()),
                preferred_interface_model: Some("e1000".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let e = expand(&spec, "spec.template.spec", None, Some(&pref));
        let disks = &e.spec.domain.devices.disks;
        assert_eq!(
            disks[0].disk.as_ref().unwrap().bus.as_deref(),
            Some("virtio")
        );
        assert_eq!(disks[1].disk.as_ref().unwrap().bus.as_deref(), Some("sata"));
        assert_eq!(
            e.spec.domain.devices.interfaces[0].model.as_deref(),
            Some("e1000")
        );
    }
}
