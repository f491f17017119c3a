use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::{Empty, LocalObjectReference, Opaque};

/// A named volume with exactly one source.
///
/// Upstream models the source as an embedded union; here every source is an optional
/// field of the volume, which keeps the wire shape and lets validation name the path of a
/// volume with none or several.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Volume {
    pub name: String,
    pub container_disk: Option<ContainerDiskSource>,
    pub cloud_init_no_cloud: Option<CloudInitSource>,
    pub cloud_init_config_drive: Option<CloudInitSource>,
    pub empty_disk: Option<EmptyDiskSource>,
    pub host_disk: Option<HostDiskSource>,
    pub ephemeral: Option<EphemeralSource>,
    pub persistent_volume_claim: Option<PvcSource>,
    pub data_volume: Option<DataVolumeSource>,
    pub config_map: Option<ConfigMapVolumeSource>,
    pub secret: Option<SecretVolumeSource>,
    pub service_account: Option<ServiceAccountVolumeSource>,
    #[serde(rename = "downwardAPI")]
    pub downward_api: Option<Opaque>,
    pub downward_metrics: Option<Empty>,
    pub sysprep: Option<SysprepSource>,
    pub memory_dump: Option<PvcSource>,
}

impl Volume {
    /// The names of the sources set on this volume, in field order.
    pub fn source_kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        let mut push = |set: bool, name| {
            if set {
                kinds.push(name)
            }
        };
        push(self.container_disk.is_some(), "containerDisk");
        push(self.cloud_init_no_cloud.is_some(), "cloudInitNoCloud");
        push(
            self.cloud_init_config_drive.is_some(),
            "cloudInitConfigDrive",
        );
        push(self.empty_disk.is_some(), "emptyDisk");
        push(self.host_disk.is_some(), "hostDisk");
        push(self.ephemeral.is_some(), "ephemeral");
        push(
            self.persistent_volume_claim.is_some(),
            "persistentVolumeClaim",
        );
        push(self.data_volume.is_some(), "dataVolume");
        push(self.config_map.is_some(), "configMap");
        push(self.secret.is_some(), "secret");
        push(self.service_account.is_some(), "serviceAccount");
        push(self.downward_api.is_some(), "downwardAPI");
        push(self.downward_metrics.is_some(), "downwardMetrics");
        push(self.sysprep.is_some(), "sysprep");
        push(self.memory_dump.is_some(), "memoryDump");
        kinds
    }
}

/// A disk image inside an OCI image, used through a per-VMI copy-on-write overlay.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerDiskSource {
    pub image: String,
    pub image_pull_secret: Option<String>,
    pub path: Option<String>,
    pub image_pull_policy: Option<String>,
}

/// NoCloud or ConfigDrive user data and network data.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CloudInitSource {
    pub user_data: Option<String>,
    pub user_data_base64: Option<String>,
    pub secret_ref: Option<LocalObjectReference>,
    pub network_data: Option<String>,
    pub network_data_base64: Option<String>,
    pub network_data_secret_ref: Option<LocalObjectReference>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmptyDiskSource {
    pub capacity: Quantity,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostDiskSource {
    pub path: String,
    #[serde(rename = "type")]
    pub disk_type: String,
    pub capacity: Option<Quantity>,
    pub shared: Option<bool>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EphemeralSource {
    pub persistent_volume_claim: Option<PvcSource>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PvcSource {
    pub claim_name: String,
    pub read_only: Option<bool>,
    pub hotpluggable: Option<bool>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DataVolumeSource {
    pub name: String,
    pub hotpluggable: Option<bool>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigMapVolumeSource {
    pub name: String,
    pub optional: Option<bool>,
    pub volume_label: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretVolumeSource {
    pub secret_name: String,
    pub optional: Option<bool>,
    pub volume_label: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceAccountVolumeSource {
    pub service_account_name: String,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SysprepSource {
    pub secret: Option<LocalObjectReference>,
    pub config_map: Option<LocalObjectReference>,
}
