//! What each in-process component may do: one ClusterRole per component with the rules
//! its API calls need, bound to the component's identity ([`crate::pki::COMPONENTS`]).
//! They follow upstream's `kubevirt-controller`, `kubevirt-handler` and
//! `kubevirt-apiserver` roles and Kubernetes' `system:node`, cut to what this code calls.

use serde_json::Value;

/// The binding of every component to `cluster-admin` that earlier releases made; removed
/// at start.
pub const OLD_BINDING: &str = "kubevirt-rs:components";

type Rule = (
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &[
    "get", "list", "watch", "create", "update", "patch", "delete",
];
const UPDATE: &[&str] = &["get", "list", "watch", "update", "patch"];
const STATUS: &[&str] = &["get", "update", "patch"];
const APPLY: &[&str] = &["get", "create", "update", "patch"];
const EVENTS: Rule = (&["create", "patch"], &[""], &["events"]);
const KUBEVIRT: &[&str] = &["kubevirt.io"];
const INSTANCETYPES: Rule = (
    READ,
    &["instancetype.kubevirt.io"],
    &[
        "virtualmachineinstancetypes",
        "virtualmachineclusterinstancetypes",
        "virtualmachinepreferences",
        "virtualmachineclusterpreferences",
    ],
);

/// The rules of the component whose certificate stem is `component`.
pub fn rules(component: &str) -> Vec<Rule> {
    match component {
        "virt-controller" => vec![
            (
                WRITE,
                KUBEVIRT,
                &[
                    "virtualmachineinstances",
                    "virtualmachineinstancemigrations",
                ],
            ),
            (
                UPDATE,
                KUBEVIRT,
                &[
                    "virtualmachines",
                    "virtualmachineinstancereplicasets",
                    "virtualmachineinstancepresets",
                ],
            ),
            (
                STATUS,
                KUBEVIRT,
                &[
                    "virtualmachines/status",
                    "virtualmachineinstancereplicasets/status",
                    "virtualmachineinstancemigrations/status",
                    "kubevirts/status",
                ],
            ),
            // The KubeVirt CR: created when missing, its configuration read.
            (
                &["get", "list", "watch", "create"],
                KUBEVIRT,
                &["kubevirts"],
            ),
            (
                &["get", "list", "watch", "create", "delete"],
                &[""],
                &["pods"],
            ),
            (&["get"], &[""], &["namespaces"]),
            (READ, &["migrations.kubevirt.io"], &["migrationpolicies"]),
            INSTANCETYPES,
            (
                &["get", "create", "update"],
                &["coordination.k8s.io"],
                &["leases"],
            ),
            EVENTS,
            // The KubeVirt CR's health: virt-api answering, handlers' heartbeats.
            (&["get"], &["subresources.kubevirt.io"], &["version"]),
            (&["list"], &[""], &["nodes"]),
        ],
        "virt-handler" => vec![
            (UPDATE, KUBEVIRT, &["virtualmachineinstances"]),
            (READ, &[""], &["pods"]),
            (UPDATE, &[""], &["nodes"]),
            EVENTS,
        ],
        "virt-api" => vec![
            (
                UPDATE,
                KUBEVIRT,
                &["virtualmachineinstances", "virtualmachines"],
            ),
            (STATUS, KUBEVIRT, &["virtualmachines/status"]),
            (
                &["get", "list", "watch", "create"],
                KUBEVIRT,
                &["virtualmachineinstancemigrations"],
            ),
            (READ, KUBEVIRT, &["virtualmachineinstancepresets"]),
            // The cluster's eviction strategy, for the eviction interceptor.
            (READ, KUBEVIRT, &["kubevirts"]),
            INSTANCETYPES,
            (READ, &[""], &["pods", "nodes"]),
            (&["get", "create"], &[""], &["namespaces"]),
            (APPLY, &[""], &["services"]),
            (
                &["create"],
                &["authorization.k8s.io"],
                &["subjectaccessreviews"],
            ),
            (
                APPLY,
                &["rbac.authorization.k8s.io"],
                &["clusterroles", "clusterrolebindings"],
            ),
            (APPLY, &["apiregistration.k8s.io"], &["apiservices"]),
            (
                APPLY,
                &["admissionregistration.k8s.io"],
                &[
                    "mutatingwebhookconfigurations",
                    "validatingwebhookconfigurations",
                ],
            ),
            EVENTS,
        ],
        "pod-runner" => vec![
            (
                &["get", "list", "watch", "update", "patch", "delete"],
                &[""],
                &["pods"],
            ),
            (&["create"], &[""], &["pods/binding"]),
            (STATUS, &[""], &["pods/status", "nodes/status"]),
            (
                &["get", "list", "watch", "create", "update", "patch"],
                &[""],
                &["nodes"],
            ),
            (&["get", "create"], &[""], &["namespaces"]),
            // The service proxy runs with the pod runner's identity; it sends only to
            // ready VMIs.
            (READ, &[""], &["services"]),
            (READ, &["kubevirt.io"], &["virtualmachineinstances"]),
            (
                &["get", "create", "update", "patch"],
                &["coordination.k8s.io"],
                &["leases"],
            ),
            EVENTS,
        ],
        _ => Vec::new(),
    }
}

/// The ClusterRoles virt-api installs and binds (upstream's user roles).
const VIRT_API_ROLES: [&str; 6] = [
    "kubevirt.io:default",
    "kubevirt.io:admin",
    "kubevirt.io:edit",
    "kubevirt.io:view",
    "kubevirt.io:migrate",
    "instancetype.kubevirt.io:view",
];

/// The components' ClusterRoles and ClusterRoleBindings, `kubevirt-rs:<component>`.
pub fn objects() -> Vec<Value> {
    let mut objects = Vec::new();
    for (stem, user, _) in crate::pki::COMPONENTS {
        let name = format!("kubevirt-rs:{stem}");
        let labels = serde_json::json!({"kubevirt.io": "", "app.kubernetes.io/component": stem});
        let mut role = apiserver::rbac::cluster_role(&name, labels, &rules(stem));
        if stem == "virt-api"
            && let Some(rules) = role["rules"].as_array_mut()
        {
            // Upstream's user roles grant subresources virt-api itself never calls, and
            // are aggregated: writing them needs escalate, binding them bind; for those
            // roles alone.
            rules.push(serde_json::json!({
                "verbs": ["escalate", "bind"],
                "apiGroups": ["rbac.authorization.k8s.io"],
                "resources": ["clusterroles"],
                "resourceNames": VIRT_API_ROLES,
            }));
        }
        objects.push(role);
        objects.push(apiserver::rbac::cluster_role_binding(
            &name,
            &name,
            &[("User", user)],
        ));
    }
    objects
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_component_has_a_role_and_none_is_cluster_admin() {
        for (stem, _, _) in crate::pki::COMPONENTS {
            let rules = rules(stem);
            assert!(!rules.is_empty(), "{stem}");
            for (verbs, groups, resources) in rules {
                assert!(
                    !verbs.contains(&"*") && !groups.contains(&"*") && !resources.contains(&"*")
                );
            }
        }
        assert_eq!(objects().len(), 2 * crate::pki::COMPONENTS.len());
    }
}
