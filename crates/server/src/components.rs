//! The KubeVirt components `kubevirt-rs server` runs in-process beside the API server:
//! virt-api, virt-controller, and per node virt-handler and the pod runner (this machine
//! as one node, or as `--nodes N`), plus the service proxy ([`crate::proxy`]). Each is a plain Kubernetes client of the API server over HTTPS, with its own
//! client certificate ([`crate::pki::COMPONENTS`]), exactly as it would be on a cluster.
//!
//! Launcher processes are the pod runner's children in their own sessions: they outlive
//! the server, and the next start re-adopts them.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tracing::{error, info};

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

fn spawn<F>(name: &'static str, fut: F) -> JoinHandle<()>
where
    F: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    tokio::spawn(async move {
        match fut.await {
            Ok(()) => info!(component = name, "stopped"),
            Err(e) => error!(component = name, error = format!("{e:#}"), "stopped"),
        }
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
    let api_client = client(url, pki, "virt-api").await?;
    ensure_namespace(&api_client).await?;
    for node in nodes {
        start_node(url, pki, node, &mut tasks).await?;
    }
    let Some(first) = nodes.first() else {
        return Ok(Components { tasks });
    };

    // The service proxy: Services reachable on this machine (kube-proxy's part).
    let run_dirs = nodes
        .iter()
        .map(|n| (n.name.clone(), n.run_dir.clone()))
        .collect();
    tasks.push(spawn(
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
    tasks.push(spawn("virt-api", async move {
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
        launcher_image: launcher_image(),
        software_emulation: first.software_emulation.is_some(),
        namespace: NAMESPACE.into(),
        identity: format!("{}-virt-controller", first.name),
    };
    tasks.push(spawn(
        "virt-controller",
        controller::run(
            client(url, pki, "virt-controller").await?,
            controller_config,
        ),
    ));

    Ok(Components { tasks })
}

/// One node's pod runner and handler.
async fn start_node(
    url: &str,
    pki: &Pki,
    node: &NodeSetup,
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
        images: [(launcher_image(), node.launcher_binary.clone())].into(),
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
            env
        },
        // Pod logs are the API server's to read (it presents its front-proxy identity).
        log_tls: mutual_tls(pki, "pod-runner", &[crate::pki::FRONT_PROXY_USER])?,
        log_listener,
    };
    tasks.push(spawn(
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
        run_dir: node.run_dir.clone(),
        node_address: "127.0.0.1".into(),
        software_emulation: node.software_emulation.clone(),
        endpoint: Some(handler::endpoint::EndpointConfig {
            listener: handler_listener,
            advertise: format!("https://127.0.0.1:{handler_port}"),
            // Only virt-api forwards VMI operations and streams to a handler.
            tls: mutual_tls(pki, "virt-handler", &[VIRT_API_USER])?,
        }),
    };
    tasks.push(spawn(
        "virt-handler",
        handler::run(client(url, pki, "virt-handler").await?, handler_config),
    ));
    Ok(())
}
