//! The QEMU process of one VMI and its lifecycle.
//!
//! 1. Spawn QEMU (vCPUs stopped by `-S`) in its own process group, so a terminal's Ctrl-C
//!    reaches only the launcher, with `PR_SET_PDEATHSIG` so QEMU never outlives it.
//! 2. Wait for the QMP socket, connect, and follow QMP events into a [`DomainState`].
//! 3. `cont` unless the VMI starts paused.
//! 4. Stop: ACPI power button, wait out the grace period, then `quit`, then SIGKILL.
//! 5. When QEMU exits, the state becomes final: the guest powered itself off, was stopped,
//!    or crashed.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use qmp::Qmp;
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tracing::{debug, info, warn};

#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("start {binary}")]
    Spawn {
        binary: String,
        source: std::io::Error,
    },
    #[error("qemu exited during start-up: {message}")]
    EarlyExit { message: String },
    #[error("qemu did not open its monitor within {0:?}")]
    MonitorTimeout(Duration),
    #[error(transparent)]
    Qmp(#[from] qmp::QmpError),
    #[error("qemu refused: {0}")]
    Refused(String),
}

/// What the guest is doing, as the handler reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainState {
    /// QEMU runs, vCPUs not yet started.
    Created,
    Running,
    Paused {
        reason: String,
    },
    /// QEMU has exited; nothing more will change.
    Exited(Exit),
}

/// How QEMU ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// The guest powered itself off (the VMI Succeeded).
    GuestShutdown,
    /// We stopped it: ACPI shutdown, `quit`, or a kill after the grace period.
    Stopped { forced: bool },
    /// QEMU died or the guest panicked (the VMI Failed).
    Crashed { message: String },
}

/// A running QEMU.
#[derive(Debug)]
pub struct Domain {
    qmp: Qmp,
    state: watch::Receiver<DomainState>,
    stop_requested: watch::Sender<Option<bool>>,
    pid: Option<u32>,
}

impl Domain {
    /// Starts QEMU with `args`; returns once QMP answers, before the guest runs.
    pub async fn spawn(
        binary: &Path,
        args: &[String],
        qmp_socket: &Path,
        log: &Path,
    ) -> Result<Self, DomainError> {
        let stderr = std::fs::File::create(log).map_err(|source| DomainError::Spawn {
            binary: log.display().to_string(),
            source,
        })?;
        let mut cmd = Command::new(binary);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(stderr))
            .process_group(0)
            .kill_on_drop(true);
        die_with_parent(&mut cmd);
        let mut child = cmd.spawn().map_err(|source| DomainError::Spawn {
            binary: binary.display().to_string(),
            source,
        })?;
        let pid = child.id();
        debug!(pid, "qemu spawned");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let qmp = loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                return Err(DomainError::EarlyExit {
                    message: last_error_line(log).unwrap_or_else(|| status.to_string()),
                });
            }
            if qmp_socket.exists()
                && let Ok((qmp, events)) = Qmp::connect(qmp_socket, Duration::from_secs(5)).await
            {
                let (state_tx, state) = watch::channel(DomainState::Created);
                let (stop_requested, stop_rx) = watch::channel(None);
                tokio::spawn(follow(child, events, state_tx, stop_rx, log.to_path_buf()));
                break Self {
                    qmp,
                    state,
                    stop_requested,
                    pid,
                };
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.start_kill();
                return Err(DomainError::MonitorTimeout(Duration::from_secs(20)));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        Ok(qmp)
    }

    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    pub fn qmp(&self) -> &Qmp {
        &self.qmp
    }

    /// The current state, and a receiver for changes.
    pub fn state(&self) -> watch::Receiver<DomainState> {
        self.state.clone()
    }

    pub async fn start_vcpus(&self) -> Result<(), DomainError> {
        Ok(self.qmp.cont().await?)
    }

    pub async fn pause(&self) -> Result<(), DomainError> {
        Ok(self.qmp.stop().await?)
    }

    pub async fn unpause(&self) -> Result<(), DomainError> {
        Ok(self.qmp.cont().await?)
    }

    pub async fn reset(&self) -> Result<(), DomainError> {
        Ok(self.qmp.system_reset().await?)
    }

    /// Forwards `host` (TCP, on this machine) to `guest` through the user-mode network
    /// `netdev` (HMP `hostfwd_add`: QMP has no command for it).
    pub async fn forward_port(
        &self,
        netdev: &str,
        host: std::net::SocketAddrV4,
        guest: std::net::SocketAddrV4,
    ) -> Result<(), DomainError> {
        let rule = format!(
            "tcp:{}:{}-{}:{}",
            host.ip(),
            host.port(),
            guest.ip(),
            guest.port()
        );
        self.hostfwd(netdev, &rule).await
    }

    /// Adds the user-mode network forward `rule` (`proto:hostaddr:hostport-guestaddr:guestport`)
    /// to `netdev`.
    pub async fn hostfwd(&self, netdev: &str, rule: &str) -> Result<(), DomainError> {
        let command = format!("hostfwd_add {netdev} {rule}");
        let args = serde_json::json!({"command-line": command});
        let out = self
            .qmp
            .execute("human-monitor-command", Some(args))
            .await?;
        match out.as_str().map(str::trim) {
            Some("") | None => Ok(()),
            Some(message) => Err(DomainError::Refused(message.to_owned())),
        }
    }

    /// The user-mode networks' connections, as HMP `info usernet` lists them.
    pub async fn usernet(&self) -> Result<String, DomainError> {
        let args = serde_json::json!({"command-line": "info usernet"});
        let out = self
            .qmp
            .execute("human-monitor-command", Some(args))
            .await?;
        Ok(out.as_str().unwrap_or_default().to_owned())
    }

    /// Writes the display's current picture to `path` as PNG (QMP `screendump`).
    pub async fn screenshot(&self, path: &std::path::Path) -> Result<(), DomainError> {
        let args = serde_json::json!({"filename": path, "format": "png"});
        self.qmp.execute("screendump", Some(args)).await?;
        Ok(())
    }

    /// Presses the ACPI power button, waits up to `grace` for the guest to power off, then
    /// ends QEMU. Returns how it ended.
    pub async fn shutdown(&self, grace: Duration) -> Exit {
        let _ = self.stop_requested.send(Some(false));
        if !grace.is_zero() {
            if let Err(e) = self.qmp.system_powerdown().await {
                debug!(error = %e, "system_powerdown failed");
            }
            if let Some(exit) = self.wait_for_exit(grace).await {
                return exit;
            }
            info!(?grace, "guest did not power off within its grace period");
        }
        let _ = self.stop_requested.send(Some(true));
        let _ = self.qmp.quit().await;
        if let Some(exit) = self.wait_for_exit(Duration::from_secs(5)).await {
            return exit;
        }
        self.kill();
        self.wait_for_exit(Duration::from_secs(5))
            .await
            .unwrap_or(Exit::Stopped { forced: true })
    }

    /// Sends SIGKILL to QEMU.
    pub fn kill(&self) {
        if let Some(pid) = self.pid.and_then(|p| i32::try_from(p).ok()) {
            let _ = self.stop_requested.send(Some(true));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    /// Waits until QEMU has exited, or `timeout` passed.
    pub async fn wait_for_exit(&self, timeout: Duration) -> Option<Exit> {
        let mut state = self.state.clone();
        let wait = state.wait_for(|s| matches!(s, DomainState::Exited(_)));
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) => match &*s {
                DomainState::Exited(exit) => Some(exit.clone()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Waits until QEMU has exited.
    pub async fn wait(&self) -> Exit {
        loop {
            if let Some(exit) = self.wait_for_exit(Duration::from_secs(3600)).await {
                return exit;
            }
        }
    }
}

/// Follows QMP events and the process until it exits.
async fn follow(
    mut child: Child,
    mut events: qmp::EventStream,
    state: watch::Sender<DomainState>,
    stop_requested: watch::Receiver<Option<bool>>,
    log: PathBuf,
) {
    let mut guest_shutdown = false;
    let mut panicked = None;
    let status = loop {
        tokio::select! {
            status = child.wait() => break status,
            event = events.recv() => {
                let Some(event) = event else {
                    break child.wait().await;
                };
                debug!(event = event.event, data = %event.data, "qmp event");
                match event.event.as_str() {
                    "RESUME" => { state.send_replace(DomainState::Running); }
                    "STOP" => {
                        let reason = if guest_shutdown { "shutdown" } else { "user" };
                        state.send_replace(DomainState::Paused { reason: reason.into() });
                    }
                    "SHUTDOWN" => guest_shutdown = event.data["guest"] == true,
                    "GUEST_PANICKED" => panicked = Some(format!("guest panicked: {}", event.data["info"])),
                    _ => {}
                }
            }
        }
    };
    let stopped_by_us = *stop_requested.borrow();
    let exit = if let Some(message) = panicked {
        Exit::Crashed { message }
    } else if let Some(forced) = stopped_by_us {
        Exit::Stopped { forced }
    } else {
        match status {
            Ok(s) if s.success() && guest_shutdown => Exit::GuestShutdown,
            Ok(s) if s.success() => Exit::Stopped { forced: false },
            Ok(s) => Exit::Crashed {
                message: last_error_line(&log).unwrap_or_else(|| format!("qemu {s}")),
            },
            Err(e) => Exit::Crashed {
                message: e.to_string(),
            },
        }
    };
    if let Exit::Crashed { message } = &exit {
        warn!(message, "qemu ended");
    }
    state.send_replace(DomainState::Exited(exit));
}

fn last_error_line(log: &Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    let line = text.lines().rev().find(|l| !l.trim().is_empty())?;
    // Drop QEMU's `-msg timestamp=on` prefix and program name.
    let line = line
        .split_once(" qemu-system-x86_64: ")
        .map_or(line, |(_, rest)| rest);
    Some(line.trim().to_owned())
}

/// Asks the kernel to kill QEMU when the launcher's thread that spawned it dies.
#[allow(unsafe_code)]
fn die_with_parent(cmd: &mut Command) {
    // SAFETY: the closure runs in the forked child before exec and only calls prctl(2),
    // which is async-signal-safe; it touches no memory shared with the parent.
    unsafe {
        cmd.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                .map_err(std::io::Error::from)
        });
    }
}

impl Drop for Domain {
    /// No QEMU outlives the handle that owns it.
    fn drop(&mut self) {
        if !matches!(*self.state.borrow(), DomainState::Exited(_)) {
            self.kill();
        }
    }
}
