//! The VirtualMachineInstanceReplicaSet controller's decisions: keep `spec.replicas` live
//! VMIs that match the selector, as upstream's ReplicaSet semantics say.
//!
//! A matching VMI without a controller is adopted; an owned VMI whose labels stop
//! matching is released (orphaned). Finished VMIs (Succeeded, Failed) do not count and
//! are deleted, to be replaced. Scaling down deletes the least advanced first (not yet
//! running, then not ready, then the newest). `paused: true` changes nothing but the
//! status.

use std::collections::BTreeMap;

use api::v1::{
    VirtualMachineInstance, VirtualMachineInstanceReplicaSet,
    VirtualMachineInstanceReplicaSetStatus, VmiPhase,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

/// What to do with the ReplicaSet's VMIs.
#[derive(Debug, Clone)]
pub enum Action {
    Create(Box<VirtualMachineInstance>),
    Delete { name: String },
    Adopt { name: String },
    Release { name: String },
}

/// The decision for one ReplicaSet.
#[derive(Debug, Clone)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub status: VirtualMachineInstanceReplicaSetStatus,
}

fn controller_uid(vmi: &VirtualMachineInstance) -> Option<&str> {
    vmi.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .map(|o| o.uid.as_str())
}

fn phase(vmi: &VirtualMachineInstance) -> VmiPhase {
    vmi.status
        .as_ref()
        .and_then(|s| s.phase)
        .unwrap_or_default()
}

fn ready(vmi: &VirtualMachineInstance) -> bool {
    vmi.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

fn name(vmi: &VirtualMachineInstance) -> String {
    vmi.metadata.name.clone().unwrap_or_default()
}

/// A new replica from the template: `generateName` after the ReplicaSet, owned by it.
pub fn replica(rs: &VirtualMachineInstanceReplicaSet) -> VirtualMachineInstance {
    let template = rs.spec.template.metadata.clone().unwrap_or_default();
    VirtualMachineInstance {
        metadata: ObjectMeta {
            generate_name: Some(rs.metadata.name.clone().unwrap_or_default()),
            namespace: rs.metadata.namespace.clone(),
            labels: template.labels,
            annotations: template.annotations,
            owner_references: Some(vec![crate::controller_ref(
                "VirtualMachineInstanceReplicaSet",
                &rs.metadata,
            )]),
            ..ObjectMeta::default()
        },
        spec: rs.spec.template.spec.clone().unwrap_or_default(),
        status: None,
    }
}

/// How far a VMI has come; scaling down removes the lowest first.
fn progress(vmi: &VirtualMachineInstance) -> (u8, std::cmp::Reverse<String>) {
    let rank = match (phase(vmi), ready(vmi)) {
        (VmiPhase::Running, true) => 3,
        (VmiPhase::Running, false) => 2,
        (VmiPhase::Scheduled, _) => 1,
        _ => 0,
    };
    let created = vmi
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default();
    (rank, std::cmp::Reverse(created))
}

/// Decides what `rs` needs, given the VMIs of its namespace.
pub fn decide(rs: &VirtualMachineInstanceReplicaSet, vmis: &[VirtualMachineInstance]) -> Plan {
    let uid = rs.metadata.uid.clone().unwrap_or_default();
    let selects = |v: &VirtualMachineInstance| {
        let labels: BTreeMap<String, String> = v.metadata.labels.clone().unwrap_or_default();
        api::preset::selector_matches(&rs.spec.selector, &labels).unwrap_or(false)
    };
    let mut actions = Vec::new();
    let mut mine: Vec<&VirtualMachineInstance> = Vec::new();
    for v in vmis
        .iter()
        .filter(|v| v.metadata.deletion_timestamp.is_none())
    {
        match (controller_uid(v), selects(v)) {
            (Some(u), true) if u == uid => mine.push(v),
            (Some(u), false) if u == uid => actions.push(Action::Release { name: name(v) }),
            (None, true) => {
                actions.push(Action::Adopt { name: name(v) });
                mine.push(v);
            }
            _ => {}
        }
    }
    let (finished, mut live): (Vec<&VirtualMachineInstance>, Vec<&VirtualMachineInstance>) =
        mine.into_iter().partition(|v| phase(v).is_final());
    let desired = usize::try_from(rs.spec.replicas.unwrap_or(1).max(0)).unwrap_or(0);
    let paused = rs.spec.paused == Some(true);
    if !paused {
        for v in &finished {
            actions.push(Action::Delete { name: name(v) });
        }
        if live.len() < desired {
            for _ in live.len()..desired {
                actions.push(Action::Create(Box::new(replica(rs))));
            }
        } else if live.len() > desired {
            live.sort_by_key(|v| progress(v));
            for v in &live[..live.len() - desired] {
                actions.push(Action::Delete { name: name(v) });
            }
        }
    }
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let mut status = rs.status.clone().unwrap_or_default();
    status.replicas = Some(count(live.len()));
    status.ready_replicas = Some(count(live.iter().filter(|v| ready(v)).count()));
    status.label_selector = Some(selector_string(rs));
    Plan { actions, status }
}

/// The selector as a label-selector string (`status.labelSelector`, for `kubectl scale`
/// and autoscalers).
fn selector_string(rs: &VirtualMachineInstanceReplicaSet) -> String {
    let sel = &rs.spec.selector;
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let values = e.values.clone().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({values})", e.key),
            "NotIn" => format!("{} notin ({values})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::{Value, json};

    use super::*;

    fn rs(replicas: i32) -> VirtualMachineInstanceReplicaSet {
        serde_json::from_value(
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet",
            "metadata": {"name": "web", "namespace": "default", "uid": "rs-uid"},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": "web"}},
                "template": {"metadata": {"labels": {"app": "web"}},
                    "spec": {"domain": {"devices": {}, "memory": {"guest": "64Mi"}}}}}}),
        )
        .unwrap()
    }

    fn vmi(
        name: &str,
        labels: Value,
        owner: Option<&str>,
        phase: &str,
        ready: bool,
        created: &str,
    ) -> VirtualMachineInstance {
        let refs = owner.map(|u| json!([{"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstanceReplicaSet", "name": "web", "uid": u, "controller": true}]));
        serde_json::from_value(json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": name, "namespace": "default", "labels": labels, "ownerReferences": refs,
                "creationTimestamp": created},
            "spec": {"domain": {"devices": {}}},
            "status": {"phase": phase, "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" }}]}}))
        .unwrap()
    }

    fn summary(plan: &Plan) -> Vec<String> {
        plan.actions
            .iter()
            .map(|a| match a {
                Action::Create(v) => {
                    format!("create {}", v.metadata.generate_name.clone().unwrap())
                }
                Action::Delete { name } => format!("delete {name}"),
                Action::Adopt { name } => format!("adopt {name}"),
                Action::Release { name } => format!("release {name}"),
            })
            .collect()
    }

    #[test]
    fn scales_up_with_owned_replicas_from_the_template() {
        let plan = decide(
            &rs(3),
            &[vmi(
                "web-a",
                json!({"app": "web"}),
                Some("rs-uid"),
                "Running",
                true,
                "2026-11-22T10:00:00Z",
            )],
        );
        assert_eq!(summary(&plan), ["create web", "create web"]);
        let Action::Create(new) = &plan.actions[0] else {
            unreachable!()
        };
        assert_eq!(
            new.metadata.owner_references.as_ref().unwrap()[0].uid,
            "rs-uid"
        );
        assert_eq!(new.metadata.labels.as_ref().unwrap()["app"], "web");
        assert_eq!(
            (plan.status.replicas, plan.status.ready_replicas),
            (Some(1), Some(1))
        );
        assert_eq!(plan.status.label_selector.as_deref(), Some("app=web"));
    }

    #[test]
    fn scales_down_the_least_advanced_first() {
        let vmis = [
            vmi(
                "ready-old",
                json!({"app": "web"}),
                Some("rs-uid"),
                "Running",
                true,
                "2026-11-22T10:00:00Z",
            ),
            vmi(
                "ready-new",
                json!({"app": "web"}),
                Some("rs-uid"),
                "Running",
                true,
                "2026-11-22T10:05:00Z",
            ),
            vmi(
                "pending",
                json!({"app": "web"}),
                Some("rs-uid"),
                "Scheduling",
                false,
                "2026-11-22T09:00:00Z",
            ),
        ];
        assert_eq!(
            summary(&decide(&rs(1), &vmis)),
            ["delete pending", "delete ready-new"]
        );
        assert!(summary(&decide(&rs(3), &vmis)).is_empty());
    }

    #[test]
    fn adopts_releases_and_replaces_finished_replicas() {
        let vmis = [
            vmi(
                "orphan",
                json!({"app": "web"}),
                None,
                "Running",
                true,
                "2026-11-22T10:00:00Z",
            ),
            vmi(
                "relabelled",
                json!({"app": "other"}),
                Some("rs-uid"),
                "Running",
                true,
                "2026-11-22T10:00:00Z",
            ),
            vmi(
                "done",
                json!({"app": "web"}),
                Some("rs-uid"),
                "Failed",
                false,
                "2026-11-22T10:00:00Z",
            ),
            vmi(
                "someone-elses",
                json!({"app": "web"}),
                Some("other-uid"),
                "Running",
                true,
                "2026-11-22T10:00:00Z",
            ),
        ];
        assert_eq!(
            summary(&decide(&rs(2), &vmis)),
            [
                "adopt orphan",
                "release relabelled",
                "delete done",
                "create web"
            ]
        );
        let mut paused = rs(2);
        paused.spec.paused = Some(true);
        assert_eq!(
            summary(&decide(&paused, &vmis)),
            ["adopt orphan", "release relabelled"]
        );
    }
}
