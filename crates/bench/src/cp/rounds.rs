//! Rounds of VMIs: created (one by one, at a rate, or all at once), followed to Running,
//! recorded, and deleted until nothing of them is left on the node.

use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::Method;
use serde::Serialize;
use serde::de::IgnoredAny;
use tokio::task::JoinSet;

use super::track::{Seen, Tracker};
use super::{COMPONENTS_DEADLINE, CpArgs, LABEL, NAMESPACE, node, vmi_manifest};
use crate::api::client::Client;
use crate::api::server::ServerProcess;
use crate::proc;

/// A round's VMIs must all be Running this long after their creates began.
const RUNNING_DEADLINE: Duration = Duration::from_secs(300);
/// Deleted VMIs, their pods and processes must be gone this long after the delete.
const GONE_DEADLINE: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(50);

/// One VMI's start, in ms since the benchmark began; None for what the watches did not
/// see.
#[derive(Debug, Clone, Serialize)]
pub struct VmiRecord {
    pub name: String,
    /// The create call was sent, and returned.
    pub create_sent_ms: f64,
    pub created_ms: f64,
    /// The VMI's phases, first seen.
    pub scheduling_ms: Option<f64>,
    pub scheduled_ms: Option<f64>,
    pub running_ms: f64,
    /// Its launcher pod: created, bound to the node, phase Running.
    pub pod_added_ms: Option<f64>,
    pub pod_bound_ms: Option<f64>,
    pub pod_running_ms: Option<f64>,
    /// Modifications of the VMI up to Running, creation not counted.
    pub vmi_writes: u32,
    /// The pod's creation and modifications up to the VMI's Running.
    pub pod_writes: u32,
}

impl VmiRecord {
    /// Creation (the create call returned) to Running, ms.
    pub fn latency_ms(&self) -> f64 {
        self.running_ms - self.created_ms
    }
}

/// What starting a round's VMIs cost the node, from the first create to the last Running.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Cost {
    pub vms: usize,
    pub wall_ms: f64,
    pub server_cpu_ms: f64,
    /// The launchers with the `qemu-img` runs they waited for, and the QEMUs, from their
    /// start.
    pub launcher_cpu_ms: f64,
    pub qemu_cpu_ms: f64,
    /// Busy time of all CPUs: every process on the machine, this benchmark and others.
    pub machine_cpu_ms: f64,
}

impl Cost {
    fn add(&mut self, other: &Cost) {
        self.vms += other.vms;
        self.wall_ms += other.wall_ms;
        self.server_cpu_ms += other.server_cpu_ms;
        self.launcher_cpu_ms += other.launcher_cpu_ms;
        self.qemu_cpu_ms += other.qemu_cpu_ms;
        self.machine_cpu_ms += other.machine_cpu_ms;
    }
}

/// The running server, a client of it, and the two watches.
pub struct System {
    client: Client,
    tracker: Tracker,
    server_pid: u32,
    epoch: Instant,
    image: String,
    memory: String,
    paused: bool,
}

fn collection() -> String {
    format!("/apis/kubevirt.io/v1/namespaces/{NAMESPACE}/virtualmachineinstances")
}

impl System {
    /// Waits for the components (virt-api's aggregated API, a schedulable node), then
    /// opens the watches.
    pub async fn start(
        server: &ServerProcess,
        args: &CpArgs,
        epoch: Instant,
    ) -> anyhow::Result<Self> {
        let client = server.endpoint.client()?;
        let deadline = Instant::now() + COMPONENTS_DEADLINE;
        loop {
            let api = client
                .get::<IgnoredAny>("/apis/subresources.kubevirt.io/v1/version")
                .await
                .is_ok();
            let nodes: anyhow::Result<serde_json::Value> = client
                .get("/api/v1/nodes?labelSelector=kubevirt.io%2Fschedulable%3Dtrue")
                .await;
            let schedulable =
                nodes.is_ok_and(|n| n["items"].as_array().is_some_and(|i| !i.is_empty()));
            if api && schedulable {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "virt-api or a schedulable node not there after {COMPONENTS_DEADLINE:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let tracker = Tracker::start(
            &server.endpoint,
            &format!("{}?labelSelector={LABEL}", collection()),
            &format!(
                "/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=kubevirt.io%3Dvirt-launcher"
            ),
        )
        .await?;
        Ok(Self {
            client,
            tracker,
            server_pid: server.process.pid(),
            epoch,
            image: args.image.clone(),
            memory: args.guest_memory.clone(),
            paused: args.paused,
        })
    }

    /// Watch events so far: (VMIs, launcher pods).
    pub fn events(&self) -> (u64, u64) {
        self.tracker.with(|seen| (seen.vmi_events, seen.pod_events))
    }

    /// `count` VMIs one after another, each deleted (and gone from the node) before the
    /// next is created.
    pub async fn one_by_one(
        &mut self,
        round: &str,
        count: usize,
    ) -> anyhow::Result<(Vec<VmiRecord>, Cost)> {
        let mut records = Vec::with_capacity(count);
        let mut cost = Cost::default();
        for i in 0..count {
            let name = format!("{round}-{i}");
            let (r, c) = self.round(&name, 1, None).await?;
            records.extend(r);
            cost.add(&c);
            self.delete(&name).await?;
        }
        Ok((records, cost))
    }

    /// Creates `count` VMIs labelled `round`, at `rate` per second or all at once, and
    /// waits until every one is Running.
    pub async fn round(
        &mut self,
        round: &str,
        count: usize,
        rate: Option<f64>,
    ) -> anyhow::Result<(Vec<VmiRecord>, Cost)> {
        let names: Vec<String> = if count == 1 {
            vec![round.to_owned()]
        } else {
            (0..count).map(|i| format!("{round}-{i:03}")).collect()
        };
        let server_before = proc::cpu_time(self.server_pid);
        let machine_before = node::machine_busy_ms();
        let start = tokio::time::Instant::now();
        let mut creates = JoinSet::new();
        for (i, name) in names.iter().enumerate() {
            let body = serde_json::to_vec(&vmi_manifest(
                name,
                round,
                &self.image,
                &self.memory,
                self.paused,
            ))?;
            let at = start + rate.map_or(Duration::ZERO, |r| Duration::from_secs_f64(i as f64 / r));
            let client = self.client.clone();
            creates.spawn(async move {
                tokio::time::sleep_until(at).await;
                let sent = Instant::now();
                client
                    .call::<IgnoredAny>(Method::POST, &collection(), Some(body))
                    .await?;
                anyhow::Ok((i, sent, Instant::now()))
            });
        }
        let mut created = vec![None; names.len()];
        while let Some(done) = creates.join_next().await {
            let (i, sent, returned) = done.context("a create panicked")??;
            created[i] = Some((sent, returned));
        }
        self.tracker
            .wait(
                &format!("{round}: Running"),
                &names,
                RUNNING_DEADLINE,
                |seen, n| seen.vmis.get(n).is_some_and(|v| v.running.is_some()),
                |seen, n| {
                    seen.vmis
                        .get(n)
                        .and_then(|v| v.phase_at("Failed"))
                        .map(|_| format!("{n} Failed"))
                },
            )
            .await?;
        let server_cpu = proc::cpu_time(self.server_pid).saturating_sub(server_before);
        let machine_after = node::machine_busy_ms();
        let on_node = node::descendants_cpu(self.server_pid);
        let epoch = self.epoch;
        let records: Vec<VmiRecord> = self.tracker.with(|seen| {
            names
                .iter()
                .zip(created)
                .map(|(name, c)| record(seen, name, c.expect("every create returned"), epoch))
                .collect()
        });
        let first = records
            .iter()
            .map(|r| r.create_sent_ms)
            .fold(f64::INFINITY, f64::min);
        let last = records.iter().map(|r| r.running_ms).fold(0.0, f64::max);
        let cost = Cost {
            vms: records.len(),
            wall_ms: last - first,
            server_cpu_ms: server_cpu.as_secs_f64() * 1000.0,
            launcher_cpu_ms: on_node.get(&node::Role::Launcher).copied().unwrap_or(0.0),
            qemu_cpu_ms: on_node.get(&node::Role::Qemu).copied().unwrap_or(0.0),
            machine_cpu_ms: match (machine_before, machine_after) {
                (Some(b), Some(a)) => a - b,
                _ => f64::NAN,
            },
        };
        Ok((records, cost))
    }

    /// Deletes the VMIs labelled `round` and waits until they, their pods and their
    /// launcher and QEMU processes are gone.
    pub async fn delete(&mut self, round: &str) -> anyhow::Result<()> {
        let names: Vec<String> = self.tracker.with(|seen| {
            seen.vmis
                .iter()
                .filter(|(n, v)| {
                    v.deleted.is_none() && (*n == round || n.starts_with(&format!("{round}-")))
                })
                .map(|(n, _)| n.clone())
                .collect()
        });
        self.client
            .call::<IgnoredAny>(
                Method::DELETE,
                &format!("{}?labelSelector={LABEL}%3D{round}", collection()),
                None,
            )
            .await?;
        self.tracker
            .wait(
                &format!("{round}: deleted"),
                &names,
                GONE_DEADLINE,
                |seen: &Seen, n| {
                    seen.vmis.get(n).is_some_and(|v| v.deleted.is_some())
                        && seen.pods.get(n).is_none_or(|p| p.deleted.is_some())
                },
                |_, _| None,
            )
            .await?;
        let deadline = Instant::now() + GONE_DEADLINE;
        loop {
            let left = node::descendants(self.server_pid)
                .iter()
                .filter(|(_, role)| *role != node::Role::Other)
                .count();
            if left == 0 {
                return Ok(());
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{round}: {left} launcher or QEMU processes still there {GONE_DEADLINE:?} after the delete"
            );
            tokio::time::sleep(POLL).await;
        }
    }
}

fn record(
    seen: &Seen,
    name: &str,
    (sent, returned): (Instant, Instant),
    epoch: Instant,
) -> VmiRecord {
    let ms = |t: Instant| t.saturating_duration_since(epoch).as_secs_f64() * 1000.0;
    let vmi = seen.vmis.get(name).cloned().unwrap_or_default();
    let pod = seen.pods.get(name).cloned().unwrap_or_default();
    let (running_at, running_rv) = vmi.running.expect("waited for Running");
    VmiRecord {
        name: name.to_owned(),
        create_sent_ms: ms(sent),
        created_ms: ms(returned),
        scheduling_ms: vmi.phase_at("Scheduling").map(ms),
        scheduled_ms: vmi.phase_at("Scheduled").map(ms),
        running_ms: ms(running_at),
        pod_added_ms: pod.added.map(ms),
        pod_bound_ms: pod.bound.map(ms),
        pod_running_ms: pod.running.map(ms),
        vmi_writes: vmi.writes,
        pod_writes: pod.writes_until(running_rv),
    }
}
