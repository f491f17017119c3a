//! `/launcher-eviction-interceptor`: the validating webhook on `pods/eviction` that turns
//! a node drain into live migrations, as upstream's does.
//!
//! A launcher pod whose VMI runs on the pod's node with `evictionStrategy: LiveMigrate`
//! (or `LiveMigrateIfPossible` while it is `LiveMigratable`) is not evicted: the VMI gets
//! `status.evacuationNodeName`, which makes the controller migrate it, and the eviction
//! is denied with 429, which `kubectl drain` retries until the pod has gone by itself.
//! `External` only marks the VMI. Anything else is allowed through. A VMI that sets no
//! strategy has the cluster's (the KubeVirt CR's `spec.configuration.evictionStrategy`).

use api::v1::{EvictionStrategy, VirtualMachineInstance, VmiPhase};
use axum::Json;
use axum::extract::State;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};
use tracing::info;

use crate::AppState;

/// What the interceptor does with one launcher pod's eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Mark the VMI for evacuation from the node (unless marked already), then deny.
    Evacuate {
        node: String,
    },
    /// Deny without evacuating.
    Deny(String),
}

/// The verdict for evicting `pod` of `vmi`, with the cluster's default strategy.
pub fn decide(
    pod: &Pod,
    vmi: &VirtualMachineInstance,
    cluster: Option<EvictionStrategy>,
) -> Verdict {
    let status = vmi.status.clone().unwrap_or_default();
    let pod_node = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let running_here = status.phase == Some(VmiPhase::Running)
        && pod_node.is_some()
        && status.node_name == pod_node;
    if !running_here {
        return Verdict::Allow;
    }
    let node = pod_node.unwrap_or_default();
    let migratable = status
        .conditions
        .iter()
        .any(|c| c.type_ == "LiveMigratable" && c.status == "True");
    match vmi.spec.eviction_strategy.or(cluster) {
        Some(EvictionStrategy::LiveMigrate) if migratable => Verdict::Evacuate { node },
        Some(EvictionStrategy::LiveMigrate) => Verdict::Deny(format!(
            "VMI {} is configured with an eviction strategy but is not live-migratable",
            vmi.metadata.name.as_deref().unwrap_or_default()
        )),
        Some(EvictionStrategy::LiveMigrateIfPossible) if migratable => Verdict::Evacuate { node },
        Some(EvictionStrategy::External) => Verdict::Evacuate { node },
        _ => Verdict::Allow,
    }
}

fn answer(request: &Value, response: Value) -> Json<Value> {
    let mut response = response;
    response["uid"] = request["uid"].clone();
    Json(
        json!({"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}),
    )
}

fn deny(message: &str) -> Value {
    json!({"allowed": false, "status": {"status": "Failure", "code": 429,
        "reason": "TooManyRequests", "message": message}})
}

/// The webhook.
pub async fn intercept(State(state): State<AppState>, Json(body): Json<Value>) -> Json<Value> {
    let request = &body["request"];
    let allowed = json!({"allowed": true});
    let (Some(namespace), Some(name)) = (request["namespace"].as_str(), request["name"].as_str())
    else {
        return answer(request, allowed);
    };
    let pods: Api<Pod> = Api::namespaced(state.client.clone(), namespace);
    let Ok(Some(pod)) = pods.get_opt(name).await else {
        return answer(request, allowed);
    };
    let labels = pod.metadata.labels.clone().unwrap_or_default();
    let vmi_name = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get("kubevirt.io/domain").cloned());
    let (true, Some(vmi_name)) = (
        labels
            .get("kubevirt.io")
            .is_some_and(|v| v == "virt-launcher"),
        vmi_name,
    ) else {
        return answer(request, allowed);
    };
    let vmis: Api<VirtualMachineInstance> = Api::namespaced(state.client.clone(), namespace);
    let Ok(Some(vmi)) = vmis.get_opt(&vmi_name).await else {
        return answer(request, allowed);
    };
    let installs: Api<api::kubevirt::KubeVirt> = Api::all(state.client.clone());
    let cluster = installs.list(&Default::default()).await.ok().and_then(|l| {
        api::kubevirt::installation(&l.items).and_then(api::kubevirt::KubeVirt::eviction_strategy)
    });
    let response = match decide(&pod, &vmi, cluster) {
        Verdict::Allow => allowed,
        Verdict::Deny(message) => deny(&message),
        Verdict::Evacuate { node } => {
            let marked = vmi
                .status
                .as_ref()
                .and_then(|s| s.evacuation_node_name.as_deref())
                == Some(node.as_str());
            if !marked && !request["dryRun"].as_bool().unwrap_or(false) {
                let patch = json!({"status": {"evacuationNodeName": node}});
                if let Err(e) = vmis
                    .patch(&vmi_name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    return answer(
                        request,
                        deny(&format!("marking VMI {vmi_name} for evacuation: {e}")),
                    );
                }
                info!(vmi = %vmi_name, %node, "eviction: evacuating the VMI");
            }
            deny(&format!(
                "Eviction triggered evacuation of VMI \"{namespace}/{vmi_name}\""
            ))
        }
    };
    answer(request, response)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn vmi(strategy: Option<&str>, migratable: &str, node: &str) -> VirtualMachineInstance {
        serde_json::from_value(
            json!({"apiVersion": "kubevirt.io/v1", "kind": "VirtualMachineInstance",
            "metadata": {"name": "v", "namespace": "default"},
            "spec": {"domain": {"devices": {}}, "evictionStrategy": strategy},
            "status": {"phase": "Running", "nodeName": node,
                "conditions": [{"type": "LiveMigratable", "status": migratable}]}}),
        )
        .unwrap()
    }

    fn pod(node: &str) -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "p"}, "spec": {"nodeName": node, "containers": []}}),
        )
        .unwrap()
    }

    #[test]
    fn live_migratable_vmis_are_evacuated_instead_of_evicted() {
        let evacuate = Verdict::Evacuate { node: "n1".into() };
        assert_eq!(
            decide(&pod("n1"), &vmi(Some("LiveMigrate"), "True", "n1"), None),
            evacuate
        );
        assert_eq!(
            decide(
                &pod("n1"),
                &vmi(Some("LiveMigrateIfPossible"), "True", "n1"),
                None
            ),
            evacuate
        );
        assert_eq!(
            decide(
                &pod("n1"),
                &vmi(Some("LiveMigrateIfPossible"), "False", "n1"),
                None
            ),
            Verdict::Allow
        );
        assert!(matches!(
            decide(&pod("n1"), &vmi(Some("LiveMigrate"), "False", "n1"), None),
            Verdict::Deny(_)
        ));
        assert_eq!(
            decide(&pod("n1"), &vmi(None, "True", "n1"), None),
            Verdict::Allow
        );
        assert_eq!(
            decide(&pod("n1"), &vmi(Some("None"), "True", "n1"), None),
            Verdict::Allow
        );
        // The cluster's strategy, for a VMI that sets none; the VMI's own wins.
        assert_eq!(
            decide(
                &pod("n1"),
                &vmi(None, "True", "n1"),
                Some(EvictionStrategy::LiveMigrate)
            ),
            evacuate
        );
        assert_eq!(
            decide(
                &pod("n1"),
                &vmi(Some("None"), "True", "n1"),
                Some(EvictionStrategy::LiveMigrate)
            ),
            Verdict::Allow
        );
        // A pod the VMI has left (a migration's source) goes as any pod.
        assert_eq!(
            decide(&pod("n1"), &vmi(Some("LiveMigrate"), "True", "n2"), None),
            Verdict::Allow
        );
    }
}
