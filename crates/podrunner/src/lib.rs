//! The pod runner: embedded mode's kubelet and scheduler for one node. `kubevirt-rs
//! server` runs [`run`] in-process; it talks to the API server only through a
//! `kube::Client`, like any other component.
//!
//! Owns:
//! - the Node object's registration, status heartbeat and Lease ([`node`]);
//! - scheduling pods with no node onto this one, through `pods/binding` ([`scheduler`]);
//! - running the pods bound to this node as processes, their status, their graceful
//!   deletion, and re-adopting them after a restart ([`pods`], [`process`], [`spec`],
//!   [`status`]);
//! - the log endpoint the API server's `pods/log` reads ([`logs`]);
//! - cgroup v2 limits for host processes where the host offers them ([`cgroup`]);
//! - how containers run ([`runtime`]): as host processes whose image maps to a local
//!   binary, or in an OCI runtime (runc) from their image, each in namespaces of its own,
//!   under its securityContext, seccomp and cgroup limits ([`oci`]).
//!
//! Does not own: pod networking (pods share the node's network; `podIP` is the node's
//! address), volumes other than `emptyDir` (refused), probes, init containers (refused),
//! restarts (containers run once; `restartPolicy` is treated as `Never`), authentication
//! on the log endpoint.
//!
//! Processes outlive the runner. Each container runs under a `/bin/sh` wrapper in its
//! own session that records the exit code in a file, so a runner that restarts finds
//! running processes again by pid and start time and learns the exit codes of those that
//! ended while it was away; see [`process`]. Per pod, `state_dir/<pod-uid>/` holds
//! `<container>.pid`, `<container>.exit` and `<container>.log`.

pub mod cgroup;
pub mod logs;
pub mod node;
pub mod oci;
pub mod pods;
pub mod process;
pub mod runtime;
pub mod scheduler;
pub mod spec;
pub mod status;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::Api;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How often the Node's status and Lease are renewed.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How often scheduling and workers are re-checked without news (retries failed writes).
const RESYNC: Duration = Duration::from_secs(5);

/// What the runner needs; the caller decides everything.
#[derive(Debug)]
pub struct Config {
    /// The Node's name.
    pub node_name: String,
    /// The node's address: its `InternalIP`, and every pod's `hostIP` and `podIP`.
    pub node_ip: String,
    /// Per pod, a directory named by its uid: pid and exit files, logs.
    pub state_dir: PathBuf,
    /// How containers run: host processes or an OCI runtime.
    pub runtime: runtime::Runtime,
    /// Variables every process gets besides its container's `env` (the server's
    /// `KUBEVIRT_RS_*` settings; see [`runner_env`]). `PATH` defaults to the usual
    /// system directories.
    pub env: BTreeMap<String, String>,
    /// The log endpoint's TLS configuration (its serving certificate).
    pub log_tls: Arc<rustls::ServerConfig>,
    /// Where the log endpoint listens; its port is published on the Node.
    pub log_listener: std::net::TcpListener,
}

/// This process's `KUBEVIRT_RS_*` variables and `PATH`: a default for [`Config::env`].
pub fn runner_env() -> BTreeMap<String, String> {
    std::env::vars()
        .filter(|(k, _)| k.starts_with("KUBEVIRT_RS_") || k == "PATH")
        .collect()
}

/// An error with its sources, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

/// Runs the node until dropped (or until the API server cannot be reached at start).
/// Dropping it stops the runner but not the pods' processes.
pub async fn run(client: kube::Client, config: Config) -> anyhow::Result<()> {
    let Config {
        node_name,
        node_ip,
        state_dir,
        runtime,
        env,
        log_tls,
        log_listener,
    } = config;
    std::fs::create_dir_all(&state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    log_listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(log_listener)?;
    let port = listener.local_addr()?.port();
    let mut agent = node::Agent::new(&node_name, &node_ip, port);
    agent
        .register(&client)
        .await
        .context("registering the node")?;

    let (pods, pod_writer) = reflector::store::<Pod>();
    let pod_events = reflector::reflector(
        pod_writer,
        watcher(Api::<Pod>::all(client.clone()), watcher::Config::default()),
    )
    .default_backoff();
    let (nodes, node_writer) = reflector::store::<Node>();
    let only_ours = watcher::Config::default().fields(&format!("metadata.name={node_name}"));
    let node_events = reflector::reflector(
        node_writer,
        watcher(Api::<Node>::all(client.clone()), only_ours),
    )
    .default_backoff();
    let mut pod_events = std::pin::pin!(pod_events);
    let mut node_events = std::pin::pin!(node_events);

    let mut background = JoinSet::new();
    background.spawn(logs::serve(
        listener,
        log_tls,
        logs::Logs {
            pods: pods.clone(),
            state_dir: state_dir.clone(),
        },
    ));
    // Host processes get the runner's cgroups; an OCI runtime makes its own.
    let cgroups = match &runtime {
        runtime::Runtime::Process { .. } => cgroup::Cgroups::detect(),
        runtime::Runtime::Oci(_) => cgroup::Cgroups::default(),
    };
    let mut runner = Runner {
        node: Arc::new(pods::Node {
            client: client.clone(),
            name: node_name,
            ip: node_ip,
            state_dir,
            runtime,
            env,
            cgroups,
        }),
        pods,
        nodes,
        workers: HashMap::new(),
        finished: HashSet::new(),
        tasks: JoinSet::new(),
        binding: JoinSet::new(),
        scheduling: HashSet::new(),
        bound: HashSet::new(),
        cleaned: false,
    };
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    let mut resync = tokio::time::interval(RESYNC);
    let (mut pods_listed, mut node_listed) = (false, false);
    loop {
        tokio::select! {
            event = pod_events.next() => {
                note(event, &mut pods_listed, "pod")?;
                // A burst of pod events costs one walk over the pods, not one each.
                while let Some(event) = pod_events.next().now_or_never() {
                    note(event, &mut pods_listed, "pod")?;
                }
            }
            event = node_events.next() => note(event, &mut node_listed, "node")?,
            _ = heartbeat.tick() => {
                if let Err(e) = agent.heartbeat(&client).await {
                    tracing::warn!(error = %e, "node heartbeat failed");
                }
            }
            _ = resync.tick() => {}
            Some(done) = runner.tasks.join_next() => {
                if let Ok(uid) = done {
                    runner.workers.remove(&uid);
                    runner.finished.insert(uid);
                }
            }
            Some(done) = runner.binding.join_next() => {
                if let Ok((uid, bound)) = done {
                    runner.scheduling.remove(&uid);
                    if bound {
                        runner.bound.insert(uid);
                    }
                }
            }
            Some(_) = background.join_next() => anyhow::bail!("the log endpoint stopped"),
        }
        if pods_listed && node_listed {
            runner.sync();
        }
    }
}

/// Takes in one watch event: the end of the initial listing sets `listed`; an error is
/// logged (the watcher retries); the end of the stream is fatal.
fn note<K>(
    event: Option<Result<watcher::Event<K>, watcher::Error>>,
    listed: &mut bool,
    what: &str,
) -> anyhow::Result<()> {
    match event {
        Some(Ok(watcher::Event::InitDone)) => *listed = true,
        Some(Ok(_)) => {}
        Some(Err(e)) => tracing::warn!(error = %e, "{what} watch failed"),
        None => anyhow::bail!("the {what} watch ended"),
    }
    Ok(())
}

/// The runner's bookkeeping between events.
struct Runner {
    node: Arc<pods::Node>,
    pods: Store<Pod>,
    nodes: Store<Node>,
    /// A worker per pod uid bound here, fed the latest pod.
    workers: HashMap<String, watch::Sender<Option<Arc<Pod>>>>,
    /// Pods whose worker finished (deleted): not started again while the API still
    /// shows them.
    finished: HashSet<String>,
    tasks: JoinSet<String>,
    /// Scheduling decisions being written, each its own task: (pod uid, whether bound).
    binding: JoinSet<(String, bool)>,
    /// Uids of the pods in `binding`.
    scheduling: HashSet<String>,
    /// Pods bound by us that the watch still shows without a node: not bound again.
    bound: HashSet<String>,
    /// Whether state left by pods that no longer exist was removed.
    cleaned: bool,
}

impl Runner {
    /// Schedules what waits for a node, feeds the workers, and (once) removes the state
    /// of pods that no longer exist.
    fn sync(&mut self) {
        let node = self.nodes.get(&ObjectRef::new(&self.node.name));
        let all = self.pods.state();
        if let Some(node) = &node {
            self.schedule(&all, node);
        }
        let ours: HashMap<String, Arc<Pod>> = all
            .into_iter()
            .filter(|p| {
                p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(&self.node.name)
            })
            .filter_map(|p| Some((p.metadata.uid.clone()?, p)))
            .collect();
        for (uid, pod) in &ours {
            if self.finished.contains(uid) {
                continue;
            }
            match self.workers.get(uid) {
                Some(tx) => {
                    tx.send_if_modified(|current| {
                        let changed = current.as_ref().map(|c| &c.metadata.resource_version)
                            != Some(&pod.metadata.resource_version);
                        if changed {
                            *current = Some(pod.clone());
                        }
                        changed
                    });
                }
                None => {
                    let (tx, rx) = watch::channel(Some(pod.clone()));
                    self.tasks
                        .spawn(pods::work(self.node.clone(), uid.clone(), rx));
                    self.workers.insert(uid.clone(), tx);
                }
            }
        }
        for (uid, tx) in &self.workers {
            if !ours.contains_key(uid) {
                tx.send_if_modified(|current| current.take().is_some());
            }
        }
        self.finished.retain(|uid| ours.contains_key(uid));
        if !self.cleaned {
            self.cleaned = true;
            self.remove_orphans(&ours);
        }
    }

    /// Writes a decision for each pod waiting for a node, all at once: a burst of new
    /// pods is bound together, not one after another.
    fn schedule(&mut self, all: &[Arc<Pod>], node: &Arc<Node>) {
        let mut waiting = HashSet::new();
        for pod in all {
            let Some(uid) = pod.metadata.uid.clone() else {
                continue;
            };
            if scheduler::decide(pod, node) == scheduler::Decision::Skip {
                continue;
            }
            waiting.insert(uid.clone());
            if self.scheduling.contains(&uid) || self.bound.contains(&uid) {
                continue;
            }
            self.scheduling.insert(uid.clone());
            let (client, pod, node) = (self.node.client.clone(), pod.clone(), node.clone());
            self.binding.spawn(async move {
                match scheduler::schedule(&client, &pod, &node).await {
                    Ok(bound) => (uid, bound),
                    Err(e) => {
                        tracing::warn!(pod = ?pod.metadata.name, error = %e, "scheduling failed");
                        (uid, false)
                    }
                }
            });
        }
        self.bound.retain(|uid| waiting.contains(uid));
    }

    /// Kills and removes what `state_dir` holds for pods this node no longer has.
    fn remove_orphans(&self, ours: &HashMap<String, Arc<Pod>>) {
        let dirs = std::fs::read_dir(&self.node.state_dir)
            .into_iter()
            .flatten()
            .flatten();
        for entry in dirs {
            let uid = entry.file_name().to_string_lossy().into_owned();
            if ours.contains_key(&uid) || !entry.path().is_dir() {
                continue;
            }
            tracing::info!(uid = %uid, "removing the state of a pod that no longer exists");
            let node = self.node.clone();
            tokio::task::spawn_blocking(move || {
                node.remove_pod_state(&entry.path(), &uid);
            });
        }
    }
}
