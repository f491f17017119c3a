//! `kubevirt-rs down --data-dir DIR`: everything a server on DIR started, stopped. For a
//! user who is done: the server (SIGTERM to the pid its lock names, as Ctrl-C would), then
//! every launcher its pod runners left running, which outlive a stopped server on
//! purpose. Each launcher gets SIGTERM (its guest is shut down through ACPI) and the
//! grace period, then SIGKILL; its pod's state on the node goes. The API objects stay:
//! the next start finds the VMIs' pods without processes and fails them, and VMs that
//! should run start again.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::datadir::{DataDir, DataDirError};

/// How long the server gets to release its data directory.
const SERVER_STOP: Duration = Duration::from_secs(15);
const POLL: Duration = Duration::from_millis(100);

/// What `down` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Stopped {
    /// The server's pid, when one was running.
    pub server: Option<u32>,
    /// Pods whose processes were stopped.
    pub pods: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum DownError {
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("the server using {} (pid {pid}) did not stop within {SERVER_STOP:?}", dir.display())]
    ServerStays { dir: PathBuf, pid: u32 },
    #[error("a server is using {} but its pid is unknown: stop it first", dir.display())]
    UnknownServer { dir: PathBuf },
}

/// Stops the server on `dir`, then every pod its runners recorded, each given `grace`.
pub fn down(dir: &Path, grace: Duration) -> Result<Stopped, DownError> {
    let mut stopped = Stopped::default();
    // The lock held from here on: no server starts while the pods go.
    let data = match DataDir::lock(dir) {
        Ok(d) => d,
        Err(DataDirError::Locked { pid: Some(pid), .. }) => {
            // Only a plain process id: not 0 (our own group), 1 or one past i32 (which
            // would signal a group, or everything).
            let target = i32::try_from(pid).ok().filter(|p| *p > 1).ok_or_else(|| {
                DownError::UnknownServer {
                    dir: dir.to_owned(),
                }
            })?;
            let _ = kill(Pid::from_raw(target), Signal::SIGTERM);
            stopped.server = Some(pid);
            let deadline = Instant::now() + SERVER_STOP;
            loop {
                match DataDir::lock(dir) {
                    Ok(d) => break d,
                    Err(DataDirError::Locked { .. }) if Instant::now() < deadline => {
                        std::thread::sleep(POLL);
                    }
                    Err(DataDirError::Locked { .. }) => {
                        return Err(DownError::ServerStays {
                            dir: dir.to_owned(),
                            pid,
                        });
                    }
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Err(DataDirError::Locked { pid: None, .. }) => {
            return Err(DownError::UnknownServer {
                dir: dir.to_owned(),
            });
        }
        Err(e) => return Err(e.into()),
    };
    let pods = pod_dirs(data.root());
    let records: Vec<_> = pods
        .iter()
        .flat_map(|p| containers(p))
        .filter(|(_, _, r)| podrunner::process::alive(r))
        .collect();
    // Everything below the launchers (QEMU runs in a process group of its own), to wait
    // for once they are gone.
    let wrappers: Vec<i32> = records.iter().map(|(_, _, r)| r.pid).collect();
    let below = descendants(&wrappers);
    for (dir, container, r) in &records {
        podrunner::process::signal(dir, container, r, Signal::SIGTERM);
    }
    let deadline = Instant::now() + grace.min(Duration::from_secs(365 * 24 * 3600));
    while records.iter().any(|(_, _, r)| podrunner::process::alive(r)) && Instant::now() < deadline
    {
        std::thread::sleep(POLL);
    }
    let cgroups = podrunner::cgroup::Cgroups::detect();
    // Pods a sandboxed server ran leave the runtime's state and mounts to remove too.
    // (Only clean-up: no pod mounts anything any more.)
    let sandbox = crate::sandbox(&data, Vec::new());
    let runtime = match sandbox.state.is_dir().then(|| sandbox.runtime()) {
        Some(Ok(runtime)) => runtime,
        _ => podrunner::runtime::Runtime::Process {
            images: Default::default(),
        },
    };
    for pod in &pods {
        let uid = pod
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        podrunner::pods::remove_pod_state(pod, &uid, &cgroups, &runtime);
    }
    // A killed launcher takes QEMU with it (its parent-death signal), a moment later.
    let deadline = Instant::now() + Duration::from_secs(5);
    while below.iter().any(|p| p.alive()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    stopped.pods = pods.len();
    Ok(stopped)
}

/// A process, by pid and start time (which tells a reused pid apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: i32,
    start: u64,
}

impl Proc {
    fn alive(&self) -> bool {
        podrunner::process::proc_stat(self.pid)
            .is_some_and(|s| s.start_ticks == self.start && s.state != 'Z')
    }
}

/// Every process below `roots`, at this moment.
fn descendants(roots: &[i32]) -> Vec<Proc> {
    let all: Vec<(i32, i32, u64)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| podrunner::process::proc_stat(pid).map(|s| (pid, s.ppid, s.start_ticks)))
        .collect();
    let mut found: Vec<Proc> = Vec::new();
    let mut parents: Vec<i32> = roots.to_vec();
    while let Some(parent) = parents.pop() {
        for &(pid, ppid, start) in &all {
            if ppid == parent && !found.iter().any(|p| p.pid == pid) {
                found.push(Proc { pid, start });
                parents.push(pid);
            }
        }
    }
    found
}

/// Every pod directory of every node: `DIR/pods/<uid>` and `DIR/nodes/<node>/pods/<uid>`.
fn pod_dirs(root: &Path) -> Vec<PathBuf> {
    let children = |dir: PathBuf| -> Vec<PathBuf> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect()
    };
    let mut pods = children(root.join("pods"));
    for node in children(root.join("nodes")) {
        pods.extend(children(node.join("pods")));
    }
    pods
}

/// The records of the containers started in pod directory `pod`.
/// A pod's started containers: its directory, each container's name and record.
fn containers(pod: &Path) -> Vec<(PathBuf, String, podrunner::process::Record)> {
    std::fs::read_dir(pod)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let container = name.strip_suffix(".pid")?.to_owned();
            let record = podrunner::process::record(pod, &container)?;
            Some((pod.to_owned(), container, record))
        })
        .collect()
}
