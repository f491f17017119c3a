//! virt-launcher: one per VMI. Turns a VirtualMachineInstance into a QEMU process and drives
//! it over QMP.
//!
//! Owns: choosing the accelerator ([`accel`]), pulling containerDisk and kernel-boot images
//! into the node cache (the `registry` crate, re-exported as [`image`] and [`registries`]), preparing the VMI's disks ([`disks`]),
//! the QEMU command line as a pure function of the VMI ([`argv`]), and the QEMU process and
//! its lifecycle ([`domain`]): start (optionally paused), pause, unpause, ACPI shutdown with a
//! grace period then kill, reset, and the domain's state and events. [`standalone`] runs one
//! VMI in the foreground for demos and tests; [`serve`] is the launcher in a VMI's pod, driven
//! by the handler over [`launcher_proto`]; [`migrate`] moves a running guest between two
//! launchers.
//!
//! Does not own: the Kubernetes API, scheduling, or what the handler asks for; those talk
//! to a launcher through its [`domain::Domain`].

pub mod accel;
pub mod agent;
pub mod argv;
pub mod disks;
pub mod domain;
pub mod migrate;
pub mod paths;
pub mod probe;
pub mod serve;
pub mod standalone;

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut line = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        line.push_str(": ");
        line.push_str(&s.to_string());
        source = s.source();
    }
    line
}

pub use registry::{image, registries};
