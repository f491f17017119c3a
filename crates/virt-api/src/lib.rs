//! virt-api: the admission webhooks of the kubevirt.io kinds and the
//! `subresources.kubevirt.io/v1` aggregated API, plus their registration.
//!
//! Owns:
//! - the HTTP surface ([`router`]): discovery, `version`, `healthz`; the VM lifecycle
//!   subresources (`start`, `stop`, `restart`), written as changes to the VM
//!   (`spec.runStrategy`, `status.stateChangeRequests`) the VM controller acts on; the VMI
//!   subresources (`pause`, `unpause`, `softreboot`, `reset`, `guestosinfo`, `console`,
//!   `vnc`), forwarded to the handler on the VMI's node;
//! - the AdmissionReview webhooks: presets and defaults on VMI create, status put back
//!   on VMI updates by anyone but the KubeVirt components, validation of every kind
//!   through [`api::validate`];
//! - HTTPS serving ([`serve`]) that hands the TLS client certificate to the router, and
//!   trusting `X-Remote-User`/`X-Remote-Group` only from the front proxy (a certificate
//!   chained to the configured CA with CN `front-proxy-client`);
//! - registration ([`register`]): Service `kubevirt/virt-api`, APIService
//!   `v1.subresources.kubevirt.io` and the two webhook configurations.
//!
//! Does not own: the API types, defaults and validation rules (crate `api`), what the
//! controllers do with a VM's requests (crate `reconcile` decides, `controller` acts), the
//! handler's endpoint (crate `handler`), certificates (the caller brings them).
//! Authorization: the API server checks RBAC on the subresource (`virtualmachines/start`
//! in `subresources.kubevirt.io`, verb `update`) before it forwards, and virt-api asks
//! again with a SubjectAccessReview naming the whole subresource (`authz`), as upstream's
//! does. `register` installs upstream's `kubevirt.io:admin`, `:edit`, `:view` and
//! `:migrate` ClusterRoles ([`roles`]).
//!
//! A subresource request, step by step:
//! 1. The API server's aggregation proxy connects with its front-proxy client
//!    certificate and names the caller in `X-Remote-User`.
//! 2. [`serve`] verifies the certificate chain and puts the certificate in the request's
//!    extensions; the route accepts the caller only if the certificate is the front
//!    proxy's (else 401).
//! 3. A VM subresource reads the VM and its VMI, decides the JSON patches (pure, in
//!    `lifecycle`) and applies them with `test` operations, so a concurrent change is a
//!    409 rather than a lost update.
//! 4. A VMI subresource reads the VMI, checks its phase, finds the handler through the
//!    node's `kubevirt.io/handler-endpoint` annotation and calls it over mutual TLS;
//!    console and VNC websockets are piped message by message.

mod admission;
mod authz;
mod discovery;
mod error;
mod eviction;
mod forward;
mod identity;
mod lifecycle;
mod register;
pub mod roles;
mod serve;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post, put};

pub use error::StatusError;
pub use identity::{Caller, FRONT_PROXY_USER, PeerCertificate};
pub use register::{RegisterError, Registration, register};
pub use serve::{ServeError, ServerTls, serve};

/// The group of the aggregated API.
pub const GROUP: &str = "subresources.kubevirt.io";
/// Its only version.
pub const VERSION: &str = "v1";

/// The service accounts of the KubeVirt components: their VMI status writes stand.
pub const KUBEVIRT_USERS: [&str; 3] = [
    "system:serviceaccount:kubevirt:kubevirt-controller",
    "system:serviceaccount:kubevirt:kubevirt-handler",
    "system:serviceaccount:kubevirt:kubevirt-apiserver",
];

/// What virt-api needs besides its client.
#[derive(Clone, Default)]
pub struct Config {
    /// The CA (PEM) that signed the handlers' serving certificates.
    pub handler_ca_pem: String,
    /// The client certificate and key (PEM) presented to the handlers.
    pub handler_client_cert_pem: String,
    pub handler_client_key_pem: String,
    /// Cluster-wide settings of the VMI defaults.
    pub defaults: api::defaults::DefaultsConfig,
    /// The node directories `hostDisk` volumes may be in (with the `HostDisk` gate on).
    pub host_disk_dirs: Vec<std::path::PathBuf>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("defaults", &self.defaults)
            .field("host_disk_dirs", &self.host_disk_dirs)
            .finish_non_exhaustive()
    }
}

/// What every route shares.
#[derive(Clone)]
struct AppState {
    client: kube::Client,
    config: Arc<Config>,
    handlers: forward::HandlerClient,
}

/// All of virt-api's routes. Fails only on unreadable handler TLS material, and then
/// only the routes that call handlers answer (503, naming the problem).
pub fn router(client: kube::Client, config: Config) -> Router {
    let handlers = forward::HandlerClient::new(&config);
    let state = AppState {
        client,
        config: Arc::new(config),
        handlers,
    };
    let base = format!("/apis/{GROUP}/{VERSION}");
    let ns = format!("{base}/namespaces/{{namespace}}");
    let mut webhooks = Router::new();
    for plural in admission::VALIDATED {
        webhooks = webhooks.route(&format!("/validate-{plural}"), post(admission::validate));
    }
    let webhooks = webhooks
        .route(
            "/mutate-virtualmachineinstances",
            post(admission::mutate_vmi),
        )
        .route("/mutate-virtualmachines", post(admission::mutate_vm))
        .route("/launcher-eviction-interceptor", post(eviction::intercept))
        .route_layer(axum::middleware::from_fn(identity::api_server_only));
    let router = Router::new();
    // The subresources: each call is authorized for its caller first (`authz`).
    let mut subresources = Router::new();
    for plural in ["virtualmachineinstances", "virtualmachines"] {
        for tail in ["", "/{protocol}"] {
            subresources = subresources.route(
                &format!("{ns}/{plural}/{{name}}/portforward/{{port}}{tail}"),
                get(forward::port_forward),
            );
        }
    }
    let subresources = subresources
        .route(
            &format!("{ns}/virtualmachines/{{name}}/{{action}}"),
            put(lifecycle::handle),
        )
        .route(
            &format!("{ns}/virtualmachineinstances/{{name}}/{{op}}"),
            put(forward::operation).get(forward::get_subresource),
        )
        .route(
            &format!("{ns}/virtualmachineinstances/{{name}}/vnc/screenshot"),
            get(forward::screenshot),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authz::check,
        ));
    router
        .route("/apis", get(discovery::group_list))
        .route(&format!("/apis/{GROUP}"), get(discovery::group))
        .route(&base, get(discovery::resource_list))
        .route(&format!("{base}/"), get(discovery::resource_list))
        .route(&format!("{base}/version"), get(discovery::version))
        .route(&format!("{base}/healthz"), get(discovery::healthz))
        .route("/healthz", get(discovery::healthz))
        .merge(subresources)
        .merge(webhooks)
        .fallback(|uri: http::Uri| async move { StatusError::not_found_path(uri.path()) })
        .with_state(state)
}

/// Upstream's version information, for `GET .../version` (and virtctl).
pub fn version_info() -> serde_json::Value {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    serde_json::json!({
        "gitVersion": concat!("v", env!("CARGO_PKG_VERSION")),
        "gitCommit": "",
        "gitTreeState": "",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "",
        "compiler": "rustc",
        "platform": format!("{}/{arch}", std::env::consts::OS),
    })
}
