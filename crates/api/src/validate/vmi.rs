//! Validation of a VMI spec, wherever it appears (a VMI, a VM or ReplicaSet template).

use std::collections::BTreeSet;

use base64::Engine;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::{Causes, dns1123_label};
use crate::quantity;
use crate::v1::{CloudInitSource, Disk, Interface, Network, VirtualMachineInstanceSpec, Volume};

pub const DISK_BUSES: &[&str] = &["virtio", "sata", "scsi", "usb"];
pub const CDROM_BUSES: &[&str] = &["sata", "scsi", "usb"];
pub const INTERFACE_MODELS: &[&str] = &[
    "virtio", "e1000", "e1000e", "igb", "ne2k_pci", "pcnet", "rtl8139",
];

/// Validates `spec` found at `at`. Only a VMI itself must say how much memory it has: a
/// VM or ReplicaSet template may get it from an instancetype or a preset later (upstream
/// checks the mandatory fields on VMIs only).
pub fn validate_vmi_spec(
    spec: &VirtualMachineInstanceSpec,
    at: &str,
    is_vmi: bool,
    c: &mut Causes,
) {
    let domain = format!("{at}.domain");
    resources(spec, &domain, is_vmi, c);
    cpu(spec, &domain, c);
    disks_and_volumes(spec, at, c);
    probes(spec, at, c);
    networks_and_interfaces(spec, at, c);
    firmware(spec, &domain, c);
    devices(spec, &domain, c);
    if let Some(m) = spec
        .domain
        .machine
        .as_ref()
        .and_then(|m| m.machine_type.as_deref())
        && !crate::validate::machine_type_known(m)
    {
        c.not_supported(
            format!("{domain}.machine.type"),
            m,
            &["q35", "pc-q35-X.Y", "pc", "pc-i440fx-X.Y"],
        );
    }
    if spec.termination_grace_period_seconds.is_some_and(|s| s < 0) {
        c.invalid(
            format!("{at}.terminationGracePeriodSeconds"),
            "must be greater than or equal to 0",
        );
    }
    if spec.start_strategy.is_some() && spec.liveness_probe.is_some() {
        c.forbidden(
            format!("{at}.startStrategy"),
            "Paused cannot be used with a liveness probe",
        );
    }
    if let Some(h) = &spec.hostname
        && let Err(why) = dns1123_label(h)
    {
        c.invalid(format!("{at}.hostname"), why);
    }
    if !spec.resource_claims.is_empty() {
        c.forbidden(
            format!("{at}.resourceClaims"),
            "dynamic resource allocation is not supported",
        );
    }
    if spec.domain.launch_security.is_some() {
        c.forbidden(
            format!("{domain}.launchSecurity"),
            "confidential computing needs SEV/TDX hardware, which is not supported",
        );
    }
}

fn positive(q: &Quantity, field: String, c: &mut Causes) -> Option<u64> {
    match quantity::to_units(q) {
        Ok(0) => {
            c.invalid(field, "must be greater than 0");
            None
        }
        Ok(v) => Some(v),
        Err(e) => {
            c.invalid(field, e.to_string());
            None
        }
    }
}

fn resources(spec: &VirtualMachineInstanceSpec, domain: &str, is_vmi: bool, c: &mut Causes) {
    let res = spec.domain.resources.as_ref();
    let mut request = None;
    let mut limit = None;
    if let Some(r) = res {
        for (key, q) in &r.requests {
            let v = positive(q, format!("{domain}.resources.requests.{key}"), c);
            if key == "memory" {
                request = v;
            }
        }
        for (key, q) in &r.limits {
            let v = positive(q, format!("{domain}.resources.limits.{key}"), c);
            if key == "memory" {
                limit = v;
            }
        }
    }
    if let (Some(req), Some(lim)) = (request, limit)
        && lim < req
    {
        c.invalid(
            format!("{domain}.resources.limits.memory"),
            "must be greater than or equal to resources.requests.memory",
        );
    }
    let memory = spec.domain.memory.as_ref();
    let guest = memory
        .and_then(|m| m.guest.as_ref())
        .and_then(|q| positive(q, format!("{domain}.memory.guest"), c));
    if let Some(max) = memory.and_then(|m| m.max_guest.as_ref())
        && let (Some(max), Some(g)) = (positive(max, format!("{domain}.memory.maxGuest"), c), guest)
        && max < g
    {
        c.invalid(
            format!("{domain}.memory.maxGuest"),
            "must be greater than or equal to memory.guest",
        );
    }
    if let (Some(g), Some(lim)) = (guest, limit)
        && g > lim
    {
        c.invalid(
            format!("{domain}.memory.guest"),
            "must not be greater than resources.limits.memory",
        );
    }
    if let Some(h) = memory.and_then(|m| m.hugepages.as_ref()) {
        c.one_of(
            format!("{domain}.memory.hugepages.pageSize"),
            Some(&h.page_size),
            &["2Mi", "1Gi"],
        );
    }
    if guest.is_none() && request.is_none() && limit.is_none() && is_vmi {
        c.required(format!("{domain}.memory.guest"));
    }
}

fn cpu(spec: &VirtualMachineInstanceSpec, domain: &str, c: &mut Causes) {
    let Some(cpu) = &spec.domain.cpu else { return };
    for (name, v) in [
        ("cores", cpu.cores),
        ("sockets", cpu.sockets),
        ("threads", cpu.threads),
    ] {
        if v == Some(0) {
            c.invalid(format!("{domain}.cpu.{name}"), "must be greater than 0");
        }
    }
    // QEMU's limit, checked without overflow whatever the counts.
    let n = |v: Option<u32>| u64::from(v.unwrap_or(1).max(1));
    let per_socket = n(cpu.cores).saturating_mul(n(cpu.threads));
    for (name, sockets) in [("sockets", cpu.sockets), ("maxSockets", cpu.max_sockets)] {
        let vcpus = n(sockets).saturating_mul(per_socket);
        if vcpus > 512 {
            c.invalid(
                format!("{domain}.cpu.{name}"),
                format!("{vcpus} vCPUs (sockets x cores x threads) is more than 512"),
            );
        }
    }
    if let (Some(max), Some(s)) = (cpu.max_sockets, cpu.sockets)
        && max < s
    {
        c.invalid(
            format!("{domain}.cpu.maxSockets"),
            "must be greater than or equal to cpu.sockets",
        );
    }
    if let Some(m) = cpu.model.as_deref()
        && !crate::validate::cpu_word(m)
    {
        c.invalid(
            format!("{domain}.cpu.model"),
            format!("{m:?} may contain only letters, digits, '_', '.' and '-'"),
        );
    }
    for (i, f) in cpu.features.iter().enumerate() {
        if !crate::validate::cpu_word(&f.name) {
            c.invalid(
                format!("{domain}.cpu.features[{i}].name"),
                format!(
                    "{:?} may contain only letters, digits, '_', '.' and '-'",
                    f.name
                ),
            );
        }
        c.one_of(
            format!("{domain}.cpu.features[{i}].policy"),
            f.policy.as_deref(),
            &["force", "require", "optional", "disable", "forbid"],
        );
    }
    if cpu.dedicated_cpu_placement == Some(true) {
        c.forbidden(
            format!("{domain}.cpu.dedicatedCpuPlacement"),
            "dedicated CPUs need the kubelet CPU manager, which is not supported",
        );
    }
}

/// Liveness and readiness probes: exactly one action, a port the guest can have, counts
/// that are not negative, and (as the kubelet requires) one success for liveness.
fn probes(spec: &VirtualMachineInstanceSpec, at: &str, c: &mut Causes) {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    let named_ports: BTreeSet<&str> = spec
        .domain
        .devices
        .interfaces
        .iter()
        .flat_map(|i| &i.ports)
        .filter_map(|p| p.name.as_deref())
        .collect();
    for (name, probe) in [
        ("livenessProbe", &spec.liveness_probe),
        ("readinessProbe", &spec.readiness_probe),
    ] {
        let Some(p) = probe else { continue };
        let f = format!("{at}.{name}");
        let actions = [
            p.tcp_socket.is_some(),
            p.http_get.is_some(),
            p.exec.is_some(),
            p.guest_agent_ping.is_some(),
        ];
        match actions.iter().filter(|a| **a).count() {
            0 => c.push(
                super::CauseReason::FieldValueRequired,
                &f,
                "one of tcpSocket, httpGet, exec or guestAgentPing must be set",
            ),
            1 => {}
            _ => c.forbidden(
                &f,
                "may not specify more than one of tcpSocket, httpGet, exec and guestAgentPing",
            ),
        }
        let ports = [
            p.tcp_socket.as_ref().map(|t| (&t.port, "tcpSocket")),
            p.http_get.as_ref().map(|h| (&h.port, "httpGet")),
        ];
        for (port, action) in ports.into_iter().flatten() {
            let pf = format!("{f}.{action}.port");
            match port {
                IntOrString::Int(n) if !(1..=65535).contains(n) => {
                    c.invalid(pf, "must be between 1 and 65535, inclusive")
                }
                IntOrString::String(s) if !named_ports.contains(s.as_str()) => c.invalid(
                    pf,
                    format!("{s:?} is not the name of a port on any of the VMI's interfaces"),
                ),
                _ => {}
            }
        }
        if let Some(h) = &p.http_get {
            c.one_of(
                format!("{f}.httpGet.scheme"),
                h.scheme.as_deref(),
                &["HTTP", "HTTPS"],
            );
            // An HTTP token (RFC 9110 section 5.6.2), as Kubernetes checks it.
            let token = |n: &str| {
                !n.is_empty()
                    && n.chars()
                        .all(|ch| ch.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(ch))
            };
            for (i, header) in h.http_headers.iter().flatten().enumerate() {
                if !token(&header.name) {
                    c.invalid(
                        format!("{f}.httpGet.httpHeaders[{i}].name"),
                        format!("{:?} is not a valid HTTP header name", header.name),
                    );
                }
                if header.value.contains(['\r', '\n']) {
                    c.invalid(
                        format!("{f}.httpGet.httpHeaders[{i}].value"),
                        "may not contain a line break",
                    );
                }
            }
        }
        if let Some(e) = &p.exec
            && e.command.as_ref().is_none_or(Vec::is_empty)
        {
            c.required(format!("{f}.exec.command"));
        }
        let counts = [
            ("initialDelaySeconds", p.initial_delay_seconds),
            ("timeoutSeconds", p.timeout_seconds),
            ("periodSeconds", p.period_seconds),
            ("successThreshold", p.success_threshold),
            ("failureThreshold", p.failure_threshold),
        ];
        for (field, value) in counts {
            if value.is_some_and(|v| v < 0) {
                c.invalid(format!("{f}.{field}"), "must be greater than or equal to 0");
            }
        }
        if name == "livenessProbe" && p.success_threshold.is_some_and(|v| v > 1) {
            c.invalid(format!("{f}.successThreshold"), "must be 1");
        }
    }
}

fn disks_and_volumes(spec: &VirtualMachineInstanceSpec, at: &str, c: &mut Causes) {
    let disks_at = format!("{at}.domain.devices.disks");
    let volumes_at = format!("{at}.volumes");
    let disks = &spec.domain.devices.disks;
    c.unique_names(&disks_at, disks.iter().map(|d| d.name.as_str()));
    c.unique_names(&volumes_at, spec.volumes.iter().map(|v| v.name.as_str()));
    let volume_names: BTreeSet<&str> = spec.volumes.iter().map(|v| v.name.as_str()).collect();
    let mut boot_orders = BTreeSet::new();
    for (i, d) in disks.iter().enumerate() {
        let f = format!("{disks_at}[{i}]");
        if !d.name.is_empty() && !volume_names.contains(d.name.as_str()) {
            c.invalid(
                format!("{f}.name"),
                format!("disk {:?} has no volume of the same name", d.name),
            );
        }
        if !d.name.is_empty()
            && let Err(why) = crate::validate::dns1123_label(&d.name)
        {
            // Upstream's rule: a disk name can become a container name.
            c.invalid(format!("{f}.name"), why);
        }
        disk(d, &f, c);
        if let Some(order) = d.boot_order {
            if order == 0 {
                c.invalid(format!("{f}.bootOrder"), "must be greater than 0");
            } else if !boot_orders.insert(order) {
                c.duplicate(format!("{f}.bootOrder"), &order.to_string());
            }
        }
    }
    for (i, v) in spec.volumes.iter().enumerate() {
        alias(&v.name, format!("{volumes_at}[{i}].name"), c);
        volume(v, &format!("{volumes_at}[{i}]"), c);
    }
}

/// A name that becomes part of a QEMU id or a file name (`ua-NAME`, `NAME.qcow2`):
/// letters, digits, `-` and `_`, as libvirt allows in upstream's device aliases, and as
/// upstream's own rule for interface names says.
fn alias(name: &str, field: String, c: &mut Causes) {
    if !name.is_empty()
        && !name
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_')
    {
        c.invalid(
            field,
            format!("{name:?} may contain only letters, digits, '-' and '_'"),
        );
    }
}

fn disk(d: &Disk, f: &str, c: &mut Causes) {
    let targets = [d.disk.is_some(), d.lun.is_some(), d.cdrom.is_some()]
        .iter()
        .filter(|t| **t)
        .count();
    if targets > 1 {
        c.invalid(f, "only one of disk, lun or cdrom may be set");
    }
    if let Some(t) = &d.disk {
        c.one_of(format!("{f}.disk.bus"), t.bus.as_deref(), DISK_BUSES);
    }
    if let Some(t) = &d.cdrom {
        c.one_of(format!("{f}.cdrom.bus"), t.bus.as_deref(), CDROM_BUSES);
        c.one_of(
            format!("{f}.cdrom.tray"),
            t.tray.as_deref(),
            &["open", "closed"],
        );
    }
    if let Some(t) = &d.lun {
        c.one_of(format!("{f}.lun.bus"), t.bus.as_deref(), &["scsi"]);
    }
    if let Some(serial) = &d.serial {
        // Upstream's rule: it reaches the guest as the disk's serial number.
        let ok = serial.chars().count() <= 256
            && serial
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || "_.+-".contains(ch));
        if !ok {
            c.invalid(
                format!("{f}.serial"),
                "may contain only letters, digits, '_', '.', '+' and '-', at most 256 of them",
            );
        }
    }
    c.one_of(
        format!("{f}.cache"),
        d.cache.as_deref(),
        &["none", "writethrough", "writeback"],
    );
    c.one_of(
        format!("{f}.io"),
        d.io.as_deref(),
        &["native", "threads", "default"],
    );
    c.one_of(
        format!("{f}.errorPolicy"),
        d.error_policy.as_deref(),
        &["stop", "ignore", "report", "enospace"],
    );
}

fn volume(v: &Volume, f: &str, c: &mut Causes) {
    let kinds = v.source_kinds();
    match kinds.len() {
        0 => c.required(format!("{f}.containerDisk")),
        1 => {}
        _ => c.invalid(
            f,
            format!(
                "exactly one volume source may be set, found {}",
                kinds.join(", ")
            ),
        ),
    }
    if let Some(cd) = &v.container_disk {
        if cd.image.trim().is_empty() {
            c.required(format!("{f}.containerDisk.image"));
        }
        c.one_of(
            format!("{f}.containerDisk.imagePullPolicy"),
            cd.image_pull_policy.as_deref(),
            &["Always", "IfNotPresent", "Never"],
        );
        if let Some(p) = &cd.path {
            image_path(p, format!("{f}.containerDisk.path"), c);
        }
    }
    if let Some(ci) = &v.cloud_init_no_cloud {
        cloud_init(ci, &format!("{f}.cloudInitNoCloud"), c);
    }
    if let Some(ci) = &v.cloud_init_config_drive {
        cloud_init(ci, &format!("{f}.cloudInitConfigDrive"), c);
    }
    if let Some(e) = &v.empty_disk {
        positive(&e.capacity, format!("{f}.emptyDisk.capacity"), c);
    }
    if let Some(h) = &v.host_disk {
        if !clean_absolute(&h.path) {
            c.invalid(
                format!("{f}.hostDisk.path"),
                format!(
                    "{:?} must be an absolute path without '.', '..' or empty components",
                    h.path
                ),
            );
        }
        c.one_of(
            format!("{f}.hostDisk.type"),
            Some(&h.disk_type),
            &["Disk", "DiskOrCreate"],
        );
        match (&h.capacity, h.disk_type.as_str()) {
            (Some(cap), _) => {
                positive(cap, format!("{f}.hostDisk.capacity"), c);
            }
            (None, "DiskOrCreate") => c.required(format!("{f}.hostDisk.capacity")),
            _ => {}
        }
    }
}

/// A file inside an image, as upstream's `ValidatePath` takes it: absolute, not the root,
/// and already clean (no `.` or `..` component, no empty or trailing one), so it cannot
/// name anything outside the image's tree.
fn image_path(p: &str, field: String, c: &mut Causes) {
    if !clean_absolute(p) {
        c.invalid(
            field,
            format!(
                "{p:?} must be an absolute path to a file in the image, without '.', '..' or empty components"
            ),
        );
    }
}

/// Absolute, not the root, with no `.`, `..` or empty component.
fn clean_absolute(p: &str) -> bool {
    p.len() > 1
        && p.starts_with('/')
        && p[1..]
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

fn cloud_init(ci: &CloudInitSource, f: &str, c: &mut Causes) {
    let user = [
        ci.user_data.is_some(),
        ci.user_data_base64.is_some(),
        ci.secret_ref.is_some(),
    ];
    let network = [
        ci.network_data.is_some(),
        ci.network_data_base64.is_some(),
        ci.network_data_secret_ref.is_some(),
    ];
    let count = |flags: [bool; 3]| flags.iter().filter(|b| **b).count();
    if count(user) > 1 {
        c.invalid(
            f,
            "only one of userData, userDataBase64 or secretRef may be set",
        );
    }
    if count(network) > 1 {
        c.invalid(
            f,
            "only one of networkData, networkDataBase64 or networkDataSecretRef may be set",
        );
    }
    if count(user) == 0 && count(network) == 0 {
        c.required(format!("{f}.userData"));
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    for (name, value) in [
        ("userDataBase64", &ci.user_data_base64),
        ("networkDataBase64", &ci.network_data_base64),
    ] {
        if let Some(v) = value
            && b64.decode(v.trim()).is_err()
        {
            c.invalid(format!("{f}.{name}"), "not valid base64");
        }
    }
}

fn networks_and_interfaces(spec: &VirtualMachineInstanceSpec, at: &str, c: &mut Causes) {
    let ifaces_at = format!("{at}.domain.devices.interfaces");
    let nets_at = format!("{at}.networks");
    let ifaces = &spec.domain.devices.interfaces;
    c.unique_names(&ifaces_at, ifaces.iter().map(|i| i.name.as_str()));
    c.unique_names(&nets_at, spec.networks.iter().map(|n| n.name.as_str()));
    let mut pod_networks = 0;
    for (i, n) in spec.networks.iter().enumerate() {
        let f = format!("{nets_at}[{i}]");
        match (&n.pod, &n.multus) {
            (Some(_), Some(_)) => c.invalid(&f, "only one of pod or multus may be set"),
            (None, None) => c.required(format!("{f}.pod")),
            (Some(_), None) => pod_networks += 1,
            (None, Some(_)) => c.forbidden(
                format!("{f}.multus"),
                "secondary networks need Multus, which is not supported",
            ),
        }
        if !ifaces.iter().any(|iface| iface.name == n.name) {
            c.invalid(
                format!("{f}.name"),
                format!("network {:?} has no interface of the same name", n.name),
            );
        }
    }
    if pod_networks > 1 {
        c.invalid(&nets_at, "more than one pod network");
    }
    for (i, iface) in ifaces.iter().enumerate() {
        interface(iface, &spec.networks, &format!("{ifaces_at}[{i}]"), c);
    }
}

fn interface(iface: &Interface, networks: &[Network], f: &str, c: &mut Causes) {
    if !iface.name.is_empty() && !networks.iter().any(|n| n.name == iface.name) {
        c.invalid(
            format!("{f}.name"),
            format!("interface {:?} has no network of the same name", iface.name),
        );
    }
    let bindings = [
        iface.bridge.is_some(),
        iface.masquerade.is_some(),
        iface.sriov.is_some(),
        iface.passt_binding.is_some(),
        iface.binding.is_some(),
    ];
    if bindings.iter().filter(|b| **b).count() > 1 {
        c.invalid(
            f,
            "only one of bridge, masquerade, sriov, passtBinding or binding may be set",
        );
    }
    if iface.sriov.is_some() {
        c.forbidden(
            format!("{f}.sriov"),
            "SR-IOV needs passthrough hardware, which is not supported",
        );
    }
    if let Some(b) = &iface.binding {
        c.forbidden(
            format!("{f}.binding"),
            format!("network binding plugin {:?} is not registered", b.name),
        );
    }
    c.one_of(
        format!("{f}.model"),
        iface.model.as_deref(),
        INTERFACE_MODELS,
    );
    c.one_of(
        format!("{f}.state"),
        iface.state.as_deref(),
        &["up", "down", "absent"],
    );
    alias(&iface.name, format!("{f}.name"), c);
    if let Some(mac) = &iface.mac_address {
        let ok = mac.split([':', '-']).count() == 6
            && mac
                .split([':', '-'])
                .all(|b| b.len() == 2 && u8::from_str_radix(b, 16).is_ok());
        if !ok {
            c.invalid(
                format!("{f}.macAddress"),
                format!("{mac:?} is not a valid MAC address"),
            );
        }
    }
    if !iface.ports.is_empty() && iface.masquerade.is_none() && iface.passt_binding.is_none() {
        c.forbidden(
            format!("{f}.ports"),
            "ports are only supported with masquerade or passtBinding",
        );
    }
    for (p, port) in iface.ports.iter().enumerate() {
        if !(1..=65535).contains(&port.port) {
            c.invalid(
                format!("{f}.ports[{p}].port"),
                "must be between 1 and 65535",
            );
        }
        c.one_of(
            format!("{f}.ports[{p}].protocol"),
            port.protocol.as_deref(),
            &["TCP", "UDP"],
        );
    }
}

fn firmware(spec: &VirtualMachineInstanceSpec, domain: &str, c: &mut Causes) {
    let Some(fw) = &spec.domain.firmware else {
        return;
    };
    if let Some(kb) = &fw.kernel_boot {
        let f = format!("{domain}.firmware.kernelBoot");
        match &kb.container {
            None => {
                if kb.kernel_args.is_some() {
                    c.required(format!("{f}.container"));
                }
            }
            Some(ct) => {
                if ct.image.trim().is_empty() {
                    c.required(format!("{f}.container.image"));
                }
                if ct.kernel_path.is_none() && ct.initrd_path.is_none() {
                    c.required(format!("{f}.container.kernelPath"));
                }
                for (name, p) in [
                    ("kernelPath", &ct.kernel_path),
                    ("initrdPath", &ct.initrd_path),
                ] {
                    if let Some(p) = p {
                        image_path(p, format!("{f}.container.{name}"), c);
                    }
                }
            }
        }
    }
    if let Some(uuid) = &fw.uuid {
        let hex: String = uuid.chars().filter(|ch| *ch != '-').collect();
        if hex.len() != 32 || !hex.chars().all(|ch| ch.is_ascii_hexdigit()) {
            c.invalid(
                format!("{domain}.firmware.uuid"),
                format!("{uuid:?} is not a UUID"),
            );
        }
    }
}

fn devices(spec: &VirtualMachineInstanceSpec, domain: &str, c: &mut Causes) {
    let d = &spec.domain.devices;
    let at = format!("{domain}.devices");
    c.unique_names(
        &format!("{at}.inputs"),
        d.inputs.iter().map(|i| i.name.as_str()),
    );
    for (i, input) in d.inputs.iter().enumerate() {
        alias(&input.name, format!("{at}.inputs[{i}].name"), c);
        c.one_of(
            format!("{at}.inputs[{i}].bus"),
            input.bus.as_deref(),
            &["usb", "virtio"],
        );
        c.one_of(
            format!("{at}.inputs[{i}].type"),
            Some(&input.input_type),
            &["tablet", "keyboard"],
        );
    }
    if let Some(w) = &d.watchdog {
        alias(&w.name, format!("{at}.watchdog.name"), c);
        if w.i6300esb.is_none() && w.diag288.is_none() {
            c.required(format!("{at}.watchdog.i6300esb"));
        }
        if let Some(a) = &w.i6300esb {
            c.one_of(
                format!("{at}.watchdog.i6300esb.action"),
                a.action.as_deref(),
                &["poweroff", "reset", "shutdown"],
            );
        }
        if w.diag288.is_some() {
            c.forbidden(
                format!("{at}.watchdog.diag288"),
                "diag288 exists only on s390x",
            );
        }
    }
    if !d.gpus.is_empty() {
        c.forbidden(
            format!("{at}.gpus"),
            "GPU passthrough needs hardware, which is not supported",
        );
    }
    if !d.host_devices.is_empty() {
        c.forbidden(
            format!("{at}.hostDevices"),
            "host device passthrough needs hardware, which is not supported",
        );
    }
    if let Some(v) = d.video.as_ref().and_then(|v| v.video_type.as_deref()) {
        c.one_of(
            format!("{at}.video.type"),
            Some(v),
            &["vga", "cirrus", "virtio", "bochs", "ramfb"],
        );
    }
    if let Some(s) = &d.sound {
        alias(&s.name, format!("{at}.sound.name"), c);
        c.one_of(
            format!("{at}.sound.model"),
            s.model.as_deref(),
            &["ich9", "ac97"],
        );
    }
}
