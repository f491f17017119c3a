use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_with::skip_serializing_none;

use super::{Devices, Opaque};

/// The virtual hardware of a guest.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DomainSpec {
    pub resources: Option<ResourceRequirements>,
    pub cpu: Option<Cpu>,
    pub memory: Option<Memory>,
    pub machine: Option<Machine>,
    pub firmware: Option<Firmware>,
    pub clock: Option<Clock>,
    pub features: Option<Features>,
    #[serde(default)]
    pub devices: Devices,
    pub io_threads_policy: Option<String>,
    pub io_threads: Option<DiskIoThreads>,
    pub chassis: Option<Chassis>,
    /// SEV/SNP/TDX: needs hardware this project does not drive; refused by validation.
    pub launch_security: Option<Opaque>,
    pub reboot_policy: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRequirements {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub requests: BTreeMap<String, Quantity>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Quantity>,
    pub overcommit_guest_overhead: Option<bool>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cpu {
    pub cores: Option<u32>,
    pub sockets: Option<u32>,
    pub threads: Option<u32>,
    pub max_sockets: Option<u32>,
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub features: Vec<CpuFeature>,
    pub dedicated_cpu_placement: Option<bool>,
    pub isolate_emulator_thread: Option<bool>,
    pub numa: Option<Opaque>,
    pub realtime: Option<Opaque>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CpuFeature {
    pub name: String,
    pub policy: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Memory {
    pub guest: Option<Quantity>,
    pub max_guest: Option<Quantity>,
    pub hugepages: Option<Hugepages>,
    pub reserved_overhead: Option<Opaque>,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Hugepages {
    pub page_size: String,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Machine {
    #[serde(rename = "type")]
    pub machine_type: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Firmware {
    pub uuid: Option<String>,
    pub serial: Option<String>,
    pub bootloader: Option<Bootloader>,
    pub kernel_boot: Option<KernelBoot>,
    pub acpi: Option<Opaque>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bootloader {
    pub bios: Option<Bios>,
    pub efi: Option<Efi>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Bios {
    pub use_serial: Option<bool>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Efi {
    pub secure_boot: Option<bool>,
    pub persistent: Option<bool>,
}

/// Boot a kernel and initrd taken from a container image instead of a disk's bootloader.
#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelBoot {
    pub kernel_args: Option<String>,
    pub container: Option<KernelBootContainer>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KernelBootContainer {
    pub image: String,
    pub image_pull_secret: Option<String>,
    pub kernel_path: Option<String>,
    pub initrd_path: Option<String>,
    pub image_pull_policy: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Clock {
    pub utc: Option<ClockOffsetUtc>,
    pub timezone: Option<String>,
    pub timer: Option<Timer>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClockOffsetUtc {
    pub offset_seconds: Option<i64>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Timer {
    pub hpet: Option<TimerAttrs>,
    pub kvm: Option<TimerAttrs>,
    pub pit: Option<TimerAttrs>,
    pub rtc: Option<TimerAttrs>,
    pub hyperv: Option<TimerAttrs>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimerAttrs {
    pub present: Option<bool>,
    pub tick_policy: Option<String>,
    pub track: Option<String>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Features {
    pub acpi: Option<FeatureState>,
    pub apic: Option<FeatureApic>,
    pub smm: Option<FeatureState>,
    /// Hyper-V enlightenments only matter to Windows guests under KVM; carried verbatim.
    pub hyperv: Option<Opaque>,
    pub hyperv_passthrough: Option<FeatureState>,
    pub kvm: Option<FeatureKvm>,
    pub pvspinlock: Option<FeatureState>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeatureState {
    pub enabled: Option<bool>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeatureApic {
    pub enabled: Option<bool>,
    pub end_of_interrupt: Option<bool>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FeatureKvm {
    pub hidden: Option<bool>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskIoThreads {
    pub supplemental_pool_thread_count: Option<u32>,
}

#[skip_serializing_none]
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Chassis {
    pub manufacturer: Option<String>,
    pub version: Option<String>,
    pub serial: Option<String>,
    pub asset: Option<String>,
    pub sku: Option<String>,
}
