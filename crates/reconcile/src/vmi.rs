//! The VMI controller's decisions, up to the hand-off to the node agent: create the
//! launcher pod (Pending -> Scheduling), wait until it is on a node and Ready (->
//! Scheduled, with `status.nodeName` and the `kubevirt.io/nodeName` label), fail the VMI
//! when its pod ends or disappears before the VMI does, and clean up: a finished or
//! deleted VMI loses its pod, and the VMI's finalizer goes once no pod is left.
//!
//! Running, Succeeded and the guest's own failures are the node agent's to report.

use std::collections::BTreeMap;

use api::v1::{PhaseTransition, VirtualMachineInstance, VirtualMachineInstanceStatus, VmiPhase};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

use crate::pod::{LauncherConfig, launcher_pod};

/// The finalizer that keeps a VMI until its pod is gone (upstream's current name; its
/// unqualified predecessor `foregroundDeleteVirtualMachine` is deprecated).
pub const FINALIZER: &str = "kubevirt.io/foregroundDeleteVirtualMachine";
/// The label naming the node a VMI runs on.
pub const NODE_LABEL: &str = "kubevirt.io/nodeName";

/// What the controller should do about the VMI's pods.
#[derive(Debug, Clone)]
pub enum PodAction {
    Create(Box<Pod>),
    Delete { name: String },
}

/// The decision for one VMI.
#[derive(Debug, Clone)]
pub struct Plan {
    pub pods: Vec<PodAction>,
    /// The VMI's new status.
    pub status: VirtualMachineInstanceStatus,
    /// Labels to set on the VMI (the node it was scheduled to).
    pub labels: BTreeMap<String, String>,
    /// Add (`Some(true)`) or remove (`Some(false)`) the finalizer.
    pub finalizer: Option<bool>,
}

pub(crate) fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending")
}

pub(crate) fn pod_ready(pod: &Pod) -> bool {
    pod.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn has_label(pod: &Pod, key: &str) -> bool {
    pod.metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(key))
}

/// The `LiveMigratable` condition, as upstream sets it when the VMI is handed over.
fn set_live_migratable(
    vmi: &VirtualMachineInstance,
    status: &mut VirtualMachineInstanceStatus,
    now: Timestamp,
) {
    let (migratable, reason, message) = crate::migration::live_migratable(vmi);
    status.conditions.retain(|c| c.type_ != "LiveMigratable");
    status.conditions.push(api::v1::Condition {
        type_: "LiveMigratable".into(),
        status: if migratable { "True" } else { "False" }.into(),
        last_probe_time: None,
        last_transition_time: Some(Time(now)),
        reason: (!reason.is_empty()).then(|| reason.to_owned()),
        message: (!message.is_empty()).then_some(message),
    });
}

pub(crate) fn pod_node(pod: &Pod) -> Option<&str> {
    pod.spec
        .as_ref()
        .and_then(|s| s.node_name.as_deref())
        .filter(|n| !n.is_empty())
}

/// The pods that belong to `vmi` (its controller reference).
pub fn owned<'a>(vmi: &VirtualMachineInstance, pods: &'a [Pod]) -> Vec<&'a Pod> {
    let uid = vmi.metadata.uid.as_deref().unwrap_or_default();
    pods.iter()
        .filter(|p| {
            p.metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == uid && o.controller == Some(true))
        })
        .collect()
}

/// Moves the VMI to `phase` and records when, unless it is there already.
pub fn set_phase(status: &mut VirtualMachineInstanceStatus, phase: VmiPhase, now: Timestamp) {
    if status.phase == Some(phase) {
        return;
    }
    status.phase = Some(phase);
    status.phase_transition_timestamps.push(PhaseTransition {
        phase,
        phase_transition_timestamp: Some(Time(now)),
    });
}

/// Decides what `vmi` needs, given all pods of its namespace.
pub fn decide(
    vmi: &VirtualMachineInstance,
    pods: &[Pod],
    config: &LauncherConfig,
    now: Timestamp,
) -> Plan {
    let mut status = vmi.status.clone().unwrap_or_default();
    let phase = status.phase.unwrap_or_default();
    let mine = owned(vmi, pods);
    let alive: Vec<&Pod> = mine
        .iter()
        .copied()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let has_finalizer = vmi
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER);
    let mut plan = Plan {
        pods: Vec::new(),
        status: status.clone(),
        labels: BTreeMap::new(),
        finalizer: None,
    };
    let delete_all = |plan: &mut Plan| {
        for p in &alive {
            plan.pods.push(PodAction::Delete {
                name: p.metadata.name.clone().unwrap_or_default(),
            });
        }
    };

    if vmi.metadata.deletion_timestamp.is_some() {
        if !phase.is_final() && phase != VmiPhase::Running {
            set_phase(&mut status, VmiPhase::Failed, now);
            status.reason = Some("Deleted".into());
        }
        delete_all(&mut plan);
        if mine.is_empty() && has_finalizer {
            plan.finalizer = Some(false);
        }
        plan.status = status;
        return plan;
    }
    if !has_finalizer && !phase.is_final() {
        plan.finalizer = Some(true);
    }
    if phase.is_final() {
        delete_all(&mut plan);
        if mine.is_empty() && has_finalizer {
            plan.finalizer = Some(false);
        }
        plan.status = status;
        return plan;
    }

    // The VMI's pod: the one on its node once it has one (a migration's target pod is on
    // another node until the migration completes), else the one not made for a migration.
    let pod = match status.node_name.as_deref() {
        Some(node) => alive.iter().copied().find(|p| pod_node(p) == Some(node)),
        None => alive
            .iter()
            .copied()
            .find(|p| !has_label(p, crate::migration::JOB_LABEL)),
    };
    // A pod that finished on a node the VMI has left (a migration's source) goes.
    if let Some(node) = status.node_name.as_deref() {
        for p in &alive {
            if pod_node(p) != Some(node) && matches!(pod_phase(p), "Failed" | "Succeeded") {
                plan.pods.push(PodAction::Delete {
                    name: p.metadata.name.clone().unwrap_or_default(),
                });
            }
        }
    }
    match (phase, pod) {
        (VmiPhase::Unset | VmiPhase::Pending, None) => {
            plan.pods
                .push(PodAction::Create(Box::new(launcher_pod(vmi, config))));
            set_phase(&mut status, VmiPhase::Scheduling, now);
        }
        (VmiPhase::Unset | VmiPhase::Pending | VmiPhase::Scheduling, Some(p)) => {
            match pod_phase(p) {
                "Failed" | "Succeeded" => {
                    set_phase(&mut status, VmiPhase::Failed, now);
                    status.reason = Some("PodFailed".into());
                }
                _ => match pod_node(p) {
                    Some(node) if pod_ready(p) => {
                        set_phase(&mut status, VmiPhase::Scheduled, now);
                        status.node_name = Some(node.to_owned());
                        plan.labels.insert(NODE_LABEL.into(), node.to_owned());
                        set_live_migratable(vmi, &mut status, now);
                    }
                    _ => set_phase(&mut status, VmiPhase::Scheduling, now),
                },
            }
        }
        (VmiPhase::Scheduling, None) => {
            // The pod went before it was scheduled: make another.
            plan.pods
                .push(PodAction::Create(Box::new(launcher_pod(vmi, config))));
        }
        (VmiPhase::Scheduled | VmiPhase::Running, None) => {
            set_phase(&mut status, VmiPhase::Failed, now);
            status.reason = Some("PodNotExists".into());
        }
        // A Running VMI's end is the node agent's to report (it knows why).
        (VmiPhase::Scheduled, Some(p)) if matches!(pod_phase(p), "Failed" | "Succeeded") => {
            set_phase(&mut status, VmiPhase::Failed, now);
            status.reason = Some("PodTerminated".into());
        }
        _ => {}
    }
    // Before the hand-off the pods are the phase's business; recording them earlier would
    // cost a VMI write per pod event (bound, ready) on the start path.
    let handed_off = matches!(status.phase, Some(VmiPhase::Scheduled | VmiPhase::Running));
    if !handed_off {
        plan.status = status;
        return plan;
    }
    status.active_pods = alive
        .iter()
        .filter_map(|p| {
            Some((
                p.metadata.uid.clone()?,
                pod_node(p).unwrap_or_default().to_owned(),
            ))
        })
        .collect();
    plan.status = status;
    plan
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    use super::*;

    fn now() -> Timestamp {
        "2026-11-22T10:00:00Z".parse().unwrap()
    }

    fn config() -> LauncherConfig {
        LauncherConfig {
            image: "launcher".into(),
            software_emulation: true,
            ..LauncherConfig::default()
        }
    }

    fn vmi(phase: &str, finalizers: Value) -> VirtualMachineInstance {
        serde_json::from_value(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "cirros", "namespace": "default", "uid": "u1", "finalizers": finalizers},
            "spec": {"domain": {"devices": {}, "memory": {"guest": "128Mi"}}},
            "status": {"phase": phase}}))
        .unwrap()
    }

    fn pod(node: Option<&str>, phase: &str, ready: bool) -> Pod {
        serde_json::from_value(json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "virt-launcher-cirros-abcde", "namespace": "default", "uid": "p1",
                "ownerReferences": [{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
                    "name": "cirros", "uid": "u1", "controller": true}]},
            "spec": {"nodeName": node, "containers": [{"name": "compute"}]},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
        .unwrap()
    }

    fn phase(plan: &Plan) -> VmiPhase {
        plan.status.phase.unwrap()
    }

    #[test]
    fn a_new_vmi_gets_a_pod_and_a_finalizer() {
        let plan = decide(&vmi("Pending", json!([])), &[], &config(), now());
        assert!(matches!(plan.pods.as_slice(), [PodAction::Create(_)]));
        assert_eq!(
            (phase(&plan), plan.finalizer),
            (VmiPhase::Scheduling, Some(true))
        );
        assert_eq!(plan.status.phase_transition_timestamps.len(), 1);
    }

    #[test]
    fn a_ready_pod_on_a_node_hands_the_vmi_over() {
        let v = vmi("Scheduling", json!([FINALIZER]));
        let plan = decide(&v, &[pod(None, "Pending", false)], &config(), now());
        assert_eq!((phase(&plan), plan.pods.len()), (VmiPhase::Scheduling, 0));
        let plan = decide(
            &v,
            &[pod(Some("node-1"), "Running", true)],
            &config(),
            now(),
        );
        assert_eq!(phase(&plan), VmiPhase::Scheduled);
        assert_eq!(plan.status.node_name.as_deref(), Some("node-1"));
        assert_eq!(plan.labels[NODE_LABEL], "node-1");
        assert_eq!(plan.status.active_pods["p1"], "node-1");
    }

    #[test]
    fn a_scheduling_vmi_changes_only_when_its_pod_is_ready() {
        // Each pod event before readiness must leave the status as it was: the start path
        // has a budget of two controller writes.
        let mut v = vmi("Pending", json!([]));
        let first = decide(&v, &[], &config(), now());
        v.status = Some(first.status.clone());
        v.metadata.finalizers = Some(vec![FINALIZER.into()]);
        for p in [
            pod(None, "Pending", false),
            pod(Some("node-1"), "Pending", false),
            pod(Some("node-1"), "Running", false),
        ] {
            let plan = decide(&v, &[p], &config(), now());
            assert_eq!(Some(&plan.status), v.status.as_ref());
            assert!(plan.pods.is_empty() && plan.labels.is_empty() && plan.finalizer.is_none());
        }
    }

    #[test]
    fn a_lost_or_failed_pod_fails_the_vmi() {
        let plan = decide(&vmi("Running", json!([FINALIZER])), &[], &config(), now());
        assert_eq!(
            (phase(&plan), plan.status.reason.as_deref()),
            (VmiPhase::Failed, Some("PodNotExists"))
        );
        let plan = decide(
            &vmi("Scheduling", json!([FINALIZER])),
            &[pod(Some("n"), "Failed", false)],
            &config(),
            now(),
        );
        assert_eq!(
            (phase(&plan), plan.status.reason.as_deref()),
            (VmiPhase::Failed, Some("PodFailed"))
        );
        // Someone else's pod is not ours.
        let mut other = pod(Some("n"), "Running", true);
        other.metadata.owner_references = None;
        let plan = decide(&vmi("Pending", json!([])), &[other], &config(), now());
        assert!(matches!(plan.pods.as_slice(), [PodAction::Create(_)]));
    }

    #[test]
    fn finished_or_deleted_vmis_clean_up_then_release() {
        let plan = decide(
            &vmi("Succeeded", json!([FINALIZER])),
            &[pod(Some("n"), "Running", true)],
            &config(),
            now(),
        );
        assert!(matches!(plan.pods.as_slice(), [PodAction::Delete { .. }]));
        assert_eq!(plan.finalizer, None);
        let plan = decide(&vmi("Succeeded", json!([FINALIZER])), &[], &config(), now());
        assert_eq!(plan.finalizer, Some(false));

        let mut deleted = vmi("Scheduling", json!([FINALIZER]));
        deleted.metadata.deletion_timestamp = Some(Time(now()));
        let plan = decide(&deleted, &[pod(None, "Pending", false)], &config(), now());
        assert!(matches!(plan.pods.as_slice(), [PodAction::Delete { .. }]));
        assert_eq!((phase(&plan), plan.finalizer), (VmiPhase::Failed, None));
        assert_eq!(
            decide(&deleted, &[], &config(), now()).finalizer,
            Some(false)
        );
    }
}
