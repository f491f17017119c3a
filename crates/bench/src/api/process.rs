//! Child processes under test (the server, etcd): spawned with their output in a log file,
//! stopped with SIGTERM, killed when dropped so that no error path leaves one running.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long a SIGTERM'd process may take to exit before it is killed.
const STOP_DEADLINE: Duration = Duration::from_secs(10);
/// Log lines quoted in an error.
const TAIL: usize = 20;

/// A running child process; killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct Process {
    child: Child,
    log: PathBuf,
    started: Instant,
}

impl Process {
    /// Spawns `command` with stdout and stderr going to `log` (truncated).
    pub fn spawn(mut command: Command, log: &Path) -> anyhow::Result<Self> {
        let out = File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let started = Instant::now();
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {:?}", command.get_program()))?;
        Ok(Self {
            child,
            log: log.to_owned(),
            started,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Time since the spawn.
    pub fn age(&self) -> Duration {
        self.started.elapsed()
    }

    /// Fails, quoting the log, if the process has exited or is older than `deadline`.
    pub fn check_starting(&mut self, deadline: Duration) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("exited while starting ({status}):\n{}", self.tail());
        }
        if self.age() > deadline {
            bail!("not ready after {deadline:?}:\n{}", self.tail());
        }
        Ok(())
    }

    /// SIGTERM and wait; a process still there after [`STOP_DEADLINE`] is killed, and
    /// that is an error, as is one that had already exited.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("exited on its own ({status}):\n{}", self.tail());
        }
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).context("SIGTERM")?;
        let sent = Instant::now();
        while sent.elapsed() < STOP_DEADLINE {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!(
            "still running {STOP_DEADLINE:?} after SIGTERM:\n{}",
            self.tail()
        )
    }

    /// The last lines of the log.
    fn tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(TAIL)..].join("\n")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
