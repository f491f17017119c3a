//! The control-plane benchmark: VMIs from creation to Running through the whole system,
//! the API writes each start costs, and the memory of the control plane, against a real
//! `kubevirt-rs server` running every component (virt-api, virt-controller, virt-handler,
//! the pod runner) with real launchers and QEMU.
//!
//! What runs, in order:
//! 1. The server starts on a scratch directory as one node (`--node-name`, `--launcher`,
//!    `KUBEVIRT_RS_RUN_DIR` in the scratch directory, `--pod-runtime` as asked: launcher
//!    pods in runc from the launcher image, or host processes; `--compare-runtimes` runs
//!    everything once each way and compares); the benchmark waits for virt-api's
//!    aggregated API and a schedulable node, lets it settle, and reads its idle RSS and
//!    its CPU time over a quiet window ([`node::quiet`]).
//! 2. One watch on the VMIs and one on the launcher pods open ([`track`]).
//! 3. Warm-up: one VMI, not counted, so that the image is in the node cache.
//! 4. Single: `--single` VMIs one after another, each deleted before the next.
//! 5. Paced: `--vmis` VMIs created at `--rate` per second, each create in its own task at
//!    its own time (upstream's perf lane creates at a fixed rate too). Once all run: the
//!    server's RSS, a quiet window (server, launchers, QEMUs, the machine), the node's
//!    memory per VM; then all are deleted.
//! 6. Burst: `--vmis` VMIs created at once (all creates sent together over one HTTP/2
//!    connection); then all are deleted.
//! 7. The server stops; any launcher or QEMU still there is killed.
//!
//! Latency is client-side: from the moment the create call returned to the arrival of the
//! watch event that first says phase Running. The guest ([`vmi_manifest`]) is a 1 MiB
//! disk whose boot sector stops the CPU (`cli; hlt`, `guest/package.sh`): a hundred of
//! them cost little CPU under TCG, so the figures are those of the control plane and the
//! launcher, not of guests booting.

mod node;
mod report;
mod rounds;
mod track;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::api::server::ServerProcess;
use crate::proc::{self, Resident};

/// The namespace the VMIs go into.
const NAMESPACE: &str = "default";
/// The label on every VMI of the benchmark.
const LABEL: &str = "kubevirt-rs-bench";
/// How long the components may take to come up.
const COMPONENTS_DEADLINE: Duration = Duration::from_secs(60);
/// Pause before memory is read, for the process to settle.
const SETTLE: Duration = Duration::from_secs(2);

/// What the control-plane benchmark takes from the command line.
#[derive(Debug, clap::Args)]
pub struct CpArgs {
    /// VMIs started one at a time, each deleted before the next.
    #[arg(long, default_value_t = 10)]
    pub single: usize,
    /// VMIs in the paced round and in the burst.
    #[arg(long, default_value_t = 100)]
    pub vmis: usize,
    /// Creates per second in the paced round.
    #[arg(long, default_value_t = 10.0)]
    pub rate: f64,
    /// Length of each quiet window in which CPU time is measured, seconds.
    #[arg(long, default_value_t = 10.0)]
    pub quiet_secs: f64,
    /// The guest's containerDisk.
    #[arg(long, default_value = "registry:5000/kubevirt-rs/idle-disk:devel")]
    pub image: String,
    /// The guest's memory (`spec.domain.memory.guest`).
    #[arg(long, default_value = "32Mi")]
    pub guest_memory: String,
    /// Start the guests with `startStrategy: Paused`: QEMU starts but never runs the
    /// firmware, which takes out the guest's own start (about 125 ms of CPU under TCG).
    #[arg(long)]
    pub paused: bool,
    /// Where the raw results are written, as JSON.
    #[arg(long, default_value = "target/bench/cp.json")]
    pub cp_json: PathBuf,
    /// Keep the scratch directory (server log, pod logs) and print where it is.
    #[arg(long)]
    pub keep: bool,
    /// The server's log filter (`KUBEVIRT_RS_LOG`, e.g. `info,podrunner=debug`); the
    /// server's default when not given.
    #[arg(long)]
    pub server_log: Option<String>,
    /// How the server runs launcher pods (`--pod-runtime`): `runc`, the sandbox, or
    /// `process`, root host processes as before it.
    #[arg(long, default_value = "runc", value_parser = ["runc", "process"])]
    pub pod_runtime: String,
    /// Run the whole benchmark twice, launchers as host processes and then in runc, and
    /// print what the sandbox costs side by side.
    #[arg(long)]
    pub compare_runtimes: bool,
}

/// Everything measured, raw; the tables are made from it. Times in ms since the
/// benchmark started.
#[derive(Debug, Default, Serialize)]
pub struct Results {
    /// How the server ran the launcher pods (`--pod-runtime`).
    pub pod_runtime: String,
    pub vmis: usize,
    pub rate: f64,
    pub image: String,
    pub guest_memory: String,
    pub paused: bool,
    pub idle: Resident,
    pub idle_quiet: node::Quiet,
    pub with_vmis: Resident,
    pub loaded_quiet: node::Quiet,
    /// Writes the watches saw during that window.
    pub loaded_quiet_writes: QuietWrites,
    pub node_memory: std::collections::BTreeMap<node::Role, node::Memory>,
    pub after_burst: Resident,
    pub warmup: Vec<rounds::VmiRecord>,
    pub single: Vec<rounds::VmiRecord>,
    pub paced: Vec<rounds::VmiRecord>,
    pub burst: Vec<rounds::VmiRecord>,
    pub single_cost: rounds::Cost,
    pub paced_cost: rounds::Cost,
    pub burst_cost: rounds::Cost,
}

/// Watch events (writes) of the VMIs and of their launcher pods in a quiet window.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct QuietWrites {
    pub vmis: u64,
    pub pods: u64,
}

/// The guest every round creates: no NIC, no graphics, `memory` of RAM and a containerDisk
/// from `image`, its vCPUs never started when `paused`; deleted without a grace period.
pub fn vmi_manifest(
    name: &str,
    round: &str,
    image: &str,
    memory: &str,
    paused: bool,
) -> serde_json::Value {
    let mut vmi = serde_json::json!({
        "apiVersion": "kubevirt.io/v1",
        "kind": "VirtualMachineInstance",
        "metadata": {
            "name": name,
            "namespace": NAMESPACE,
            "labels": {LABEL: round},
        },
        "spec": {
            "terminationGracePeriodSeconds": 0,
            "domain": {
                "devices": {
                    "disks": [{"name": "containerdisk", "disk": {"bus": "virtio"}}],
                    "autoattachPodInterface": false,
                    "autoattachGraphicsDevice": false,
                },
                "memory": {"guest": memory},
            },
            "volumes": [{"name": "containerdisk", "containerDisk": {"image": image}}],
        },
    });
    if paused {
        vmi["spec"]["startStrategy"] = "Paused".into();
    }
    vmi
}

/// Runs the benchmark (see the module docs), prints its tables and writes the JSON.
pub fn run(
    args: &CpArgs,
    server: &std::path::Path,
    launcher: &std::path::Path,
) -> anyhow::Result<()> {
    anyhow::ensure!(args.vmis > 0, "--vmis must be at least 1");
    anyhow::ensure!(
        args.rate.is_finite() && args.rate > 0.0,
        "--rate must be positive"
    );
    anyhow::ensure!(
        args.quiet_secs.is_finite() && args.quiet_secs > 0.0,
        "--quiet-secs must be positive"
    );
    for (what, path) in [("server", server), ("launcher", launcher)] {
        anyhow::ensure!(
            path.exists(),
            "the {what} binary {} is missing: cargo build --release -p server -p launcher",
            path.display()
        );
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let pod_runtimes: Vec<&str> = if args.compare_runtimes {
        vec!["process", "runc"]
    } else {
        vec![args.pod_runtime.as_str()]
    };
    let mut all = Vec::new();
    for pod_runtime in pod_runtimes {
        let scratch = tempfile::Builder::new()
            .prefix("kubevirt-rs-cp-")
            .tempdir()
            .context("creating a scratch directory")?;
        progress(&format!("launcher pods: --pod-runtime {pod_runtime}"));
        let outcome =
            runtime.block_on(measure(args, pod_runtime, server, launcher, scratch.path()));
        let left = node::kill_mentioning(scratch.path());
        if left > 0 {
            eprintln!(
                "cp: killed {left} processes left in {}",
                scratch.path().display()
            );
        }
        if args.keep {
            eprintln!("cp: logs kept in {}", scratch.keep().display());
        }
        let results = outcome?;
        report::print(&results);
        all.push(results);
    }
    if let [process, runc] = all.as_slice() {
        report::compare(process, runc);
    }
    if let Some(dir) = args.cp_json.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let json = match all.as_slice() {
        [one] => serde_json::to_vec_pretty(one)?,
        many => serde_json::to_vec_pretty(many)?,
    };
    std::fs::write(&args.cp_json, json)
        .with_context(|| format!("writing {}", args.cp_json.display()))?;
    eprintln!("cp: raw results in {}", args.cp_json.display());
    Ok(())
}

fn progress(what: &str) {
    eprintln!("cp: {what}");
}

async fn measure(
    args: &CpArgs,
    pod_runtime: &str,
    bin: &std::path::Path,
    launcher: &std::path::Path,
    dir: &std::path::Path,
) -> anyhow::Result<Results> {
    let epoch = Instant::now();
    let mut results = Results {
        pod_runtime: pod_runtime.to_owned(),
        vmis: args.vmis,
        rate: args.rate,
        image: args.image.clone(),
        guest_memory: args.guest_memory.clone(),
        paused: args.paused,
        ..Results::default()
    };
    progress("starting kubevirt-rs server with every component");
    let run_dir = dir.join("run");
    let launcher = std::fs::canonicalize(launcher)?;
    let (server, _) =
        ServerProcess::start_with(bin, &dir.join("data"), &dir.join("server.log"), |c| {
            c.args([
                "--node-name",
                "bench",
                "--pod-runtime",
                pod_runtime,
                "--launcher",
            ])
            .arg(&launcher)
            .env("KUBEVIRT_RS_RUN_DIR", &run_dir);
            if let Some(filter) = &args.server_log {
                c.env("KUBEVIRT_RS_LOG", filter);
            }
        })
        .await?;
    let pid = server.process.pid();
    let mut system = rounds::System::start(&server, args, epoch).await?;
    tokio::time::sleep(SETTLE).await;
    results.idle = proc::resident(pid);
    let window = Duration::from_secs_f64(args.quiet_secs);
    progress(&format!("idle: a quiet window of {window:?}"));
    results.idle_quiet = node::quiet(pid, window).await;

    progress("warm-up: one VMI");
    results.warmup = system.one_by_one("warmup", 1).await?.0;
    progress(&format!("single: {} VMIs one after another", args.single));
    (results.single, results.single_cost) = system.one_by_one("single", args.single).await?;

    progress(&format!("paced: {} VMIs at {}/s", args.vmis, args.rate));
    (results.paced, results.paced_cost) = system.round("paced", args.vmis, Some(args.rate)).await?;
    tokio::time::sleep(SETTLE).await;
    results.with_vmis = proc::resident(pid);
    results.node_memory = node::memory(pid);
    progress(&format!(
        "{} VMIs running: a quiet window of {window:?}",
        args.vmis
    ));
    let before = system.events();
    results.loaded_quiet = node::quiet(pid, window).await;
    let after = system.events();
    results.loaded_quiet_writes = QuietWrites {
        vmis: after.0 - before.0,
        pods: after.1 - before.1,
    };
    system.delete("paced").await?;

    progress(&format!("burst: {} VMIs at once", args.vmis));
    (results.burst, results.burst_cost) = system.round("burst", args.vmis, None).await?;
    results.after_burst = proc::resident(pid);
    system.delete("burst").await?;
    drop(system);

    server.process.stop().await.context("stopping the server")?;
    Ok(results)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guest_is_labelled_by_round_and_paused_on_request() {
        let vmi = vmi_manifest("paced-007", "paced", "img:devel", "32Mi", false);
        assert_eq!(vmi["metadata"]["labels"][LABEL], "paced");
        assert_eq!(vmi["spec"]["domain"]["memory"]["guest"], "32Mi");
        assert_eq!(
            vmi["spec"]["volumes"][0]["containerDisk"]["image"],
            "img:devel"
        );
        assert_eq!(
            vmi["spec"]["domain"]["devices"]["autoattachPodInterface"],
            false
        );
        assert!(vmi["spec"].get("startStrategy").is_none());
        let paused = vmi_manifest("p", "p", "i", "32Mi", true);
        assert_eq!(paused["spec"]["startStrategy"], "Paused");
    }
}
