//! `kubevirt.io/v1`, the storage version of the core kinds.
//!
//! Field names, nesting and enum spellings follow upstream's `types.go` and `schema.go` so
//! that upstream manifests parse unchanged. Spec structs reject unknown fields (strict
//! parsing); status structs accept them, since status is ours to write and may grow.

mod devices;
mod domain;
mod migration;
mod network;
mod opaque;
mod preset;
mod replicaset;
mod status;
mod vm;
mod vmi;
mod volumes;

pub use devices::*;
pub use domain::*;
pub use migration::*;
pub use network::*;
pub use opaque::Opaque;
pub use preset::*;
pub use replicaset::*;
pub use status::*;
pub use vm::*;
pub use vmi::*;
pub use volumes::*;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// An object that carries no fields, such as `masquerade: {}` or `rng: {}`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// A reference to an object by name in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LocalObjectReference {
    #[serde(default)]
    pub name: String,
}
