//! The migration controller's decisions: a VirtualMachineInstanceMigration moves through
//! Pending -> Scheduling -> Scheduled -> PreparingTarget -> TargetReady -> Running ->
//! Succeeded or Failed.
//!
//! - Pending: waits while another migration of the same VMI is active, or while the
//!   cluster (5) or the source node (2 outbound) already runs as many as upstream's
//!   defaults allow; then creates the target launcher pod, kept off the source node.
//! - Scheduling -> Scheduled: the target pod is on a node and Ready; the VMI gets
//!   `status.migrationState` (who moves where) and the label naming the target node,
//!   which hands the migration to the two handlers.
//! - PreparingTarget -> TargetReady -> Running -> Succeeded/Failed: read off the VMI's
//!   `migrationState`, which the handlers fill in.
//! - A target pod that fails or goes before the end fails the migration; a failed
//!   migration loses its target pod and the VMI its target label; deleting an unfinished
//!   migration asks the source to abort it (`abortRequested`) and waits for that.
//!
//! A VMI is `LiveMigratable` unless an interface or disk pins it to its node
//! ([`live_migratable`]).

use std::collections::BTreeMap;

use api::v1::{
    VirtualMachineInstance, VirtualMachineInstanceMigration, VirtualMachineInstanceMigrationState,
    VirtualMachineInstanceMigrationStatus, VmiPhase, phase,
};
use k8s_openapi::api::core::v1::{
    Affinity, NodeAffinity, NodeSelector, NodeSelectorRequirement, NodeSelectorTerm, Pod,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde_json::json;

use crate::pod::{LauncherConfig, launcher_pod};
use crate::vmi::{NODE_LABEL, pod_node, pod_phase, pod_ready};

/// The finalizer that keeps a migration until its target pod is cleaned up.
pub const FINALIZER: &str = "kubevirt.io/migrationJobFinalize";
/// The label on a target pod naming its migration's uid.
pub const JOB_LABEL: &str = "kubevirt.io/migrationJobUID";
/// The label on a VMI naming the node it migrates to.
pub const TARGET_LABEL: &str = "kubevirt.io/migrationTargetNodeName";
/// Upstream's defaults (`pkg/virt-config/virt-config.go`).
pub const PARALLEL_PER_CLUSTER: usize = 5;
pub const PARALLEL_OUTBOUND_PER_NODE: usize = 2;

/// What a decision needs besides the objects.
#[derive(Debug, Clone)]
pub struct Settings {
    pub launcher: LauncherConfig,
    /// The MigrationPolicy that applies to the VMI, if any.
    pub policy: Option<String>,
    /// The settings the migration runs with (upstream's defaults, the KubeVirt CR's
    /// `spec.configuration.migrations`, then the policy's).
    pub configuration: api::migrations::MigrationConfiguration,
}

impl Settings {
    /// How many migrations may run in the cluster at once (the KubeVirt CR's
    /// `parallelMigrationsPerCluster`, upstream's 5 by default).
    pub fn parallel_per_cluster(&self) -> usize {
        self.configuration
            .parallel_migrations_per_cluster
            .map_or(PARALLEL_PER_CLUSTER, |n| n as usize)
    }

    /// How many may leave one node at once (`parallelOutboundMigrationsPerNode`, 2).
    pub fn parallel_outbound_per_node(&self) -> usize {
        self.configuration
            .parallel_outbound_migrations_per_node
            .map_or(PARALLEL_OUTBOUND_PER_NODE, |n| n as usize)
    }
}

/// What the controller should do for one migration.
#[derive(Debug, Clone, Default)]
pub struct Plan {
    pub status: VirtualMachineInstanceMigrationStatus,
    pub create_pod: Option<Box<Pod>>,
    pub delete_pods: Vec<String>,
    /// The VMI as it should be written (migration state, labels), when it changes.
    pub vmi: Option<Box<VirtualMachineInstance>>,
    /// Add (`Some(true)`) or remove (`Some(false)`) the finalizer.
    pub finalizer: Option<bool>,
}

/// Whether `vmi` can move, as the `LiveMigratable` condition says it: `(status, reason,
/// message)`.
pub fn live_migratable(vmi: &VirtualMachineInstance) -> (bool, &'static str, String) {
    for iface in &vmi.spec.domain.devices.interfaces {
        let on_pod_network = vmi
            .spec
            .networks
            .iter()
            .any(|n| n.name == iface.name && n.pod.is_some());
        if iface.bridge.is_some() && on_pod_network {
            return (
                false,
                "InterfaceNotLiveMigratable",
                format!(
                    "cannot migrate VMI which does not use masquerade, bridge with kubevirt.io/allow-pod-bridge-network-live-migration VM annotation or a migratable plugin to connect to the pod network (interface {})",
                    iface.name
                ),
            );
        }
    }
    if let Some(v) = vmi
        .spec
        .volumes
        .iter()
        .find(|v| v.persistent_volume_claim.is_some() || v.data_volume.is_some())
    {
        return (
            false,
            "DisksNotLiveMigratable",
            format!(
                "cannot migrate VMI: PVC {} is not shared, live migration requires that all PVCs must be shared (using ReadWriteMany access mode)",
                v.name
            ),
        );
    }
    (true, "", String::new())
}

fn is_active(m: &VirtualMachineInstanceMigration) -> bool {
    let p = m.status.as_ref().and_then(|s| s.phase.as_deref());
    m.metadata.deletion_timestamp.is_none() && !phase::is_final(p)
}

/// Running: past Pending, not finished.
fn is_running(m: &VirtualMachineInstanceMigration) -> bool {
    let p = m.status.as_ref().and_then(|s| s.phase.as_deref());
    !matches!(p, None | Some(phase::PENDING)) && !phase::is_final(p)
}

fn set_phase(status: &mut VirtualMachineInstanceMigrationStatus, to: &str, now: Timestamp) {
    if status.phase.as_deref() == Some(to) {
        return;
    }
    status.phase = Some(to.to_owned());
    status
        .phase_transition_timestamps
        .push(api::v1::Opaque(json!({
            "phase": to,
            "phaseTransitionTimestamp": Time(now),
        })));
}

/// The target pod of migration `uid` among the VMI's pods.
pub fn target_pods<'a>(uid: &str, pods: &'a [Pod]) -> Vec<&'a Pod> {
    pods.iter()
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(JOB_LABEL))
                .is_some_and(|u| u == uid)
        })
        .collect()
}

/// The launcher pod for the target of migration `uid`, kept off `source_node`.
pub fn target_pod(
    vmi: &VirtualMachineInstance,
    uid: &str,
    source_node: &str,
    config: &LauncherConfig,
) -> Pod {
    let mut pod = launcher_pod(vmi, config);
    let labels = pod.metadata.labels.get_or_insert_with(Default::default);
    labels.remove(NODE_LABEL);
    labels.remove(TARGET_LABEL);
    labels.insert(JOB_LABEL.into(), uid.into());
    if let Some(spec) = pod.spec.as_mut() {
        let away = NodeSelectorRequirement {
            key: "metadata.name".into(),
            operator: "NotIn".into(),
            values: Some(vec![source_node.into()]),
        };
        // Every term of a user's required affinity, each also away from the source.
        let mut terms: Vec<NodeSelectorTerm> = spec
            .affinity
            .as_ref()
            .and_then(|a| a.node_affinity.as_ref())
            .and_then(|a| {
                a.required_during_scheduling_ignored_during_execution
                    .as_ref()
            })
            .map(|r| r.node_selector_terms.clone())
            .unwrap_or_default();
        if terms.is_empty() {
            terms.push(NodeSelectorTerm::default());
        }
        for term in &mut terms {
            term.match_fields
                .get_or_insert_with(Vec::new)
                .push(away.clone());
        }
        let affinity = spec.affinity.get_or_insert_with(Affinity::default);
        affinity
            .node_affinity
            .get_or_insert_with(NodeAffinity::default)
            .required_during_scheduling_ignored_during_execution = Some(NodeSelector {
            node_selector_terms: terms,
        });
    }
    pod
}

/// Decides what migration `m` needs. `vmi` is the VMI it names, `pods` that VMI's pods,
/// `all` every migration in the cluster (for the one-at-a-time rule and the limits).
pub fn decide(
    m: &VirtualMachineInstanceMigration,
    vmi: Option<&VirtualMachineInstance>,
    pods: &[Pod],
    all: &[VirtualMachineInstanceMigration],
    settings: &Settings,
    now: Timestamp,
) -> Plan {
    let config = &settings.launcher;
    let uid = m.metadata.uid.clone().unwrap_or_default();
    let mut status = m.status.clone().unwrap_or_default();
    let current = status.phase.clone();
    let has_finalizer = m
        .metadata
        .finalizers
        .iter()
        .flatten()
        .any(|f| f == FINALIZER);
    let mut plan = Plan::default();
    let targets = target_pods(&uid, pods);
    let state = vmi
        .and_then(|v| v.status.as_ref())
        .and_then(|s| s.migration_state.as_ref())
        .filter(|s| s.migration_uid.as_deref() == Some(uid.as_str()));
    if let Some(s) = state {
        status.migration_state = Some(s.clone());
    }
    let mut vmi_next = vmi.cloned();
    let mut vmi_changed = false;
    let fail = |status: &mut VirtualMachineInstanceMigrationStatus, why: &str| {
        set_phase(status, phase::FAILED, now);
        let st = status.migration_state.get_or_insert_with(Default::default);
        if st.failed != Some(true) {
            st.failed = Some(true);
            st.failure_reason = Some(why.to_owned());
        }
    };

    let deleting = m.metadata.deletion_timestamp.is_some();
    let finished = phase::is_final(current.as_deref());
    if deleting && !finished && state.is_some_and(|s| !s.is_final()) {
        // Deleting an unfinished migration cancels it: the source aborts, then it ends.
        if let Some(v) = vmi_next.as_mut()
            && let Some(s) = v.status.as_mut().and_then(|s| s.migration_state.as_mut())
            && s.abort_requested != Some(true)
        {
            s.abort_requested = Some(true);
            s.abort_status = Some("Aborting".into());
            vmi_changed = true;
        }
        plan.status = status;
        plan.vmi = vmi_next.filter(|_| vmi_changed).map(Box::new);
        return plan;
    }

    if !deleting && !finished {
        if !has_finalizer {
            plan.finalizer = Some(true);
        }
        let vmi_phase = vmi.and_then(|v| v.status.as_ref()).and_then(|s| s.phase);
        match (vmi, current.as_deref()) {
            (None, _) => fail(&mut status, "the VMI does not exist"),
            (Some(_), _) if vmi_phase != Some(VmiPhase::Running) => {
                fail(&mut status, "the VMI is not running")
            }
            (Some(v), None | Some(phase::PENDING)) => {
                set_phase(&mut status, phase::PENDING, now);
                let source = v
                    .status
                    .as_ref()
                    .and_then(|s| s.node_name.clone())
                    .unwrap_or_default();
                let (migratable, reason, message) = live_migratable(v);
                let earlier = all.iter().any(|o| {
                    o.metadata.uid != m.metadata.uid
                        && o.metadata.namespace == m.metadata.namespace
                        && o.spec.vmi_name == m.spec.vmi_name
                        && is_active(o)
                        && (is_running(o)
                            || (
                                o.metadata.creation_timestamp.as_ref().map(|t| t.0),
                                &o.metadata.name,
                            ) < (
                                m.metadata.creation_timestamp.as_ref().map(|t| t.0),
                                &m.metadata.name,
                            ))
                });
                let running = all.iter().filter(|o| is_running(o)).count();
                let outbound = all
                    .iter()
                    .filter(|o| {
                        is_running(o)
                            && o.status
                                .as_ref()
                                .and_then(|s| s.migration_state.as_ref())
                                .and_then(|s| s.source_node.as_deref())
                                == Some(source.as_str())
                    })
                    .count();
                if !migratable {
                    fail(&mut status, &format!("{reason}: {message}"));
                } else if earlier
                    || running >= settings.parallel_per_cluster()
                    || outbound >= settings.parallel_outbound_per_node()
                {
                    // Waits its turn.
                } else if targets.is_empty() {
                    plan.create_pod = Some(Box::new(target_pod(v, &uid, &source, config)));
                    set_phase(&mut status, phase::SCHEDULING, now);
                    let st = status.migration_state.get_or_insert_with(Default::default);
                    st.source_node = Some(source);
                }
            }
            (Some(v), Some(phase::SCHEDULING)) => match targets.first() {
                None => fail(&mut status, "the target pod went away"),
                Some(p) if matches!(pod_phase(p), "Failed" | "Succeeded") => {
                    fail(&mut status, "the target pod failed")
                }
                Some(p) => {
                    if let (Some(node), true) = (pod_node(p), pod_ready(p)) {
                        let source = v.status.as_ref().and_then(|s| s.node_name.clone());
                        let source_pod = pods
                            .iter()
                            .find(|q| {
                                pod_node(q) == source.as_deref()
                                    && q.metadata.deletion_timestamp.is_none()
                                    && !matches!(pod_phase(q), "Failed" | "Succeeded")
                                    && target_pods(&uid, std::slice::from_ref(q)).is_empty()
                            })
                            .and_then(|q| q.metadata.name.clone());
                        let st = VirtualMachineInstanceMigrationState {
                            migration_uid: Some(uid.clone()),
                            source_node: source,
                            source_pod,
                            target_node: Some(node.to_owned()),
                            target_pod: p.metadata.name.clone(),
                            migration_policy_name: settings.policy.clone(),
                            migration_configuration: Some(settings.configuration.clone()),
                            ..Default::default()
                        };
                        if let Some(next) = vmi_next.as_mut() {
                            next.status
                                .get_or_insert_with(Default::default)
                                .migration_state = Some(st.clone());
                            next.metadata
                                .labels
                                .get_or_insert_with(BTreeMap::new)
                                .insert(TARGET_LABEL.into(), node.to_owned());
                            vmi_changed = true;
                        }
                        status.migration_state = Some(st);
                        set_phase(&mut status, phase::SCHEDULED, now);
                    }
                }
            },
            (Some(_), Some(_)) => match state {
                None => fail(&mut status, "the VMI's migration state was lost"),
                Some(s) if s.completed == Some(true) => {
                    set_phase(&mut status, phase::SUCCEEDED, now)
                }
                Some(s) if s.failed == Some(true) => set_phase(&mut status, phase::FAILED, now),
                Some(s) => {
                    let target_lost = match targets.first() {
                        None => true,
                        Some(p) => {
                            p.metadata.deletion_timestamp.is_some()
                                || matches!(pod_phase(p), "Failed" | "Succeeded")
                        }
                    };
                    if target_lost {
                        // The VMI says so too, so the source stops sending.
                        if let Some(next) = vmi_next.as_mut()
                            && let Some(st) = next
                                .status
                                .as_mut()
                                .and_then(|s| s.migration_state.as_mut())
                        {
                            st.failed = Some(true);
                            st.failure_reason = Some("the target pod went away".into());
                            st.end_timestamp = Some(Time(now));
                            vmi_changed = true;
                            status.migration_state = Some(st.clone());
                        }
                        set_phase(&mut status, phase::FAILED, now);
                    } else if s.start_timestamp.is_some() {
                        set_phase(&mut status, phase::RUNNING, now);
                    } else if s.target_node_address.is_some() {
                        set_phase(&mut status, phase::TARGET_READY, now);
                    } else {
                        set_phase(&mut status, phase::PREPARING_TARGET, now);
                    }
                }
            },
        }
    }

    // Clean-up once finished (or deleted before anything ran).
    let ended = deleting || phase::is_final(status.phase.as_deref());
    if ended {
        let succeeded = status.phase.as_deref() == Some(phase::SUCCEEDED);
        if !succeeded {
            for p in &targets {
                if p.metadata.deletion_timestamp.is_none() {
                    plan.delete_pods
                        .push(p.metadata.name.clone().unwrap_or_default());
                }
            }
        }
        if let Some(next) = vmi_next.as_mut() {
            let labelled = next
                .metadata
                .labels
                .as_ref()
                .is_some_and(|l| l.contains_key(TARGET_LABEL));
            if state.is_some() && labelled {
                if let Some(l) = next.metadata.labels.as_mut() {
                    l.remove(TARGET_LABEL);
                }
                vmi_changed = true;
            }
            // A failure the controller found is recorded on the VMI too.
            if let (Some(st), Some(mine)) = (
                next.status
                    .as_mut()
                    .and_then(|s| s.migration_state.as_mut()),
                status.migration_state.as_ref(),
            ) && st.migration_uid == mine.migration_uid
                && mine.failed == Some(true)
                && st.failed != Some(true)
            {
                st.failed = Some(true);
                st.failure_reason = mine.failure_reason.clone();
                st.end_timestamp = Some(Time(now));
                vmi_changed = true;
            }
        }
        let pods_left = !succeeded && !targets.is_empty();
        if has_finalizer && !pods_left {
            plan.finalizer = Some(false);
        }
    }
    plan.status = status;
    plan.vmi = vmi_next.filter(|_| vmi_changed).map(Box::new);
    plan
}

#[cfg(test)]
mod tests;
