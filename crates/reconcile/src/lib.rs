//! Pure decisions for the virt components: given what was observed and the time, what
//! should happen next. No I/O, no async, no client: the controllers read their caches,
//! call these functions and apply the plans.
//!
//! Owns: the VM's run-strategy rules, state-change requests, crash-loop backoff and
//! printable status ([`vm`]); the launcher pod and the memory overhead ([`pod`]); the
//! VMI's phases up to the hand-off to the node agent ([`vmi`]); ReplicaSets
//! ([`replicaset`]); live migrations ([`migration`]); the KubeVirt CR's status ([`kubevirt`]).

pub mod kubevirt;
pub mod migration;
pub mod pod;
pub mod replicaset;
pub mod vm;
pub mod vmi;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

/// The controller reference a kubevirt.io object of `kind` puts on what it creates: the
/// garbage collector deletes the dependant with it, and foreground deletion waits for it.
pub fn controller_ref(kind: &str, owner: &ObjectMeta) -> OwnerReference {
    OwnerReference {
        api_version: "kubevirt.io/v1".into(),
        kind: kind.into(),
        name: owner.name.clone().unwrap_or_default(),
        uid: owner.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}
