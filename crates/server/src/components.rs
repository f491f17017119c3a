//! The KubeVirt components `kubevirt-rs server` runs in-process beside the API server:
//! virt-api, virt-controller, and per node virt-handler and the pod runner (this machine
//! as one node, or as `--nodes N`), plus the service proxy ([`crate::proxy`]). Each is a plain Kubernetes client of the API server over HTTPS, with its own
//! client certificate ([`crate::pki::COMPONENTS`]), exactly as it would be on a cluster.
//!
//! Launcher processes are the pod runner's children in their own sessions: they outlive
//! the server, and the next start re-adopts them.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::error;

use crate::kubeconfig::Kubeconfig;
use crate::pki::Pki;

/// The namespace of the KubeVirt components.
pub const NAMESPACE: &str = "kubevirt";

/// The launcher image the controller renders and the pod runner maps to the local
/// `virt-launcher` binary.
pub fn launcher_image() -> String {
    format!("kubevirt-rs/virt-launcher:{}", env!("CARGO_PKG_VERSION"))
}

/// The identity virt-api presents to handlers.
const VIRT_API_USER: &str = "system:serviceaccount:kubevirt:kubevirt-apiserver";

/// This machine as a node.
#[derive(Debug, Clone)]
pub struct NodeSetup {
    pub name: String,
    /// The `virt-launcher` binary launcher pods run.
    pub launcher_binary: PathBuf,
    /// The launchers' run directory (their control sockets live under it).
    pub run_dir: PathBuf,
    /// The pod runner's state (pid files, logs).
    pub pods_dir: PathBuf,
    /// Set when guests are emulated, with the reason.
    pub software_emulation: Option<String>,
    /// The directories `hostDisk` volumes may be in.
    pub host_disk_dirs: Vec<PathBuf>,
    /// Set when pods run in an OCI runtime (the default); unset, they are host processes.
    pub sandbox: Option<Sandbox>,
}

/// What running pods in an OCI runtime takes on this machine.
#[derive(Debug, Clone)]
pub struct Sandbox {
    /// The runtime (runc).
    pub runc: PathBuf,
    /// The pod runner's shim (`kubevirt-rs-shim`, beside this binary).
    pub shim: PathBuf,
    /// The runtime's state directory, shared by the nodes.
    pub state: PathBuf,
    /// The node's image cache and registry mirrors (as the launcher's).
    pub paths: launcher::paths::NodePaths,
    /// The node's host-disk directories (a launcher pod mounts its namespace's).
    pub host_disk_dirs: Vec<PathBuf>,
}

impl Sandbox {
    /// The pod runner's runtime for pods in runc.
    pub(crate) fn runtime(&self) -> Result<podrunner::runtime::Runtime, ComponentError> {
        Ok(podrunner::runtime::Runtime::Oci(podrunner::runtime::Oci {
            runc: self.runc.clone(),
            shim: self.shim.clone(),
            state: self.state.clone(),
            images: self.images()?,
            host_paths: self.host_disk_dirs.clone(),
        }))
    }

    pub(crate) fn images(&self) -> Result<registry::image::ImageCache, ComponentError> {
        let registries =
            registry::registries::Registries::load(&self.paths.registries).map_err(|e| {
                ComponentError::Client {
                    component: "pod-runner",
                    message: e.to_string(),
                }
            })?;
        Ok(registry::image::ImageCache::with_limits(
            self.paths.images(),
            registries,
            registry::image::Limits::from_env(|k| std::env::var(k).ok()),
        ))
    }
}

/// The launcher image pinned to its digest, pulled into the node's cache: every launcher
/// pod runs exactly this image, and the first VMI does not wait for the pull.
async fn pinned_launcher_image(sandbox: &Sandbox) -> Result<String, ComponentError> {
    let image = launcher_image();
    let pulled = sandbox
        .images()?
        .pull(&image, registry::image::PullPolicy::Always)
        .await
        .map_err(|e| ComponentError::Client {
            component: "pod-runner",
            message: format!(
                "the launcher image: {e} (`make images` builds and pushes it; `--pod-runtime process` runs launchers without it)"
            ),
        })?;
    Ok(format!("{image}@{}", pulled.digest))
}

impl NodeSetup {
    /// Where the handler and the proxy find this node's launchers.
    pub fn launchers(&self) -> handler::Launchers {
        match self.sandbox {
            Some(_) => handler::Launchers::InPods(self.pods_dir.clone()),
            None => handler::Launchers::Shared(self.run_dir.clone()),
        }
    }
}

/// Directories as one `:`-separated variable.
fn path_list(dirs: &[PathBuf]) -> String {
    dirs.iter()
        .map(|d| d.display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug, thiserror::Error)]
pub enum ComponentError {
    #[error("client for {component}: {message}")]
    Client {
        component: &'static str,
        message: String,
    },
    #[error("listening for {component}: {source}")]
    Listen {
        component: &'static str,
        source: std::io::Error,
    },
    #[error("TLS for {component}: {message}")]
    Tls {
        component: &'static str,
        message: String,
    },
}

/// A kube client for the in-process component `stem`, authenticated by its certificate.
async fn client(url: &str, pki: &Pki, stem: &'static str) -> Result<kube::Client, ComponentError> {
    let fail = |message: String| ComponentError::Client {
        component: stem,
        message,
    };
    let (cert, key) = pki
        .components
        .get(stem)
        .ok_or_else(|| fail("no certificate".into()))?;
    let yaml = Kubeconfig::component(url, &pki.ca_pem, stem, cert, key)
        .to_yaml()
        .map_err(|e| fail(e.to_string()))?;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&yaml).map_err(|e| fail(e.to_string()))?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .map_err(|e| fail(e.to_string()))?;
    kube::Client::try_from(config).map_err(|e| fail(e.to_string()))
}

/// Serving TLS for a component endpoint that requires a client certificate from our CA
/// whose common name is one of `callers`.
fn mutual_tls(
    pki: &Pki,
    component: &'static str,
    callers: &[&str],
) -> Result<Arc<rustls::ServerConfig>, ComponentError> {
    let fail = |message: String| ComponentError::Tls { component, message };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).map_err(|e| fail(e.to_string()))?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| fail(e.to_string()))?;
    let verifier = Arc::new(crate::peer::NamedClients::new(verifier, callers));
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| fail(e.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![pki.server_cert.clone()], pki.server_key.clone_key())
        .map_err(|e| fail(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

async fn loopback(component: &'static str) -> Result<TcpListener, ComponentError> {
    TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|source| ComponentError::Listen { component, source })
}

/// Where a component that stops tells why: the server does not run on without it.
type Deaths = tokio::sync::mpsc::UnboundedSender<(&'static str, String)>;

/// Runs a component; if it ever ends (an error, a panic, or a return), says so on `died`.
fn spawn<F>(died: &Deaths, name: &'static str, fut: F) -> JoinHandle<()>
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    use futures_util::FutureExt;
    let died = died.clone();
    tokio::spawn(async move {
        let why = match std::panic::AssertUnwindSafe(fut).catch_unwind().await {
            Ok(Ok(())) => "it returned".to_owned(),
            Ok(Err(e)) => format!("{e:#}"),
            Err(panic) => panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .map_or_else(|| "it panicked".to_owned(), |m| format!("it panicked: {m}")),
        };
        error!(component = name, error = %why, "stopped");
        let _ = died.send((name, why));
    })
}

/// Creates the components' namespace when it is missing.
async fn ensure_namespace(client: &kube::Client) -> Result<(), ComponentError> {
    use k8s_openapi::api::core::v1::Namespace;
    let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
    let ns = Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(NAMESPACE.into()),
            ..Default::default()
        },
        ..Default::default()
    };
    match namespaces.create(&Default::default(), &ns).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(ComponentError::Client {
            component: "kubevirt-rs",
            message: format!("creating namespace {NAMESPACE}: {e}"),
        }),
    }
}

/// The running components; aborted when dropped (the launchers keep running).
#[derive(Debug)]
pub struct Components {
    tasks: Vec<JoinHandle<()>>,
    died: tokio::sync::mpsc::UnboundedReceiver<(&'static str, String)>,
}

impl Components {
    /// Waits until a component stops, and names it with why.
    pub async fn died(&mut self) -> (&'static str, String) {
        self.died
            .recv()
            .await
            .unwrap_or(("kubevirt-rs", "the components' supervisor went away".into()))
    }
}

impl Drop for Components {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// Starts every component against the API server at `url`: a pod runner and a handler
/// per node, one virt-api and one virt-controller.
pub async fn start(
    url: &str,
    pki: &Pki,
    nodes: &[NodeSetup],
) -> Result<Components, ComponentError> {
    let mut tasks = Vec::new();
    let (deaths, died) = tokio::sync::mpsc::unbounded_channel();
    let api_client = client(url, pki, "virt-api").await?;
    ensure_namespace(&api_client).await?;
    let migration_tls =
        crate::pki::migration_tls(time::OffsetDateTime::now_utc()).map_err(|e| {
            ComponentError::Tls {
                component: "migration",
                message: e.to_string(),
            }
        })?;
    let launcher = match nodes.iter().find_map(|n| n.sandbox.as_ref()) {
        Some(sandbox) => pinned_launcher_image(sandbox).await?,
        None => launcher_image(),
    };
    for node in nodes {
        start_node(url, pki, node, &migration_tls, &deaths, &mut tasks).await?;
    }
    let Some(first) = nodes.first() else {
        return Ok(Components { tasks, died });
    };

    // The service proxy: Services reachable on this machine (kube-proxy's part).
    let run_dirs = nodes
        .iter()
        .map(|n| (n.name.clone(), n.launchers()))
        .collect();
    tasks.push(spawn(
        &deaths,
        "service-proxy",
        crate::proxy::run(client(url, pki, "pod-runner").await?, run_dirs),
    ));

    // virt-api: the webhooks and the aggregated subresources, behind a Service on loopback.
    let api_listener = loopback("virt-api").await?;
    let api_port = api_listener
        .local_addr()
        .map_err(|source| ComponentError::Listen {
            component: "virt-api",
            source,
        })?
        .port();
    let (handler_cert, handler_key) = pki.components.get("virt-api").cloned().unwrap_or_default();
    let router = virt_api::router(
        api_client.clone(),
        virt_api::Config {
            handler_ca_pem: pki.ca_pem.clone(),
            handler_client_cert_pem: handler_cert,
            handler_client_key_pem: handler_key,
            defaults: Default::default(),
            host_disk_dirs: nodes
                .first()
                .map(|n| n.host_disk_dirs.clone())
                .unwrap_or_default(),
        },
    );
    let tls = virt_api::ServerTls {
        cert_pem: pki.virt_api_serving.0.clone(),
        key_pem: pki.virt_api_serving.1.clone(),
        client_ca_pem: pki.ca_pem.clone(),
    };
    tasks.push(spawn(&deaths, "virt-api", async move {
        virt_api::serve(api_listener, tls, router).await?;
        Ok(())
    }));
    let registration = virt_api::Registration {
        namespace: NAMESPACE.into(),
        service_ip: "127.0.0.1".into(),
        port: api_port,
        ca_bundle_pem: pki.ca_pem.clone(),
    };
    virt_api::register(api_client, registration)
        .await
        .map_err(|e| ComponentError::Client {
            component: "virt-api",
            message: format!("registering: {e}"),
        })?;

    // virt-controller.
    let controller_config = controller::Config {
        // Launcher pods mount these only in a sandbox (host processes see the node).
        host_disk_dirs: first
            .sandbox
            .iter()
            .flat_map(|s| &s.host_disk_dirs)
            .map(|d| d.display().to_string())
            .collect(),
        // The pod runner hands out /dev/userfaultfd where the node has it.
        userfaultfd: first.sandbox.is_some() && Path::new("/dev/userfaultfd").exists(),
        launcher_image: launcher,
        software_emulation: first.software_emulation.is_some(),
        namespace: NAMESPACE.into(),
        identity: format!("{}-virt-controller", first.name),
    };
    tasks.push(spawn(
        &deaths,
        "virt-controller",
        controller::run(
            client(url, pki, "virt-controller").await?,
            controller_config,
        ),
    ));

    Ok(Components { tasks, died })
}

/// One node's pod runner and handler.
async fn start_node(
    url: &str,
    pki: &Pki,
    node: &NodeSetup,
    migration_tls: &launcher_proto::MigrationTls,
    deaths: &Deaths,
    tasks: &mut Vec<JoinHandle<()>>,
) -> Result<(), ComponentError> {
    // The pod runner: this machine as a node, running the launcher pods.
    let log_listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| ComponentError::Listen {
            component: "pod-runner",
            source,
        })?;
    let runner_config = podrunner::Config {
        node_name: node.name.clone(),
        node_ip: "127.0.0.1".into(),
        state_dir: node.pods_dir.clone(),
        runtime: match &node.sandbox {
            Some(sandbox) => sandbox.runtime()?,
            None => podrunner::runtime::Runtime::Process {
                images: [(launcher_image(), node.launcher_binary.clone())].into(),
            },
        },
        env: {
            // The node's launchers keep their sockets under the node's run directory.
            let mut env = podrunner::runner_env();
            env.insert(
                "KUBEVIRT_RS_HOST_DISK_DIRS".into(),
                path_list(&node.host_disk_dirs),
            );
            env.insert(
                "KUBEVIRT_RS_RUN_DIR".into(),
                node.run_dir.display().to_string(),
            );
            // A host-process launcher pulls its images itself.
            env.insert("KUBEVIRT_RS_IMAGE_VOLUMES".into(), String::new());
            env
        },
        // Pod logs are the API server's to read (it presents its front-proxy identity).
        log_tls: mutual_tls(pki, "pod-runner", &[crate::pki::FRONT_PROXY_USER])?,
        log_listener,
    };
    tasks.push(spawn(
        deaths,
        "pod-runner",
        podrunner::run(client(url, pki, "pod-runner").await?, runner_config),
    ));

    // virt-handler, with its endpoint for virt-api.
    let handler_listener = loopback("virt-handler").await?;
    let handler_port = handler_listener
        .local_addr()
        .map_err(|source| ComponentError::Listen {
            component: "virt-handler",
            source,
        })?
        .port();
    let handler_config = handler::Config {
        node_name: node.name.clone(),
        launchers: node.launchers(),
        node_address: "127.0.0.1".into(),
        software_emulation: node.software_emulation.clone(),
        endpoint: Some(handler::endpoint::EndpointConfig {
            listener: handler_listener,
            advertise: format!("https://127.0.0.1:{handler_port}"),
            // Only virt-api forwards VMI operations and streams to a handler.
            tls: mutual_tls(pki, "virt-handler", &[VIRT_API_USER])?,
        }),
        migration_tls: Some(migration_tls.clone()),
    };
    tasks.push(spawn(
        deaths,
        "virt-handler",
        handler::run(client(url, pki, "virt-handler").await?, handler_config),
    ));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_component_that_fails_or_panics_is_reported() {
        let (deaths, died) = tokio::sync::mpsc::unbounded_channel();
        let tasks = vec![
            spawn(&deaths, "quiet", std::future::pending()),
            spawn(&deaths, "failing", async { anyhow::bail!("disk full") }),
        ];
        let mut components = Components { tasks, died };
        assert_eq!(components.died().await, ("failing", "disk full".to_owned()));
        let panicking = spawn(&deaths, "panicking", async {
            let v: Vec<u8> = Vec::new();
            let _ = v[1];
            Ok(())
        });
        let (name, why) = components.died().await;
        assert_eq!(name, "panicking");
        assert!(why.starts_with("it panicked: index out of bounds"), "{why}");
        drop(panicking);
    }
}
