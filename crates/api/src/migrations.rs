//! `migrations.kubevirt.io/v1alpha1` MigrationPolicy: settings for the migrations of the
//! VMIs it selects, and how a VMI's policy is chosen.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

/// Migration settings for the VMIs (and namespaces) whose labels match its selectors.
#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "migrations.kubevirt.io",
    version = "v1alpha1",
    kind = "MigrationPolicy",
    plural = "migrationpolicies",
    singular = "migrationpolicy",
    category = "all",
    status = "MigrationPolicyStatus"
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrationPolicySpec {
    #[serde(rename = "allowAutoConverge")]
    pub allow_auto_converge: Option<bool>,
    pub bandwidth_per_migration: Option<Quantity>,
    #[serde(rename = "completionTimeoutPerGiB")]
    pub completion_timeout_per_gib: Option<i64>,
    pub allow_post_copy: Option<bool>,
    pub allow_workload_disruption: Option<bool>,
    #[serde(default)]
    pub selectors: Selectors,
}

/// Both must match: every label named must be on the object with the same value.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Selectors {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespace_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub virtual_machine_instance_selector: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct MigrationPolicyStatus {}

/// The settings one migration runs with (`status.migrationState.migrationConfiguration`):
/// upstream's defaults, then the policy's.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrationConfiguration {
    pub allow_auto_converge: Option<bool>,
    pub allow_post_copy: Option<bool>,
    pub allow_workload_disruption: Option<bool>,
    pub bandwidth_per_migration: Option<Quantity>,
    #[serde(rename = "completionTimeoutPerGiB")]
    pub completion_timeout_per_gib: Option<i64>,
    pub progress_timeout: Option<i64>,
    pub parallel_migrations_per_cluster: Option<u32>,
    pub parallel_outbound_migrations_per_node: Option<u32>,
    /// Upstream's; accepted and reported, not acted on here.
    pub unsafe_migration_override: Option<bool>,
    pub node_drain_taint_key: Option<String>,
    pub network: Option<String>,
    #[serde(rename = "disableTLS")]
    pub disable_tls: Option<bool>,
    #[serde(rename = "matchSELinuxLevelOnMigration")]
    pub match_selinux_level_on_migration: Option<bool>,
}

impl Default for MigrationConfiguration {
    /// Upstream's defaults (`pkg/virt-config/virt-config.go`).
    fn default() -> Self {
        Self {
            allow_auto_converge: Some(false),
            allow_post_copy: Some(false),
            allow_workload_disruption: Some(false),
            bandwidth_per_migration: Some(Quantity("0Mi".into())),
            completion_timeout_per_gib: Some(150),
            progress_timeout: Some(150),
            parallel_migrations_per_cluster: Some(5),
            parallel_outbound_migrations_per_node: Some(2),
            unsafe_migration_override: None,
            node_drain_taint_key: None,
            network: None,
            disable_tls: None,
            match_selinux_level_on_migration: None,
        }
    }
}

impl MigrationConfiguration {
    /// These settings with what the cluster's configuration (the KubeVirt CR's
    /// `spec.configuration.migrations`) sets on top.
    pub fn with_cluster(self, set: &MigrationConfiguration) -> Self {
        macro_rules! over {
            ($($field:ident),*) => {
                Self { $($field: set.$field.clone().or(self.$field),)* }
            };
        }
        over!(
            allow_auto_converge,
            allow_post_copy,
            allow_workload_disruption,
            bandwidth_per_migration,
            completion_timeout_per_gib,
            progress_timeout,
            parallel_migrations_per_cluster,
            parallel_outbound_migrations_per_node,
            unsafe_migration_override,
            node_drain_taint_key,
            network,
            disable_tls,
            match_selinux_level_on_migration
        )
    }

    /// These settings with what `policy` sets on top.
    pub fn with_policy(mut self, policy: &MigrationPolicySpec) -> Self {
        let s = policy;
        if s.allow_auto_converge.is_some() {
            self.allow_auto_converge = s.allow_auto_converge;
        }
        if s.allow_post_copy.is_some() {
            self.allow_post_copy = s.allow_post_copy;
        }
        if s.allow_workload_disruption.is_some() {
            self.allow_workload_disruption = s.allow_workload_disruption;
        }
        if s.bandwidth_per_migration.is_some() {
            self.bandwidth_per_migration = s.bandwidth_per_migration.clone();
        }
        if s.completion_timeout_per_gib.is_some() {
            self.completion_timeout_per_gib = s.completion_timeout_per_gib;
        }
        self
    }
}

/// The policy for a VMI with `vmi_labels` in a namespace with `namespace_labels`, as
/// upstream picks it: of the policies whose selectors both match, the one matching the
/// most labels; on a tie, the first by name.
pub fn matching<'a>(
    policies: &'a [MigrationPolicy],
    vmi_labels: &BTreeMap<String, String>,
    namespace_labels: &BTreeMap<String, String>,
) -> Option<&'a MigrationPolicy> {
    let fits = |selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>| {
        selector.iter().all(|(k, v)| labels.get(k) == Some(v))
    };
    policies
        .iter()
        .filter(|p| {
            fits(
                &p.spec.selectors.virtual_machine_instance_selector,
                vmi_labels,
            ) && fits(&p.spec.selectors.namespace_selector, namespace_labels)
        })
        .max_by(|a, b| {
            let weight = |p: &MigrationPolicy| {
                p.spec.selectors.virtual_machine_instance_selector.len()
                    + p.spec.selectors.namespace_selector.len()
            };
            weight(a)
                .cmp(&weight(b))
                .then_with(|| b.metadata.name.cmp(&a.metadata.name))
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    fn policy(name: &str, vmi: serde_json::Value, ns: serde_json::Value) -> MigrationPolicy {
        serde_json::from_value(json!({"apiVersion": "migrations.kubevirt.io/v1alpha1",
            "kind": "MigrationPolicy", "metadata": {"name": name},
            "spec": {"bandwidthPerMigration": "1Mi",
                "selectors": {"virtualMachineInstanceSelector": vmi, "namespaceSelector": ns}}}))
        .unwrap()
    }

    fn labels(v: serde_json::Value) -> BTreeMap<String, String> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_most_specific_matching_policy_wins() {
        let policies = [
            policy("b-broad", json!({"tier": "db"}), json!({})),
            policy("a-narrow", json!({"tier": "db", "size": "big"}), json!({})),
            policy(
                "c-other-ns",
                json!({"tier": "db", "size": "big"}),
                json!({"team": "x"}),
            ),
            policy("a-tie", json!({"tier": "db"}), json!({})),
        ];
        let vmi = labels(json!({"tier": "db", "size": "big"}));
        let pick = |ns: serde_json::Value| {
            matching(&policies, &vmi, &labels(ns)).and_then(|p| p.metadata.name.clone())
        };
        assert_eq!(pick(json!({})).as_deref(), Some("a-narrow"));
        assert_eq!(pick(json!({"team": "x"})).as_deref(), Some("c-other-ns"));
        let small = labels(json!({"tier": "db"}));
        let tie = matching(&policies, &small, &BTreeMap::new()).unwrap();
        assert_eq!(tie.metadata.name.as_deref(), Some("a-tie"));
        assert!(matching(&policies, &BTreeMap::new(), &BTreeMap::new()).is_none());
    }

    #[test]
    fn a_policy_overrides_the_defaults_it_names() {
        let c =
            MigrationConfiguration::default().with_policy(&policy("p", json!({}), json!({})).spec);
        assert_eq!(c.bandwidth_per_migration, Some(Quantity("1Mi".into())));
        assert_eq!(c.completion_timeout_per_gib, Some(150));
    }
}
