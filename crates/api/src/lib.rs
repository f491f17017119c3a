//! The kubevirt.io API, as data.
//!
//! Owns: the `kubevirt.io/v1` kinds (VirtualMachine, VirtualMachineInstance,
//! VirtualMachineInstanceReplicaSet, VirtualMachineInstancePreset,
//! VirtualMachineInstanceMigration, KubeVirt) and `instancetype.kubevirt.io/v1beta1` instancetypes and
//! preferences, `migrations.kubevirt.io/v1alpha1` MigrationPolicy; strict parsing of manifests in any version we accept (`v1`, `v1alpha3`, the
//! seed's `v1alpha2`); upstream's defaults; validation that reports every problem with its
//! field path; preset application; instancetype and preference expansion; CRD generation.
//!
//! Does not own: any I/O, clients, or decisions about running things. Everything here is a
//! pure function of its inputs, so it is tested with tables.

pub mod conditions;
pub mod convert;
pub mod crd;
pub mod defaults;
pub mod expand;
pub mod instancetype;
pub mod kubevirt;
pub mod migrations;
pub mod parse;
pub mod preset;
pub mod quantity;
pub mod v1;
pub mod validate;

pub use parse::{Object, ParseError, parse_documents, parse_object};
pub use validate::{Cause, CauseReason};

/// `kubevirt.io`, the core API group.
pub const GROUP: &str = "kubevirt.io";
/// `migrations.kubevirt.io`, the group of MigrationPolicy.
pub const MIGRATIONS_GROUP: &str = "migrations.kubevirt.io";
/// `instancetype.kubevirt.io`, the group of instancetypes and preferences.
pub const INSTANCETYPE_GROUP: &str = "instancetype.kubevirt.io";
