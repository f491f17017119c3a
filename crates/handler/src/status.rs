//! What a launcher's report means for the VMI's status: a pure function, table-tested.

use api::v1::{
    Condition, InterfaceStatus, VirtualMachineInstance, VirtualMachineInstanceStatus, VmiPhase,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use launcher_proto::{DomainState, Exit, Status};
use reconcile::vmi::set_phase;

/// Sets condition `type_` (keeping its transition time when the status is unchanged), or
/// removes it when `status` is None.
fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: Option<(&str, &str, &str)>,
    now: Timestamp,
) {
    let Some((value, reason, message)) = status else {
        conditions.retain(|c| c.type_ != type_);
        return;
    };
    let reason = (!reason.is_empty()).then(|| reason.to_owned());
    let message = (!message.is_empty()).then(|| message.to_owned());
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(c) => {
            if c.status != value {
                c.last_transition_time = Some(Time(now));
                c.status = value.to_owned();
            }
            c.reason = reason;
            c.message = message;
        }
        None => conditions.push(Condition {
            type_: type_.to_owned(),
            status: value.to_owned(),
            last_probe_time: None,
            last_transition_time: Some(Time(now)),
            reason,
            message,
        }),
    }
}

/// The interfaces a running VMI reports: one per spec interface (the pod network's
/// `default` when none is named) with the MAC the launcher gave it and the pod's
/// address, which is how a masquerade or user-mode guest is reached; then what the guest
/// agent adds ([`merge_guest`]).
fn interfaces(
    vmi: &VirtualMachineInstance,
    launcher: &Status,
    pod_ip: Option<&str>,
) -> Vec<InterfaceStatus> {
    let mut list = domain_interfaces(vmi, pod_ip);
    for iface in &mut list {
        iface.mac = launcher
            .interfaces
            .iter()
            .find(|d| iface.name.as_deref() == Some(d.name.as_str()))
            .map(|d| d.mac.clone());
    }
    merge_guest(&mut list, &launcher.guest_interfaces);
    list
}

/// At most this many interfaces the agent reports and the spec does not have.
const MAX_GUEST_ONLY: usize = 10;

/// Adds what the guest agent reports, as upstream does: an interface whose MAC matches a
/// spec interface gets the guest's name for it, `infoSource: domain, guest-agent`, and
/// per address family the guest's addresses, unless it already had some (the pod's
/// address stays first: that is how the guest is reached); a family the guest has no
/// address in is cleared. IPv6 link-local addresses are left out. Other guest
/// interfaces are listed after, nameless, with `infoSource: guest-agent`.
fn merge_guest(list: &mut Vec<InterfaceStatus>, guest: &[launcher_proto::GuestInterface]) {
    let v6 = |ip: &str| ip.contains(':');
    let link_local = |ip: &str| ip.to_ascii_lowercase().starts_with("fe80:");
    let mut guest_only = 0;
    for g in guest {
        let addresses: Vec<String> = g
            .ip_addresses
            .iter()
            .filter(|ip| !link_local(ip))
            .cloned()
            .collect();
        match list
            .iter_mut()
            .find(|i| i.mac.as_deref() == Some(g.mac.as_str()))
        {
            Some(iface) => {
                let mut merged = Vec::new();
                for family_v6 in [false, true] {
                    let ours: Vec<&String> = iface
                        .ip_addresses
                        .iter()
                        .filter(|ip| v6(ip) == family_v6)
                        .collect();
                    let theirs: Vec<&String> =
                        addresses.iter().filter(|ip| v6(ip) == family_v6).collect();
                    let kept = if theirs.is_empty() {
                        Vec::new()
                    } else if ours.is_empty() {
                        theirs
                    } else {
                        ours
                    };
                    merged.extend(kept.into_iter().cloned());
                }
                iface.ip_address = merged.first().cloned();
                iface.ip_addresses = merged;
                iface.interface_name = Some(g.name.clone());
                iface.info_source = Some("domain, guest-agent".into());
            }
            None if guest_only < MAX_GUEST_ONLY => {
                guest_only += 1;
                list.push(InterfaceStatus {
                    ip_address: addresses.first().cloned(),
                    ip_addresses: addresses,
                    mac: Some(g.mac.clone()),
                    interface_name: Some(g.name.clone()),
                    info_source: Some("guest-agent".into()),
                    ..InterfaceStatus::default()
                });
            }
            None => {}
        }
    }
}

/// The spec's interfaces with the pod's address on the first.
fn domain_interfaces(vmi: &VirtualMachineInstance, pod_ip: Option<&str>) -> Vec<InterfaceStatus> {
    let mut names: Vec<String> = vmi
        .spec
        .domain
        .devices
        .interfaces
        .iter()
        .map(|i| i.name.clone())
        .collect();
    if names.is_empty() && !vmi.spec.networks.is_empty() {
        names = vmi.spec.networks.iter().map(|n| n.name.clone()).collect();
    }
    // No interface named: the launcher gives the guest the pod network, as upstream's
    // defaults do, unless the VMI opted out.
    if names.is_empty() && vmi.spec.domain.devices.autoattach_pod_interface != Some(false) {
        names.push("default".into());
    }
    names
        .into_iter()
        .enumerate()
        .map(|(i, name)| {
            let ip = (i == 0).then_some(pod_ip).flatten().map(str::to_owned);
            InterfaceStatus {
                name: Some(name),
                ip_addresses: ip.iter().cloned().collect(),
                ip_address: ip,
                info_source: Some("domain".into()),
                ..InterfaceStatus::default()
            }
        })
        .collect()
}

/// The VMI status after the launcher reported `launcher`. `pod_ip` is the launcher pod's
/// address.
pub fn apply(
    vmi: &VirtualMachineInstance,
    launcher: &Status,
    pod_ip: Option<&str>,
    now: Timestamp,
) -> VirtualMachineInstanceStatus {
    let mut status = vmi.status.clone().unwrap_or_default();
    if status.phase.is_some_and(VmiPhase::is_final) {
        return status;
    }
    crate::migration::apply(&mut status, launcher.migration.as_ref(), now);
    let emulation = launcher
        .software_emulation
        .as_deref()
        .map(|why| ("True", "KVMUnavailable", why));
    let conditions = &mut status.conditions;
    match &launcher.state {
        DomainState::Waiting
        | DomainState::Created
        | DomainState::Exited {
            exit: Exit::Migrated,
        } => return status,
        DomainState::Running => {
            // With a readiness probe the guest is ready once it passes (upstream copies
            // the launcher pod's Ready condition, which the kubelet's probe drives).
            let ready = match &launcher.readiness {
                Some(r) if !r.ready => ("False", "ContainersNotReady", r.message.as_str()),
                _ => ("True", "", ""),
            };
            set_condition(conditions, "Ready", Some(ready), now);
            let agent = launcher.agent_connected.then_some(("True", "", ""));
            set_condition(conditions, "AgentConnected", agent, now);
            set_condition(conditions, "Paused", None, now);
            set_condition(conditions, "SoftwareEmulation", emulation, now);
            set_phase(&mut status, VmiPhase::Running, now);
        }
        DomainState::Paused { reason } => {
            let message = if reason == "startStrategy" {
                "VMI was started paused (startStrategy: Paused)"
            } else {
                "VMI was paused by user"
            };
            set_condition(
                conditions,
                "Ready",
                Some(("False", "GuestNotRunning", "the guest is paused")),
                now,
            );
            set_condition(
                conditions,
                "Paused",
                Some(("True", "PausedByUser", message)),
                now,
            );
            set_condition(conditions, "SoftwareEmulation", emulation, now);
            set_phase(&mut status, VmiPhase::Running, now);
        }
        DomainState::Exited { exit } => {
            set_condition(conditions, "Paused", None, now);
            let (phase, reason, message) = match exit {
                Exit::GuestShutdown => (VmiPhase::Succeeded, "GuestShutdown", String::new()),
                Exit::Stopped { forced: false } => (VmiPhase::Succeeded, "Stopped", String::new()),
                Exit::Stopped { forced: true } => (
                    VmiPhase::Succeeded,
                    "Stopped",
                    "the guest did not power off within its grace period and was killed".into(),
                ),
                Exit::Crashed { message } => (VmiPhase::Failed, "Crashed", message.clone()),
                Exit::Migrated => return status,
            };
            set_condition(
                conditions,
                "Ready",
                Some(("False", "GuestNotRunning", &message)),
                now,
            );
            status.reason = Some(reason.into());
            set_phase(&mut status, phase, now);
        }
        DomainState::Failed { message } => {
            set_condition(
                conditions,
                "Synchronized",
                Some(("False", "SyncFailed", message)),
                now,
            );
            set_condition(
                conditions,
                "Ready",
                Some(("False", "GuestNotRunning", message)),
                now,
            );
            status.reason = Some("SyncFailed".into());
            set_phase(&mut status, VmiPhase::Failed, now);
        }
    }
    if matches!(
        launcher.state,
        DomainState::Running | DomainState::Paused { .. }
    ) {
        status.interfaces = interfaces(vmi, launcher, pod_ip);
        status.fs_freeze_status = launcher.fs_freeze_status.clone();
        if let Some(os) = &launcher.guest_os_info {
            status.guest_os_info = Some(api::v1::Opaque(os.clone()));
        }
    }
    status
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn vmi(phase: &str) -> VirtualMachineInstance {
        serde_json::from_value(
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "v", "namespace": "default", "uid": "u"},
            "spec": {"domain": {"devices": {"interfaces": [{"name": "default", "masquerade": {}}]}},
                     "networks": [{"name": "default", "pod": {}}]},
            "status": {"phase": phase, "nodeName": "n1"}}),
        )
        .unwrap()
    }

    fn report(state: DomainState, emulated: bool) -> Status {
        Status {
            uid: "u".into(),
            state,
            qemu_pid: Some(1),
            software_emulation: emulated.then(|| "KVM cannot run a guest here".into()),
            serial_socket: None,
            vnc_socket: None,
            agent_connected: false,
            interfaces: Vec::new(),
            guest_interfaces: Vec::new(),
            guest_os_info: None,
            fs_freeze_status: None,
            migration: None,
            readiness: None,
        }
    }

    fn condition<'a>(s: &'a VirtualMachineInstanceStatus, t: &str) -> Option<&'a Condition> {
        s.conditions.iter().find(|c| c.type_ == t)
    }

    #[test]
    fn a_readiness_probe_holds_ready_until_it_passes() {
        let now = Timestamp::now();
        let mut r = report(DomainState::Running, false);
        r.readiness = Some(launcher_proto::Readiness {
            ready: false,
            message: "GET / on port 80: HTTP 503".into(),
        });
        let s = apply(&vmi("Scheduled"), &r, None, now);
        assert_eq!(s.phase, Some(VmiPhase::Running));
        let ready = condition(&s, "Ready").unwrap();
        assert_eq!(
            (
                ready.status.as_str(),
                ready.reason.as_deref(),
                ready.message.as_deref()
            ),
            (
                "False",
                Some("ContainersNotReady"),
                Some("GET / on port 80: HTTP 503")
            )
        );
        let mut running = vmi("Running");
        running.status = Some(s);
        r.readiness = Some(launcher_proto::Readiness {
            ready: true,
            message: String::new(),
        });
        let s = apply(&running, &r, None, now);
        let ready = condition(&s, "Ready").unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.reason.as_deref()),
            ("True", None)
        );
    }

    #[test]
    fn running_sets_the_phase_ready_interfaces_and_software_emulation() {
        let now = Timestamp::now();
        let s = apply(
            &vmi("Scheduled"),
            &report(DomainState::Running, true),
            Some("10.0.0.5"),
            now,
        );
        assert_eq!(s.phase, Some(VmiPhase::Running));
        assert_eq!(s.node_name.as_deref(), Some("n1"));
        assert_eq!(condition(&s, "Ready").unwrap().status, "True");
        let emu = condition(&s, "SoftwareEmulation").unwrap();
        assert_eq!(
            (emu.status.as_str(), emu.reason.as_deref()),
            ("True", Some("KVMUnavailable"))
        );
        assert_eq!(s.interfaces[0].name.as_deref(), Some("default"));
        assert_eq!(s.interfaces[0].ip_address.as_deref(), Some("10.0.0.5"));
        assert_eq!(
            s.phase_transition_timestamps.last().unwrap().phase,
            VmiPhase::Running
        );
        let kvm = apply(
            &vmi("Scheduled"),
            &report(DomainState::Running, false),
            None,
            now,
        );
        assert!(condition(&kvm, "SoftwareEmulation").is_none());
    }

    #[test]
    fn the_guest_agent_adds_names_addresses_and_its_own_interfaces() {
        let mut r = report(DomainState::Running, true);
        r.interfaces = vec![launcher_proto::DomainInterface {
            name: "default".into(),
            mac: "02:00:aa:bb:cc:dd".into(),
        }];
        r.guest_interfaces = vec![
            launcher_proto::GuestInterface {
                name: "enp1s0".into(),
                mac: "02:00:aa:bb:cc:dd".into(),
                ip_addresses: vec!["10.0.2.2".into(), "fd00::2".into(), "fe80::1".into()],
            },
            launcher_proto::GuestInterface {
                name: "docker0".into(),
                mac: "02:42:00:00:00:01".into(),
                ip_addresses: vec!["172.17.0.1".into()],
            },
        ];
        r.fs_freeze_status = Some("frozen".into());
        r.guest_os_info = Some(json!({"id": "debian"}));
        let s = apply(&vmi("Running"), &r, Some("10.0.0.5"), Timestamp::now());
        let first = &s.interfaces[0];
        assert_eq!(first.name.as_deref(), Some("default"));
        assert_eq!(first.mac.as_deref(), Some("02:00:aa:bb:cc:dd"));
        assert_eq!(first.interface_name.as_deref(), Some("enp1s0"));
        assert_eq!(first.info_source.as_deref(), Some("domain, guest-agent"));
        // The pod's IPv4 address stays (the guest is reached through it); the guest's
        // IPv6 address is added, its link-local one is not.
        assert_eq!(first.ip_addresses, vec!["10.0.0.5", "fd00::2"]);
        assert_eq!(first.ip_address.as_deref(), Some("10.0.0.5"));
        let extra = &s.interfaces[1];
        assert_eq!(
            (
                extra.name.as_deref(),
                extra.interface_name.as_deref(),
                extra.info_source.as_deref()
            ),
            (None, Some("docker0"), Some("guest-agent"))
        );
        assert_eq!(s.fs_freeze_status.as_deref(), Some("frozen"));
        assert_eq!(s.guest_os_info.unwrap().0, json!({"id": "debian"}));
        // Thawed and without the agent: back to the domain's view.
        let s = apply(
            &vmi("Running"),
            &report(DomainState::Running, true),
            Some("10.0.0.5"),
            Timestamp::now(),
        );
        assert_eq!(s.fs_freeze_status, None);
        assert_eq!(s.interfaces.len(), 1);
        assert_eq!(s.interfaces[0].info_source.as_deref(), Some("domain"));
    }

    #[test]
    fn waiting_and_created_change_nothing() {
        let before = vmi("Scheduled");
        for state in [DomainState::Waiting, DomainState::Created] {
            let s = apply(&before, &report(state, true), None, Timestamp::now());
            assert_eq!(Some(s), before.status);
        }
    }

    #[test]
    fn paused_keeps_running_with_the_paused_condition_and_unpausing_clears_it() {
        let now = Timestamp::now();
        let mut v = vmi("Running");
        let paused = report(
            DomainState::Paused {
                reason: "user".into(),
            },
            false,
        );
        v.status = Some(apply(&v, &paused, None, now));
        let s = v.status.as_ref().unwrap();
        assert_eq!(s.phase, Some(VmiPhase::Running));
        assert_eq!(
            condition(s, "Paused").unwrap().reason.as_deref(),
            Some("PausedByUser")
        );
        assert_eq!(condition(s, "Ready").unwrap().status, "False");
        let s = apply(&v, &report(DomainState::Running, false), None, now);
        assert!(condition(&s, "Paused").is_none());
        assert_eq!(condition(&s, "Ready").unwrap().status, "True");
    }

    #[test]
    fn endings_map_to_succeeded_or_failed_with_reasons() {
        let now = Timestamp::now();
        let cases = [
            (Exit::GuestShutdown, VmiPhase::Succeeded, "GuestShutdown"),
            (
                Exit::Stopped { forced: true },
                VmiPhase::Succeeded,
                "Stopped",
            ),
            (
                Exit::Crashed {
                    message: "qemu died".into(),
                },
                VmiPhase::Failed,
                "Crashed",
            ),
        ];
        for (exit, phase, reason) in cases {
            let s = apply(
                &vmi("Running"),
                &report(DomainState::Exited { exit }, false),
                None,
                now,
            );
            assert_eq!((s.phase, s.reason.as_deref()), (Some(phase), Some(reason)));
            assert_eq!(condition(&s, "Ready").unwrap().status, "False");
        }
        let failed = report(
            DomainState::Failed {
                message: "image not found".into(),
            },
            false,
        );
        let s = apply(&vmi("Scheduled"), &failed, None, now);
        assert_eq!(s.phase, Some(VmiPhase::Failed));
        assert_eq!(
            condition(&s, "Synchronized").unwrap().message.as_deref(),
            Some("image not found")
        );
        // A final phase never changes again.
        let mut done = vmi("Succeeded");
        done.status.as_mut().unwrap().reason = Some("GuestShutdown".into());
        let s = apply(&done, &report(DomainState::Running, false), None, now);
        assert_eq!(Some(s), done.status);
    }
}
