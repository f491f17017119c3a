//! A real `kubevirt-rs server` process on a temporary data directory and a free port, and
//! the clients that talk to it.

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use podrunner::cgroup::Cgroups;
use podrunner::pods::remove_pod_state;
use podrunner::runtime::{Oci, Runtime};
use registry::image::ImageCache;
use registry::registries::Registries;
use server::kubeconfig::Kubeconfig;

pub const BIN: &str = env!("CARGO_BIN_EXE_kubevirt-rs");
/// How long a start may take on a loaded machine before the test gives up.
const START_DEADLINE: Duration = Duration::from_secs(30);
/// How long a signalled server may take to exit: the drain bound and some slack.
pub const STOP_DEADLINE: Duration = Duration::from_secs(8);
const POLL: Duration = Duration::from_millis(20);

/// A temporary directory holding the data directory, logs and kubectl's cache.
pub struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// A running server. Killed when dropped, if still running.
pub struct Server {
    pub child: Child,
    pub data: PathBuf,
    pub port: u16,
    pub log: PathBuf,
    /// From spawn to the first successful /readyz.
    pub ready_after: Duration,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether a server runs the KubeVirt components, and with which node settings.
pub enum Node {
    ApiOnly,
    /// The whole system; launchers keep their sockets under `run_dir`.
    Full {
        run_dir: PathBuf,
        /// How many nodes the machine acts as (`--nodes`).
        nodes: u8,
    },
}

/// The `virt-launcher` binary cargo built beside `kubevirt-rs`.
pub fn launcher_binary() -> PathBuf {
    let path = Path::new(BIN).with_file_name("virt-launcher");
    assert!(
        path.exists(),
        "{} is missing: build the workspace (cargo test --workspace builds it)",
        path.display()
    );
    path
}

/// Spawns the binary on `data`, logging to `log`.
pub fn spawn_with(data: &Path, port: u16, log: &Path, node: &Node) -> Child {
    let log = File::options().create(true).append(true).open(log).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["server", "--data-dir"])
        .arg(data)
        .args(["--listen", &format!("127.0.0.1:{port}")]);
    match node {
        Node::ApiOnly => {
            cmd.arg("--api-only");
        }
        Node::Full { run_dir, nodes } => {
            cmd.args([
                "--node-name",
                "node1",
                "--nodes",
                &nodes.to_string(),
                "--launcher",
            ])
            .arg(launcher_binary())
            .env("KUBEVIRT_RS_RUN_DIR", run_dir);
        }
    }
    cmd.env_remove("RUST_LOG")
        .env_remove("KUBEVIRT_RS_LOG")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap()
}

impl Server {
    /// Starts a server on `scratch`'s data directory and waits until it is ready.
    pub async fn start(scratch: &Scratch) -> Self {
        Self::start_with(scratch, &Node::ApiOnly).await
    }

    /// Starts a server with `node`'s settings and waits until it is ready.
    pub async fn start_with(scratch: &Scratch, node: &Node) -> Self {
        let port = free_port();
        let log = scratch.path("server.log");
        let started = Instant::now();
        let child = spawn_with(&scratch.data(), port, &log, node);
        let mut server = Self {
            child,
            data: scratch.data(),
            port,
            log,
            ready_after: Duration::ZERO,
        };
        server.wait_ready().await;
        if let Node::Full { .. } = node {
            server.wait_components(scratch).await;
        }
        server.ready_after = started.elapsed();
        server
    }

    /// Polls /readyz (once the CA exists) until it answers 200.
    async fn wait_ready(&mut self) {
        let deadline = Instant::now() + START_DEADLINE;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "server exited before ready ({status}):\n{}",
                    self.log_text()
                );
            }
            if let Ok(ca) = std::fs::read(self.data.join("tls/ca.crt")) {
                let client = https_client(&ca, Tls::default());
                if let Ok(r) = client.get(self.url("/readyz")).send().await
                    && r.status() == 200
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "server not ready after {START_DEADLINE:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits until virt-api serves its aggregated API and the handler has labelled the
    /// node schedulable: from then on VMIs get their presets and defaults and can run.
    async fn wait_components(&mut self, scratch: &Scratch) {
        let deadline = Instant::now() + START_DEADLINE;
        let kubeconfig = self.kubeconfig_path();
        loop {
            let version = kubectl(
                &kubeconfig,
                scratch,
                &["get", "--raw", "/apis/subresources.kubevirt.io/v1/version"],
            );
            let nodes = kubectl(
                &kubeconfig,
                scratch,
                &[
                    "get",
                    "nodes",
                    "-l",
                    "kubevirt.io/schedulable=true",
                    "-o",
                    "name",
                ],
            );
            if version.status.success() && String::from_utf8_lossy(&nodes.stdout).contains("node/")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "components not up after {START_DEADLINE:?}:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    pub fn kubeconfig_path(&self) -> PathBuf {
        self.data.join("kubeconfig")
    }

    pub fn kubeconfig(&self) -> Kubeconfig {
        serde_saphyr::from_str(&std::fs::read_to_string(self.kubeconfig_path()).unwrap()).unwrap()
    }

    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.data.join("tls/ca.crt")).unwrap()
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data.join("token"))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` and waits for the exit; returns the status and how long it took.
    pub fn stop(&mut self, signal: Signal) -> (ExitStatus, Duration) {
        let sent = Instant::now();
        kill(Pid::from_raw(self.child.id() as i32), signal).unwrap();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return (status, sent.elapsed());
            }
            assert!(
                sent.elapsed() < STOP_DEADLINE,
                "still running {STOP_DEADLINE:?} after {signal}:\n{}",
                self.log_text()
            );
            std::thread::sleep(POLL);
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// What a test client presents in TLS.
#[derive(Default)]
pub struct Tls<'a> {
    /// A client certificate and key, PEM.
    pub identity: Option<(&'a str, &'a str)>,
    pub http1_only: bool,
}

/// An HTTPS client trusting only `ca_pem`, on ring.
pub fn https_client(ca_pem: &[u8], tls: Tls<'_>) -> reqwest::Client {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match tls.identity {
        Some((cert, key)) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap(),
            )
            .unwrap(),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = if tls.http1_only {
        vec![b"http/1.1".to_vec()]
    } else {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    };
    let mut client = reqwest::Client::builder()
        .tls_backend_preconfigured(config)
        .timeout(Duration::from_secs(10));
    if tls.http1_only {
        client = client.http1_only();
    }
    client.build().unwrap()
}

/// Runs kubectl with `kubeconfig` and a private discovery cache.
pub fn kubectl(kubeconfig: &Path, scratch: &Scratch, args: &[&str]) -> Output {
    Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(scratch.path("kube-cache"))
        .args(["--request-timeout", "20s"])
        .args(args)
        .output()
        .expect("kubectl on PATH")
}

/// kubectl's output, asserting it succeeded.
pub fn kubectl_ok(kubeconfig: &Path, scratch: &Scratch, args: &[&str]) -> String {
    let out = kubectl(kubeconfig, scratch, args);
    assert!(
        out.status.success(),
        "kubectl {args:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The path of `name` in ../shared/upstream-examples.
pub fn upstream_example(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/upstream-examples")
        .join(name)
        .display()
        .to_string()
}

pub fn cirros_manifest() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/upstream-examples/vm-cirros.yaml")
}

pub fn cirros_vm() -> api::v1::VirtualMachine {
    let text = std::fs::read_to_string(cirros_manifest()).unwrap();
    match api::parse_documents(&text).unwrap().remove(0) {
        api::Object::VirtualMachine(vm) => vm,
        _ => unreachable!("vm-cirros.yaml holds a VirtualMachine"),
    }
}

/// A kube-rs client from a kubeconfig file.
pub async fn kube_client(kubeconfig: &Path) -> kube::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = kube::Config::from_custom_kubeconfig(
        kube::config::Kubeconfig::read_from(kubeconfig).unwrap(),
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .unwrap();
    kube::Client::try_from(config).unwrap()
}

/// Fails with a hint when the loopback registry with the test guests is not there.
pub fn require_registry() {
    assert!(
        std::net::TcpStream::connect("127.0.0.1:5000").is_ok(),
        "no registry on 127.0.0.1:5000: run `make guest registry` first (make test does)"
    );
}

/// The pids of processes whose command line mentions `needle`, or that run in a pod
/// whose directory is below `needle`, with their names.
pub fn processes_mentioning(needle: &Path) -> Vec<(i32, String)> {
    let pods = pod_uids(needle);
    let needle = needle.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        // A sandboxed process names its pod in its cgroup: `/kubevirt-rs/pod<uid>/...`.
        let cgroup = std::fs::read_to_string(entry.path().join("cgroup")).unwrap_or_default();
        let in_pod = cgroup
            .split("/kubevirt-rs/pod")
            .skip(1)
            .any(|rest| pods.iter().any(|uid| rest.starts_with(uid.as_str())));
        if cmdline.contains(&needle) || in_pod {
            let name = cmdline.split(' ').next().unwrap_or_default().to_owned();
            found.push((pid, name));
        }
    }
    found
}

/// The pods directories below `root`: the first node's and the others' (`--nodes`).
fn pod_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.join("data/pods")];
    for node in std::fs::read_dir(root.join("data/nodes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        dirs.push(node.path().join("pods"));
    }
    dirs
}

/// The uids of the pods whose directories are below `root`.
fn pod_uids(root: &Path) -> Vec<String> {
    pod_dirs(root)
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// The launchers' run directories below `root`: the shared one of host-process launchers
/// (`run/`), and each sandboxed launcher pod's `private` emptyDir.
pub fn launcher_dirs(root: &Path) -> Vec<PathBuf> {
    let mut dirs = vec![root.join("run")];
    for pods in pod_dirs(root) {
        for pod in std::fs::read_dir(pods).into_iter().flatten().flatten() {
            dirs.push(pod.path().join("volumes/kubernetes.io~empty-dir/private"));
        }
    }
    dirs
}

/// The per-VMI directories the launchers below `root` made (`<ns>_<name>-<pid>`), with
/// their console logs.
pub fn vmi_dirs(root: &Path) -> Vec<PathBuf> {
    launcher_dirs(root)
        .iter()
        .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
        .map(|e| e.path())
        .filter(|p| p.join("virt-serial0.log").exists())
        .collect()
}

/// The serial console log of the guest `name` (namespace `default`) below `root`; empty
/// once its launcher has removed its directory.
pub fn console_log(root: &Path, name: &str) -> String {
    let prefix = format!("default_{name}-");
    vmi_dirs(root)
        .iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
        })
        .filter_map(|p| std::fs::read_to_string(p.join("virt-serial0.log")).ok())
        .collect()
}

/// The QEMU processes of the launchers below `root`.
pub fn qemu_pids(root: &Path) -> Vec<i32> {
    processes_mentioning(root)
        .into_iter()
        .filter(|(_, name)| name.contains("qemu"))
        .map(|(pid, _)| pid)
        .collect()
}

/// Builds the launcher image from the launcher cargo built and pushes it to the loopback
/// registry, once per test run: sandboxed launcher pods run that image.
pub fn push_launcher_image() {
    static PUSHED: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    PUSHED.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
        for (script, args) in [
            (
                "images/build.sh",
                vec![
                    "launcher".to_owned(),
                    launcher_binary().display().to_string(),
                ],
            ),
            ("guest/registry.sh", vec![]),
        ] {
            let out = Command::new(root.join(script))
                .args(&args)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    });
}

/// Kills what a test's launchers left, so a failed test does not leave guests behind.
pub struct Reaper(pub PathBuf);

impl Drop for Reaper {
    fn drop(&mut self) {
        for (pid, _) in processes_mentioning(&self.0) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        // Sandboxed pods also leave runc's containers, their root filesystems' mounts
        // and their cgroups: the pod runner's own clean-up removes them.
        let runtime = Runtime::Oci(Oci {
            runc: "runc".into(),
            shim: PathBuf::new(),
            state: self.0.join("data/runc"),
            images: ImageCache::new(self.0.join("unused"), Registries::default()),
            host_paths: Vec::new(),
        });
        for pods in pod_dirs(&self.0) {
            for pod in std::fs::read_dir(pods).into_iter().flatten().flatten() {
                let uid = pod.file_name().to_string_lossy().into_owned();
                remove_pod_state(&pod.path(), &uid, &Cgroups::default(), &runtime);
            }
        }
    }
}

/// The whole system on `scratch`: the server with every component, the directory its
/// launchers are below (the scratch directory: see [`launcher_dirs`]), and the reaper for
/// what they leave.
pub struct System {
    pub server: Server,
    pub run_dir: PathBuf,
    pub node: Node,
    _reaper: Reaper,
}

impl System {
    pub async fn start(scratch: &Scratch) -> Self {
        Self::start_nodes(scratch, 1).await
    }

    /// The whole system acting as `nodes` nodes: `node1`, `node1-2`, ...
    pub async fn start_nodes(scratch: &Scratch, nodes: u8) -> Self {
        require_registry();
        push_launcher_image();
        let run_dir = scratch.path("run");
        let reaper = Reaper(scratch.path(""));
        let node = Node::Full {
            run_dir: run_dir.clone(),
            nodes,
        };
        let server = Server::start_with(scratch, &node).await;
        Self {
            server,
            run_dir: scratch.path(""),
            node,
            _reaper: reaper,
        }
    }
}

/// Polls `probe` every 100 ms until it gives a value; fails after `within` with the
/// server's log.
pub async fn wait_until<T, F, Fut>(what: &str, within: Duration, server: &Server, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = probe().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: not within {within:?}; server log:\n{}",
            server.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sets a VM's run strategy with kubectl, as `virtctl start|stop` would for Halted VMs.
pub fn set_run_strategy(kubeconfig: &Path, scratch: &Scratch, vm: &str, strategy: &str) {
    let patch = format!(r#"{{"spec":{{"runStrategy":"{strategy}"}}}}"#);
    kubectl_ok(
        kubeconfig,
        scratch,
        &["patch", "vm", vm, "--type", "merge", "-p", &patch],
    );
}

/// Collects what `pipe` (a child's stdout or stderr) carries, in the background.
pub fn collect(
    mut pipe: impl std::io::Read + Send + 'static,
) -> std::sync::Arc<std::sync::Mutex<String>> {
    let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = text.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = pipe.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock()
                .unwrap()
                .push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    text
}

/// Runs the `virtctl` built beside `kubevirt-rs` with `kubeconfig`, stdin closed.
pub fn virtctl(kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(Path::new(BIN).with_file_name("virtctl"))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

/// One HTTP GET of `/` at `addr`, as the body, if it answers.
pub async fn http_get(addr: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream =
        tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: web\r\n\r\n")
        .await
        .ok()?;
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut answer))
        .await
        .ok()?
        .ok()?;
    answer.contains("200 OK").then_some(answer)
}
