use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::DomainSpec;

/// Deprecated upstream, still served: domain settings merged into the VMIs it selects.
#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstancePreset",
    plural = "virtualmachineinstancepresets",
    singular = "virtualmachineinstancepreset",
    shortname = "vmipreset",
    shortname = "vmipresets",
    category = "all",
    namespaced
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineInstancePresetSpec {
    pub selector: LabelSelector,
    pub domain: Option<DomainSpec>,
}
