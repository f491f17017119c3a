use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Affinity, PodDNSConfig, Toleration, TopologySpreadConstraint};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::{DomainSpec, Empty, Network, Opaque, VirtualMachineInstanceStatus, Volume};

/// A running virtual machine: the desired state of one guest.
#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstance",
    plural = "virtualmachineinstances",
    singular = "virtualmachineinstance",
    shortname = "vmi",
    shortname = "vmis",
    category = "all",
    namespaced,
    status = "VirtualMachineInstanceStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"IP","type":"string","jsonPath":".status.interfaces[0].ipAddress"}"#,
    printcolumn = r#"{"name":"NodeName","type":"string","jsonPath":".status.nodeName"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#,
    printcolumn = r#"{"name":"Live-Migratable","type":"string","jsonPath":".status.conditions[?(@.type=='LiveMigratable')].status","priority":1}"#,
    printcolumn = r#"{"name":"Paused","type":"string","jsonPath":".status.conditions[?(@.type=='Paused')].status","priority":1}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineInstanceSpec {
    pub domain: DomainSpec,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub topology_spread_constraints: Vec<TopologySpreadConstraint>,
    pub scheduler_name: Option<String>,
    pub priority_class_name: Option<String>,
    pub eviction_strategy: Option<EvictionStrategy>,
    pub start_strategy: Option<StartStrategy>,
    pub termination_grace_period_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    pub liveness_probe: Option<Probe>,
    pub readiness_probe: Option<Probe>,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<Network>,
    pub dns_policy: Option<String>,
    #[serde(rename = "dnsConfig")]
    pub dns_config: Option<PodDNSConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_credentials: Vec<AccessCredential>,
    pub architecture: Option<String>,
    /// DRA claims: need a DRA driver, refused by validation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_claims: Vec<Opaque>,
}

impl VirtualMachineInstanceSpec {
    /// Guest memory in bytes: `memory.guest`, else the memory request or limit.
    pub fn guest_memory(&self) -> Option<u64> {
        let domain = &self.domain;
        let q = domain
            .memory
            .as_ref()
            .and_then(|m| m.guest.as_ref())
            .or_else(|| {
                domain
                    .resources
                    .as_ref()
                    .and_then(|r| r.requests.get("memory").or_else(|| r.limits.get("memory")))
            })?;
        crate::quantity::to_units(q).ok()
    }
}

/// What happens to a VMI when its node is drained.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum EvictionStrategy {
    None,
    LiveMigrate,
    LiveMigrateIfPossible,
    External,
}

/// `startStrategy: Paused` boots the guest with its vCPUs stopped.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum StartStrategy {
    Paused,
}

/// A liveness or readiness probe: one handler plus timings.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Probe {
    pub exec: Option<k8s_openapi::api::core::v1::ExecAction>,
    pub http_get: Option<k8s_openapi::api::core::v1::HTTPGetAction>,
    pub tcp_socket: Option<k8s_openapi::api::core::v1::TCPSocketAction>,
    pub guest_agent_ping: Option<Empty>,
    pub initial_delay_seconds: Option<i32>,
    pub timeout_seconds: Option<i32>,
    pub period_seconds: Option<i32>,
    pub success_threshold: Option<i32>,
    pub failure_threshold: Option<i32>,
}

/// Credentials propagated into the guest.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AccessCredential {
    pub ssh_public_key: Option<SshPublicKeyAccessCredential>,
    pub user_password: Option<UserPasswordAccessCredential>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SshPublicKeyAccessCredential {
    pub source: CredentialSource,
    pub propagation_method: CredentialPropagation,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserPasswordAccessCredential {
    pub source: CredentialSource,
    pub propagation_method: CredentialPropagation,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialSource {
    pub secret: Option<SecretReference>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretReference {
    pub secret_name: String,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CredentialPropagation {
    pub config_drive: Option<Empty>,
    pub no_cloud: Option<Empty>,
    pub qemu_guest_agent: Option<GuestAgentPropagation>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GuestAgentPropagation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub users: Vec<String>,
}

/// `metadata` and `spec` of a VMI inside a VM, ReplicaSet or preset template.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct VirtualMachineInstanceTemplateSpec {
    pub metadata: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta>,
    pub spec: Option<VirtualMachineInstanceSpec>,
}
