//! The VMI's `livenessProbe` and `readinessProbe`, run by the launcher against its own
//! guest, with Kubernetes' timing rules.
//!
//! Upstream renders these probes onto the launcher pod and lets the kubelet run them: TCP
//! and HTTP against the pod's address (which the pod network forwards to the guest), exec
//! and `guestAgentPing` through `virt-probe` and the guest agent. Here the launcher runs all
//! four itself, since it owns both paths into the guest:
//! - `tcpSocket` and `httpGet` go through a user-mode network forward of their own (one
//!   host port per probe and guest port, apart from `virtctl port-forward`'s), on a fresh
//!   connection each time. User-mode networking accepts the host side of every connection
//!   at once, so a TCP probe counts as passed only once QEMU lists the guest side as
//!   `ESTABLISHED` (HMP `info usernet`); a port the guest refuses closes the connection,
//!   and a guest that does not answer times out. HTTP follows the kubelet: 200-399
//!   passes, redirects are followed on the same host (up to 10) and a redirect elsewhere
//!   passes as it is; `host` names the `Host` header (the connection always goes to the
//!   guest), and `httpHeaders` override the defaults.
//! - `exec` runs the command through the agent (`guest-exec`) and passes on exit code 0.
//! - `guestAgentPing` passes when the agent answers `guest-ping`.
//!
//! Readiness starts failed and flips after `successThreshold` passes in a row, back after
//! `failureThreshold` failures in a row; its first failure and every flip are reported
//! (with the failure as the reason), nothing else, so a steady guest causes no writes.
//! Liveness starts passed; `failureThreshold` failures in a row end the guest, as the
//! kubelet's restart of the container does upstream. Probes run while the guest runs (not
//! while it is paused), first after `initialDelaySeconds`, then on a fixed tick of
//! `periodSeconds`, each within `timeoutSeconds`.

use std::net::SocketAddrV4;
use std::time::Duration;

use api::v1::{Probe as ProbeSpec, VirtualMachineInstance};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use tokio::net::TcpStream;
use tracing::{info, warn};

/// Why a probe's spec cannot run (validation refuses these first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    #[error("port {0} is not between 1 and 65535")]
    PortRange(i32),
    #[error("no interface port is named {0:?}")]
    PortName(String),
    #[error("a probe needs exactly one of tcpSocket, httpGet, exec and guestAgentPing")]
    Actions,
    #[error("exec needs a command")]
    NoCommand,
}

/// Why one run of a probe failed; the message is what the Ready condition shows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("{check}: no answer within {timeout:?}")]
    Timeout { check: String, timeout: Duration },
    #[error("port {port}: connection refused")]
    Refused { port: u16 },
    #[error("port {port}: {message}")]
    Connect { port: u16, message: String },
    #[error("GET {path} on port {port}: HTTP {status}")]
    Status {
        path: String,
        port: u16,
        status: u16,
    },
    #[error("GET {path} on port {port}: {message}")]
    Request {
        path: String,
        port: u16,
        message: String,
    },
    #[error("{command} exited with {code}")]
    Exit { command: String, code: i64 },
    #[error("the guest agent does not answer")]
    AgentSilent,
    #[error("{0}")]
    Header(#[from] HeaderError),
    /// The launcher could not reach the guest (no pod network, QEMU or agent gone).
    #[error("{0}")]
    Guest(String),
}

/// A header a probe cannot send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("host {0:?} is not a valid Host header")]
    Host(String),
    #[error("{0:?} is not a valid header name")]
    Name(String),
    #[error("the value of header {0} is not valid")]
    Value(String),
}

/// What a probe checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    Tcp {
        port: u16,
    },
    Http {
        port: u16,
        path: String,
        https: bool,
        host: Option<String>,
        headers: Vec<(String, String)>,
    },
    Exec {
        command: Vec<String>,
    },
    AgentPing,
}

impl std::fmt::Display for Check {
    /// What the probe checks, as its failures begin.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp { port } => write!(f, "port {port}"),
            Self::Http { port, path, .. } => write!(f, "GET {path} on port {port}"),
            Self::Exec { command } => write!(f, "{}", command.join(" ")),
            Self::AgentPing => write!(f, "guest-ping"),
        }
    }
}

/// A probe with its timing, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probe {
    pub check: Check,
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

fn seconds(v: Option<i32>, default: u64) -> Duration {
    Duration::from_secs(v.filter(|s| *s > 0).map_or(default, |s| s as u64))
}

fn count(v: Option<i32>, default: u32) -> u32 {
    v.filter(|n| *n > 0).map_or(default, |n| n as u32)
}

/// A probe's port: a number, or the name of a port on one of the VMI's interfaces.
fn port(vmi: &VirtualMachineInstance, port: &IntOrString) -> Result<u16, SpecError> {
    match port {
        IntOrString::Int(n) => u16::try_from(*n)
            .ok()
            .filter(|p| *p > 0)
            .ok_or(SpecError::PortRange(*n)),
        IntOrString::String(name) => vmi
            .spec
            .domain
            .devices
            .interfaces
            .iter()
            .flat_map(|i| &i.ports)
            .find(|p| p.name.as_deref() == Some(name.as_str()))
            .and_then(|p| u16::try_from(p.port).ok())
            .ok_or_else(|| SpecError::PortName(name.clone())),
    }
}

impl Probe {
    /// The probe `spec` asks for; an error names what is wrong (validation refuses such
    /// specs first, so this guards only against a launcher handed one anyway).
    pub fn from_spec(vmi: &VirtualMachineInstance, spec: &ProbeSpec) -> Result<Self, SpecError> {
        let check = match (
            &spec.tcp_socket,
            &spec.http_get,
            &spec.exec,
            &spec.guest_agent_ping,
        ) {
            (Some(tcp), None, None, None) => Check::Tcp {
                port: port(vmi, &tcp.port)?,
            },
            (None, Some(http), None, None) => Check::Http {
                port: port(vmi, &http.port)?,
                path: match http.path.as_deref() {
                    None | Some("") => "/".to_owned(),
                    Some(p) if p.starts_with('/') => p.to_owned(),
                    Some(p) => format!("/{p}"),
                },
                https: http.scheme.as_deref() == Some("HTTPS"),
                host: http.host.clone().filter(|h| !h.is_empty()),
                headers: http
                    .http_headers
                    .iter()
                    .flatten()
                    .map(|h| (h.name.clone(), h.value.clone()))
                    .collect(),
            },
            (None, None, Some(exec), None) => {
                let command = exec.command.clone().unwrap_or_default();
                if command.is_empty() {
                    return Err(SpecError::NoCommand);
                }
                Check::Exec { command }
            }
            (None, None, None, Some(_)) => Check::AgentPing,
            _ => return Err(SpecError::Actions),
        };
        Ok(Self {
            check,
            initial_delay: Duration::from_secs(
                spec.initial_delay_seconds.filter(|s| *s > 0).unwrap_or(0) as u64,
            ),
            period: seconds(spec.period_seconds, 10),
            timeout: seconds(spec.timeout_seconds, 1),
            success_threshold: count(spec.success_threshold, 1),
            failure_threshold: count(spec.failure_threshold, 3),
        })
    }
}

/// Consecutive results and the verdict they add up to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    pub passing: bool,
    successes: u32,
    failures: u32,
    success_threshold: u32,
    failure_threshold: u32,
}

impl Tally {
    /// Readiness starts failed, liveness passed.
    pub fn new(probe: &Probe, passing: bool) -> Self {
        Self {
            passing,
            successes: 0,
            failures: 0,
            success_threshold: probe.success_threshold,
            failure_threshold: probe.failure_threshold,
        }
    }

    /// Counts one result; true when the verdict changed.
    pub fn record(&mut self, passed: bool) -> bool {
        if passed {
            self.successes += 1;
            self.failures = 0;
        } else {
            self.failures += 1;
            self.successes = 0;
        }
        let before = self.passing;
        if !self.passing && self.successes >= self.success_threshold {
            self.passing = true;
        } else if self.passing && self.failures >= self.failure_threshold {
            self.passing = false;
        }
        before != self.passing
    }
}

/// The state QEMU's user-mode network lists for the connection that arrived on host port
/// `host_port` (HMP `info usernet`), e.g. `SYN_SENT` or `ESTABLISHED`; `None` when there
/// is none (not accepted yet, or closed). The listening forward itself is left out.
pub fn connection_state(usernet: &str, host_port: u16) -> Option<String> {
    let port = host_port.to_string();
    usernet.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let state = fields.first()?.strip_prefix("TCP[")?.strip_suffix(']')?;
        let ours = fields.get(2) == Some(&"127.0.0.1") && fields.get(3) == Some(&port.as_str());
        (state != "HOST_FORWARD" && ours).then(|| state.to_owned())
    })
}

/// An HTTP status a probe passes on, as the kubelet judges it.
pub fn http_passes(status: u16) -> bool {
    (200..400).contains(&status)
}

/// Which verdict a probe feeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Readiness,
    Liveness,
}

/// What the guest is doing, as far as probing goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    /// Not running yet, or paused: probes wait.
    Waiting,
    Running,
    /// Ended for good: probes stop.
    Ended,
}

/// The launcher's ways into its guest.
pub trait Guest {
    fn activity(&self) -> Activity;
    /// Waits until the guest first runs; false when it ended before.
    fn started(&self) -> impl Future<Output = bool> + Send;
    /// A host address forwarding to the guest's TCP `port`, used by `role`'s probe only.
    fn forward(
        &self,
        role: Role,
        port: u16,
    ) -> impl Future<Output = Result<SocketAddrV4, String>> + Send;
    /// QEMU's user-mode network connections (HMP `info usernet`).
    fn usernet(&self) -> impl Future<Output = Result<String, String>> + Send;
    /// Runs `command` through the guest agent; its exit code.
    fn exec(&self, command: &[String]) -> impl Future<Output = Result<i64, String>> + Send;
    /// Whether the guest agent answers.
    fn ping(&self, timeout: Duration) -> impl Future<Output = bool> + Send;
}

/// Runs `probe` for `role` until the guest ends. Readiness changes go to `report`
/// (`ready`, why not). Returns why the guest failed its liveness probe, or `None` when it
/// ended otherwise.
pub async fn run(
    guest: &impl Guest,
    probe: &Probe,
    role: Role,
    report: impl Fn(bool, String),
) -> Option<String> {
    let mut tally = Tally::new(probe, role == Role::Liveness);
    let http = http_client(probe.timeout);
    let mut first_failure = true;
    // The initial delay counts from the guest's start.
    if !guest.started().await {
        return None;
    }
    tokio::time::sleep(probe.initial_delay).await;
    let mut tick = tokio::time::interval(probe.period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match guest.activity() {
            Activity::Ended => return None,
            Activity::Waiting => {}
            Activity::Running => {
                let result = tokio::time::timeout(
                    probe.timeout,
                    check(guest, role, &probe.check, &http, probe.timeout),
                )
                .await
                .unwrap_or_else(|_| {
                    Err(Failure::Timeout {
                        check: probe.check.to_string(),
                        timeout: probe.timeout,
                    })
                });
                let passed = result.is_ok();
                let why = result.err().map(|e| e.to_string()).unwrap_or_default();
                let changed = tally.record(passed);
                if changed {
                    info!(?role, passing = tally.passing, why, "probe verdict changed");
                }
                let first = !passed && std::mem::take(&mut first_failure);
                if role == Role::Readiness && (changed || (first && !tally.passing)) {
                    report(tally.passing, why.clone());
                }
                if role == Role::Liveness && !tally.passing {
                    return Some(format!(
                        "the liveness probe failed {} times in a row: {why}",
                        probe.failure_threshold
                    ));
                }
            }
        }
    }
}

fn http_client(timeout: Duration) -> Option<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    // As the kubelet: a fresh connection each time, certificates not checked, redirects
    // followed on the same host only (one to elsewhere is the answer, and passes).
    let redirects = reqwest::redirect::Policy::custom(|attempt| {
        let same_host = attempt.previous().first().is_some_and(|first| {
            first.host_str() == attempt.url().host_str() && first.port() == attempt.url().port()
        });
        if attempt.previous().len() > 10 {
            attempt.error("stopped after 10 redirects")
        } else if same_host {
            attempt.follow()
        } else {
            attempt.stop()
        }
    });
    reqwest::Client::builder()
        .redirect(redirects)
        .pool_max_idle_per_host(0)
        .tls_danger_accept_invalid_certs(true)
        .timeout(timeout)
        .build()
        .map_err(|e| warn!(error = %e, "no HTTP client for probes"))
        .ok()
}

/// One probe run.
async fn check(
    guest: &impl Guest,
    role: Role,
    check: &Check,
    http: &Option<reqwest::Client>,
    timeout: Duration,
) -> Result<(), Failure> {
    match check {
        Check::Tcp { port } => tcp(guest, role, *port).await,
        Check::Http {
            port,
            path,
            https,
            host,
            headers,
        } => {
            let address = guest.forward(role, *port).await.map_err(Failure::Guest)?;
            let scheme = if *https { "https" } else { "http" };
            let client = http
                .as_ref()
                .ok_or_else(|| Failure::Guest("no HTTP client".into()))?;
            let response = client
                .get(format!("{scheme}://{address}{path}"))
                .headers(http_headers(host.as_deref(), *port, headers)?)
                .send()
                .await
                .map_err(|e| Failure::Request {
                    path: path.clone(),
                    port: *port,
                    message: crate::error_chain(&e),
                })?;
            let status = response.status().as_u16();
            if http_passes(status) {
                Ok(())
            } else {
                Err(Failure::Status {
                    path: path.clone(),
                    port: *port,
                    status,
                })
            }
        }
        Check::Exec { command } => match guest.exec(command).await.map_err(Failure::Guest)? {
            0 => Ok(()),
            code => Err(Failure::Exit {
                command: command.join(" "),
                code,
            }),
        },
        Check::AgentPing => {
            if guest.ping(timeout).await {
                Ok(())
            } else {
                Err(Failure::AgentSilent)
            }
        }
    }
}

/// The headers of an HTTP probe: the kubelet's defaults, `Host` from `host` (with the
/// port), then the probe's own, each replacing a default of the same name.
pub fn http_headers(
    host: Option<&str>,
    port: u16,
    headers: &[(String, String)],
) -> Result<reqwest::header::HeaderMap, HeaderError> {
    use reqwest::header::{ACCEPT, HOST, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
    let mut map = HeaderMap::new();
    map.insert(USER_AGENT, HeaderValue::from_static("kube-probe/1.32"));
    map.insert(ACCEPT, HeaderValue::from_static("*/*"));
    if let Some(host) = host {
        let value = HeaderValue::from_str(&format!("{host}:{port}"))
            .map_err(|_| HeaderError::Host(host.to_owned()))?;
        map.insert(HOST, value);
    }
    let mut given = HeaderMap::new();
    for (name, value) in headers {
        let name =
            HeaderName::from_bytes(name.as_bytes()).map_err(|_| HeaderError::Name(name.clone()))?;
        let value =
            HeaderValue::from_str(value).map_err(|_| HeaderError::Value(name.to_string()))?;
        given.append(name, value);
    }
    for name in given.keys() {
        map.remove(name);
    }
    for (name, value) in &given {
        map.append(name, value.clone());
    }
    Ok(map)
}

/// Connects through the probe's forward and waits for the guest's side to be established.
async fn tcp(guest: &impl Guest, role: Role, port: u16) -> Result<(), Failure> {
    let address = guest.forward(role, port).await.map_err(Failure::Guest)?;
    let stream = TcpStream::connect(address)
        .await
        .map_err(|e| Failure::Connect {
            port,
            message: e.to_string(),
        })?;
    loop {
        let table = guest.usernet().await.map_err(Failure::Guest)?;
        if connection_state(&table, address.port()).as_deref() == Some("ESTABLISHED") {
            return Ok(());
        }
        // The forward closes its end when the guest refuses the connection.
        match stream.try_read(&mut [0u8; 1]) {
            Ok(0) => return Err(Failure::Refused { port }),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                return Err(Failure::Connect {
                    port,
                    message: e.to_string(),
                });
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[cfg(test)]
mod tests;
