use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::{Condition, Opaque, VirtualMachineInstanceTemplateSpec};

/// A virtual machine that may or may not be running: it owns at most one VMI at a time.
#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachine",
    plural = "virtualmachines",
    singular = "virtualmachine",
    shortname = "vm",
    shortname = "vms",
    category = "all",
    namespaced,
    status = "VirtualMachineStatus",
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"Status","type":"string","jsonPath":".status.printableStatus"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type=='Ready')].status"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineSpec {
    /// Deprecated; mutually exclusive with `runStrategy`. `true` is Always, `false` Halted.
    pub running: Option<bool>,
    pub run_strategy: Option<RunStrategy>,
    pub template: VirtualMachineInstanceTemplateSpec,
    pub instancetype: Option<InstancetypeMatcher>,
    pub preference: Option<PreferenceMatcher>,
    /// CDI DataVolume templates: carried verbatim, refused until CDI is supported.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub data_volume_templates: Vec<Opaque>,
    pub update_volumes_strategy: Option<String>,
}

/// How a VM's VMI is kept running.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RunStrategy {
    Always,
    RerunOnFailure,
    Manual,
    Halted,
    Once,
    WaitAsReceiver,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstancetypeMatcher {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub revision_name: Option<String>,
    pub infer_from_volume: Option<String>,
    pub infer_from_volume_failure_policy: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferenceMatcher {
    pub name: Option<String>,
    pub kind: Option<String>,
    pub revision_name: Option<String>,
    pub infer_from_volume: Option<String>,
    pub infer_from_volume_failure_policy: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineStatus {
    pub created: Option<bool>,
    pub ready: Option<bool>,
    pub printable_status: Option<String>,
    pub run_strategy: Option<RunStrategy>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub state_change_requests: Vec<StateChangeRequest>,
    pub start_failure: Option<StartFailure>,
    pub observed_generation: Option<i64>,
    pub desired_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_requests: Vec<Opaque>,
    pub instancetype_ref: Option<Opaque>,
    pub preference_ref: Option<Opaque>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateChangeRequest {
    pub action: String,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub data: std::collections::BTreeMap<String, String>,
    pub uid: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct StartFailure {
    pub retry_after_timestamp: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
    pub consecutive_fail_count: Option<u32>,
    pub last_failed_vmi_uid: Option<String>,
}
