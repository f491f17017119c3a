//! The `kubevirt-rs server` process under test.
//!
//! A start, step by step:
//! 1. Remove the kubeconfig an earlier start left in the data directory: it names that
//!    start's port.
//! 2. Spawn `kubevirt-rs server --data-dir DIR --listen 127.0.0.1:0`.
//! 3. Poll for `DIR/kubeconfig` (written atomically for the bound port once the store is
//!    open) and read the URL, CA and token from it.
//! 4. Poll `GET /readyz` over HTTPS until it answers 200. Start-up time runs from the
//!    spawn to that answer, so it includes the client's kubeconfig parsing and handshake.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use reqwest::Method;

use super::client::Endpoint;
use super::ms;
use super::process::Process;

/// A start that takes longer than this on a loaded machine is a failure.
const START_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(2);

/// A running, ready server; killed when dropped.
#[derive(Debug)]
pub struct ServerProcess {
    pub process: Process,
    pub endpoint: Endpoint,
}

impl ServerProcess {
    /// Starts `bin` on `data` (see the module docs) and returns it once ready, with the
    /// time from spawn to the first 200 from /readyz.
    pub async fn start(bin: &Path, data: &Path, log: &Path) -> anyhow::Result<(Self, Duration)> {
        Self::start_with(bin, data, log, |_| {}).await
    }

    /// [`ServerProcess::start`] with further arguments or environment set by `configure`.
    pub async fn start_with(
        bin: &Path,
        data: &Path,
        log: &Path,
        configure: impl FnOnce(&mut Command),
    ) -> anyhow::Result<(Self, Duration)> {
        let kubeconfig = data.join("kubeconfig");
        match std::fs::remove_file(&kubeconfig) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(e).with_context(|| format!("removing {}", kubeconfig.display()));
            }
            _ => {}
        }
        let mut command = Command::new(bin);
        command
            .args(["server", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .env_remove("RUST_LOG")
            .env_remove("KUBEVIRT_RS_LOG");
        configure(&mut command);
        let mut process = Process::spawn(command, log).context("kubevirt-rs server")?;
        let endpoint = loop {
            process
                .check_starting(START_DEADLINE)
                .context("kubevirt-rs server")?;
            if kubeconfig.exists() {
                break Endpoint::from_kubeconfig(&kubeconfig)?;
            }
            tokio::time::sleep(POLL).await;
        };
        let probe = endpoint.client()?;
        loop {
            process
                .check_starting(START_DEADLINE)
                .context("kubevirt-rs server")?;
            if probe.send(Method::GET, "/readyz", None).await.is_ok() {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let ready_after = process.age();
        Ok((Self { process, endpoint }, ready_after))
    }
}

/// Start-up times in ms: `runs` starts on fresh data directories under `scratch`, then
/// `runs` on one directory that a first (untimed) start already populated.
pub async fn startup_times(
    bin: &Path,
    scratch: &Path,
    runs: usize,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let log = scratch.join("startup.log");
    let mut fresh = Vec::new();
    for i in 0..runs {
        let data = scratch.join(format!("fresh-{i}"));
        let (server, took) = ServerProcess::start(bin, &data, &log).await?;
        fresh.push(ms(took));
        server.process.stop().await?;
    }
    let data = scratch.join("existing");
    let (server, _) = ServerProcess::start(bin, &data, &log).await?;
    server.process.stop().await?;
    let mut existing = Vec::new();
    for _ in 0..runs {
        let (server, took) = ServerProcess::start(bin, &data, &log).await?;
        existing.push(ms(took));
        server.process.stop().await?;
    }
    Ok((fresh, existing))
}
