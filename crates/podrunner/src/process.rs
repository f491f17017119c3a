//! Container processes: started detached, found again after a restart, their exit codes
//! kept on disk.
//!
//! Each container runs under a small `/bin/sh` wrapper, [`WRAPPER`]:
//!
//! 1. The runner spawns `setsid /bin/sh -c WRAPPER kubevirt-rs-pod EXIT_FILE CGROUP_PROCS
//!    PROGRAM ARGS...`: util-linux's `setsid` starts a new session (so the wrapper is its
//!    own process group and has no controlling terminal) and execs the shell in the same
//!    process. Stdin is `/dev/null`, stdout and stderr are appended to `<container>.log`.
//!    No parent-death signal: it outlives the runner. Nothing runs between fork and exec
//!    in our process, so std spawns with `posix_spawn` (a vfork) instead of copying the
//!    server's address space; where `setsid` is missing, a `pre_exec` hook does the same
//!    with a fork.
//! 2. The wrapper moves itself into the pod's cgroup when one is given (writing `0` to its
//!    `cgroup.procs`), traps SIGTERM with a no-op (so a signal to the group does not end
//!    the wrapper, and the trap resets to the default in its child), runs the program as
//!    its child, and writes the program's exit status (`128 + signal` when signalled) to
//!    `<container>.exit` before exiting.
//! 3. The runner writes `<container>.pid`: the wrapper's pid, its start time in clock
//!    ticks since boot (`/proc/<pid>/stat` field 22, which tells a reused pid apart) and
//!    the wall-clock start.
//! 4. Stopping sends SIGTERM to the process group (the wrapper ignores it, the program
//!    gets it), then SIGKILL to the group.
//! 5. While the runner lives the wrapper is its child and is reaped with
//!    `waitpid(WNOHANG)`; after a restart it is not, and `/proc` tells whether it still
//!    runs. Either way the exit code comes from `<container>.exit` (its mtime is the
//!    finish time). A wrapper killed with SIGKILL writes nothing: the code is then the
//!    one `waitpid` saw, or 137 when nobody saw it.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::spec::Launch;

/// The wrapper script; `$1` is the exit file, the rest is the command.
pub const WRAPPER: &str = r#"trap : TERM; exit_file=$1; procs=$2; shift 2; [ -z "$procs" ] || { echo 0 > "$procs"; } 2>/dev/null; "$@"; echo $? > "$exit_file""#;

/// The exit code reported when the wrapper died without recording one (SIGKILL).
const KILLED: i32 = 128 + 9;

#[derive(Debug, thiserror::Error)]
#[error("{action} {}", path.display())]
pub struct ProcessError {
    action: &'static str,
    path: PathBuf,
    #[source]
    source: io::Error,
}

fn at(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> ProcessError {
    let path = path.to_owned();
    move |source| ProcessError {
        action,
        path,
        source,
    }
}

/// A started container as `<container>.pid` records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Record {
    pub pid: i32,
    /// Start time in clock ticks after boot.
    pub start_ticks: u64,
    /// Wall-clock start, seconds since the epoch.
    pub started_at: i64,
}

/// How a container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: i32,
    /// Seconds since the epoch.
    pub finished_at: i64,
    /// Whether the wrapper recorded the code (false: it was killed with the program).
    pub recorded: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Running,
    Exited(Exit),
}

/// The files of one container in its pod's directory.
pub fn log_path(dir: &Path, container: &str) -> PathBuf {
    dir.join(format!("{container}.log"))
}

fn pid_path(dir: &Path, container: &str) -> PathBuf {
    dir.join(format!("{container}.pid"))
}

fn exit_path(dir: &Path, container: &str) -> PathBuf {
    dir.join(format!("{container}.exit"))
}

pub fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Starts `launch` under the wrapper in `dir` (which must exist), moved into the cgroup
/// whose `cgroup.procs` is given, and records it.
pub fn spawn(
    dir: &Path,
    launch: &Launch,
    cgroup_procs: Option<&Path>,
) -> Result<Record, ProcessError> {
    let log_file = log_path(dir, &launch.container);
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_file)
        .map_err(at("opening", &log_file))?;
    let stderr = log.try_clone().map_err(at("opening", &log_file))?;
    let exit_file = exit_path(dir, &launch.container);
    match fs::remove_file(&exit_file) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(at("removing", &exit_file)(e)),
        _ => {}
    }
    let mut cmd = match setsid() {
        Some(setsid) => {
            let mut cmd = Command::new(setsid);
            cmd.arg("/bin/sh");
            cmd
        }
        None => {
            let mut cmd = Command::new("/bin/sh");
            detach(&mut cmd);
            cmd
        }
    };
    cmd.arg("-c")
        .arg(WRAPPER)
        .arg("kubevirt-rs-pod")
        .arg(&exit_file)
        .arg(cgroup_procs.map(Path::as_os_str).unwrap_or_default())
        .arg(&launch.program)
        .args(&launch.args)
        .env_clear()
        .envs(launch.env.iter().map(|(k, v)| (k, v)))
        .current_dir(&launch.working_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(stderr);
    let child = cmd.spawn().map_err(at("starting", &launch.program))?;
    let pid = child.id() as i32;
    // std's Child neither kills nor waits when dropped: the wrapper is reaped by `poll`.
    drop(child);
    let record = Record {
        pid,
        start_ticks: stat(pid).map(|s| s.0).unwrap_or_default(),
        started_at: now(),
    };
    let file = pid_path(dir, &launch.container);
    let tmp = file.with_extension("pid.tmp");
    let line = format!(
        "{} {} {}\n",
        record.pid, record.start_ticks, record.started_at
    );
    fs::write(&tmp, line).map_err(at("writing", &tmp))?;
    fs::rename(&tmp, &file).map_err(at("writing", &file))?;
    Ok(record)
}

/// util-linux's `setsid`, from the usual system directories, if there.
fn setsid() -> Option<&'static Path> {
    static FOUND: OnceLock<Option<PathBuf>> = OnceLock::new();
    FOUND
        .get_or_init(|| {
            ["/usr/bin/setsid", "/bin/setsid"]
                .into_iter()
                .map(PathBuf::from)
                .find(|p| p.is_file())
        })
        .as_deref()
}

/// A new session in the child between fork and exec, for machines without `setsid`.
#[allow(unsafe_code)]
fn detach(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and makes one
    // async-signal-safe system call; it allocates nothing and takes no locks.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The record of `container` in `dir`, if it was started.
pub fn record(dir: &Path, container: &str) -> Option<Record> {
    let text = fs::read_to_string(pid_path(dir, container)).ok()?;
    let mut words = text.split_whitespace().map(str::parse::<i64>);
    let (Some(Ok(pid)), Some(Ok(ticks)), Some(Ok(started_at))) =
        (words.next(), words.next(), words.next())
    else {
        return None;
    };
    Some(Record {
        pid: i32::try_from(pid).ok()?,
        start_ticks: u64::try_from(ticks).ok()?,
        started_at,
    })
}

/// A process as `/proc/<pid>/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// Field 4.
    pub ppid: i32,
    /// Start time in clock ticks after boot (field 22): tells a reused pid apart.
    pub start_ticks: u64,
    /// Field 3 (`Z` for a zombie).
    pub state: char,
}

/// What `/proc/<pid>/stat` says of `pid`, if it exists.
pub fn proc_stat(pid: i32) -> Option<Stat> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold anything.
    let fields: Vec<&str> = text[text.rfind(')')? + 1..].split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        ppid: fields.get(1)?.parse().ok()?,
        start_ticks: fields.get(19)?.parse().ok()?,
    })
}

/// Start time (field 22) and state (field 3) from `/proc/<pid>/stat`.
fn stat(pid: i32) -> Option<(u64, char)> {
    proc_stat(pid).map(|s| (s.start_ticks, s.state))
}

/// Whether the recorded wrapper still runs (a zombie does not), without reaping it.
pub fn alive(record: &Record) -> bool {
    stat(record.pid).is_some_and(|(ticks, state)| ticks == record.start_ticks && state != 'Z')
}

/// Whether the container still runs and, if not, how it ended. Reaps the wrapper when it
/// is this process's child: call it until it reports the exit, then no more.
pub fn poll(dir: &Path, container: &str, record: &Record) -> State {
    let reaped = match waitpid(Pid::from_raw(record.pid), Some(WaitPidFlag::WNOHANG)) {
        Ok(WaitStatus::StillAlive) => return State::Running,
        Ok(WaitStatus::Exited(_, code)) => Some(code),
        Ok(WaitStatus::Signaled(_, signal, _)) => Some(128 + signal as i32),
        Ok(_) => return State::Running,
        Err(Errno::ECHILD) | Err(_) => None,
    };
    if reaped.is_none() && alive(record) {
        return State::Running;
    }
    let file = exit_path(dir, container);
    let recorded = fs::read_to_string(&file)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok());
    let finished_at = fs::metadata(&file)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or_else(now, |d| d.as_secs() as i64);
    State::Exited(Exit {
        code: recorded.or(reaped).unwrap_or(KILLED),
        finished_at,
        recorded: recorded.is_some(),
    })
}

/// Sends `signal` to the container: to its first process when a shim recorded one in
/// `<container>.init` (an OCI container, which leads its own session), else to the
/// wrapper's process group; while it runs, never to a pid that was reused.
pub fn signal(dir: &Path, container: &str, record: &Record, signal: Signal) {
    if let Some(init) = init_record(dir, container)
        && alive(&init)
    {
        let _ = nix::sys::signal::kill(Pid::from_raw(init.pid), signal);
        return;
    }
    if alive(record) {
        let _ = killpg(Pid::from_raw(record.pid), signal);
    }
}

/// The container's first process as the shim recorded it: pid and start ticks.
fn init_record(dir: &Path, container: &str) -> Option<Record> {
    let text = fs::read_to_string(crate::runtime::init_path(dir, container)).ok()?;
    let mut words = text.split_whitespace();
    Some(Record {
        pid: words.next()?.parse().ok()?,
        start_ticks: words.next()?.parse().ok()?,
        started_at: 0,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::{Duration, Instant};

    use super::*;

    fn sh(dir: &Path, name: &str, script: &str) -> Record {
        let launch = Launch {
            container: name.to_owned(),
            image: "test".to_owned(),
            program: "/bin/sh".into(),
            args: vec!["-c".to_owned(), script.to_owned()],
            env: vec![("GREETING".to_owned(), "hi".to_owned())],
            working_dir: "/".into(),
        };
        spawn(dir, &launch, None).unwrap()
    }

    fn wait_exit(dir: &Path, name: &str, r: &Record) -> Exit {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let State::Exited(e) = poll(dir, name, r) {
                return e;
            }
            assert!(Instant::now() < deadline, "{name} did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn the_exit_code_and_output_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let r = sh(dir.path(), "c", "echo $GREETING; echo oops >&2; exit 3");
        assert_eq!(record(dir.path(), "c"), Some(r));
        let e = wait_exit(dir.path(), "c", &r);
        assert_eq!((e.code, e.recorded), (3, true));
        let log = fs::read_to_string(log_path(dir.path(), "c")).unwrap();
        assert_eq!(log, "hi\noops\n");
        assert!(!alive(&r));
    }

    #[test]
    fn sigterm_reaches_the_program_and_sigkill_ends_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let r = sh(
            dir.path(),
            "t",
            "trap 'exit 4' TERM; while :; do sleep 0.05; done",
        );
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(poll(dir.path(), "t", &r), State::Running);
        signal(dir.path(), "t", &r, Signal::SIGTERM);
        assert_eq!(wait_exit(dir.path(), "t", &r).code, 4);

        let r = sh(
            dir.path(),
            "k",
            "trap '' TERM; while :; do sleep 0.05; done",
        );
        std::thread::sleep(Duration::from_millis(200));
        signal(dir.path(), "k", &r, Signal::SIGTERM);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(poll(dir.path(), "k", &r), State::Running);
        signal(dir.path(), "k", &r, Signal::SIGKILL);
        let e = wait_exit(dir.path(), "k", &r);
        assert_eq!((e.code, e.recorded), (137, false));
    }

    #[test]
    fn the_wrapper_leads_its_own_session_and_joins_the_cgroup() {
        let dir = tempfile::tempdir().unwrap();
        // A plain file stands in for `cgroup.procs`: the wrapper writes "0" to it.
        let procs = dir.path().join("cgroup.procs");
        fs::write(&procs, "").unwrap();
        let launch = Launch {
            container: "s".to_owned(),
            image: "test".to_owned(),
            program: "/bin/sh".into(),
            args: vec!["-c".to_owned(), "cat /proc/$PPID/stat".to_owned()],
            env: vec![],
            working_dir: "/".into(),
        };
        let r = spawn(dir.path(), &launch, Some(&procs)).unwrap();
        assert_eq!(wait_exit(dir.path(), "s", &r).code, 0);
        assert_eq!(fs::read_to_string(&procs).unwrap(), "0\n");
        // The wrapper's /proc stat, as its child saw it: pid, (comm), state, ppid, pgrp,
        // session.
        let stat = fs::read_to_string(log_path(dir.path(), "s")).unwrap();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .collect();
        let (pgrp, session) = (fields[2], fields[3]);
        assert_eq!((pgrp, session), (&*r.pid.to_string(), &*r.pid.to_string()));
    }

    #[test]
    fn a_reused_pid_is_not_the_recorded_process() {
        let me = Record {
            pid: std::process::id() as i32,
            start_ticks: stat(std::process::id() as i32).unwrap().0,
            started_at: 0,
        };
        assert!(alive(&me));
        assert!(!alive(&Record {
            start_ticks: me.start_ticks + 1,
            ..me
        }));
    }
}
