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
const NOT_READY: &str = "ComponentsNotReady";

/// What the controller saw of the other components just now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    /// virt-api answered through the API server, or why not.
    pub virt_api: Result<(), String>,
    /// Nodes whose handler labelled them schedulable.
    pub nodes: usize,
    /// Of those, the nodes whose handler's heartbeat is recent.
    pub fresh_handlers: usize,
}

impl Health {
    /// What is wrong, for the conditions' message; `None` when all is well.
    fn problems(&self) -> Option<String> {
        let mut problems = Vec::new();
        if let Err(why) = &self.virt_api {
            problems.push(format!("virt-api does not answer: {why}"));
        }
        if self.fresh_handlers == 0 {
            problems.push("no virt-handler has sent a recent heartbeat".to_owned());
        } else if self.fresh_handlers < self.nodes {
            problems.push(format!(
                "{} of {} virt-handlers have not sent a recent heartbeat",
                self.nodes - self.fresh_handlers,
                self.nodes
            ));
        }
        (!problems.is_empty()).then(|| format!("{}.", problems.join("; ")))
    }
}

/// The status `kv` should have, deployed by a build of `version` from `registry`, with
/// the components as `health` found them: Available while virt-api answers and a handler
/// beats, Degraded while anything is missing. Conditions keep their transition times
/// while their status stands.
pub fn status(
    kv: &KubeVirt,
    registry: &str,
    version: &str,
    health: &Health,
    now: Timestamp,
) -> KubeVirtStatus {
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
    let problems = health.problems();
    let available = health.virt_api.is_ok() && health.fresh_handlers > 0;
    let (reason, message) = match &problems {
        None => (READY, READY_MESSAGE),
        Some(p) => (NOT_READY, p.as_str()),
    };
    let flag = |b: bool| if b { "True" } else { "False" };
    KubeVirtStatus {
        phase: Some(if deleting { "Deleting" } else { "Deployed" }.into()),
        conditions: vec![
            condition("Available", flag(available), reason, message),
            condition("Progressing", "False", reason, message),
            condition("Degraded", flag(problems.is_some()), reason, message),
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
        let s = status(&kv, "kubevirt-rs", "0.1.0", &healthy(), t0);
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
            &healthy(),
            "2026-12-06T11:00:00Z".parse().unwrap(),
        );
        assert_eq!(later, s, "nothing changed, nothing to write");
    }

    fn healthy() -> Health {
        Health {
            virt_api: Ok(()),
            nodes: 2,
            fresh_handlers: 2,
        }
    }

    #[test]
    fn availability_follows_the_components() {
        let kv: KubeVirt = serde_json::from_value(serde_json::json!({
            "apiVersion": "kubevirt.io/v1", "kind": "KubeVirt",
            "metadata": {"name": "kubevirt", "namespace": "kubevirt"}, "spec": {}}))
        .unwrap();
        let t0: Timestamp = "2026-12-06T10:00:00Z".parse().unwrap();
        let conditions = |h: &Health| {
            status(&kv, "r", "v", h, t0)
                .conditions
                .iter()
                .map(|c| {
                    (
                        c.type_.clone(),
                        c.status.clone(),
                        c.message.clone().unwrap_or_default(),
                    )
                })
                .collect::<Vec<_>>()
        };
        let of = |h: &Health, t: &str| conditions(h).into_iter().find(|c| c.0 == t).unwrap();
        assert_eq!(of(&healthy(), "Available").1, "True");
        assert_eq!(of(&healthy(), "Degraded").1, "False");
        // virt-api gone: not available, degraded, and the message says why.
        let no_api = Health {
            virt_api: Err("503 Service Unavailable".into()),
            ..healthy()
        };
        let available = of(&no_api, "Available");
        assert_eq!(available.1, "False");
        assert_eq!(
            available.2,
            "virt-api does not answer: 503 Service Unavailable."
        );
        assert_eq!(of(&no_api, "Degraded").1, "True");
        // One of two handlers silent: still available, but degraded.
        let one_silent = Health {
            fresh_handlers: 1,
            ..healthy()
        };
        assert_eq!(of(&one_silent, "Available").1, "True");
        let degraded = of(&one_silent, "Degraded");
        assert_eq!(degraded.1, "True");
        assert_eq!(
            degraded.2,
            "1 of 2 virt-handlers have not sent a recent heartbeat."
        );
        // No handler at all: nothing can run.
        let none = Health {
            fresh_handlers: 0,
            ..healthy()
        };
        assert_eq!(of(&none, "Available").1, "False");
    }
}
