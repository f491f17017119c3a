//! Interfaces on the pod network.
//!
//! `masquerade` (and `bridge`, which needs the pod's own network namespace plumbing that a
//! plain process does not have) use QEMU's user-mode network stack: the guest takes a DHCP
//! lease in the pod network's `vmNetworkCIDR` (default 10.0.2.0/24: gateway .1, guest .2,
//! DNS .3) and reaches out through the launcher's own sockets. Each listed port is forwarded
//! from the pod's address. Unlike upstream's masquerade, an interface without `ports`
//! forwards nothing inbound, since a user-mode stack cannot forward every port.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use api::v1::{Interface, VirtualMachineInstance};

use super::{Args, BuildError, Runtime, escape, invalid, unsupported};

/// The MAC of the interface `name` of `vmi`: the spec's `macAddress`, else one made from
/// the VMI's uid and the interface's name, so that it stays the same across restarts of
/// the domain and the launcher and the guest agent's interfaces can be matched to the
/// spec's. The `02:00` prefix marks it locally administered and unicast.
pub fn mac_address(vmi: &VirtualMachineInstance, iface: &Interface) -> String {
    if let Some(mac) = &iface.mac_address {
        return mac.replace('-', ":").to_lowercase();
    }
    use sha2::Digest;
    let uid = vmi.metadata.uid.as_deref().unwrap_or_default();
    let digest = sha2::Sha256::digest(format!("{uid}/{}", iface.name).as_bytes());
    format!(
        "02:00:{:02x}:{:02x}:{:02x}:{:02x}",
        digest[0], digest[1], digest[2], digest[3]
    )
}

/// The first interface on the pod network: its netdev's id and the address the guest
/// gets there (the DHCP server's first lease), for forwarding ports to it.
pub fn pod_netdev(vmi: &VirtualMachineInstance) -> Option<(String, Ipv4Addr)> {
    let spec = &vmi.spec;
    spec.domain
        .devices
        .interfaces
        .iter()
        .filter(|i| i.state.as_deref() != Some("absent"))
        .find_map(|iface| {
            let pod = spec
                .networks
                .iter()
                .find(|n| n.name == iface.name)?
                .pod
                .as_ref()?;
            let cidr = pod.vm_network_cidr.as_deref().unwrap_or("10.0.2.0/24");
            let (net, _) = parse_cidr(cidr)?;
            Some((
                format!("ua-{}", iface.name),
                Ipv4Addr::from(u32::from(net) + 2),
            ))
        })
}

pub(super) fn add(
    vmi: &VirtualMachineInstance,
    rt: &Runtime,
    a: &mut Args,
) -> Result<(), BuildError> {
    let spec = &vmi.spec;
    let hostname = spec
        .hostname
        .clone()
        .or_else(|| vmi.metadata.name.clone())
        .unwrap_or_else(|| "vmi".into());
    for (i, iface) in spec.domain.devices.interfaces.iter().enumerate() {
        let field = format!("spec.domain.devices.interfaces[{i}]");
        if iface.state.as_deref() == Some("absent") {
            continue;
        }
        let network = spec
            .networks
            .iter()
            .find(|n| n.name == iface.name)
            .ok_or_else(|| {
                invalid(
                    format!("{field}.name"),
                    format!("interface {:?} has no network of the same name", iface.name),
                )
            })?;
        let Some(pod) = &network.pod else {
            return Err(unsupported(
                format!("spec.networks[{i}].multus"),
                "secondary networks",
            ));
        };
        if iface.passt_binding.is_some() {
            return Err(unsupported(
                format!("{field}.passtBinding"),
                "the passt binding",
            ));
        }
        if iface.sriov.is_some() || iface.binding.is_some() {
            return Err(unsupported(&field, "this interface binding"));
        }
        let cidr = pod.vm_network_cidr.as_deref().unwrap_or("10.0.2.0/24");
        let (net, prefix) = parse_cidr(cidr).ok_or_else(|| {
            invalid(
                format!("spec.networks[{i}].pod.vmNetworkCIDR"),
                format!("{cidr:?} is not an IPv4 CIDR"),
            )
        })?;
        if prefix > 29 {
            return Err(invalid(
                format!("spec.networks[{i}].pod.vmNetworkCIDR"),
                "needs at least 8 addresses",
            ));
        }
        let host = |n: u32| Ipv4Addr::from(u32::from(net) + n);
        let id = escape(&format!("ua-{}", iface.name));
        let mut netdev = format!(
            "user,id={id},net={net}/{prefix},host={},dhcpstart={},dns={},hostname={}",
            host(1),
            host(2),
            host(3),
            escape(&hostname)
        );
        for port in &iface.ports {
            let guest = u16::try_from(port.port)
                .map_err(|_| invalid(format!("{field}.ports"), "port out of range"))?;
            let proto = match port.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => "tcp",
                "UDP" => "udp",
                other => {
                    return Err(invalid(
                        format!("{field}.ports"),
                        format!("unknown protocol {other:?}"),
                    ));
                }
            };
            let published = rt.published.get(&guest).copied().unwrap_or(guest);
            if !rt.forward_ports {
                continue;
            }
            netdev.push_str(&format!(
                ",hostfwd={proto}:{}:{published}-:{guest}",
                rt.port_address
            ));
        }
        a.push("-netdev", netdev);
        a.device(nic(iface, &mac_address(vmi, iface), &id, &field)?);
    }
    Ok(())
}

fn nic(iface: &Interface, mac: &str, id: &str, field: &str) -> Result<String, BuildError> {
    let model = match iface.model.as_deref().unwrap_or("virtio") {
        "virtio" => "virtio-net-pci",
        "e1000" => "e1000",
        "e1000e" => "e1000e",
        "igb" => "igb",
        "ne2k_pci" => "ne2k_pci",
        "pcnet" => "pcnet",
        "rtl8139" => "rtl8139",
        other => {
            return Err(unsupported(
                format!("{field}.model"),
                format!("interface model {other:?}"),
            ));
        }
    };
    let mut dev = format!("{model},netdev={id},id={id},mac={mac}");
    match iface.boot_order {
        Some(order) => dev.push_str(&format!(",bootindex={order}")),
        // No network boot asked for: skip the PXE option ROM, which slows every boot.
        None => dev.push_str(",romfile="),
    }
    Ok(dev)
}

fn parse_cidr(cidr: &str) -> Option<(Ipv4Addr, u32)> {
    let (addr, prefix) = cidr.split_once('/')?;
    let addr: Ipv4Addr = addr.parse().ok()?;
    let prefix: u32 = prefix.parse().ok().filter(|p| *p <= 32)?;
    let mask = if prefix == 0 {
        0
    } else {
        u32::MAX << (32 - prefix)
    };
    Some((Ipv4Addr::from(u32::from(addr) & mask), prefix))
}

/// A forwarded port of the pod network: host port -> the guest's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The netdev it goes through (`ua-<interface>`).
    pub netdev: String,
    /// `tcp` or `udp`.
    pub proto: &'static str,
    pub host: u16,
    pub guest: u16,
}

/// The forwards the pod-network interfaces' `ports` ask for (what `hostfwd` gets when
/// [`super::Runtime::forward_ports`] is set). Ports the command line refuses are left out.
pub fn forwards(vmi: &VirtualMachineInstance, published: &BTreeMap<u16, u16>) -> Vec<Forward> {
    let on_pod_network = |name: &str| {
        vmi.spec
            .networks
            .iter()
            .any(|n| n.name == name && n.pod.is_some())
    };
    let mut list = Vec::new();
    for iface in &vmi.spec.domain.devices.interfaces {
        if !on_pod_network(&iface.name) || iface.state.as_deref() == Some("absent") {
            continue;
        }
        for port in &iface.ports {
            let Ok(guest) = u16::try_from(port.port) else {
                continue;
            };
            let proto = match port.protocol.as_deref().unwrap_or("TCP") {
                "TCP" => "tcp",
                "UDP" => "udp",
                _ => continue,
            };
            list.push(Forward {
                netdev: format!("ua-{}", iface.name),
                proto,
                host: published.get(&guest).copied().unwrap_or(guest),
                guest,
            });
        }
    }
    list
}
