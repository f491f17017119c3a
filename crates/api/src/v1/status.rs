use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::Opaque;

/// Where a VMI is in its life.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema, Default)]
pub enum VmiPhase {
    #[default]
    #[serde(rename = "")]
    Unset,
    Pending,
    Scheduling,
    Scheduled,
    Running,
    Succeeded,
    Failed,
    WaitingForSync,
    Unknown,
}

impl VmiPhase {
    /// Succeeded and Failed never change again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed)
    }
}

/// What the system observed about a VMI. Written by the controller and the node agent.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceStatus {
    pub phase: Option<VmiPhase>,
    pub node_name: Option<String>,
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_transition_timestamps: Vec<PhaseTransition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<InterfaceStatus>,
    #[serde(rename = "guestOSInfo")]
    pub guest_os_info: Option<Opaque>,
    pub migration_state: Option<super::VirtualMachineInstanceMigrationState>,
    pub migration_method: Option<String>,
    pub qos_class: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub active_pods: BTreeMap<String, String>,
    pub launcher_container_image_version: Option<String>,
    pub machine: Option<super::Machine>,
    #[serde(rename = "currentCPUTopology")]
    pub current_cpu_topology: Option<CpuTopology>,
    pub memory: Option<MemoryStatus>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_status: Vec<Opaque>,
    pub evacuation_node_name: Option<String>,
    pub fs_freeze_status: Option<String>,
    pub runtime_user: Option<u64>,
    pub virtual_machine_revision_name: Option<String>,
    pub kernel_boot_status: Option<Opaque>,
}

/// A Kubernetes-style condition.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    pub last_probe_time: Option<Time>,
    pub last_transition_time: Option<Time>,
    pub reason: Option<String>,
    pub message: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PhaseTransition {
    pub phase: VmiPhase,
    pub phase_transition_timestamp: Option<Time>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct InterfaceStatus {
    pub name: Option<String>,
    pub ip_address: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_addresses: Vec<String>,
    pub mac: Option<String>,
    pub interface_name: Option<String>,
    pub info_source: Option<String>,
    pub queue_count: Option<i32>,
    pub link_state: Option<String>,
    pub pod_interface_name: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CpuTopology {
    pub cores: Option<u32>,
    pub sockets: Option<u32>,
    pub threads: Option<u32>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStatus {
    pub guest_at_boot: Option<Quantity>,
    pub guest_current: Option<Quantity>,
    pub guest_requested: Option<Quantity>,
    pub memory_overhead: Option<Quantity>,
}
