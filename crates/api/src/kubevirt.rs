//! `kubevirt.io/v1` KubeVirt: the installation, its state and the cluster-wide
//! configuration the controllers read.
//!
//! Upstream's virt-operator deploys the components from this object and reports on it;
//! scripts wait for it (`kubectl wait kv kubevirt -n kubevirt --for condition=Available`)
//! and tune the cluster through `spec.configuration`. Here the components are deployed by
//! `kubevirt-rs server` itself: virt-controller creates `kubevirt/kubevirt` when it starts
//! and finds none, and keeps its status (see `controller::kubevirt`).
//!
//! Parsing: the fields of `spec` are upstream's; the ones that select images, placement or
//! rollout are kept as given (there is nothing here for them to change). In
//! `spec.configuration`, `migrations` is read (timeouts, bandwidth, auto-converge, the
//! parallelism limits: below each MigrationPolicy) and parsed strictly, with every field
//! upstream has; `evictionStrategy` is typed too. Upstream adds other configuration
//! sections every release, so those are kept as given rather than refused.

use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::migrations::MigrationConfiguration;
use crate::v1::{Condition, EvictionStrategy, Opaque};

/// The installation.
#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "KubeVirt",
    plural = "kubevirts",
    singular = "kubevirt",
    shortname = "kv",
    shortname = "kvs",
    namespaced,
    category = "all",
    status = "KubeVirtStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KubeVirtSpec {
    pub image_registry: Option<String>,
    pub image_tag: Option<String>,
    pub image_pull_policy: Option<String>,
    pub image_pull_secrets: Option<Vec<Opaque>>,
    pub monitor_namespace: Option<String>,
    pub service_monitor_namespace: Option<String>,
    pub monitor_account: Option<String>,
    pub workload_update_strategy: Option<Opaque>,
    pub uninstall_strategy: Option<String>,
    pub certificate_rotate_strategy: Option<Opaque>,
    pub product_version: Option<String>,
    pub product_name: Option<String>,
    pub product_component: Option<String>,
    pub configuration: Option<KubeVirtConfiguration>,
    pub infra: Option<Opaque>,
    pub workloads: Option<Opaque>,
    pub customize_components: Option<Opaque>,
}

/// `spec.configuration`: what is read here typed, every other field kept as given (also
/// by a real API server, which would otherwise prune what the schema does not list).
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-preserve-unknown-fields" = true))]
pub struct KubeVirtConfiguration {
    pub migrations: Option<MigrationConfiguration>,
    pub eviction_strategy: Option<EvictionStrategy>,
    pub developer_configuration: Option<Opaque>,
    #[serde(flatten)]
    #[schemars(skip)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// What the installation reports.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KubeVirtStatus {
    /// Deploying, Deployed, Deleting or Deleted.
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    pub operator_version: Option<String>,
    pub target_kube_virt_registry: Option<String>,
    pub target_kube_virt_version: Option<String>,
    pub target_deployment_config: Option<String>,
    pub target_deployment_id: Option<String>,
    pub observed_kube_virt_registry: Option<String>,
    pub observed_kube_virt_version: Option<String>,
    pub observed_deployment_config: Option<String>,
    pub observed_deployment_id: Option<String>,
    pub observed_generation: Option<i64>,
    pub default_architecture: Option<String>,
}

/// The installation that configures the cluster: the oldest KubeVirt CR (upstream allows
/// one; a second one here changes nothing).
pub fn installation<'a>(list: impl IntoIterator<Item = &'a KubeVirt>) -> Option<&'a KubeVirt> {
    list.into_iter().min_by(|a, b| {
        (&a.metadata.creation_timestamp, &a.metadata.name)
            .cmp(&(&b.metadata.creation_timestamp, &b.metadata.name))
    })
}

impl KubeVirt {
    /// The cluster-wide `evictionStrategy`, for VMIs that set none.
    pub fn eviction_strategy(&self) -> Option<EvictionStrategy> {
        self.spec
            .configuration
            .as_ref()
            .and_then(|c| c.eviction_strategy)
    }

    /// The migration settings of this installation: upstream's defaults, then
    /// `spec.configuration.migrations` (a MigrationPolicy applies on top).
    pub fn migration_configuration(&self) -> MigrationConfiguration {
        let defaults = MigrationConfiguration::default();
        match self
            .spec
            .configuration
            .as_ref()
            .and_then(|c| c.migrations.as_ref())
        {
            Some(set) => defaults.with_cluster(set),
            None => defaults,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    #[test]
    fn upstreams_cr_parses_and_its_migration_settings_apply() {
        let Ok(mut objects) = crate::parse_documents(
            "
apiVersion: kubevirt.io/v1
kind: KubeVirt
metadata: {name: kubevirt, namespace: kubevirt}
spec:
  certificateRotateStrategy: {}
  configuration:
    developerConfiguration: {featureGates: [LiveMigration]}
    migrations: {progressTimeout: 30, completionTimeoutPerGiB: 60, bandwidthPerMigration: 64Mi, parallelMigrationsPerCluster: 2}
    vmRolloutStrategy: LiveUpdate
  customizeComponents: {}
  imagePullPolicy: IfNotPresent
  workloadUpdateStrategy: {workloadUpdateMethods: [LiveMigrate]}
",
        ) else {
            panic!("not parsed")
        };
        let Some(crate::Object::KubeVirt(kv)) = objects.pop() else {
            panic!("not a KubeVirt")
        };
        let c = kv.migration_configuration();
        assert_eq!(c.progress_timeout, Some(30));
        assert_eq!(c.completion_timeout_per_gib, Some(60));
        assert_eq!(c.parallel_migrations_per_cluster, Some(2));
        assert_eq!(
            c.parallel_outbound_migrations_per_node,
            Some(2),
            "default kept"
        );
        let other = &kv.spec.configuration.as_ref().unwrap().other;
        assert_eq!(other["vmRolloutStrategy"], "LiveUpdate", "kept as given");
        let typo = crate::parse_documents(
            "
apiVersion: kubevirt.io/v1
kind: KubeVirt
metadata: {name: kubevirt, namespace: kubevirt}
spec: {imagePullPolicey: Always}
",
        )
        .unwrap_err();
        assert_eq!(typo.field(), Some("spec.imagePullPolicey"), "{typo}");
    }
}
