use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::{Empty, Opaque};

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Devices {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub inputs: Vec<Input>,
    pub watchdog: Option<Watchdog>,
    pub rng: Option<Empty>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filesystems: Vec<Filesystem>,
    pub sound: Option<SoundDevice>,
    pub tpm: Option<Tpm>,
    pub video: Option<Video>,
    pub downward_metrics: Option<Empty>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub panic_devices: Vec<PanicDevice>,
    /// GPUs and host devices need passthrough hardware; refused by validation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<Opaque>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_devices: Vec<Opaque>,
    pub client_passthrough: Option<Empty>,
    pub autoattach_pod_interface: Option<bool>,
    pub autoattach_graphics_device: Option<bool>,
    pub autoattach_serial_console: Option<bool>,
    pub log_serial_console: Option<bool>,
    pub autoattach_mem_balloon: Option<bool>,
    pub autoattach_input_device: Option<bool>,
    #[serde(rename = "autoattachVSOCK")]
    pub autoattach_vsock: Option<bool>,
    pub block_multi_queue: Option<bool>,
    pub network_interface_multiqueue: Option<bool>,
    pub use_virtio_transitional: Option<bool>,
    pub disable_hotplug: Option<bool>,
}

/// A disk, cdrom or lun attached to the guest; `name` matches a volume.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Disk {
    pub name: String,
    pub disk: Option<DiskTarget>,
    pub lun: Option<LunTarget>,
    pub cdrom: Option<CdRomTarget>,
    pub boot_order: Option<u32>,
    pub serial: Option<String>,
    pub cache: Option<String>,
    pub io: Option<String>,
    pub dedicated_io_thread: Option<bool>,
    pub block_size: Option<Opaque>,
    pub shareable: Option<bool>,
    pub error_policy: Option<String>,
    pub tag: Option<String>,
    pub changed_block_tracking: Option<bool>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskTarget {
    pub bus: Option<String>,
    pub readonly: Option<bool>,
    pub pci_address: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LunTarget {
    pub bus: Option<String>,
    pub readonly: Option<bool>,
    pub reservation: Option<bool>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CdRomTarget {
    pub bus: Option<String>,
    pub readonly: Option<bool>,
    pub tray: Option<String>,
}

/// A guest network interface; `name` matches a network.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Interface {
    pub name: String,
    pub model: Option<String>,
    pub bridge: Option<Empty>,
    pub masquerade: Option<Empty>,
    pub sriov: Option<Empty>,
    pub passt_binding: Option<Empty>,
    pub binding: Option<PluginBinding>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Port>,
    pub mac_address: Option<String>,
    pub boot_order: Option<u32>,
    pub pci_address: Option<String>,
    pub dhcp_options: Option<Opaque>,
    pub tag: Option<String>,
    pub acpi_index: Option<u32>,
    pub state: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginBinding {
    pub name: String,
}

/// A port the pod forwards into the guest (masquerade only).
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    pub name: Option<String>,
    pub protocol: Option<String>,
    pub port: i32,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Input {
    pub name: String,
    pub bus: Option<String>,
    #[serde(rename = "type")]
    pub input_type: String,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Watchdog {
    pub name: String,
    pub i6300esb: Option<WatchdogAction>,
    pub diag288: Option<WatchdogAction>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WatchdogAction {
    pub action: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Filesystem {
    pub name: String,
    pub virtiofs: Option<Empty>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SoundDevice {
    pub name: String,
    pub model: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Tpm {
    pub enabled: Option<bool>,
    pub persistent: Option<bool>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Video {
    #[serde(rename = "type")]
    pub video_type: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PanicDevice {
    pub model: Option<String>,
}
