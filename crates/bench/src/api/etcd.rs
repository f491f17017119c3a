//! etcd beside the server: a single member on loopback with its own data directory on
//! the same disk, driven through its gRPC gateway (JSON over HTTP/1.1, keys and values in
//! base64), the same way from the same client library as our server.
//!
//! Its figures are raw key-value operations: no TLS, no authentication, admission,
//! validation or object encoding, so they bound what an API server on etcd could do.

use std::net::TcpListener;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_json::json;

use super::process::Process;

const START_DEADLINE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A running, healthy etcd; killed when dropped.
#[derive(Debug)]
pub struct EtcdProcess {
    pub process: Process,
    url: String,
}

impl EtcdProcess {
    /// Starts `bin` on `data` and returns it once `/health` says so, with the time from
    /// spawn to then.
    pub async fn start(bin: &Path, data: &Path, log: &Path) -> anyhow::Result<(Self, Duration)> {
        let (client_url, peer_url) = {
            // Held until both are known, so they differ; free again before etcd binds.
            let a = TcpListener::bind("127.0.0.1:0")?;
            let b = TcpListener::bind("127.0.0.1:0")?;
            (
                format!("http://{}", a.local_addr()?),
                format!("http://{}", b.local_addr()?),
            )
        };
        let mut command = Command::new(bin);
        command
            .arg("--name=bench")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client_url}"))
            .arg(format!("--advertise-client-urls={client_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=bench={peer_url}"))
            .arg("--logger=zap");
        let mut process = Process::spawn(command, log).context("etcd")?;
        let etcd = EtcdClient::new(&client_url)?;
        loop {
            process.check_starting(START_DEADLINE).context("etcd")?;
            if etcd.healthy().await {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let ready_after = process.age();
        Ok((
            Self {
                process,
                url: client_url,
            },
            ready_after,
        ))
    }

    /// A client on connections of its own.
    pub fn client(&self) -> anyhow::Result<EtcdClient> {
        EtcdClient::new(&self.url)
    }
}

/// `etcd X.Y.Z`, from `etcd --version`'s first line (`etcd Version: X.Y.Z`).
pub fn version(bin: &Path) -> String {
    Command::new(bin)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            let first = s.lines().next()?;
            Some(format!("etcd {}", first.rsplit(' ').next()?))
        })
        .unwrap_or_else(|| "etcd (version unknown)".to_owned())
}

/// A JSON-gateway client.
#[derive(Debug, Clone)]
pub struct EtcdClient {
    http: reqwest::Client,
    url: String,
}

#[derive(Debug, Deserialize)]
struct RangeAnswer {
    #[serde(default)]
    kvs: Vec<IgnoredAny>,
}

impl EtcdClient {
    fn new(url: &str) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(REQUEST_TIMEOUT)
                .build()
                .context("building an HTTP client")?,
            url: url.to_owned(),
        })
    }

    /// Whether `/health` says so; also opens a connection before timed work.
    pub async fn healthy(&self) -> bool {
        match self.http.get(format!("{}/health", self.url)).send().await {
            Ok(r) if r.status().is_success() => {
                r.text().await.is_ok_and(|t| t.contains("\"true\""))
            }
            _ => false,
        }
    }

    async fn post(&self, path: &str, body: serde_json::Value) -> anyhow::Result<Vec<u8>> {
        let response = self
            .http
            .post(format!("{}{path}", self.url))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(serde_json::to_vec(&body)?)
            .send()
            .await
            .with_context(|| format!("etcd {path}"))?;
        let status = response.status();
        let bytes = response.bytes().await.context("etcd: reading the answer")?;
        if !status.is_success() {
            bail!("etcd {path}: {status}: {}", String::from_utf8_lossy(&bytes));
        }
        Ok(bytes.to_vec())
    }

    /// Puts `value` at `key`.
    pub async fn put(&self, key: &str, value: &[u8]) -> anyhow::Result<()> {
        let body = json!({"key": STANDARD.encode(key), "value": STANDARD.encode(value)});
        self.post("/v3/kv/put", body).await?;
        Ok(())
    }

    /// Reads every key under `prefix`, values included; returns how many there were.
    pub async fn range_prefix(&self, prefix: &str) -> anyhow::Result<usize> {
        let mut end = prefix.as_bytes().to_vec();
        match end.last_mut() {
            Some(last) if *last < 0xff => *last += 1,
            _ => bail!("prefix {prefix:?} has no simple range end"),
        }
        let body = json!({"key": STANDARD.encode(prefix), "range_end": STANDARD.encode(end)});
        let bytes = self.post("/v3/kv/range", body).await?;
        let answer: RangeAnswer = serde_json::from_slice(&bytes).context("etcd range answer")?;
        Ok(answer.kvs.len())
    }
}
