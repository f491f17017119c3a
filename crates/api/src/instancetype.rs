//! `instancetype.kubevirt.io/v1beta1`: instancetypes (the size of a VM) and preferences (its
//! preferred devices), namespaced and cluster-wide.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use crate::v1::{Hugepages, Opaque};

/// The size of a VM: vCPUs and memory, plus scheduling hints.
#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "instancetype.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineInstancetype",
    plural = "virtualmachineinstancetypes",
    singular = "virtualmachineinstancetype",
    shortname = "vminstancetype",
    shortname = "vminstancetypes",
    shortname = "vmf",
    shortname = "vmfs",
    category = "all",
    namespaced
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstancetypeSpec {
    pub cpu: InstancetypeCpu,
    pub memory: InstancetypeMemory,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Opaque>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_devices: Vec<Opaque>,
    pub io_threads_policy: Option<String>,
    pub io_threads: Option<Opaque>,
    pub launch_security: Option<Opaque>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    pub scheduler_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// The cluster-wide twin of [`VirtualMachineInstancetype`], with the same spec.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "instancetype.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineClusterInstancetype",
    plural = "virtualmachineclusterinstancetypes",
    singular = "virtualmachineclusterinstancetype",
    shortname = "vmclusterinstancetype",
    shortname = "vmclusterinstancetypes",
    shortname = "vmcf",
    shortname = "vmcfs",
    category = "all"
)]
#[serde(transparent)]
pub struct ClusterInstancetypeSpec {
    pub spec: InstancetypeSpec,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstancetypeCpu {
    pub guest: u32,
    pub model: Option<String>,
    #[serde(rename = "dedicatedCPUPlacement")]
    pub dedicated_cpu_placement: Option<bool>,
    pub numa: Option<Opaque>,
    pub isolate_emulator_thread: Option<bool>,
    pub realtime: Option<Opaque>,
    pub max_sockets: Option<u32>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstancetypeMemory {
    pub guest: Quantity,
    pub hugepages: Option<Hugepages>,
    pub overcommit_percent: Option<u32>,
    pub max_guest: Option<Quantity>,
}

/// Preferred devices and settings, applied where the VM leaves a choice open.
#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "instancetype.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachinePreference",
    plural = "virtualmachinepreferences",
    singular = "virtualmachinepreference",
    shortname = "vmpref",
    shortname = "vmprefs",
    shortname = "vmp",
    shortname = "vmps",
    category = "all",
    namespaced
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferenceSpec {
    pub clock: Option<Opaque>,
    pub cpu: Option<CpuPreferences>,
    pub devices: Option<DevicePreferences>,
    pub features: Option<Opaque>,
    pub firmware: Option<FirmwarePreferences>,
    pub machine: Option<MachinePreferences>,
    pub volumes: Option<Opaque>,
    pub preferred_subdomain: Option<String>,
    pub preferred_termination_grace_period_seconds: Option<i64>,
    pub requirements: Option<PreferenceRequirements>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    pub prefer_spread_socket_to_core_ratio: Option<u32>,
    pub preferred_architecture: Option<String>,
    pub preferred_launch_security: Option<Opaque>,
}

/// The cluster-wide twin of [`VirtualMachinePreference`], with the same spec.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "instancetype.kubevirt.io",
    version = "v1beta1",
    kind = "VirtualMachineClusterPreference",
    plural = "virtualmachineclusterpreferences",
    singular = "virtualmachineclusterpreference",
    shortname = "vmcp",
    shortname = "vmcps",
    category = "all"
)]
#[serde(transparent)]
pub struct ClusterPreferenceSpec {
    pub spec: PreferenceSpec,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuPreferences {
    #[serde(rename = "preferredCPUTopology")]
    pub preferred_cpu_topology: Option<String>,
    pub spread_options: Option<SpreadOptions>,
    #[serde(rename = "preferredCPUFeatures")]
    pub preferred_cpu_features: Option<Opaque>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DevicePreferences {
    pub preferred_autoattach_graphics_device: Option<bool>,
    pub preferred_autoattach_mem_balloon: Option<bool>,
    pub preferred_autoattach_pod_interface: Option<bool>,
    pub preferred_autoattach_serial_console: Option<bool>,
    pub preferred_autoattach_input_device: Option<bool>,
    pub preferred_disable_hotplug: Option<bool>,
    pub preferred_virtual_gpu_options: Option<Opaque>,
    pub preferred_sound_model: Option<String>,
    pub preferred_use_virtio_transitional: Option<bool>,
    pub preferred_input_bus: Option<String>,
    pub preferred_input_type: Option<String>,
    pub preferred_disk_bus: Option<String>,
    pub preferred_lun_bus: Option<String>,
    pub preferred_cdrom_bus: Option<String>,
    pub preferred_disk_dedicated_io_thread: Option<bool>,
    pub preferred_disk_cache: Option<String>,
    #[serde(rename = "preferredDiskIO")]
    pub preferred_disk_io: Option<String>,
    pub preferred_disk_block_size: Option<Opaque>,
    pub preferred_interface_model: Option<String>,
    pub preferred_rng: Option<Opaque>,
    pub preferred_block_multi_queue: Option<bool>,
    pub preferred_network_interface_multi_queue: Option<bool>,
    #[serde(rename = "preferredTPM")]
    pub preferred_tpm: Option<Opaque>,
    pub preferred_interface_masquerade: Option<Opaque>,
    pub preferred_panic_device_model: Option<String>,
    pub preferred_video_type: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FirmwarePreferences {
    pub preferred_use_bios: Option<bool>,
    pub preferred_use_bios_serial: Option<bool>,
    pub preferred_use_efi: Option<bool>,
    pub preferred_use_secure_boot: Option<bool>,
    pub preferred_efi: Option<Opaque>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MachinePreferences {
    pub preferred_machine_type: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpreadOptions {
    pub across: Option<String>,
    pub ratio: Option<u32>,
}

/// Minimums the chosen instancetype (or the VM) must meet.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreferenceRequirements {
    pub cpu: Option<CpuRequirement>,
    pub memory: Option<MemoryRequirement>,
    pub architecture: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuRequirement {
    pub guest: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MemoryRequirement {
    pub guest: Quantity,
}
