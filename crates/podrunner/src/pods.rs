//! The kubelet part: one worker per pod bound to this node, from start to deletion.
//!
//! A worker:
//! 1. Adopts what `state_dir/<pod-uid>/` records (a restarted runner finds its running
//!    processes there), or starts every container once the pod can run: each image
//!    mapped, each variable resolvable. Otherwise the pod stays `Pending`, the container
//!    waiting with the reason ([`crate::spec::Refusal`]).
//! 2. Polls its processes and patches `pods/{name}/status` whenever what it reports
//!    changes: `Running` and ready, then `Succeeded` or `Failed` with each exit code.
//!    Containers are never restarted: `restartPolicy` `OnFailure` and `Always` are
//!    treated as `Never` (logged).
//! 3. On `deletionTimestamp`: SIGTERM, the grace period, SIGKILL, then deletes the pod
//!    with grace 0 and removes its directory and cgroup. A pod that runs nothing is
//!    deleted at once; a pod gone from the API has its processes killed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::{Api, DeleteParams, Patch, PatchParams, Preconditions};
use nix::sys::signal::Signal;
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::cgroup::Cgroups;
use crate::process::{self, Exit, Record, State};
use crate::runtime::Runtime;
use crate::spec::{self, Host};
use crate::status::{self, ContainerView, Phase};

/// How often running processes are checked.
const POLL: Duration = Duration::from_millis(200);
/// How often a pod with nothing running is looked at again without news.
const IDLE: Duration = Duration::from_secs(30);
/// How long a killed process gets to disappear.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// What every worker shares.
pub struct Node {
    pub client: Client,
    pub name: String,
    pub ip: String,
    pub state_dir: PathBuf,
    pub runtime: Runtime,
    pub env: BTreeMap<String, String>,
    pub cgroups: Cgroups,
}

impl Node {
    /// Removes what `dir` holds for the pod `uid` (see [`remove_pod_state`]).
    pub fn remove_pod_state(&self, dir: &Path, uid: &str) {
        remove_pod_state(dir, uid, &self.cgroups, &self.runtime);
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("ip", &self.ip)
            .field("state_dir", &self.state_dir)
            .finish_non_exhaustive()
    }
}

/// The latest pod a worker is told about; `None` once it is gone from the API.
pub type PodUpdates = watch::Receiver<Option<Arc<Pod>>>;

/// One started container.
#[derive(Debug)]
struct Started {
    name: String,
    image: String,
    record: Record,
    exit: Option<Exit>,
}

#[derive(Debug)]
struct Worker {
    node: Arc<Node>,
    uid: String,
    dir: PathBuf,
    started: Vec<Started>,
    last_written: Option<Value>,
    warned_restart: bool,
}

/// Runs the pod `uid` until it is deleted (or the runner stops: then its processes are
/// left running for the next runner to adopt).
pub async fn work(node: Arc<Node>, uid: String, mut updates: PodUpdates) -> String {
    let dir = node.state_dir.join(&uid);
    let mut worker = Worker {
        node,
        uid: uid.clone(),
        dir,
        started: Vec::new(),
        last_written: None,
        warned_restart: false,
    };
    if let Some(pod) = updates.borrow().clone() {
        worker.adopt(&pod);
    }
    loop {
        let pod = updates.borrow_and_update().clone();
        let Some(pod) = pod else {
            worker.forget().await;
            return uid;
        };
        if pod.metadata.deletion_timestamp.is_some() {
            // Done, or the runner is stopping (the next one finishes the job).
            if worker.terminate(pod, &mut updates).await || updates.has_changed().is_err() {
                return uid;
            }
            continue;
        }
        let wait = worker.step(&pod).await;
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return uid },
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn name_of(pod: &Pod) -> (String, String) {
    (
        pod.metadata.namespace.clone().unwrap_or_default(),
        pod.metadata.name.clone().unwrap_or_default(),
    )
}

impl Worker {
    fn api(&self, pod: &Pod) -> Api<Pod> {
        Api::namespaced(self.node.client.clone(), &name_of(pod).0)
    }

    /// Takes over the processes a previous runner started for this pod.
    fn adopt(&mut self, pod: &Pod) {
        // Only names this runner could have started: another name could lead to another
        // pod's records (`../<uid>/compute`).
        if spec::unsupported(pod).is_some() {
            return;
        }
        for c in pod.spec.iter().flat_map(|s| &s.containers) {
            if let Some(record) = process::record(&self.dir, &c.name) {
                tracing::info!(pod = %name_of(pod).1, container = %c.name, pid = record.pid, "adopted");
                self.started.push(Started {
                    name: c.name.clone(),
                    image: c.image.clone().unwrap_or_default(),
                    record,
                    exit: None,
                });
            }
        }
    }

    /// Starts or checks the containers and reports; returns when to look again.
    async fn step(&mut self, pod: &Pod) -> Duration {
        self.poll();
        let now = process::now();
        let status = if self.started.is_empty() {
            match self.start(pod).await {
                Some(status) => status,
                None => return IDLE,
            }
        } else {
            let views: Vec<ContainerView> = self.started.iter().map(view).collect();
            let basis = with_status(pod, self.last_written.as_ref());
            status::pod_status(&basis, &self.node.ip, &views, now)
        };
        let mut wait = if self.running() { POLL } else { IDLE };
        if self.last_written.as_ref() != Some(&status) {
            let patch = json!({"status": status});
            let (ns, name) = name_of(pod);
            match self
                .api(pod)
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
            {
                Ok(_) => {
                    tracing::debug!(pod = %name, namespace = %ns, phase = %status["phase"], "status written");
                    self.last_written = Some(status);
                }
                Err(e) => {
                    tracing::warn!(pod = %name, namespace = %ns, error = %e, "status not written");
                    wait = wait.min(Duration::from_secs(1));
                }
            }
        }
        wait
    }

    /// Starts the pod's containers if it can run; the status to report, or `None` when
    /// the pod finished before (nothing to do).
    async fn start(&mut self, pod: &Pod) -> Option<Value> {
        let now = process::now();
        let pod_status = pod.status.as_ref();
        let phase = pod_status
            .and_then(|s| s.phase.as_deref())
            .unwrap_or("Pending");
        if phase == "Succeeded" || phase == "Failed" {
            return None;
        }
        let ran = pod_status
            .and_then(|s| s.container_statuses.as_ref())
            .into_iter()
            .flatten()
            .any(|c| {
                c.state
                    .as_ref()
                    .is_some_and(|s| s.running.is_some() || s.terminated.is_some())
            });
        if phase == "Running" || ran {
            return Some(status::pod_failed(
                pod,
                "ProcessStateLost",
                "the pod runner has no record of this pod's processes (its state directory was lost)",
                now,
            ));
        }
        if let Some(why) = spec::unsupported(pod) {
            return Some(status::pod_failed(pod, "UnsupportedPodSpec", why, now));
        }
        let no_images = BTreeMap::new();
        let host = Host {
            node_name: &self.node.name,
            node_ip: &self.node.ip,
            images: match &self.node.runtime {
                Runtime::Process { images } => images,
                Runtime::Oci(_) => &no_images,
            },
            env: &self.node.env,
        };
        let plans = match &self.node.runtime {
            Runtime::Process { .. } => spec::plan(pod, &host),
            Runtime::Oci(oci) => {
                let mut plans = Vec::new();
                for c in pod.spec.iter().flat_map(|s| &s.containers) {
                    plans.push((c.name.clone(), oci.prepare(pod, c, &host, &self.dir).await));
                }
                plans
            }
        };
        let images: BTreeMap<&str, &str> = pod
            .spec
            .iter()
            .flat_map(|s| &s.containers)
            .map(|c| (c.name.as_str(), c.image.as_deref().unwrap_or_default()))
            .collect();
        if plans.iter().any(|(_, p)| p.is_err()) {
            let views: Vec<ContainerView> = plans
                .iter()
                .map(|(name, plan)| ContainerView {
                    name: name.clone(),
                    image: images
                        .get(name.as_str())
                        .copied()
                        .unwrap_or_default()
                        .to_owned(),
                    phase: match plan {
                        Err(refusal) => Phase::Waiting {
                            reason: refusal.reason().to_owned(),
                            message: refusal.to_string(),
                        },
                        Ok(_) => Phase::Waiting {
                            reason: "ContainerCreating".to_owned(),
                            message: "waiting for the pod's other containers to be startable"
                                .to_owned(),
                        },
                    },
                })
                .collect();
            return Some(status::pod_status(pod, &self.node.ip, &views, now));
        }
        let policy = pod.spec.as_ref().and_then(|s| s.restart_policy.as_deref());
        if policy.is_some_and(|p| p != "Never") && !self.warned_restart {
            self.warned_restart = true;
            tracing::warn!(pod = %name_of(pod).1, policy = ?policy, "containers are never restarted: treated as restartPolicy Never");
        }
        // None under an OCI runtime, which makes each container's cgroup itself (the
        // runner then has no cgroups of its own: `crate::run`).
        let cgroup = std::fs::create_dir_all(&self.dir)
            .map_err(|e| e.to_string())
            .map(|()| self.node.cgroups.pod(&self.uid, pod));
        for (name, plan) in plans {
            let Ok(launch) = plan else { continue };
            let started = match &cgroup {
                Ok(procs) => process::spawn(&self.dir, &launch, procs.as_deref())
                    .map_err(|e| crate::error_chain(&e)),
                Err(e) => Err(format!("creating {}: {e}", self.dir.display())),
            };
            let (record, exit) = match started {
                Ok(record) => {
                    tracing::info!(pod = %name_of(pod).1, container = %name, pid = record.pid, "started");
                    (record, None)
                }
                Err(e) => {
                    tracing::warn!(pod = %name_of(pod).1, container = %name, error = %e, "not started");
                    let _ = append(&process::log_path(&self.dir, &name), &e);
                    let record = Record {
                        pid: 0,
                        start_ticks: 0,
                        started_at: now,
                    };
                    (
                        record,
                        Some(Exit {
                            code: 128,
                            finished_at: now,
                            recorded: true,
                        }),
                    )
                }
            };
            self.started.push(Started {
                name,
                image: launch.image,
                record,
                exit,
            });
        }
        let views: Vec<ContainerView> = self.started.iter().map(view).collect();
        Some(status::pod_status(pod, &self.node.ip, &views, now))
    }

    fn poll(&mut self) {
        for s in self.started.iter_mut().filter(|s| s.exit.is_none()) {
            if let State::Exited(exit) = process::poll(&self.dir, &s.name, &s.record) {
                tracing::info!(container = %s.name, code = exit.code, uid = %self.uid, "exited");
                s.exit = Some(exit);
            }
        }
    }

    fn running(&self) -> bool {
        self.started.iter().any(|s| s.exit.is_none())
    }

    fn signal(&self, signal: Signal) {
        for s in self.started.iter().filter(|s| s.exit.is_none()) {
            process::signal(&self.dir, &s.name, &s.record, signal);
        }
    }

    /// Stops the pod for its deletion and deletes it; false when the runner is stopping
    /// first (the next runner finishes the job).
    async fn terminate(&mut self, pod: Arc<Pod>, updates: &mut PodUpdates) -> bool {
        let (ns, name) = name_of(&pod);
        let grace = |p: &Pod| {
            p.metadata
                .deletion_grace_period_seconds
                .or_else(|| {
                    p.spec
                        .as_ref()
                        .and_then(|s| s.termination_grace_period_seconds)
                })
                .unwrap_or(30)
                .max(0)
        };
        self.poll();
        if self.running() {
            let seconds = grace(&pod);
            tracing::info!(pod = %name, namespace = %ns, grace = seconds, "stopping");
            self.signal(Signal::SIGTERM);
            let mut deadline = after(seconds);
            let mut killed = false;
            loop {
                self.poll();
                if !self.running() {
                    break;
                }
                if Instant::now() >= deadline && !killed {
                    tracing::info!(pod = %name, namespace = %ns, "grace period over: killing");
                    self.signal(Signal::SIGKILL);
                    killed = true;
                    deadline = Instant::now() + KILL_WAIT;
                } else if Instant::now() >= deadline {
                    tracing::warn!(pod = %name, namespace = %ns, "processes survive SIGKILL");
                    break;
                }
                let step = deadline
                    .saturating_duration_since(Instant::now())
                    .min(POLL / 2);
                tokio::select! {
                    changed = updates.changed() => {
                        if changed.is_err() {
                            return false;
                        }
                        let shorter = match updates.borrow().as_deref() {
                            None => Some(0),
                            Some(p) => Some(grace(p)),
                        };
                        if let Some(s) = shorter.filter(|_| !killed) {
                            deadline = deadline.min(after(s));
                        }
                    }
                    () = tokio::time::sleep(step) => {}
                }
            }
        }
        // The processes are gone: their state goes before the pod does, so whoever sees
        // the pod gone finds nothing of it left on the node (as kubelet cleans up first).
        self.remove_state();
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: pod.metadata.uid.clone(),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        match self.api(&pod).delete(&name, &params).await {
            Ok(_) => tracing::info!(pod = %name, namespace = %ns, "pod deleted"),
            Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => {}
            Err(e) => {
                tracing::warn!(pod = %name, namespace = %ns, error = %e, "pod not deleted: retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                return false;
            }
        }
        true
    }

    /// The pod is gone from the API: its processes go too.
    async fn forget(&self) {
        let (dir, uid, node) = (self.dir.clone(), self.uid.clone(), self.node.clone());
        let _ = tokio::task::spawn_blocking(move || node.remove_pod_state(&dir, &uid)).await;
    }

    fn remove_state(&self) {
        remove_leftovers(&self.dir, &self.uid, &self.node.cgroups, &self.node.runtime);
    }
}

/// `seconds` of grace from now; any count a pod can carry, without overflow (a grace
/// period beyond a year is a year).
fn after(seconds: i64) -> Instant {
    let seconds = seconds.clamp(0, 365 * 24 * 3600) as u64;
    Instant::now() + Duration::from_secs(seconds)
}

fn view(s: &Started) -> ContainerView {
    let phase = match s.exit {
        None => Phase::Running {
            started_at: s.record.started_at,
        },
        Some(exit) => Phase::Terminated {
            started_at: s.record.started_at,
            exit,
        },
    };
    ContainerView {
        name: s.name.clone(),
        image: s.image.clone(),
        phase,
    }
}

fn append(path: &Path, line: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    writeln!(f, "kubevirt-rs pod runner: {line}")
}

/// Kills whatever `dir` records as running (SIGKILL to each container), waits for it to
/// go, and removes the directory, the pod's cgroup and what the runtime holds of it.
pub fn remove_pod_state(dir: &Path, uid: &str, cgroups: &Cgroups, runtime: &Runtime) {
    let records: Vec<(String, Record)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let file = entry.file_name().to_string_lossy().into_owned();
            let container = file.strip_suffix(".pid")?.to_owned();
            process::record(dir, &container).map(|r| (container, r))
        })
        .collect();
    for (container, record) in &records {
        if process::alive(record) {
            tracing::info!(uid, container = %container, pid = record.pid, "killing the process of a deleted pod");
        }
        process::signal(dir, container, record, Signal::SIGKILL);
    }
    let deadline = std::time::Instant::now() + KILL_WAIT;
    for (container, record) in &records {
        while process::poll(dir, container, record) == State::Running
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    remove_leftovers(dir, uid, cgroups, runtime);
}

/// What a pod whose processes are gone leaves: its cgroup, what the runtime holds of it
/// (containers, mounts), and its directory.
fn remove_leftovers(dir: &Path, uid: &str, cgroups: &Cgroups, runtime: &Runtime) {
    cgroups.remove(uid);
    if let Runtime::Oci(oci) = runtime {
        oci.cleanup(dir, uid);
    }
    if let Err(e) = std::fs::remove_dir_all(dir)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(dir = %dir.display(), error = %e, "pod directory not removed");
    }
}

/// `pod` with the status this worker wrote last, when it wrote one: the API's copy may lag
/// behind our own writes, and its older timestamps would make every status look changed.
fn with_status(pod: &Pod, last_written: Option<&Value>) -> Pod {
    let mut pod = pod.clone();
    if let Some(status) = last_written.and_then(|v| serde_json::from_value(v.clone()).ok()) {
        pod.status = Some(status);
    }
    pod
}

#[cfg(test)]
mod basis_tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_lagging_pod_copy_does_not_restamp_the_status() {
        let pod: Pod =
            serde_json::from_value(json!({"metadata": {"name": "p", "uid": "u"}})).unwrap();
        let views = [status::ContainerView {
            name: "c".into(),
            image: "i".into(),
            phase: status::Phase::Waiting {
                reason: "ContainerCreating".into(),
                message: String::new(),
            },
        }];
        let written = status::pod_status(&pod, "ip", &views, 100);
        // A second later the watch still shows the pod without our write.
        let again = status::pod_status(&with_status(&pod, Some(&written)), "ip", &views, 101);
        assert_eq!(again, written);
        assert_ne!(status::pod_status(&pod, "ip", &views, 101), written);
    }
}

#[cfg(test)]
mod grace_tests {
    use super::*;

    #[test]
    fn any_grace_period_gives_a_deadline() {
        let now = Instant::now();
        assert!(after(i64::MAX) > now);
        assert!(after(i64::MIN) <= Instant::now());
    }
}
