//! One API server and one pod runner per test; the runner can be stopped and started
//! again over the same state directory, as a server restart would.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::Client;
use kube::api::{Api, PostParams};
use podrunner::runtime::{Oci, Runtime};
use registry::image::ImageCache;
use registry::registries::Registries;
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The image every test pod uses: `command: ["sh", "-c", SCRIPT]` runs SCRIPT.
pub const SH: &str = "test/sh:1";
/// The image sandboxed test pods use: busybox, from the local registry (`make registry`).
pub const TOOLBOX: &str = "127.0.0.1:5000/kubevirt-rs/toolbox:devel";
pub const NODE: &str = "node-a";

pub struct Cluster {
    pub client: Client,
    pub state: tempfile::TempDir,
    /// Files the test programs write (marks).
    pub scratch: tempfile::TempDir,
    /// The log endpoint's port of the running runner.
    pub log_port: u16,
    /// Runs pods in runc instead of as host processes; runc's state directory.
    sandbox: Option<tempfile::TempDir>,
    runner: Option<JoinHandle<anyhow::Result<()>>>,
    server: JoinHandle<()>,
}

impl Cluster {
    /// An API server, and a runner on it.
    pub async fn start() -> Self {
        let mut cluster = Self::without_runner().await;
        cluster.start_runner();
        cluster
    }

    /// An API server, and a runner on it that runs pods in runc from their images.
    pub async fn sandboxed() -> Self {
        let mut cluster = Self::without_runner().await;
        cluster.sandbox = Some(tempfile::tempdir().unwrap());
        cluster.start_runner();
        cluster
    }

    /// An API server alone.
    pub async fn without_runner() -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let state = apiserver::AppState::start(Arc::new(store::MemStore::new()))
            .await
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            axum::serve(listener, apiserver::router(state))
                .await
                .unwrap();
        });
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        Self {
            client: Client::try_from(config).unwrap(),
            state: tempfile::tempdir().unwrap(),
            scratch: tempfile::tempdir().unwrap(),
            log_port: 0,
            sandbox: None,
            runner: None,
            server,
        }
    }

    pub fn start_runner(&mut self) {
        assert!(self.runner.is_none());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        self.log_port = listener.local_addr().unwrap().port();
        let config = podrunner::Config {
            node_name: NODE.to_owned(),
            node_ip: "127.0.0.1".to_owned(),
            state_dir: self.state.path().to_owned(),
            runtime: self.runtime(),
            env: BTreeMap::from([(
                "KUBEVIRT_RS_SCRATCH".to_owned(),
                self.scratch.path().display().to_string(),
            )]),
            log_tls: tls(),
            log_listener: listener,
        };
        self.runner = Some(tokio::spawn(podrunner::run(self.client.clone(), config)));
    }

    fn runtime(&self) -> Runtime {
        let Some(sandbox) = &self.sandbox else {
            return Runtime::Process {
                images: BTreeMap::from([(SH.to_owned(), PathBuf::from("/bin/sh"))]),
            };
        };
        // The node's image cache, shared by every test: the toolbox is pulled once.
        let cache = std::env::var_os("KUBEVIRT_RS_CACHE")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/kubevirt-rs")
            })
            .join("images");
        Runtime::Oci(Oci {
            runc: PathBuf::from("runc"),
            shim: PathBuf::from(env!("CARGO_BIN_EXE_kubevirt-rs-shim")),
            state: sandbox.path().to_owned(),
            images: ImageCache::new(cache, Registries::default()),
            host_paths: Vec::new(),
        })
    }

    /// Drops the runner's future, as a crash of the server would end it.
    pub async fn stop_runner(&mut self) {
        let runner = self.runner.take().unwrap();
        runner.abort();
        let _ = runner.await;
    }

    pub fn pods(&self) -> Api<Pod> {
        Api::default_namespaced(self.client.clone())
    }

    pub fn nodes(&self) -> Api<Node> {
        Api::all(self.client.clone())
    }

    /// Creates a pod running `script` in container `main`; `extra` is merged into the spec.
    pub async fn pod(&self, name: &str, script: &str, extra: Value) -> Pod {
        let mut spec = json!({
            "restartPolicy": "Never",
            "containers": [{"name": "main", "image": SH, "command": ["sh", "-c", script]}],
        });
        merge(&mut spec, extra);
        let pod = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec,
        }))
        .unwrap();
        self.pods()
            .create(&PostParams::default(), &pod)
            .await
            .unwrap()
    }

    /// Polls the pod until `ok` holds (10 s at most).
    pub async fn wait_pod(&self, name: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
        self.wait_pod_for(name, what, Duration::from_secs(10), ok)
            .await
    }

    /// Polls the pod until `ok` holds, `limit` at most.
    pub async fn wait_pod_for(
        &self,
        name: &str,
        what: &str,
        limit: Duration,
        ok: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + limit;
        loop {
            let pod = self.pods().get_opt(name).await.unwrap();
            let pod = serde_json::to_value(&pod).unwrap();
            if ok(&pod) {
                return pod;
            }
            assert!(Instant::now() < deadline, "pod {name}: not {what}: {pod:#}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_phase(&self, name: &str, phase: &str) -> Value {
        self.wait_pod(name, phase, |p| p["status"]["phase"] == phase)
            .await
    }

    /// Waits for `phase` up to `limit` (the first pull of an image takes a while).
    pub async fn wait_phase_for(&self, name: &str, phase: &str, limit: Duration) -> Value {
        self.wait_pod_for(name, phase, limit, |p| p["status"]["phase"] == phase)
            .await
    }

    pub async fn wait_gone(&self, name: &str) {
        self.wait_pod(name, "gone", Value::is_null).await;
    }

    /// The wrapper pid recorded for the pod's container `main`.
    pub fn pid(&self, pod: &Value) -> i32 {
        let uid = pod["metadata"]["uid"].as_str().unwrap();
        let text = std::fs::read_to_string(self.state.path().join(uid).join("main.pid")).unwrap();
        text.split_whitespace().next().unwrap().parse().unwrap()
    }

    pub fn scratch(&self, file: &str) -> String {
        self.scratch.path().join(file).display().to_string()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Some(r) = self.runner.take() {
            r.abort();
        }
        self.server.abort();
        // Leave no test process behind, whatever the test's outcome.
        let cgroups = podrunner::cgroup::Cgroups::default();
        let runtime = self.runtime();
        for entry in std::fs::read_dir(self.state.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let uid = entry.file_name().to_string_lossy().into_owned();
            podrunner::pods::remove_pod_state(&entry.path(), &uid, &cgroups, &runtime);
        }
    }
}

/// Whether a process with this pid exists (a zombie counts as gone).
pub fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s[s.rfind(')').unwrap() + 1..].trim_start().starts_with('Z'))
}

/// Merges `from` into `into`, objects key by key; anything else is replaced.
pub fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                merge(a.entry(k).or_insert(Value::Null), v);
            }
        }
        (a, b) => *a = b,
    }
}

fn tls() -> Arc<rustls::ServerConfig> {
    let key =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), NODE.to_owned()]).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![key.cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(key.signing_key.serialize_der().into()),
        )
        .unwrap();
    Arc::new(config)
}
