//! virt-controller: the cluster-wide controllers of KubeVirt, as kube-runtime controllers
//! around the pure decisions in the `reconcile` crate.
//!
//! Owns:
//! - leader election on the `coordination.k8s.io/v1` Lease `virt-controller` ([`leader`]):
//!   only the holder runs controllers, a passive instance takes over when the lease
//!   expires;
//! - the caches: one reflector per kind, fanned out to every controller that reads it, so
//!   a trigger never runs ahead of the cache ([`informer`]), and the expectations that
//!   cover the lag between a create or delete and its watch event;
//! - the VirtualMachine controller ([`vm`]): run strategies, state-change requests,
//!   crash-loop backoff, `printableStatus`, Ready and Failure conditions, instancetype and
//!   preference expansion ([`instancetype`]);
//! - the VirtualMachineInstance controller ([`vmi`]): the launcher pod, the phases up to
//!   `Scheduled` with the node, the finalizer, `Failed` when the pod goes;
//! - the VirtualMachineInstanceReplicaSet controller ([`replicaset`]): scale, adopt,
//!   release, status;
//! - the VirtualMachineInstanceMigration controller ([`migration`]): the target pod, the
//!   phases, the hand-over to the handlers, clean-up and cancel, with the KubeVirt CR's
//!   migration settings and the MigrationPolicies;
//! - the KubeVirt CR ([`kubevirt`]): created when missing at start, its status kept;
//! - core/v1 Events for what the controllers did ([`events`]).
//!
//! Does not own: the decisions themselves (`reconcile`), anything on the node (the handler
//! writes `Running` and what the guest reports), admission and defaults (virt-api).
//!
//! The VMI has no status subresource, so the VMI controller writes status, labels and its
//! finalizer in one replace carrying the resourceVersion it decided on; a conflict means
//! re-read, re-decide, retry. It writes at most twice per start: `Scheduling` with the
//! finalizer, then `Scheduled` with the node.

mod context;
mod error;
pub mod events;
pub mod informer;
pub mod instancetype;
pub mod kubevirt;
pub mod leader;
pub mod migration;
pub mod replicaset;
pub mod vm;
pub mod vmi;

use std::sync::Arc;

use tracing::{info, warn};

pub use error::Error;

/// What virt-controller needs to know.
#[derive(Debug, Clone)]
pub struct Config {
    /// The image of the launcher pods it renders.
    pub launcher_image: String,
    /// Whether the node emulates the CPU (the launcher pod then reserves the TCG cache).
    pub software_emulation: bool,
    /// The node directories `hostDisk` volumes may be in (a namespace's subdirectory is
    /// mounted into its launcher pods).
    pub host_disk_dirs: Vec<String>,
    /// Whether the nodes hand out `/dev/userfaultfd` for post-copy migration targets.
    pub userfaultfd: bool,
    /// The namespace of the KubeVirt components; the Lease lives here.
    pub namespace: String,
    /// This instance's name in the Lease.
    pub identity: String,
}

/// Runs virt-controller until the future is dropped: waits for the lease, runs the
/// controllers while it holds it, and goes back to waiting when it loses it.
pub async fn run(client: kube::Client, config: Config) -> anyhow::Result<()> {
    let elector = leader::Elector::new(client.clone(), &config.namespace, &config.identity);
    loop {
        elector.acquire().await;
        info!(identity = %config.identity, "leading");
        let context = Arc::new(context::Context::new(client.clone(), &config));
        tokio::select! {
            () = elector.hold() => warn!(identity = %config.identity, "lost the lease; stopping the controllers"),
            () = context::run_controllers(context) => anyhow::bail!("the controllers stopped"),
        }
    }
}
