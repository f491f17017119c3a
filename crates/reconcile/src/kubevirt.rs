//! The KubeVirt CR's status. `kubevirt-rs server` deploys the components itself, so an
//! installation that the controller reports on is deployed: phase `Deployed`, and the
//! conditions upstream's virt-operator sets once every component is ready, which is what
//! scripts wait for (`kubectl wait kv kubevirt --for condition=Available`).

use api::kubevirt::{KubeVirt, KubeVirtStatus};
use api::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

const READY: &str = "AllComponentsReady";
const READY_MESSAGE: &str = "All components are ready.";

/// The status `kv` should have, deployed by a build of `version` from `registry`.
/// Conditions keep their transition times while their status stands.
pub fn status(kv: &KubeVirt, registry: &str, version: &str, now: Timestamp) -> KubeVirtStatus {
    let old = kv.status.clone().unwrap_or_default();
    let condition = |type_: &str, status: &str, reason: &str, message: &str| {
        let since = old
            .conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .and_then(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.into(),
            status: status.into(),
            last_probe_time: Some(since.clone()),
            last_transition_time: Some(since),
            reason: Some(reason.into()),
            message: Some(message.into()),
        }
    };
    let deleting = kv.metadata.deletion_timestamp.is_some();
    KubeVirtStatus {
        phase: Some(if deleting { "Deleting" } else { "Deployed" }.into()),
        conditions: vec![
            condition("Available", "True", READY, READY_MESSAGE),
            condition("Progressing", "False", READY, READY_MESSAGE),
            condition("Degraded", "False", READY, READY_MESSAGE),
            condition(
                "Created",
                "True",
                "AllResourcesCreated",
                "All resources were created.",
            ),
        ],
        operator_version: Some(version.into()),
        target_kube_virt_registry: Some(registry.into()),
        target_kube_virt_version: Some(version.into()),
        observed_kube_virt_registry: Some(registry.into()),
        observed_kube_virt_version: Some(version.into()),
        observed_generation: kv.metadata.generation,
        default_architecture: Some("amd64".into()),
        ..old
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_deployed_install_is_available_and_keeps_its_transition_times() {
        let mut kv: KubeVirt = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
            "metadata": {"name": "kubevirt", "namespace": "kubevirt", "generation": 3},
            "spec": {}}))
        .unwrap();
        let t0: Timestamp = "2026-12-06T10:00:00Z".parse().unwrap();
        let s = status(&kv, "kubevirt-rs", "0.1.0", t0);
        assert_eq!(s.phase.as_deref(), Some("Deployed"));
        assert_eq!(s.observed_generation, Some(3));
        assert_eq!(s.observed_kube_virt_version.as_deref(), Some("0.1.0"));
        let available = s
            .conditions
            .iter()
            .find(|c| c.type_ == "Available")
            .unwrap();
        assert_eq!(available.status, "True");
        kv.status = Some(s.clone());
        let later = status(
            &kv,
            "kubevirt-rs",
            "0.1.0",
            "2026-12-06T11:00:00Z".parse().unwrap(),
        );
        assert_eq!(later, s, "nothing changed, nothing to write");
    }
}
