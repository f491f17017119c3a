//! The scheduler of a one-node cluster: a pod with no node is bound to this one when its
//! `nodeSelector` and required node affinity match the node (and the node is not
//! cordoned), through `pods/{name}/binding` as kube-scheduler binds; otherwise it stays
//! `Pending` with `PodScheduled=False`, reason `Unschedulable`. The runner calls
//! [`schedule`] again whenever pods or the node change. Taints and tolerations are not
//! considered (the node has none).

use k8s_openapi::api::core::v1::{Node, NodeSelectorRequirement, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

/// What to do with one pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Not this scheduler's business: bound already, being deleted, finished, or meant
    /// for another scheduler.
    Skip,
    Bind,
    Unschedulable(String),
}

const NOT_MATCHING: &str =
    "0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector.";
const CORDONED: &str = "0/1 nodes are available: 1 node(s) were unschedulable.";

/// Where `pod` goes, given the only node.
pub fn decide(pod: &Pod, node: &Node) -> Decision {
    let Some(spec) = &pod.spec else {
        return Decision::Skip;
    };
    let finished = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Succeeded" || p == "Failed");
    let ours = spec
        .scheduler_name
        .as_deref()
        .is_none_or(|s| s.is_empty() || s == "default-scheduler");
    if spec.node_name.as_deref().is_some_and(|n| !n.is_empty())
        || pod.metadata.deletion_timestamp.is_some()
        || finished
        || !ours
    {
        return Decision::Skip;
    }
    if node.spec.as_ref().and_then(|s| s.unschedulable) == Some(true) {
        return Decision::Unschedulable(CORDONED.to_owned());
    }
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let selector_fits = spec
        .node_selector
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    if selector_fits && affinity_fits(pod, node) {
        Decision::Bind
    } else {
        Decision::Unschedulable(NOT_MATCHING.to_owned())
    }
}

/// The required node affinity: any one term whose expressions and fields all match.
fn affinity_fits(pod: &Pod, node: &Node) -> bool {
    let required = pod
        .spec
        .as_ref()
        .and_then(|s| s.affinity.as_ref())
        .and_then(|a| a.node_affinity.as_ref())
        .and_then(|a| {
            a.required_during_scheduling_ignored_during_execution
                .as_ref()
        });
    let Some(required) = required else {
        return true;
    };
    let labels = node.metadata.labels.clone().unwrap_or_default();
    let name = node.metadata.name.as_deref();
    required.node_selector_terms.iter().any(|term| {
        let expressions = term.match_expressions.iter().flatten();
        let fields = term.match_fields.iter().flatten();
        let any = term
            .match_expressions
            .as_ref()
            .is_some_and(|e| !e.is_empty())
            || term.match_fields.as_ref().is_some_and(|f| !f.is_empty());
        any && expressions
            .clone()
            .all(|r| requirement(r, labels.get(&r.key).map(String::as_str)))
            && fields
                .clone()
                .all(|r| r.key == "metadata.name" && requirement(r, name))
    })
}

fn requirement(r: &NodeSelectorRequirement, value: Option<&str>) -> bool {
    let values = r.values.as_deref().unwrap_or_default();
    let number = |s: &str| s.parse::<i64>().ok();
    match (r.operator.as_str(), value) {
        ("In", Some(v)) => values.iter().any(|x| x == v),
        ("NotIn", v) => v.is_none_or(|v| !values.iter().any(|x| x == v)),
        ("Exists", v) => v.is_some(),
        ("DoesNotExist", v) => v.is_none(),
        ("Gt", Some(v)) => {
            matches!((number(v), values.first().and_then(|x| number(x))), (Some(a), Some(b)) if a > b)
        }
        ("Lt", Some(v)) => {
            matches!((number(v), values.first().and_then(|x| number(x))), (Some(a), Some(b)) if a < b)
        }
        _ => false,
    }
}

/// Acts on [`decide`]: binds the pod, or records why it stays pending (once per reason).
/// True when the pod is bound to the node now.
pub async fn schedule(client: &Client, pod: &Pod, node: &Node) -> Result<bool, kube::Error> {
    let decision = decide(pod, node);
    if decision == Decision::Skip {
        return Ok(false);
    }
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    match decision {
        Decision::Skip => Ok(false),
        Decision::Bind => {
            let node_name = node.metadata.name.clone().unwrap_or_default();
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": name, "namespace": ns, "uid": pod.metadata.uid},
                "target": {"apiVersion": "v1", "kind": "Node", "name": node_name},
            });
            match api
                .create_subresource::<_, Value>("binding", &name, &PostParams::default(), &binding)
                .await
            {
                // Bound already (a second pass before the watch caught up): fine.
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(true),
                Err(e) => Err(e),
                Ok(_) => {
                    tracing::info!(pod = %name, namespace = %ns, node = %node_name, "pod bound");
                    Ok(true)
                }
            }
        }
        Decision::Unschedulable(message) => {
            let noted = pod
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .into_iter()
                .flatten()
                .any(|c| {
                    c.type_ == "PodScheduled"
                        && c.status == "False"
                        && c.message.as_deref() == Some(message.as_str())
                });
            if noted {
                return Ok(false);
            }
            let now = crate::status::rfc3339(crate::process::now());
            // Under the resourceVersion decided on: another node's runner may have bound
            // and started the pod meanwhile, and its status must not be overwritten.
            let status = json!({
                "metadata": {"resourceVersion": pod.metadata.resource_version},
                "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": message, "lastTransitionTime": now, "lastProbeTime": null}]}});
            match api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                .await
            {
                Err(kube::Error::Api(e)) if e.code == 409 => return Ok(false),
                other => {
                    other?;
                }
            }
            tracing::info!(pod = %name, namespace = %ns, %message, "pod not schedulable");
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn node(labels: Value) -> Node {
        serde_json::from_value(json!({"metadata": {"name": "n1", "labels": labels}})).unwrap()
    }

    fn pod(spec: Value) -> Pod {
        let mut spec = spec;
        spec["containers"] = json!([{"name": "c"}]);
        serde_json::from_value(json!({"metadata": {"name": "p"}, "spec": spec})).unwrap()
    }

    fn term(expressions: Value) -> Value {
        json!({"affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution":
            {"nodeSelectorTerms": [{"matchExpressions": expressions}]}}}})
    }

    #[test]
    fn the_node_selector_must_match_the_labels() {
        let n = node(json!({"zone": "a"}));
        assert_eq!(decide(&pod(json!({})), &n), Decision::Bind);
        assert_eq!(
            decide(&pod(json!({"nodeSelector": {"zone": "a"}})), &n),
            Decision::Bind
        );
        assert_eq!(
            decide(&pod(json!({"nodeSelector": {"zone": "b"}})), &n),
            Decision::Unschedulable(NOT_MATCHING.to_owned())
        );
    }

    #[test]
    fn required_node_affinity_is_honoured() {
        let n = node(json!({"zone": "a", "size": "4"}));
        let fits = |e: Value| decide(&pod(term(e)), &n) == Decision::Bind;
        assert!(fits(
            json!([{"key": "zone", "operator": "In", "values": ["a", "b"]}])
        ));
        assert!(!fits(
            json!([{"key": "zone", "operator": "NotIn", "values": ["a"]}])
        ));
        assert!(fits(json!([{"key": "gpu", "operator": "DoesNotExist"}])));
        assert!(fits(
            json!([{"key": "size", "operator": "Gt", "values": ["2"]}])
        ));
        assert!(!fits(
            json!([{"key": "size", "operator": "Lt", "values": ["2"]}])
        ));
        assert!(!fits(
            json!([{"key": "zone", "operator": "Exists"}, {"key": "x", "operator": "Exists"}])
        ));
    }

    #[test]
    fn bound_deleted_cordoned_and_foreign_pods() {
        let n = node(json!({}));
        assert_eq!(decide(&pod(json!({"nodeName": "n2"})), &n), Decision::Skip);
        assert_eq!(
            decide(&pod(json!({"schedulerName": "other"})), &n),
            Decision::Skip
        );
        let mut cordoned = n.clone();
        cordoned.spec = Some(serde_json::from_value(json!({"unschedulable": true})).unwrap());
        assert_eq!(
            decide(&pod(json!({})), &cordoned),
            Decision::Unschedulable(CORDONED.to_owned())
        );
    }
}
