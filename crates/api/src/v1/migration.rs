use std::collections::BTreeMap;

use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::{Condition, Opaque};

/// A request to live-migrate one VMI to another node.
#[skip_serializing_none]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "kubevirt.io",
    version = "v1",
    kind = "VirtualMachineInstanceMigration",
    plural = "virtualmachineinstancemigrations",
    singular = "virtualmachineinstancemigration",
    shortname = "vmim",
    shortname = "vmims",
    category = "all",
    namespaced,
    status = "VirtualMachineInstanceMigrationStatus",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase","description":"The current phase of VM instance migration"}"#,
    printcolumn = r#"{"name":"VMI","type":"string","jsonPath":".spec.vmiName","description":"The name of the VMI to perform the migration on"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualMachineInstanceMigrationSpec {
    pub vmi_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub added_node_selector: BTreeMap<String, String>,
    pub priority: Option<String>,
    /// Decentralized (cross-cluster) migration: carried verbatim, refused by validation.
    pub send_to: Option<Opaque>,
    pub receive: Option<Opaque>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationStatus {
    pub phase: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phase_transition_timestamps: Vec<Opaque>,
    pub migration_state: Option<VirtualMachineInstanceMigrationState>,
}

/// Where a migration is, as upstream's phases name it.
pub mod phase {
    pub const PENDING: &str = "Pending";
    pub const SCHEDULING: &str = "Scheduling";
    pub const SCHEDULED: &str = "Scheduled";
    pub const PREPARING_TARGET: &str = "PreparingTarget";
    pub const TARGET_READY: &str = "TargetReady";
    pub const RUNNING: &str = "Running";
    pub const SUCCEEDED: &str = "Succeeded";
    pub const FAILED: &str = "Failed";

    /// Succeeded and Failed never change again.
    pub fn is_final(phase: Option<&str>) -> bool {
        matches!(phase, Some(SUCCEEDED | FAILED))
    }
}

/// A VMI's latest migration, on the VMI (`status.migrationState`) and copied onto its
/// migration object. The controller fills in who moves where; the target's handler the
/// address it listens on and, at the end, `completed`; the source's handler the start,
/// failures and aborts.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct VirtualMachineInstanceMigrationState {
    pub migration_uid: Option<String>,
    pub start_timestamp: Option<Time>,
    pub end_timestamp: Option<Time>,
    /// `PreCopy` (the only mode used here), `PostCopy` or `Paused`.
    pub mode: Option<String>,
    pub source_node: Option<String>,
    pub source_pod: Option<String>,
    pub target_node: Option<String>,
    pub target_pod: Option<String>,
    pub target_node_address: Option<String>,
    /// The target's listening ports, each mapped to the stream it takes: 0 the memory
    /// stream (as upstream), 10809 the disks (NBD), 1 the hand-over of the console history
    /// that lets the target resume.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub target_direct_migration_node_ports: BTreeMap<String, i32>,
    pub target_node_domain_detected: Option<bool>,
    pub target_node_domain_ready_timestamp: Option<Time>,
    pub completed: Option<bool>,
    pub failed: Option<bool>,
    pub failure_reason: Option<String>,
    pub abort_requested: Option<bool>,
    /// `Succeeded`, `Failed` or `Aborting` once an abort was asked for.
    pub abort_status: Option<String>,
    pub migration_policy_name: Option<String>,
    pub migration_configuration: Option<crate::migrations::MigrationConfiguration>,
}

impl VirtualMachineInstanceMigrationState {
    /// Whether the migration has ended, either way.
    pub fn is_final(&self) -> bool {
        self.completed == Some(true) || self.failed == Some(true)
    }
}
