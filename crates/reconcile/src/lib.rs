//! Pure decisions for the virt components: given what was observed and the time, what
//! should happen next. No I/O, no async, no client: the controllers read their caches,
//! call these functions and apply the plans.
//!
//! Owns: the VM's run-strategy rules, state-change requests, crash-loop backoff and
//! printable status ([`vm`]); the launcher pod and the memory overhead ([`pod`]); the
//! VMI's phases up to the hand-off to the node agent ([`vmi`]); ReplicaSets
//! ([`replicaset`]). Does not own (yet): migrations.

pub mod pod;
pub mod replicaset;
pub mod vm;
pub mod vmi;
