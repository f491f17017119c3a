//! `kubevirt-rs`, the all-in-one binary: `kubevirt-rs server` serves the embedded API
//! server ([`apiserver`]) over HTTPS, authenticated, with its state in one data directory.
//!
//! Owns: the data directory and its lock, the PKI (CA, serving, admin and front-proxy
//! certificates), the admin token and kubeconfig, TLS and HTTP/1.1 + HTTP/2 serving,
//! authentication (client certificates and the admin bearer token), and the process
//! lifecycle (start, SIGTERM/SIGINT, drain).
//!
//! Does not own: the API itself (routes, wire formats, watch semantics: [`apiserver`]),
//! storage ([`store`]), authorization (RBAC, in [`apiserver::rbac`]; the components are
//! bound to `cluster-admin` here), controllers and the node agent (started from here).
//!
//! A start, step by step:
//! 1. Lock `DIR/lock` (another server on the same directory fails at once, naming it).
//! 2. Bind the listener, so a port taken is reported before anything is written.
//! 3. Load or create the PKI in `DIR/tls` and the token in `DIR/token`.
//! 4. Open the store at `DIR/db/state.sqlite`, create the system namespaces (`default`,
//!    `kube-system`, ...) if missing, start the garbage collector and the compactor.
//! 5. Write `DIR/kubeconfig` for the bound address, log the URL, serve until told to
//!    stop, drain, close the store.
//!
//! `DIR/tls/ca.crt` is the cluster CA, for the servers the API server calls (aggregated
//! API servers, admission webhooks). It signed the serving certificate and the
//! front-proxy client certificate (`DIR/tls/front-proxy-client.crt`, CN
//! `front-proxy-client`) the API server presents to them. Such a server verifies that
//! certificate against `ca.crt` and, because the same CA signs user certificates, accepts
//! only the name `front-proxy-client` before it trusts `X-Remote-User` and
//! `X-Remote-Group`; in kube-apiserver's flags, `--requestheader-client-ca-file=ca.crt
//! --requestheader-allowed-names=front-proxy-client`.

pub mod auth;
pub mod cli;
pub mod components;
pub mod datadir;
pub mod down;
pub mod files;
pub mod kubeconfig;
pub mod peer;
pub mod pki;
pub mod policy;
pub mod proxy;
pub mod serve;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

use crate::cli::ServerArgs;
use crate::datadir::DataDir;
use crate::kubeconfig::{AdminCredentials, Kubeconfig};
use crate::pki::ServerNames;

/// History the compactor keeps, in revisions, and how often it runs.
const COMPACT_WINDOW: store::Rev = 10_000;
const COMPACT_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    DataDir(#[from] datadir::DataDirError),
    #[error(
        "{0}; the server stopped with it (launchers and their VMs keep running; the next start adopts them)"
    )]
    Component(String),
    #[error("listening on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("certificates")]
    Pki(#[from] pki::PkiError),
    #[error("admin token")]
    Token(#[from] auth::TokenError),
    #[error(transparent)]
    Tls(#[from] serve::TlsConfigError),
    #[error("opening the store at {}", path.display())]
    Store {
        path: PathBuf,
        #[source]
        source: store::StoreError,
    },
    #[error("creating the system namespaces")]
    Bootstrap(#[source] apiserver::ApiError),
    #[error("writing the kubeconfig")]
    Kubeconfig(#[from] kubeconfig::KubeconfigError),
    #[error(transparent)]
    File(#[from] files::FileError),
}

/// Runs the server until `shutdown` completes, then drains and closes the store.
pub async fn run(args: &ServerArgs, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
    let dir = DataDir::lock(&args.data_dir)?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| ServerError::Listen {
            addr: args.listen,
            source,
        })?;
    let local = listener
        .local_addr()
        .map_err(|source| ServerError::Listen {
            addr: args.listen,
            source,
        })?;

    let names = server_names(args, local.ip());
    let pki = pki::ensure(&dir.tls(), &names, time::OffsetDateTime::now_utc())?;
    if !pki.issued.is_empty() {
        info!(issued = ?pki.issued, dir = %dir.tls().display(), "issued certificates");
    }
    let token = auth::load_or_create_token(&dir.token())?;
    let tls = serve::tls_config(&pki)?;

    let db = dir.database()?;
    let store: Arc<dyn store::Store> = Arc::new(
        store::SqliteStore::open(&db).map_err(|source| ServerError::Store { path: db, source })?,
    );
    let mut state = apiserver::AppState::start(store.clone())
        .await
        .map_err(ServerError::Bootstrap)?;
    state.proxy_identity = Some(Arc::new(proxy_identity(&pki)));
    // Each in-process component may do what its calls need, as its upstream
    // counterpart's ClusterRole lets it (`policy`), and no longer cluster-admin.
    state
        .remove_object(
            "rbac.authorization.k8s.io",
            "ClusterRoleBinding",
            policy::OLD_BINDING,
        )
        .await
        .map_err(ServerError::Bootstrap)?;
    state
        .ensure_objects(policy::objects())
        .await
        .map_err(ServerError::Bootstrap)?;
    let compactor = tokio::spawn(store::run_compactor(
        store.clone(),
        COMPACT_WINDOW,
        COMPACT_EVERY,
    ));

    let url = format!("https://{}", client_address(local));
    let kubeconfig_path = dir.kubeconfig();
    Kubeconfig::admin(
        &url,
        AdminCredentials {
            ca_pem: &pki.ca_pem,
            token: &token,
            cert_pem: &pki.admin_cert_pem,
            key_pem: &pki.admin_key_pem,
        },
    )
    .write(&kubeconfig_path)?;

    info!(%url, kubeconfig = %kubeconfig_path.display(), "serving");
    let app = apiserver::router(state);
    // The components are clients of the listener above, which accepts once serving starts.
    // A component that stops, or never starts, takes the server down with it: running on
    // without it would only look healthy. Launchers and their guests keep running, and
    // the next start adopts them.
    let (fatal_tx, fatal_rx) = tokio::sync::oneshot::channel::<String>();
    let components = (!args.api_only).then(|| {
        let nodes = node_setups(args, &dir);
        let url = url.clone();
        tokio::spawn(async move {
            let why = match components::start(&url, &pki, &nodes).await {
                Ok(mut running) => {
                    // Held until the server stops (aborting this task drops them) or one dies.
                    let (name, why) = running.died().await;
                    format!("the component {name} stopped: {why}")
                }
                Err(e) => format!("the KubeVirt components did not start: {e}"),
            };
            let _ = fatal_tx.send(why);
            std::future::pending::<()>().await;
        })
    });
    // On the signal the components stop first, so they do not log the API going away.
    let components_stop = components
        .as_ref()
        .map(tokio::task::JoinHandle::abort_handle);
    let fatal: Arc<std::sync::Mutex<Option<String>>> = Arc::default();
    let fatal_seen = fatal.clone();
    let shutdown = async move {
        tokio::select! {
            () = shutdown => {}
            Ok(why) = fatal_rx => {
                tracing::error!("{why}: the server stops");
                if let Ok(mut f) = fatal_seen.lock() {
                    *f = Some(why);
                }
            }
        }
        if let Some(c) = components_stop {
            c.abort();
        }
    };
    serve::serve(
        listener,
        tls,
        app,
        auth::Authenticator::new(token),
        shutdown,
    )
    .await;

    if let Some(c) = components {
        c.abort();
        let _ = c.await;
    }
    // The store closes when its last handle goes: acknowledged writes are already durable.
    compactor.abort();
    let _ = compactor.await;
    drop(store);
    info!("stopped");
    match fatal.lock().ok().and_then(|mut f| f.take()) {
        Some(why) => Err(ServerError::Component(why)),
        None => Ok(()),
    }
}

/// This machine as `--nodes` nodes: the first named by `--node-name` (or the host), the
/// others after it with `-2`, `-3`... Each has its own pod runner, handler and launcher
/// run directory, so a VMI can migrate between them.
fn node_setups(args: &ServerArgs, dir: &DataDir) -> Vec<components::NodeSetup> {
    let first = node_setup(args, dir);
    let mut nodes = vec![first.clone()];
    for i in 2..=args.nodes {
        let name = format!("{}-{i}", first.name);
        nodes.push(components::NodeSetup {
            run_dir: first.run_dir.join("nodes").join(&name),
            pods_dir: dir.root().join("nodes").join(&name).join("pods"),
            name,
            ..first.clone()
        });
    }
    nodes
}

/// This machine as the node, from the flags and the environment.
fn node_setup(args: &ServerArgs, dir: &DataDir) -> components::NodeSetup {
    let name = args.node_name.clone().unwrap_or_else(|| {
        nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .map(|h| h.to_ascii_lowercase())
            .unwrap_or_else(|| "kubevirt-rs".into())
    });
    let launcher_binary = args.launcher.clone().unwrap_or_else(|| {
        std::env::current_exe()
            .map(|exe| exe.with_file_name("virt-launcher"))
            .unwrap_or_else(|_| "virt-launcher".into())
    });
    let software_emulation = match launcher::accel::detect() {
        launcher::accel::Accel::Tcg { reason } => Some(reason),
        launcher::accel::Accel::Kvm => None,
    };
    let host_disk_dirs = if args.host_disk_dir.is_empty() {
        vec![dir.root().join("host-disks")]
    } else {
        args.host_disk_dir.clone()
    };
    for d in &host_disk_dirs {
        if let Err(e) = std::fs::create_dir_all(d) {
            tracing::warn!(dir = %d.display(), error = %e, "host disk directory not created");
        }
    }
    let sandbox =
        (args.pod_runtime == cli::PodRuntime::Runc).then(|| sandbox(dir, host_disk_dirs.clone()));
    components::NodeSetup {
        name,
        launcher_binary,
        // Launchers' run directories live with the rest of the server's state unless
        // KUBEVIRT_RS_RUN_DIR says otherwise.
        run_dir: std::env::var_os("KUBEVIRT_RS_RUN_DIR")
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| dir.root().join("launchers")),
        pods_dir: dir.root().join("pods"),
        software_emulation,
        host_disk_dirs,
        sandbox,
    }
}

/// Pods in runc: the runtime from the usual system directories (else `runc` on `PATH`),
/// the shim beside this binary, the runtime's state in the data directory; launcher pods
/// may mount their namespace's directory in `host_disk_dirs`.
pub(crate) fn sandbox(dir: &DataDir, host_disk_dirs: Vec<PathBuf>) -> components::Sandbox {
    let runc = ["/usr/sbin/runc", "/usr/bin/runc"]
        .into_iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .unwrap_or_else(|| "runc".into());
    let shim = std::env::current_exe()
        .map(|exe| exe.with_file_name("kubevirt-rs-shim"))
        .unwrap_or_else(|_| "kubevirt-rs-shim".into());
    components::Sandbox {
        runc,
        shim,
        state: dir.root().join("runc"),
        paths: launcher::paths::NodePaths::from_process_env(),
        host_disk_dirs,
    }
}

/// The client certificate the API server presents to aggregated servers.
fn proxy_identity(pki: &pki::Pki) -> apiserver::ProxyIdentity {
    apiserver::ProxyIdentity {
        cert_pem: pki.front_proxy_cert_pem.clone(),
        key_pem: pki.front_proxy_key_pem.clone(),
    }
}

/// The names the serving certificate carries for this start.
fn server_names(args: &ServerArgs, listen: IpAddr) -> ServerNames {
    let mut names = ServerNames::local();
    if let Some(host) = nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
    {
        names.add(&host);
    }
    if !listen.is_unspecified() && !listen.is_loopback() {
        names.add(&listen.to_string());
    }
    if let Some(host) = &args.advertise_host {
        names.add(host);
    }
    names
}

/// Where a client on this machine reaches a listener bound to `local`: loopback for a
/// wildcard or loopback bind, the bound address otherwise.
fn client_address(local: SocketAddr) -> SocketAddr {
    let ip = match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() || ip.is_loopback() => {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        }
        IpAddr::V6(ip) if ip.is_unspecified() || ip.is_loopback() => {
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        }
        ip => ip,
    };
    SocketAddr::new(ip, local.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_use_loopback_unless_bound_elsewhere() {
        for (bound, want) in [
            ("0.0.0.0:6443", "127.0.0.1:6443"),
            ("127.0.0.2:6443", "127.0.0.1:6443"),
            ("[::]:6443", "[::1]:6443"),
            ("10.0.0.5:7443", "10.0.0.5:7443"),
        ] {
            let got = client_address(bound.parse().unwrap());
            assert_eq!(got.to_string(), want, "bound to {bound}");
        }
    }

    #[test]
    fn the_proxy_identity_is_the_front_proxy_certificate_and_loads_as_rustls_would() {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};

        let dir = tempfile::tempdir().unwrap();
        let pki = pki::ensure(
            dir.path(),
            &ServerNames::local(),
            time::OffsetDateTime::now_utc(),
        )
        .unwrap();
        let identity = proxy_identity(&pki);
        let cert = CertificateDer::from_pem_slice(identity.cert_pem.as_bytes()).unwrap();
        let subject = pki::subject(&cert).unwrap();
        assert_eq!(subject.common_name.as_deref(), Some(pki::FRONT_PROXY_USER));
        // As the aggregation proxy builds its client configuration.
        let key = PrivateKeyDer::from_pem_slice(identity.key_pem.as_bytes()).unwrap();
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_client_auth_cert(vec![cert], key)
        .unwrap();
    }

    #[test]
    fn the_certificate_names_the_listen_and_advertised_hosts() {
        let args = ServerArgs {
            data_dir: "/unused".into(),
            listen: "10.0.0.5:6443".parse().unwrap(),
            advertise_host: Some("vms.example.org".into()),
            node_name: None,
            nodes: 1,
            launcher: None,
            api_only: false,
            host_disk_dir: Vec::new(),
            pod_runtime: cli::PodRuntime::Runc,
        };
        let names = server_names(&args, args.listen.ip());
        assert!(names.ips.contains(&"10.0.0.5".parse().unwrap()));
        assert!(names.ips.contains(&"::1".parse().unwrap()));
        assert!(names.dns.contains("vms.example.org"));
        assert!(names.dns.contains("localhost"));
        let wildcard = server_names(
            &ServerArgs {
                listen: "0.0.0.0:6443".parse().unwrap(),
                advertise_host: None,
                ..args
            },
            "0.0.0.0".parse().unwrap(),
        );
        assert!(!wildcard.ips.contains(&"0.0.0.0".parse().unwrap()));
    }
}
