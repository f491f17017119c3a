//! Images from OCI registries, for the node: pulling them through the node's mirrors into
//! a shared cache of unpacked trees ([`image`]), and the mirror configuration in k3s's
//! `registries.yaml` shape ([`registries`]).
//!
//! Used by virt-launcher (containerDisks and kernel-boot images) and by the pod runner
//! (the root filesystems of the pods it runs).
//!
//! Does not own: what a tree is used for, or registry credentials (pulls are anonymous).

pub mod image;
pub mod registries;
